//! Watching corral's kinds so that one object corral cannot read never stops the watch.
//!
//! A typed watch fails its whole list when one object does not deserialize, and retries
//! for ever: one bad object would blind the controller. So each kind is watched as
//! untyped objects and converted one by one. An object that does not convert is recorded
//! with the field and the reason, and its last readable version (if any) stays in the
//! store: the controller keeps using it rather than treat it as deleted.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use crate::api::WorkloadRef;
use crate::api::identity::DEFAULT_NAMESPACE;
use crate::sync::Lock;
use futures::{Stream, StreamExt, future};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// How objects of a kind are told apart: a Workload by its [`WorkloadRef`], a
/// ResourcePolicy (cluster-scoped) by its name.
pub trait Identity: Ord + Clone + Debug + Send + Sync + 'static {
    /// The identity of `obj`.
    fn of(obj: &DynamicObject) -> Self;
}

impl Identity for WorkloadRef {
    fn of(obj: &DynamicObject) -> Self {
        WorkloadRef::new(
            obj.metadata
                .namespace
                .as_deref()
                .unwrap_or(DEFAULT_NAMESPACE),
            obj.name_any(),
        )
    }
}

impl Identity for String {
    fn of(obj: &DynamicObject) -> Self {
        obj.name_any()
    }
}

/// Objects the API server holds that corral cannot read: their identity → what is wrong.
#[derive(Clone, Debug)]
pub struct Unreadable<Id>(Arc<Mutex<BTreeMap<Id, String>>>);

impl<Id> Default for Unreadable<Id> {
    fn default() -> Self {
        Unreadable(Arc::default())
    }
}

impl<Id: Identity> Unreadable<Id> {
    /// Every unreadable object, with what is wrong.
    pub fn all(&self) -> BTreeMap<Id, String> {
        self.0.locked().clone()
    }

    fn set(&self, obj: &DynamicObject, problem: Option<String>) {
        let name = Id::of(obj);
        {
            let mut map = self.0.locked();
            match problem {
                Some(p) => map.insert(name, p),
                None => map.remove(&name),
            };
        }
    }
}

/// `namespace/name`, or `name` for a cluster-scoped object: for logs.
pub fn full_name<K: ResourceExt>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

/// Converts one untyped object, naming the field that fails.
///
/// # Errors
/// The object does not match corral's type: `field.path: what is wrong`.
pub fn convert<K: DeserializeOwned>(obj: &DynamicObject) -> Result<K, String> {
    let value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// A reflector of `K` fed by an untyped watch on `api`: the typed store, and the stream of
/// objects it applied (for a `kube::runtime::Controller`, or to be drained; the store
/// changes only while it is polled). Objects that do not convert go to `unreadable`, and
/// their last readable version stays. `changes` is bumped after every event the store
/// applied, deletions included. The receiver returned turns true once the first list is
/// in the store: `Store::wait_until_ready` wakes only one waiter, and the
/// `kube::runtime::Controller` over the store is one already.
pub fn typed_reflector<K, Id: Identity>(
    api: Api<DynamicObject>,
    config: watcher::Config,
    unreadable: Unreadable<Id>,
    changes: tokio::sync::watch::Sender<u64>,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    tokio::sync::watch::Receiver<bool>,
)
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let known = reader.clone();
    let events = watcher(api, config)
        .default_backoff()
        .filter_map(move |event| future::ready(typed_event(event, &known, &unreadable)));
    let (listed_tx, listed) = tokio::sync::watch::channel(false);
    let stream = reflector(writer, events)
        .inspect(move |event| {
            if matches!(event, Ok(Event::InitDone)) {
                listed_tx.send_replace(true);
            }
            if matches!(
                event,
                Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone)
            ) {
                changes.send_modify(|n| *n += 1);
            }
        })
        .applied_objects();
    (reader, stream, listed)
}

