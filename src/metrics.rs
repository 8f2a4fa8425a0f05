//! Prometheus metrics, `/healthz` and `/readyz` for `corral controller` and `corral agent`
//! (`--metrics-addr`).
//!
//! `/healthz` answers 200 while the process serves at all. `/readyz` answers 200 once the
//! process has what it needs to work (the controller: its Kubernetes caches synced; the
//! agent: registered with ZooKeeper), and 503 with the reason before that. A standby
//! controller is ready: readiness is not leadership.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::agent::node::AgentStats;
use crate::alloc::ReplicaKey;
use crate::alloc::plan::Plan;
use crate::alloc::resources::Res;
use crate::cgroup::pressure::Pressure;
use crate::lease::zookeeper::Session;
use crate::lease::{Report, UsageSample};
use crate::sync::Lock;

/// A label naming a kind of object.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `Workload` or `ResourcePolicy`.
    pub kind: String,
}

/// A label naming a category of error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    /// `conflict`, `kubernetes`, `finalizer`, `cleanup-waiting`, `zookeeper`.
    pub category: String,
}

/// A label naming a ZooKeeper session state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `connected`, `disconnected` or `expired`.
    pub state: String,
}

/// The labels of one replica's pressure series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PressureLabels {
    namespace: String,
    workload: String,
    replica: u32,
    /// `cpu`, `memory` or `io`.
    resource: &'static str,
    /// `some` or `full`.
    kind: &'static str,
}

/// The labels of one replica's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    namespace: String,
    workload: String,
    replica: u32,
}

impl ReplicaLabels {
    fn of(key: &ReplicaKey) -> ReplicaLabels {
        ReplicaLabels {
            namespace: key.namespace().to_string(),
            workload: key.name().to_string(),
            replica: key.index,
        }
    }
}

/// The labels of one replica's amount of one resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaResourceLabels {
    namespace: String,
    workload: String,
    replica: u32,
    /// `cpu` (in cores), `memory` (bytes) or `pids`.
    resource: &'static str,
}

/// The labels of one replica's memory event counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    namespace: String,
    workload: String,
    replica: u32,
    /// `high`, `max` or `oom_kill`.
    event: &'static str,
}

/// The labels of one policy's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

/// The labels of one policy's amount of one resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyResourceLabels {
    policy: String,
    /// `cpu` (in cores), `memory` (bytes) or `pids`.
    resource: &'static str,
}

/// The labels of one tenant's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    policy: String,
    tenant: String,
}

/// The labels of one tenant's amount of one resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantResourceLabels {
    policy: String,
    tenant: String,
    /// `cpu` (in cores), `memory` (bytes) or `pids`.
    resource: &'static str,
}

/// Each resource of `res` in its base unit (CPU in cores), leaving out what is unbounded.
fn per_resource(res: Res) -> impl Iterator<Item = (&'static str, f64)> {
    [
        ("cpu", res.cpu, 1000.0),
        ("memory", res.memory, 1.0),
        ("pids", res.pids, 1.0),
    ]
    .into_iter()
    .filter(|(_, amount, _)| *amount != i64::MAX)
    .map(|(resource, amount, per_unit)| (resource, amount as f64 / per_unit))
}

/// What the last allocation pass gave each policy, tenant and replica, read at scrape time,
/// so that one that is gone has no series.
#[derive(Debug, Default)]
struct PlanTotals(Mutex<Plan>);

