//! The lease store in ZooKeeper, through zookeeper-client.
//!
//! ```text
//! <chroot>/nodes/<node>          persistent  provisioned for the node; data: the agent's
//!                                            registration (capacity, labels, cgroup mode)
//! <chroot>/nodes/<node>/agent    ephemeral   empty: the agent is alive
//! <chroot>/join/<node>           ephemeral   an agent not yet provisioned asks to be
//! <chroot>/leader/c-<seq>        ephemeral sequential: election; epoch = its czxid
//! <chroot>/leases/<node>         persistent  the node's last registration (for the grace period)
//! <chroot>/leases/<node>/<key>   persistent  allocation of one replica
//! <chroot>/reports/<node>        persistent  the agent's reports: values applied, use observed
//! <chroot>/status                persistent  the leader's summary
//! ```
//!
//! Who may do what to each of them is decided in [`super::acl`].
//!
//! Guarantees:
//! - every lease write is one `multi` (or one per 500 operations) that first checks the
//!   writer's own election node, so a deposed or paused controller cannot write (fencing);
//! - every call has a timeout; none blocks for ever on a lost ensemble;
//! - an expired session is final in zookeeper-client: the store builds a new client,
//!   registers the node again and restores its watches, and says so to subscribers;
//! - with an identity (digest credentials or a TLS client certificate), the controller's
//!   znodes are writable by the controller's identity alone, a node's by that node's agent
//!   as [`super::acl`] says, and nothing holding env values or output is readable by
//!   anyone else; an agent never creates corral's layout, so it cannot take it over
//!   before the controller first runs;
//! - digest credentials are never sent without TLS unless [`ZkConfig::insecure`] says so;
//!   credentials never appear in logs or errors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use zookeeper_client::{
    AddWatchMode, Client, CreateMode, Error as ZkError, MultiWriteError, SessionState, Stat,
    TlsOptions,
};

use super::acl::{self, AclId, AclSet, Base, Policy};
use super::identities::AgentIdentities;
use super::{FORMAT_VERSION, Lease, LeaseChange, LeaseStore, NodeRegistration, Report, StoreError};
use crate::alloc::ReplicaKey;
use crate::sync::Lock;

/// Most operations in one `multi`; ZooKeeper refuses requests over 1 MiB.
const MULTI_BATCH: usize = 500;

/// The name of an agent's registration in its node's directory: `/nodes/<node>/agent`.
pub const REGISTRATION: &str = "agent";

/// How many directories are listed at once when reading every lease.
const LIST_CONCURRENCY: usize = 64;

/// How many znodes the controller provisions or checks at once.
const PROVISION_CONCURRENCY: usize = 16;

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

    /// The ACL id these credentials authenticate as: `digest:user:HASH`.
    pub fn acl_id(&self) -> AclId {
        AclId::digest(&self.user, &self.password)
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

/// What a process does with corral's layout in ZooKeeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds the controller's identity: creates the layout, sets its ACLs, provisions nodes.
    /// `corral controller`, `corral run` and `corral status`.
    Controller,
    /// A node's agent: with an identity it creates nothing but its registration, its join
    /// request and its reports.
    Agent,
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
    /// Allow digest credentials without TLS (they then cross the network in clear text).
    pub insecure: bool,
    /// What this process does with the layout.
    pub role: Role,
    /// The agents' identities, for a controller: whom it gives rights to a node's znodes.
    pub agents: AgentIdentities,
}

impl ZkConfig {
    /// Defaults for `hosts`: chroot `/corral`, a 15 s session, 10 s per call, no auth, no TLS,
    /// the controller's role, no agent identities.
    pub fn new(hosts: &str) -> ZkConfig {
        ZkConfig {
            hosts: hosts.to_string(),
            chroot: "/corral".to_string(),
            session_timeout: Duration::from_secs(15),
            operation_timeout: Duration::from_secs(10),
            credentials: None,
            tls: None,
            insecure: false,
            role: Role::Controller,
            agents: AgentIdentities::default(),
        }
    }

    /// True when this process authenticates: digest credentials, or a TLS client
    /// certificate.
    pub fn has_identity(&self) -> bool {
        self.credentials.is_some() || self.tls.as_ref().is_some_and(|t| t.identity.is_some())
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

/// One lease as an agent reads it: the znode's name, the zxid of its last write, and the
/// lease, or why it could not be read.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadLease {
    /// The znode's name, the replica's key as the path says it.
    pub key: String,
    /// The zxid of the znode's last write (`mzxid`).
    pub written: i64,
    /// The lease, or why its data is not one.
    pub lease: Result<Lease, String>,
}

/// What [`ZkStore::ensure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ensured {
    Created,
    Fixed,
    Kept,
}

/// The lease store in ZooKeeper.
pub struct ZkStore {
    config: ZkConfig,
    client: RwLock<Client>,
    /// The ids this process authenticated as; empty without an identity (open mode).
    own: Vec<AclId>,
    /// The node this process registered, registered again after an expiry.
    registration: Mutex<Option<NodeRegistration>>,
    /// This controller's election node and epoch, while it leads.
    leadership: Mutex<Option<(String, i64)>>,
    /// Paths watched recursively, each with the counter bumped on every event below it.
    watches: Mutex<Vec<Watched>>,
    session: watch::Sender<Session>,
    /// Lease znodes known to exist, so a put is a set rather than a create.
    known_leases: Mutex<BTreeSet<String>>,
    /// The nodes this controller provisioned, with the ids it gave them.
    provisioned: Mutex<BTreeMap<String, Vec<AclId>>>,
    /// Znodes already warned about (ignored registrations, election impostors), so that a
    /// pass does not repeat the warning.
    warned: Mutex<BTreeSet<String>>,
    /// The task that follows the session, stopped with the store.
    keeper: Mutex<Option<tokio::task::AbortHandle>>,
}

impl fmt::Debug for ZkStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkStore")
            .field("hosts", &self.config.hosts)
            .field("chroot", &self.config.chroot)
            .field("role", &self.config.role)
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

/// One recursive watch: the counter its events bump, the log of the paths they named (for
/// a subscriber that reads only what changed), and the task that follows it.
struct Watched {
    path: String,
    counter: watch::Sender<u64>,
    changes: Option<ChangeLog>,
    task: tokio::task::AbortHandle,
}

