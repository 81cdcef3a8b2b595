//! Whether an external service a test needs is up, with one policy for all.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long the reachability check waits for each address of the service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `name` (e.g. "PostgreSQL") accepts TCP connections at `addr`
/// (`host:port`). Call it first thing in a test that needs the service:
///
/// ```ignore
/// if !common::require_service("Redis", "127.0.0.1:6379") {
///     return;
/// }
/// ```
///
/// When the service is not reachable: with `CI=true` (CI starts every
/// service, so a missing one is a broken environment, not a pass) the test
/// fails here; otherwise this prints `skipping: <name> not reachable at
/// <addr> (<why>)` and returns `false`, so the test returns without testing.
pub fn require_service(name: &str, addr: &str) -> bool {
    let Err(why) = reach(addr) else {
        return true;
    };
    let in_ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    assert!(
        !in_ci,
        "{name} not reachable at {addr} ({why}), and CI=true: CI must provide it"
    );
    println!("skipping: {name} not reachable at {addr} ({why})");
    false
}

/// Connects to the first address of `addr` that answers.
fn reach(addr: &str) -> Result<(), String> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve: {error}"))?
        .collect();
    let mut last = format!("{addr} resolves to no address");
    for socket in addrs {
        match TcpStream::connect_timeout(&socket, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(error) => last = error.to_string(),
        }
    }
    Err(last)
}
