//! ZooKeeper's own history, read from the servers' transaction logs, and an audit of who
//! wrote corral's leases in it.
//!
//! Every committed change of a ZooKeeper ensemble is a transaction with a zxid, logged by
//! each server that acknowledged it (`<dataDir>/version-2/log.<zxid>`: a file header, then
//! per transaction its Adler-32 checksum, its length, the serialized header and record, and
//! an end-of-record byte; jute's binary format, big-endian). The header names the session
//! that made the change. [`read_ensemble`] reads every server's logs and keeps what a
//! majority of them logged (a log may also hold proposals that were never committed);
//! [`audit_leases`] replays the election and checks each lease write against it.
//!
//! This is what the fault tests' "no lease written by a deposed controller" rests on: not
//! on what the controllers log about themselves, nor on sampling ZooKeeper now and then,
//! but on the ensemble's complete, ordered record of every lease write and of every
//! election znode's birth and death.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::Path;

/// ZooKeeper's opcodes (`ZooDefs.OpCode`) that appear in transaction logs.
mod op {
    pub const CREATE: i32 = 1;
    pub const DELETE: i32 = 2;
    pub const SET_DATA: i32 = 5;
    pub const SET_ACL: i32 = 7;
    pub const CHECK: i32 = 13;
    pub const MULTI: i32 = 14;
    pub const CREATE2: i32 = 15;
    pub const CREATE_CONTAINER: i32 = 19;
    pub const DELETE_CONTAINER: i32 = 20;
    pub const CREATE_TTL: i32 = 21;
    pub const CREATE_SESSION: i32 = -10;
    pub const CLOSE_SESSION: i32 = -11;
    pub const ERROR: i32 = -1;
}

/// One change of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Create {
        path: String,
        data: Vec<u8>,
        ephemeral: bool,
    },
    Delete {
        path: String,
    },
    SetData {
        path: String,
        data: Vec<u8>,
    },
    /// A version check (a multi's fence).
    Check {
        path: String,
    },
    SetAcl {
        path: String,
    },
    CreateSession,
    /// The session ends (closed or expired): its ephemeral znodes go.
    CloseSession,
    /// An operation of a multi that failed (the multi changed nothing).
    Error(i32),
    Other(i32),
}

/// One committed transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txn {
    pub zxid: i64,
    /// The session that made it (for a closeSession, the session that ended).
    pub session: i64,
    /// The leader's clock when it was proposed, Unix milliseconds.
    pub time_ms: i64,
    /// A multi's operations, or the one operation.
    pub ops: Vec<Op>,
    pub multi: bool,
}

/// A cursor over jute's binary encoding.
struct Jute<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Jute<'a> {
    fn new(buf: &'a [u8]) -> Jute<'a> {
        Jute { buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end =
            end.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "short record"))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn i32(&mut self) -> io::Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn i64(&mut self) -> io::Result<i64> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn bool(&mut self) -> io::Result<bool> {
        Ok(self.take(1)?[0] != 0)
    }

    fn buffer(&mut self) -> io::Result<&'a [u8]> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(&[]);
        }
        self.take(len as usize)
    }

    fn string(&mut self) -> io::Result<String> {
        Ok(String::from_utf8_lossy(self.buffer()?).into_owned())
    }

    fn acls(&mut self) -> io::Result<()> {
        let n = self.i32()?;
        for _ in 0..n.max(0) {
            self.i32()?; // perms
            self.string()?; // scheme
            self.string()?; // id
        }
        Ok(())
    }
}

/// Decodes the record of one operation of type `kind`.
fn decode_op(kind: i32, record: &[u8]) -> io::Result<Op> {
    let mut r = Jute::new(record);
    Ok(match kind {
        op::CREATE | op::CREATE2 => {
            let path = r.string()?;
            let data = r.buffer()?.to_vec();
            r.acls()?;
            let ephemeral = r.bool()?;
            Op::Create {
                path,
                data,
                ephemeral,
            }
        }
        op::CREATE_CONTAINER | op::CREATE_TTL => Op::Create {
            path: r.string()?,
            data: r.buffer()?.to_vec(),
            ephemeral: false,
        },
        op::DELETE | op::DELETE_CONTAINER => Op::Delete { path: r.string()? },
        op::SET_DATA => Op::SetData {
            path: r.string()?,
            data: r.buffer()?.to_vec(),
        },
        op::CHECK => Op::Check { path: r.string()? },
        op::SET_ACL => Op::SetAcl { path: r.string()? },
        op::CREATE_SESSION => Op::CreateSession,
        op::CLOSE_SESSION => Op::CloseSession,
        op::ERROR => Op::Error(r.i32().unwrap_or(0)),
        other => Op::Other(other),
    })
}