/// The paths below a watched path that changed since a subscriber last took them, or
/// `all` when events may have been lost (a new subscription, a reconnect, a new session, or
/// more paths than [`MAX_LOGGED_CHANGES`]): then everything must be read again.
#[derive(Debug)]
pub struct Changes {
    /// Everything must be read again.
    pub all: bool,
    /// The znodes named by events since the last take, relative to the chroot.
    pub paths: BTreeSet<String>,
}

impl Default for Changes {
    /// A new subscriber has read nothing yet: everything.
    fn default() -> Self {
        Changes {
            all: true,
            paths: BTreeSet::new(),
        }
    }
}

impl Changes {
    /// Takes what changed, leaving nothing.
    pub fn take(&mut self) -> Changes {
        std::mem::replace(
            self,
            Changes {
                all: false,
                paths: BTreeSet::new(),
            },
        )
    }

    fn everything(&mut self) {
        self.all = true;
        self.paths.clear();
    }
}

/// A [`Changes`] shared between a watch's task and its subscriber.
pub type ChangeLog = Arc<Mutex<Changes>>;

/// The most paths a [`ChangeLog`] keeps; past it the subscriber reads everything again,
/// so a subscriber that stops taking them costs bounded memory.
const MAX_LOGGED_CHANGES: usize = 100_000;

impl Drop for ZkStore {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.locked().take() {
            keeper.abort();
        }
        {
            let watches = self.watches.locked();
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

/// Refuses a name that is not a node's (a DNS subdomain): it would name another path.
fn check_node_name(node: &str) -> Result<(), StoreError> {
    if crate::source::nodes::is_node_name(node) {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "{node:?} is not a node name (a DNS subdomain: lowercase letters, digits, '-' and '.')"
        )))
    }
}

fn is_zk(result: &StoreError, code: &ZkError) -> bool {
    matches!(result, StoreError::Zk { source, .. } if source == code)
}

