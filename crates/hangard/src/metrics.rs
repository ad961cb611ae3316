//! Prometheus metrics, rendered in the text exposition format at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histogram buckets.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds (seconds) of the boot-time histogram buckets.
const BOOT_BUCKETS: &[f64] = &[0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    errors: BTreeMap<String, u64>,
    boot: Option<Histogram>,
    operations: BTreeMap<(String, String), u64>,
    operation_latency: BTreeMap<String, Histogram>,
    reconcile: Option<Histogram>,
    reconcile_failed: u64,
}

/// The daemon's metrics.
#[derive(Default)]
pub struct Metrics(Mutex<Inner>);

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// Records one API request.
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.requests.entry((method.to_string(), route.to_string(), status)).or_default() += 1;
        m.latency
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(seconds);
    }

    /// Records an error response by code.
    pub fn error(&self, code: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .errors
            .entry(code.to_string())
            .or_default() += 1;
    }

    /// Records a finished operation by kind and final status.
    pub fn operation(&self, kind: &str, status: &str, seconds: f64) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.operations.entry((kind.to_string(), status.to_string())).or_default() += 1;
        m.operation_latency
            .entry(kind.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(seconds);
    }

    /// Records a reconcile pass: how long it took and whether a step failed.
    pub fn reconcile_pass(&self, seconds: f64, failed: bool) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.reconcile.get_or_insert_with(|| Histogram::new(LATENCY_BUCKETS)).observe(seconds);
        m.reconcile_failed += u64::from(failed);
    }

    /// Records a boot (spawn to guest-ready).
    pub fn boot(&self, seconds: f64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .boot
            .get_or_insert_with(|| Histogram::new(BOOT_BUCKETS))
            .observe(seconds);
    }

    /// The text exposition, with the VM counts by state and the store read latency measured
    /// for this scrape.
    pub fn render(&self, vms_by_state: &BTreeMap<String, u64>, store_seconds: f64) -> String {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP hangar_vms VMs by lifecycle state.\n# TYPE hangar_vms gauge\n");
        for (state, n) in vms_by_state {
            let _ = writeln!(out, "hangar_vms{{state=\"{}\"}} {n}", escape(state));
        }
        out.push_str("# HELP hangar_api_requests_total API requests by method, route and status.\n# TYPE hangar_api_requests_total counter\n");
        for ((method, route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "hangar_api_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(method),
                escape(route)
            );
        }
        out.push_str("# HELP hangar_api_request_duration_seconds API latency by route.\n# TYPE hangar_api_request_duration_seconds histogram\n");
        for (route, h) in &m.latency {
            h.render(
                &mut out,
                "hangar_api_request_duration_seconds",
                &format!("route=\"{}\"", escape(route)),
            );
        }
        out.push_str("# HELP hangar_api_errors_total Error responses by stable code (QMP failures count as E_ENGINE_FAILED).\n# TYPE hangar_api_errors_total counter\n");
        for (code, n) in &m.errors {
            let _ = writeln!(out, "hangar_api_errors_total{{code=\"{}\"}} {n}", escape(code));
        }
        out.push_str("# HELP hangar_operations_total Operations by kind and final status.\n# TYPE hangar_operations_total counter\n");
        for ((kind, status), n) in &m.operations {
            let _ = writeln!(
                out,
                "hangar_operations_total{{kind=\"{}\",status=\"{}\"}} {n}",
                escape(kind),
                escape(status)
            );
        }
        out.push_str("# HELP hangar_operation_duration_seconds Operation latency (accepted to finished) by kind.\n# TYPE hangar_operation_duration_seconds histogram\n");
        for (kind, h) in &m.operation_latency {
            h.render(
                &mut out,
                "hangar_operation_duration_seconds",
                &format!("kind=\"{}\"", escape(kind)),
            );
        }
        out.push_str("# HELP hangar_boot_seconds Spawn to guest-ready, per boot started through the API.\n# TYPE hangar_boot_seconds histogram\n");
        m.boot.clone().unwrap_or_else(|| Histogram::new(BOOT_BUCKETS)).render(
            &mut out,
            "hangar_boot_seconds",
            "",
        );
        out.push_str("# HELP hangar_reconcile_pass_seconds Reconcile pass duration (observe, plan, act).\n# TYPE hangar_reconcile_pass_seconds histogram\n");
        m.reconcile.clone().unwrap_or_else(|| Histogram::new(LATENCY_BUCKETS)).render(
            &mut out,
            "hangar_reconcile_pass_seconds",
            "",
        );
        out.push_str("# HELP hangar_reconcile_failed_passes_total Reconcile passes with at least one failed step.\n# TYPE hangar_reconcile_failed_passes_total counter\n");
        let _ = writeln!(out, "hangar_reconcile_failed_passes_total {}", m.reconcile_failed);
        out.push_str("# HELP hangar_store_read_seconds Time to read every VM record for this scrape.\n# TYPE hangar_store_read_seconds gauge\n");
        let _ = writeln!(out, "hangar_store_read_seconds {store_seconds}");
        out
    }
}

