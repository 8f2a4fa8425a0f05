//! The conditions corral writes in the status of its objects: their types
//! ([`ConditionType`]), their reasons ([`Reason`]), and how to build and read one.
//!
//! What this module guarantees:
//! - each type's and reason's wire text is its variant's name, the same for
//!   [`as_str`](Reason::as_str), `Display`, `FromStr` and serde, and it never changes:
//!   kstatus (Flux, Helm's `--wait`), `kubectl wait --for=jsonpath=…` and people's scripts
//!   match on it;
//! - a condition is built only from the enums ([`condition`]), so no text is misspelt;
//! - reading a condition back from an object never fails: a type or reason this corral does
//!   not know (written by another version of corral) reads as `None`.
//!
//! # A Workload's conditions
//!
//! | Type          | Status | Reason                 | Means                                                         |
//! |---------------|--------|------------------------|---------------------------------------------------------------|
//! | `Allocated`   | True   | `AllReplicasAllocated` | every replica has a node                                      |
//! |               | False  | `ReplicasPending`      | some have none; the message says which and why                |
//! |               | False  | `Invalid`              | this generation is refused; the message says why              |
//! |               | False  | `Unreadable`           | corral cannot read the object at all, so nothing of it runs   |
//! | `Enforced`    | True   | `Applied`              | every allocated replica's agent applied its current lease     |
//! |               | False  | `WaitingForAgents`     | some agents have not reported the current lease yet           |
//! |               | False  | `EnforcementFailed`    | an agent could not apply something; the message says what     |
//! |               | False  | `NothingAllocated`     | no replica has a node, so there is nothing to enforce         |
//! |               | False  | `Unreadable`           | see `Allocated`                                               |
//! | `Ready`       | True   | `AllReplicasRunning`   | every replica runs the current spec and is ready              |
//! |               | False  | `RollingOut`           | a rollout is under way                                        |
//! |               | False  | `ReplicasNotRunning`   | some replicas do not run, or are not ready; the message says how |
//! |               | False  | `SpecRefused`          | this generation is refused; the last accepted one runs        |
//! |               | False  | `Unreadable`           | see `Allocated`                                               |
//! | `RolledOut`   | True   | `AllReplicasUpdated`   | every allocated replica runs the current revision             |
//! |               | True   | `NothingToRollOut`     | no rollout: adopted processes, or no allocation pass yet      |
//! |               | False  | `RollingOut`           | how far the rollout is                                        |
//! | `Reconciling` | True   | `ReplicasPending`      | replicas wait for a node (kstatus: InProgress)                |
//! |               | True   | `WaitingForAgents`     | agents have not applied the current leases yet                |
//! |               | True   | `ReplicasStarting`     | replicas are starting, or not ready yet                       |
//! |               | True   | `RollingOut`           | a rollout is under way                                        |
//! |               | True   | `NotYetSeen`           | the CRD's default status: corral has not read the object yet  |
//! |               | False  | `Reconciled`           | nothing left to do                                            |
//! |               | False  | `Stalled`              | no waiting helps; see `Stalled`                               |
//! | `Stalled`     | True   | `SpecRefused`          | this generation is refused (kstatus: Failed)                  |
//! |               | True   | `LimitsNotApplied`     | a replica's limits cannot be applied, so it is not started    |
//! |               | True   | `CannotBePlaced`       | a replica fits on no node, however long it waits              |
//! |               | True   | `Unreadable`           | see `Allocated`                                               |
//! |               | False  | `NotStalled`           | nothing stands in the way                                     |
//!
//! When several things stall a Workload, `Stalled` takes the reason of the first and its
//! message lists them all.
//!
//! # A ResourcePolicy's conditions
//!
//! | Type          | Status | Reason           | Means                                                        |
//! |---------------|--------|------------------|--------------------------------------------------------------|
//! | `Valid`       | True   | `Accepted`       | the policy is in use as written                              |
//! |               | False  | `Invalid`        | it is refused; the message says why                          |
//! | `Ready`       | True   | `GoverningNodes` | it governs nodes; the message says their capacity            |
//! |               | False  | `NoNodes`        | no registered node is its to govern                          |
//! |               | False  | `Invalid`        | it is refused; see `Valid`                                   |
//! | `Reconciling` | False  | `Reconciled`     | corral has read this generation                              |
//! |               | False  | `Stalled`        | it is refused; see `Stalled`                                 |
//! | `Stalled`     | True   | `SpecRefused`    | this generation is refused (kstatus: Failed)                 |
//! |               | False  | `NotStalled`     | the policy is in use                                         |

