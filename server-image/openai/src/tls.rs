//! TLS for the HTTP front: a certificate and key read from PEM files (a mounted `kubernetes.io/tls`
//! Secret, which cert-manager's `Certificate` writes), re-read when either file changes, so a
//! renewed certificate applies to new connections without a restart. A renewal that does not load
//! leaves the last good one in place.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;

use crate::files::on_change;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How often the files are checked for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// The certificate in force, reloaded from its files.
#[derive(Debug)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads `cert` (a PEM chain, leaf first) and `key` (PEM); the error says which file failed
    /// and why.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Arc<Self>, String> {
        let config = server_config(&cert, &key)?;
        Ok(Arc::new(Tls { cert, key, config: RwLock::new(config) }))
    }

    /// The configuration for a new connection.
    pub fn config(&self) -> Option<Arc<ServerConfig>> {
        self.config.read().ok().map(|c| c.clone())
    }

    /// Checks the files every [`RELOAD_CHECK`] and reloads them when their modification times
    /// change; runs until the process ends.
    pub async fn follow(self: Arc<Self>) {
        let files = [self.cert.clone(), self.key.clone()];
        on_change(&files, RELOAD_CHECK, || match server_config(&self.cert, &self.key) {
            Ok(c) => {
                if let Ok(mut config) = self.config.write() {
                    *config = c;
                }
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::warn!(error = %e, "keeping the TLS certificate in force"),
        })
        .await
    }
}

fn server_config(cert: &PathBuf, key: &PathBuf) -> Result<Arc<ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("TLS certificate {}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("TLS key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("TLS certificate and key do not make a server identity: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
