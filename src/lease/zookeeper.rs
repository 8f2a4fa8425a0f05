//! The lease store in ZooKeeper, through zookeeper-client.
//!
//! ```text
//! <chroot>/nodes/<node>          ephemeral   registration (capacity, labels, cgroup mode)
//! <chroot>/leader/c-<seq>        ephemeral sequential: election; epoch = its czxid
//! <chroot>/leases/<node>/<key>   persistent  allocation of one replica
//! <chroot>/reports/<node>/<key>  persistent  the agent's applied values and observed use
//! ```
//!
//! Guarantees:
//! - every lease write is one `multi` (or one per 500 operations) that first checks the
//!   writer's own election node, so a deposed or paused controller cannot write (fencing);
//! - every call has a timeout; none blocks for ever on a lost ensemble;
//! - an expired session is final in zookeeper-client: the store builds a new client,
//!   registers the node again and restores its watches, and says so to subscribers;
//! - with credentials, every znode corral creates is writable only by the same digest
//!   identity (readable by anyone); credentials never appear in logs or errors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use zookeeper_client::{
    Acl, AddWatchMode, AuthId, Client, CreateMode, Error as ZkError, MultiWriteError, Permission,
    SessionState, TlsOptions,
};

use super::{FORMAT_VERSION, Lease, LeaseChange, LeaseStore, NodeRegistration, Report, StoreError};
use crate::alloc::ReplicaKey;

/// Most operations in one `multi`; ZooKeeper refuses requests over 1 MiB.
const MULTI_BATCH: usize = 500;

/// A digest identity, `user:password`. Debug and Display never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}:***)", self.user)
    }
}

impl Credentials {
    /// Parses `user:password`.
    ///
    /// # Errors
    /// There is no `:` or either part is empty; the message never includes the text.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let text = text.trim();
        match text.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(Credentials {
                user: user.to_string(),
                password: password.to_string(),
            }),
            _ => Err("ZooKeeper credentials must be user:password".to_string()),
        }
    }

    /// The user's name.
    pub fn user(&self) -> &str {
        &self.user
    }
}

/// TLS to ZooKeeper: the CA to trust, and an optional client identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA certificates.
    pub ca: PathBuf,
    /// PEM certificate and key of this client, for servers that require one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// How to reach ZooKeeper.
#[derive(Clone, Debug)]
pub struct ZkConfig {
    /// `host:port,host:port,...`.
    pub hosts: String,
    /// The znode under which everything lives, e.g. `/corral`.
    pub chroot: String,
    /// The session timeout; a frozen ensemble leader here took about 10 s to be replaced.
    pub session_timeout: Duration,
    /// The longest any single call may take.
    pub operation_timeout: Duration,
    /// Digest credentials, if any.
    pub credentials: Option<Credentials>,
    /// TLS, if configured.
    pub tls: Option<TlsFiles>,
}

impl ZkConfig {
    /// Defaults for `hosts`: chroot `/corral`, a 15 s session, 10 s per call, no auth, no TLS.
    pub fn new(hosts: &str) -> ZkConfig {
        ZkConfig {
            hosts: hosts.to_string(),
            chroot: "/corral".to_string(),
            session_timeout: Duration::from_secs(15),
            operation_timeout: Duration::from_secs(10),
            credentials: None,
            tls: None,
        }
    }
}

/// The session as subscribers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Session {
    /// Connected: writes go through.
    Connected,
    /// Disconnected: the session may be lost; do not write, keep enforcing.
    Disconnected,
    /// Expired: a new session is being built; leadership and ephemerals are gone.
    Expired,
}

/// The lease store in ZooKeeper.
pub struct ZkStore {
    config: ZkConfig,
    client: RwLock<Client>,
    /// The node this process registered, registered again after an expiry.
    registration: Mutex<Option<NodeRegistration>>,
    /// This controller's election node and epoch, while it leads.
    leadership: Mutex<Option<(String, i64)>>,
    /// Paths watched recursively, each with the counter bumped on every event below it.
    watches: Mutex<Vec<Watched>>,
    session: watch::Sender<Session>,
    /// Lease znodes known to exist, so a put is a set rather than a create.
    known_leases: Mutex<BTreeSet<String>>,
    /// The task that follows the session, stopped with the store.
    keeper: Mutex<Option<tokio::task::AbortHandle>>,
}