fn watcher(
    api: Api<DynamicObject>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<DynamicObject>, watcher::Error>> + Send {
    watcher::watcher(api, config)
}

/// The typed event for an untyped one; `None` drops it (the store keeps what it had).
fn typed_event<K, Id: Identity>(
    event: Result<Event<DynamicObject>, watcher::Error>,
    known: &Store<K>,
    unreadable: &Unreadable<Id>,
) -> Option<Result<Event<K>, watcher::Error>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone,
{
    let event = match event {
        Ok(event) => event,
        Err(e) => return Some(Err(e)),
    };
    // The last readable version, for an object that no longer converts.
    let last = |obj: &DynamicObject| {
        let mut key = ObjectRef::<K>::new(&obj.name_any());
        if let Some(ns) = obj.namespace() {
            key = key.within(&ns);
        }
        known.get(&key).map(|k| (*k).clone())
    };
    let read = |obj: &DynamicObject| -> Option<K> {
        match convert::<K>(obj) {
            Ok(k) => {
                unreadable.set(obj, None);
                Some(k)
            }
            Err(problem) => {
                tracing::warn!(object = %full_name(obj), %problem, "cannot read the object; keeping its last readable version");
                unreadable.set(obj, Some(problem));
                last(obj)
            }
        }
    };
    match event {
        Event::Apply(obj) => read(&obj).map(|k| Ok(Event::Apply(k))),
        Event::InitApply(obj) => read(&obj).map(|k| Ok(Event::InitApply(k))),
        Event::Delete(obj) => {
            unreadable.set(&obj, None);
            convert::<K>(&obj)
                .ok()
                .or_else(|| last(&obj))
                .map(|k| Ok(Event::Delete(k)))
        }
        Event::Init => Some(Ok(Event::Init)),
        Event::InitDone => {
            tracing::debug!(kind = %K::kind(&()), "listed");
            Some(Ok(Event::InitDone))
        }
    }
}

/// The untyped API of `K` in every namespace.
pub fn untyped_api<K: Resource<DynamicType = ()>>(client: kube::Client) -> Api<DynamicObject> {
    Api::all_with(client, &ApiResource::erase::<K>(&()))
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::store::Writer;
    use serde_json::json;

    use super::*;
    use crate::api::Workload;

    fn dynamic(replicas: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "corral.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": "web", "namespace": "t", "resourceVersion": "1"},
            "spec": {"replicas": replicas, "command": {"args": ["sleep", "1"]}},
        }))
        .unwrap()
    }

    #[test]
    fn a_bad_field_is_named() {
        let problem = convert::<Workload>(&dynamic(json!("three"))).unwrap_err();
        assert!(
            problem.starts_with("spec.replicas: invalid type"),
            "{problem}"
        );
    }

    #[test]
    fn an_unreadable_update_keeps_the_last_readable_version() {
        let mut writer: Writer<Workload> = Writer::default();
        let store = writer.as_reader();
        let unreadable = Unreadable::<WorkloadRef>::default();
        let good = typed_event(Ok(Event::Apply(dynamic(json!(2)))), &store, &unreadable)
            .unwrap()
            .unwrap();
        writer.apply_watcher_event(&good);
        assert!(unreadable.all().is_empty());

        let bad = typed_event(Ok(Event::Apply(dynamic(json!("x")))), &store, &unreadable)
            .unwrap()
            .unwrap();
        let Event::Apply(kept) = bad else {
            panic!("expected an Apply of the last readable version");
        };
        assert_eq!(kept.spec.replicas, 2);
        let web: WorkloadRef = "t/web".parse().unwrap();
        assert!(unreadable.all()[&web].starts_with("spec.replicas:"));

        // Never readable: nothing reaches the store, the watch goes on.
        let other = dynamic(json!("x"));
        let mut other_named = other.clone();
        other_named.metadata.name = Some("db".into());
        assert!(typed_event(Ok(Event::Apply(other_named)), &store, &unreadable).is_none());
        assert_eq!(unreadable.all().len(), 2);

        // Deleting clears the problem.
        let deleted = typed_event(Ok(Event::Delete(other)), &store, &unreadable);
        assert!(matches!(deleted, Some(Ok(Event::Delete(_)))));
        assert!(!unreadable.all().contains_key(&web));
    }
}