impl Collector for PlanTotals {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let plan = self.0.locked();
        let (mut capacity, mut allocated, mut pending) = (Vec::new(), Vec::new(), Vec::new());
        for p in &plan.policies {
            let policy = || p.name.clone();
            for (resource, amount) in per_resource(p.capacity) {
                let labels = PolicyResourceLabels {
                    policy: policy(),
                    resource,
                };
                capacity.push((labels, ConstGauge::new(amount)));
            }
            for (resource, amount) in per_resource(p.allocated) {
                let labels = PolicyResourceLabels {
                    policy: policy(),
                    resource,
                };
                allocated.push((labels, ConstGauge::new(amount)));
            }
            let count = i64::try_from(p.pending).unwrap_or(i64::MAX);
            pending.push((PolicyLabels { policy: policy() }, ConstGauge::new(count)));
        }
        let mut granted = Vec::new();
        for a in &plan.allocations {
            let (namespace, workload) = (a.workload.namespace(), a.workload.name());
            for (resource, amount) in per_resource(a.granted) {
                let labels = ReplicaResourceLabels {
                    namespace: namespace.to_string(),
                    workload: workload.to_string(),
                    replica: a.replica,
                    resource,
                };
                granted.push((labels, ConstGauge::new(amount)));
            }
        }
        let (mut tenant_allocated, mut shares) = (Vec::new(), Vec::new());
        for t in &plan.tenants {
            for (resource, amount) in per_resource(t.allocated) {
                let labels = TenantResourceLabels {
                    policy: t.policy.clone(),
                    tenant: t.tenant.clone(),
                    resource,
                };
                tenant_allocated.push((labels, ConstGauge::new(amount)));
            }
            let labels = TenantLabels {
                policy: t.policy.clone(),
                tenant: t.tenant.clone(),
            };
            shares.push((labels, ConstGauge::new(t.dominant_share)));
        }
        encode_family(
            &mut encoder,
            "corral_policy_capacity",
            "What the policy's nodes let be granted ((capacity - reserved) x overcommit), summed, after the last allocation pass: cpu in cores, memory in bytes, pids",
            &capacity,
        )?;
        encode_family(
            &mut encoder,
            "corral_policy_allocated",
            "What is granted on the policy's nodes after the last allocation pass: cpu in cores, memory in bytes, pids",
            &allocated,
        )?;
        encode_family(
            &mut encoder,
            "corral_policy_pending_replicas",
            "Replicas the policy governs that have no node after the last allocation pass",
            &pending,
        )?;
        encode_family(
            &mut encoder,
            "corral_tenant_allocated",
            "What the tenant's placed replicas are guaranteed under the policy after the last allocation pass: cpu in cores, memory in bytes, pids",
            &tenant_allocated,
        )?;
        encode_family(
            &mut encoder,
            "corral_tenant_dominant_share",
            "The tenant's dominant share of the policy's resources after the last allocation pass, 0 to 1",
            &shares,
        )?;
        encode_family(
            &mut encoder,
            "corral_replica_granted",
            "What the replica is guaranteed after the last allocation pass: cpu in cores, memory in bytes, pids",
            &granted,
        )
    }
}

/// The cgroup v2 use of each replica of the node, as of the agent's last pass, exposed as
/// the kernel keeps it: read at scrape time from the last reports, so a replica that is
/// gone has no series, and a replica on v1 has none either (absent, not zero).
#[derive(Debug, Default)]
struct ReplicaUse(Mutex<Vec<(ReplicaKey, UsageSample)>>);

impl ReplicaUse {
    fn samples(&self) -> Vec<(ReplicaKey, UsageSample)> {
        self.0.locked().clone()
    }
}