/// True for the name of a controller's election znode: `c-` and ZooKeeper's ten-digit
/// sequence number.
pub fn is_election_name(name: &str) -> bool {
    name.strip_prefix("c-")
        .is_some_and(|n| n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// With a timeout: `op` on `path`.
async fn timed<T>(
    timeout: Duration,
    op: &'static str,
    path: &str,
    fut: impl Future<Output = Result<T, ZkError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(zk(op, path)),
        Err(_) => Err(StoreError::Timeout {
            op,
            path: path.to_string(),
        }),
    }
}

/// Creates `path` with `wanted` unless it exists; with `fix`, sets the ACL of one that
/// exists with another. Looks first: a process without the right to create may still use
/// what exists (ZooKeeper checks the parent's ACL before it says a znode exists).
async fn ensure_on(
    client: &Client,
    timeout: Duration,
    path: &str,
    wanted: &AclSet,
    fix: bool,
) -> Result<Ensured, StoreError> {
    let exists = timed(timeout, "stat", path, client.check_stat(path))
        .await?
        .is_some();
    if !exists {
        let acl = wanted.to_zk();
        let options = CreateMode::Persistent.with_acls(acl.as_slice().into());
        match timed(timeout, "create", path, client.create(path, b"", &options)).await {
            Ok(_) => return Ok(Ensured::Created),
            Err(e) if is_zk(&e, &ZkError::NodeExists) => {}
            Err(e) => return Err(e),
        }
    }
    if !fix {
        return Ok(Ensured::Kept);
    }
    let found = match timed(timeout, "get the ACL of", path, client.get_acl(path)).await {
        Ok((found, _)) => AclSet::from_zk(&found),
        Err(e) if is_zk(&e, &ZkError::NoAuth) => {
            return Err(StoreError::Acl {
                path: path.to_string(),
                found: "unreadable to this identity".into(),
                wanted: wanted.to_string(),
            });
        }
        Err(e) => return Err(e),
    };
    if found == *wanted {
        return Ok(Ensured::Kept);
    }
    match timed(
        timeout,
        "set the ACL of",
        path,
        client.set_acl(path, &wanted.to_zk(), None),
    )
    .await
    {
        Ok(_) => {
            tracing::info!(%path, was = %found, now = %wanted, "ACL set");
            Ok(Ensured::Fixed)
        }
        Err(e) if is_zk(&e, &ZkError::NoAuth) => Err(StoreError::Acl {
            path: path.to_string(),
            found: found.to_string(),
            wanted: wanted.to_string(),
        }),
        Err(e) => Err(e),
    }
}

impl ZkStore {
    /// Connects, creates corral's layout where this process may (a controller, or anyone
    /// without an identity), and starts watching the session. A controller also sets the
    /// ACLs of the layout's base znodes where they differ from corral's.
    ///
    /// # Errors
    /// Digest credentials without TLS or [`ZkConfig::insecure`]; the ensemble cannot be
    /// reached within the operation timeout, refuses the credentials, or gives a client
    /// certificate no identity; the TLS files cannot be read; a base znode has an ACL this
    /// identity may not set.
    pub async fn connect(config: ZkConfig) -> Result<Arc<ZkStore>, StoreError> {
        if config.credentials.is_some() && config.tls.is_none() {
            if !config.insecure {
                return Err(StoreError::Insecure);
            }
            tracing::warn!(
                "ZooKeeper digest credentials without TLS (--zookeeper-insecure): they cross the network in clear text"
            );
        }
        let (client, own) = Self::new_client(&config).await?;
        if own.is_empty() {
            tracing::warn!(
                "no ZooKeeper identity: corral's znodes are readable and writable by anyone who reaches the ensemble"
            );
        }
        let store = Arc::new(ZkStore {
            client: RwLock::new(client),
            own,
            registration: Mutex::new(None),
            leadership: Mutex::new(None),
            watches: Mutex::new(Vec::new()),
            session: watch::Sender::new(Session::Connected),
            known_leases: Mutex::new(BTreeSet::new()),
            provisioned: Mutex::new(BTreeMap::new()),
            warned: Mutex::new(BTreeSet::new()),
            keeper: Mutex::new(None),
            config,
        });
        if store.makes_layout() {
            let policy = store.policy();
            let fix = store.config.role == Role::Controller;
            for base in Base::BELOW_CHROOT {
                let path = base.path().unwrap_or("/");
                store.ensure(path, &policy.base(base), fix).await?;
            }
        }
        let keeper = tokio::spawn(Self::keep_session(Arc::downgrade(&store)));
        *store.keeper.locked() = Some(keeper.abort_handle());
        Ok(store)
    }

    /// True when this process creates corral's layout: a controller, or anyone in open mode.
    fn makes_layout(&self) -> bool {
        self.own.is_empty() || self.config.role == Role::Controller
    }

    /// A client connected to the ensemble's root, authenticated as `config` says.
    async fn connect_root(config: &ZkConfig) -> Result<Client, StoreError> {
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
        if config.tls.is_some() {
            connector.secure_connect(&config.hosts).await
        } else {
            connector.connect(&config.hosts).await
        }
        .map_err(zk("connect to", &config.hosts))
    }

    /// What a connection that does not answer in time means, for a person.
    fn connect_timeout(config: &ZkConfig) -> StoreError {
        match &config.tls {
            // zookeeper-client retries a refused handshake until the deadline and says why
            // only in its debug log: name the likely causes.
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
        }
    }

    /// A connected client below the chroot, and the ids it authenticated as.
    async fn new_client(config: &ZkConfig) -> Result<(Client, Vec<AclId>), StoreError> {
        let timeout = config.operation_timeout;
        let connect = async {
            let root = Self::connect_root(config).await?;
            let own = Self::identify(&root, config).await?;
            // Make the chroot itself, then work below it. An agent with an identity never
            // does: whoever creates it owns it.
            if own.is_empty() || config.role == Role::Controller {
                let wanted = Policy::of(&own).base(Base::Chroot);
                let mut path = String::new();
                let parts: Vec<&str> = config.chroot.split('/').filter(|p| !p.is_empty()).collect();
                for (i, part) in parts.iter().enumerate() {
                    path.push('/');
                    path.push_str(part);
                    let fix = config.role == Role::Controller && i + 1 == parts.len();
                    ensure_on(&root, timeout, &path, &wanted, fix).await?;
                }
            }
            let client = root.chroot(config.chroot.clone()).map_err(|_| {
                StoreError::Unavailable(format!("chroot {:?} is not a znode path", config.chroot))
            })?;
            Ok((client, own))
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| Self::connect_timeout(config))?
    }

    /// Connects as `config` says and returns the ids ZooKeeper knows the client by, of the
    /// schemes corral grants rights to: the digest of its credentials (computed here:
    /// `whoami` names a digest identity by its user alone), then a client certificate's
    /// subject as the server's x509 provider writes it. Creates nothing.
    ///
    /// # Errors
    /// As [`ZkStore::connect`]; ZooKeeper older than 3.7 has no `whoami`.
    pub async fn whoami(config: &ZkConfig) -> Result<Vec<AclId>, StoreError> {
        if config.credentials.is_some() && config.tls.is_none() && !config.insecure {
            return Err(StoreError::Insecure);
        }
        let ask = async {
            let root = Self::connect_root(config).await?;
            let users = timed(
                config.operation_timeout,
                "ask whoami at",
                &config.hosts,
                root.list_auth_users(),
            )
            .await?;
            let mut ids: Vec<AclId> = config.credentials.iter().map(Credentials::acl_id).collect();
            // The schemes corral grants rights to; a digest one is named by its user alone.
            ids.extend(
                users
                    .iter()
                    .filter(|u| u.scheme() != "digest" && acl::SCHEMES.contains(&u.scheme()))
                    .map(|u| AclId::new(u.scheme(), u.user())),
            );
            Ok(ids)
        };
        tokio::time::timeout(config.operation_timeout, ask)
            .await
            .map_err(|_| Self::connect_timeout(config))?
    }

    /// The ids this client authenticated as: the digest of its credentials, and the subject
    /// of its client certificate as ZooKeeper's x509 provider names it (asked with
    /// `whoami`, ZooKeeper 3.7 and later).
    async fn identify(root: &Client, config: &ZkConfig) -> Result<Vec<AclId>, StoreError> {
        let mut own: Vec<AclId> = config.credentials.iter().map(Credentials::acl_id).collect();
        if config.tls.as_ref().is_some_and(|t| t.identity.is_some()) {
            let users = timed(
                config.operation_timeout,
                "ask whoami at",
                &config.hosts,
                root.list_auth_users(),
            )
            .await?;
            own.extend(
                users
                    .iter()
                    .filter(|u| u.scheme() == "x509")
                    .map(|u| AclId::new(u.scheme(), u.user())),
            );
            if own.is_empty() {
                return Err(StoreError::Unavailable(format!(
                    "ZooKeeper at {} gave the client certificate no identity: the server needs \
                     ssl.clientAuth=need and \
                     authProvider.x509=org.apache.zookeeper.server.auth.X509AuthenticationProvider",
                    config.hosts
                )));
            }
        }
        Ok(own)
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

    fn client(&self) -> Client {
        self.client
            .read()
            .map_or_else(|p| p.into_inner().clone(), |c| c.clone())
    }

    /// The ids this process authenticated as; empty in open mode.
    pub fn identity(&self) -> &[AclId] {
        &self.own
    }

    /// Who gets rights, with this process as the controller.
    fn policy(&self) -> Policy {
        Policy::of(&self.own)
    }

    /// The agents' identities this controller was given.
    pub fn agent_identities(&self) -> &AgentIdentities {
        &self.config.agents
    }

    /// The ids the agents' identities give `node` (none in open mode, or when the file
    /// names none for it: then only the controller's identity may use its znodes).
    pub fn agent_ids(&self, node: &str) -> Vec<AclId> {
        self.config.agents.ids_for(node).unwrap_or_default()
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        path: &str,
        fut: impl Future<Output = Result<T, ZkError>>,
    ) -> Result<T, StoreError> {
        timed(self.config.operation_timeout, op, path, fut).await
    }

    async fn ensure(&self, path: &str, wanted: &AclSet, fix: bool) -> Result<Ensured, StoreError> {
        ensure_on(
            &self.client(),
            self.config.operation_timeout,
            path,
            wanted,
            fix,
        )
        .await
    }

    /// Warns about `path` once.
    fn warn_once(&self, path: &str, message: &str) {
        let first = {
            let mut warned = self.warned.locked();
            warned.len() < 10_000 && warned.insert(path.to_string())
        };
        if first {
            tracing::warn!(%path, "{message}");
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
    /// a session expiry. `path` need not exist yet.
    ///
    /// # Errors
    /// The watch could not be set.
    pub async fn subscribe(&self, path: &str) -> Result<watch::Receiver<u64>, StoreError> {
        self.watch_below(path, None).await
    }

    /// As [`ZkStore::subscribe`], and also the log of which znodes changed, so that the
    /// subscriber reads only those: a counter bumped on every change below `path`, and the
    /// paths the events named. The log says `all` at first, and again whenever events may
    /// have been lost (after a reconnect or a new session).
    ///
    /// # Errors
    /// The watch could not be set.
    pub async fn subscribe_changes(
        &self,
        path: &str,
    ) -> Result<(watch::Receiver<u64>, ChangeLog), StoreError> {
        let log = ChangeLog::default();
        let receiver = self.watch_below(path, Some(Arc::clone(&log))).await?;
        Ok((receiver, log))
    }

    async fn watch_below(
        &self,
        path: &str,
        changes: Option<ChangeLog>,
    ) -> Result<watch::Receiver<u64>, StoreError> {
        let counter = watch::Sender::new(0);
        let receiver = counter.subscribe();
        let task = self
            .start_watch(path, counter.clone(), changes.clone())
            .await?;
        {
            let mut watches = self.watches.locked();
            watches.push(Watched {
                path: path.to_string(),
                counter,
                changes,
                task,
            });
        }
        Ok(receiver)
    }

    async fn start_watch(
        &self,
        path: &str,
        counter: watch::Sender<u64>,
        changes: Option<ChangeLog>,
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
                // Logged before the counter moves, so a subscriber woken by it finds it.
                if let Some(mut log) = changes.as_ref().map(|c| c.locked()) {
                    if event.path.is_empty() || log.paths.len() >= MAX_LOGGED_CHANGES {
                        log.everything();
                    } else if !log.all {
                        log.paths.insert(event.path.clone());
                    }
                }
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
        type Restored = (String, watch::Sender<u64>, Option<ChangeLog>);
        let paths: Vec<Restored> = self
            .watches
            .locked()
            .iter()
            .map(|w| (w.path.clone(), w.counter.clone(), w.changes.clone()))
            .collect();
        for (path, counter, changes) in paths {
            // Events may have been lost while the watch was not set: read everything.
            if let Some(mut log) = changes.as_ref().map(|c| c.locked()) {
                log.everything();
            }
            match self.start_watch(&path, counter.clone(), changes).await {
                Ok(task) => {
                    let mut watches = self.watches.locked();
                    if let Some(watched) = watches.iter_mut().find(|w| w.path == path) {
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
                    *strong.leadership.locked() = None;
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
                Ok((client, _)) => {
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
        let registration = self.registration.locked().clone();
        if let Some(node) = registration
            && let Err(e) = self.register_node(&node).await
        {
            tracing::warn!(error = %e, node = %node.name, "cannot register the node again");
        }
        self.restore_watches().await;
        self.known_leases.locked().clear();
        self.session.send_replace(Session::Connected);
        tracing::info!("ZooKeeper session rebuilt");
    }

    /// Gives `node` its znodes, with ACLs for the ids of its agent: `/nodes/<node>` (where
    /// the agent registers), `/leases/<node>` and `/reports/<node>`. With `fix` (the
    /// controller), an existing znode whose ACL differs is set, and so are the leases and
    /// reports below it (one this identity may not set is deleted: the controller writes
    /// leases again, the agent its reports); an older corral's registration, the ephemeral
    /// `/nodes/<node>` itself, is replaced. Without `fix`, only what is missing is created.
    /// Returns whether anything was written.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer.
    pub async fn provision_node(
        &self,
        node: &str,
        ids: &[AclId],
        fix: bool,
    ) -> Result<bool, StoreError> {
        let cached = self
            .provisioned
            .locked()
            .get(node)
            .is_some_and(|known| known == ids);
        if fix && cached {
            return Ok(false);
        }
        let policy = self.policy();
        let client = self.client();
        let dir = format!("/nodes/{node}");
        let mut changed = false;
        if let Some(stat) = self.timed("stat", &dir, client.check_stat(&dir)).await?
            && stat.ephemeral_owner != 0
        {
            if !fix {
                return Err(StoreError::Unavailable(format!(
                    "{dir} is the registration of an older corral agent: its controller \
                     replaces it once it runs this version"
                )));
            }
            changed |= self.delete_if_present(&dir).await?;
        }
        let leases = format!("/leases/{node}");
        let wanted = policy.leases(ids);
        match self.ensure(&leases, &wanted, fix).await? {
            Ensured::Kept => {}
            Ensured::Created => changed = true,
            Ensured::Fixed => {
                changed = true;
                self.set_children_acl(&leases, &wanted).await?;
            }
        }
        let reports = format!("/reports/{node}");
        match self.ensure(&reports, &policy.reports(ids), fix).await? {
            Ensured::Kept => {}
            Ensured::Created => changed = true,
            Ensured::Fixed => {
                // An older corral kept one znode per report below: the agent writes them
                // all again, as this znode's data.
                changed = true;
                self.delete_children(&reports).await?;
            }
        }
        // Last: an agent registers once this exists, and must find the others there.
        changed |= self.ensure(&dir, &policy.node_dir(ids), fix).await? != Ensured::Kept;
        self.provisioned
            .locked()
            .insert(node.to_string(), ids.to_vec());
        Ok(changed)
    }

    /// Sets the ACL of every child of `dir` to `wanted`; deletes a child whose ACL this
    /// identity may not set (its writer writes it again).
    async fn set_children_acl(&self, dir: &str, wanted: &AclSet) -> Result<(), StoreError> {
        let client = self.client();
        let children = self.timed("list", dir, client.list_children(dir)).await?;
        let acl = wanted.to_zk();
        for child in children {
            let path = format!("{dir}/{child}");
            match self
                .timed("set the ACL of", &path, client.set_acl(&path, &acl, None))
                .await
            {
                Ok(_) => {}
                Err(e) if is_zk(&e, &ZkError::NoNode) => {}
                Err(e) if is_zk(&e, &ZkError::NoAuth) => {
                    tracing::warn!(%path, "cannot set its ACL; deleting it, to be written again");
                    self.delete_if_present(&path).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deletes `path`; one already gone is fine. True when this call deleted it.
    async fn delete_if_present(&self, path: &str) -> Result<bool, StoreError> {
        let client = self.client();
        match self.timed("delete", path, client.delete(path, None)).await {
            Ok(()) => Ok(true),
            Err(e) if is_zk(&e, &ZkError::NoNode) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes every child of `dir`.
    async fn delete_children(&self, dir: &str) -> Result<(), StoreError> {
        let client = self.client();
        for child in self.timed("list", dir, client.list_children(dir)).await? {
            self.delete_if_present(&format!("{dir}/{child}")).await?;
        }
        Ok(())
    }

    /// Every node that has znodes of its own: below `/nodes`, `/leases` or `/reports`.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer.
    pub async fn known_nodes(&self) -> Result<BTreeSet<String>, StoreError> {
        let client = self.client();
        let mut nodes = BTreeSet::new();
        for dir in ["/nodes", "/leases", "/reports"] {
            nodes.extend(self.timed("list", dir, client.list_children(dir)).await?);
        }
        Ok(nodes)
    }

    /// Provisions each of `nodes` with the ids the agents' identities give it, several at a
    /// time; returns the nodes where something was written, and those that failed.
    pub async fn provision_nodes(
        &self,
        nodes: &[(String, Vec<AclId>)],
    ) -> (Vec<String>, Vec<(String, StoreError)>) {
        let mut results = Vec::with_capacity(nodes.len());
        for chunk in nodes.chunks(PROVISION_CONCURRENCY) {
            // Collected first: a lazy stream of closures over `&self` is not `Send` enough
            // for tokio::spawn.
            let pending: Vec<_> = chunk
                .iter()
                .map(|(node, ids)| self.provision_node(node, ids, true))
                .collect();
            let done = futures::future::join_all(pending).await;
            results.extend(chunk.iter().map(|(node, _)| node.clone()).zip(done));
        }
        let mut changed = Vec::new();
        let mut failed = Vec::new();
        for (node, result) in results {
            match result {
                Ok(true) => changed.push(node),
                Ok(false) => {}
                Err(e) => failed.push((node, e)),
            }
        }
        changed.sort();
        (changed, failed)
    }

    /// The names below `/join`: agents asking to be provisioned.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer.
    pub async fn join_requests(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client();
        let mut names = self
            .timed("list", "/join", client.list_children("/join"))
            .await?;
        names.sort();
        Ok(names)
    }

    /// Removes the join request of `node`, served.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer.
    pub async fn finish_join(&self, node: &str) -> Result<(), StoreError> {
        self.delete_if_present(&format!("/join/{node}")).await?;
        Ok(())
    }

    /// Makes sure `node` has its znodes before its agent registers. In open mode, or for a
    /// process holding the controller's identity, it creates what is missing; an agent with
    /// its own identity asks instead (an ephemeral `/join/<node>`) and waits for a
    /// controller to provision the node.
    async fn ensure_provisioned(&self, node: &str) -> Result<(), StoreError> {
        let dir = format!("/nodes/{node}");
        let client = self.client();
        let stat = self.timed("stat", &dir, client.check_stat(&dir)).await?;
        if stat.is_some_and(|s| s.ephemeral_owner == 0) {
            return Ok(());
        }
        if self.makes_layout() {
            if self.own.is_empty() {
                for base in Base::BELOW_CHROOT {
                    let path = base.path().unwrap_or("/");
                    self.ensure(path, &Policy::Open.base(base), false).await?;
                }
            }
            self.provision_node(node, &[], false).await?;
            return Ok(());
        }
        let path = format!("/join/{node}");
        let acl = acl::join_request(&self.own).to_zk();
        let options = CreateMode::Ephemeral.with_acls(acl.as_slice().into());
        match self
            .timed("create", &path, client.create(&path, b"", &options))
            .await
        {
            Ok(_) => {}
            Err(e) if is_zk(&e, &ZkError::NodeExists) => {}
            Err(e) if is_zk(&e, &ZkError::NoNode) => {
                return Err(StoreError::NotProvisioned {
                    node: node.to_string(),
                    detail: format!(
                        "no controller has prepared {} yet (there is no /join to ask in)",
                        self.config.chroot
                    ),
                });
            }
            Err(e) => return Err(e),
        }
        Err(StoreError::NotProvisioned {
            node: node.to_string(),
            detail: format!(
                "asked with {path}; the leading controller provisions a node that its \
                 --agent-identities file gives ids to"
            ),
        })
    }

    /// Runs for leadership among controllers: an ephemeral sequential znode under
    /// `/leader`; the earliest created leads, and each other candidate watches only the one
    /// created just before it (no herd when the leader goes). Returns once this process
    /// leads, with its epoch (the czxid of its znode: higher for every later leader).
    ///
    /// Children of `/leader` that are not candidates are ignored, with a warning: a name
    /// that is not `c-` and ten digits, a znode that is not ephemeral, one created after
    /// this one whatever its name says (sequence numbers follow creation, a forged name
    /// does not), and, with an identity, one whose ACL is not the controller's.
    ///
    /// # Errors
    /// The session ended or ZooKeeper cannot be reached; run again once it can.
    pub async fn campaign(&self, identity: &str) -> Result<i64, StoreError> {
        let client = self.client();
        let wanted = self.policy().election();
        let acl = wanted.to_zk();
        let options = CreateMode::EphemeralSequential.with_acls(acl.as_slice().into());
        let (stat, sequence) = self
            .timed(
                "create",
                "/leader/c-",
                client.create("/leader/c-", identity.as_bytes(), &options),
            )
            .await?;
        let own = format!("c-{sequence}");
        // Said once, so that a person (and the tests) can tell a standby is up.
        let mut standing_by = false;
        loop {
            let children = self
                .timed("list", "/leader", client.list_children("/leader"))
                .await?;
            if !children.contains(&own) {
                return Err(StoreError::Unavailable(format!(
                    "election znode /leader/{own} is gone: the session ended"
                )));
            }
            let mut ahead: Vec<(i64, String)> = Vec::new();
            for child in children.into_iter().filter(|c| *c != own) {
                let path = format!("/leader/{child}");
                if !is_election_name(&child) {
                    self.warn_once(&path, "not a candidate's name; ignored by the election");
                    continue;
                }
                let Some(found) = self.timed("stat", &path, client.check_stat(&path)).await? else {
                    continue;
                };
                if found.ephemeral_owner == 0 {
                    self.warn_once(
                        &path,
                        "not ephemeral: not a candidate; ignored by the election",
                    );
                    continue;
                }
                if found.czxid >= stat.czxid {
                    continue;
                }
                if !self.own.is_empty() {
                    match self
                        .timed("get the ACL of", &path, client.get_acl(&path))
                        .await
                    {
                        Ok((acl, _)) if AclSet::from_zk(&acl) == wanted => {}
                        Ok(_) => {
                            self.warn_once(
                                &path,
                                "not created under the controller's identity; ignored by the election",
                            );
                            continue;
                        }
                        Err(e) if is_zk(&e, &ZkError::NoNode) => continue,
                        Err(e) => return Err(e),
                    }
                }
                ahead.push((found.czxid, child));
            }
            let Some((_, predecessor)) = ahead.into_iter().max() else {
                *self.leadership.locked() = Some((format!("/leader/{own}"), stat.czxid));
                return Ok(stat.czxid);
            };
            let predecessor = format!("/leader/{predecessor}");
            let watched = self
                .timed(
                    "watch",
                    &predecessor,
                    client.check_and_watch_stat(&predecessor),
                )
                .await?;
            if let (Some(_), watcher) = watched {
                if !standing_by {
                    tracing::info!(candidate = %own, behind = %predecessor, "standing by");
                    standing_by = true;
                }
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

    /// The epoch of the current leader, as agents see it: the creation zxid of the earliest
    /// ephemeral `c-<ten digits>` below `/leader`; `None` while no controller runs.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer.
    pub async fn leader_epoch(&self) -> Result<Option<i64>, StoreError> {
        let client = self.client();
        let children = self
            .timed("list", "/leader", client.list_children("/leader"))
            .await?;
        let mut earliest: Option<i64> = None;
        for child in children.into_iter().filter(|c| is_election_name(c)) {
            let path = format!("/leader/{child}");
            if let Some(stat) = self.timed("stat", &path, client.check_stat(&path)).await?
                && stat.ephemeral_owner != 0
            {
                earliest = Some(earliest.map_or(stat.czxid, |e| e.min(stat.czxid)));
            }
        }
        Ok(earliest)
    }

    /// The epoch this process leads with, if it leads.
    pub fn epoch(&self) -> Option<i64> {
        self.leadership.locked().as_ref().map(|(_, epoch)| *epoch)
    }

    /// Gives up leadership: deletes the election znode so that the next candidate leads now,
    /// not after the session times out.
    ///
    /// # Errors
    /// The znode could not be deleted.
    pub async fn resign(&self) -> Result<(), StoreError> {
        let own = self.leadership.locked().take();
        if let Some((path, _)) = own {
            self.delete_if_present(&path).await?;
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
        self.ensure(
            &path,
            &self.policy().leases(&self.agent_ids(&node.name)),
            false,
        )
        .await?;
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
                Ok(_) => {}
                Err(e) if is_zk(&e, &ZkError::NoNode) => {}
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
        self.ensure("/status", &self.policy().base(Base::Status), false)
            .await?;
        let client = self.client();
        self.timed("set", "/status", client.set_data("/status", data, None))
            .await?;
        Ok(())
    }

    /// Cordons `node` (`corral drain`): no replica is placed there any more, and those there
    /// move away. `why` is kept for `corral status`.
    ///
    /// # Errors
    /// ZooKeeper refused (this identity may not write there) or did not answer.
    pub async fn cordon(&self, node: &str, why: &[u8]) -> Result<(), StoreError> {
        check_node_name(node)?;
        let acl = self.policy().base(Base::Cordons);
        self.ensure("/cordons", &acl, false).await?;
        let path = format!("/cordons/{node}");
        let client = self.client();
        let zk_acl = acl.to_zk();
        let options = CreateMode::Persistent.with_acls(zk_acl.as_slice().into());
        match self
            .timed("create", &path, client.create(&path, why, &options))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_zk(&e, &ZkError::NodeExists) => {
                self.timed("set", &path, client.set_data(&path, why, None))
                    .await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Lifts the cordon of `node`; nothing happens when there is none.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer.
    pub async fn uncordon(&self, node: &str) -> Result<(), StoreError> {
        check_node_name(node)?;
        let path = format!("/cordons/{node}");
        let client = self.client();
        match self
            .timed("delete", &path, client.delete(&path, None))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_zk(&e, &ZkError::NoNode) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The cordoned nodes, each with what `corral drain` wrote.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer.
    pub async fn cordons(&self) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        let client = self.client();
        let names = match self
            .timed("list", "/cordons", client.list_children("/cordons"))
            .await
        {
            Ok(names) => names,
            Err(e) if is_zk(&e, &ZkError::NoNode) => return Ok(BTreeMap::new()),
            Err(e) => return Err(e),
        };
        let paths: Vec<String> = names.iter().map(|n| format!("/cordons/{n}")).collect();
        Ok(self
            .read_all(&paths)
            .await?
            .into_iter()
            .filter_map(|(path, data, _)| Some((path.strip_prefix("/cordons/")?.to_string(), data)))
            .collect())
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
            Ok(_) => Ok(None),
            Err(e) if is_zk(&e, &ZkError::NoNode) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads the data and stat of `paths`, several per round trip; a znode gone meanwhile
    /// is skipped.
    async fn read_all(&self, paths: &[String]) -> Result<Vec<(String, Vec<u8>, Stat)>, StoreError> {
        let client = self.client();
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(MULTI_BATCH) {
            let mut reader = client.new_multi_reader();
            for path in chunk {
                reader.add_get_data(path).map_err(zk("read", path))?;
            }
            let results = self.timed("read", &chunk[0], reader.commit()).await?;
            for (path, result) in chunk.iter().zip(results) {
                if let zookeeper_client::MultiReadResult::Data { data, stat } = result {
                    out.push((path.clone(), data, stat));
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
        // Several lists in flight at once: one at a time, a thousand nodes took a second.
        for chunk in nodes.chunks(LIST_CONCURRENCY) {
            let parents: Vec<String> = chunk.iter().map(|node| format!("{dir}/{node}")).collect();
            let lists = parents
                .iter()
                .map(|parent| self.timed("list", parent, client.list_children(parent)));
            for (parent, listed) in parents.iter().zip(futures::future::join_all(lists).await) {
                match listed {
                    Ok(keys) => paths.extend(keys.into_iter().map(|k| format!("{parent}/{k}"))),
                    Err(e) if is_zk(&e, &ZkError::NoNode) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        paths.sort();
        Ok(paths)
    }

    async fn read_leases(&self, only: Option<&str>) -> Result<Vec<Lease>, StoreError> {
        let paths = self.two_levels("/leases", only).await?;
        let mut leases = Vec::with_capacity(paths.len());
        for (path, data, _) in self.read_all(&paths).await? {
            leases.push(decode(&path, &data)?);
        }
        self.known_leases.locked().extend(paths);
        Ok(leases)
    }

    /// The leases of `node` as its agent reads them: each with its znode's name and the
    /// zxid of its last write, and a lease that cannot be decoded as such, so that one bad
    /// lease does not hide the others.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer, or `/leases/<node>` is gone: not "no leases",
    /// which would stop every workload of the node, but something to wait out.
    pub async fn read_node_leases(&self, node: &str) -> Result<Vec<ReadLease>, StoreError> {
        let dir = format!("/leases/{node}");
        let client = self.client();
        let mut paths: Vec<String> = self
            .timed("list", &dir, client.list_children(&dir))
            .await?
            .into_iter()
            .map(|key| format!("{dir}/{key}"))
            .collect();
        paths.sort();
        Ok(self
            .read_all(&paths)
            .await?
            .into_iter()
            .map(|(path, data, stat)| ReadLease {
                key: path.rsplit('/').next().unwrap_or_default().to_string(),
                written: stat.mzxid,
                lease: decode(&path, &data).map_err(|e| e.to_string()),
            })
            .collect())
    }

    /// Creates the nodes' lease directories, unless known to exist: a write of one lease
    /// then costs one round trip, not two. Known directories sit in `known_leases` too.
    async fn ensure_node_dirs(&self, nodes: &[&str]) -> Result<(), StoreError> {
        for node in nodes {
            let dir = format!("/leases/{node}");
            let known = self.known_leases.locked().contains(&dir);
            if !known {
                self.ensure(&dir, &self.policy().leases(&self.agent_ids(node)), false)
                    .await?;
                self.known_leases.locked().insert(dir);
            }
        }
        Ok(())
    }

    /// Commits `ops` in batches, each first checking `fence` (this controller's election
    /// znode) when given.
    async fn commit(&self, fence: Option<&str>, ops: &[WriteOp]) -> Result<(), StoreError> {
        let client = self.client();
        for chunk in ops.chunks(MULTI_BATCH) {
            let mut writer = client.new_multi_writer();
            if let Some(fence) = fence {
                writer
                    .add_check_version(fence, 0)
                    .map_err(zk("check", fence))?;
            }
            for op in chunk {
                match op {
                    WriteOp::Create(path, data, acl) => {
                        let acl = acl.to_zk();
                        let options = CreateMode::Persistent.with_acls(acl.as_slice().into());
                        writer.add_create(path, data, &options)
                    }
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

    /// The registrations of the nodes `names` among those registered now, as
    /// [`LeaseStore::nodes`] reads them: a name without a live registration is left out.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer.
    pub async fn nodes_named(&self, names: &[String]) -> Result<Vec<NodeRegistration>, StoreError> {
        let alive: Vec<String> = names
            .iter()
            .map(|n| format!("/nodes/{n}/{REGISTRATION}"))
            .collect();
        let mut live = BTreeSet::new();
        for (path, _, stat) in self.read_all(&alive).await? {
            if stat.ephemeral_owner == 0 {
                self.warn_once(&path, "not ephemeral, so not a live agent; ignored");
            } else {
                live.insert(node_of(&path).to_string());
            }
        }
        let dirs: Vec<String> = live.iter().map(|n| format!("/nodes/{n}")).collect();
        let mut nodes = Vec::with_capacity(dirs.len());
        for (path, data, _) in self.read_all(&dirs).await? {
            let name = node_of(&path);
            match decode::<NodeRegistration>(&path, &data) {
                Ok(registration) if registration.name == name => nodes.push(registration),
                Ok(_) => self.warn_once(&path, "registration names another node; ignored"),
                Err(e) => self.warn_once(&path, &format!("registration unreadable, ignored: {e}")),
            }
        }
        Ok(nodes)
    }

    /// The reports of the nodes `names`, as [`LeaseStore::reports`] reads them, by node; a
    /// node without reports is left out.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer, or a node's reports are not readable.
    pub async fn reports_of(
        &self,
        names: &[String],
    ) -> Result<Vec<(String, Vec<Report>)>, StoreError> {
        let paths: Vec<String> = names.iter().map(|n| format!("/reports/{n}")).collect();
        let mut out = Vec::with_capacity(paths.len());
        for (path, data, _) in self.read_all(&paths).await? {
            if data.is_empty() {
                continue;
            }
            let node = node_of(&path);
            let written: NodeReports = decode(&path, &data)?;
            let mut reports = Vec::with_capacity(written.reports.len());
            for report in written.reports {
                if report.node == node {
                    reports.push(report);
                } else {
                    self.warn_once(&path, "holds a report of another node; ignored");
                }
            }
            out.push((node.to_string(), reports));
        }
        Ok(out)
    }

    /// One round trip to the server: every watch event of a change made before it has
    /// been delivered once it returns (ZooKeeper sends a session's events and replies in
    /// order), so a [`ChangeLog`] taken after it is as fresh as a read.
    ///
    /// # Errors
    /// ZooKeeper refused or did not answer.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        let client = self.client();
        self.timed("stat", "/", client.check_stat("/")).await?;
        Ok(())
    }

    /// The ACL of a lease of `node`, as the controller creates it.
    fn lease_acl(&self, node: &str) -> AclSet {
        self.policy().leases(&self.agent_ids(node))
    }
}

/// The data of `/reports/<node>`.
#[derive(serde::Serialize, serde::Deserialize)]
struct NodeReports {
    version: u32,
    reports: Vec<Report>,
}

/// One write of a batch.
#[derive(Debug)]
enum WriteOp {
    Create(String, Vec<u8>, AclSet),
    Set(String, Vec<u8>),
    Delete(String),
}

impl WriteOp {
    fn path(&self) -> &str {
        match self {
            WriteOp::Create(p, ..) | WriteOp::Set(p, _) | WriteOp::Delete(p) => p,
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(path: &str, data: &[u8]) -> Result<T, StoreError> {
    super::decode_versioned(Path::new(path), data)
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// The znode of a replica's lease or report.
fn znode(dir: &str, node: &str, key: &ReplicaKey) -> String {
    format!("{dir}/{node}/{key}")
}

/// The node of a lease znode `/leases/<node>/<key>`.
fn node_of(path: &str) -> &str {
    path.split('/').nth(2).unwrap_or_default()
}

impl LeaseStore for ZkStore {
    /// Registers the node: its registration as the data of `/nodes/<node>`, and the
    /// ephemeral, empty `/nodes/<node>/agent` that says it is alive. A node not yet
    /// provisioned is asked for first ([`StoreError::NotProvisioned`] until a controller
    /// provisioned it).
    async fn register_node(&self, node: &NodeRegistration) -> Result<(), StoreError> {
        *self.registration.locked() = Some(node.clone());
        self.ensure_provisioned(&node.name).await?;
        let client = self.client();
        let dir = format!("/nodes/{}", node.name);
        let data = encode(node);
        let (current, _) = self.timed("read", &dir, client.get_data(&dir)).await?;
        if current != data {
            self.timed("set", &dir, client.set_data(&dir, &data, None))
                .await?;
        }
        let path = format!("{dir}/{REGISTRATION}");
        let acl = acl::registration(&self.own).to_zk();
        let options = CreateMode::Ephemeral.with_acls(acl.as_slice().into());
        for _ in 0..3 {
            match self
                .timed("create", &path, client.create(&path, b"", &options))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_zk(&e, &ZkError::NodeExists) => {
                    // Ours from this session: done. Left by an earlier session of this node
                    // (a restart before the old session expired): replace it.
                    let stat = self.timed("stat", &path, client.check_stat(&path)).await?;
                    match stat {
                        Some(stat) if stat.ephemeral_owner == client.session_id().0 => {
                            return Ok(());
                        }
                        Some(_) => {
                            self.delete_if_present(&path).await?;
                        }
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

    /// The registered nodes: the registration in `/nodes/<node>` of each node whose
    /// `/nodes/<node>/agent` is ephemeral, when it names its own node. Anything else is
    /// ignored, with a warning: an `agent` that outlives its session, or a registration
    /// that claims another node, is no registration.
    async fn nodes(&self) -> Result<Vec<NodeRegistration>, StoreError> {
        let client = self.client();
        let mut names = self
            .timed("list", "/nodes", client.list_children("/nodes"))
            .await?;
        names.sort();
        self.nodes_named(&names).await
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
        let fence = match self.leadership.locked().clone() {
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
        let nodes: Vec<&str> = nodes.into_iter().collect();
        self.ensure_node_dirs(&nodes).await?;
        // Built under the lock, without copying the set of every lease's path.
        let ops: Vec<WriteOp> = {
            let known = self.known_leases.locked();
            changes
                .iter()
                .map(|change| match change {
                    LeaseChange::Put(lease) => {
                        let path = znode("/leases", &lease.node, &lease.key);
                        if known.contains(&path) {
                            WriteOp::Set(path, encode(lease.as_ref()))
                        } else {
                            let acl = self.lease_acl(&lease.node);
                            WriteOp::Create(path, encode(lease.as_ref()), acl)
                        }
                    }
                    LeaseChange::Delete { node, key } => {
                        WriteOp::Delete(znode("/leases", node, key))
                    }
                })
                .collect()
        };
        let result = self.commit(Some(&fence), &ops).await;
        if let Err(e) = &result
            && (is_zk(e, &ZkError::NodeExists) || is_zk(e, &ZkError::NoNode))
        {
            // The cache of what exists was stale: read what does, and try once more.
            {
                let mut known = self.known_leases.locked();
                for node in &nodes {
                    known.remove(&format!("/leases/{node}"));
                }
            }
            self.ensure_node_dirs(&nodes).await?;
            self.read_leases(None).await?;
            let ops: Vec<WriteOp> = {
                let known = self.known_leases.locked();
                ops.into_iter()
                    .filter_map(|op| match op {
                        WriteOp::Create(path, data, _) | WriteOp::Set(path, data) => {
                            Some(if known.contains(&path) {
                                WriteOp::Set(path, data)
                            } else {
                                let acl = self.lease_acl(node_of(&path));
                                WriteOp::Create(path, data, acl)
                            })
                        }
                        WriteOp::Delete(path) => {
                            known.contains(&path).then_some(WriteOp::Delete(path))
                        }
                    })
                    .collect()
            };
            self.commit(Some(&fence), &ops).await?;
        } else {
            result?;
        }
        {
            let mut known = self.known_leases.locked();
            for change in changes {
                match change {
                    LeaseChange::Put(l) => known.insert(znode("/leases", &l.node, &l.key)),
                    LeaseChange::Delete { node, key } => known.remove(&znode("/leases", node, key)),
                };
            }
        }
        Ok(())
    }

    /// Every node's reports: the data of each `/reports/<node>`; a report there that
    /// claims another node is ignored, with a warning.
    async fn reports(&self) -> Result<Vec<Report>, StoreError> {
        let client = self.client();
        let names = self
            .timed("list", "/reports", client.list_children("/reports"))
            .await?;
        Ok(self
            .reports_of(&names)
            .await?
            .into_iter()
            .flat_map(|(_, reports)| reports)
            .collect())
    }

    /// Replaces the reports of `node`: one write of `/reports/<node>`, none when they are
    /// unchanged.
    async fn write_reports(&self, node: &str, reports: &[Report]) -> Result<(), StoreError> {
        let path = format!("/reports/{node}");
        if self.own.is_empty() {
            self.ensure(&path, &Policy::Open.reports(&[]), false)
                .await?;
        }
        let data = encode(&NodeReports {
            version: FORMAT_VERSION,
            reports: reports
                .iter()
                .filter(|r| r.key.is_some())
                .cloned()
                .collect(),
        });
        let client = self.client();
        let (current, _) = self.timed("read", &path, client.get_data(&path)).await?;
        if current != data {
            self.timed("set", &path, client.set_data(&path, &data, None))
                .await?;
        }
        Ok(())
    }
}