use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::{Deserialize, Serialize};

/// A text that names no variant this corral knows, as [`FromStr`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown condition {what} {text:?}")]
pub struct UnknownText {
    /// `type` or `reason`.
    pub what: &'static str,
    /// The text.
    pub text: String,
}

/// Declares an enum whose wire text is each variant's name, with `ALL`, `as_str`, `of`,
/// `Display`, `FromStr` and serde all from that one name, so that they cannot disagree and
/// no variant can be left out of `ALL`.
macro_rules! wire_text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$variant_meta:meta])* $variant:ident, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every variant, in the order they are declared.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire text: the variant's name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),+
                }
            }

            /// The variant whose wire text is `text`; `None` for a text this corral does not
            /// know, as another version of corral may have written.
            pub fn of(text: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == text)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownText;

            fn from_str(text: &str) -> Result<$name, UnknownText> {
                $name::of(text).ok_or_else(|| UnknownText {
                    what: $what,
                    text: text.to_string(),
                })
            }
        }
    };
}

wire_text_enum! {
    /// What a condition is about: its `type`. The module documentation lists each type's
    /// reasons.
    pub enum ConditionType ("type") {
        /// A Workload's replicas have nodes.
        Allocated,
        /// A Workload's agents applied their leases.
        Enforced,
        /// A Workload's replicas run and are ready; a ResourcePolicy governs nodes.
        Ready,
        /// A Workload's replicas run its current revision.
        RolledOut,
        /// corral is still working toward what the object asks (kstatus: InProgress).
        Reconciling,
        /// corral cannot make progress without a change (kstatus: Failed).
        Stalled,
        /// A ResourcePolicy is accepted.
        Valid,
    }
}

wire_text_enum! {
    /// Why a condition has its status: its `reason`. The module documentation lists which
    /// reasons each type has.
    pub enum Reason ("reason") {
        /// `Allocated=True`: every replica has a node.
        AllReplicasAllocated,
        /// `Allocated=False`, `Reconciling=True`: some replicas wait for a node.
        ReplicasPending,
        /// `Allocated=False`, a policy's `Valid=False` and `Ready=False`: the object is
        /// refused.
        Invalid,
        /// Every Workload condition of an object corral cannot read at all.
        Unreadable,
        /// `Enforced=True`: every allocated replica's agent applied its current lease.
        Applied,
        /// `Enforced=False`, `Reconciling=True`: agents have not reported the current
        /// lease yet.
        WaitingForAgents,
        /// `Enforced=False`: an agent could not apply something.
        EnforcementFailed,
        /// `Enforced=False`: no replica has a node.
        NothingAllocated,
        /// `Ready=True`: every replica runs the current spec and is ready.
        AllReplicasRunning,
        /// `Ready=False`, `RolledOut=False`, `Reconciling=True`: a rollout is under way.
        RollingOut,
        /// `Ready=False`: some replicas do not run, or are not ready.
        ReplicasNotRunning,
        /// `Ready=False`, `Stalled=True`: this generation is refused; the last accepted one
        /// stays in use.
        SpecRefused,
        /// `RolledOut=True`: every allocated replica runs the current revision.
        AllReplicasUpdated,
        /// `RolledOut=True`: nothing to roll out (adopted processes, or no pass yet).
        NothingToRollOut,
        /// `Reconciling=True`: replicas are starting, or not ready yet.
        ReplicasStarting,
        /// `Reconciling=True` of the CRD's default status: corral has not read the object.
        NotYetSeen,
        /// `Reconciling=False`: nothing left to do.
        Reconciled,
        /// `Reconciling=False`: corral cannot make progress; see the `Stalled` condition.
        Stalled,
        /// `Stalled=True`: a replica's limits cannot be applied, so it is not started.
        LimitsNotApplied,
        /// `Stalled=True`: a replica fits on no node, however long it waits.
        CannotBePlaced,
        /// `Stalled=False`: nothing stands in the way.
        NotStalled,
        /// A policy's `Valid=True`: it is in use as written.
        Accepted,
        /// A policy's `Ready=True`: it governs nodes.
        GoverningNodes,
        /// A policy's `Ready=False`: no registered node is its to govern.
        NoNodes,
    }
}