/// Writes one family, or nothing when it has no series.
fn encode_family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, M)],
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for ReplicaUse {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut ratios = Vec::new();
        let mut stalled = Vec::new();
        let mut events = Vec::new();
        let (mut cpu, mut memory, mut throttled, mut oom_kills) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (key, usage) in self.samples() {
            let labels = ReplicaLabels::of(&key);
            cpu.push((labels.clone(), ConstGauge::new(usage.cpu as f64 / 1000.0)));
            memory.push((labels.clone(), ConstGauge::new(usage.memory)));
            throttled.push((labels.clone(), ConstCounter::new(usage.throttled_seconds)));
            oom_kills.push((labels, ConstCounter::new(usage.oom_kills.max(0) as u64)));
            let resources: [(&'static str, Option<Pressure>); 3] = usage
                .pressure
                .map_or([("cpu", None), ("memory", None), ("io", None)], |p| {
                    [("cpu", p.cpu), ("memory", p.memory), ("io", p.io)]
                });
            for (resource, pressure) in resources {
                let Some(p) = pressure else { continue };
                for (kind, stall) in [("some", Some(p.some)), ("full", p.full)] {
                    let Some(stall) = stall else { continue };
                    let labels = PressureLabels {
                        namespace: key.namespace().to_string(),
                        workload: key.name().to_string(),
                        replica: key.index,
                        resource,
                        kind,
                    };
                    ratios.push((labels.clone(), ConstGauge::new(stall.avg10 / 100.0)));
                    stalled.push((labels, ConstCounter::new(stall.total_micros as f64 / 1e6)));
                }
            }
            if let Some(e) = usage.memory_events {
                for (event, count) in [("high", e.high), ("max", e.max), ("oom_kill", e.oom_kill)] {
                    let labels = EventLabels {
                        namespace: key.namespace().to_string(),
                        workload: key.name().to_string(),
                        replica: key.index,
                        event,
                    };
                    events.push((labels, ConstCounter::new(count)));
                }
            }
        }
        encode_family(
            &mut encoder,
            "corral_replica_cpu_usage_cores",
            "CPU the replica used, in cores, averaged between the agent's last two observations",
            &cpu,
        )?;
        encode_family(
            &mut encoder,
            "corral_replica_memory_usage_bytes",
            "Memory the replica's group uses",
            &memory,
        )?;
        encode_family(
            &mut encoder,
            "corral_replica_cpu_throttled_seconds",
            "Time the replica's group was throttled by its CPU quota",
            &throttled,
        )?;
        encode_family(
            &mut encoder,
            "corral_replica_oom_kills",
            "Processes the kernel killed in the replica's group for going over its memory limit",
            &oom_kills,
        )?;
        encode_family(
            &mut encoder,
            "corral_replica_pressure_avg10_ratio",
            "Share of the last 10 s in which some (kind=some) or all (kind=full) of the replica's tasks were stalled on the resource (cgroup v2 PSI avg10 / 100)",
            &ratios,
        )?;
        encode_family(
            &mut encoder,
            "corral_replica_pressure_stalled_seconds",
            "Time some (kind=some) or all (kind=full) of the replica's tasks were stalled on the resource since its group was created (cgroup v2 PSI total)",
            &stalled,
        )?;
        encode_family(
            &mut encoder,
            "corral_replica_memory_events",
            "Times the replica's group went over memory.high (event=high), was about to go over memory.max (max), and processes the OOM killer killed in it (oom_kill), from cgroup v2 memory.events",
            &events,
        )
    }
}

/// The process's readiness: `None` when ready, else why not.
#[derive(Debug)]
pub struct Readiness(Mutex<Option<String>>);

impl Readiness {
    fn new(reason: &str) -> Readiness {
        Readiness(Mutex::new(Some(reason.to_string())))
    }

    /// Marks the process ready.
    pub fn ready(&self) {
        *self.0.locked() = None;
    }

    /// Marks the process not ready, for `reason`.
    pub fn not_ready(&self, reason: &str) {
        {
            let mut r = self.0.locked();
            *r = Some(reason.to_string());
        }
    }

    /// Why the process is not ready; `None` when it is.
    pub fn reason(&self) -> Option<String> {
        self.0.locked().clone()
    }
}

/// The ZooKeeper session state as a gauge per state (1 for the current one).
#[derive(Clone, Debug, Default)]
pub struct SessionGauge(Family<StateLabel, Gauge>);

impl SessionGauge {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "corral_zookeeper_session",
            "1 for the current state of the ZooKeeper session (connected, disconnected, expired)",
            self.0.clone(),
        );
    }

    /// Shows `state`.
    pub fn set(&self, state: Session) {
        for (s, name) in [
            (Session::Connected, "connected"),
            (Session::Disconnected, "disconnected"),
            (Session::Expired, "expired"),
        ] {
            self.0
                .get_or_create(&StateLabel {
                    state: name.to_string(),
                })
                .set(i64::from(s == state));
        }
    }

    /// Follows `session` until it closes.
    pub async fn follow(self, mut session: watch::Receiver<Session>) {
        loop {
            let state = *session.borrow_and_update();
            self.set(state);
            if session.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The controller's metrics.
#[derive(Debug)]
pub struct ControllerMetrics {
    registry: Registry,
    /// Reconciles run, by kind.
    pub reconciles: Family<KindLabel, Counter>,
    /// Reconciles that failed, by category.
    pub errors: Family<CategoryLabel, Counter>,
    /// How long a Workload's reconcile took.
    pub reconcile_duration: Histogram,
    /// Status writes sent to the API server, by kind.
    pub status_writes: Family<KindLabel, Counter>,
    /// Allocation passes made while leading.
    pub passes: Counter,
    /// Replicas with a node after the last pass.
    pub allocated: Gauge,
    /// Replicas without one.
    pub pending: Gauge,
    /// Leases after the last pass.
    pub leases: Gauge,
    /// Drift the agents reported correcting, as seen by the controller.
    pub drift_corrections: Counter,
    /// 1 while this controller leads.
    pub leader: Gauge,
    /// Per policy and tenant, after the last pass.
    totals: Arc<PlanTotals>,
    /// The ZooKeeper session.
    pub session: SessionGauge,
    /// Readiness.
    pub readiness: Readiness,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = ControllerMetrics {
            reconciles: Family::default(),
            errors: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            status_writes: Family::default(),
            passes: Counter::default(),
            allocated: Gauge::default(),
            pending: Gauge::default(),
            leases: Gauge::default(),
            drift_corrections: Counter::default(),
            leader: Gauge::default(),
            totals: Arc::default(),
            session: SessionGauge::default(),
            readiness: Readiness::new("the Kubernetes caches are not synced yet"),
            registry: Registry::default(),
        };
        registry.register(
            "corral_reconciles",
            "Reconciles run, by kind",
            m.reconciles.clone(),
        );
        registry.register(
            "corral_reconcile_errors",
            "Reconciles that failed, by category",
            m.errors.clone(),
        );
        registry.register(
            "corral_reconcile_duration_seconds",
            "How long a Workload's reconcile took",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "corral_status_writes",
            "Status writes sent to the API server, by kind",
            m.status_writes.clone(),
        );
        registry.register(
            "corral_allocation_passes",
            "Allocation passes made while leading",
            m.passes.clone(),
        );
        registry.register(
            "corral_allocated_replicas",
            "Replicas with a node after the last allocation pass",
            m.allocated.clone(),
        );
        registry.register(
            "corral_pending_replicas",
            "Replicas without a node after the last allocation pass",
            m.pending.clone(),
        );
        registry.register(
            "corral_leases",
            "Leases in ZooKeeper after the last allocation pass",
            m.leases.clone(),
        );
        registry.register(
            "corral_drift_corrections",
            "Values the agents restored after something else changed them, as reported to the controller",
            m.drift_corrections.clone(),
        );
        registry.register(
            "corral_leader",
            "1 while this controller leads",
            m.leader.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&m.totals)));
        m.session.register(&mut registry);
        ControllerMetrics { registry, ..m }
    }
}

