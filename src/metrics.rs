//! Prometheus metrics (INTERFACE.md section 7). The Check path uses counters
//! resolved once at start, so recording a decision hashes no label strings.

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::authz::{Outcome, Verdict};
use crate::token::Reason;

/// One source's `twofa_checks_total` series, resolved at start: a table
/// indexed by decision and reason, so that recording a Check is two array
/// indexings and an atomic add, never a label hash or a lock.
pub struct CheckCounters {
    /// `[verdict][reason]`; `None` for a pair no decision produces.
    table: [[Option<IntCounter>; Reason::ALL.len()]; Verdict::ALL.len()],
    checks: IntCounterVec,
    source: &'static str,
    pub duration: Histogram,
}

impl CheckCounters {
    fn new(
        checks: &IntCounterVec,
        duration: Histogram,
        source: &'static str,
    ) -> Result<Self, prometheus::Error> {
        let mut table: [[Option<IntCounter>; Reason::ALL.len()]; Verdict::ALL.len()] =
            Default::default();
        for v in Verdict::ALL {
            for r in v.reasons() {
                table[v as usize][*r as usize] =
                    Some(checks.get_metric_with_label_values(&[source, v.label(), r.label()])?);
            }
        }
        Ok(Self {
            table,
            checks: checks.clone(),
            source,
            duration,
        })
    }

    pub fn record(&self, outcome: Outcome, seconds: f64) {
        match &self.table[outcome.verdict as usize][outcome.reason as usize] {
            Some(c) => c.inc(),
            // A pair outside Verdict::reasons is a bug in that table; count
            // it anyway (the slow way) rather than lose a decision.
            None => {
                if let Ok(c) = self.checks.get_metric_with_label_values(&[
                    self.source,
                    outcome.verdict.label(),
                    outcome.reason.label(),
                ]) {
                    c.inc();
                }
            }
        }
        self.duration.observe(seconds);
    }
}

/// Hits and misses of one Check-path cache (`twofa_cache_hits_total`,
/// `twofa_cache_misses_total`, label `cache`), resolved once.
#[derive(Clone)]
pub struct CacheCounters {
    pub hits: IntCounter,
    pub misses: IntCounter,
}

/// How many entries a cache holds, read when /metrics is rendered.
type EntriesSource = Arc<dyn Fn() -> usize + Send + Sync>;

