//! The Workload reconciler against a mocked API server: kube's `Client` over a tower-test
//! mock, scenario by scenario. Each test states the allocation loop's last pass (the
//! shared snapshot), runs one reconcile, answers the API calls it makes, and checks
//! exactly which calls those were and what they carried.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use corral::alloc::fixtures::{mk_lease, mk_workload};
use corral::alloc::plan::{Plan, Preemption};
use corral::api::Workload;
use corral::lease::{DriftNote, Lease, ProcessReport, Report};
use corral::metrics::{ControllerMetrics, render};
use corral::operator::reconcile::{self, Context, Error};
use corral::operator::{Shared, Snapshot};
use http::{Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tower_test::mock::Handle;

/// One API call the reconciler made.
#[derive(Debug)]
struct Call {
    method: String,
    /// Path and query.
    uri: String,
    content_type: String,
    body: Value,
}

impl Call {
    fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.uri.split('?').next() == Some(path)
    }
}

struct Mock {
    ctx: Arc<Context>,
    shared: Arc<Shared>,
    metrics: Arc<ControllerMetrics>,
    handle: Handle<Request<Body>, Response<Body>>,
}

const WORKLOAD_PATH: &str = "/apis/corral.dev/v1alpha1/namespaces/t/workloads/web";
const STATUS_PATH: &str = "/apis/corral.dev/v1alpha1/namespaces/t/workloads/web/status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/t/events";

impl Mock {
    /// A reconciler that leads with `epoch` (or stands by with `None`).
    fn new(epoch: Option<i64>) -> Mock {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let shared = Arc::new(Shared::default());
        shared.leading.send_replace(epoch);
        let metrics = Arc::new(ControllerMetrics::default());
        let ctx = Arc::new(Context::new(
            client,
            Arc::clone(&shared),
            Arc::clone(&metrics),
            "corral-controller-0",
        ));
        Mock {
            ctx,
            shared,
            metrics,
            handle,
        }
    }

    fn set_snapshot(&self, mut snapshot: Snapshot) {
        snapshot.index();
        *self.shared.snapshot.write().unwrap() = Arc::new(snapshot);
    }

    /// Runs one reconcile of `workload`, answering each call with `answer` (status code
    /// and body), and returns its result and the calls, in order.
    async fn reconcile(
        &mut self,
        workload: &Workload,
        answer: impl Fn(&Call) -> (StatusCode, Value),
    ) -> (Result<Action, Error>, Vec<Call>) {
        let mut task = tokio::spawn(reconcile::reconcile(
            Arc::new(workload.clone()),
            Arc::clone(&self.ctx),
        ));
        let mut calls = Vec::new();
        loop {
            tokio::select! {
                result = &mut task => return (result.expect("the reconcile panicked"), calls),
                request = self.handle.next_request() => {
                    let (request, send) = request.expect("the client is gone");
                    let (parts, body) = request.into_parts();
                    let bytes = body.collect_bytes().await.unwrap();
                    let call = Call {
                        method: parts.method.to_string(),
                        uri: parts.uri.to_string(),
                        content_type: parts
                            .headers
                            .get("content-type")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default(),
                        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    };
                    let (status, reply) = answer(&call);
                    send.send_response(
                        Response::builder()
                            .status(status)
                            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                            .unwrap(),
                    );
                    calls.push(call);
                }
                () = tokio::time::sleep(Duration::from_secs(10)) => panic!("the reconcile hangs; calls so far: {calls:#?}"),
            }
        }
    }
}

/// Answers as a server that accepts everything: the object for a patch, the event for an
/// event.
fn accept(workload: &Workload) -> impl Fn(&Call) -> (StatusCode, Value) + '_ {
    move |call| {
        if call.uri.starts_with(EVENTS_PATH) {
            (StatusCode::CREATED, call.body.clone())
        } else {
            (StatusCode::OK, serde_json::to_value(workload).unwrap())
        }
    }
}

