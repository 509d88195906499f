//! RFC 4475 and RFC 5118 torture messages, from the corpus in `tests/torture/` (part of the
//! repository, so every checkout runs this). Every file of the manifest is checked: valid
//! messages parse and expose the fields the RFC calls out; invalid ones are rejected with an
//! error naming the problem. The corpus is never optional: a missing file is a failure.

use sipshard::sip::uri::eq_unescaped;
use sipshard::sip::{ErrorKind, HeaderName, HostKind, Message, ParseError, Scheme, Uri};
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/torture");
    assert!(
        dir.join("manifest.tsv").is_file(),
        "conformance corpus missing at {} (it is part of the repository)",
        dir.display()
    );
    dir
}

/// The RFC 5118 archive uses bare LF, two files lack the final empty line and two have a wrong
/// Content-Length; turn them into the wire bytes the RFC describes (see the corpus README).
fn wire_bytes_5118(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(raw.to_vec()).expect("RFC 5118 files are ASCII");
    let (head, body) = match text.find("\n\n") {
        Some(i) => (&text[..i], &text[i + 2..]),
        None => (text.trim_end_matches('\n'), ""),
    };
    let body = body.replace('\n', "\r\n");
    let mut out = String::new();
    for line in head.split('\n') {
        if line.to_ascii_lowercase().starts_with("content-length") {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

struct Row {
    file: String,
    section: String,
    valid: bool,
}

fn manifest(dir: &std::path::Path) -> Vec<Row> {
    let text = std::fs::read_to_string(dir.join("manifest.tsv")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert!(cols.len() >= 3, "bad manifest line {l}");
            Row {
                file: cols[0].to_string(),
                section: cols[1].to_string(),
                valid: match cols[2] {
                    "valid" => true,
                    "invalid" => false,
                    other => panic!("unknown verdict {other}"),
                },
            }
        })
        .collect()
}

fn s(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap()
}

/// Files the RFC calls syntactically valid but which a server must still refuse with 400:
/// `Message::validate` must report exactly this kind.
fn expected_validate_failure(name: &str) -> Option<ErrorKind> {
    Some(match name {
        "insuf.dat" => ErrorKind::MissingHeader,
        "multi01.dat" => ErrorKind::DuplicateHeader,
        "mcl01.dat" => ErrorKind::ConflictingContentLength,
        _ => return None,
    })
}

/// For invalid files: the error kind and (where it is in a header) which header.
fn expected_rejection(name: &str) -> (ErrorKind, Option<&'static str>) {
    use ErrorKind::*;
    match name {
        "badinv01.dat" => (BadHeaderValue, Some("Via")),
        "clerr.dat" => (BodyTooShort, Some("Content-Length")),
        "ncl.dat" => (BadContentLength, Some("Content-Length")),
        "scalar02.dat" => (OutOfRange, Some("CSeq")),
        "scalarlg.dat" => (OutOfRange, Some("CSeq")),
        "quotbal.dat" => (BadHeaderValue, Some("To")),
        "ltgtruri.dat" => (BadRequestUri, None),
        "lwsruri.dat" => (BadRequestUri, None),
        "lwsstart.dat" => (BadRequestUri, None),
        "trws.dat" => (BadStartLine, None),
        "escruri.dat" => (BadRequestUri, None),
        "baddate.dat" => (BadHeaderValue, Some("Date")),
        "regbadct.dat" => (BadHeaderValue, Some("Contact")),
        "badaspec.dat" => (BadHeaderValue, Some("To")),
        "baddn.dat" => (Incomplete, None),
        "badvers.dat" => (VersionNotSupported, None),
        "mismatch01.dat" => (CSeqMethodMismatch, Some("CSeq")),
        "mismatch02.dat" => (CSeqMethodMismatch, Some("CSeq")),
        "bigcode.dat" => (BadStatusCode, None),
        "test.dat" => (BadStartLine, None),
        "ipv6-bad.dat" => (BadRequestUri, None),
        other => panic!("no expectation written for invalid file {other}"),
    }
}

/// Field checks for valid files: what each RFC section calls out.
fn check_fields(name: &str, m: &Message<'_>) {
    let ruri = || m.request_uri().unwrap();
    match name {
        "wsinv.dat" => {
            assert_eq!(m.max_forwards().unwrap(), Some(68));
            assert_eq!(m.cseq().unwrap().seq, 9);
            assert_eq!(m.cseq().unwrap().method, b"INVITE");
            assert_eq!(m.to().unwrap().tag(), Some(&b"1918181833n"[..]));
            assert_eq!(m.from().unwrap().tag(), Some(&b"98asjd8"[..]));
            assert_eq!(m.from().unwrap().display, Some(&br#"J Rosenberg \\\""#[..]));
            let vias: Vec<_> = m.vias().map(|v| v.unwrap()).collect();
            assert_eq!(vias.len(), 3);
            assert_eq!(vias[0].branch(), Some(&b"390skdjuw"[..]));
            assert_eq!(vias[1].transport, b"TCP");
            assert_eq!(vias[1].host, b"spindle.example.com");
            assert_eq!(vias[2].branch(), Some(&b"z9hG4bK30239"[..]));
            let c = m.contacts().next().unwrap().unwrap();
            assert_eq!(c.q(), Some(330));
            assert_eq!(c.params.get("newparam"), Some(Some(&b"newvalue"[..])));
            assert_eq!(m.body().len(), 150);
            assert!(m
                .header_by_name("NewFangledHeader")
                .unwrap()
                .ends_with(b"continued newfangled value"));
            assert_eq!(m.header(HeaderName::Subject), Some(&b""[..]));
            assert!(ruri().param("unknownparam").is_some());
        }
        "intmeth.dat" => {
            assert_eq!(
                m.method_bytes().unwrap(),
                b"!interesting-Method0123456789_*+`.%indeed'~"
            );
            let u = ruri();
            assert_eq!(
                u.user.unwrap(),
                b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
            );
            assert_eq!(
                u.password.unwrap(),
                b"&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
            );
            assert_eq!(u.host, b"example.com");
            assert_eq!(
                m.top_via().unwrap().branch(),
                Some(&b"z9hG4bK-.!%66*_+`'~"[..])
            );
            assert_eq!(
                m.call_id().unwrap(),
                br#"intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{"#
            );
            assert_eq!(m.from().unwrap().tag(), Some(&b"_token~1'+`*%!-."[..]));
            assert_eq!(m.max_forwards().unwrap(), Some(255));
        }
        "esc01.dat" => {
            let u = ruri();
            assert_eq!(u.aor().unwrap(), "sip:sips:user@example.com@example.net");
            let c = m.contacts().next().unwrap().unwrap().uri().unwrap();
            // %6C%72 is "lr" once unescaped; n%61me=v%61lue%25%34%31 is name=value%41, not valueA.
            assert!(c.lr());
            let v = c.param("name").unwrap().unwrap();
            assert!(eq_unescaped(v, b"value%2541", false));
            assert!(!eq_unescaped(v, b"valueA", false));
        }
        "escnull.dat" => {
            let to = m.to().unwrap().uri().unwrap();
            assert_eq!(to.aor().unwrap(), "sip:null-\0-null@example.com");
            let contacts: Vec<_> = m.contacts().map(|c| c.unwrap()).collect();
            assert_eq!(contacts.len(), 2);
            let a = contacts[0].uri().unwrap();
            let b = contacts[1].uri().unwrap();
            assert!(!a.equals(&b));
        }
        "esc02.dat" => {
            assert_eq!(m.method_bytes().unwrap(), b"RE%47IST%45R");
            assert_eq!(m.contacts().count(), 2, "C%6Fntact is not a Contact");
            assert_eq!(
                m.header_by_name("C%6Fntact"),
                Some(&b"<sip:alias2@host2.example.com>"[..])
            );
        }
        "lwsdisp.dat" => {
            assert_eq!(m.from().unwrap().display, Some(&b"caller"[..]));
            assert_eq!(m.from().unwrap().tag(), Some(&b"323"[..]));
        }
        "longreq.dat" => {
            assert_eq!(m.vias().count(), 34);
            assert!(m.vias().all(|v| v.is_ok()));
            assert!(m.call_id().unwrap().len() > 100);
            assert!(m.from().unwrap().tag().unwrap().len() > 10);
            let to = m.to().unwrap().uri().unwrap();
            assert_eq!(to.port, Some(6000));
            assert!(to.param("unknownparam1").unwrap().unwrap().len() > 80);
        }
        "dblreq.dat" => {
            assert_eq!(m.method_bytes().unwrap(), b"REGISTER");
            assert_eq!(m.body(), b"");
            assert!(m.len() < m.buf().len(), "trailing INVITE ignored");
        }
        "semiuri.dat" => {
            let u = ruri();
            assert_eq!(u.user.unwrap(), b"user;par=u%40example.net");
            assert_eq!(u.host, b"example.com");
            assert_eq!(u.aor().unwrap(), "sip:user;par=u@example.net@example.com");
            assert!(u.params.is_empty());
        }
        "transports.dat" => {
            let t: Vec<_> = m.vias().map(|v| v.unwrap().transport.to_vec()).collect();
            assert_eq!(
                t,
                vec![
                    b"UDP".to_vec(),
                    b"SCTP".to_vec(),
                    b"TLS".to_vec(),
                    b"UNKNOWN".to_vec(),
                    b"TCP".to_vec()
                ]
            );
        }
        "mpart01.dat" => {
            let ct = m.content_type().unwrap().unwrap();
            assert_eq!(ct.subtype, b"mixed");
            assert!(ct.params.get("boundary").is_some());
            assert_eq!(m.body().len(), m.content_length().unwrap() as usize);
            assert!(m.body().contains(&0));
        }
        "unreason.dat" => {
            assert_eq!(m.status(), Some(200));
            assert!(std::str::from_utf8(m.reason().unwrap()).is_ok());
            assert!(m.reason().unwrap().len() > 10);
        }
        "noreason.dat" => {
            assert_eq!(m.status(), Some(100));
            assert_eq!(m.reason(), Some(&b""[..]));
        }
        "badbranch.dat" => {
            let v = m.top_via().unwrap();
            assert_eq!(v.branch(), Some(&b"z9hG4bK"[..]));
        }
        "insuf.dat" => {
            assert!(m.header(HeaderName::CallId).is_none());
            assert!(m.header(HeaderName::From).is_none());
            assert!(m.header(HeaderName::To).is_none());
        }
        "unkscm.dat" => {
            assert!(matches!(ruri().scheme, Scheme::Other(s) if s == b"nobodyKnowsThisScheme"));
        }
        "novelsc.dat" => {
            assert!(matches!(ruri().scheme, Scheme::Other(s) if s == b"soap.beep"));
        }
        "unksm2.dat" => {
            let to = m.to().unwrap().uri().unwrap();
            assert!(matches!(to.scheme, Scheme::Other(s) if s == b"isbn"));
            assert!(!to.is_sip());
        }
        "bext01.dat" => {
            let req: Vec<_> = m
                .option_tags(HeaderName::Require)
                .map(|t| t.unwrap())
                .collect();
            assert!(!req.is_empty());
            let preq: Vec<_> = m
                .option_tags(HeaderName::ProxyRequire)
                .map(|t| t.unwrap())
                .collect();
            assert!(!preq.is_empty());
        }
        "invut.dat" => {
            let ct = m.content_type().unwrap().unwrap();
            assert_eq!(s(ct.mtype), "application");
            assert_eq!(s(ct.subtype), "unknownformat");
        }
        "regaut01.dat" => {
            let a = m
                .auth_headers(HeaderName::Authorization)
                .next()
                .unwrap()
                .unwrap();
            assert!(!a.is_digest());
            assert_eq!(a.scheme, b"NoOneKnowsThisScheme");
        }
        "multi01.dat" => {
            assert!(m.count(HeaderName::CallId) > 1);
        }
        "mcl01.dat" => {
            assert!(m.has_conflicting_content_length());
        }
        "bcast.dat" => {
            let vias: Vec<_> = m.vias().map(|v| v.unwrap()).collect();
            assert_eq!(vias[1].host, b"255.255.255.255");
        }
        "zeromf.dat" => assert_eq!(m.max_forwards().unwrap(), Some(0)),
        "cparam01.dat" => {
            let c = m.contacts().next().unwrap().unwrap();
            assert!(!c.bracketed);
            assert!(c.params.get("unknownparam").is_some());
            assert!(c.uri().unwrap().param("unknownparam").is_none());
        }
        "cparam02.dat" => {
            let c = m.contacts().next().unwrap().unwrap();
            assert!(c.bracketed);
            assert!(c.params.get("unknownparam").is_none());
            assert!(c.uri().unwrap().param("unknownparam").is_some());
        }
        "regescrt.dat" => {
            let c = m.contacts().next().unwrap().unwrap().uri().unwrap();
            assert!(c.header_iter().any(|(n, _)| n == b"Route"));
        }
        "sdp01.dat" => {
            assert!(m.header(HeaderName::Accept).is_some());
        }
        "inv2543.dat" => {
            assert!(m.top_via().unwrap().branch().is_none());
            assert!(m.from().unwrap().tag().is_none());
            assert!(m.content_length().is_none());
            assert!(!m.body().is_empty(), "body runs to the end of the datagram");
            assert_eq!(m.max_forwards().unwrap(), None);
        }
        // RFC 5118
        "ipv6-good.dat" => {
            let u = ruri();
            assert_eq!(u.host_kind, HostKind::Ipv6);
            assert_eq!(u.host, b"2001:db8::10");
            let v = m.top_via().unwrap();
            assert_eq!(v.host_kind, HostKind::Ipv6);
            let c = m.contacts().next().unwrap().unwrap().uri().unwrap();
            assert_eq!(c.host_kind, HostKind::Ipv6);
        }
        "port-ambiguous.dat" => {
            let u = ruri();
            assert_eq!(u.host, b"2001:db8::10:5070");
            assert_eq!(u.port, None);
        }
        "port-unambiguous.dat" => {
            let u = ruri();
            assert_eq!(u.host, b"2001:db8::10");
            assert_eq!(u.port, Some(5070));
        }
        "via-received-param-with-delim.dat" => {
            assert_eq!(
                m.top_via().unwrap().received(),
                Some(&b"[2001:db8::9:255]"[..])
            );
        }
        "via-received-param-no-delim.dat" => {
            assert_eq!(
                m.top_via().unwrap().received(),
                Some(&b"2001:db8::9:255"[..])
            );
        }
        "ipv6-in-sdp.dat" | "mult-ip-in-sdp.dat" => {
            assert!(m.body().starts_with(b"v=0"));
            assert_eq!(m.body().len(), m.content_length().unwrap() as usize);
        }
        "mult-ip-in-header.dat" => {
            let vias: Vec<_> = m.vias().map(|v| v.unwrap()).collect();
            assert!(vias.iter().any(|v| v.host_kind == HostKind::Ipv6));
            assert!(vias
                .iter()
                .any(|v| v.host_kind == HostKind::Ipv6 && v.port == Some(6050)));
            assert!(vias.iter().any(|v| v.host_kind == HostKind::Ipv4));
            assert!(vias
                .iter()
                .any(|v| v.host_kind == HostKind::Ipv6 && v.received().is_some()));
        }
        "ipv4-mapped-ipv6.dat" => {
            let v = m.top_via().unwrap();
            assert_eq!(v.host_kind, HostKind::Ipv6);
            assert!(v.host.starts_with(b"::ffff:"));
        }
        "ipv6-bug-abnf-3-colons.dat" => {
            assert_eq!(ruri().host, b"2001:db8:::192.0.2.1");
        }
        "ipv6-correct-abnf-2-colons.dat" => {
            assert_eq!(ruri().host, b"2001:db8::192.0.2.1");
        }
        other => panic!("no field checks written for valid file {other}"),
    }
}

#[test]
fn rfc4475_and_rfc5118_corpus() {
    let dir = corpus_dir();
    let rows = manifest(&dir);
    assert!(rows.len() >= 60, "manifest lists {} files", rows.len());
    let mut failures = Vec::new();
    for row in &rows {
        let raw = std::fs::read(dir.join(&row.file)).unwrap();
        let bytes = if row.file.starts_with("rfc5118/") {
            wire_bytes_5118(&raw)
        } else {
            raw
        };
        let name = row.file.rsplit('/').next().unwrap();
        let result = std::panic::catch_unwind(|| {
            let parsed = Message::parse(&bytes);
            if row.valid {
                let m = parsed.unwrap_or_else(|e| panic!("valid message rejected: {e}"));
                match expected_validate_failure(name) {
                    None => {
                        if let Err(e) = m.validate() {
                            panic!("valid message failed validation: {e}");
                        }
                    }
                    Some(kind) => {
                        let e = m.validate().expect_err("must be refused with 400");
                        assert_eq!(e.kind, kind, "{e}");
                        assert_eq!(e.status(), 400);
                    }
                }
                check_fields(name, &m);
            } else {
                let err: ParseError = match parsed {
                    Err(e) => e,
                    Ok(m) => m.validate().expect_err("invalid message accepted"),
                };
                let (kind, header) = expected_rejection(name);
                assert_eq!(err.kind, kind, "wrong error: {err}");
                assert_eq!(err.header, header, "wrong header: {err}");
                assert!(err.offset <= bytes.len());
                let reason = err.reason();
                assert!(reason.len() > 15, "reason phrase too vague: {reason}");
            }
        });
        if let Err(p) = result {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{} ({}): {msg}", row.file, row.section));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn uri_comparison_rfc3261_19_1_4() {
    let eq = |a: &str, b: &str| {
        Uri::parse(a.as_bytes())
            .unwrap()
            .equals(&Uri::parse(b.as_bytes()).unwrap())
    };
    // Equivalent pairs from §19.1.4.
    assert!(eq(
        "sip:%61lice@atlanta.com;transport=TCP",
        "sip:alice@AtLanTa.CoM;Transport=tcp"
    ));
    assert!(eq(
        "sip:carol@chicago.com",
        "sip:carol@chicago.com;newparam=5"
    ));
    assert!(eq(
        "sip:carol@chicago.com",
        "sip:carol@chicago.com;security=on"
    ));
    assert!(eq(
        "sip:carol@chicago.com;newparam=5",
        "sip:carol@chicago.com;security=on"
    ));
    assert!(eq(
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"
    ));
    assert!(eq(
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x"
    ));
    // Non-equivalent pairs.
    assert!(!eq(
        "SIP:ALICE@AtLanTa.CoM;Transport=udp",
        "sip:alice@AtLanTa.CoM;Transport=UDP"
    ));
    assert!(!eq("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"));
    assert!(!eq(
        "sip:bob@biloxi.com",
        "sip:bob@biloxi.com;transport=udp"
    ));
    assert!(!eq(
        "sip:bob@biloxi.com",
        "sip:bob@biloxi.com:6000;transport=tcp"
    ));
    assert!(!eq(
        "sip:carol@chicago.com",
        "sip:carol@chicago.com?Subject=next%20meeting"
    ));
    assert!(!eq("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"));
    assert!(!eq("sip:a@b", "sips:a@b"));
    assert!(!eq(
        "sip:carol@chicago.com;newparam=5",
        "sip:carol@chicago.com;newparam=6"
    ));
}

/// The corpus is the published bytes: every file matches `tests/torture/SHA256SUMS` (a checkout
/// that turned CRLF into LF, or an edited message, fails here rather than in a parser check).
#[test]
fn corpus_files_are_byte_exact() {
    use sha2::{Digest, Sha256};
    let dir = corpus_dir();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let mut n = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (hash, file) = line.split_once("  ").expect("sha256sum line");
        let bytes = std::fs::read(dir.join(file.trim_start_matches("./"))).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), hash, "{file}");
        n += 1;
    }
    // 62 messages and the manifest.
    assert_eq!(n, 63);
}
