//! Free loopback ports for the throwaway services.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// Where the ports come from: below Linux's default ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768-60999), from which the kernel
/// picks the source port of every outgoing connection. A port taken from
/// that range (by binding port 0) could meanwhile become the local end of
/// one of the many connections the services open to each other, and the
/// service meant to listen on it then fails to start, or a client reaches
/// the wrong peer.
const RANGE: std::ops::Range<u16> = 20_000..32_768;

/// A port nothing listens on right now.
///
/// The port is only free until someone binds it, so a service started from it can
/// in principle lose a race with another process: each process starts at its own
/// place in [`RANGE`] (from its pid) to make that unlikely. Within this test binary
/// we never hand out the same port twice.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    static NEXT: OnceLock<Mutex<u32>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    let next = NEXT.get_or_init(|| Mutex::new(std::process::id().wrapping_mul(2_654_435_761)));
    let span = u32::from(RANGE.end - RANGE.start);
    for _ in 0..span {
        let port = {
            let mut n = next.lock().unwrap();
            *n = n.wrapping_add(1);
            RANGE.start + (*n % span) as u16
        };
        if given.lock().unwrap().contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.lock().unwrap().insert(port);
            return port;
        }
    }
    panic!("no free port found on 127.0.0.1 in {RANGE:?}");
}
