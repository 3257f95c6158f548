//! One place that builds HTTP clients: rustls with the ring provider, TLS verification always on
//! against the system's trust store plus an optional extra CA bundle, HTTP/1.1, a timeout on every
//! request, and no redirects followed: a request carries a password, a token or a key, and an
//! answer that points elsewhere must not get it.
//!
//! The trust store is loaded on the first TLS handshake, not when a client is built (parsing
//! /etc/ssl/certs costs ~6 ms of CPU and a few hundred KB per load): a pass over plain-HTTP
//! servers never loads it, and every client without an extra CA shares one loaded store.

use std::path::Path;
use std::sync::{Arc, Once, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path} holds no usable PEM certificate")]
    CaPem { path: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// Installs ring as the process-wide rustls provider (reqwest, vaultrs and the AWS SDK all use it).
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err only means another provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Reads every certificate of a PEM bundle.
fn load_ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, HttpSetupError> {
    let pem = std::fs::read(path).map_err(|source| HttpSetupError::CaFile {
        path: path.display().to_string(),
        source,
    })?;
    let bad_pem = || HttpSetupError::CaPem {
        path: path.display().to_string(),
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad_pem())?;
    if certs.is_empty() {
        return Err(bad_pem());
    }
    Ok(certs)
}

/// A reqwest client with a per-request timeout and, when given, an extra trusted CA bundle.
/// A 3xx answer comes back as it is: reqwest would re-send a 307/308's body (a login form, a key)
/// and every header but `Authorization` (`X-Vault-Token` among them) to wherever it points.
pub fn client(
    timeout: Duration,
    ca_file: Option<&Path>,
) -> Result<reqwest::Client, HttpSetupError> {
    install_crypto_provider();
    let verifier = match ca_file {
        None => system_verifier(),
        Some(path) => Arc::new(LazyPlatformVerifier::new(load_ca_certificates(path)?)),
    };
    let tls = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpSetupError::Build(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("zenml-rotator/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| HttpSetupError::Build(e.to_string()))
}

/// Where a redirect answer points, as `scheme://host:port` only (a path or query may carry a
/// token); `None` when it has no usable `Location`.
pub fn redirect_target(headers: &reqwest::header::HeaderMap, from: &url::Url) -> Option<String> {
    let location = headers.get(reqwest::header::LOCATION)?.to_str().ok()?;
    let to = from.join(location).ok()?;
    let host = to.host_str()?;
    Some(match to.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}", to.scheme()),
        None => format!("{}://{host}", to.scheme()),
    })
}

fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The verifier of every client without an extra CA: one trust store per process.
fn system_verifier() -> Arc<LazyPlatformVerifier> {
    static SYSTEM: OnceLock<Arc<LazyPlatformVerifier>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| Arc::new(LazyPlatformVerifier::new(Vec::new())))
        .clone()
}

/// rustls-platform-verifier (the system's trust store, plus `extra_roots`), built on the first
/// certificate it has to verify. Handshake signatures need no trust store: the provider checks them.
#[derive(Debug)]
struct LazyPlatformVerifier {
    provider: Arc<CryptoProvider>,
    extra_roots: Vec<CertificateDer<'static>>,
    loaded: OnceLock<Result<rustls_platform_verifier::Verifier, rustls::Error>>,
}

impl LazyPlatformVerifier {
    fn new(extra_roots: Vec<CertificateDer<'static>>) -> LazyPlatformVerifier {
        LazyPlatformVerifier {
            provider: ring(),
            extra_roots,
            loaded: OnceLock::new(),
        }
    }

    fn verifier(&self) -> Result<&rustls_platform_verifier::Verifier, rustls::Error> {
        self.loaded
            .get_or_init(|| {
                rustls_platform_verifier::Verifier::new_with_extra_roots(
                    self.extra_roots.iter().cloned(),
                    self.provider.clone(),
                )
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl ServerCertVerifier for LazyPlatformVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_clients_loads_no_trust_store_and_shares_one() {
        client(Duration::from_secs(5), None).unwrap();
        client(Duration::from_secs(5), None).unwrap();
        let shared = system_verifier();
        assert!(shared.loaded.get().is_none(), "loaded before any handshake");
        assert!(Arc::ptr_eq(&shared, &system_verifier()));
    }
}
