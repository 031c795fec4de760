//! Prometheus metrics (INTERFACE.md section 7). The Check path uses counters
//! resolved once at start, so recording a decision hashes no label strings.

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
    Registry, TextEncoder,
};

use crate::authz::Outcome;

pub struct CheckCounters {
    pub allow: IntCounter,
    pub missing_token: IntCounter,
    pub invalid_token: IntCounter,
    pub second_factor_required: IntCounter,
    pub unavailable: IntCounter,
    /// Would have been refused, allowed by dry run.
    pub dry_run: IntCounter,
    pub duration: Histogram,
}

impl CheckCounters {
    pub fn record(&self, outcome: Outcome, seconds: f64) {
        let c = match outcome {
            Outcome::Allow => &self.allow,
            Outcome::MissingToken => &self.missing_token,
            Outcome::InvalidToken => &self.invalid_token,
            Outcome::SecondFactorRequired => &self.second_factor_required,
            Outcome::Unavailable => &self.unavailable,
            Outcome::DryRun => &self.dry_run,
        };
        c.inc();
        self.duration.observe(seconds);
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub grpc_checks: CheckCounters,
    pub http_checks: CheckCounters,
    pub otp_sent: IntCounterVec,
    pub verifications: IntCounterVec,
    pub lockouts: IntCounter,
    pub jwks_refresh: IntCounterVec,
    pub backchannel_logouts: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let checks = IntCounterVec::new(
            Opts::new(
                "twofa_checks_total",
                "Authorization decisions by source and decision",
            ),
            &["source", "decision"],
        )?;
        let check_duration = HistogramVec::new(
            HistogramOpts::new("twofa_check_duration_seconds", "Time to decide one check")
                .buckets(exponential_buckets(0.00005, 2.0, 16)?),
            &["source"],
        )?;
        let counters = |source: &str| -> Result<CheckCounters, prometheus::Error> {
            Ok(CheckCounters {
                allow: checks.get_metric_with_label_values(&[source, "allow"])?,
                missing_token: checks.get_metric_with_label_values(&[source, "missing_token"])?,
                invalid_token: checks.get_metric_with_label_values(&[source, "invalid_token"])?,
                second_factor_required: checks
                    .get_metric_with_label_values(&[source, "second_factor_required"])?,
                unavailable: checks.get_metric_with_label_values(&[source, "unavailable"])?,
                dry_run: checks.get_metric_with_label_values(&[source, "dry_run"])?,
                duration: check_duration.get_metric_with_label_values(&[source])?,
            })
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
        registry.register(Box::new(checks))?;
        registry.register(Box::new(check_duration))?;
        registry.register(Box::new(otp_sent.clone()))?;
        registry.register(Box::new(verifications.clone()))?;
        registry.register(Box::new(lockouts.clone()))?;
        registry.register(Box::new(jwks_refresh.clone()))?;
        registry.register(Box::new(backchannel_logouts.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        Ok(Self {
            registry,
            grpc_checks,
            http_checks,
            otp_sent,
            verifications,
            lockouts,
            jwks_refresh,
            backchannel_logouts,
            http_requests,
            http_duration,
        })
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The per-decision counters are resolved at start: every series of
    /// section 7 is exported (at 0) before the first Check, and recording an
    /// outcome moves exactly its own series.
    #[test]
    fn check_counters_are_resolved_once_and_land_on_their_labels() {
        let m = Metrics::new().expect("metrics");
        let decisions = [
            (Outcome::Allow, "allow"),
            (Outcome::MissingToken, "missing_token"),
            (Outcome::InvalidToken, "invalid_token"),
            (Outcome::SecondFactorRequired, "second_factor_required"),
            (Outcome::Unavailable, "unavailable"),
            (Outcome::DryRun, "dry_run"),
        ];
        let text = m.render();
        for source in ["grpc", "http"] {
            for (_, d) in decisions {
                let series = format!("twofa_checks_total{{decision=\"{d}\",source=\"{source}\"}}");
                assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
            }
        }
        for (n, (outcome, _)) in decisions.iter().enumerate() {
            for _ in 0..=n {
                m.grpc_checks.record(*outcome, 0.001);
            }
        }
        m.http_checks.record(Outcome::Allow, 0.002);
        let text = m.render();
        for (n, (_, d)) in decisions.iter().enumerate() {
            let grpc = format!("twofa_checks_total{{decision=\"{d}\",source=\"grpc\"}}");
            assert_eq!(sample(&text, &grpc), Some((n + 1) as f64), "{grpc}");
            let http = format!("twofa_checks_total{{decision=\"{d}\",source=\"http\"}}");
            let want = if *d == "allow" { 1.0 } else { 0.0 };
            assert_eq!(sample(&text, &http), Some(want), "{http}");
        }
        assert_eq!(
            sample(&text, "twofa_check_duration_seconds_count{source=\"grpc\"}"),
            Some(15.0)
        );
        assert_eq!(
            sample(&text, "twofa_check_duration_seconds_count{source=\"http\"}"),
            Some(1.0)
        );
    }
}
