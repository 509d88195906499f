//! TLS for the stream transport (RFC 3261 §26.2.1, §18 over TLS): the server's rustls
//! configuration from PEM files (`--tls-cert`, `--tls-key`, and `--tls-client-ca` to require
//! client certificates), and the client configuration of the connections the server opens
//! (to a TLS trunk or contact), which verifies the peer against `--tls-ca` or the system's
//! CA bundle. The connections themselves run in `tcp.rs`: a TLS connection is a TCP connection
//! whose bytes pass through a rustls `Connection`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS files of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_ca: Option<std::path::PathBuf>,
    /// Trust anchors for the certificates of peers we connect to (None: the system's).
    pub ca: Option<std::path::PathBuf>,
}

/// Debian's (and most distributions') bundle of the system's trusted CAs.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The crypto provider of every TLS connection: ring, with key exchange groups in the order
/// X25519, P-256, P-384. ring's default puts P-384 first. A rustls server takes the client's
/// order, so for the server this only says which groups it accepts; for the connections the
/// server opens it makes X25519 the key share sent. On the VM this was measured on, a full
/// TLS 1.3 handshake with a P-384 key share cost the server about 1.6 ms of CPU (most of it
/// P-384 arithmetic) against a few hundred µs with X25519, which is what OpenSSL, GnuTLS and
/// the browsers send first (perf/tls-handshakes.py).
#[allow(deprecated)] // the ring provider, see server_config
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::kx_group;
    let mut p = rustls::crypto::ring::default_provider();
    p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(p)
}

/// The configuration of the TLS connections the server opens: the peer's certificate must
/// chain to `files.ca` (or the system bundle when none is given) and name the address
/// connected to. No client certificate is offered.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = provider();
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca {
        Some(ca) => {
            for c in certs(ca, "--tls-ca")? {
                roots
                    .add(c)
                    .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
            }
        }
        None => {
            // A machine without the bundle opens no TLS connection that verifies; the server
            // still serves TLS.
            if let Ok(iter) = CertificateDer::pem_file_iter(SYSTEM_CA_BUNDLE) {
                let (added, _) = roots.add_parsable_certificates(iter.flatten());
                tracing::debug!(added, "system CAs for outgoing TLS");
            }
            if roots.is_empty() {
                tracing::warn!(
                    "no CA certificate in {SYSTEM_CA_BUNDLE} and no --tls-ca: TLS connections \
                     the server opens (tls trunks and contacts) will fail verification"
                );
            }
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// The server's TLS configuration. Errors name the flag and the file.
// ring is deprecated as a provider for lacking post-quantum key exchange; aws-lc-rs, which has
// it, needs cmake to build. Classical key exchange is what SIP phones speak today.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = provider();
    let chain = certs(&files.cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca, "--tls-client-ca")? {
                roots
                    .add(c)
                    .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    // Resumption: session tickets are stateless for the server (any shard resumes them).
    cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS: {e}"))?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use rustls::NamedGroup;

    #[test]
    fn key_exchange_offers_x25519_first_and_keeps_the_nist_curves() {
        let groups: Vec<NamedGroup> = super::provider()
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect();
        assert_eq!(
            groups,
            [
                NamedGroup::X25519,
                NamedGroup::secp256r1,
                NamedGroup::secp384r1
            ]
        );
    }
}
