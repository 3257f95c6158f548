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

use crate::trust::Changeable;

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
    #[error(
        "permissions {mode:04o} for CA file {path} are too open: other users may write it, and so add a certificate authority of their own that the rotator would trust for every password, token and key it sends; run chmod o-w {path}"
    )]
    CaFileWritable { path: String, mode: u32 },
    #[error(
        "permissions {mode:04o} for directory {dir} of CA file {path} are too open: other users may replace the file there with one holding a certificate authority of their own; run chmod o-w {dir} (or chmod +t {dir})"
    )]
    CaDirWritable {
        path: String,
        dir: String,
        mode: u32,
    },
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

/// Reads every certificate of a PEM bundle; refused when other users may write it (its mode is
/// read from the file opened, so the file checked is the file read) or put another file in its
/// place (`trust.rs`; a read-only mount passes both); one its group may write is read with a
/// warning (once per file and process).
fn load_ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, HttpSetupError> {
    use std::io::Read;
    let io = |source| HttpSetupError::CaFile {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if let Some(changeable) = crate::trust::changeable_by_others(path, &meta).map_err(io)? {
        let path = path.display().to_string();
        return Err(match changeable {
            Changeable::File { mode } => HttpSetupError::CaFileWritable { path, mode },
            Changeable::Directory { dir, mode } => HttpSetupError::CaDirWritable {
                path,
                dir: dir.display().to_string(),
                mode,
            },
        });
    }
    if let Some((mode, gid)) = crate::trust::group_writable(path, &meta) {
        crate::trust::warn_once(format!(
            "permissions {mode:04o} for CA file {0} let group {gid} write it: its members may add a certificate authority of their own that the rotator would trust; run chmod g-w {0}",
            path.display()
        ));
    }
    let mut pem = Vec::new();
    file.read_to_end(&mut pem).map_err(io)?;
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

/// How long an idle connection stays in the pool. Servers close idle keep-alive connections after
/// a few seconds (uvicorn, which runs ZenML, after 5 s; gunicorn after 2 s), and a request written
/// on a connection the server is closing at that moment dies with "connection closed before
/// message completed": for ZenML's rotate call, an answer lost for nothing (the server may or may
/// not have acted), which then needs a recovery. Dropping connections idle for a second costs a
/// new connection after each pause, and a pass's requests to one server rarely pause that long.
const POOL_IDLE: Duration = Duration::from_secs(1);

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
        .pool_idle_timeout(POOL_IDLE)
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

    /// A loopback HTTP/1.1 server that keeps connections alive and counts the ones it accepted.
    async fn counting_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    /// A connection idle past `POOL_IDLE` is not reused: the server may be closing it just then.
    #[tokio::test]
    async fn a_connection_idle_for_a_second_is_not_reused() {
        use std::sync::atomic::Ordering;
        let (url, accepted) = counting_server().await;
        let http = client(Duration::from_secs(5), None).unwrap();
        for _ in 0..3 {
            http.get(&url).send().await.unwrap().text().await.unwrap();
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "back-to-back requests share one"
        );
        tokio::time::sleep(POOL_IDLE + Duration::from_millis(800)).await;
        http.get(&url).send().await.unwrap().text().await.unwrap();
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "an idle connection was reused"
        );
    }

    #[test]
    fn a_ca_file_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not read").unwrap();
        for mode in [0o666, 0o642, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = client(Duration::from_secs(1), Some(&path)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "permissions {mode:04o} for CA file {0} are too open: other users may write it, and so add a certificate authority of their own that the rotator would trust for every password, token and key it sends; run chmod o-w {0}",
                    path.display()
                )
            );
        }
        // Readable by all, writable by its owner and group: read (and here, not a certificate).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        let err = client(Duration::from_secs(1), Some(&path)).unwrap_err();
        assert!(matches!(err, HttpSetupError::CaPem { .. }), "{err}");
    }

    /// Whoever may write to the CA file's directory can put a file of their own in its place
    /// (which directories count: `trust.rs`'s tests).
    #[test]
    fn a_ca_file_in_a_directory_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, "not read").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = client(Duration::from_secs(1), Some(&path)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "permissions 0777 for directory {1} of CA file {0} are too open: other users may replace the file there with one holding a certificate authority of their own; run chmod o-w {1} (or chmod +t {1})",
                path.display(),
                dir.display()
            )
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = client(Duration::from_secs(1), Some(&path)).unwrap_err();
        assert!(matches!(err, HttpSetupError::CaPem { .. }), "{err}");
    }

    #[test]
    fn building_clients_loads_no_trust_store_and_shares_one() {
        client(Duration::from_secs(5), None).unwrap();
        client(Duration::from_secs(5), None).unwrap();
        let shared = system_verifier();
        assert!(shared.loaded.get().is_none(), "loaded before any handshake");
        assert!(Arc::ptr_eq(&shared, &system_verifier()));
    }
}
