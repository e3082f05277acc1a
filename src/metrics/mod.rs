//! Prometheus metrics and the health probes, served on their own listener.
//!
//! Workers count in their own [`WorkerMetrics`]; [`Metrics::render`] sums them, reads the store's
//! totals and the hooks' counters, adds the process collector (resident memory, CPU, open
//! descriptors) and writes the text format.

mod listener;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::proto::{self, MetricFamily, MetricType};

pub use listener::{
    Limits, MAX_CONNECTIONS, REQUEST_DEADLINE, RESPONSE_DEADLINE, serve, serve_with,
};
use worker::{ACTIONS, CONNECTION_CLOSES, ERROR_KINDS, LATENCY_BUCKETS, PROTOCOLS, protocol_label};
pub use worker::{Action, ConnectionClose, ErrorKind, WorkerMetrics};

use crate::handler::Tracker;
use crate::replication::{LAG_BUCKETS as REPLICATION_LAG_BUCKETS, ReplicationStatus};
use crate::swarm::CleanReport;

/// Shared by the supervisor, the maintenance thread and the metrics listener (never by the
/// request path, which writes only its worker's own counters).
#[derive(Default)]
pub struct Metrics {
    workers: Mutex<Vec<Arc<WorkerMetrics>>>,
    engine: OnceLock<&'static str>,
    tracker: OnceLock<Arc<Tracker>>,
    replication: OnceLock<Arc<ReplicationStatus>>,
    ready: AtomicBool,
    cleaning_runs: AtomicU64,
    cleaning_last_nanos: AtomicU64,
    cleaning_total_nanos: AtomicU64,
    peers_expired: AtomicU64,
}

impl Metrics {
    /// A new worker's counters, registered for collection.
    pub fn add_worker(&self, hook_names: Vec<&'static str>) -> Arc<WorkerMetrics> {
        let worker = Arc::new(WorkerMetrics::new(hook_names));
        self.workers.lock().push(worker.clone());
        worker
    }

    pub fn set_serving(&self, engine: &'static str, tracker: Arc<Tracker>) {
        let _ = self.engine.set(engine);
        let _ = self.tracker.set(tracker);
        self.ready.store(true, Ordering::Release);
    }

