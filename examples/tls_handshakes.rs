//! TLS handshake load for `perf/tls-handshakes.py` (issue 16: "TLS handshakes per second per
//! core, full and resumed, against Kamailio"): opens one TLS connection after another to a
//! server at a fixed rate, each doing a whole handshake (full, or resumed from the session the
//! previous connection left), a CRLF keepalive ping that the server answers with a CRLF pong
//! (RFC 5626 §4.4.1; waiting for it also collects the TLS 1.3 session tickets, which a server
//! sends after the handshake), and a close_notify. It prints one JSON line: how many
//! handshakes were done, how many rustls reports as resumed, how many failed and why.
//!
//! Server CPU is measured by the caller from /proc; the client only makes the load. The
//! certificate is not verified (a lab certificate made for the run): the handshake's work on
//! the server is the same. Key exchange: X25519, as OpenSSL-based phones offer it
//! (`sipshard::transport::tls::provider`).
//!
//! ```text
//! tls_handshakes ADDR [--count N] [--rate R] [--tls 1.2|1.3] [--resume on|off]
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, HandshakeKind, SignatureScheme};

/// Accepts any certificate, but checks the handshake signatures as a real client does (so the
/// server's signing work and the client's are both real).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

struct Args {
    addr: SocketAddr,
    count: u64,
    rate: u64,
    tls13: bool,
    resume: bool,
}

fn usage(why: &str) -> ! {
    eprintln!(
        "tls_handshakes: {why}\nusage: tls_handshakes ADDR [--count N] [--rate R] \
         [--tls 1.2|1.3] [--resume on|off]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let addr = it
        .next()
        .unwrap_or_else(|| usage("missing ADDR"))
        .parse()
        .unwrap_or_else(|_| usage("ADDR must be IP:PORT"));
    let mut a = Args {
        addr,
        count: 1000,
        rate: 100,
        tls13: true,
        resume: true,
    };
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match (flag.as_str(), v.as_str()) {
            ("--count", n) => a.count = n.parse().unwrap_or_else(|_| usage("bad --count")),
            ("--rate", n) => a.rate = n.parse().unwrap_or_else(|_| usage("bad --rate")),
            ("--tls", "1.2") => a.tls13 = false,
            ("--tls", "1.3") => a.tls13 = true,
            ("--resume", "on") => a.resume = true,
            ("--resume", "off") => a.resume = false,
            _ => usage(&format!("bad argument {flag} {v}")),
        }
    }
    if a.rate == 0 {
        usage("--rate must be above 0");
    }
    a
}

/// One connection: handshake, CRLF ping and its pong, close_notify. Returns how it went.
fn one(cfg: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<HandshakeKind, String> {
    let name = ServerName::try_from(addr.ip().to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).ok();
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Writing runs the handshake first; the ping goes in the client's first application data.
    tls.write_all(b"\r\n\r\n")
        .map_err(|e| format!("handshake: {e}"))?;
    let mut pong = [0u8; 64];
    match tls.read(&mut pong) {
        Ok(n) if n > 0 => {}
        Ok(_) => return Err("closed before the pong".into()),
        Err(e) => return Err(format!("pong: {e}")),
    }
    let kind = tls
        .conn
        .handshake_kind()
        .ok_or_else(|| "no handshake kind".to_string())?;
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    Ok(kind)
}

fn main() {
    let a = parse_args();
    // The key share a phone's TLS stack (OpenSSL, GnuTLS, mbed TLS) sends first: X25519.
    // ring's default order starts with P-384, which no common SIP client sends first and
    // which costs the server several times the work.
    let provider = sipshard::transport::tls::provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if a.tls13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12]
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap_or_else(|e| usage(&e.to_string()))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    cfg.resumption = if a.resume {
        Resumption::in_memory_sessions(64)
    } else {
        Resumption::disabled()
    };
    let cfg = Arc::new(cfg);

    let (mut ok, mut resumed, mut failed) = (0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / a.rate as f64);
    for i in 0..a.count {
        // Paced by the schedule, not by the previous connection: a slow handshake does not
        // lower the offered rate (the next ones go at once until the schedule is met).
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match one(&cfg, a.addr) {
            Ok(kind) => {
                ok += 1;
                if kind == HandshakeKind::Resumed {
                    resumed += 1;
                }
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"ok\": {ok}, \"resumed\": {resumed}, \"failed\": {failed}, \"elapsed\": {elapsed:.3}, \
         \"tls\": \"{}\", \"resume\": {}, \"first_error\": {}}}",
        if a.tls13 { "1.3" } else { "1.2" },
        a.resume,
        first_error.map_or("null".to_string(), |e| format!("{e:?}")),
    );
}
