//! Kubernetes quantities (`500m`, `1.5`, `256Mi`, `1G`, `1e3`), parsed exactly.
//!
//! The wire type is k8s-openapi's [`Quantity`](K8sQuantity), wrapped so that it carries the
//! schema the apiserver should check (int-or-string, the upstream pattern, not negative) and
//! exact conversions to the units corral allocates in: millicores and bytes.
//!
//! The parser is written here rather than taken from `kube_quantity`, which goes through `f64`
//! (so `9223372036854775807` becomes `…808`), rejects the valid `1E`, and can overflow.
//! Here every step is checked integer arithmetic, and a value that does not fit is an error.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The pattern the apiserver checks a quantity string against; the same one controller-gen
/// emits for `resource.Quantity`.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// The CRDs' pattern for a quantity: [`QUANTITY_PATTERN`] without a minus sign, since no
/// amount corral takes may be negative. A pattern, not a CEL rule: a rule on an
/// int-or-string costs so much in the apiserver's estimate that a list of quantities (the
/// tenants, the replicas in status) exceeds its budget, and the CRD is refused.
pub const SCHEMA_QUANTITY_PATTERN: &str = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// What a person is told when a string is not a quantity.
pub const QUANTITY_HINT: &str =
    "is not a quantity; write a number with an optional suffix, such as 500m, 1.5, 256Mi or 1G";

/// The longest quantity string accepted; it bounds the cost of CEL rules in the apiserver.
pub const QUANTITY_MAX_LENGTH: u32 = 64;

/// A Kubernetes quantity as written in a manifest: a string such as `500m` or `256Mi`, or a
/// plain number.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quantity(pub K8sQuantity);

impl Quantity {
    /// A quantity from its textual form, unchecked; see [`Quantity::value`].
    pub fn new(text: impl Into<String>) -> Self {
        Quantity(K8sQuantity(text.into()))
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0.0
    }

    /// The exact value.
    ///
    /// # Errors
    /// [`QuantityError`] when the text is not a quantity or the value is out of range.
    pub fn value(&self) -> Result<Exact, QuantityError> {
        Exact::parse(self.as_str())
    }

    /// The value as CPU millicores (`500m` → 500, `1.5` → 1500).
    ///
    /// # Errors
    /// Not a quantity, negative, above `i64::MAX` millicores, or finer than `1m`.
    pub fn millis(&self) -> Result<i64, QuantityError> {
        self.value()?.to_scaled(-3, "1m")
    }

    /// The value as a whole number (bytes for memory: `256Mi` → 268435456).
    ///
    /// # Errors
    /// Not a quantity, negative, above `i64::MAX`, or not a whole number.
    pub fn units(&self) -> Result<i64, QuantityError> {
        self.value()?.to_scaled(0, "1")
    }

    /// CPU millicores written the way a person reads them: `250m`, `1`, `1500m`.
    pub fn from_millis(millis: i64) -> Self {
        if millis % 1000 == 0 {
            Quantity::new((millis / 1000).to_string())
        } else {
            Quantity::new(format!("{millis}m"))
        }
    }

    /// Bytes written with the largest binary suffix that divides them exactly: `256Mi`, `1Gi`.
    pub fn from_bytes(bytes: i64) -> Self {
        const SUFFIXES: [(&str, i64); 6] = [
            ("Ei", 1 << 60),
            ("Pi", 1 << 50),
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ];
        for (suffix, size) in SUFFIXES {
            if bytes != 0 && bytes % size == 0 {
                return Quantity::new(format!("{}{suffix}", bytes / size));
            }
        }
        Quantity::new(bytes.to_string())
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "pattern": SCHEMA_QUANTITY_PATTERN,
            "maxLength": QUANTITY_MAX_LENGTH,
            "minimum": 0,
        })
    }
}

/// Why a quantity was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not of the form number + suffix.
    #[error("{QUANTITY_HINT}")]
    Malformed,
    /// Below zero.
    #[error("must not be negative")]
    Negative,
    /// Does not fit in a signed 64-bit count of the unit.
    #[error("is too large")]
    TooLarge,
    /// Has a fraction of the smallest unit.
    #[error("is more precise than {0}")]
    TooPrecise(&'static str),
}