    /// Replication is on: ready once it has loaded the swarms; its figures in the metrics.
    pub fn set_replication(&self, status: Arc<ReplicationStatus>) {
        let _ = self.replication.set(status);
    }

    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self
                .replication
                .get()
                .is_none_or(|r| r.ready.load(Ordering::Acquire))
    }

    pub fn record_cleaning(&self, report: &CleanReport) {
        let nanos = report.duration.as_nanos() as u64;
        self.cleaning_runs.fetch_add(1, Ordering::Relaxed);
        self.cleaning_last_nanos.store(nanos, Ordering::Relaxed);
        self.cleaning_total_nanos
            .fetch_add(nanos, Ordering::Relaxed);
        self.peers_expired
            .fetch_add(report.peers_removed as u64, Ordering::Relaxed);
    }

    /// The Prometheus text format of everything.
    pub fn render(&self) -> String {
        let mut families = self.families();
        families.extend(prometheus::process_collector::ProcessCollector::for_self().collect());
        // The encoder refuses a family without samples (no JWT hook: no JWKS failures to count).
        families.retain(|f| !f.get_metric().is_empty());
        let mut out = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::warn!("metrics encoding failed: {e}");
        }
        out
    }

    fn families(&self) -> Vec<MetricFamily> {
        let workers = self.workers.lock().clone();
        let engine = self.engine.get().copied().unwrap_or("none");
        let sum = |f: &dyn Fn(&WorkerMetrics) -> u64| workers.iter().map(|w| f(w)).sum::<u64>();
        let mut out = Vec::new();

        for (name, help, pick) in [
            (
                "hayate_requests_total",
                "Requests received, by protocol, action, IP family and engine.",
                0,
            ),
            (
                "hayate_responses_total",
                "Responses sent, by protocol, action, IP family and engine.",
                1,
            ),
        ] {
            let mut f = family(name, help, MetricType::COUNTER);
            for (p, protocol) in PROTOCOLS.iter().enumerate() {
                for action in ACTIONS {
                    for (ipv6, ip) in [(0, "ipv4"), (1, "ipv6")] {
                        let value = sum(&|w| {
                            let table = if pick == 0 { &w.requests } else { &w.responses };
                            table[p][action as usize][ipv6].get()
                        });
                        let labels = [
                            ("protocol", protocol_label(*protocol)),
                            ("action", action.label()),
                            ("ip", ip),
                            ("engine", engine),
                        ];
                        f.mut_metric().push(counter(&labels, value as f64));
                    }
                }
            }
            out.push(f);
        }

        let mut f = family(
            "hayate_errors_total",
            "Requests refused, by protocol and kind.",
            MetricType::COUNTER,
        );
        for (p, protocol) in PROTOCOLS.iter().enumerate() {
            for kind in ERROR_KINDS {
                let value = sum(&|w| w.errors[p][kind as usize].get());
                f.mut_metric().push(counter(
                    &[
                        ("protocol", protocol_label(*protocol)),
                        ("kind", kind.label()),
                    ],
                    value as f64,
                ));
            }
        }
        out.push(f);

        let connections =
            |f: &dyn Fn(&worker::ConnectionCounters) -> u64| sum(&|w| f(&w.http_connections));
        let accepted = connections(&|c| c.accepted.get());
        let mut closed_total = 0;
        let mut f = family(
            "hayate_http_connections_closed_total",
            "HTTP connections closed, by reason.",
            MetricType::COUNTER,
        );
        for reason in CONNECTION_CLOSES {
            let value = connections(&|c| c.closed[reason as usize].get());
            closed_total += value;
            f.mut_metric()
                .push(counter(&[("reason", reason.label())], value as f64));
        }
        out.push(f);
        for (name, help, kind, value) in [
            (
                "hayate_http_connections_accepted_total",
                "HTTP connections accepted.",
                MetricType::COUNTER,
                accepted,
            ),
            (
                "hayate_http_connections_open",
                "HTTP connections open.",
                MetricType::GAUGE,
                accepted.saturating_sub(closed_total),
            ),
            (
                "hayate_http_accept_errors_total",
                "Failed accepts (EMFILE and the like): the process ran out of descriptors.",
                MetricType::COUNTER,
                connections(&|c| c.accept_errors.get()),
            ),
        ] {
            let mut f = family(name, help, kind);
            let value = value as f64;
            f.mut_metric().push(if kind == MetricType::GAUGE {
                gauge(&[], value)
            } else {
                counter(&[], value)
            });
            out.push(f);
        }
        let mut f = family(
            "hayate_http_connections_refused_total",
            "HTTP connections closed at once, by reason.",
            MetricType::COUNTER,
        );
        f.mut_metric().push(counter(
            &[("reason", "per_source_limit")],
            connections(&|c| c.refused_per_source.get()) as f64,
        ));
        out.push(f);

        let hook_names: Vec<&'static str> = workers
            .first()
            .map(|w| w.hook_names().to_vec())
            .unwrap_or_default();
        let mut f = family(
            "hayate_hook_rejections_total",
            "Requests a pre-hook refused, by hook.",
            MetricType::COUNTER,
        );
        for (i, hook) in hook_names.iter().enumerate() {
            let value = sum(&|w| w.hook_rejections.get(i).map_or(0, worker::Counter::get));
            f.mut_metric()
                .push(counter(&[("hook", hook)], value as f64));
        }
        out.push(f);

        let mut f = family(
            "hayate_request_duration_seconds",
            "Time from request bytes to response bytes inside a worker (one request in 16 sampled).",
            MetricType::HISTOGRAM,
        );
        for (p, protocol) in PROTOCOLS.iter().enumerate() {
            let mut h = proto::Histogram::default();
            let mut cumulative = 0;
            let mut buckets = Vec::new();
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += sum(&|w| w.latency[p].buckets[i].get());
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(cumulative);
                buckets.push(b);
            }
            h.set_bucket(buckets);
            h.set_sample_count(sum(&|w| w.latency[p].count.get()));
            h.set_sample_sum(sum(&|w| w.latency[p].sum_nanos.get()) as f64 / 1e9);
            let mut m = metric(&[("protocol", protocol_label(*protocol))]);
            m.set_histogram(h);
            f.mut_metric().push(m);
        }
        out.push(f);

        if let Some(tracker) = self.tracker.get() {
            let totals = tracker.store.totals();
            for (name, help, value) in [
                (
                    "hayate_torrents",
                    "Torrents stored.",
                    totals.torrents as f64,
                ),
                ("hayate_seeders", "Seeders stored.", totals.seeders as f64),
                (
                    "hayate_leechers",
                    "Leechers stored.",
                    totals.leechers as f64,
                ),
                (
                    "hayate_peers",
                    "Peers stored (seeders and leechers).",
                    (totals.seeders + totals.leechers) as f64,
                ),
            ] {
                let mut f = family(name, help, MetricType::GAUGE);
                f.mut_metric().push(gauge(&[], value));
                out.push(f);
            }
            let mut f = family(
                "hayate_jwks_refresh_failures_total",
                "JWKS refreshes that failed, by hook.",
                MetricType::COUNTER,
            );
            for (hook, failures) in tracker.middleware.jwks_refresh_failures() {
                f.mut_metric()
                    .push(counter(&[("hook", hook)], failures as f64));
            }
            out.push(f);
        }

        let runs = self.cleaning_runs.load(Ordering::Relaxed);
        let mut f = family(
            "hayate_cleaning_runs_total",
            "Cleaning passes over the store.",
            MetricType::COUNTER,
        );
        f.mut_metric().push(counter(&[], runs as f64));
        out.push(f);
        let mut f = family(
            "hayate_cleaning_seconds_total",
            "Time spent cleaning the store.",
            MetricType::COUNTER,
        );
        f.mut_metric().push(counter(
            &[],
            self.cleaning_total_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        ));
        out.push(f);
        let mut f = family(
            "hayate_cleaning_last_duration_seconds",
            "Duration of the last cleaning pass.",
            MetricType::GAUGE,
        );
        f.mut_metric().push(gauge(
            &[],
            self.cleaning_last_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        ));
        out.push(f);
        let mut f = family(
            "hayate_peers_expired_total",
            "Peers removed by cleaning after their lifetime.",
            MetricType::COUNTER,
        );
        f.mut_metric().push(counter(
            &[],
            self.peers_expired.load(Ordering::Relaxed) as f64,
        ));
        out.push(f);

        if let Some(r) = self.replication.get() {
            out.extend(replication_families(
                r,
                sum(&|w| w.replication_dropped.get()),
            ));
        }

        let mut f = family(
            "hayate_engine_info",
            "The I/O engine in use.",
            MetricType::GAUGE,
        );
        f.mut_metric().push(gauge(&[("engine", engine)], 1.0));
        out.push(f);
        let mut f = family("hayate_workers", "Worker threads.", MetricType::GAUGE);
        f.mut_metric().push(gauge(&[], workers.len() as f64));
        out.push(f);
        out
    }
}