/// Decodes one logged transaction: the header, then the record (a digest may follow; it is
/// ignored).
fn decode_txn(bytes: &[u8]) -> io::Result<Txn> {
    let mut r = Jute::new(bytes);
    let session = r.i64()?;
    let _cxid = r.i32()?;
    let zxid = r.i64()?;
    let time_ms = r.i64()?;
    let kind = r.i32()?;
    let rest = &bytes[r.at..];
    if kind == op::MULTI {
        let mut m = Jute::new(rest);
        let n = m.i32()?;
        let mut ops = Vec::new();
        for _ in 0..n.max(0) {
            let sub = m.i32()?;
            let record = m.buffer()?;
            ops.push(decode_op(sub, record)?);
        }
        return Ok(Txn {
            zxid,
            session,
            time_ms,
            ops,
            multi: true,
        });
    }
    Ok(Txn {
        zxid,
        session,
        time_ms,
        ops: vec![decode_op(kind, rest)?],
        multi: false,
    })
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in bytes.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// The transactions of one log file, up to its end or its first incomplete entry (a
/// server killed while writing; the preallocated zeros after the last entry). Read as a
/// stream: a log file is preallocated to 64 MiB, most of it zeros.
pub fn read_log_file(path: &Path) -> io::Result<Vec<Txn>> {
    let mut file = io::BufReader::new(fs::File::open(path)?);
    let mut header = [0u8; 16];
    file.read_exact(&mut header)?;
    if header[..4] != *b"ZKLG" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a transaction log", path.display()),
        ));
    }
    let mut txns = Vec::new();
    loop {
        let mut head = [0u8; 12];
        if file.read_exact(&mut head).is_err() {
            break;
        }
        let crc = i64::from_be_bytes(head[..8].try_into().unwrap());
        let len = i32::from_be_bytes(head[8..].try_into().unwrap());
        if len <= 0 {
            break;
        }
        let mut entry = vec![0u8; len as usize];
        let mut eor = [0u8; 1];
        if file.read_exact(&mut entry).is_err()
            || file.read_exact(&mut eor).is_err()
            || i64::from(adler32(&entry)) != crc
            || eor[0] != b'B'
        {
            break;
        }
        txns.push(decode_txn(&entry)?);
    }
    Ok(txns)
}

/// The committed transactions in the logs of the servers whose data directories are
/// `data_dirs` (each holding `version-2/`), in zxid order. See
/// [`read_ensemble_described`].
pub fn read_ensemble(data_dirs: &[&Path]) -> Vec<Txn> {
    read_ensemble_described(data_dirs).0
}

