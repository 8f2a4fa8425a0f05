//! Names and labels: what Kubernetes allows, and what corral needs so that no name can ever
//! form a path (cgroup directories and lease znodes are built from them).

/// What a person is told when a name is not a DNS-1123 label. The CRDs' CEL rule on
/// `metadata.name` uses the same words.
/// The CRDs' pattern for a DNS-1123 label (with `maxLength: 63`).
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// The CRDs' pattern for an absolute path with no `.` or `..` component and no NUL byte:
/// each component is empty, or any text but `.` and `..`. RE2 has no lookahead, so the
/// three ways a component can avoid being `.` or `..` are spelt out.
pub const ABSOLUTE_PATH_PATTERN: &str =
    r"^(/([^/.\x00][^/\x00]*|\.[^/.\x00][^/\x00]*|\.\.[^/\x00]+)?)+$";

/// The CRDs' pattern for text that must not hold a NUL byte (arguments, environment
/// values): the kernel cannot pass one to a program.
pub const NO_NUL_PATTERN: &str = r"^[^\x00]*$";

/// What a person is told when a path does not match [`ABSOLUTE_PATH_PATTERN`].
pub fn absolute_path_problem(p: &str) -> String {
    if !p.starts_with('/') {
        format!("{p:?} must be an absolute path")
    } else if p.contains('\0') {
        "must not contain a NUL byte".to_string()
    } else {
        format!("{p:?} must not contain '.' or '..' components")
    }
}

pub const DNS_LABEL_MESSAGE: &str = "must be a DNS-1123 label: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit";

/// True for a DNS-1123 label: 1 to 63 of `[a-z0-9-]`, starting and ending alphanumeric.
/// Such a name has no `/`, no `.` and is never `..`, so it is safe as one path component.
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Checks a label or annotation key: an optional DNS-1123 subdomain prefix and `/`, then a
/// name of at most 63 characters.
///
/// # Errors
/// What is wrong with the key, in words.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns_subdomain(prefix)
    {
        return Err(format!(
            "key {key:?}: the prefix before '/' must be a DNS subdomain such as example.com"
        ));
    }
    if !is_qualified_name(name) {
        return Err(format!(
            "key {key:?}: the name must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a label value: empty, or at most 63 letters, digits, `-`, `_`, `.`, starting and
/// ending with a letter or digit.
///
/// # Errors
/// What is wrong with the value, in words.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name(value) {
        Ok(())
    } else {
        Err(format!(
            "value {value:?} must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

fn is_qualified_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_cannot_form_paths() {
        for good in ["web", "a", "team-a", "x1", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "../etc",
            "Web",
            "-a",
            "a-",
            "a.b",
            "a_b",
            "a b",
            "é",
            "a\0",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("app.kubernetes.io/name").is_ok());
        assert!(check_label_key("Tier_1.x").is_ok());
        assert!(check_label_key("/name").is_err());
        assert!(check_label_key("Example.com/name").is_err());
        assert!(check_label_key("a/b/c").is_err());
        assert!(check_label_key("-x").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("no").is_ok());
        assert!(check_label_value("v1.2_3-x").is_ok());
        assert!(check_label_value("a b").is_err());
        assert!(check_label_value(&"a".repeat(64)).is_err());
    }
}