impl fmt::Debug for ZkStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkStore")
            .field("hosts", &self.config.hosts)
            .field("chroot", &self.config.chroot)
            .finish_non_exhaustive()
    }
}

/// One recursive watch: the counter its events bump, and the task that follows it.
struct Watched {
    path: String,
    counter: watch::Sender<u64>,
    task: tokio::task::AbortHandle,
}

impl Drop for ZkStore {
    fn drop(&mut self) {
        if let Ok(Some(keeper)) = self.keeper.lock().map(|mut k| k.take()) {
            keeper.abort();
        }
        if let Ok(watches) = self.watches.lock() {
            for watched in watches.iter() {
                watched.task.abort();
            }
        }
    }
}

fn zk(op: &'static str, path: &str) -> impl FnOnce(ZkError) -> StoreError {
    let path = path.to_string();
    move |source| StoreError::Zk { op, path, source }
}

impl ZkStore {
    /// Connects, creates corral's base znodes, and starts watching the session.
    ///
    /// # Errors
    /// The ensemble cannot be reached within the operation timeout, refuses the
    /// credentials, or the TLS files cannot be read.
    pub async fn connect(config: ZkConfig) -> Result<Arc<ZkStore>, StoreError> {
        let client = Self::new_client(&config).await?;
        let store = Arc::new(ZkStore {
            client: RwLock::new(client),
            registration: Mutex::new(None),
            leadership: Mutex::new(None),
            watches: Mutex::new(Vec::new()),
            session: watch::Sender::new(Session::Connected),
            known_leases: Mutex::new(BTreeSet::new()),
            keeper: Mutex::new(None),
            config,
        });
        for dir in ["/nodes", "/leader", "/leases", "/reports"] {
            store.mkdir(dir).await?;
        }
        let keeper = tokio::spawn(Self::keep_session(Arc::downgrade(&store)));
        if let Ok(mut slot) = store.keeper.lock() {
            *slot = Some(keeper.abort_handle());
        }
        Ok(store)
    }

    async fn new_client(config: &ZkConfig) -> Result<Client, StoreError> {
        let mut connector = Client::connector()
            .with_session_timeout(config.session_timeout)
            .with_connection_timeout(config.operation_timeout);
        if let Some(creds) = &config.credentials {
            connector = connector.with_auth(
                "digest",
                format!("{}:{}", creds.user, creds.password).as_bytes(),
            );
        }
        if let Some(tls) = &config.tls {
            connector = connector.with_tls(Self::tls_options(tls)?);
        }
        let connect = async {
            let root = if config.tls.is_some() {
                connector.secure_connect(&config.hosts).await
            } else {
                connector.connect(&config.hosts).await
            }
            .map_err(zk("connect to", &config.hosts))?;
            // Make the chroot itself, then work below it.
            let acl = Self::acl_for(config.credentials.is_some());
            let options = CreateMode::Persistent.with_acls(acl.as_slice().into());
            let mut path = String::new();
            for part in config.chroot.split('/').filter(|p| !p.is_empty()) {
                path.push('/');
                path.push_str(part);
                if root
                    .check_stat(&path)
                    .await
                    .map_err(zk("stat", &path))?
                    .is_some()
                {
                    continue;
                }
                match root.create(&path, b"", &options).await {
                    Ok(_) | Err(ZkError::NodeExists) => {}
                    Err(e) => return Err(zk("create", &path)(e)),
                }
            }
            root.chroot(config.chroot.clone()).map_err(|_| {
                StoreError::Unavailable(format!("chroot {:?} is not a znode path", config.chroot))
            })
        };
        tokio::time::timeout(config.operation_timeout, connect)
            .await
            .map_err(|_| match &config.tls {
                // zookeeper-client retries a refused handshake until the deadline and
                // says why only in its debug log: name the likely causes.
                Some(_) => StoreError::Unavailable(format!(
                    "connect to {} over TLS: no answer from ZooKeeper in {:?}; besides an \
                     unreachable server, a refused handshake looks like this: check that \
                     --zookeeper-tls-ca signed the server's certificate, that the server \
                     accepts --zookeeper-tls-cert, and that the port is the secure one",
                    config.hosts, config.operation_timeout
                )),
                None => StoreError::Timeout {
                    op: "connect to",
                    path: config.hosts.clone(),
                },
            })?
    }

