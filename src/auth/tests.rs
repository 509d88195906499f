//! Tests of [`Authenticator`]: challenge format, accepted credentials and every reason to
//! challenge again or answer 400.

use super::digest::HASHES;
use super::*;
use crate::sip::AuthHeader;

const REALM: &str = "example.com";
const RURI: &str = "sip:example.com";
const T0: u64 = 1_700_000_000_000;
/// Password of the HA1-only users.
const HA1_PW: &str = "hashed";

fn users() -> UserDb {
    let mut db = UserDb::new(REALM);
    db.add_password("alice", "secret").unwrap();
    db.add_line("dom\\user:pw").unwrap();
    let md5 = digest::ha1(Algorithm::Md5, b"bob", REALM.as_bytes(), HA1_PW.as_bytes());
    db.add_line(&format!("bob:ha1={}", md5.as_str())).unwrap();
    let sha = digest::ha1(
        Algorithm::Sha256,
        b"carol",
        REALM.as_bytes(),
        HA1_PW.as_bytes(),
    );
    db.add_line(&format!("carol:ha1={}", sha.as_str())).unwrap();
    let sha512 = digest::ha1(
        Algorithm::Sha512_256,
        b"erin",
        REALM.as_bytes(),
        HA1_PW.as_bytes(),
    );
    db.add_line(&format!("erin:ha1-sha512-256={}", sha512.as_str()))
        .unwrap();
    db
}

fn auth() -> Authenticator {
    Authenticator::new(REALM, Arc::new(users()), [3; 32], 300)
}

/// The challenge lines written at `now`, as (header name, value).
fn challenge_lines(a: &Authenticator, stale: bool, now: u64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    a.write_challenge(&mut out, "WWW-Authenticate", stale, now);
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("\r\n"));
    text.split_terminator("\r\n")
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_owned(), v.to_owned())
        })
        .collect()
}

/// The challenge value of `alg` written at `now` (the first offered one with its algorithm
/// renamed when `alg` is not offered: one nonce serves every algorithm).
fn challenge(a: &Authenticator, alg: Algorithm, now: u64) -> String {
    let lines = challenge_lines(a, false, now);
    let name = |v: &str| {
        let d = AuthHeader::parse(v.as_bytes()).unwrap().digest();
        std::str::from_utf8(d.algorithm.unwrap())
            .unwrap()
            .to_owned()
    };
    if let Some((_, v)) = lines.iter().find(|(_, v)| name(v) == alg.name()) {
        return v.clone();
    }
    let v = &lines[0].1;
    v.replace(
        &format!("algorithm={}", name(v)),
        &format!("algorithm={}", alg.name()),
    )
}

fn creds_for(challenge: &str, user: &str, pw: &str, uri: &str, nc: u32) -> String {
    let d = AuthHeader::parse(challenge.as_bytes()).unwrap().digest();
    client_response(&d, user, pw, b"REGISTER", uri.as_bytes(), nc, "0a4f113b").unwrap()
}

fn creds(a: &Authenticator, alg: Algorithm, user: &str, pw: &str, now: u64) -> String {
    creds_for(&challenge(a, alg, now), user, pw, RURI, 1)
}

fn request_with(header: &str, values: &[&str]) -> String {
    let mut r = format!(
        "REGISTER {RURI} SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
         From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n\
         Call-ID: c1\r\nCSeq: 1 REGISTER\r\n"
    );
    for v in values {
        r.push_str(&format!("{header}: {v}\r\n"));
    }
    r.push_str("Content-Length: 0\r\n\r\n");
    r
}

fn check_at(a: &mut Authenticator, authz: &str, now: u64) -> AuthOutcome {
    let r = request_with("Authorization", &[authz]);
    a.check(
        &Message::parse(r.as_bytes()).unwrap(),
        HeaderName::Authorization,
        now,
    )
}

fn check(a: &mut Authenticator, authz: &str) -> AuthOutcome {
    check_at(a, authz, T0)
}

fn ok(user: &str) -> AuthOutcome {
    AuthOutcome::Authenticated { user: user.into() }
}

const CHALLENGE: AuthOutcome = AuthOutcome::Challenge { stale: false };
const STALE: AuthOutcome = AuthOutcome::Challenge { stale: true };

