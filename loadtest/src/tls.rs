//! TLS for the generator's clients: a rustls client configuration built once per
//! run and shared by every connection. The connections themselves drive rustls
//! sans-IO over their non-blocking sockets (see `worker`).

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::path::PathBuf;
use std::sync::Arc;

/// What the command line says about TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM: the CA certificate(s) the broker's certificate must chain to.
    pub cafile: PathBuf,
    /// The name the broker's certificate must be valid for (SNI too, for a DNS name).
    pub server_name: String,
}

/// A client configuration and the name to verify, ready for every connection.
#[derive(Debug, Clone)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsClient {
    /// Reads the CA file and builds the configuration: rustls's safe defaults
    /// (TLS 1.3 and 1.2, ring), and no session resumption, so that every connection
    /// pays a full handshake as a fleet of distinct clients would.
    pub fn new(o: &TlsOptions) -> Result<TlsClient, String> {
        let what = |e: &dyn std::fmt::Display| format!("--cafile {}: {e}", o.cafile.display());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&o.cafile).map_err(|e| what(&e))? {
            let cert = cert.map_err(|e| what(&e))?;
            roots.add(cert).map_err(|e| what(&e))?;
        }
        if roots.is_empty() {
            return Err(what(&"no certificate in the file"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        let server_name = ServerName::try_from(o.server_name.clone())
            .map_err(|e| format!("--tls-server-name {}: {e}", o.server_name))?;
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }
}
