//! Label selectors, matched as Kubernetes matches them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// True when `labels` satisfy `selector`. An absent or empty selector matches everything.
/// An operator the validator would refuse matches nothing.
pub fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// True when the selector selects everything.
pub fn is_empty(selector: Option<&LabelSelector>) -> bool {
    selector.is_none_or(|s| {
        s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
            && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn selector(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions() {
        let s = selector(json!({"matchLabels": {"zone": "a"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["gold", "silver"]},
            {"key": "spot", "operator": "DoesNotExist"},
            {"key": "os", "operator": "NotIn", "values": ["windows"]},
            {"key": "gpu", "operator": "Exists"}]}));
        assert!(matches(
            Some(&s),
            &labels(&[("zone", "a"), ("tier", "gold"), ("gpu", "")])
        ));
        assert!(!matches(
            Some(&s),
            &labels(&[("zone", "b"), ("tier", "gold"), ("gpu", "")])
        ));
        assert!(!matches(
            Some(&s),
            &labels(&[("zone", "a"), ("tier", "bronze"), ("gpu", "")])
        ));
        assert!(!matches(
            Some(&s),
            &labels(&[("zone", "a"), ("tier", "gold"), ("gpu", ""), ("spot", "1")])
        ));
        assert!(!matches(
            Some(&s),
            &labels(&[
                ("zone", "a"),
                ("tier", "gold"),
                ("gpu", ""),
                ("os", "windows")
            ])
        ));
        assert!(!matches(
            Some(&s),
            &labels(&[("zone", "a"), ("tier", "gold")])
        ));
    }

    #[test]
    fn empty_selectors_match_everything() {
        assert!(matches(None, &labels(&[])));
        assert!(matches(Some(&selector(json!({}))), &labels(&[("a", "b")])));
        assert!(is_empty(Some(&selector(json!({"matchLabels": {}})))));
        assert!(!is_empty(Some(&selector(
            json!({"matchLabels": {"a": "b"}})
        ))));
    }

    #[test]
    fn unknown_operators_match_nothing() {
        let s = selector(
            json!({"matchExpressions": [{"key": "a", "operator": "Like", "values": ["b"]}]}),
        );
        assert!(!matches(Some(&s), &labels(&[("a", "b")])));
    }
}
