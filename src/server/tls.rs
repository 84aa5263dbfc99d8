//! TLS termination: rustls with the aws-lc-rs provider, ALPN `h2` then `http/1.1`.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ConfigError, TlsFiles};

/// A certificate or key that cannot be used; reported like a configuration error (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub ConfigError);

/// Reads the PEM files and builds the server's TLS configuration.
///
/// # Errors
///
/// Unreadable or empty files, a key that is not a private key, or a key that does not belong
/// to the certificate; each names the file and the configuration key.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let fail = |key: &str, reason: String| {
        TlsError(ConfigError {
            location: files.origin.clone(),
            key: key.to_owned(),
            reason,
        })
    };
    let cert_path = files.cert.display();
    let key_path = files.key.display();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            fail(
                "server.tls_cert",
                format!("cannot read certificates from {cert_path}: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(fail(
            "server.tls_cert",
            format!("no PEM certificate found in {cert_path}"),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        fail(
            "server.tls_key",
            format!("cannot read a private key from {key_path}: {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("server.tls_cert", format!("TLS setup failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            fail(
                "server.tls_key",
                format!("{key_path} cannot be used with the certificate in {cert_path}: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
