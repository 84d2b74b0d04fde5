//! SIP over TLS (RFC 3261 §26, RFC 5630): the server certificate and key
//! (PEM files), optionally the CAs whose client certificates are required
//! (trunks, SBCs), loaded with rustls on ring. Reloaded on SIGHUP and when
//! a file changes, without touching live connections: each new handshake
//! takes the configuration current at that moment; a reload that fails
//! (a half-written file, a key that does not match) keeps the previous one
//! and is logged and counted.

use crate::reload::Reloadable;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The files a TLS listener is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) a client certificate must chain to; `None`:
    /// no client certificate asked for.
    pub client_ca: Option<PathBuf>,
}

/// The current TLS server configuration, reloadable (see
/// [`crate::reload`]).
pub struct TlsCerts {
    files: TlsFiles,
    config: Arc<Reloadable<rustls::ServerConfig>>,
}

impl TlsCerts {
    /// Load the files, or say what is wrong with them.
    pub fn load(files: TlsFiles) -> Result<Arc<TlsCerts>, String> {
        let paths = [
            Some(&files.cert),
            Some(&files.key),
            files.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        let f = files.clone();
        let config = Reloadable::new("TLS certificate", paths, move || server_config(&f))?;
        Ok(Arc::new(TlsCerts { files, config }))
    }

    /// An acceptor with the configuration current now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.current())
    }

    /// Load the files again; on error the previous configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        self.config.reload()
    }

    /// The files it is loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reload on SIGHUP and when a file changes, until `shutdown`.
    /// `on_reload(ok)` counts each attempt.
    pub async fn watch(
        self: Arc<Self>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        on_reload: impl Fn(bool) + Send + 'static,
    ) {
        self.config.clone().watch(shutdown, on_reload).await
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// Build the rustls server configuration from the files (ring provider,
/// TLS 1.2 and 1.3).
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    let certs = read_certs(&files.cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca, "--tls-client-ca")? {
                roots
                    .add(c)
                    .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    // No TLS 1.3 session tickets after the handshake: sipsak (GnuTLS)
    // stops reading the connection on them ("select returned error") and
    // never sees our answer, and SIP phones' TLS stacks are no newer. A
    // phone keeps one connection open for hours, so resumption saves
    // little; a reconnect storm pays full handshakes.
    config.send_tls13_tickets = 0;
    Ok(config)
}
