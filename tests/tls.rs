//! TLS (`--listen tls:`, RFC 3261 §26.2.1) on a running server, with certificates made in the
//! test (rcgen) and a rustls client: OPTIONS and a registration over TLS, a call from a UDP
//! phone that reaches the TLS phone over its connection (Via and Record-Route name TLS), a
//! client that does not speak TLS (closed, counted), a required client certificate, and the
//! flags a TLS address needs (exit 2 naming the missing one).

mod common;

use common::{binary, free_port, status, Client, ServerProcess};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

struct Pki {
    dir: PathBuf,
    ca_der: Vec<u8>,
}

/// A CA and a server certificate for 127.0.0.1 signed by it (and a client certificate),
/// written as PEM files into a scratch directory.
fn pki(name: &str) -> Pki {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(common::unique(&format!("tls-{name}-")));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sipshard test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["phone.example".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
    std::fs::write(dir.join("client-key.pem"), client_key.serialize_pem()).unwrap();
    Pki {
        dir,
        ca_der: ca.der().to_vec(),
    }
}

impl Pki {
    fn path(&self, f: &str) -> String {
        self.dir.join(f).to_str().unwrap().to_string()
    }

    /// A TLS client to `addr` that trusts the test CA (with the client certificate when
    /// `with_cert`).
    #[allow(deprecated)] // the ring provider, as in src/transport/tls.rs
    fn connect(
        &self,
        addr: SocketAddr,
        with_cert: bool,
    ) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone().into()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let cfg = if with_cert {
            use rustls::pki_types::pem::PemObject;
            let chain: Vec<_> =
                rustls::pki_types::CertificateDer::pem_file_iter(self.path("client.pem"))
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(self.path("client-key.pem"))
                .unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        } else {
            builder.with_no_client_auth()
        };
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        rustls::StreamOwned::new(conn, tcp)
    }
}

fn request(method: &str, ruri: &str, extra: &str, call_id: &str) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=t\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

fn tls_server(p: &Pki, extra: &[&str]) -> (ServerProcess, SocketAddr) {
    let port = free_port();
    let tls_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = format!("tls:{tls_addr}");
    let (cert, key) = (p.path("cert.pem"), p.path("key.pem"));
    let mut args = vec!["--listen", &listen, "--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    (ServerProcess::start_with(&args, true), tls_addr)
}

#[test]
fn a_phone_registers_over_tls_and_a_udp_caller_reaches_it_over_that_connection() {
    let p = pki("reg");
    let (s, tls_addr) = tls_server(&p, &["--shards", "2"]);
    let mut phone = p.connect(tls_addr, false);
    phone
        .write_all(request("OPTIONS", "sip:127.0.0.1", "", "tls-opt").as_bytes())
        .unwrap();
    assert_eq!(status(&common::read_stream_messages(&mut phone, 1)[0]), 200);
    let reg = request(
        "REGISTER",
        "sip:localhost",
        "Contact: <sip:bob@127.0.0.1:5061;transport=tls>\r\n",
        "tls-reg",
    );
    phone.write_all(reg.as_bytes()).unwrap();
    assert_eq!(status(&common::read_stream_messages(&mut phone, 1)[0]), 200);
    assert_eq!(s.metric("sipshard_bindings"), Some(1.0));
    // A UDP caller: the INVITE comes to the phone over its TLS connection.
    let caller = Client::new();
    let invite = format!(
        "INVITE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKtlsinv;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: tls-call\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{}>\r\nContent-Length: 0\r\n\r\n",
        caller.addr, caller.addr
    );
    caller.send(&invite, s.addr);
    let inv = &common::read_stream_messages(&mut phone, 1)[0];
    let text = String::from_utf8_lossy(inv);
    assert!(
        text.starts_with("INVITE sip:bob@127.0.0.1:5061;transport=tls SIP/2.0"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Via: SIP/2.0/TLS {tls_addr};branch=")),
        "{text}"
    );
    assert!(
        text.contains(";transport=tls;lr"),
        "double Record-Route, TLS side: {text}"
    );
    assert_eq!(s.metric("sipshard_connections_made_total"), Some(0.0));
}

#[test]
fn a_client_that_does_not_speak_tls_is_closed() {
    let p = pki("plain");
    let (s, tls_addr) = tls_server(&p, &[]);
    let mut c = TcpStream::connect(tls_addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(request("OPTIONS", "sip:127.0.0.1", "", "plain").as_bytes())
        .unwrap();
    let mut b = [0u8; 4096];
    let mut closed = false;
    for _ in 0..10 {
        match c.read(&mut b) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            // A TLS alert, not a SIP response.
            Ok(n) => assert!(!b[..n].starts_with(b"SIP/2.0")),
        }
    }
    assert!(closed);
    assert_eq!(
        s.metric("sipshard_connection_events_total{reason=\"tls_failed\"}"),
        Some(1.0)
    );
}

#[test]
fn a_required_client_certificate_is_checked() {
    let p = pki("mtls");
    let ca = p.path("ca.pem");
    let (_s, tls_addr) = tls_server(&p, &["--tls-client-ca", &ca]);
    // With the certificate: served.
    let mut ok = p.connect(tls_addr, true);
    ok.write_all(request("OPTIONS", "sip:127.0.0.1", "", "mtls-ok").as_bytes())
        .unwrap();
    assert_eq!(status(&common::read_stream_messages(&mut ok, 1)[0]), 200);
    // Without: the handshake fails, nothing is answered.
    let mut refused = p.connect(tls_addr, false);
    let _ = refused.write_all(request("OPTIONS", "sip:127.0.0.1", "", "mtls-no").as_bytes());
    let mut b = [0u8; 4096];
    assert!(!matches!(refused.read(&mut b), Ok(n) if n > 0));
}

#[test]
fn a_tls_address_without_its_files_exits_2_naming_the_flag() {
    let p = pki("flags");
    for (args, flag) in [
        (vec!["--listen", "tls:127.0.0.1:5061"], "--tls-cert"),
        (
            vec![
                "--listen",
                "tls:127.0.0.1:5061",
                "--tls-cert",
                &p.path("cert.pem"),
            ],
            "--tls-key",
        ),
        (
            vec![
                "--listen",
                "tls:127.0.0.1:5061",
                "--tls-cert",
                "/nonexistent.pem",
                "--tls-key",
                &p.path("key.pem"),
            ],
            "--tls-cert /nonexistent.pem",
        ),
    ] {
        let out = std::process::Command::new(binary())
            .args(["--listen", "udp:127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}
