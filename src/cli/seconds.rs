//! Flags that take seconds: each is a finite number within its range, or clap refuses it
//! with the flag's name and the range, before anything runs. (A NaN or an infinity would
//! otherwise reach `Duration::from_secs_f64`, which panics.)

use std::time::Duration;

/// A number of seconds from `min` to `max`.
fn within(text: &str, min: f64, max: f64) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be a number of seconds from {min} to {max}"))
    }
}

/// `--resync`: from 0.1 s to a day.
pub fn resync(text: &str) -> Result<f64, String> {
    within(text, 0.1, 86_400.0)
}

/// `--session-timeout`: from 1 s to 600 s (ZooKeeper's own bounds are narrower still: the
/// server fits it between 2 and 20 ticks).
pub fn session_timeout(text: &str) -> Result<f64, String> {
    within(text, 1.0, 600.0)
}

/// A `--timeout` to wait: from 0 to a day.
pub fn timeout(text: &str) -> Result<f64, String> {
    within(text, 0.0, 86_400.0)
}

/// `corral top --interval`: from 0.1 s to an hour.
pub fn interval(text: &str) -> Result<f64, String> {
    within(text, 0.1, 3_600.0)
}

/// `seconds` as a duration; what the parsers above let through never fails here, and
/// anything else is taken as its nearest bound rather than panic.
pub fn duration(seconds: f64) -> Duration {
    if seconds.is_nan() || seconds <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_refused_with_the_range() {
        for parse in [resync, session_timeout, timeout, interval] {
            for hostile in [
                "inf", "-inf", "NaN", "nan", "1e400", "-1", "", "five", "0x10", "1s",
            ] {
                assert!(parse(hostile).is_err(), "{hostile:?}");
            }
        }
        assert_eq!(
            resync("0.05"),
            Err("must be a number of seconds from 0.1 to 86400".into())
        );
        assert_eq!(
            session_timeout("0.5"),
            Err("must be a number of seconds from 1 to 600".into())
        );
        assert_eq!(resync(" 2.5 "), Ok(2.5));
        assert_eq!(timeout("0"), Ok(0.0));
        assert_eq!(interval("3600"), Ok(3600.0));
        assert!(interval("3601").is_err());
    }

    #[test]
    fn durations_never_panic() {
        assert_eq!(duration(f64::NAN), Duration::ZERO);
        assert_eq!(duration(-1.0), Duration::ZERO);
        assert_eq!(duration(f64::INFINITY), Duration::MAX);
        assert_eq!(duration(1.5), Duration::from_millis(1500));
    }
}
