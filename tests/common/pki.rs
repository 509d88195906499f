//! Test certificates made in the test (rcgen): a CA, a server certificate for 127.0.0.1 and a
//! client certificate, and a rustls client that trusts the CA (tls.rs and ws.rs).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct Pki {
    dir: PathBuf,
    ca_der: Vec<u8>,
}

/// A CA and a server certificate for 127.0.0.1 signed by it (and a client certificate),
/// written as PEM files into a scratch directory.
pub fn pki(name: &str) -> Pki {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(super::unique(&format!("tls-{name}-")));
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
    pub fn path(&self, f: &str) -> String {
        self.dir.join(f).to_str().unwrap().to_string()
    }

    /// A TLS client to `addr` that trusts the test CA (with the client certificate when
    /// `with_cert`).
    #[allow(deprecated)] // the ring provider, as in src/transport/tls.rs
    pub fn connect(
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