/// The gateway's per-instance counts (only instances it has served): open connections,
/// connections and bytes each way so far, and the last activity.
pub fn gateway_text(instances: &[hangar_fleet::Instance]) -> String {
    let served: Vec<_> = instances.iter().filter_map(|i| i.activity.map(|a| (i, a))).collect();
    let mut out = String::new();
    let label = |i: &hangar_fleet::Instance| {
        format!("instance=\"{}\",pool=\"{}\"", escape(i.id.as_str()), escape(i.pool.as_str()))
    };
    out.push_str("# HELP hangar_gateway_open_connections Connections the gateway has open to an instance.\n# TYPE hangar_gateway_open_connections gauge\n");
    for (i, a) in &served {
        let _ = writeln!(out, "hangar_gateway_open_connections{{{}}} {}", label(i), a.open);
    }
    out.push_str("# HELP hangar_gateway_connections_total Connections the gateway handed to an instance.\n# TYPE hangar_gateway_connections_total counter\n");
    for (i, a) in &served {
        let _ = writeln!(out, "hangar_gateway_connections_total{{{}}} {}", label(i), a.connections);
    }
    out.push_str("# HELP hangar_gateway_bytes_total Bytes through the gateway, by direction (in: to the instance).\n# TYPE hangar_gateway_bytes_total counter\n");
    for (i, a) in &served {
        let _ = writeln!(
            out,
            "hangar_gateway_bytes_total{{{},direction=\"in\"}} {}",
            label(i),
            a.bytes_in
        );
        let _ = writeln!(
            out,
            "hangar_gateway_bytes_total{{{},direction=\"out\"}} {}",
            label(i),
            a.bytes_out
        );
    }
    out.push_str("# HELP hangar_gateway_last_activity_seconds When an instance last had a connection open, close or move bytes (Unix time).\n# TYPE hangar_gateway_last_activity_seconds gauge\n");
    for (i, a) in &served {
        let _ = writeln!(
            out,
            "hangar_gateway_last_activity_seconds{{{}}} {}",
            label(i),
            a.last.0 as f64 / 1000.0
        );
    }
    out
}

impl crate::state::Daemon {
    /// Which node this is, and in a cluster how it stands there: joined with the other series
    /// on `instance`, it gives every series its node (`hangar_node_info * on(instance)
    /// group_left(node) …`), the usual way to add a target's identity.
    pub(crate) fn node_metrics(&self) -> String {
        let mut out = String::new();
        let (node, cluster) = match self.membership() {
            Some(m) => (m.node().to_string(), true),
            None => (crate::cluster::host_name(), false),
        };
        out.push_str("# HELP hangar_node_info This node: its name in the cluster (the host's name outside one), and whether it is in one.\n# TYPE hangar_node_info gauge\n");
        let _ =
            writeln!(out, "hangar_node_info{{node=\"{}\",cluster=\"{cluster}\"}} 1", escape(&node));
        let Some(m) = self.membership() else { return out };
        let age = m.status().renewed_at.map(|at| at.elapsed().as_secs_f64());
        out.push_str("# HELP hangar_cluster_lease_age_seconds Since this node's cluster lease was last renewed (from when the renewal was sent).\n# TYPE hangar_cluster_lease_age_seconds gauge\n");
        if let Some(age) = age {
            let _ = writeln!(out, "hangar_cluster_lease_age_seconds {age}");
        }
        let fenced = m.standing() != crate::cluster::Standing::Member;
        out.push_str("# HELP hangar_cluster_fenced 1 while this node hands out and makes no instance (its lease is not fresh enough).\n# TYPE hangar_cluster_fenced gauge\n");
        let _ = writeln!(out, "hangar_cluster_fenced {}", u8::from(fenced));
        out.push_str("# HELP hangar_cluster_scheduler 1 while this node holds the cluster's scheduler role.\n# TYPE hangar_cluster_scheduler gauge\n");
        let status = self.scheduler_status();
        let _ = writeln!(out, "hangar_cluster_scheduler {}", u8::from(status.scheduling));
        out.push_str("# HELP hangar_cluster_scheduler_pass_seconds How long this node's last scheduling pass took (read the nodes, pools and shares; place; write what changed).\n# TYPE hangar_cluster_scheduler_pass_seconds gauge\n");
        if let Some(s) = status.last_pass_s.filter(|_| status.scheduling) {
            let _ = writeln!(out, "hangar_cluster_scheduler_pass_seconds {s}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.request("GET", "/v1/vms", 200, 0.003);
        m.request("GET", "/v1/vms", 200, 0.2);
        m.boot(2.4);
        m.operation("start", "succeeded", 2.5);
        let text = m.render(&BTreeMap::from([("running".to_string(), 2)]), 0.001);
        assert!(text.contains("hangar_vms{state=\"running\"} 2"));
        assert!(text.contains(
            "hangar_api_requests_total{method=\"GET\",route=\"/v1/vms\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "hangar_api_request_duration_seconds_bucket{route=\"/v1/vms\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "hangar_api_request_duration_seconds_bucket{route=\"/v1/vms\",le=\"0.25\"} 2"
        ));
        assert!(text.contains("hangar_boot_seconds_bucket{le=\"3\"} 1"));
        assert!(text.contains("hangar_operations_total{kind=\"start\",status=\"succeeded\"} 1"));
        assert!(
            text.contains("hangar_operation_duration_seconds_bucket{kind=\"start\",le=\"5\"} 1")
        );
        assert!(text.contains("hangar_boot_seconds_bucket{le=\"2\"} 0"));
    }
}
