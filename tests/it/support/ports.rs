//! Free loopback ports for the throwaway services.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// A port nothing listens on right now.
///
/// The port is only free until someone binds it, so a service started from it can
/// in principle lose a race with another process. Within this test binary we at
/// least never hand out the same port twice: the kernel may well return a port
/// again once its probe socket is closed, and two tests running in parallel would
/// then fight over it.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a probe socket on 127.0.0.1")
            .port();
        if given.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("no free port found on 127.0.0.1");
}
