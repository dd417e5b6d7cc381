//! The server's Prometheus metrics: requests by route and status, errors by kind, rows
//! scored, request latency, rows per model batch, and requests in flight.

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the server keeps, registered in its own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route and HTTP status.
    pub requests: IntCounterVec,
    /// Requests refused or failed, by kind (`bad_request`, `too_large`, `queue_full`, …).
    pub errors: IntCounterVec,
    /// Rows scored.
    pub rows: IntCounter,
    /// Seconds from a request's arrival to its answer, by route.
    pub latency: HistogramVec,
    /// Rows per model batch (several requests scored together).
    pub batch_rows: Histogram,
    /// Scoring requests received and not yet answered.
    pub in_flight: IntGauge,
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "mtl_requests_total",
                "HTTP requests answered, by route and status",
            ),
            &["route", "status"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new("mtl_errors_total", "Requests refused or failed, by kind"),
            &["kind"],
        )
        .expect("valid metric");
        let rows = IntCounter::new("mtl_rows_scored_total", "Rows scored").expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "mtl_request_duration_seconds",
                "Request latency, arrival to answer",
            )
            .buckets(vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let batch_rows = Histogram::with_opts(
            HistogramOpts::new("mtl_batch_rows", "Rows per model batch").buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
            ]),
        )
        .expect("valid metric");
        let in_flight = IntGauge::new("mtl_requests_in_flight", "Scoring requests not yet answered")
            .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(rows.clone()),
            Box::new(latency.clone()),
            Box::new(batch_rows.clone()),
            Box::new(in_flight.clone()),
        ] {
            registry.register(c).expect("each metric registered once");
        }
        Self {
            registry,
            requests,
            errors,
            rows,
            latency,
            batch_rows,
            in_flight,
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