#[test]
fn challenge_format() {
    let a = auth().with_algorithms(&[Algorithm::Md5, Algorithm::Sha256]);
    let lines = challenge_lines(&a, false, T0);
    assert_eq!(lines.len(), 2);
    let mut nonces = Vec::new();
    // In the configured order: clients that answer only the first challenge answer MD5.
    for ((name, value), alg) in lines.iter().zip(["MD5", "SHA-256"]) {
        assert_eq!(name, "WWW-Authenticate");
        let h = AuthHeader::parse(value.as_bytes()).unwrap();
        assert!(h.is_digest());
        let d = h.digest();
        assert_eq!(d.realm, Some(REALM.as_bytes()));
        assert_eq!(d.algorithm, Some(alg.as_bytes()));
        assert_eq!(d.qop, Some(&b"auth"[..]));
        assert_eq!(d.stale, None);
        assert!(value.contains("qop=\"auth\""), "{value}");
        nonces.push(d.nonce.unwrap().to_vec());
    }
    assert_eq!(nonces[0].len(), nonce::NONCE_HEX_LEN);
    // A new challenge has a new nonce.
    let again = challenge(&a, Algorithm::Sha256, T0);
    let d = AuthHeader::parse(again.as_bytes()).unwrap().digest();
    assert_ne!(d.nonce.unwrap(), &nonces[0][..]);

    let mut out = Vec::new();
    a.write_challenge(&mut out, "Proxy-Authenticate", true, T0);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("Proxy-Authenticate: Digest ").count(), 2);
    for (_, v) in challenge_lines(&a, true, T0) {
        let d = AuthHeader::parse(v.as_bytes()).unwrap().digest();
        assert_eq!(d.stale, Some(&b"true"[..]));
    }
}

#[test]
fn challenge_parses_as_a_sip_header() {
    let a = auth();
    let mut out = b"SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
        From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>;tag=2\r\nCall-ID: c\r\n\
        CSeq: 1 REGISTER\r\n"
        .to_vec();
    a.write_challenge(&mut out, "WWW-Authenticate", false, T0);
    crate::sip::write::finish(&mut out, b"");
    let msg = Message::parse(&out).unwrap();
    msg.validate().unwrap();
    let best = client::first_supported_challenge(&msg, HeaderName::WwwAuthenticate).unwrap();
    assert_eq!(best.algorithm, Some(&b"MD5"[..]));
}

#[test]
fn good_credentials_for_every_algorithm() {
    let mut a = auth();
    // SHA-512-256 is accepted though not offered by default.
    for alg in Algorithm::ALL {
        let c = creds(&a, alg, "alice", "secret", T0);
        assert!(c.contains(&format!("algorithm={}", alg.name())));
        assert_eq!(check(&mut a, &c), ok("alice"), "{alg:?}");
    }
}

#[test]
fn md5_is_the_default_algorithm() {
    let mut a = auth();
    let c = creds(&a, Algorithm::Md5, "alice", "secret", T0).replace(", algorithm=MD5", "");
    assert!(!c.contains("algorithm"));
    assert_eq!(check(&mut a, &c), ok("alice"));
}

#[test]
fn uppercase_response_hex_accepted() {
    let mut a = auth();
    let c = creds(&a, Algorithm::Md5, "alice", "secret", T0);
    let resp = AuthHeader::parse(c.as_bytes())
        .unwrap()
        .digest()
        .response
        .unwrap();
    let resp = std::str::from_utf8(resp).unwrap();
    let c = c.replace(resp, &resp.to_ascii_uppercase());
    assert_eq!(check(&mut a, &c), ok("alice"));
}

