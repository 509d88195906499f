//! Digest authentication of REGISTER (RFC 3261 §22, RFC 7616, RFC 8760) over real UDP on
//! 127.0.0.1, against the real `sipshard` binary; the client side is `DigestClient`.

mod common;

use common::*;
use sipshard::auth::digest::{ha1, Algorithm};
use sipshard::auth::DigestClient;
use sipshard::sip::{DigestParams, HeaderName, Message};
use std::process::Command;
use std::time::Duration;

const ALICE: &str = "sip:alice@localhost";
const A1: &str = "sip:alice@192.0.2.1:5060";

/// The Digest challenges of a 401, in order.
fn challenges(resp: &[u8]) -> Vec<DigestParams<'_>> {
    let m = Message::parse(resp).unwrap();
    m.auth_headers(HeaderName::WwwAuthenticate)
        .map(|h| h.expect("WWW-Authenticate parses"))
        .filter(|h| h.is_digest())
        .map(|h| h.digest())
        .collect()
}

fn s(v: Option<&[u8]>) -> &str {
    std::str::from_utf8(v.unwrap_or(b"")).unwrap()
}

/// Sends `reg` without credentials and returns the 401.
fn challenge(c: &Client, server: &ServerProcess, reg: &Register) -> Vec<u8> {
    let r = reg.send(c, server.addr);
    assert_status(&r, 401);
    r
}

/// The Authorization value answering the challenge of `resp` for `alg` (the server's first
/// challenge when None) for the REGISTER `reg`.
fn answer(
    resp: &[u8],
    alg: Option<&str>,
    user: &str,
    password: &str,
    reg: &Register,
    nc: u32,
) -> String {
    let all = challenges(resp);
    let ch = match alg {
        None => all.first().expect("a challenge"),
        Some(a) => all
            .iter()
            .find(|d| s(d.algorithm).eq_ignore_ascii_case(a))
            .unwrap_or_else(|| panic!("no {a} challenge in {}", String::from_utf8_lossy(resp))),
    };
    DigestClient {
        username: user,
        password,
    }
    .authorization(ch, b"REGISTER", reg.ruri.as_bytes(), nc, "0a4f113b")
    .unwrap()
}

/// Challenge, then answer with `user`/`password` for `alg`: returns the final response.
fn register_as(
    c: &Client,
    server: &ServerProcess,
    reg: &Register,
    alg: Option<&str>,
    user: &str,
    password: &str,
) -> Vec<u8> {
    let r = challenge(c, server, reg);
    let creds = answer(&r, alg, user, password, reg, 1);
    reg.next().with_auth(&creds).send(c, server.addr)
}

/// alice and bob, offering MD5 then SHA-256 (the default offers MD5 alone; most tests here
/// answer either challenge).
fn alice_server() -> ServerProcess {
    ServerProcess::start(&[
        "--shards",
        "1",
        "--user",
        "alice:secret",
        "--user",
        "bob:hunter2",
        "--auth-algorithms",
        "md5,sha-256",
    ])
}

fn alice_reg() -> Register {
    Register::new(ALICE).contact(&format!("<{A1}>"))
}

/// The algorithms of the challenges a server with alice and `algorithms` (None: the
/// default) offers, in order; alice, answering the first, then registers.
fn offered(algorithms: Option<&str>) -> Vec<String> {
    let mut args = vec!["--shards", "1", "--user", "alice:secret"];
    if let Some(a) = algorithms {
        args.extend(["--auth-algorithms", a]);
    }
    let s_ = ServerProcess::start(&args);
    let c = Client::new();
    let r = challenge(&c, &s_, &alice_reg());
    let offered = challenges(&r)
        .iter()
        .map(|d| s(d.algorithm).to_owned())
        .collect();
    let r = register_as(&c, &s_, &alice_reg(), None, "alice", "secret");
    assert_status(&r, 200);
    offered
}

#[test]
fn challenges_offered_md5_alone_by_default_and_as_configured_in_order() {
    // The default: MD5 alone (sipsak and SIPp answer only the first challenge; baresip 1.0
    // gives up when any SHA-256 challenge is in the response).
    for (flag, want) in [
        (None, &["MD5"][..]),
        (Some("md5"), &["MD5"][..]),
        (Some("md5,sha-256"), &["MD5", "SHA-256"][..]),
        (Some("sha-512-256,sha-256"), &["SHA-512-256", "SHA-256"][..]),
    ] {
        assert_eq!(offered(flag), want, "--auth-algorithms {flag:?}");
    }
}