impl ControllerMetrics {
    /// Counts a failed reconcile.
    pub fn error(&self, category: &str) {
        self.errors
            .get_or_create(&CategoryLabel {
                category: category.to_string(),
            })
            .inc();
    }

    /// Shows an allocation pass.
    pub fn passed(&self, pass: &crate::controller::ControllerPass) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.passes.inc();
        self.allocated.set(count(pass.plan.allocations.len()));
        self.pending.set(count(pass.plan.pending.len()));
        self.leases.set(count(pass.leases.len()));
        {
            let mut totals = self.totals.0.locked();
            *totals = Plan {
                allocations: pass.plan.allocations.clone(),
                policies: pass.plan.policies.clone(),
                tenants: pass.plan.tenants.clone(),
                ..Plan::default()
            };
        }
    }

    /// Counts a status write of `kind`.
    pub fn status_written(&self, kind: &str) {
        self.status_writes
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts a reconcile of `kind`.
    pub fn reconciled(&self, kind: &str) {
        self.reconciles
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }
}

/// The agent's metrics.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    passes: Counter,
    writes: Counter,
    drift_corrections: Counter,
    starts: Counter,
    failures: Counter,
    last: Mutex<AgentStats>,
    replicas: Arc<ReplicaUse>,
    /// The ZooKeeper session.
    pub session: SessionGauge,
    /// Readiness.
    pub readiness: Readiness,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = AgentMetrics {
            registry: Registry::default(),
            passes: Counter::default(),
            writes: Counter::default(),
            drift_corrections: Counter::default(),
            starts: Counter::default(),
            failures: Counter::default(),
            last: Mutex::new(AgentStats::default()),
            replicas: Arc::default(),
            session: SessionGauge::default(),
            readiness: Readiness::new("not registered with ZooKeeper yet"),
        };
        for (name, help, counter) in [
            ("corral_agent_passes", "Enforcement passes run", &m.passes),
            (
                "corral_agent_cgroup_writes",
                "cgroup files written",
                &m.writes,
            ),
            (
                "corral_agent_drift_corrections",
                "Values restored after something else changed them",
                &m.drift_corrections,
            ),
            ("corral_agent_starts", "Processes started", &m.starts),
            (
                "corral_agent_failures",
                "Operations that failed",
                &m.failures,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register_collector(Box::new(Arc::clone(&m.replicas)));
        m.session.register(&mut registry);
        AgentMetrics { registry, ..m }
    }
}