#[test]
fn escaped_user_name() {
    let mut a = auth();
    let c = creds(&a, Algorithm::Sha256, "dom\\user", "pw", T0);
    assert!(c.contains(r#"username="dom\\user""#), "{c}");
    assert_eq!(check(&mut a, &c), ok("dom\\user"));
}

#[test]
fn wrong_password() {
    let mut a = auth();
    for alg in Algorithm::ALL {
        let c = creds(&a, alg, "alice", "Secret", T0);
        assert_eq!(check(&mut a, &c), CHALLENGE);
    }
}

#[test]
fn unknown_user_is_indistinguishable_from_wrong_password() {
    let mut a = auth();
    let hashes = |a: &mut Authenticator, c: &str| {
        let before = HASHES.with(|n| n.get());
        let outcome = check(a, c);
        (outcome, HASHES.with(|n| n.get()) - before)
    };
    for alg in Algorithm::ALL {
        let wrong_pw = creds(&a, alg, "alice", "guess", T0);
        let unknown = creds(&a, alg, "mallory", "guess", T0);
        // The same hashing work: HA2 and the response, against a dummy HA1 for the unknown
        // user. HA2 is cached per Request-URI, so compare with the cache cold, then warm.
        let (o1, n1) = hashes(&mut auth(), &wrong_pw);
        let (o2, n2) = hashes(&mut auth(), &unknown);
        assert_eq!(o1, CHALLENGE);
        assert_eq!(o2, o1);
        assert_eq!(n1, 2);
        assert_eq!(n2, n1, "{alg:?}");
        for (first, second) in [(&wrong_pw, &unknown), (&unknown, &wrong_pw)] {
            let mut warm = auth();
            hashes(&mut warm, first);
            let (o1, n1) = hashes(&mut warm, first);
            let (o2, n2) = hashes(&mut warm, second);
            assert_eq!((o1, o2), (CHALLENGE, CHALLENGE));
            assert_eq!(n1, 1);
            assert_eq!(n2, n1, "{alg:?}");
        }
        // The challenges are written by `a`, whose own answers are the same.
        assert_eq!(check(&mut a, &wrong_pw), check(&mut a, &unknown));
    }
    // The challenges that follow have the same shape (only the nonce differs).
    let mask = |lines: Vec<(String, String)>| -> Vec<(String, String)> {
        lines
            .into_iter()
            .map(|(n, v)| {
                let d = AuthHeader::parse(v.as_bytes()).unwrap().digest();
                let nonce = std::str::from_utf8(d.nonce.unwrap()).unwrap().to_owned();
                (n, v.replace(&nonce, "N"))
            })
            .collect()
    };
    assert_eq!(
        mask(challenge_lines(&a, false, T0)),
        mask(challenge_lines(&a, false, T0 + 1000))
    );
}

#[test]
fn dummy_ha1_never_authenticates() {
    let mut a = auth();
    // Whoever knew the secret could answer with the dummy HA1 used for unknown users.
    let dummy_pw = hex::encode([3u8; 32]);
    for alg in Algorithm::ALL {
        for user in ["", "mallory"] {
            let ch = challenge(&a, alg, T0);
            let d = AuthHeader::parse(ch.as_bytes()).unwrap().digest();
            let c = client_response(&d, "", &dummy_pw, b"REGISTER", RURI.as_bytes(), 1, "c")
                .unwrap()
                .replace("username=\"\"", &format!("username=\"{user}\""));
            assert_eq!(check(&mut a, &c), CHALLENGE, "{alg:?} {user:?}");
        }
    }
}

#[test]
fn ha1_users_from_file_use_their_algorithm_only() {
    let mut a = auth();
    let c = creds(&a, Algorithm::Md5, "bob", HA1_PW, T0);
    assert_eq!(check(&mut a, &c), ok("bob"));
    let c = creds(&a, Algorithm::Sha256, "bob", HA1_PW, T0);
    assert_eq!(check(&mut a, &c), CHALLENGE);
    let c = creds(&a, Algorithm::Sha256, "carol", HA1_PW, T0);
    assert_eq!(check(&mut a, &c), ok("carol"));
    let c = creds(&a, Algorithm::Md5, "carol", HA1_PW, T0);
    assert_eq!(check(&mut a, &c), CHALLENGE);
    let c = creds(&a, Algorithm::Sha512_256, "erin", HA1_PW, T0);
    assert_eq!(check(&mut a, &c), ok("erin"));
    for alg in [Algorithm::Md5, Algorithm::Sha256] {
        let c = creds(&a, alg, "erin", HA1_PW, T0);
        assert_eq!(check(&mut a, &c), CHALLENGE, "{alg:?}");
    }
}

#[test]
fn no_credentials_or_other_scheme() {
    let mut a = auth();
    let r = request_with("Authorization", &[]);
    let msg = Message::parse(r.as_bytes()).unwrap();
    assert_eq!(a.check(&msg, HeaderName::Authorization, T0), CHALLENGE);
    assert_eq!(check(&mut a, "Basic dXNlcjpwYXNz"), CHALLENGE);
}

#[test]
fn wrong_realm() {
    let mut a = auth();
    let ch = challenge(&a, Algorithm::Sha256, T0);
    // Right password, but computed and sent for another realm.
    let c = creds_for(
        &ch.replace("realm=\"example.com\"", "realm=\"example.org\""),
        "alice",
        "secret",
        RURI,
        1,
    );
    assert!(c.contains("realm=\"example.org\""));
    assert_eq!(check(&mut a, &c), CHALLENGE);
}

#[test]
fn credentials_for_another_realm_are_skipped() {
    let mut a = auth();
    let other = creds_for(
        &challenge(&a, Algorithm::Sha256, T0).replace("example.com\"", "example.org\""),
        "alice",
        "secret",
        RURI,
        1,
    );
    let ours = creds(&a, Algorithm::Sha256, "alice", "secret", T0);
    let r = request_with("Authorization", &[&other, &ours]);
    let msg = Message::parse(r.as_bytes()).unwrap();
    assert_eq!(a.check(&msg, HeaderName::Authorization, T0), ok("alice"));
}

#[test]
fn digest_uri_is_verified_as_sent() {
    let mut a = auth();
    let ch = challenge(&a, Algorithm::Md5, T0);
    // SIPp's [authentication]: uri="sip:HOST:PORT" whatever the Request-URI.
    let c = creds_for(&ch, "alice", "secret", "sip:127.0.0.1:5060", 1);
    assert_eq!(check(&mut a, &c), ok("alice"));
    let c = creds_for(&ch, "alice", "secret", "sip:EXAMPLE.com", 2);
    assert_eq!(check(&mut a, &c), ok("alice"));
    // The response binds the uri: computed for one, sent with another, refused.
    let c = creds_for(&ch, "alice", "secret", "sip:example.org", 3)
        .replace("uri=\"sip:example.org\"", &format!("uri=\"{RURI}\""));
    assert_eq!(check(&mut a, &c), CHALLENGE);
    let c = creds_for(&ch, "alice", "secret", RURI, 4)
        .replace(&format!("uri=\"{RURI}\""), "uri=\"sip:example.org\"");
    assert_eq!(check(&mut a, &c), CHALLENGE);
    // Nonce counts are as strict as ever: the first one again is a replay.
    let c = creds_for(&ch, "alice", "secret", "sip:127.0.0.1:5060", 1);
    assert_eq!(check(&mut a, &c), CHALLENGE);
}

#[test]
fn strict_uri_requires_the_request_uri() {
    let mut a = auth().with_strict_uri(true);
    let ch = challenge(&a, Algorithm::Sha256, T0);
    let c = creds_for(&ch, "alice", "secret", "sip:example.org", 1);
    assert_eq!(check(&mut a, &c), CHALLENGE);
    let c = creds_for(&ch, "alice", "secret", "sip:EXAMPLE.com", 2);
    assert_eq!(check(&mut a, &c), CHALLENGE);
    let c = creds_for(&ch, "alice", "secret", RURI, 3);
    assert_eq!(check(&mut a, &c), ok("alice"));
}

#[test]
fn cached_ha2_follows_the_digest_uri() {
    // One Request-URI, credentials alternating between `uri` values: the HA2 cache (keyed by
    // the `uri` hashed) never answers for another one.
    let mut a = auth();
    let uris = ["sip:example.com", "sip:127.0.0.1:5060", "sip:example.co"];
    let mut nc = 0;
    for round in 0..3 {
        for (i, uri) in uris.iter().enumerate() {
            for alg in Algorithm::ALL {
                let ch = challenge(&a, alg, T0);
                nc += 1;
                let c = creds_for(&ch, "alice", "secret", uri, nc);
                assert_eq!(check(&mut a, &c), ok("alice"), "{round} {i} {alg:?}");
                // The same response claimed for the previous uri.
                nc += 1;
                let other = uris[(i + 2) % uris.len()];
                let c = creds_for(&ch, "alice", "secret", uri, nc)
                    .replace(&format!("uri=\"{uri}\""), &format!("uri=\"{other}\""));
                assert_eq!(check(&mut a, &c), CHALLENGE, "{round} {i} {alg:?}");
            }
        }
    }
}

#[test]
fn missing_qop_or_other_qop_is_challenged() {
    let mut a = auth();
    let ch = challenge(&a, Algorithm::Md5, T0);
    let d = AuthHeader::parse(ch.as_bytes()).unwrap().digest();
    let nonce = std::str::from_utf8(d.nonce.unwrap()).unwrap();
    // A correct RFC 2069 response (no qop, nc, cnonce): H(HA1:nonce:HA2).
    let ha1 = digest::ha1(Algorithm::Md5, b"alice", REALM.as_bytes(), b"secret");
    let ha2 = digest::ha2(Algorithm::Md5, b"REGISTER", RURI.as_bytes());
    let resp = digest::hash_joined(
        Algorithm::Md5,
        &[ha1.as_bytes(), nonce.as_bytes(), ha2.as_bytes()],
    );
    let c = format!(
        "Digest username=\"alice\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{RURI}\", \
         response=\"{}\", algorithm=MD5",
        resp.as_str()
    );
    assert_eq!(check(&mut a, &c), CHALLENGE);
    let good = creds_for(&ch, "alice", "secret", RURI, 1);
    assert_eq!(
        check(&mut a, &good.replace("qop=auth,", "qop=auth-int,")),
        CHALLENGE
    );
}

#[test]
fn unsupported_algorithm_or_userhash_is_challenged() {
    let mut a = auth();
    let c = creds(&a, Algorithm::Md5, "alice", "secret", T0);
    assert_eq!(
        check(&mut a, &c.replace("algorithm=MD5", "algorithm=MD5-sess")),
        CHALLENGE
    );
    assert_eq!(check(&mut a, &format!("{c}, userhash=true")), CHALLENGE);
    assert_eq!(check(&mut a, &c), ok("alice"));
}

#[test]
fn stale_nonce() {
    let mut a = auth();
    let later = T0 + 301_000;
    let c = creds(&a, Algorithm::Sha256, "alice", "secret", T0);
    assert_eq!(check_at(&mut a, &c, later), STALE);
    // Within the TTL it is still fine.
    assert_eq!(check_at(&mut a, &c, T0 + 299_000), ok("alice"));
    // stale=true only for a right response: a wrong password gets a plain challenge.
    let c = creds(&a, Algorithm::Sha256, "alice", "wrong", T0);
    assert_eq!(check_at(&mut a, &c, later), CHALLENGE);
    let c = creds(&a, Algorithm::Sha256, "mallory", "wrong", T0);
    assert_eq!(check_at(&mut a, &c, later), CHALLENGE);
}

#[test]
fn nonce_from_the_future_is_challenged() {
    let mut a = auth();
    let c = creds(&a, Algorithm::Sha256, "alice", "secret", T0 + 60_000);
    assert_eq!(check(&mut a, &c), CHALLENGE);
}

#[test]
fn tampered_nonce() {
    let mut a = auth();
    let ch = challenge(&a, Algorithm::Sha256, T0);
    let d = AuthHeader::parse(ch.as_bytes()).unwrap().digest();
    let nonce = std::str::from_utf8(d.nonce.unwrap()).unwrap();
    // Move the timestamp one second on and recompute the response for the new nonce: the
    // MAC no longer matches.
    let mut raw = hex::decode(nonce).unwrap();
    raw[7] ^= 1;
    let forged = hex::encode(&raw);
    let c = creds_for(&ch.replace(nonce, &forged), "alice", "secret", RURI, 1);
    assert_eq!(check(&mut a, &c), CHALLENGE);
    let c = creds_for(&ch.replace(nonce, "abc"), "alice", "secret", RURI, 1);
    assert_eq!(check(&mut a, &c), CHALLENGE);
}

#[test]
fn nonce_from_another_secret() {
    let mut a = auth();
    let other = Authenticator::new(REALM, Arc::new(users()), [4; 32], 300);
    let c = creds(&other, Algorithm::Sha256, "alice", "secret", T0);
    assert_eq!(check(&mut a, &c), CHALLENGE);
}

#[test]
fn nonce_from_another_shard_is_refreshed_not_accepted() {
    let mut a = auth();
    let mut b = a.for_shard(1);
    let c = creds(&a, Algorithm::Sha256, "alice", "secret", T0);
    // b cannot know whether a already saw this nonce count: it asks for a fresh nonce
    // (stale=true, so the client retries without prompting the user)...
    assert_eq!(check(&mut b, &c), AuthOutcome::Challenge { stale: true });
    // ...while the issuing shard accepts it once.
    assert_eq!(check(&mut a, &c), ok("alice"));
    assert_eq!(check(&mut a, &c), CHALLENGE);
    // Shards salt their nonces differently.
    assert_ne!(
        challenge(&a, Algorithm::Sha256, T0),
        challenge(&b, Algorithm::Sha256, T0)
    );
}

#[test]
fn nc_replay() {
    let mut a = auth();
    let ch = challenge(&a, Algorithm::Sha256, T0);
    let c1 = creds_for(&ch, "alice", "secret", RURI, 1);
    assert_eq!(check(&mut a, &c1), ok("alice"));
    assert_eq!(check(&mut a, &c1), CHALLENGE);
    let c3 = creds_for(&ch, "alice", "secret", RURI, 3);
    assert_eq!(check(&mut a, &c3), ok("alice"));
    let c2 = creds_for(&ch, "alice", "secret", RURI, 2);
    assert_eq!(check(&mut a, &c2), CHALLENGE);
    assert_eq!(a.tracked_nonces(), 1);
    // A wrong response does not advance the count.
    let bad = creds_for(&ch, "alice", "wrong", RURI, 9);
    assert_eq!(check(&mut a, &bad), CHALLENGE);
    let c4 = creds_for(&ch, "alice", "secret", RURI, 4);
    assert_eq!(check(&mut a, &c4), ok("alice"));
    a.prune(T0 + 301_000);
    assert_eq!(a.tracked_nonces(), 0);
}

#[test]
fn forgotten_nonce_gets_a_stale_challenge() {
    let mut a = auth().with_max_tracked(1);
    let c1 = creds(&a, Algorithm::Sha256, "alice", "secret", T0);
    let c2 = creds(&a, Algorithm::Sha256, "alice", "secret", T0 + 1000);
    assert_eq!(check_at(&mut a, &c1, T0 + 1000), ok("alice"));
    assert_eq!(check_at(&mut a, &c2, T0 + 1000), ok("alice"));
    // The first nonce's count was dropped to make room: it cannot be replayed.
    assert_eq!(check_at(&mut a, &c1, T0 + 1000), STALE);
}

#[test]
fn proxy_authorization() {
    let mut a = auth();
    let c = creds(&a, Algorithm::Sha256, "alice", "secret", T0);
    let r = request_with("Proxy-Authorization", &[&c]);
    let msg = Message::parse(r.as_bytes()).unwrap();
    assert_eq!(a.check(&msg, HeaderName::Authorization, T0), CHALLENGE);
    assert_eq!(
        a.check(&msg, HeaderName::ProxyAuthorization, T0),
        ok("alice")
    );
}

#[test]
fn malformed_credentials() {
    let mut a = auth();
    let c = creds(&a, Algorithm::Sha256, "alice", "secret", T0);
    let bad = |a: &mut Authenticator, v: &str| match check(a, v) {
        AuthOutcome::BadRequest(why) => why,
        other => panic!("{v}: {other:?}"),
    };
    bad(&mut a, "Digest username=\"open");
    bad(&mut a, &c.replace("realm=\"example.com\", ", ""));
    bad(&mut a, &c.replace("nc=00000001, ", ""));
    bad(&mut a, &c.replace(", cnonce=\"0a4f113b\"", ""));
    assert_eq!(
        bad(&mut a, &c.replace("nc=00000001", "nc=1")),
        "nc is not 8 hex digits"
    );
    bad(&mut a, &c.replace("nc=00000001", "nc=0000000g"));
    let resp_start = c.find("response=").unwrap();
    let resp_end = resp_start + c[resp_start..].find(", ").unwrap() + 2;
    let mut no_resp = c.clone();
    no_resp.replace_range(resp_start..resp_end, "");
    bad(&mut a, &no_resp);
    bad(&mut a, &c.replace("username=\"alice\", ", ""));
    // The good credentials still work afterwards.
    assert_eq!(check(&mut a, &c), ok("alice"));
}

#[test]
fn responses_are_not_checked() {
    let a = auth();
    let mut out = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
        From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>;tag=2\r\nCall-ID: c\r\n\
        CSeq: 1 REGISTER\r\n"
        .to_vec();
    crate::sip::write::finish(&mut out, b"");
    let msg = Message::parse(&out).unwrap();
    let mut a = a;
    assert!(matches!(
        a.check(&msg, HeaderName::Authorization, T0),
        AuthOutcome::BadRequest(_)
    ));
}

#[test]
#[should_panic(expected = "another realm")]
fn users_for_another_realm_are_refused() {
    Authenticator::new("example.org", Arc::new(users()), [3; 32], 300);
}

#[test]
fn unquoting() {
    assert_eq!(&*unq(br#"a\\b\"c"#), br#"a\b"c"#);
    assert!(matches!(unq(b"plain"), Cow::Borrowed(_)));
}

#[test]
fn offered_algorithms_follow_the_configured_order() {
    let a = auth().with_algorithms(&[Algorithm::Md5]);
    let lines = challenge_lines(&a, false, T0);
    assert_eq!(lines.len(), 1);
    assert!(lines[0].1.contains("algorithm=MD5"), "{lines:?}");
    let b = auth().with_algorithms(&[Algorithm::Md5, Algorithm::Sha256]);
    let lines = challenge_lines(&b, false, T0);
    assert!(lines[0].1.contains("algorithm=MD5") && lines[1].1.contains("algorithm=SHA-256"));
    // The default: MD5 alone (baresip 1.0 gives up on any SHA-256 challenge).
    let lines = challenge_lines(&auth(), false, T0);
    assert_eq!(lines.len(), 1);
    assert!(lines[0].1.contains("algorithm=MD5"), "{lines:?}");
    let c = auth().with_algorithms(&[Algorithm::Sha512_256, Algorithm::Sha256]);
    let lines = challenge_lines(&c, false, T0);
    assert!(lines[0].1.contains("algorithm=SHA-512-256"), "{lines:?}");
    assert!(lines[1].1.contains("algorithm=SHA-256"), "{lines:?}");
}

/// `write_challenge` as it was before it wrote in place from a prepared head: the realm quoted
/// per call, each value built in a buffer, then written with `sip::write::header`.
fn challenge_before(
    realm: &str,
    algorithms: &[Algorithm],
    nonce: &[u8],
    header_name: &str,
    stale: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut quoted = String::new();
    client::push_quoted(&mut quoted, realm.as_bytes());
    let mut value = Vec::new();
    for &alg in algorithms {
        value.clear();
        value.extend_from_slice(b"Digest realm=");
        value.extend_from_slice(quoted.as_bytes());
        value.extend_from_slice(b", nonce=\"");
        value.extend_from_slice(nonce);
        value.extend_from_slice(b"\", algorithm=");
        value.extend_from_slice(alg.name().as_bytes());
        value.extend_from_slice(b", qop=\"auth\"");
        if stale {
            value.extend_from_slice(b", stale=true");
        }
        crate::sip::write::header(&mut out, header_name, &value);
    }
    out
}

#[test]
fn challenges_are_byte_for_byte_those_of_before() {
    let orders: [&[Algorithm]; 5] = [
        &Algorithm::DEFAULT_OFFER,
        &Algorithm::ALL,
        &[Algorithm::Md5],
        &[Algorithm::Sha256],
        &[Algorithm::Md5, Algorithm::Sha256],
    ];
    for realm in [
        "example.com",
        "a\"quoted\" realm",
        "back\\slash",
        "r\u{e9}alm",
        "",
    ] {
        for algs in orders {
            let a = Authenticator::new(realm, Arc::new(UserDb::new(realm)), [5; 32], 300)
                .with_algorithms(algs);
            for header in ["WWW-Authenticate", "Proxy-Authenticate"] {
                for stale in [false, true] {
                    // Appends to what the response already holds.
                    let mut out = b"SIP/2.0 401 Unauthorized\r\n".to_vec();
                    a.write_challenge(&mut out, header, stale, T0);
                    let text = std::str::from_utf8(&out).unwrap();
                    let at = text.find("nonce=\"").unwrap() + "nonce=\"".len();
                    let nonce = &out[at..at + nonce::NONCE_HEX_LEN];
                    let mut want = b"SIP/2.0 401 Unauthorized\r\n".to_vec();
                    want.extend(challenge_before(realm, algs, nonce, header, stale));
                    assert_eq!(
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(&want),
                        "{realm:?} {algs:?} {header} {stale}"
                    );
                }
            }
        }
    }
}

#[test]
fn cached_ha2_follows_the_request_uri_and_method() {
    // One authenticator, requests alternating between URIs, methods and algorithms: each is
    // judged as a fresh authenticator would judge it (the HA2 cache never answers for another
    // request line).
    let mut a = auth();
    let uris = [
        "sip:example.com",
        "sip:example.com;transport=udp",
        "sip:alice@example.com",
    ];
    let mut nc = 0;
    for round in 0..3 {
        for (i, uri) in uris.iter().enumerate() {
            for alg in Algorithm::ALL {
                for method in ["REGISTER", "INVITE"] {
                    nc += 1;
                    let ch = challenge(&a, alg, T0);
                    let d = AuthHeader::parse(ch.as_bytes()).unwrap().digest();
                    // Credentials computed for the REGISTER to `uri`.
                    let c = client_response(
                        &d,
                        "alice",
                        "secret",
                        b"REGISTER",
                        uri.as_bytes(),
                        nc,
                        "c",
                    )
                    .unwrap();
                    let r = request_with("Authorization", &[&c]).replacen(
                        &format!("REGISTER {RURI} "),
                        &format!("{method} {uri} "),
                        1,
                    );
                    let m = Message::parse(r.as_bytes()).unwrap();
                    let want = if method == "REGISTER" {
                        ok("alice")
                    } else {
                        CHALLENGE
                    };
                    assert_eq!(
                        a.check(&m, HeaderName::Authorization, T0),
                        want,
                        "{round} {i} {alg:?} {method}"
                    );
                }
            }
        }
    }
}

/// The failure `check_detailed` reports for one Authorization value at `now`, as
/// (reason, user as sent, realm as sent).
fn failure_at(a: &mut Authenticator, authz: &[&str], now: u64) -> Option<(FailReason, String)> {
    let r = request_with("Authorization", authz);
    let msg = Message::parse(r.as_bytes()).unwrap();
    let (_, f) = a.check_detailed(&msg, HeaderName::Authorization, now);
    f.map(|f| {
        assert_eq!(f.method, b"REGISTER");
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        (f.reason, format!("{} {}", text(f.user), text(f.realm)))
    })
}

fn failure(a: &mut Authenticator, authz: &str) -> Option<(FailReason, String)> {
    failure_at(a, &[authz], T0)
}

fn failed(reason: FailReason, user: &str, realm: &str) -> Option<(FailReason, String)> {
    Some((reason, format!("{user} {realm}")))
}

#[test]
fn wrong_credentials_are_failures() {
    let mut a = auth();
    for alg in Algorithm::ALL {
        let c = creds(&a, alg, "alice", "guess", T0);
        let want = failed(FailReason::BadResponse, "alice", REALM);
        assert_eq!(failure(&mut a, &c), want, "{alg:?}");
        let c = creds(&a, alg, "mallory", "guess", T0);
        let want = failed(FailReason::UnknownUser, "mallory", REALM);
        assert_eq!(failure(&mut a, &c), want, "{alg:?}");
    }
    // A user by HA1 answering another algorithm: its response cannot be right.
    let c = creds(&a, Algorithm::Sha256, "bob", HA1_PW, T0);
    let want = failed(FailReason::BadResponse, "bob", REALM);
    assert_eq!(failure(&mut a, &c), want);
    // The user as sent, escapes and all (the log line unescapes it).
    let c = creds(&a, Algorithm::Md5, "dom\\user", "guess", T0);
    let want = failed(FailReason::BadResponse, "dom\\\\user", REALM);
    assert_eq!(failure(&mut a, &c), want);
    // Expired nonce and wrong password: still a wrong password.
    let c = creds(&a, Algorithm::Md5, "alice", "guess", T0);
    let want = failed(FailReason::BadResponse, "alice", REALM);
    assert_eq!(failure_at(&mut a, &[&c], T0 + 301_000), want);
}

#[test]
fn replayed_nonce_count_is_a_failure() {
    let mut a = auth();
    let c = creds(&a, Algorithm::Md5, "alice", "secret", T0);
    assert_eq!(failure(&mut a, &c), None);
    let want = failed(FailReason::ReplayedNc, "alice", REALM);
    assert_eq!(failure(&mut a, &c), want);
}

#[test]
fn credentials_only_for_other_realms_are_a_failure() {
    let mut a = auth();
    let other = |a: &Authenticator, realm: &str, user: &str| {
        creds_for(
            &challenge(a, Algorithm::Md5, T0).replace("example.com\"", &format!("{realm}\"")),
            user,
            "secret",
            RURI,
            1,
        )
    };
    let (org, net) = (
        other(&a, "example.org", "alice"),
        other(&a, "example.net", "bo"),
    );
    // The first foreign credentials are reported.
    let want = failed(FailReason::WrongRealm, "alice", "example.org");
    assert_eq!(failure_at(&mut a, &[&org, &net], T0), want);
    // With ours among them, ours decide.
    let ours = creds(&a, Algorithm::Md5, "alice", "secret", T0);
    assert_eq!(failure_at(&mut a, &[&org, &ours], T0), None);
}

#[test]
fn challenges_that_are_not_failures() {
    let mut a = auth();
    // No credentials: the first challenge.
    assert_eq!(failure_at(&mut a, &[], T0), None);
    assert_eq!(failure(&mut a, "Basic dXNlcjpwYXNz"), None);
    // A right response with an expired nonce (stale=true), or a forgotten one.
    let c = creds(&a, Algorithm::Sha256, "alice", "secret", T0);
    assert_eq!(failure_at(&mut a, &[&c], T0 + 301_000), None);
    let mut small = auth().with_max_tracked(1);
    let c1 = creds(&small, Algorithm::Md5, "alice", "secret", T0);
    let c2 = creds(&small, Algorithm::Md5, "alice", "secret", T0 + 1000);
    assert_eq!(failure_at(&mut small, &[&c1], T0 + 1000), None);
    assert_eq!(failure_at(&mut small, &[&c2], T0 + 1000), None);
    assert_eq!(check_at(&mut small, &c1, T0 + 1000), STALE);
    // A nonce this server never issued (a client from before a restart).
    let other_run = Authenticator::new(REALM, Arc::new(users()), [4; 32], 300);
    let c = creds(&other_run, Algorithm::Md5, "alice", "secret", T0);
    assert_eq!(check(&mut a, &c), CHALLENGE);
    assert_eq!(failure(&mut a, &c), None);
    // Forms we do not accept get a challenge that says what to send, or a 400.
    let c = creds(&a, Algorithm::Md5, "alice", "secret", T0);
    let sess = c.replace("algorithm=MD5", "algorithm=MD5-sess");
    assert_eq!(failure(&mut a, &sess), None);
    assert_eq!(failure(&mut a, &c.replace(", nc=00000001", "")), None);
    let mut strict = auth().with_strict_uri(true);
    let c = creds_for(
        &challenge(&strict, Algorithm::Md5, T0),
        "alice",
        "secret",
        "sip:x",
        1,
    );
    assert_eq!(failure(&mut strict, &c), None);
}

/// A tracing writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// What `check_from` logs at `level` for each Authorization value ("": no header).
fn logged(level: tracing::Level, a: &mut Authenticator, values: &[String]) -> String {
    let buf = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(buf.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        for v in values {
            let r = match v.is_empty() {
                true => request_with("Authorization", &[]),
                false => request_with("Authorization", &[v]),
            };
            let msg = Message::parse(r.as_bytes()).unwrap();
            let src = "203.0.113.5:5060".parse().unwrap();
            a.check_from(&msg, HeaderName::Authorization, T0, src);
        }
    });
    let text = buf.0.lock().unwrap().clone();
    String::from_utf8(text).unwrap()
}

#[test]
fn check_from_logs_failures_at_warn() {
    let mut a = auth();
    let good = creds(&a, Algorithm::Md5, "alice", "secret", T0);
    let wrong = creds(&a, Algorithm::Md5, "alice", "guess", T0);
    let unknown = creds(&a, Algorithm::Sha256, "mallory", "guess", T0);
    // The first challenge, a login, two failures, a replay.
    let values = [String::new(), good.clone(), wrong, unknown, good];
    let log = logged(tracing::Level::WARN, &mut a, &values);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    let tails = [
        "user=alice realm=example.com method=REGISTER reason=bad-response",
        "user=mallory realm=example.com method=REGISTER reason=unknown-user",
        "user=alice realm=example.com method=REGISTER reason=replayed-nc",
    ];
    for (line, tail) in lines.iter().zip(tails) {
        assert!(line.contains(" WARN "), "{line}");
        assert!(
            line.ends_with(&format!("auth failed src=203.0.113.5:5060 {tail}")),
            "{line}"
        );
    }
    // Nothing at error level (the same requests to a fresh authenticator).
    assert_eq!(logged(tracing::Level::ERROR, &mut auth(), &values), "");
}
