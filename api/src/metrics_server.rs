//! `/metrics` (and `/healthz`) on a listener of their own, for a process that
//! serves no job API: `mmt run`, the broker worker, is scraped while it runs.
//!
//! Plain HTTP on the address given: the exposition holds counts and
//! durations with bounded labels, never PHI, and a cluster scrapes it on the
//! pod network. The server runs on a small runtime of its own, so the
//! dataflow's threads never serve a scrape.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use mmt_core::telemetry::Metrics;
use tokio::sync::oneshot;

use crate::ServeError;

/// The routes: the same exposition as the API's `/metrics`.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(crate::ops::healthz))
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Metrics>) -> Response {
    crate::ops::exposition(&metrics)
}

/// A running metrics endpoint; dropping it stops the server.
#[derive(Debug)]
pub struct MetricsServer {
    address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `listen` (failing now if it cannot) and serves on a thread of
    /// its own until dropped.
    pub fn start(listen: SocketAddr, metrics: Metrics) -> Result<Self, ServeError> {
        let listener = std::net::TcpListener::bind(listen).map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let app = router(metrics);
        let thread = std::thread::Builder::new()
            .name("mmt-metrics".into())
            .spawn(move || {
                let served = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            // A dropped sender (the server dropped) stops it too.
                            let _ = stopped.await;
                        })
                        .await
                });
                if let Err(err) = served {
                    tracing::error!(error = %err, "the metrics endpoint stopped");
                }
            })?;
        Ok(Self {
            address,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address bound (the port the OS chose for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response
    }

    #[test]
    fn serves_the_live_registry_until_dropped() {
        let metrics = Metrics::new().expect("metrics");
        let server = MetricsServer::start("127.0.0.1:0".parse().expect("addr"), metrics.clone())
            .expect("start");
        let address = server.address();
        metrics.transcription_queue_depth.set(7);
        let response = get(address, "/metrics");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("text/plain; version=0.0.4"), "{response}");
        assert!(
            response.contains("transcription_queue_depth 7"),
            "{response}"
        );
        metrics.transcription_queue_depth.set(3);
        assert!(get(address, "/metrics").contains("transcription_queue_depth 3"));
        assert!(get(address, "/healthz").starts_with("HTTP/1.1 200"));
        assert!(get(address, "/v1/jobs").starts_with("HTTP/1.1 404"));
        drop(server);
        assert!(
            std::net::TcpStream::connect(address).is_err(),
            "the listener is closed"
        );
    }

    #[test]
    fn an_address_in_use_is_an_error_at_start() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = taken.local_addr().expect("addr");
        let metrics = Metrics::new().expect("metrics");
        assert!(matches!(
            MetricsServer::start(address, metrics),
            Err(ServeError::Bind { .. })
        ));
    }
}