fn web(replicas: u32, finalizer: bool) -> Workload {
    let mut workload = mk_workload("t", "web", replicas, 100, 10, json!({}));
    workload.metadata.resource_version = Some("10".into());
    workload.metadata.generation = Some(2);
    workload.metadata.uid = Some("0b8f0c4e-5d5e-4a63-9f56-0e4c1c2b7a11".into());
    if finalizer {
        workload.metadata.finalizers = Some(vec!["corral.dev/cleanup".into()]);
    }
    workload
}

fn running(lease: &Lease) -> Report {
    Report {
        key: Some(lease.key.clone()),
        node: lease.node.clone(),
        lease_epoch: lease.epoch,
        applied: BTreeMap::from([("cpu.shares".into(), "102".into())]),
        process: ProcessReport {
            state: corral::lease::ProcessState::Running,
            pid: Some(4242),
            pids: 1,
            ..ProcessReport::default()
        },
        ..Report::default()
    }
}

/// The last pass placed replica 0 of t/web on n1, and n1's agent runs it.
fn one_running_replica() -> Snapshot {
    let lease = mk_lease("n1", "web", 0, 7);
    Snapshot {
        epoch: 7,
        plan: Some(Plan::default()),
        reports: vec![running(&lease)],
        leases: vec![lease],
        nodes: vec!["n1".into()],
        passes: 1,
        ..Snapshot::default()
    }
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

fn events(calls: &[Call]) -> Vec<(String, String, String)> {
    calls
        .iter()
        .filter(|c| c.is("POST", EVENTS_PATH))
        .map(|c| {
            (
                c.body["type"].as_str().unwrap_or_default().to_string(),
                c.body["reason"].as_str().unwrap_or_default().to_string(),
                c.body["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn create_adds_the_finalizer_first() {
    let mut mock = Mock::new(Some(7));
    mock.set_snapshot(one_running_replica());
    let workload = web(1, false);
    let (result, calls) = mock.reconcile(&workload, accept(&workload)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let call = &calls[0];
    assert!(call.is("PATCH", WORKLOAD_PATH), "{call:?}");
    assert_eq!(call.content_type, "application/json-patch+json");
    assert_eq!(
        call.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["corral.dev/cleanup"]},
        ])
    );

    // A pass triggers every object again before the watch brings this one back with its
    // finalizer: the same version is not patched twice (its test would fail).
    let (result, calls) = mock.reconcile(&workload, accept(&workload)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(calls.is_empty(), "{calls:#?}");
    // A newer version without the finalizer (someone removed it) gets it again.
    let mut edited = workload.clone();
    edited.metadata.resource_version = Some("11".into());
    let (_, calls) = mock.reconcile(&edited, accept(&edited)).await;
    assert_eq!(calls.len(), 1, "{calls:#?}");
}

#[tokio::test]
async fn status_is_applied_under_corrals_field_manager_with_an_event() {
    let mut mock = Mock::new(Some(7));
    mock.set_snapshot(one_running_replica());
    let workload = web(1, true);
    let (result, calls) = mock.reconcile(&workload, accept(&workload)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(calls.len(), 2, "{calls:#?}");

    let status_call = &calls[0];
    assert!(status_call.is("PATCH", STATUS_PATH), "{status_call:?}");
    assert_eq!(status_call.content_type, "application/apply-patch+yaml");
    assert!(
        status_call.uri.contains("fieldManager=corral-controller"),
        "{}",
        status_call.uri
    );
    assert!(
        status_call.uri.contains("force=true"),
        "{}",
        status_call.uri
    );
    assert_eq!(status_call.body["apiVersion"], "corral.dev/v1alpha1");
    assert_eq!(status_call.body["kind"], "Workload");
    let status = &status_call.body["status"];
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["readyReplicas"], 1);
    assert_eq!(status["replicaStatuses"][0]["node"], "n1");
    assert_eq!(status["replicaStatuses"][0]["leaseEpoch"], 7);
    assert_eq!(status["replicaStatuses"][0]["applied"]["cpu.shares"], "102");
    for (type_, reason) in [
        ("Allocated", "AllReplicasAllocated"),
        ("Enforced", "Applied"),
        ("Ready", "AllReplicasRunning"),
    ] {
        let c = condition(status, type_);
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("True"), Some(reason))
        );
        assert_eq!(c["observedGeneration"], 2);
    }

    let event = &calls[1];
    assert!(event.is("POST", EVENTS_PATH), "{event:?}");
    assert_eq!(event.body["reason"], "Allocated");
    assert_eq!(event.body["type"], "Normal");
    assert_eq!(event.body["note"], "1 of 1 replica has a node; 1 on n1");
    assert_eq!(event.body["regarding"]["name"], "web");
    assert_eq!(event.body["regarding"]["kind"], "Workload");
    assert_eq!(event.body["reportingController"], "corral-controller");
    assert_eq!(event.body["reportingInstance"], "corral-controller-0");

    // The server now holds that status: the next reconcile writes nothing.
    let mut written = workload.clone();
    written.status = Some(serde_json::from_value(status.clone()).unwrap());
    let (result, calls) = mock.reconcile(&written, accept(&written)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(
        calls.is_empty(),
        "an unchanged status is written again: {calls:#?}"
    );
}

#[tokio::test]
async fn deletion_waits_for_the_agents_then_removes_the_finalizer() {
    let mut mock = Mock::new(Some(7));
    let mut workload = web(1, true);
    workload.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));

    // No pass has seen the deletion yet: the lease may still be written.
    mock.set_snapshot(Snapshot {
        passes: 3,
        nodes: vec!["n1".into()],
        ..Snapshot::default()
    });
    let (result, calls) = mock.reconcile(&workload, accept(&workload)).await;
    let error = result.unwrap_err();
    assert!(
        matches!(&error, Error::CleanupWaiting(why) if why == "no allocation pass has seen the deletion yet"),
        "{error}"
    );
    assert!(
        calls.iter().all(|c| !c.is("PATCH", WORKLOAD_PATH)),
        "{calls:#?}"
    );
    let phase = &calls[0].body["status"]["phase"];
    assert_eq!(phase, "Terminating", "{calls:#?}");
    let mut terminating = workload.clone();
    terminating.status = Some(serde_json::from_value(calls[0].body["status"].clone()).unwrap());

    // The leases are gone, but n1's agent still reports the replica.
    let lease = mk_lease("n1", "web", 0, 7);
    mock.set_snapshot(Snapshot {
        passes: 4,
        nodes: vec!["n1".into()],
        reports: vec![running(&lease)],
        deleting: BTreeSet::from(["t/web".parse().unwrap()]),
        ..Snapshot::default()
    });
    let (result, calls) = mock.reconcile(&terminating, accept(&terminating)).await;
    let error = result.unwrap_err();
    assert!(
        matches!(&error, Error::CleanupWaiting(why) if why == "the agents of n1 still report it"),
        "{error}"
    );
    assert!(
        calls.iter().all(|c| !c.is("PATCH", WORKLOAD_PATH)),
        "{calls:#?}"
    );
    assert_eq!(
        reconcile::error_policy(Arc::new(terminating.clone()), &error, Arc::clone(&mock.ctx)),
        Action::requeue(reconcile::CLEANUP_RECHECK)
    );

    // The agent removed it: the finalizer goes, after a Released event.
    mock.set_snapshot(Snapshot {
        passes: 5,
        nodes: vec!["n1".into()],
        deleting: BTreeSet::from(["t/web".parse().unwrap()]),
        ..Snapshot::default()
    });
    let (result, calls) = mock.reconcile(&terminating, accept(&terminating)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(
        events(&calls),
        [(
            "Normal".to_string(),
            "Released".to_string(),
            "the leases are released and the agents removed the groups".to_string()
        )]
    );
    let last = calls.last().unwrap();
    assert!(last.is("PATCH", WORKLOAD_PATH), "{calls:#?}");
    assert_eq!(
        last.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "corral.dev/cleanup"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    assert!(
        render(mock.metrics.as_ref())
            .contains("corral_reconcile_errors_total{category=\"cleanup-waiting\"} 1")
    );
}

#[tokio::test]
async fn a_refused_workload_shows_why_in_its_status_and_an_event() {
    let mut mock = Mock::new(Some(7));
    mock.set_snapshot(one_running_replica());
    let problem =
        "spec.resources.limits.cpu: must be at least the request (not used until corrected)";
    mock.shared
        .workload_problems
        .lock()
        .unwrap()
        .insert("t/web".parse().unwrap(), problem.into());
    let workload = web(1, true);
    let (result, calls) = mock.reconcile(&workload, accept(&workload)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    let allocated = condition(&calls[0].body["status"], "Allocated");
    assert_eq!(allocated["status"], "False");
    assert_eq!(allocated["reason"], "Invalid");
    assert_eq!(allocated["message"], problem);
    assert_eq!(
        events(&calls),
        [(
            "Warning".to_string(),
            "Invalid".to_string(),
            problem.to_string()
        )]
    );
}

#[tokio::test]
async fn a_conflict_is_retried_soon_and_counted() {
    let mut mock = Mock::new(Some(7));
    mock.set_snapshot(one_running_replica());
    let workload = web(1, true);
    let (result, calls) = mock
        .reconcile(&workload, |_| {
            (
                StatusCode::CONFLICT,
                json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "Operation cannot be fulfilled on workloads.corral.dev \"web\": the object has been modified",
                    "reason": "Conflict", "code": 409,
                }),
            )
        })
        .await;
    let error = result.unwrap_err();
    assert!(matches!(error, Error::Conflict { .. }), "{error}");
    assert_eq!(calls.len(), 1, "no event after a failed write: {calls:#?}");
    let action = reconcile::error_policy(Arc::new(workload), &error, Arc::clone(&mock.ctx));
    assert_eq!(action, Action::requeue(reconcile::CONFLICT_RETRY));
    let metrics = render(mock.metrics.as_ref());
    assert!(
        metrics.contains("corral_reconcile_errors_total{category=\"conflict\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("corral_reconciles_total{kind=\"Workload\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_standby_controller_writes_nothing() {
    let mut mock = Mock::new(None);
    mock.set_snapshot(one_running_replica());
    let workload = web(1, false);
    let (result, calls) = mock.reconcile(&workload, accept(&workload)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(calls.is_empty(), "{calls:#?}");
}

#[tokio::test]
async fn pending_preempted_and_drift_are_announced_once() {
    let mut mock = Mock::new(Some(7));
    let mut plan = Plan::default();
    plan.pending.push(corral::alloc::plan::Pending {
        stalled: false,
        workload: "t/web".parse().unwrap(),
        replica: 0,
        reason: "needs 4 cpu; the most free on matching nodes is 1.5".into(),
    });
    plan.preemptions.push(Preemption {
        workload: "t/web".parse().unwrap(),
        replica: 0,
        node: "n1".into(),
        by_workload: "t/urgent".parse().unwrap(),
        by_replica: 0,
    });
    mock.set_snapshot(Snapshot {
        plan: Some(plan.clone()),
        nodes: vec!["n1".into()],
        passes: 8,
        ..Snapshot::default()
    });
    let workload = web(1, true);
    let (_, calls) = mock.reconcile(&workload, accept(&workload)).await;
    assert_eq!(
        events(&calls),
        [
            (
                "Warning".to_string(),
                "Pending".to_string(),
                "1 of 1 replica pending: replica 0: needs 4 cpu; the most free on matching nodes is 1.5"
                    .to_string()
            ),
            (
                "Warning".to_string(),
                "Preempted".to_string(),
                "replica 0 lost node n1 to t/urgent replica 0 of higher priority".to_string()
            ),
        ]
    );
    // The same pass again (the status write triggered a reconcile): nothing new to say.
    let mut written = workload.clone();
    written.status = Some(serde_json::from_value(calls[0].body["status"].clone()).unwrap());
    let (_, calls) = mock.reconcile(&written, accept(&written)).await;
    assert!(calls.is_empty(), "{calls:#?}");

    // Placed again; later, n1's agent restored drift twice.
    let lease = mk_lease("n1", "web", 0, 7);
    let mut report = running(&lease);
    report.drift = Some(DriftNote {
        corrections: 2,
        last: "cpu.shares was 2, now 102".into(),
    });
    mock.set_snapshot(Snapshot {
        plan: Some(Plan::default()),
        leases: vec![lease],
        reports: vec![report],
        nodes: vec!["n1".into()],
        passes: 9,
        ..Snapshot::default()
    });
    let (_, calls) = mock.reconcile(&written, accept(&written)).await;
    let reasons: Vec<String> = events(&calls).into_iter().map(|e| e.1).collect();
    assert_eq!(reasons, ["Allocated", "DriftCorrected"], "{calls:#?}");
    let drift = &events(&calls)[1].2;
    assert_eq!(
        drift,
        "2 value(s) restored after something else changed them; last on n1: cpu.shares was 2, now 102"
    );
    assert!(render(mock.metrics.as_ref()).contains("corral_drift_corrections_total 2"));
}

#[tokio::test]
async fn a_new_workload_gets_no_status_until_the_allocator_has_seen_it() {
    let mut mock = Mock::new(Some(7));
    mock.set_snapshot(Snapshot {
        plan: Some(Plan::default()),
        nodes: vec!["n1".into()],
        passes: 2,
        ..Snapshot::default()
    });
    let workload = web(1, true);
    let (result, calls) = mock.reconcile(&workload, accept(&workload)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(calls.is_empty(), "{calls:#?}");

    // One that already has a status (say, from the previous leader) is kept current.
    let mut known = workload.clone();
    known.status = Some(corral::api::workload::WorkloadStatus::default());
    let (_, calls) = mock.reconcile(&known, accept(&known)).await;
    let allocated = condition(&calls[0].body["status"], "Allocated");
    assert_eq!(
        allocated["message"],
        "1 of 1 replica pending: replica 0: not allocated yet"
    );
    assert!(
        events(&calls).is_empty(),
        "no Pending event before the allocator said why"
    );
}

#[tokio::test]
async fn a_finalizer_patch_refused_by_its_test_is_a_conflict() {
    let mut mock = Mock::new(Some(7));
    mock.set_snapshot(one_running_replica());
    let workload = web(1, false);
    let (result, calls) = mock
        .reconcile(&workload, |_| {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "the server rejected our request due to an error in our request",
                    "reason": "Invalid", "code": 422,
                }),
            )
        })
        .await;
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let error = result.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Conflict {
                what: "the finalizer",
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_change_of_observed_use_alone_is_written_at_most_every_30_seconds() {
    use corral::lease::UsageSample;
    let mut mock = Mock::new(Some(7));
    let mut snapshot = one_running_replica();
    mock.set_snapshot(snapshot.clone());
    let workload = web(1, true);
    let (_, calls) = mock.reconcile(&workload, accept(&workload)).await;
    let mut written = workload.clone();
    written.status = Some(serde_json::from_value(calls[0].body["status"].clone()).unwrap());

    // The agent reports new use: just written, so not again yet.
    snapshot.reports[0].usage = Some(UsageSample {
        cpu: 250,
        memory: 8 << 20,
        ..UsageSample::default()
    });
    mock.set_snapshot(snapshot.clone());
    let (_, calls) = mock.reconcile(&written, accept(&written)).await;
    assert!(calls.is_empty(), "{calls:#?}");

    // Anything else that changes is written at once, use included.
    snapshot.reports[0].process.state = corral::lease::ProcessState::Exited;
    mock.set_snapshot(snapshot);
    let (_, calls) = mock.reconcile(&written, accept(&written)).await;
    let status = &calls[0].body["status"];
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(status["replicaStatuses"][0]["usage"]["cpu"], "250m");
}