/// The committed transactions of the ensemble whose servers' data directories are
/// `data_dirs`, in zxid order, and what each log file held, for a person.
///
/// A server's log is not its committed history: a leader frozen past its followers'
/// patience logs proposals no one acknowledges (typically closing every session, whose
/// pings it missed), and when it comes back in a later epoch the new leader cannot send
/// it a TRUNC ("peer zxid is from different epoch"): it sends a snapshot, and the log
/// keeps those proposals, with what follows appended after them. So a transaction counts
/// as committed when a majority of the servers logged it: Zab commits a proposal once a
/// quorum has logged it, every elected leader's history holds it, TRUNC removes only what
/// no quorum holds, and nothing here deletes log files. Panics when a zxid is missing
/// between two committed ones of its epoch (the history would be incomplete).
pub fn read_ensemble_described(data_dirs: &[&Path]) -> (Vec<Txn>, String) {
    let mut described = String::new();
    // zxid → each version logged, and by how many servers.
    let mut logged: BTreeMap<i64, Vec<(Txn, usize)>> = BTreeMap::new();
    for dir in data_dirs {
        let logs = dir.join("version-2");
        let Ok(entries) = fs::read_dir(&logs) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("log."))
            })
            .collect();
        files.sort();
        // One vote per server, whatever its files repeat.
        let mut server: BTreeMap<i64, Txn> = BTreeMap::new();
        for file in files {
            let txns = read_log_file(&file)
                .unwrap_or_else(|e| panic!("zklog: cannot read {}: {e}", file.display()));
            described.push_str(&format!(
                "{}: {} transactions, {} to {}\n",
                file.display(),
                txns.len(),
                txns.first()
                    .map_or("-".into(), |t| format!("{:#x}", t.zxid)),
                txns.last().map_or("-".into(), |t| format!("{:#x}", t.zxid))
            ));
            for txn in txns {
                server.insert(txn.zxid, txn);
            }
        }
        for (zxid, txn) in server {
            let versions = logged.entry(zxid).or_default();
            match versions.iter_mut().find(|(v, _)| *v == txn) {
                Some((_, votes)) => *votes += 1,
                None => versions.push((txn, 1)),
            }
        }
    }
    let majority = data_dirs.len() / 2 + 1;
    let mut committed: BTreeMap<i64, Txn> = BTreeMap::new();
    let mut dropped = Vec::new();
    for (zxid, versions) in logged {
        let mut found = false;
        for (txn, votes) in versions {
            if votes >= majority && !found {
                committed.insert(zxid, txn);
                found = true;
            } else {
                dropped.push(format!("{zxid:#x} (logged by {votes})"));
            }
        }
    }
    if !dropped.is_empty() {
        described.push_str(&format!(
            "not committed (logged by fewer than {majority} servers): {}\n",
            dropped.join(", ")
        ));
    }
    // Within an epoch (the high 32 bits) the counters run 1, 2, 3, ...
    let mut last: Option<i64> = None;
    for &zxid in committed.keys() {
        if let Some(prev) = last
            && prev >> 32 == zxid >> 32
        {
            assert_eq!(
                zxid,
                prev + 1,
                "zklog: the logs lack the transactions between {prev:#x} and {zxid:#x}\n{described}"
            );
        }
        last = Some(zxid);
    }
    (committed.into_values().collect(), described)
}

/// One controller's time as leader, in ZooKeeper's order.
#[derive(Clone, Debug)]
pub struct Leadership {
    /// The epoch: the zxid that created its election znode.
    pub epoch: i64,
    /// Its identity (the data of the election znode).
    pub identity: String,
    pub session: i64,
    /// The zxid from which it led (its znode became the earliest), and until which (its
    /// znode went); `None` while it still leads.
    pub from: i64,
    pub until: Option<i64>,
    /// The same, on the leader's clock (Unix milliseconds).
    pub from_ms: i64,
    pub until_ms: Option<i64>,
}

/// What [`audit_leases`] found.
#[derive(Clone, Debug, Default)]
pub struct LeaseAudit {
    /// Every leadership, in order.
    pub leaders: Vec<Leadership>,
    /// Lease creates, sets and deletes committed.
    pub lease_writes: usize,
    /// Of those, in a multi that first checked the leader's election znode.
    pub fenced: usize,
    /// Multis of a controller's session that the servers refused (nothing written): each a
    /// write its fence stopped, or a stale cache of what exists.
    pub refused: usize,
    /// Lease writes that break the rule: by another session than the leader's, with an
    /// epoch other than the leader's, or while nobody led.
    pub violations: Vec<String>,
    /// Other writes below the chroot by a controller's session while it did not lead
    /// (`/status`, a node's remembered registration, provisioning): not leases, reported
    /// for a person.
    pub stale_other_writes: Vec<String>,
}

/// A candidate's znode below `/leader`, alive.
#[derive(Clone, Debug)]
struct Candidate {
    path: String,
    epoch: i64,
    session: i64,
    identity: String,
}