/// An exact quantity: `mantissa × 10^exponent`, binary suffixes already multiplied in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exact {
    mantissa: i128,
    exponent: i32,
    /// Digits beyond the 30 kept were dropped, and not all of them were zero.
    inexact: bool,
}

/// Mantissas are kept below this so that scaling by the few powers of ten a suffix or unit
/// needs never overflows `i128`.
const MANTISSA_LIMIT: i128 = 10i128.pow(30);

impl Exact {
    /// Parses the Kubernetes quantity grammar:
    /// `<sign>? (<digits> | <digits>.<digits>? | .<digits>) (<binarySI> | <decimalSI> | [eE]<sign>?<digits>)?`.
    ///
    /// # Errors
    /// [`QuantityError::Malformed`] when the text does not follow the grammar,
    /// [`QuantityError::TooLarge`] when it has more significant digits than any resource needs.
    pub fn parse(text: &str) -> Result<Exact, QuantityError> {
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        let (int_digits, frac_digits) = number.split_once('.').unwrap_or((number, ""));
        if (int_digits.is_empty() && frac_digits.is_empty()) || frac_digits.contains('.') {
            return Err(QuantityError::Malformed);
        }
        let mut mantissa: i128 = 0;
        let mut exponent: i32 = 0;
        let mut inexact = false;
        for (i, digit) in int_digits.bytes().chain(frac_digits.bytes()).enumerate() {
            let digit = i128::from(digit - b'0');
            if mantissa >= MANTISSA_LIMIT {
                // Past 30 significant digits: an integer digit only makes the value larger;
                // a fractional one is finer than any unit corral uses.
                if i < int_digits.len() {
                    exponent = exponent.saturating_add(1);
                } else if digit != 0 {
                    inexact = true;
                }
                continue;
            }
            mantissa = mantissa * 10 + digit;
            if i >= int_digits.len() {
                exponent -= 1;
            }
        }
        let (suffix_exponent, binary_shift) = parse_suffix(suffix)?;
        exponent = exponent.saturating_add(suffix_exponent);
        let mut exact = Exact {
            mantissa,
            exponent,
            inexact,
        }
        .normalized();
        if binary_shift > 0 {
            exact.mantissa = exact
                .mantissa
                .checked_mul(1i128 << binary_shift)
                .filter(|m| *m < MANTISSA_LIMIT * 1000)
                .ok_or(QuantityError::TooLarge)?;
            // 1.5Gi is 15×2³⁰×10⁻¹: whole bytes only once the tens are taken out again.
            exact = exact.normalized();
        }
        if negative {
            exact.mantissa = -exact.mantissa;
        }
        Ok(exact)
    }

    /// Strips trailing zeros so that equal values compare equal.
    fn normalized(mut self) -> Exact {
        if self.mantissa == 0 {
            return Exact {
                mantissa: 0,
                exponent: 0,
                inexact: self.inexact,
            };
        }
        while self.mantissa % 10 == 0 {
            self.mantissa /= 10;
            self.exponent = self.exponent.saturating_add(1);
        }
        self
    }

    /// True for values below zero.
    pub fn is_negative(&self) -> bool {
        self.mantissa < 0
    }

    /// The value as a whole count of `10^unit_exponent` (−3 for millis, 0 for units).
    ///
    /// # Errors
    /// Negative, larger than `i64::MAX`, or a fraction of the unit (named by `unit`).
    pub fn to_scaled(self, unit_exponent: i32, unit: &'static str) -> Result<i64, QuantityError> {
        if self.is_negative() {
            return Err(QuantityError::Negative);
        }
        let shift = i64::from(self.exponent) - i64::from(unit_exponent);
        let scaled = if shift >= 0 && !self.inexact {
            if self.mantissa == 0 {
                0
            } else {
                let factor = u32::try_from(shift)
                    .ok()
                    .and_then(|s| 10i128.checked_pow(s))
                    .ok_or(QuantityError::TooLarge)?;
                self.mantissa
                    .checked_mul(factor)
                    .ok_or(QuantityError::TooLarge)?
            }
        } else {
            // After normalization the mantissa has no trailing zeros, so any negative shift
            // leaves a fraction of the unit; so do dropped non-zero digits.
            return Err(QuantityError::TooPrecise(unit));
        };
        i64::try_from(scaled).map_err(|_| QuantityError::TooLarge)
    }
}

