//! One place that builds HTTP clients: rustls with the ring provider, TLS verification always on,
//! an optional extra CA bundle, a timeout on every request, and no redirects followed: a request
//! carries a password, a token or a key, and an answer that points elsewhere must not get it.

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

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
pub fn load_ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, HttpSetupError> {
    let pem = std::fs::read(path).map_err(|source| HttpSetupError::CaFile {
        path: path.display().to_string(),
        source,
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| HttpSetupError::CaPem {
        path: path.display().to_string(),
    })?;
    if certs.is_empty() {
        return Err(HttpSetupError::CaPem {
            path: path.display().to_string(),
        });
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
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("zenml-rotator/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca_file {
        for cert in load_ca_certificates(path)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
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
