//! Each replica's output, kept within bounds: a pump process reads the replica's stdout and
//! stderr from a pipe and writes them to `<state>/logs/<key>.log`, rotating to `.log.1`,
//! `.log.2`, ... so that a replica's output never takes more than `max_bytes × max_files`
//! on the node (the kubelet's `containerLogMaxSize` and `containerLogMaxFiles`).
//!
//! The pump is `corral log-pump`, started beside the replica like conmon or Nomad's logmon:
//! it runs in the replica's groups, so its work is charged to the tenant's CPU and memory;
//! in a session of its own, so it outlives corral and a restart of corral disturbs no
//! workload; it ignores SIGTERM and ends when the last writer closes the pipe, so a
//! replica's last words are kept. It is executed rather than forked from corral, which would
//! pin a copy of corral's memory per replica.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::lease::LogLimits;
use crate::state::private;

/// The most files a policy may keep (`logs.maxFiles`).
const MAX_FILES: u32 = 100;

/// Where a replica's output goes, and how much of it is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSink {
    /// The current file; rotated ones are beside it with `.1`, `.2`, ...
    pub path: PathBuf,
    /// Rotation.
    pub limits: LogLimits,
}

impl LogSink {
    /// Every file of the sink that exists, oldest first (`.log.4` ... `.log.1`, `.log`).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = (1..MAX_FILES)
            .rev()
            .map(|i| rotated(&self.path, i))
            .filter(|p| p.exists())
            .collect();
        if self.path.exists() {
            files.push(self.path.clone());
        }
        files
    }

    /// Removes every file of the sink, rotated ones too.
    ///
    /// # Errors
    /// A file exists and cannot be removed.
    pub fn remove(&self) -> io::Result<()> {
        let mut paths = vec![self.path.clone()];
        paths.extend((1..=MAX_FILES).map(|i| rotated(&self.path, i)));
        for path in paths {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The arguments of `corral log-pump` for this sink, joining the groups of `join`.
    fn pump_args(&self, join: &[PathBuf]) -> Vec<String> {
        let mut args = vec![
            "log-pump".into(),
            "--max-bytes".into(),
            self.limits.max_bytes.to_string(),
            "--max-files".into(),
            self.limits.max_files.to_string(),
        ];
        for file in join {
            args.push("--join".into());
            args.push(file.to_string_lossy().into_owned());
        }
        args.push(self.path.to_string_lossy().into_owned());
        args
    }
}

/// The path of rotated file number `i`.
fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

/// A started pump: its process, and the write end of its pipe for the replica.
#[derive(Debug)]
pub struct Started {
    /// The pump, to reap once it ends.
    pub pump: Child,
    /// What the replica writes its stdout and stderr to.
    pub input: OwnedFd,
}

/// Starts `program log-pump` (`program` being corral's executable) for `sink`, in a
/// session of its own, ignoring SIGTERM, SIGINT and SIGHUP. The pump joins the groups of
/// `join` itself once it has started ([`join`]): starting a program costs CPU that a
/// replica's smallest quota (1 ms in 100) would stretch to seconds, and the agent waits
/// for the start, not for what follows.
///
/// # Errors
/// The pipe, the log directory or the pump cannot be made.
pub fn start_pump(program: &Path, sink: &LogSink, join: &[PathBuf]) -> io::Result<Started> {
    if let Some(dir) = sink.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private::create_dir(dir)?;
    }
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut command = Command::new(program);
    command
        .args(sink.pump_args(join))
        .env_clear()
        .stdin(Stdio::from(read))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs between fork and exec and makes only system calls (setsid,
    // signal).
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::signal(signal, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let pump = command.spawn()?;
    Ok(Started { pump, input: write })
}

/// Moves the calling process into the groups whose `cgroup.procs` files are `files`: the
/// pump's first step, so that its work is charged to the replica.
///
/// # Errors
/// A file cannot be written; the message names it.
pub fn join(files: &[PathBuf]) -> io::Result<()> {
    for file in files {
        std::fs::write(file, "0")
            .map_err(|e| io::Error::new(e.kind(), format!("joining {}: {e}", file.display())))?;
    }
    Ok(())
}

/// How long the pump drops output before it tries again to open a file it could not.
const REOPEN_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The pump's work, run by `corral log-pump`: copies `input` to `sink` until it ends,
/// rotating so that no file grows beyond `max_bytes` and at most `max_files` remain.
/// Output that cannot be written (a full disk) is dropped rather than stall the replica;
/// so is output while the current file cannot be opened (no inode left to create it, at
/// the start or after a rotation), the pump trying again at most every second. The pump
/// never ends before its input does: a replica whose pump ended would die of SIGPIPE at
/// its next line of output.
///
/// # Errors
/// `input` cannot be read.
pub fn pump(mut input: impl Read, sink: &LogSink) -> io::Result<()> {
    let max_bytes = sink.limits.max_bytes.max(1);
    let files = sink.limits.max_files.clamp(1, MAX_FILES);
    let open = || -> Option<(File, u64)> {
        let file = private::open(&sink.path, private::Mode::Append).ok()?;
        let size = file.metadata().ok()?.len();
        Some((file, size))
    };
    let mut out = open();
    let mut retry_at = std::time::Instant::now() + REOPEN_AFTER;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if out.is_none() && std::time::Instant::now() >= retry_at {
            out = open();
            retry_at = std::time::Instant::now() + REOPEN_AFTER;
        }
        let mut chunk = &buffer[..n];
        while !chunk.is_empty() {
            let Some((file, size)) = out.as_mut() else {
                break;
            };
            if *size >= max_bytes {
                let (current, _) = out.take().expect("a current file");
                match rotate(sink, files, current) {
                    Ok(file) => out = Some((file, 0)),
                    Err(_) => {
                        retry_at = std::time::Instant::now() + REOPEN_AFTER;
                        break;
                    }
                }
                continue;
            }
            let room = usize::try_from(max_bytes - *size).unwrap_or(usize::MAX);
            let take = chunk.len().min(room);
            match file.write(&chunk[..take]) {
                Ok(written) => {
                    *size += written as u64;
                    chunk = &chunk[written..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

/// Shifts `.log.N-1` to `.log.N` ... `.log` to `.log.1` (the oldest falls off) and opens
/// a new current file; with one file only, the current one starts again empty.
fn rotate(sink: &LogSink, files: u32, current: File) -> io::Result<File> {
    if files == 1 {
        current.set_len(0)?;
        return Ok(current);
    }
    drop(current);
    for i in (1..files).rev() {
        let from = if i == 1 {
            sink.path.clone()
        } else {
            rotated(&sink.path, i - 1)
        };
        match std::fs::rename(&from, rotated(&sink.path, i)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    private::open(&sink.path, private::Mode::Append)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(dir: &Path, max_bytes: u64, max_files: u32) -> LogSink {
        LogSink {
            path: dir.join("t.w.0.log"),
            limits: LogLimits {
                max_bytes,
                max_files,
            },
        }
    }

    #[test]
    fn output_rotates_at_the_size_and_keeps_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), 10, 3);
        let input: Vec<u8> = (0..45u8).map(|i| b'a' + (i % 26)).collect();
        pump(&input[..], &sink).unwrap();
        let files = sink.files();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["t.w.0.log.2", "t.w.0.log.1", "t.w.0.log"]);
        let contents: Vec<String> = files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        // 45 bytes in files of 10: the first two files fell off, the last 25 bytes remain.
        assert_eq!(contents, ["uvwxyzabcd", "efghijklmn", "opqrs"]);
        sink.remove().unwrap();
        assert!(sink.files().is_empty());
    }

    #[test]
    fn a_single_file_starts_again_empty() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), 4, 1);
        pump(&b"abcdefghij"[..], &sink).unwrap();
        assert_eq!(std::fs::read_to_string(&sink.path).unwrap(), "ij");
        assert_eq!(sink.files(), std::slice::from_ref(&sink.path));
    }

    #[test]
    fn output_without_a_file_to_go_to_is_drained_not_refused() {
        // No file can be made there, as on a disk without a free inode: the pump still
        // reads to the end, so that the replica never writes into a closed pipe.
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink {
            path: dir.path().join("missing").join("t.w.0.log"),
            limits: LogLimits {
                max_bytes: 4,
                max_files: 2,
            },
        };
        let input = vec![b'x'; 200 * 1024];
        let mut reader = &input[..];
        pump(&mut reader, &sink).unwrap();
        assert!(reader.is_empty(), "every byte read");
        assert!(sink.files().is_empty());
    }

    #[test]
    fn appending_continues_where_an_earlier_pump_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), 8, 2);
        pump(&b"abcdef"[..], &sink).unwrap();
        pump(&b"ghij"[..], &sink).unwrap();
        assert_eq!(
            std::fs::read_to_string(rotated(&sink.path, 1)).unwrap(),
            "abcdefgh"
        );
        assert_eq!(std::fs::read_to_string(&sink.path).unwrap(), "ij");
    }
}