impl Exact {
    /// The value as a count of millis in a form any quantity parser reads exactly and
    /// compares without overflow (`1.5Gi` → `1610612736000m`); `None` when it is negative or
    /// not a whole number of millis.
    pub fn canonical_millis(&self) -> Option<String> {
        if self.is_negative() || self.inexact {
            return None;
        }
        let shift = u32::try_from(i64::from(self.exponent) + 3).ok()?;
        let millis = self.mantissa.checked_mul(10i128.checked_pow(shift)?)?;
        Some(format!("{millis}m"))
    }
}

/// The decimal exponent and binary shift a suffix stands for.
fn parse_suffix(suffix: &str) -> Result<(i32, u32), QuantityError> {
    let decimal = match suffix {
        "" => Some(0),
        "n" => Some(-9),
        "u" => Some(-6),
        "m" => Some(-3),
        "k" => Some(3),
        "M" => Some(6),
        "G" => Some(9),
        "T" => Some(12),
        "P" => Some(15),
        "E" => Some(18),
        _ => None,
    };
    if let Some(exponent) = decimal {
        return Ok((exponent, 0));
    }
    let binary = match suffix {
        "Ki" => Some(10),
        "Mi" => Some(20),
        "Gi" => Some(30),
        "Ti" => Some(40),
        "Pi" => Some(50),
        "Ei" => Some(60),
        _ => None,
    };
    if let Some(shift) = binary {
        return Ok((0, shift));
    }
    // A decimal exponent: e or E, an optional sign, digits. (`E` alone is exa, handled above.)
    let digits = suffix
        .strip_prefix(['e', 'E'])
        .ok_or(QuantityError::Malformed)?;
    let (negative, digits) = match digits.as_bytes().first() {
        Some(b'-') => (true, &digits[1..]),
        Some(b'+') => (false, &digits[1..]),
        _ => (false, digits),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::Malformed);
    }
    // Anything past a few hundred is out of range either way; saturate instead of failing so
    // that 1e400 is "too large" and 1e-400 "too precise", not "malformed".
    let magnitude: i32 = digits.parse().unwrap_or(i32::MAX / 2).min(i32::MAX / 2);
    Ok((if negative { -magnitude } else { magnitude }, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn millis(s: &str) -> Result<i64, QuantityError> {
        Quantity::new(s).millis()
    }

    fn units(s: &str) -> Result<i64, QuantityError> {
        Quantity::new(s).units()
    }

    #[test]
    fn cpu_forms_become_millicores() {
        assert_eq!(millis("500m"), Ok(500));
        assert_eq!(millis("1.5"), Ok(1500));
        assert_eq!(millis("2"), Ok(2000));
        assert_eq!(millis(".25"), Ok(250));
        assert_eq!(millis("1."), Ok(1000));
        assert_eq!(millis("+3"), Ok(3000));
        assert_eq!(millis("1e-3"), Ok(1));
        assert_eq!(millis("250000u"), Ok(250));
        assert_eq!(millis("0"), Ok(0));
        assert_eq!(millis("0.0001"), Err(QuantityError::TooPrecise("1m")));
        assert_eq!(millis("1n"), Err(QuantityError::TooPrecise("1m")));
    }

    #[test]
    fn memory_forms_become_bytes() {
        assert_eq!(units("256Mi"), Ok(256 << 20));
        assert_eq!(units("1G"), Ok(1_000_000_000));
        assert_eq!(units("1.5Gi"), Ok(3 << 29));
        assert_eq!(units("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(units("7Ei"), Ok(7 << 60));
        assert_eq!(units("1e3"), Ok(1000));
        assert_eq!(units("1E3"), Ok(1000));
        assert_eq!(units("9223372036854775807"), Ok(i64::MAX));
        assert_eq!(units("1k"), Ok(1000));
        assert_eq!(units("1Ki"), Ok(1024));
        assert_eq!(units("0.5"), Err(QuantityError::TooPrecise("1")));
        assert_eq!(units("500m"), Err(QuantityError::TooPrecise("1")));
    }

    #[test]
    fn out_of_range_and_malformed_values_are_refused() {
        assert_eq!(units("9223372036854775808"), Err(QuantityError::TooLarge));
        assert_eq!(units("8Ei"), Err(QuantityError::TooLarge));
        assert_eq!(units("1e400"), Err(QuantityError::TooLarge));
        assert_eq!(
            units("99999999999999999999999999999999999999999Ei"),
            Err(QuantityError::TooLarge)
        );
        assert_eq!(units("1e-400"), Err(QuantityError::TooPrecise("1")));
        assert_eq!(units("-1"), Err(QuantityError::Negative));
        assert_eq!(units("-0"), Ok(0));
        assert_eq!(
            units("1.0000000000000000000000000000000001"),
            Err(QuantityError::TooPrecise("1"))
        );
        assert_eq!(units("1.0000000000000000000000000000000000"), Ok(1));
        for bad in [
            "12XB", "", "m", ".", "1e", "1e+", "1.5.5", "1 Gi", "Gi", "--1", "1ee3", "1e1.5",
            "0x10", "١",
        ] {
            assert_eq!(units(bad), Err(QuantityError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn canonical_millis_are_exact_and_bounded() {
        let canonical = |s: &str| Exact::parse(s).ok().and_then(|e| e.canonical_millis());
        assert_eq!(canonical("1.5Gi").as_deref(), Some("1610612736000m"));
        assert_eq!(canonical("250m").as_deref(), Some("250m"));
        assert_eq!(
            canonical("0.000000000000000000000000000000000000000").as_deref(),
            Some("0m")
        );
        assert_eq!(canonical("1e-4"), None);
        assert_eq!(canonical("-1"), None);
        assert_eq!(canonical("1e400"), None);
    }

    #[test]
    fn readable_forms_round_trip() {
        assert_eq!(Quantity::from_millis(250).as_str(), "250m");
        assert_eq!(Quantity::from_millis(2000).as_str(), "2");
        assert_eq!(Quantity::from_bytes(256 << 20).as_str(), "256Mi");
        assert_eq!(Quantity::from_bytes(1000).as_str(), "1000");
        assert_eq!(Quantity::from_bytes(0).as_str(), "0");
    }

    #[test]
    fn integers_and_floats_in_yaml_are_quantities() {
        let q: Quantity = serde_json::from_value(serde_json::json!(2)).unwrap();
        assert_eq!(q.millis(), Ok(2000));
        let q: Quantity = serde_json::from_value(serde_json::json!(0.5)).unwrap();
        assert_eq!(q.millis(), Ok(500));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Exact::parse(&s);
            let _ = Quantity::new(s.clone()).millis();
            let _ = Quantity::new(s).units();
        }

        #[test]
        fn accepted_strings_match_the_apiserver_pattern(s in "[-+]?[0-9.]{0,6}([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9.]{1,3}|X)?") {
            let pattern = regex::Regex::new(QUANTITY_PATTERN).unwrap();
            if Exact::parse(&s).is_ok() {
                prop_assert!(pattern.is_match(&s), "{s:?} parsed but the apiserver would refuse it");
            }
        }

        #[test]
        fn millicores_round_trip(m in 0i64..=i64::MAX / 2) {
            prop_assert_eq!(Quantity::from_millis(m).millis(), Ok(m));
        }

        #[test]
        fn bytes_round_trip(b in 0i64..=i64::MAX) {
            prop_assert_eq!(Quantity::from_bytes(b).units(), Ok(b));
        }
    }
}
