//! What a full verified-token cache costs in memory: fills a `TokenCache` of
//! `cache.token_capacity` entries (default 65,536) with Keycloak-shaped
//! identities (UUID `sub` and `sid`, username, email, names, the realm's
//! default roles), cycling through three times as many tokens so that
//! eviction churns the heap as it does in a server, and prints the resident
//! memory it added and the cost per entry.
//!
//! ```text
//! cargo run --release --example token_cache_memory [-- CAPACITY]
//! ```
//!
//! The server's own peak RSS with a full cache is measured by
//! `loadgen --tokens 100000` (see BENCHMARKS.md).

use std::sync::Arc;

use twofa_authz::token::{Identity, IdentityParts, TokenCache};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A UUID-shaped string unique to `i` (Keycloak's `sub` and `sid` look so).
fn uuid(i: usize, salt: u64) -> String {
    let x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        x >> 32,
        (x >> 16) & 0xffff,
        x & 0xfff,
        (x >> 12) & 0xfff,
        x & 0xffff_ffff_ffff
    )
}

fn main() {
    let capacity: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("CAPACITY must be a whole number"))
        .unwrap_or(twofa_authz::token::DEFAULT_TOKEN_CACHE_CAPACITY);
    let iss: Arc<str> = "https://sso.example.com/realms/demo".into();
    let roles = ["offline_access", "uma_authorization", "default-roles-demo"];
    let before = rss_kib();
    let cache = TokenCache::new(capacity);
    for i in 0..capacity * 3 {
        let (sub, sid) = (uuid(i, 1), uuid(i, 2));
        let (user, email) = (format!("user{i}"), format!("user{i}@example.com"));
        let id = Identity::new(
            iss.clone(),
            IdentityParts {
                sub: &sub,
                sid: Some(&sid),
                username: Some(&user),
                email: Some(&email),
                email_verified: true,
                given_name: Some("Alice"),
                family_name: Some("Example"),
                locale: Some("en"),
                roles: &roles,
                exp: i64::MAX / 2,
                valid_until: i64::MAX / 2,
            },
        );
        let key = TokenCache::key(&format!("token-{i}"));
        cache.insert(key, Arc::new(id), cache.generation());
    }
    let added = rss_kib().saturating_sub(before);
    let n = cache.len().max(1) as u64;
    println!(
        "{} entries (capacity {}): {:.1} MiB resident, {} bytes per entry",
        cache.len(),
        capacity,
        added as f64 / 1024.0,
        added * 1024 / n
    );
}