#[test]
fn no_credentials_gets_401_with_one_nonce_for_every_challenge() {
    let s_ = alice_server();
    let c = Client::new();
    let r = challenge(&c, &s_, &alice_reg());
    let all = challenges(&r);
    assert_eq!(all.len(), 2, "{}", String::from_utf8_lossy(&r));
    assert_eq!(s(all[0].algorithm), "MD5");
    assert_eq!(s(all[1].algorithm), "SHA-256");
    for d in &all {
        assert_eq!(s(d.realm), "localhost");
        assert_eq!(s(d.qop), "auth");
        assert!(!s(d.nonce).is_empty());
        assert_eq!(d.stale, None);
    }
    // Both challenges share one nonce.
    assert_eq!(all[0].nonce, all[1].nonce);
    // Nothing was registered.
    assert!(!String::from_utf8_lossy(&r).contains(A1));
}

#[test]
fn correct_md5_credentials_get_200() {
    let s_ = alice_server();
    let c = Client::new();
    let r = register_as(&c, &s_, &alice_reg(), Some("MD5"), "alice", "secret");
    assert_status(&r, 200);
    assert_eq!(contact_uris(&r), vec![A1.to_string()]);
}

#[test]
fn correct_sha256_credentials_get_200() {
    let s_ = alice_server();
    let c = Client::new();
    let r = register_as(&c, &s_, &alice_reg(), Some("SHA-256"), "alice", "secret");
    assert_status(&r, 200);
    assert_eq!(contact_uris(&r), vec![A1.to_string()]);
}

#[test]
fn wrong_password_gets_401() {
    let s_ = alice_server();
    let c = Client::new();
    for alg in ["SHA-256", "MD5"] {
        let r = register_as(&c, &s_, &alice_reg(), Some(alg), "alice", "wrong");
        assert_status(&r, 401);
        assert!(challenges(&r).iter().all(|d| d.stale.is_none()));
        assert!(contacts(&r).is_empty());
    }
}