impl AgentMetrics {
    /// Adds what the agent counted since the last call.
    pub fn observe(&self, stats: &AgentStats) {
        let mut last = self.last.locked();
        self.passes.inc_by(stats.passes.saturating_sub(last.passes));
        self.writes.inc_by(stats.writes.saturating_sub(last.writes));
        self.drift_corrections.inc_by(
            stats
                .drift_corrections
                .saturating_sub(last.drift_corrections),
        );
        self.starts.inc_by(stats.starts.saturating_sub(last.starts));
        self.failures
            .inc_by(stats.failures.saturating_sub(last.failures));
        *last = *stats;
    }

    /// Shows the use in the agent's latest reports, replacing what the previous ones
    /// showed.
    pub fn report(&self, reports: &[Report]) {
        {
            let mut latest = self.replicas.0.locked();
            *latest = reports
                .iter()
                .filter_map(|r| Some((r.key.clone()?, r.usage?)))
                .collect();
        }
    }
}

/// What the HTTP server shows.
pub trait Exposed: Send + Sync + 'static {
    /// The metrics.
    fn registry(&self) -> &Registry;
    /// The readiness.
    fn readiness(&self) -> &Readiness;
}

impl Exposed for ControllerMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
    fn readiness(&self) -> &Readiness {
        &self.readiness
    }
}

impl Exposed for AgentMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
    fn readiness(&self) -> &Readiness {
        &self.readiness
    }
}

/// The OpenMetrics text exposition of `metrics`.
pub fn render<M: Exposed>(metrics: &M) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, metrics.registry());
    text
}

/// The Prometheus text exposition (version 0.0.4) of `metrics`, for clients that do not
/// ask for OpenMetrics.
pub fn render_prometheus_text<M: Exposed>(metrics: &M) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, metrics.registry());
    text
}

/// Whether an `Accept` header asks for OpenMetrics (Prometheus does by default).
fn accepts_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .any(|t| t.trim_start().starts_with(OPENMETRICS_TYPE))
    })
}

const OPENMETRICS_TYPE: &str = "application/openmetrics-text";

/// The router serving `/metrics`, `/healthz` and `/readyz`.
pub fn router<M: Exposed>(metrics: Arc<M>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics::<M>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(serve_readyz::<M>))
        .with_state(metrics)
}

/// OpenMetrics to whoever asks for it, as Prometheus does; the classic text format to
/// others (curl, `promtool check metrics`), which read OpenMetrics' counters wrongly: as
/// `_total` samples of no declared family.
async fn serve_metrics<M: Exposed>(
    State(metrics): State<Arc<M>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if accepts_openmetrics(accept) {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            render(metrics.as_ref()),
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            render_prometheus_text(metrics.as_ref()),
        )
    }
}