/// Replication's figures; `queue_drops` are the workers' (their queues were full).
fn replication_families(r: &ReplicationStatus, queue_drops: u64) -> Vec<MetricFamily> {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    let mut out = Vec::new();
    for (name, help, value) in [
        (
            "hayate_replication_changes_published_total",
            "Swarm changes this node sent to Redis.",
            load(&r.published),
        ),
        (
            "hayate_replication_batches_published_total",
            "Stream entries (batches of changes) this node appended.",
            load(&r.batches_published),
        ),
        (
            "hayate_replication_bytes_published_total",
            "Bytes of batches this node appended.",
            load(&r.bytes_published),
        ),
        (
            "hayate_replication_changes_applied_total",
            "Other nodes' changes applied to this node's store.",
            load(&r.applied),
        ),
        (
            "hayate_replication_changes_coalesced_total",
            "Changes replaced by a later change of the same peer before they were sent.",
            load(&r.coalesced),
        ),
        (
            "hayate_replication_records_skipped_total",
            "Stream entries that were not readable batches (another program's data, truncated).",
            load(&r.skipped_records),
        ),
        (
            "hayate_replication_changes_refused_total",
            "Other nodes' changes this node's limits refused (max_torrents, max_peers_per_torrent).",
            load(&r.refused),
        ),
    ] {
        let mut f = family(name, help, MetricType::COUNTER);
        f.mut_metric().push(counter(&[], value));
        out.push(f);
    }
    let mut f = family(
        "hayate_replication_changes_dropped_total",
        "Changes dropped: a worker's queue was full, or the backlog kept while Redis was away.",
        MetricType::COUNTER,
    );
    f.mut_metric()
        .push(counter(&[("reason", "queue_full")], queue_drops as f64));
    f.mut_metric().push(counter(
        &[("reason", "backlog_full")],
        load(&r.dropped_backlog),
    ));
    out.push(f);
    for (name, help, value) in [
        (
            "hayate_replication_connected",
            "1 while this node is connected to Redis.",
            f64::from(u8::from(r.connected.load(Ordering::Relaxed))),
        ),
        (
            "hayate_replication_warm_restart_changes",
            "Changes loaded from Redis at start (the swarms of the other nodes and of this node's last run).",
            load(&r.warm_restart_peers),
        ),
        (
            "hayate_replication_warm_restart_seconds",
            "Time the start's load from Redis took.",
            load(&r.warm_restart_micros) / 1e6,
        ),
    ] {
        let mut f = family(name, help, MetricType::GAUGE);
        f.mut_metric().push(gauge(&[], value));
        out.push(f);
    }
    let mut f = family(
        "hayate_replication_lag_seconds",
        "From a batch formed at another node to its application here.",
        MetricType::HISTOGRAM,
    );
    let mut h = proto::Histogram::default();
    let mut cumulative = 0;
    let mut buckets = Vec::new();
    for (i, bound) in REPLICATION_LAG_BUCKETS.iter().enumerate() {
        cumulative += r.lag_buckets[i].load(Ordering::Relaxed);
        let mut b = proto::Bucket::default();
        b.set_upper_bound(*bound);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    h.set_bucket(buckets);
    h.set_sample_count(r.lag_count.load(Ordering::Relaxed));
    h.set_sample_sum(load(&r.lag_sum_micros) / 1e6);
    let mut m = metric(&[]);
    m.set_histogram(h);
    f.mut_metric().push(m);
    out.push(f);
    out
}

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f
}

fn metric(labels: &[(&str, &str)]) -> proto::Metric {
    let mut m = proto::Metric::default();
    m.set_label(
        labels
            .iter()
            .map(|(k, v)| {
                let mut l = proto::LabelPair::default();
                l.set_name(k.to_string());
                l.set_value(v.to_string());
                l
            })
            .collect(),
    );
    m
}

fn counter(labels: &[(&str, &str)], value: f64) -> proto::Metric {
    let mut m = metric(labels);
    let mut c = proto::Counter::default();
    c.set_value(value);
    m.set_counter(c);
    m
}

fn gauge(labels: &[(&str, &str)], value: f64) -> proto::Metric {
    let mut m = metric(labels);
    let mut g = proto::Gauge::default();
    g.set_value(value);
    m.set_gauge(g);
    m
}
