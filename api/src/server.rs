//! Serving the router: plain HTTP, or TLS with rustls from `SSL_CERT_FILE` and
//! `SSL_KEY_FILE`; a graceful shutdown lets requests in flight finish.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use axum::Router;

use crate::config::{ApiConfig, ApiConfigProblem};

/// How long requests in flight may take to finish once shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid API settings: {}", join(.0))]
    Config(Vec<ApiConfigProblem>),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the TLS certificate and key: {0}")]
    Tls(std::io::Error),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

fn join(problems: &[ApiConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Binds the configured address (before serving, so a caller can learn the
/// port the OS chose for port 0).
pub fn bind(config: &ApiConfig) -> Result<TcpListener, ServeError> {
    config.validate().map_err(ServeError::Config)?;
    let listener = TcpListener::bind(config.listen).map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    match &config.tls {
        Some(tls) => {
            // One process-wide crypto provider; a second install is a no-op error.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rustls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                .await
                .map_err(ServeError::Tls)?;
            let handle = axum_server::Handle::new();
            let drain = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                drain.graceful_shutdown(Some(DRAIN_TIMEOUT));
            });
            axum_server::from_tcp_rustls(listener, rustls)
                .handle(handle)
                .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                .await?;
        }
        None => {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await?;
        }
    }
    Ok(())
}