/// The wire text of a condition's status `True`.
const TRUE: &str = "True";
/// The wire text of a condition's status `False`.
const FALSE: &str = "False";

/// A condition, not yet stamped with a generation and a transition time (the status
/// writer does that).
pub fn condition(type_: ConditionType, status: bool, reason: Reason, message: &str) -> Condition {
    Condition {
        type_: type_.as_str().to_string(),
        status: if status { TRUE } else { FALSE }.to_string(),
        reason: reason.as_str().to_string(),
        message: message.to_string(),
        observed_generation: None,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// The condition of type `type_` in `conditions`, if there is one.
pub fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// A condition's status: `Some(true)` for `True`, `Some(false)` for `False`, `None` for
/// `Unknown` or anything else.
pub fn status_of(condition: &Condition) -> Option<bool> {
    match condition.status.as_str() {
        TRUE => Some(true),
        FALSE => Some(false),
        _ => None,
    }
}

/// A condition's reason; `None` for one this corral does not know.
pub fn reason_of(condition: &Condition) -> Option<Reason> {
    Reason::of(&condition.reason)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;

    /// Every variant's text reads back as that variant, through `of`, `FromStr` and serde,
    /// and no two variants share a text.
    fn round_trips<T>(all: &[T], as_str: fn(T) -> &'static str, of: fn(&str) -> Option<T>)
    where
        T: Copy + fmt::Debug + PartialEq + Serialize + for<'de> Deserialize<'de> + FromStr,
        <T as FromStr>::Err: fmt::Debug,
    {
        let mut texts = BTreeSet::new();
        for &v in all {
            let text = as_str(v);
            assert!(texts.insert(text), "{text} is the text of two variants");
            assert_eq!(of(text), Some(v));
            assert_eq!(text.parse::<T>().unwrap(), v);
            assert_eq!(serde_json::to_value(v).unwrap(), json!(text));
            assert_eq!(serde_json::from_value::<T>(json!(text)).unwrap(), v);
        }
    }

    #[test]
    fn every_type_and_reason_round_trips_and_no_two_share_a_text() {
        round_trips(ConditionType::ALL, ConditionType::as_str, ConditionType::of);
        round_trips(Reason::ALL, Reason::as_str, Reason::of);
        assert_eq!(ConditionType::ALL.len(), 7);
        assert_eq!(Reason::ALL.len(), 24);
    }

    #[test]
    fn the_wire_texts_are_the_ones_kstatus_and_kubectl_wait_read() {
        assert_eq!(ConditionType::RolledOut.as_str(), "RolledOut");
        assert_eq!(
            Reason::AllReplicasAllocated.to_string(),
            "AllReplicasAllocated"
        );
        assert_eq!(Reason::NotYetSeen.as_str(), "NotYetSeen");
        let built = condition(
            ConditionType::Enforced,
            false,
            Reason::EnforcementFailed,
            "memory.max: denied",
        );
        assert_eq!(
            (
                built.type_.as_str(),
                built.status.as_str(),
                built.reason.as_str()
            ),
            ("Enforced", "False", "EnforcementFailed")
        );
        assert_eq!(status_of(&built), Some(false));
        assert_eq!(reason_of(&built), Some(Reason::EnforcementFailed));
    }

    #[test]
    fn a_text_from_another_version_reads_as_none() {
        assert_eq!(Reason::of("QuotaExceeded"), None);
        assert_eq!(Reason::of(""), None);
        assert_eq!(Reason::of("applied"), None, "the text is case-sensitive");
        assert_eq!(ConditionType::of("Degraded"), None);
        let error = "QuotaExceeded".parse::<Reason>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown condition reason \"QuotaExceeded\""
        );
        let foreign = Condition {
            type_: "Degraded".into(),
            status: "Unknown".into(),
            reason: "QuotaExceeded".into(),
            ..condition(ConditionType::Ready, true, Reason::Applied, "")
        };
        assert_eq!((status_of(&foreign), reason_of(&foreign)), (None, None));
        assert!(find(std::slice::from_ref(&foreign), ConditionType::Ready).is_none());
    }
}