pub struct Metrics {
    pub registry: Registry,
    /// `cache="token"`: the verified-token cache.
    pub token_cache: CacheCounters,
    /// `cache="session"`: second-factor state in memory.
    pub session_cache: CacheCounters,
    cache_entries: Vec<(IntGauge, &'static str)>,
    entries_sources: Mutex<Vec<(&'static str, EntriesSource)>>,
    pub grpc_checks: CheckCounters,
    pub http_checks: CheckCounters,
    pub otp_sent: IntCounterVec,
    pub verifications: IntCounterVec,
    pub lockouts: IntCounter,
    /// `twofa_webauthn_failures_total{ceremony, reason}`: refused WebAuthn
    /// responses by why (`factor::webauthn::Refusal`).
    pub webauthn_failures: IntCounterVec,
    pub jwks_refresh: IntCounterVec,
    pub backchannel_logouts: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// Audit events not queued for the webhook (queue full, or closed).
    pub audit_dropped: IntCounter,
    /// Audit events the webhook did not take (error, timeout, non-2xx).
    pub audit_webhook_failures: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let checks = IntCounterVec::new(
            Opts::new(
                "twofa_checks_total",
                "Authorization decisions by source, decision and reason",
            ),
            &["source", "decision", "reason"],
        )?;
        let check_duration = HistogramVec::new(
            HistogramOpts::new("twofa_check_duration_seconds", "Time to decide one check")
                .buckets(exponential_buckets(0.00005, 2.0, 16)?),
            &["source"],
        )?;
        let counters = |source: &'static str| {
            CheckCounters::new(
                &checks,
                check_duration.get_metric_with_label_values(&[source])?,
                source,
            )
        };
        let grpc_checks = counters("grpc")?;
        let http_checks = counters("http")?;
        let otp_sent = IntCounterVec::new(
            Opts::new(
                "twofa_otp_sent_total",
                "One-time codes sent, by channel and result",
            ),
            &["channel", "result"],
        )?;
        let verifications = IntCounterVec::new(
            Opts::new(
                "twofa_verifications_total",
                "Second-factor verifications by method and result",
            ),
            &["method", "result"],
        )?;
        let webauthn_failures = IntCounterVec::new(
            Opts::new(
                "twofa_webauthn_failures_total",
                "Refused WebAuthn registrations and assertions, by ceremony and reason",
            ),
            &["ceremony", "reason"],
        )?;
        let lockouts = IntCounter::new(
            "twofa_lockouts_total",
            "Users locked out after too many wrong codes",
        )?;
        let jwks_refresh = IntCounterVec::new(
            Opts::new(
                "twofa_jwks_refresh_total",
                "Fetches of the issuer's signing keys by result",
            ),
            &["result"],
        )?;
        let backchannel_logouts = IntCounterVec::new(
            Opts::new(
                "twofa_backchannel_logouts_total",
                "OIDC back-channel logout requests by result",
            ),
            &["result"],
        )?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "twofa_http_requests_total",
                "HTTP API requests by route template, method and status",
            ),
            &["method", "route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "twofa_http_request_duration_seconds",
                "HTTP API latency by route template",
            )
            .buckets(exponential_buckets(0.0001, 2.5, 14)?),
            &["method", "route"],
        )?;
        let audit_dropped = IntCounter::new(
            "twofa_audit_dropped_total",
            "Audit events dropped before the webhook: its queue was full (or closed)",
        )?;
        let audit_webhook_failures = IntCounter::new(
            "twofa_audit_webhook_failures_total",
            "Audit events the webhook did not accept (error, timeout or non-2xx status)",
        )?;
        let cache_hits = IntCounterVec::new(
            Opts::new(
                "twofa_cache_hits_total",
                "Check-path cache lookups answered from memory, by cache",
            ),
            &["cache"],
        )?;
        let cache_misses = IntCounterVec::new(
            Opts::new(
                "twofa_cache_misses_total",
                "Check-path cache lookups that went to the signature check or the session store, by cache",
            ),
            &["cache"],
        )?;
        let cache_entries_vec = IntGaugeVec::new(
            Opts::new("twofa_cache_entries", "Entries a Check-path cache holds"),
            &["cache"],
        )?;
        let cache = |name: &str| -> Result<CacheCounters, prometheus::Error> {
            Ok(CacheCounters {
                hits: cache_hits.get_metric_with_label_values(&[name])?,
                misses: cache_misses.get_metric_with_label_values(&[name])?,
            })
        };
        let token_cache = cache("token")?;
        let session_cache = cache("session")?;
        let mut cache_entries = Vec::new();
        for name in ["token", "session"] {
            cache_entries.push((
                cache_entries_vec.get_metric_with_label_values(&[name])?,
                name,
            ));
        }
        registry.register(Box::new(cache_hits))?;
        registry.register(Box::new(cache_misses))?;
        registry.register(Box::new(cache_entries_vec))?;
        registry.register(Box::new(checks))?;
        registry.register(Box::new(check_duration))?;
        registry.register(Box::new(otp_sent.clone()))?;
        registry.register(Box::new(verifications.clone()))?;
        registry.register(Box::new(lockouts.clone()))?;
        registry.register(Box::new(webauthn_failures.clone()))?;
        registry.register(Box::new(jwks_refresh.clone()))?;
        registry.register(Box::new(backchannel_logouts.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(audit_dropped.clone()))?;
        registry.register(Box::new(audit_webhook_failures.clone()))?;
        register_build_and_process(&registry)?;
        Ok(Self {
            registry,
            token_cache,
            session_cache,
            cache_entries,
            entries_sources: Mutex::new(Vec::new()),
            grpc_checks,
            http_checks,
            otp_sent,
            verifications,
            lockouts,
            webauthn_failures,
            jwks_refresh,
            backchannel_logouts,
            http_requests,
            http_duration,
            audit_dropped,
            audit_webhook_failures,
        })
    }

    /// Reports `entries()` as `twofa_cache_entries{cache}` (`token` or
    /// `session`) whenever /metrics is rendered.
    pub fn observe_entries(
        &self,
        cache: &'static str,
        entries: impl Fn() -> usize + Send + Sync + 'static,
    ) {
        self.entries_sources.lock().push((cache, Arc::new(entries)));
    }

    pub fn render(&self) -> String {
        {
            let sources = self.entries_sources.lock();
            for (gauge, name) in &self.cache_entries {
                let n: usize = sources
                    .iter()
                    .filter(|(c, _)| c == name)
                    .map(|(_, f)| f())
                    .sum();
                gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// The commit the binary was built from (build.rs), or "unknown".
pub const BUILD_COMMIT: &str = env!("TWOFA_BUILD_COMMIT");

/// `twofa_build_info{version,commit} 1`, the usual info-metric shape: a
/// dashboard or alert joins on it (`* on(instance) group_left(version)`) to
/// tell which build answered. Plus the standard `process_*` series (CPU,
/// resident memory, open file descriptors, start time), read from /proc on
/// Linux at scrape time: they cost nothing between scrapes.
fn register_build_and_process(registry: &Registry) -> Result<(), prometheus::Error> {
    let build = IntGaugeVec::new(
        Opts::new(
            "twofa_build_info",
            "Build of the running twofa-authz: version and commit, always 1",
        ),
        &["version", "commit"],
    )?;
    build
        .with_label_values(&[env!("CARGO_PKG_VERSION"), BUILD_COMMIT])
        .set(1);
    registry.register(Box::new(build))?;
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The per-decision counters are resolved at start: every series a
    /// decision can produce is exported (at 0) before the first Check, and
    /// recording an outcome moves exactly its own series.
    #[test]
    fn check_counters_are_resolved_once_and_land_on_their_labels() {
        let m = Metrics::new().expect("metrics");
        let mut pairs = Vec::new();
        for v in Verdict::ALL {
            for r in v.reasons() {
                pairs.push(Outcome {
                    verdict: v,
                    reason: *r,
                });
            }
        }
        let series = |source: &str, o: &Outcome| {
            format!(
                "twofa_checks_total{{decision=\"{}\",reason=\"{}\",source=\"{source}\"}}",
                o.verdict.label(),
                o.reason.label()
            )
        };
        let text = m.render();
        for source in ["grpc", "http"] {
            for o in &pairs {
                let s = series(source, o);
                assert_eq!(sample(&text, &s), Some(0.0), "{s} in\n{text}");
            }
        }
        for (n, o) in pairs.iter().enumerate() {
            for _ in 0..=n {
                m.grpc_checks.record(*o, 0.001);
            }
        }
        let allow = Outcome {
            verdict: Verdict::Allow,
            reason: Reason::None,
        };
        m.http_checks.record(allow, 0.002);
        let text = m.render();
        for (n, o) in pairs.iter().enumerate() {
            let grpc = series("grpc", o);
            assert_eq!(sample(&text, &grpc), Some((n + 1) as f64), "{grpc}");
            let http = series("http", o);
            let want = if *o == allow { 1.0 } else { 0.0 };
            assert_eq!(sample(&text, &http), Some(want), "{http}");
        }
        let total = pairs.len() * (pairs.len() + 1) / 2;
        assert_eq!(
            sample(&text, "twofa_check_duration_seconds_count{source=\"grpc\"}"),
            Some(total as f64)
        );
        assert_eq!(
            sample(&text, "twofa_check_duration_seconds_count{source=\"http\"}"),
            Some(1.0)
        );
        // Every reason of the closed set is reachable from some decision.
        for r in Reason::ALL {
            assert!(pairs.iter().any(|o| o.reason == r), "{r} has no series");
        }
    }

    #[test]
    fn build_info_and_process_metrics_are_exported() {
        let text = Metrics::new().expect("metrics").render();
        let series = format!(
            "twofa_build_info{{commit=\"{BUILD_COMMIT}\",version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&text, &series), Some(1.0), "{series} in\n{text}");
        assert!(!BUILD_COMMIT.is_empty());
        assert!(
            BUILD_COMMIT == "unknown" || BUILD_COMMIT.bytes().all(|b| b.is_ascii_hexdigit()),
            "{BUILD_COMMIT}"
        );
        #[cfg(target_os = "linux")]
        for name in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} in\n{text}"
            );
        }
    }

    /// The audit delivery counters are exported at 0 before the first event.
    #[test]
    fn audit_counters_are_exported() {
        let m = Metrics::new().expect("metrics");
        let text = m.render();
        for name in [
            "twofa_audit_dropped_total",
            "twofa_audit_webhook_failures_total",
        ] {
            assert_eq!(
                sample(&text, &format!("{name} ")),
                Some(0.0),
                "{name} in\n{text}"
            );
        }
        m.audit_dropped.inc();
        let text = m.render();
        assert_eq!(sample(&text, "twofa_audit_dropped_total "), Some(1.0));
    }

    /// One family per measure for both caches, exported at 0 before use.
    #[test]
    fn cache_counters_share_one_family_per_measure() {
        let m = Metrics::new().expect("metrics");
        let text = m.render();
        for cache in ["token", "session"] {
            for family in ["twofa_cache_hits_total", "twofa_cache_misses_total"] {
                let series = format!("{family}{{cache=\"{cache}\"}}");
                assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
            }
        }
        m.session_cache.hits.inc();
        m.session_cache.hits.inc();
        m.token_cache.misses.inc();
        m.observe_entries("session", || 7);
        m.observe_entries("token", || 3);
        let text = m.render();
        let at = |s: &str| sample(&text, s);
        assert_eq!(at("twofa_cache_hits_total{cache=\"session\"}"), Some(2.0));
        assert_eq!(at("twofa_cache_hits_total{cache=\"token\"}"), Some(0.0));
        assert_eq!(at("twofa_cache_misses_total{cache=\"token\"}"), Some(1.0));
        assert_eq!(at("twofa_cache_entries{cache=\"session\"}"), Some(7.0));
        assert_eq!(at("twofa_cache_entries{cache=\"token\"}"), Some(3.0));
    }
}