/// Replays `txns` (all of them, in zxid order) under `chroot` (`/corral`): the election,
/// as corral defines it (the earliest created `c-` znode below `<chroot>/leader` leads, its
/// epoch being its creation zxid), and every write of a lease (`<chroot>/leases/<node>/
/// <key>`). A lease write is right when the leader at that zxid made it, in its session,
/// and a lease it creates or sets carries that leader's epoch. Anything else is a
/// violation: a write by a deposed controller, or by anybody else.
pub fn audit_leases(txns: &[Txn], chroot: &str) -> LeaseAudit {
    let leader_dir = format!("{chroot}/leader/");
    let leases_dir = format!("{chroot}/leases/");
    let mut alive: BTreeMap<i64, Candidate> = BTreeMap::new();
    let mut controller_sessions: BTreeSet<i64> = BTreeSet::new();
    let mut audit = LeaseAudit::default();
    let is_lease = |path: &str| {
        path.strip_prefix(&leases_dir)
            .is_some_and(|rest| rest.split('/').count() == 2)
    };
    for txn in txns {
        let leader = alive.values().next().cloned();
        let leader_says = |leader: &Option<Candidate>| {
            leader.as_ref().map_or("nobody led".to_string(), |l| {
                format!("{} led with epoch {:#x}", l.identity, l.epoch)
            })
        };
        let who = |session: i64| {
            let names: Vec<&str> = audit
                .leaders
                .iter()
                .filter(|l| l.session == session)
                .map(|l| l.identity.as_str())
                .collect();
            format!("session {session:#x} {names:?}")
        };
        if txn.multi
            && txn.ops.iter().all(|o| matches!(o, Op::Error(_)))
            && controller_sessions.contains(&txn.session)
        {
            audit.refused += 1;
        }
        let fence_checked = leader.as_ref().is_some_and(|l| {
            txn.ops
                .first()
                .is_some_and(|o| matches!(o, Op::Check { path } if *path == l.path))
        });
        for o in &txn.ops {
            match o {
                Op::Create { path, data, .. } | Op::SetData { path, data } if is_lease(path) => {
                    audit.lease_writes += 1;
                    audit.fenced += usize::from(fence_checked);
                    let epoch = serde_json::from_slice::<serde_json::Value>(data)
                        .ok()
                        .and_then(|v| v["epoch"].as_i64());
                    match &leader {
                        Some(l) if l.session == txn.session && epoch == Some(l.epoch) => {}
                        _ => audit.violations.push(format!(
                            "zxid {:#x}: {path} written with epoch {} by {}, while {}",
                            txn.zxid,
                            epoch.map_or("none".to_string(), |e| format!("{e:#x}")),
                            who(txn.session),
                            leader_says(&leader)
                        )),
                    }
                }
                Op::Delete { path } if is_lease(path) => {
                    audit.lease_writes += 1;
                    audit.fenced += usize::from(fence_checked);
                    if leader.as_ref().is_none_or(|l| l.session != txn.session) {
                        audit.violations.push(format!(
                            "zxid {:#x}: {path} deleted by {}, while {}",
                            txn.zxid,
                            who(txn.session),
                            leader_says(&leader)
                        ));
                    }
                }
                Op::Create {
                    path,
                    data,
                    ephemeral: true,
                } if path
                    .strip_prefix(&leader_dir)
                    .is_some_and(|name| name.starts_with("c-")) =>
                {
                    controller_sessions.insert(txn.session);
                    alive.insert(
                        txn.zxid,
                        Candidate {
                            path: path.clone(),
                            epoch: txn.zxid,
                            session: txn.session,
                            identity: String::from_utf8_lossy(data).into_owned(),
                        },
                    );
                }
                Op::Delete { path } if path.starts_with(&leader_dir) => {
                    alive.retain(|_, c| c.path != *path);
                }
                Op::CloseSession => {
                    alive.retain(|_, c| c.session != txn.session);
                }
                Op::Create { path, .. } | Op::SetData { path, .. } | Op::Delete { path }
                    if path.starts_with(&format!("{chroot}/"))
                        && controller_sessions.contains(&txn.session)
                        && leader.as_ref().is_none_or(|l| l.session != txn.session)
                        && !path.starts_with(&leader_dir) =>
                {
                    audit.stale_other_writes.push(format!(
                        "zxid {:#x}: {path} written by {}, while {}",
                        txn.zxid,
                        who(txn.session),
                        leader_says(&leader)
                    ));
                }
                _ => {}
            }
        }
        // Who leads after this transaction.
        let now = alive.values().next().cloned();
        let changed = match (&leader, &now) {
            (Some(a), Some(b)) => a.epoch != b.epoch,
            (None, None) => false,
            _ => true,
        };
        if changed {
            if let Some(last) = audit.leaders.last_mut()
                && last.until.is_none()
            {
                last.until = Some(txn.zxid);
                last.until_ms = Some(txn.time_ms);
            }
            if let Some(l) = now {
                audit.leaders.push(Leadership {
                    epoch: l.epoch,
                    identity: l.identity,
                    session: l.session,
                    from: txn.zxid,
                    until: None,
                    from_ms: txn.time_ms,
                    until_ms: None,
                });
            }
        }
    }
    audit
}