/// The header names of a response in order, and its challenges with the nonce left out.
fn challenge_shape(resp: &[u8]) -> (Vec<String>, Vec<String>) {
    let text = String::from_utf8_lossy(resp);
    let names = text
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(':').next().unwrap().trim().to_ascii_lowercase())
        .collect();
    let challenges = header_values(resp, "WWW-Authenticate")
        .iter()
        .map(|v| {
            v.split(", ")
                .filter(|p| !p.trim_start_matches("Digest ").starts_with("nonce="))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    (names, challenges)
}

#[test]
fn unknown_user_gets_the_same_challenge_as_a_wrong_password() {
    let s_ = alice_server();
    let c = Client::new();
    for alg in ["SHA-256", "MD5"] {
        let wrong = register_as(&c, &s_, &alice_reg(), Some(alg), "alice", "wrong");
        let reg = Register::new("sip:mallory@localhost").contact("<sip:mallory@192.0.2.66>");
        let unknown = register_as(&c, &s_, &reg, Some(alg), "mallory", "secret");
        assert_status(&wrong, 401);
        assert_status(&unknown, 401);
        assert_eq!(reason(&wrong), reason(&unknown));
        let (wn, wc) = challenge_shape(&wrong);
        let (un, uc) = challenge_shape(&unknown);
        assert_eq!(wn, un, "header names differ");
        assert_eq!(wc, uc, "challenges differ beyond the nonce");
        assert_eq!(wc.len(), 2);
        assert_ne!(
            header_value(&wrong, "WWW-Authenticate"),
            header_value(&unknown, "WWW-Authenticate"),
            "fresh nonces"
        );
    }
}

#[test]
fn replayed_nonce_count_gets_401() {
    let s_ = alice_server();
    let c = Client::new();
    let reg = alice_reg();
    let ch = challenge(&c, &s_, &reg);
    let creds = answer(&ch, Some("SHA-256"), "alice", "secret", &reg, 1);
    let first = reg.next().with_auth(&creds);
    assert_status(&first.send(&c, s_.addr), 200);
    // The same Authorization again, in a new transaction (new branch, higher CSeq).
    let replay = first.next();
    assert_status(&replay.send(&c, s_.addr), 401);
    // The next nonce count on the same nonce is accepted.
    let creds = answer(&ch, Some("SHA-256"), "alice", "secret", &reg, 2);
    let r = replay.next().with_auth(&creds).send(&c, s_.addr);
    assert_status(&r, 200);
}

/// Credentials computed (and sent) for `uri="sip:127.0.0.1:5060"` on a REGISTER whose
/// Request-URI is `sip:localhost`, as SIPp's `[authentication]` writes them, then for the
/// Request-URI: the statuses of the two answers.
fn register_with_digest_uri_of_sipp(s_: &ServerProcess) -> (u16, u16) {
    let c = Client::new();
    let reg = alice_reg();
    let ch = challenge(&c, s_, &reg);
    let d = challenges(&ch)[0];
    let client = DigestClient {
        username: "alice",
        password: "secret",
    };
    let creds = client
        .authorization(&d, b"REGISTER", b"sip:127.0.0.1:5060", 1, "0a4f113b")
        .unwrap();
    let first = status(&reg.next().with_auth(&creds).send(&c, s_.addr));
    let creds = client
        .authorization(&d, b"REGISTER", reg.ruri.as_bytes(), 2, "0a4f113b")
        .unwrap();
    let second = status(&reg.next().next().with_auth(&creds).send(&c, s_.addr));
    (first, second)
}

#[test]
fn digest_uri_is_verified_as_the_client_sent_it() {
    assert_eq!(
        register_with_digest_uri_of_sipp(&alice_server()),
        (200, 200)
    );
}

#[test]
fn strict_digest_uri_requires_the_request_uri() {
    let s_ = ServerProcess::start(&[
        "--shards",
        "1",
        "--user",
        "alice:secret",
        "--strict-digest-uri",
    ]);
    assert_eq!(register_with_digest_uri_of_sipp(&s_), (401, 200));
}

#[test]
fn credentials_without_qop_or_for_another_realm_are_challenged() {
    let s_ = alice_server();
    let c = Client::new();
    let reg = alice_reg();
    let ch = challenge(&c, &s_, &reg);
    let creds = answer(&ch, Some("MD5"), "alice", "secret", &reg, 1);
    // RFC 2069 style (no qop, nc, cnonce): not accepted.
    let no_qop: Vec<&str> = creds
        .split(", ")
        .filter(|p| !p.starts_with("qop=") && !p.starts_with("nc=") && !p.starts_with("cnonce="))
        .collect();
    let r = reg.next().with_auth(&no_qop.join(", ")).send(&c, s_.addr);
    assert_status(&r, 401);
    assert!(!challenges(&r).is_empty());
    // Credentials for another realm are for another server: challenged, not refused.
    let other = creds.replace("realm=\"localhost\"", "realm=\"elsewhere.example\"");
    assert_ne!(other, creds);
    let r = reg.next().next().with_auth(&other).send(&c, s_.addr);
    assert_status(&r, 401);
    assert!(!challenges(&r).is_empty());
}

#[test]
fn tampered_nonce_gets_401_without_stale() {
    let s_ = alice_server();
    let c = Client::new();
    let reg = alice_reg();
    let r = challenge(&c, &s_, &reg);
    let mut ch = challenges(&r)[0];
    // Change one digit of the issue time (the first 16 hex digits): the MAC no longer fits.
    let mut nonce = s(ch.nonce).to_string();
    let digit = if nonce.as_bytes()[15] == b'0' {
        "1"
    } else {
        "0"
    };
    nonce.replace_range(15..16, digit);
    ch.nonce = Some(nonce.as_bytes());
    let creds = DigestClient {
        username: "alice",
        password: "secret",
    }
    .authorization(&ch, b"REGISTER", reg.ruri.as_bytes(), 1, "0a4f113b")
    .unwrap();
    let r = reg.next().with_auth(&creds).send(&c, s_.addr);
    assert_status(&r, 401);
    let all = challenges(&r);
    assert!(!all.is_empty());
    assert!(all.iter().all(|d| d.stale.is_none()), "{all:?}");
}

#[test]
fn expired_nonce_gets_401_with_stale_true() {
    let cfg = config_file("nonce_ttl = 10\n");
    let s_ = ServerProcess::start(&[
        "--shards",
        "1",
        "--user",
        "alice:secret",
        "--config",
        &cfg,
        "--auth-algorithms",
        "md5,sha-256",
    ]);
    let c = Client::new();
    let reg = alice_reg();
    let r = challenge(&c, &s_, &reg);
    // The nonce's age is counted in whole seconds and must exceed the TTL.
    std::thread::sleep(Duration::from_millis(12_200));
    let creds = answer(&r, Some("SHA-256"), "alice", "secret", &reg, 1);
    let r = reg.next().with_auth(&creds).send(&c, s_.addr);
    assert_status(&r, 401);
    let all = challenges(&r);
    assert_eq!(all.len(), 2);
    assert!(
        all.iter().all(|d| s(d.stale).eq_ignore_ascii_case("true")),
        "{}",
        String::from_utf8_lossy(&r)
    );
    // The fresh nonce works.
    let creds = answer(&r, Some("SHA-256"), "alice", "secret", &reg, 1);
    let r = reg.next().next().with_auth(&creds).send(&c, s_.addr);
    assert_status(&r, 200);
}

#[test]
fn authenticated_user_must_own_the_aor() {
    let s_ = alice_server();
    let c = Client::new();
    let r = register_as(&c, &s_, &alice_reg(), None, "bob", "hunter2");
    assert_status(&r, 403);
    // Alice's AOR has no binding: bob's request changed nothing.
    let r = register_as(&c, &s_, &Register::new(ALICE), None, "alice", "secret");
    assert_status(&r, 200);
    assert!(contacts(&r).is_empty());
}

#[test]
fn match_auth_user_false_lets_any_user_register_any_aor() {
    let cfg = config_file("[registrar]\nmatch_auth_user = false\n");
    let s_ = ServerProcess::start(&[
        "--shards",
        "1",
        "--user",
        "alice:secret",
        "--user",
        "bob:hunter2",
        "--config",
        &cfg,
    ]);
    let c = Client::new();
    let r = register_as(&c, &s_, &alice_reg(), None, "bob", "hunter2");
    assert_status(&r, 200);
    assert_eq!(contact_uris(&r), vec![A1.to_string()]);
}

#[test]
fn users_file_with_passwords_and_ha1_values() {
    let md5 = ha1(Algorithm::Md5, b"bob", b"localhost", b"bobpw");
    let sha = ha1(Algorithm::Sha256, b"carol", b"localhost", b"carolpw");
    let file = write_scratch(
        "users.txt",
        &format!(
            "# test users\nalice:secret\nbob:ha1={}\ncarol:ha1={}\n",
            md5.as_str(),
            sha.as_str()
        ),
    );
    let s_ = ServerProcess::start(&[
        "--shards",
        "1",
        "--users",
        &file,
        "--auth-algorithms",
        "md5,sha-256",
    ]);
    let c = Client::new();
    for (user, pw, alg) in [
        ("alice", "secret", "SHA-256"),
        ("alice", "secret", "MD5"),
        ("bob", "bobpw", "MD5"),
        ("carol", "carolpw", "SHA-256"),
    ] {
        let reg = Register::new(&format!("sip:{user}@localhost"))
            .contact(&format!("<sip:{user}@192.0.2.1>"));
        let r = register_as(&c, &s_, &reg, Some(alg), user, pw);
        assert_status(&r, 200);
    }
    // An HA1 user cannot use the other algorithm, and a wrong password still fails.
    let reg = Register::new("sip:bob@localhost").contact("<sip:bob@192.0.2.1>");
    assert_status(
        &register_as(&c, &s_, &reg, Some("SHA-256"), "bob", "bobpw"),
        401,
    );
    assert_status(
        &register_as(&c, &s_, &reg, Some("MD5"), "bob", "wrong"),
        401,
    );
}

#[test]
fn malformed_credentials_get_400() {
    let s_ = alice_server();
    let c = Client::new();
    for creds in [
        "Digest username=",
        "Digest username=\"alice\", realm=\"localhost\", nonce=",
        // Well-formed but without nonce, uri and response.
        "Digest username=\"alice\", realm=\"localhost\"",
    ] {
        let r = alice_reg().with_auth(creds).send(&c, s_.addr);
        assert_status(&r, 400);
    }
}

#[test]
fn realm_is_the_first_domain() {
    let s_ = ServerProcess::start(&[
        "--shards",
        "1",
        "--user",
        "alice:secret",
        "--domain",
        "example.com",
        "--domain",
        "localhost",
    ]);
    let c = Client::new();
    let r = challenge(&c, &s_, &alice_reg());
    for d in challenges(&r) {
        assert_eq!(s(d.realm), "example.com");
    }
    let reg = Register::new("sip:alice@example.com").contact(&format!("<{A1}>"));
    assert_status(&register_as(&c, &s_, &reg, None, "alice", "secret"), 200);
    // The second domain is served under the same realm (and is the same AOR).
    let r = register_as(&c, &s_, &Register::new(ALICE), None, "alice", "secret");
    assert_status(&r, 200);
    assert_eq!(contact_uris(&r), vec![A1.to_string()]);
}

#[test]
fn digest_registration_works_across_shards() {
    // Kernel steering off: the datagrams are spread by source and handed on, the path
    // this test is about (a challenge sent for the owner shard, the answer handed to it).
    let mut args: Vec<String> = [
        "--shards",
        "2",
        "--steering",
        "off",
        "--auth-algorithms",
        "md5,sha-256",
    ]
    .map(String::from)
    .to_vec();
    for i in 0..12 {
        args.push("--user".into());
        args.push(format!("user{i}:pw{i}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s_ = ServerProcess::start_with(&args, true);
    let c = Client::new();
    for i in 0..12 {
        let reg = Register::new(&format!("sip:user{i}@localhost"))
            .contact(&format!("<sip:user{i}@192.0.2.1>"));
        let r = register_as(&c, &s_, &reg, None, &format!("user{i}"), &format!("pw{i}"));
        assert_status(&r, 200);
    }
    assert_eq!(s_.metric("sipshard_bindings"), Some(12.0));
    assert!(s_.metric("sipshard_handoffs_total").unwrap() > 0.0);
}

#[test]
fn options_and_register_work_with_auth_on_loopback() {
    let s_ = alice_server();
    let c = Client::new();
    // OPTIONS to the server is not challenged.
    let r = c.request(&options_to_server(&c, s_.addr, &unique("opt-")), s_.addr);
    assert_status(&r, 200);
    let r = register_as(&c, &s_, &alice_reg(), None, "alice", "secret");
    assert_status(&r, 200);
    // A query is challenged too, and lists the binding once authenticated.
    let r = register_as(&c, &s_, &Register::new(ALICE), None, "alice", "secret");
    assert_status(&r, 200);
    assert_eq!(contact_uris(&r), vec![A1.to_string()]);
}

#[test]
fn replayed_credentials_are_refused_on_every_shard() {
    // Any user may register any AOR here, so the replays below reach both shards.
    let cfg = config_file("[registrar]\nmatch_auth_user = false\n");
    let s_ = ServerProcess::start(&[
        "--shards",
        "2",
        "--user",
        "alice:secret",
        "--config",
        &cfg,
        "--auth-algorithms",
        "md5,sha-256",
    ]);
    let c = Client::new();
    let reg = alice_reg();
    let ch = challenge(&c, &s_, &reg);
    let creds = answer(&ch, Some("SHA-256"), "alice", "secret", &reg, 1);
    assert_status(&reg.next().with_auth(&creds).send(&c, s_.addr), 200);
    // The digest covers method and Request-URI, not the To: the same Authorization in a
    // REGISTER for another AOR (owned by either shard) is still a replay of nonce count 1.
    for i in 0..8 {
        let other = Register::new(&format!("sip:user{i}@localhost"))
            .contact(&format!("<sip:user{i}@192.0.2.1>"))
            .with_auth(&creds);
        let r = other.send(&c, s_.addr);
        assert_status(&r, 401);
    }
}

#[test]
fn replayed_credentials_for_the_sips_aor_are_refused() {
    // Default settings (the digest user must own the AOR). `sips:uN` is another AOR than
    // `sip:uN` and may be owned by the other shard; the Authorization of `sip:uN` (the digest
    // covers method and Request-URI, not the To) replayed there is still nonce count 1 again.
    // Kernel steering off: both REGISTERs come from one client socket, so they arrive on
    // one shard and the other shard's AOR is handed on (the cross-shard path).
    let mut args: Vec<String> = [
        "--shards",
        "2",
        "--steering",
        "off",
        "--auth-algorithms",
        "md5,sha-256",
    ]
    .map(String::from)
    .to_vec();
    for i in 0..8 {
        args.push("--user".into());
        args.push(format!("u{i}:pw{i}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s_ = ServerProcess::start(&args);
    let c = Client::new();
    for i in 0..8 {
        let reg = Register::new(&format!("sip:u{i}@localhost")).contact("<sip:u@192.0.2.1>");
        let ch = challenge(&c, &s_, &reg);
        let creds = answer(
            &ch,
            Some("SHA-256"),
            &format!("u{i}"),
            &format!("pw{i}"),
            &reg,
            1,
        );
        assert_status(&reg.next().with_auth(&creds).send(&c, s_.addr), 200);
        let replay = Register::new(&format!("sips:u{i}@localhost"))
            .ruri(&reg.ruri)
            .contact("<sip:mallory@192.0.2.66>")
            .with_auth(&creds);
        assert_status(&replay.send(&c, s_.addr), 401);
    }
}

#[test]
fn failed_authentication_is_logged_at_warn_for_fail2ban() {
    let log = std::path::PathBuf::from(write_scratch("server.log", ""));
    let s_ = ServerProcess::start_logging_to(&["--shards", "1", "--user", "alice:secret"], &log);
    let c = Client::new();
    // A first challenge and a right answer: not failures.
    assert_status(
        &register_as(&c, &s_, &alice_reg(), None, "alice", "secret"),
        200,
    );
    // A wrong password, then an unknown user whose name tries to forge another src=.
    assert_status(
        &register_as(&c, &s_, &alice_reg(), None, "alice", "wrong"),
        401,
    );
    let forger = "x src=192.0.2.99:5060 user=y";
    let reg = Register::new("sip:mallory@localhost").contact("<sip:mallory@192.0.2.66>");
    assert_status(&register_as(&c, &s_, &reg, None, forger, "pw"), 401);
    let want = [
        format!(
            "auth failed src={} user=alice realm=localhost method=REGISTER reason=bad-response",
            c.addr
        ),
        format!(
            "auth failed src={} user=x%20src%3D192.0.2.99:5060%20user%3Dy realm=localhost \
             method=REGISTER reason=unknown-user",
            c.addr
        ),
    ];
    // The log is written as the events happen; give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.contains("auth failed"))
            .map(str::to_owned)
            .collect();
        if lines.len() >= want.len() || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(&want) {
        assert!(line.contains(" WARN "), "{line}");
        assert!(line.ends_with(want.as_str()), "{line}\nwant {want}");
    }
    // The shipped fail2ban filter bans the client's address for both, and nothing else.
    match fail2ban_hosts(&log) {
        Some(hosts) => assert_eq!(hosts, ["127.0.0.1", "127.0.0.1"], "{lines:#?}"),
        None => eprintln!("skipping the fail2ban filter check: no fail2ban-regex, no python3"),
    }
}

#[test]
fn sighup_reloads_the_users_file_keeping_bindings_and_a_bad_file_changes_nothing() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sipshard-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users.txt");
    let log = dir.join("server.log");
    let _ = std::fs::remove_file(&log);
    std::fs::write(&file, "alice:secret\n").unwrap();
    let file_s = file.to_str().unwrap().to_owned();
    let mut s_ = ServerProcess::start_logging_to(
        &["--shards", "2", "--users", &file_s, "--log", "info"],
        &log,
    );
    let hup = |s_: &ServerProcess| {
        let st = Command::new("kill")
            .args(["-HUP", &s_.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    let c = Client::new();
    assert_status(
        &register_as(&c, &s_, &alice_reg(), None, "alice", "secret"),
        200,
    );
    // carol is not a user yet: her right password is refused.
    let carol = Register::new("sip:carol@localhost").contact(&format!("<sip:carol@{}>", c.addr));
    assert_status(&register_as(&c, &s_, &carol, None, "carol", "pw"), 401);
    std::fs::write(&file, "alice:secret\ncarol:pw\n").unwrap();
    hup(&s_);
    // Every shard takes the new users at its next loop round.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut carol = carol.next();
    loop {
        let r = register_as(&c, &s_, &carol, None, "carol", "pw");
        if status(&r) == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "carol never accepted");
        std::thread::sleep(Duration::from_millis(50));
        carol = carol.next();
    }
    // alice's binding outlived the reload (a query lists it).
    let query = alice_reg().next().next().no_contacts();
    let r = register_as(&c, &s_, &query, None, "alice", "secret");
    assert_status(&r, 200);
    assert_eq!(contact_uris(&r), vec![A1.to_string()]);
    // A broken file: the users stay as they were, the error is logged, the server serves on.
    std::fs::write(&file, "alice:secret\nbroken-line\n").unwrap();
    hup(&s_);
    std::thread::sleep(Duration::from_millis(300));
    let r = register_as(&c, &s_, &carol.next().next(), None, "carol", "pw");
    assert_status(&r, 200);
    assert!(
        s_.child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the server"
    );
    let st = s_.terminate();
    assert!(st.success(), "{st:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("reload: users") && text.contains("added=1") && text.contains("removed=0"),
        "{text}"
    );
    assert!(
        text.contains("reload failed, keeping the running configuration")
            && text.contains("users.txt:2"),
        "{text}"
    );
}
