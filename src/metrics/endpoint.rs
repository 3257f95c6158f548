//! `run` mode's HTTP endpoints: `/metrics` for Prometheus, `/healthz` and `/readyz` for the
//! orchestrator.

use super::get;

/// What `/readyz` reports on, updated by the daemon.
#[derive(Debug, Default)]
pub struct Health {
    /// A valid policy is loaded.
    pub policy_loaded: std::sync::atomic::AtomicBool,
    /// ZenML answered during the last pass.
    pub zenml_reachable: std::sync::atomic::AtomicBool,
    /// Passes completed since start.
    pub passes: std::sync::atomic::AtomicU64,
}

/// Serves `/metrics`, `/healthz` (alive) and `/readyz` (policy loaded and ZenML reachable in the
/// last pass) until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, health: std::sync::Arc<Health>) {
    use axum::http::{StatusCode, header};
    use axum::routing::get as route;
    use std::sync::atomic::Ordering;

    let ready = move || {
        let health = health.clone();
        async move {
            let loaded = health.policy_loaded.load(Ordering::Relaxed);
            let passes = health.passes.load(Ordering::Relaxed);
            let zenml = health.zenml_reachable.load(Ordering::Relaxed);
            if loaded && passes > 0 && zenml {
                (StatusCode::OK, "ready\n".to_string())
            } else if !loaded {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no valid policy loaded\n".into(),
                )
            } else if passes == 0 {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "first pass not finished\n".into(),
                )
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ZenML was not reachable in the last pass\n".into(),
                )
            }
        }
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            route(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    get().render(),
                )
            }),
        )
        .route("/healthz", route(|| async { "ok\n" }))
        .route("/readyz", route(ready));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}