async fn serve_readyz<M: Exposed>(State(metrics): State<Arc<M>>) -> impl IntoResponse {
    match metrics.readiness().reason() {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Binds `addr` and serves until `shutdown` changes. Binding happens before it returns, so
/// that a port in use is an error at start.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve<M: Exposed>(
    addr: SocketAddr,
    metrics: Arc<M>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, router(metrics))
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics server stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_metrics_render_with_their_names() {
        let m = ControllerMetrics::default();
        m.reconciled("Workload");
        m.error("conflict");
        m.reconcile_duration.observe(0.004);
        m.pending.set(3);
        m.session.set(Session::Connected);
        let text = render(&m);
        for needle in [
            "corral_reconciles_total{kind=\"Workload\"} 1",
            "corral_reconcile_errors_total{category=\"conflict\"} 1",
            "corral_reconcile_duration_seconds_count 1",
            "corral_pending_replicas 3",
            "corral_zookeeper_session{state=\"connected\"} 1",
            "corral_zookeeper_session{state=\"expired\"} 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn policy_and_tenant_totals_follow_the_last_pass() {
        use crate::alloc::plan::{PolicyReport, TenantReport};
        use crate::controller::ControllerPass;
        let m = ControllerMetrics::default();
        let res = |cpu, memory, pids| Res { cpu, memory, pids };
        let pass = |policies: Vec<PolicyReport>, tenants: Vec<TenantReport>| ControllerPass {
            rollouts: Vec::new(),
            held: Vec::new(),
            draining: Vec::new(),
            cordoned: Vec::new(),
            plan: Plan {
                policies,
                tenants,
                ..Plan::default()
            },
            changes: 0,
            leases: Vec::new(),
        };
        let policy = PolicyReport {
            name: "cluster".into(),
            strategy: "Fair".into(),
            nodes: 2,
            capacity: res(3500, 8 << 30, i64::MAX),
            allocated: res(900, 48 << 20, 30),
            pending: 2,
        };
        let tenant = TenantReport {
            policy: "cluster".into(),
            tenant: "shop".into(),
            weight: 1,
            allocated: res(900, 48 << 20, 30),
            guarantee: None,
            limit: None,
            dominant_share: 0.25,
        };
        let mut first = pass(vec![policy.clone()], vec![tenant]);
        first.plan.allocations.push(crate::alloc::plan::Allocation {
            workload: "shop/web".parse().unwrap(),
            replica: 2,
            key: "shop.web.2".into(),
            node: "n1".into(),
            policy: "cluster".into(),
            tenant: "shop".into(),
            priority: 0,
            granted: res(300, 16 << 20, i64::MAX),
            request: res(300, 16 << 20, i64::MAX),
            limits: crate::alloc::plan::Limits::default(),
            io_weight: None,
        });
        m.passed(&first);
        let text = render(&m);
        for needle in [
            "# TYPE corral_policy_capacity gauge",
            "corral_policy_capacity{policy=\"cluster\",resource=\"cpu\"} 3.5",
            "corral_policy_capacity{policy=\"cluster\",resource=\"memory\"} 8589934592.0",
            "corral_policy_allocated{policy=\"cluster\",resource=\"cpu\"} 0.9",
            "corral_policy_allocated{policy=\"cluster\",resource=\"pids\"} 30.0",
            "corral_policy_pending_replicas{policy=\"cluster\"} 2",
            "corral_tenant_allocated{policy=\"cluster\",tenant=\"shop\",resource=\"memory\"} 50331648.0",
            "corral_tenant_dominant_share{policy=\"cluster\",tenant=\"shop\"} 0.25",
            "corral_replica_granted{namespace=\"shop\",workload=\"web\",replica=\"2\",resource=\"cpu\"} 0.3",
            "corral_replica_granted{namespace=\"shop\",workload=\"web\",replica=\"2\",resource=\"memory\"} 16777216.0",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(
            !text.contains("corral_policy_capacity{policy=\"cluster\",resource=\"pids\"}"),
            "no series for an unbounded amount: {text}"
        );
        // The next pass replaces the totals: a tenant that is gone has no series.
        m.passed(&pass(vec![policy], Vec::new()));
        let text = render(&m);
        assert!(!text.contains("corral_tenant_"), "{text}");
        assert!(!text.contains("corral_replica_granted"), "{text}");
        assert!(text.contains("corral_policy_pending_replicas{policy=\"cluster\"} 2"));
    }

    #[test]
    fn agent_metrics_count_the_difference_between_observations() {
        let m = AgentMetrics::default();
        let mut stats = AgentStats {
            passes: 3,
            drift_corrections: 1,
            ..AgentStats::default()
        };
        m.observe(&stats);
        stats.passes = 5;
        m.observe(&stats);
        let text = render(&m);
        assert!(text.contains("corral_agent_passes_total 5"), "{text}");
        assert!(
            text.contains("corral_agent_drift_corrections_total 1"),
            "{text}"
        );
    }

    #[test]
    fn replica_pressure_and_memory_events_show_only_when_reported() {
        use crate::cgroup::observe::MemoryEvents;
        use crate::cgroup::pressure::{Pressures, Stall};
        let m = AgentMetrics::default();
        let report = |name: &str, usage: UsageSample| Report {
            key: Some(ReplicaKey::new("team", name, 1)),
            usage: Some(usage),
            ..Report::default()
        };
        let v2 = UsageSample {
            pressure: Some(Pressures {
                memory: Some(Pressure {
                    some: Stall {
                        avg10: 12.5,
                        avg60: 1.0,
                        total_micros: 2_500_000,
                    },
                    full: Some(Stall::default()),
                }),
                ..Pressures::default()
            }),
            memory_events: Some(MemoryEvents {
                high: 4,
                max: 1,
                oom_kill: 0,
            }),
            ..UsageSample::default()
        };
        m.report(&[report("api", v2), report("old", UsageSample::default())]);
        let text = render(&m);
        for needle in [
            "# TYPE corral_replica_pressure_avg10_ratio gauge",
            "corral_replica_pressure_avg10_ratio{namespace=\"team\",workload=\"api\",replica=\"1\",resource=\"memory\",kind=\"some\"} 0.125",
            "corral_replica_pressure_avg10_ratio{namespace=\"team\",workload=\"api\",replica=\"1\",resource=\"memory\",kind=\"full\"} 0.0",
            "# TYPE corral_replica_pressure_stalled_seconds counter",
            "corral_replica_pressure_stalled_seconds_total{namespace=\"team\",workload=\"api\",replica=\"1\",resource=\"memory\",kind=\"some\"} 2.5",
            "# TYPE corral_replica_memory_events counter",
            "corral_replica_memory_events_total{namespace=\"team\",workload=\"api\",replica=\"1\",event=\"high\"} 4",
            "corral_replica_memory_events_total{namespace=\"team\",workload=\"api\",replica=\"1\",event=\"oom_kill\"} 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(
            !text.contains("resource=\"cpu\""),
            "no cpu.pressure, no series: {text}"
        );
        let v2_only = |text: &str, workload: &str| {
            text.lines().any(|l| {
                (l.starts_with("corral_replica_pressure")
                    || l.starts_with("corral_replica_memory_events"))
                    && l.contains(&format!("workload=\"{workload}\""))
            })
        };
        assert!(
            !v2_only(&text, "old"),
            "a v1 replica has no pressure or memory events: {text}"
        );
        // The next pass replaces the series: a replica that is gone has none.
        m.report(&[report("old", UsageSample::default())]);
        let text = render(&m);
        assert!(!text.contains("workload=\"api\""), "{text}");
        assert!(!v2_only(&text, "old"), "{text}");
    }

    #[test]
    fn replica_use_shows_on_v1_and_v2_alike() {
        let m = AgentMetrics::default();
        let usage = UsageSample {
            cpu: 250,
            memory: 32 << 20,
            throttled_seconds: 1.5,
            oom_kills: 2,
            ..UsageSample::default()
        };
        m.report(&[Report {
            key: Some(ReplicaKey::new("shop", "web", 0)),
            usage: Some(usage),
            ..Report::default()
        }]);
        let text = render(&m);
        for needle in [
            "# TYPE corral_replica_cpu_usage_cores gauge",
            "corral_replica_cpu_usage_cores{namespace=\"shop\",workload=\"web\",replica=\"0\"} 0.25",
            "corral_replica_memory_usage_bytes{namespace=\"shop\",workload=\"web\",replica=\"0\"} 33554432",
            "# TYPE corral_replica_cpu_throttled_seconds counter",
            "corral_replica_cpu_throttled_seconds_total{namespace=\"shop\",workload=\"web\",replica=\"0\"} 1.5",
            "corral_replica_oom_kills_total{namespace=\"shop\",workload=\"web\",replica=\"0\"} 2",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        m.report(&[]);
        assert!(!render(&m).contains("corral_replica_"));
    }

    #[test]
    fn openmetrics_only_to_whoever_asks_for_it() {
        // Prometheus' default Accept header.
        assert!(accepts_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )));
        assert!(!accepts_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!accepts_openmetrics(Some("*/*")));
        assert!(!accepts_openmetrics(None));
        let m = AgentMetrics::default();
        let text = render_prometheus_text(&m);
        assert!(
            text.contains("# TYPE corral_agent_passes_total counter"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[tokio::test]
    async fn readyz_says_why_until_ready() {
        let m = Arc::new(AgentMetrics::default());
        let (_tx, rx) = watch::channel(false);
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let bound = listener.local_addr().unwrap();
        drop(listener);
        let _server = serve(bound, Arc::clone(&m), rx).await.unwrap();
        let get = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(bound).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
            let mut out = String::new();
            stream.read_to_string(&mut out).await.unwrap();
            out
        };
        let before = get("/readyz").await;
        assert!(before.starts_with("HTTP/1.1 503"), "{before}");
        assert!(
            before.contains("not registered with ZooKeeper yet"),
            "{before}"
        );
        m.readiness.ready();
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(metrics.contains("corral_agent_passes_total"), "{metrics}");
    }
}
