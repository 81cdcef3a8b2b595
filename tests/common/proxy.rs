//! A TCP proxy for tests that drop a client's connection to a real service
//! (the broker keeps running; only this client's sockets are cut), or refuse
//! new connections for a while.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Forwards `127.0.0.1:<port>` to `target` until dropped.
pub struct Proxy {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<TcpStream>>>,
    refusing: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = Self {
            addr,
            open: Arc::default(),
            refusing: Arc::default(),
            stopped: Arc::default(),
            accepted: Arc::default(),
        };
        let target = target.to_owned();
        let open = Arc::clone(&proxy.open);
        let refusing = Arc::clone(&proxy.refusing);
        let stopped = Arc::clone(&proxy.stopped);
        let accepted = Arc::clone(&proxy.accepted);
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                if refusing.load(Ordering::Relaxed) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nonblocking(false);
                accepted.fetch_add(1, Ordering::Relaxed);
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    open.lock().expect("lock").extend([c, s]);
                }
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });
        proxy
    }

    /// `127.0.0.1:<port>` to connect to instead of the service.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Cuts every open connection (both directions), as a network failure would.
    pub fn sever(&self) {
        for stream in self.open.lock().expect("lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Refuses (closes at once) new connections while `refusing` is true.
    pub fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.sever();
    }
}

fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        // A plain read/write loop: `std::io::copy` between sockets may take
        // the kernel's zero-copy path, which stalled here under load.
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
