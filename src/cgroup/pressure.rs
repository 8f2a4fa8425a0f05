//! Pressure stall information (PSI) of a cgroup v2 group, from its `cpu.pressure`,
//! `memory.pressure` and `io.pressure`: how much of the recent wall time some (or all) of
//! its tasks waited for the resource. Parsing is total: text the kernel would not write
//! gives `None`, never a panic.
//!
//! ```text
//! some avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! ```
//!
//! `avg300` is not kept: `total` lets a reader of two samples compute any window's average,
//! and every replica of a node shares one report.

use serde::{Deserialize, Serialize};

/// One line of a pressure file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stall {
    /// Percentage of the last 10 seconds stalled, 0 to 100.
    pub avg10: f64,
    /// Percentage of the last 60 seconds stalled, 0 to 100.
    pub avg60: f64,
    /// Time stalled since the group was created, microseconds.
    pub total_micros: u64,
}

/// One pressure file: `some` (at least one task stalled) and, where the kernel keeps it,
/// `full` (every non-idle task stalled at once; `cpu.pressure` has it from Linux 5.13).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pressure {
    /// Some tasks stalled.
    pub some: Stall,
    /// All tasks stalled; absent when the file has no valid `full` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<Stall>,
}

/// A group's pressure per resource; a resource is absent when its file is (cgroup v1, PSI
/// disabled, or a file that does not parse).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pressures {
    /// `cpu.pressure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Pressure>,
    /// `memory.pressure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Pressure>,
    /// `io.pressure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<Pressure>,
}

impl Pressures {
    /// `None` when no resource has pressure information, so that a v1 report stays as it
    /// was.
    pub fn any(self) -> Option<Pressures> {
        (self.cpu.is_some() || self.memory.is_some() || self.io.is_some()).then_some(self)
    }
}

impl Pressure {
    /// Parses a pressure file. `None` without a valid `some` line; `full` is `None` when
    /// its line is missing or malformed. The first line of each kind counts.
    pub fn parse(text: &str) -> Option<Pressure> {
        let line = |kind: &str| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(kind))
                .and_then(Stall::parse)
        };
        Some(Pressure {
            some: line("some")?,
            full: line("full"),
        })
    }
}

impl Stall {
    /// Parses `<kind> avg10=… avg60=… avg300=… total=…`; `None` when `avg10`, `avg60` or
    /// `total` is missing, repeated or out of range (an average outside 0–100, a total that
    /// is not an unsigned 64-bit number).
    fn parse(line: &str) -> Option<Stall> {
        let (mut avg10, mut avg60, mut total) = (None, None, None);
        for pair in line.split_whitespace().skip(1) {
            let (key, value) = pair.split_once('=')?;
            let slot = match key {
                "avg10" => &mut avg10,
                "avg60" => &mut avg60,
                "total" => &mut total,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return None;
            }
        }
        Some(Stall {
            avg10: percentage(avg10?)?,
            avg60: percentage(avg60?)?,
            total_micros: total?.parse().ok()?,
        })
    }
}

/// A finite percentage from 0 to 100 (`"nan"` and `"inf"` parse as floats, and are refused).
fn percentage(text: &str) -> Option<f64> {
    text.parse::<f64>()
        .ok()
        .filter(|v| (0.0..=100.0).contains(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMORY: &str = "some avg10=12.50 avg60=3.25 avg300=0.80 total=123456789\n\
                          full avg10=1.00 avg60=0.50 avg300=0.10 total=4567\n";

    #[test]
    fn both_lines_of_a_real_file() {
        assert_eq!(
            Pressure::parse(MEMORY),
            Some(Pressure {
                some: Stall {
                    avg10: 12.5,
                    avg60: 3.25,
                    total_micros: 123_456_789
                },
                full: Some(Stall {
                    avg10: 1.0,
                    avg60: 0.5,
                    total_micros: 4567
                }),
            })
        );
    }

    #[test]
    fn cpu_pressure_of_older_kernels_has_no_full_line() {
        let p = Pressure::parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        assert_eq!(p.some, Stall::default());
        assert_eq!(p.full, None);
    }

    #[test]
    fn a_malformed_full_line_is_dropped_and_a_malformed_some_line_drops_the_file() {
        let bad_full = "some avg10=1.00 avg60=2.00 avg300=3.00 total=10\nfull avg10=x avg60=0.00 avg300=0.00 total=0\n";
        let p = Pressure::parse(bad_full).unwrap();
        assert_eq!(p.some.total_micros, 10);
        assert_eq!(p.full, None);
        for text in [
            "",
            "\n",
            "garbage",
            "some",
            "some avg10=1.00",
            "some avg10=1.00 avg60=1.00 avg300=1.00",
            "some avg10=1.00 avg60=1.00 total=-1",
            "some avg10=1.00 avg60=1.00 total=1.5",
            "some avg10 avg60=1.00 total=1",
            "some avg10=nan avg60=1.00 total=1",
            "some avg10=inf avg60=1.00 total=1",
            "some avg10=-0.5 avg60=1.00 total=1",
            "some avg10=100.01 avg60=1.00 total=1",
            "some avg10=1.00 avg10=2.00 avg60=1.00 total=1",
            "somewhat avg10=1.00 avg60=1.00 total=1",
            "full avg10=1.00 avg60=1.00 avg300=1.00 total=1",
            "\u{0}\u{ff}some avg10=1.00 avg60=1.00 total=1",
        ] {
            assert_eq!(Pressure::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn huge_totals_parse_up_to_u64_and_no_further() {
        let max = format!(
            "some avg10=100.00 avg60=0.00 avg300=0.00 total={}",
            u64::MAX
        );
        assert_eq!(Pressure::parse(&max).unwrap().some.total_micros, u64::MAX);
        let over = "some avg10=0.00 avg60=0.00 avg300=0.00 total=18446744073709551616";
        assert_eq!(Pressure::parse(over), None);
        let long = format!("some avg10=0.00 avg60=0.00 total={}", "9".repeat(10_000));
        assert_eq!(Pressure::parse(&long), None);
    }

    #[test]
    fn unknown_fields_and_extra_lines_are_ignored() {
        let text = "some avg10=5.00 avg60=1.00 avg300=0.00 total=7 future=1\n\
                    later line\nsome avg10=99.00 avg60=99.00 avg300=99.00 total=99\n";
        let p = Pressure::parse(text).unwrap();
        assert_eq!((p.some.avg10, p.some.total_micros), (5.0, 7));
    }

    #[test]
    fn a_group_without_any_pressure_file_reports_none() {
        assert_eq!(Pressures::default().any(), None);
        let memory = Pressures {
            memory: Pressure::parse(MEMORY),
            ..Pressures::default()
        };
        assert_eq!(memory.any(), Some(memory));
    }
}
