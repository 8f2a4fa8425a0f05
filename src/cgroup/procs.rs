//! Reading the kernel's own files boundedly, and `cgroup.procs`: the one parser of the
//! processes a group lists, for the observed tree, the executor and the agent's stops and
//! adoptions alike.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::path::Path;

/// The most read of a `cgroup.procs` file: two million processes.
const PROCS_MAX: usize = 16 << 20;

/// Reads at most `max` bytes of `path`, opened so that no file can stall or bloat the
/// reader: a FIFO or device does not block the open (`O_NONBLOCK`), a terminal is not made
/// the controlling one, and what is larger than `max` is cut, never read whole.
///
/// # Errors
/// The file cannot be opened or read.
pub fn read_bounded(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let mut bytes = Vec::new();
    file.take(u64::try_from(max).unwrap_or(u64::MAX))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The processes listed in a `cgroup.procs` file, sorted and without duplicates (the kernel
/// guarantees neither). An empty file is an empty group.
pub fn read(cgroup_procs_file: &Path) -> io::Result<Vec<u32>> {
    let text = String::from_utf8(read_bounded(cgroup_procs_file, PROCS_MAX)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    parse(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} does not list process IDs one per line",
                cgroup_procs_file.display()
            ),
        )
    })
}

pub fn parse(contents: &str) -> Option<Vec<u32>> {
    let pids: BTreeSet<u32> = contents
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| line.parse().ok())
        .collect::<Option<_>>()?;
    Some(pids.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procs_lists_are_sorted_and_deduplicated() {
        assert_eq!(parse(""), Some(vec![]));
        assert_eq!(parse("30\n4\n30\n"), Some(vec![4, 30]));
        assert_eq!(parse(" 7 \n\n"), Some(vec![7]));
        assert_eq!(parse("4\nfour\n"), None);
    }
}