    fn tls_options(tls: &TlsFiles) -> Result<TlsOptions, StoreError> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| StoreError::Io {
                op: "read",
                path: path.clone(),
                source,
            })
        };
        let bad = |path: &PathBuf, e: ZkError| StoreError::Corrupt {
            path: path.clone(),
            message: format!("not usable for TLS: {e}"),
        };
        let mut options = TlsOptions::default()
            .with_pem_ca(&read(&tls.ca)?)
            .map_err(|e| bad(&tls.ca, e))?;
        if let Some((cert, key)) = &tls.identity {
            options = options
                .with_pem_identity(&read(cert)?, &read(key)?)
                .map_err(|e| bad(cert, e))?;
        }
        Ok(options)
    }

    /// With credentials, full rights for the authenticated identity that created a znode and
    /// reading for everyone; without, anyone may do anything (say so in the logs).
    fn acl_for(authenticated: bool) -> Vec<Acl> {
        if authenticated {
            vec![
                Acl::new(Permission::ALL, AuthId::authed()),
                Acl::new(Permission::READ, AuthId::anyone()),
            ]
        } else {
            vec![Acl::new(Permission::ALL, AuthId::anyone())]
        }
    }

    fn client(&self) -> Client {
        self.client
            .read()
            .map_or_else(|p| p.into_inner().clone(), |c| c.clone())
    }

    fn acl(&self) -> Vec<Acl> {
        Self::acl_for(self.config.credentials.is_some())
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        path: &str,
        fut: impl Future<Output = Result<T, ZkError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.config.operation_timeout, fut).await {
            Ok(result) => result.map_err(zk(op, path)),
            Err(_) => Err(StoreError::Timeout {
                op,
                path: path.to_string(),
            }),
        }
    }

    /// Creates `path` unless it exists. Looks first: a reader without the right to create
    /// may still use what exists.
    async fn mkdir(&self, path: &str) -> Result<(), StoreError> {
        let client = self.client();
        if self
            .timed("stat", path, client.check_stat(path))
            .await?
            .is_some()
        {
            return Ok(());
        }
        let acl = self.acl();
        let options = CreateMode::Persistent.with_acls(acl.as_slice().into());
        match self
            .timed("create", path, client.create(path, b"", &options))
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::Zk {
                source: ZkError::NodeExists,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The session's state, as it changes.
    pub fn session(&self) -> watch::Receiver<Session> {
        self.session.subscribe()
    }

    /// The current ZooKeeper session's id: it changes when an expired session is rebuilt.
    pub fn session_id(&self) -> i64 {
        self.client().session_id().0
    }

    /// A counter bumped on every change below `path` (`/leases/<node>`, `/nodes`), and once
    /// after a new session, when everything must be read again. The watch is restored after
    /// a session expiry.
    ///
    /// # Errors
    /// The watch could not be set.
    pub async fn subscribe(&self, path: &str) -> Result<watch::Receiver<u64>, StoreError> {
        self.mkdir(path).await?;
        let counter = watch::Sender::new(0);
        let receiver = counter.subscribe();
        let task = self.start_watch(path, counter.clone()).await?;
        if let Ok(mut watches) = self.watches.lock() {
            watches.push(Watched {
                path: path.to_string(),
                counter,
                task,
            });
        }
        Ok(receiver)
    }

    async fn start_watch(
        &self,
        path: &str,
        counter: watch::Sender<u64>,
    ) -> Result<tokio::task::AbortHandle, StoreError> {
        let client = self.client();
        let mut watcher = self
            .timed(
                "watch",
                path,
                client.watch(path, AddWatchMode::PersistentRecursive),
            )
            .await?;
        let task = tokio::spawn(async move {
            loop {
                let event = watcher.changed().await;
                counter.send_modify(|n| *n += 1);
                if event.session_state.is_terminated() {
                    return;
                }
            }
        });
        Ok(task.abort_handle())
    }

    /// Sets every recursive watch again and bumps its counter, since events that happened
    /// while the watch was not set are lost. Needed after an expiry (a new client), and
    /// after a reconnect within the session: ZooKeeper does not replay missed events to
    /// persistent watches, and zookeeper-client 0.11.2 does not even send them again on
    /// reconnect (its `resend_watches` drops the persistent ones).
    ///
    /// The new watcher is set before the old one is dropped, so the client never asks the
    /// server to remove the path's watch.
    async fn restore_watches(&self) {
        let paths: Vec<(String, watch::Sender<u64>)> = self
            .watches
            .lock()
            .map(|w| {
                w.iter()
                    .map(|w| (w.path.clone(), w.counter.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (path, counter) in paths {
            match self.start_watch(&path, counter.clone()).await {
                Ok(task) => {
                    if let Ok(mut watches) = self.watches.lock()
                        && let Some(watched) = watches.iter_mut().find(|w| w.path == path)
                    {
                        std::mem::replace(&mut watched.task, task).abort();
                    }
                }
                Err(e) => tracing::warn!(error = %e, %path, "cannot watch again"),
            }
            counter.send_modify(|n| *n += 1);
        }
    }

    /// Follows the session: publishes its state, and after an expiry builds a new client,
    /// registers the node again and restores the watches.
    async fn keep_session(store: std::sync::Weak<ZkStore>) {
        // One state watcher per client: a watcher made later marks the current state as
        // seen, and would miss a change made in between, even the final one.
        let Some(mut states) = store.upgrade().map(|s| s.client().state_watcher()) else {
            return;
        };
        let mut next: Option<SessionState> = None;
        loop {
            let state = match next.take() {
                Some(state) => state,
                None => states.changed().await,
            };
            let Some(strong) = store.upgrade() else {
                return;
            };
            match state {
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                    if *strong.session.borrow() == Session::Disconnected {
                        tracing::info!("ZooKeeper reconnected within the session");
                        strong.restore_watches().await;
                    }
                    strong.session.send_replace(Session::Connected);
                }
                SessionState::Disconnected => {
                    tracing::warn!(
                        "ZooKeeper disconnected: the session may be lost; not writing, still enforcing"
                    );
                    strong.session.send_replace(Session::Disconnected);
                }
                SessionState::Expired | SessionState::AuthFailed | SessionState::Closed => {
                    tracing::warn!(?state, "ZooKeeper session ended; building a new one");
                    strong.session.send_replace(Session::Expired);
                    if let Ok(mut leadership) = strong.leadership.lock() {
                        *leadership = None;
                    }
                    strong.rebuild().await;
                    states = strong.client().state_watcher();
                    // The new client may have lost its connection, or its session, already.
                    let now = states.peek_state();
                    if now != SessionState::SyncConnected {
                        next = Some(now);
                    }
                }
            }
        }
    }

    async fn rebuild(&self) {
        let mut delay = Duration::from_millis(200);
        loop {
            match Self::new_client(&self.config).await {
                Ok(client) => {
                    if let Ok(mut current) = self.client.write() {
                        *current = client;
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach ZooKeeper yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        let registration = self.registration.lock().ok().and_then(|r| r.clone());
        if let Some(node) = registration
            && let Err(e) = self.register_node(&node).await
        {
            tracing::warn!(error = %e, node = %node.name, "cannot register the node again");
        }
        self.restore_watches().await;
        if let Ok(mut known) = self.known_leases.lock() {
            known.clear();
        }
        self.session.send_replace(Session::Connected);
        tracing::info!("ZooKeeper session rebuilt");
    }

    /// Runs for leadership among controllers: an ephemeral sequential znode under
    /// `/leader`; the lowest leads, and each other candidate watches only the one just below
    /// it (no herd when the leader goes). Returns once this process leads, with its epoch
    /// (the czxid of its znode: higher for every later leader).
    ///
    /// # Errors
    /// The session ended or ZooKeeper cannot be reached; run again once it can.
    pub async fn campaign(&self, identity: &str) -> Result<i64, StoreError> {
        let client = self.client();
        let acl = self.acl();
        let options = CreateMode::EphemeralSequential.with_acls(acl.as_slice().into());
        let (stat, sequence) = self
            .timed(
                "create",
                "/leader/c-",
                client.create("/leader/c-", identity.as_bytes(), &options),
            )
            .await?;
        let own = format!("c-{sequence}");
        loop {
            let mut candidates = self
                .timed("list", "/leader", client.list_children("/leader"))
                .await?;
            candidates.sort_by_key(|c| sequence_of(c));
            let Some(position) = candidates.iter().position(|c| *c == own) else {
                return Err(StoreError::Unavailable(format!(
                    "election znode /leader/{own} is gone: the session ended"
                )));
            };
            if position == 0 {
                if let Ok(mut leadership) = self.leadership.lock() {
                    *leadership = Some((format!("/leader/{own}"), stat.czxid));
                }
                return Ok(stat.czxid);
            }
            let predecessor = format!("/leader/{}", candidates[position - 1]);
            let watched = self
                .timed(
                    "watch",
                    &predecessor,
                    client.check_and_watch_stat(&predecessor),
                )
                .await?;
            if let (Some(_), watcher) = watched {
                // Wait for the predecessor to go (or the session to end); no timeout here:
                // waiting for leadership is not a call that may hang.
                let event = watcher.changed().await;
                if event.session_state.is_terminated() {
                    return Err(StoreError::Unavailable(
                        "the session ended while waiting to lead".into(),
                    ));
                }
            }
        }
    }

    /// The epoch this process leads with, if it leads.
    pub fn epoch(&self) -> Option<i64> {
        self.leadership
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(|(_, epoch)| *epoch))
    }

    /// Gives up leadership: deletes the election znode so that the next candidate leads now,
    /// not after the session times out.
    ///
    /// # Errors
    /// The znode could not be deleted.
    pub async fn resign(&self) -> Result<(), StoreError> {
        let own = self.leadership.lock().ok().and_then(|mut l| l.take());
        if let Some((path, _)) = own {
            let client = self.client();
            match self
                .timed("delete", &path, client.delete(&path, None))
                .await
            {
                Ok(())
                | Err(StoreError::Zk {
                    source: ZkError::NoNode,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Keeps `node`'s registration as the data of its persistent `/leases/<node>`, so that a
    /// later leader knows the capacity and labels of a node that is down when it takes over.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer.
    pub async fn remember_node(&self, node: &NodeRegistration) -> Result<(), StoreError> {
        let path = format!("/leases/{}", node.name);
        self.mkdir(&path).await?;
        let client = self.client();
        let data = encode(node);
        let (current, _) = self.timed("read", &path, client.get_data(&path)).await?;
        if current != data {
            self.timed("set", &path, client.set_data(&path, &data, None))
                .await?;
        }
        Ok(())
    }

    /// The remembered registrations of the nodes that still hold leases.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer.
    pub async fn remembered_nodes(&self) -> Result<Vec<NodeRegistration>, StoreError> {
        let client = self.client();
        let mut out = Vec::new();
        for node in self
            .timed("list", "/leases", client.list_children("/leases"))
            .await?
        {
            let path = format!("/leases/{node}");
            match self.timed("read", &path, client.get_data(&path)).await {
                Ok((data, stat)) if stat.num_children > 0 && !data.is_empty() => {
                    out.push(decode(&path, &data)?)
                }
                Ok(_)
                | Err(StoreError::Zk {
                    source: ZkError::NoNode,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Writes the controller's summary (pending replicas, lost nodes) to `/status`.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer.
    pub async fn write_status(&self, data: &[u8]) -> Result<(), StoreError> {
        self.mkdir("/status").await?;
        let client = self.client();
        self.timed("set", "/status", client.set_data("/status", data, None))
            .await?;
        Ok(())
    }

    /// The controller's summary, if one was written.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer.
    pub async fn read_status(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client();
        match self
            .timed("read", "/status", client.get_data("/status"))
            .await
        {
            Ok((data, _)) if !data.is_empty() => Ok(Some(data)),
            Ok(_)
            | Err(StoreError::Zk {
                source: ZkError::NoNode,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads the data of `paths`, several per round trip; a znode gone meanwhile is skipped.
    async fn read_all(&self, paths: &[String]) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let client = self.client();
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(MULTI_BATCH) {
            let mut reader = client.new_multi_reader();
            for path in chunk {
                reader.add_get_data(path).map_err(zk("read", path))?;
            }
            let results = self.timed("read", &chunk[0], reader.commit()).await?;
            for (path, result) in chunk.iter().zip(results) {
                if let zookeeper_client::MultiReadResult::Data { data, .. } = result {
                    out.push((path.clone(), data));
                }
            }
        }
        Ok(out)
    }

    /// Every `<dir>/<node>/<key>` below `dir`, as paths.
    async fn two_levels(&self, dir: &str, only: Option<&str>) -> Result<Vec<String>, StoreError> {
        let client = self.client();
        let nodes = match only {
            Some(node) => vec![node.to_string()],
            None => self.timed("list", dir, client.list_children(dir)).await?,
        };
        let mut paths = Vec::new();
        for node in nodes {
            let parent = format!("{dir}/{node}");
            match self
                .timed("list", &parent, client.list_children(&parent))
                .await
            {
                Ok(keys) => paths.extend(keys.into_iter().map(|k| format!("{parent}/{k}"))),
                Err(StoreError::Zk {
                    source: ZkError::NoNode,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        paths.sort();
        Ok(paths)
    }

    async fn read_leases(&self, only: Option<&str>) -> Result<Vec<Lease>, StoreError> {
        let paths = self.two_levels("/leases", only).await?;
        let mut leases = Vec::with_capacity(paths.len());
        for (path, data) in self.read_all(&paths).await? {
            leases.push(decode(&path, &data)?);
        }
        if let Ok(mut known) = self.known_leases.lock() {
            known.extend(paths);
        }
        Ok(leases)
    }

    /// Commits `ops` in batches, each first checking `fence` (this controller's election
    /// znode) when given.
    /// Creates the nodes' lease directories, unless known to exist: a write of one lease
    /// then costs one round trip, not two. Known directories sit in `known_leases` too.
    async fn ensure_node_dirs(&self, dirs: &[String]) -> Result<(), StoreError> {
        for dir in dirs {
            let known = self
                .known_leases
                .lock()
                .is_ok_and(|known| known.contains(dir));
            if !known {
                self.mkdir(dir).await?;
                if let Ok(mut known) = self.known_leases.lock() {
                    known.insert(dir.clone());
                }
            }
        }
        Ok(())
    }

    async fn commit(&self, fence: Option<&str>, ops: &[WriteOp]) -> Result<(), StoreError> {
        let client = self.client();
        for chunk in ops.chunks(MULTI_BATCH) {
            let mut writer = client.new_multi_writer();
            if let Some(fence) = fence {
                writer
                    .add_check_version(fence, 0)
                    .map_err(zk("check", fence))?;
            }
            let acl = self.acl();
            let options = CreateMode::Persistent.with_acls(acl.as_slice().into());
            for op in chunk {
                match op {
                    WriteOp::Create(path, data) => writer.add_create(path, data, &options),
                    WriteOp::Set(path, data) => writer.add_set_data(path, data, None),
                    WriteOp::Delete(path) => writer.add_delete(path, None),
                }
                .map_err(zk("batch", op.path()))?;
            }
            match tokio::time::timeout(self.config.operation_timeout, writer.commit()).await {
                Err(_) => {
                    return Err(StoreError::Timeout {
                        op: "write",
                        path: chunk[0].path().to_string(),
                    });
                }
                Ok(Ok(_)) => {}
                Ok(Err(MultiWriteError::OperationFailed { index, source })) => {
                    let fenced = fence.is_some() && index == 0;
                    if fenced && matches!(source, ZkError::NoNode | ZkError::BadVersion) {
                        return Err(StoreError::Fenced {
                            ours: self.epoch().unwrap_or(-1),
                        });
                    }
                    let at = index - usize::from(fence.is_some());
                    let path = chunk.get(at).map_or("", |op| op.path());
                    return Err(zk("write", path)(source));
                }
                Ok(Err(MultiWriteError::RequestFailed { source })) => {
                    if fence.is_some() && matches!(source, ZkError::SessionExpired) {
                        return Err(StoreError::Fenced {
                            ours: self.epoch().unwrap_or(-1),
                        });
                    }
                    return Err(zk("write", chunk[0].path())(source));
                }
            }
        }
        Ok(())
    }
}

/// One write of a batch.
#[derive(Debug)]
enum WriteOp {
    Create(String, Vec<u8>),
    Set(String, Vec<u8>),
    Delete(String),
}

impl WriteOp {
    fn path(&self) -> &str {
        match self {
            WriteOp::Create(p, _) | WriteOp::Set(p, _) | WriteOp::Delete(p) => p,
        }
    }
}

fn sequence_of(name: &str) -> i64 {
    name.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(i64::MAX)
}

fn decode<T: serde::de::DeserializeOwned>(path: &str, data: &[u8]) -> Result<T, StoreError> {
    let value: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| StoreError::Corrupt {
            path: PathBuf::from(path),
            message: e.to_string(),
        })?;
    let version = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if version > u64::from(FORMAT_VERSION) {
        return Err(StoreError::Corrupt {
            path: PathBuf::from(path),
            message: format!(
                "written by a newer corral (format {version}, this one reads {FORMAT_VERSION})"
            ),
        });
    }
    serde_json::from_value(value).map_err(|e| StoreError::Corrupt {
        path: PathBuf::from(path),
        message: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// The znode of a replica's lease or report.
fn znode(dir: &str, node: &str, key: &ReplicaKey) -> String {
    format!("{dir}/{node}/{key}")
}

impl LeaseStore for ZkStore {
    async fn register_node(&self, node: &NodeRegistration) -> Result<(), StoreError> {
        let client = self.client();
        let path = format!("/nodes/{}", node.name);
        let data = encode(node);
        let acl = self.acl();
        let options = CreateMode::Ephemeral.with_acls(acl.as_slice().into());
        if let Ok(mut registration) = self.registration.lock() {
            *registration = Some(node.clone());
        }
        for _ in 0..3 {
            match self
                .timed("create", &path, client.create(&path, &data, &options))
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::Zk {
                    source: ZkError::NodeExists,
                    ..
                }) => {
                    // Ours from this session: refresh it. Left by an earlier session of this
                    // node (a restart before the old session expired): replace it.
                    let stat = self.timed("stat", &path, client.check_stat(&path)).await?;
                    match stat {
                        Some(stat) if stat.ephemeral_owner == client.session_id().0 => {
                            self.timed("set", &path, client.set_data(&path, &data, None))
                                .await?;
                            return Ok(());
                        }
                        Some(_) => match self
                            .timed("delete", &path, client.delete(&path, None))
                            .await
                        {
                            Ok(())
                            | Err(StoreError::Zk {
                                source: ZkError::NoNode,
                                ..
                            }) => {}
                            Err(e) => return Err(e),
                        },
                        None => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable(format!(
            "{path} keeps reappearing: another agent registers the same node name"
        )))
    }

    async fn nodes(&self) -> Result<Vec<NodeRegistration>, StoreError> {
        let client = self.client();
        let mut names = self
            .timed("list", "/nodes", client.list_children("/nodes"))
            .await?;
        names.sort();
        let paths: Vec<String> = names.iter().map(|n| format!("/nodes/{n}")).collect();
        self.read_all(&paths)
            .await?
            .into_iter()
            .map(|(path, data)| decode(&path, &data))
            .collect()
    }

    async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.read_leases(None).await
    }

    async fn node_leases(&self, node: &str) -> Result<Vec<Lease>, StoreError> {
        self.read_leases(Some(node)).await
    }

    async fn write_leases(&self, epoch: i64, changes: &[LeaseChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let fence = match self.leadership.lock().ok().and_then(|l| l.clone()) {
            Some((path, ours)) if ours == epoch => path,
            _ => return Err(StoreError::Fenced { ours: epoch }),
        };
        let nodes: BTreeSet<&str> = changes
            .iter()
            .map(|c| match c {
                LeaseChange::Put(l) => l.node.as_str(),
                LeaseChange::Delete { node, .. } => node.as_str(),
            })
            .collect();
        let node_dirs: Vec<String> = nodes.iter().map(|n| format!("/leases/{n}")).collect();
        self.ensure_node_dirs(&node_dirs).await?;
        let known = self
            .known_leases
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default();
        let ops: Vec<WriteOp> = changes
            .iter()
            .map(|change| match change {
                LeaseChange::Put(lease) => {
                    let path = znode("/leases", &lease.node, &lease.key);
                    if known.contains(&path) {
                        WriteOp::Set(path, encode(lease.as_ref()))
                    } else {
                        WriteOp::Create(path, encode(lease.as_ref()))
                    }
                }
                LeaseChange::Delete { node, key } => WriteOp::Delete(znode("/leases", node, key)),
            })
            .collect();
        let result = self.commit(Some(&fence), &ops).await;
        if let Err(StoreError::Zk {
            source: ZkError::NodeExists | ZkError::NoNode,
            ..
        }) = &result
        {
            // The cache of what exists was stale: read what does, and try once more.
            if let Ok(mut known) = self.known_leases.lock() {
                for dir in &node_dirs {
                    known.remove(dir);
                }
            }
            self.ensure_node_dirs(&node_dirs).await?;
            self.read_leases(None).await?;
            let known = self
                .known_leases
                .lock()
                .map(|k| k.clone())
                .unwrap_or_default();
            let ops: Vec<WriteOp> = ops
                .into_iter()
                .filter_map(|op| match op {
                    WriteOp::Create(path, data) | WriteOp::Set(path, data) => {
                        Some(if known.contains(&path) {
                            WriteOp::Set(path, data)
                        } else {
                            WriteOp::Create(path, data)
                        })
                    }
                    WriteOp::Delete(path) => known.contains(&path).then_some(WriteOp::Delete(path)),
                })
                .collect();
            self.commit(Some(&fence), &ops).await?;
        } else {
            result?;
        }
        if let Ok(mut known) = self.known_leases.lock() {
            for change in changes {
                match change {
                    LeaseChange::Put(l) => known.insert(znode("/leases", &l.node, &l.key)),
                    LeaseChange::Delete { node, key } => known.remove(&znode("/leases", node, key)),
                };
            }
        }
        Ok(())
    }

    async fn reports(&self) -> Result<Vec<Report>, StoreError> {
        let paths = self.two_levels("/reports", None).await?;
        self.read_all(&paths)
            .await?
            .into_iter()
            .map(|(path, data)| decode(&path, &data))
            .collect()
    }

    async fn write_reports(&self, node: &str, reports: &[Report]) -> Result<(), StoreError> {
        let dir = format!("/reports/{node}");
        self.mkdir(&dir).await?;
        let existing: BTreeMap<String, Vec<u8>> = self
            .read_all(&self.two_levels("/reports", Some(node)).await?)
            .await?
            .into_iter()
            .collect();
        let mut ops = Vec::new();
        let mut wanted = BTreeSet::new();
        for report in reports {
            let Some(key) = &report.key else { continue };
            let path = znode("/reports", node, key);
            let data = encode(report);
            match existing.get(&path) {
                Some(current) if *current == data => {}
                Some(_) => ops.push(WriteOp::Set(path.clone(), data)),
                None => ops.push(WriteOp::Create(path.clone(), data)),
            }
            wanted.insert(path);
        }
        for path in existing.keys() {
            if !wanted.contains(path) {
                ops.push(WriteOp::Delete(path.clone()));
            }
        }
        self.commit(None, &ops).await
    }
}
