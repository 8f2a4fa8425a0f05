//! Who may do what to each znode of corral's layout in ZooKeeper: the ACLs, decided from
//! the roles alone. Pure; `zookeeper.rs` sets and checks what this module decides.
//!
//! Two roles hold identities: the controller (one identity, however many replicas) and
//! each node's agent. With identities ([`Policy::Secured`]):
//!
//! | znode | controller | the node's agent | anyone |
//! |---|---|---|---|
//! | chroot, `/nodes`, `/leases`, `/reports`, `/status` | ALL | | |
//! | `/leader`, `/leader/c-…` | ALL | | READ (controller names, and the epoch) |
//! | `/join` | ALL | | CREATE (a request to be provisioned) |
//! | `/nodes/<node>` (data: the agent's registration) | ALL | READ, WRITE, CREATE, DELETE | |
//! | `/nodes/<node>/agent` (ephemeral, empty: the agent is alive) | | ALL | READ |
//! | `/leases/<node>`, `/leases/<node>/<key>` | ALL | READ | |
//! | `/reports/<node>` (data: the node's reports) | ALL | READ, WRITE | |
//!
//! Without identities ([`Policy::Open`], a development mode) anyone may do anything.
//!
//! ZooKeeper's ACLs have no wildcard: a node's rights are granted on its own znodes, which
//! is why registrations live in a per-node `/nodes/<node>` the controller provisions rather
//! than directly in a `/nodes` every agent could create in. And an agent cannot name the
//! controller in an ACL: ZooKeeper shows a digest id's hash only to whoever may administer
//! the znode. So nothing an agent writes is a znode of its own that the controller must
//! read: its registration and its reports are the data of znodes the controller made, and
//! the ephemeral `agent` it creates holds nothing.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use zookeeper_client::{Acl, AuthId, Permission};

/// An identity as ZooKeeper's ACLs name it: `scheme:id`, such as `digest:node-a:HASH` or
/// `x509:CN=node-a,O=corral-agents`. `Display` and `Debug` elide a digest's hash (a hash of
/// the password, open to guessing offline); [`AclId::to_acl_string`] writes it whole.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclId {
    scheme: String,
    id: String,
}

/// Schemes corral gives rights to: ZooKeeper's digest (`user:password`) and x509 (the
/// subject of a TLS client certificate).
pub const SCHEMES: [&str; 2] = ["digest", "x509"];

impl AclId {
    /// An id from its parts, unchecked: ids read back from ZooKeeper.
    pub fn new(scheme: &str, id: &str) -> AclId {
        AclId {
            scheme: scheme.to_string(),
            id: id.to_string(),
        }
    }

    /// `world:anyone`: every client, authenticated or not.
    pub fn anyone() -> AclId {
        AclId::new("world", "anyone")
    }

    /// The digest id of `user` with `password`: `digest:user:base64(sha1(user:password))`,
    /// as ZooKeeper's `DigestAuthenticationProvider.generateDigest` computes it.
    pub fn digest(user: &str, password: &str) -> AclId {
        let hash = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            format!("{user}:{password}").as_bytes(),
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(hash.as_ref());
        AclId::new("digest", &format!("{user}:{encoded}"))
    }

    /// Parses `scheme:id` for one of [`SCHEMES`]. A digest id must be `user:HASH` with the
    /// 28-character base64 of a SHA-1, so that a password written by mistake is refused.
    ///
    /// # Errors
    /// What is wrong, for a person; the message never repeats the text after the scheme,
    /// which may be a password.
    pub fn parse(text: &str) -> Result<AclId, String> {
        let Some((scheme, id)) = text.split_once(':') else {
            return Err("expected scheme:id, such as digest:USER:HASH or x509:CN=NAME".into());
        };
        match scheme {
            "digest" => {
                let Some((user, hash)) = id.split_once(':') else {
                    return Err("a digest id is digest:USER:HASH".into());
                };
                let decoded = base64::engine::general_purpose::STANDARD.decode(hash);
                if user.is_empty() || hash.len() != 28 || decoded.map_or(true, |d| d.len() != 20) {
                    return Err(format!(
                        "digest id of user {user:?}: the part after the user is not the base64 \
                         of a SHA-1 hash (28 characters); write the digest that `corral zk \
                         digest` prints for user:password, never the password"
                    ));
                }
            }
            "x509" => {
                if !id.contains('=') || id.trim() != id {
                    return Err(
                        "an x509 id is the certificate's subject in RFC 2253 form, such as \
                         x509:CN=node-a,O=corral-agents (openssl x509 -noout -subject \
                         -nameopt RFC2253)"
                            .into(),
                    );
                }
            }
            _ => {
                return Err(format!(
                    "unsupported scheme {scheme:?}; corral grants rights to {}",
                    SCHEMES.map(|s| format!("{s}:…")).join(" and ")
                ));
            }
        }
        Ok(AclId::new(scheme, id))
    }

    /// The scheme: `digest`, `x509`, `world`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// `scheme:id` in full, as ZooKeeper writes it.
    pub fn to_acl_string(&self) -> String {
        format!("{}:{}", self.scheme, self.id)
    }

    /// This id with every `{node}` replaced by `node` (a DNS subdomain, so it cannot change
    /// the structure of a distinguished name).
    pub fn for_node(&self, node: &str) -> AclId {
        AclId::new(&self.scheme, &self.id.replace("{node}", node))
    }

    fn auth_id(&self) -> AuthId {
        AuthId::new(&self.scheme, &self.id)
    }
}

impl fmt::Display for AclId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.scheme.as_str(), self.id.split_once(':')) {
            ("digest", Some((user, _))) => write!(f, "digest:{user}:<hash>"),
            _ => write!(f, "{}:{}", self.scheme, self.id),
        }
    }
}

impl fmt::Debug for AclId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AclId({self})")
    }
}

/// Rights on one znode, as a bit set in ZooKeeper's order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Perms(u8);

impl Perms {
    /// Read data, list children, get the ACL.
    pub const READ: Perms = Perms(1);
    /// Set data.
    pub const WRITE: Perms = Perms(2);
    /// Create children.
    pub const CREATE: Perms = Perms(4);
    /// Delete children.
    pub const DELETE: Perms = Perms(8);
    /// Set the ACL.
    pub const ADMIN: Perms = Perms(16);
    /// Everything.
    pub const ALL: Perms = Perms(31);

    const NAMES: [(Perms, char); 5] = [
        (Perms::CREATE, 'c'),
        (Perms::DELETE, 'd'),
        (Perms::READ, 'r'),
        (Perms::WRITE, 'w'),
        (Perms::ADMIN, 'a'),
    ];

    /// True when every right of `other` is in this set.
    pub fn has(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }

    /// Each of corral's permissions beside ZooKeeper's.
    const ZK: [(Perms, Permission); 5] = [
        (Perms::READ, Permission::READ),
        (Perms::WRITE, Permission::WRITE),
        (Perms::CREATE, Permission::CREATE),
        (Perms::DELETE, Permission::DELETE),
        (Perms::ADMIN, Permission::ADMIN),
    ];

    fn to_zk(self) -> Permission {
        Self::ZK
            .into_iter()
            .filter(|(ours, _)| self.has(*ours))
            .fold(Permission::NONE, |all, (_, zk)| all | zk)
    }

    fn from_zk(permission: Permission) -> Perms {
        Self::ZK
            .into_iter()
            .filter(|(_, zk)| permission.has(*zk))
            .fold(Perms(0), |all, (ours, _)| all | ours)
    }
}

impl std::ops::BitOr for Perms {
    type Output = Perms;
    fn bitor(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }
}

/// ZooKeeper's short form, as `zkCli.sh getAcl` prints it: `cdrwa`, `r`, `cdr`.
impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (perm, name) in Perms::NAMES {
            if self.has(perm) {
                write!(f, "{name}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Perms({self})")
    }
}

/// An ACL: each identity once, with all its rights. Two ACLs that grant the same are
/// equal, whatever the order or repetition ZooKeeper returned them in.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AclSet(BTreeMap<AclId, Perms>);

impl AclSet {
    /// Grants `perms` to each of `ids`, on top of what this set grants.
    #[must_use]
    pub fn grant<'a>(mut self, ids: impl IntoIterator<Item = &'a AclId>, perms: Perms) -> AclSet {
        for id in ids {
            let entry = self.0.entry(id.clone()).or_insert(Perms(0));
            *entry = *entry | perms;
        }
        self
    }

    /// The rights of `id` in this set (none when absent).
    pub fn perms_of(&self, id: &AclId) -> Option<Perms> {
        self.0.get(id).copied()
    }

    /// The identities named.
    pub fn ids(&self) -> impl Iterator<Item = &AclId> {
        self.0.keys()
    }

    /// The ACL in zookeeper-client's form.
    pub fn to_zk(&self) -> Vec<Acl> {
        self.0
            .iter()
            .map(|(id, perms)| Acl::new(perms.to_zk(), id.auth_id()))
            .collect()
    }

    /// An ACL read from ZooKeeper.
    pub fn from_zk(acl: &[Acl]) -> AclSet {
        acl.iter().fold(AclSet::default(), |set, entry| {
            let id = AclId::new(entry.scheme(), entry.auth_id().id());
            set.grant([&id], Perms::from_zk(entry.permission()))
        })
    }
}

/// `world:anyone:r, digest:corral:<hash>:cdrwa`: ids elided as in [`AclId`]'s `Display`.
impl fmt::Display for AclSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(id, p)| format!("{id}:{p}")).collect();
        f.write_str(&parts.join(", "))
    }
}

impl fmt::Debug for AclSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AclSet[{self}]")
    }
}

/// corral's znodes whose ACL does not depend on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// The chroot, and any ancestor of it corral creates.
    Chroot,
    /// `/nodes`: one directory per provisioned node.
    Nodes,
    /// `/join`: agents not yet provisioned ask here.
    Join,
    /// `/leader`: the election.
    Leader,
    /// `/leases`: one directory per node.
    Leases,
    /// `/reports`: one directory per node.
    Reports,
    /// `/status`: the leader's summary (pending reasons, manifest problems).
    Status,
    /// `/cordons`: nodes an operator cordoned (`corral drain`), one child each.
    Cordons,
}

impl Base {
    /// Every base znode below the chroot, parents first.
    pub const BELOW_CHROOT: [Base; 7] = [
        Base::Nodes,
        Base::Join,
        Base::Leader,
        Base::Leases,
        Base::Reports,
        Base::Status,
        Base::Cordons,
    ];

    /// The znode's path below the chroot; `None` for the chroot itself.
    pub fn path(self) -> Option<&'static str> {
        match self {
            Base::Chroot => None,
            Base::Nodes => Some("/nodes"),
            Base::Join => Some("/join"),
            Base::Leader => Some("/leader"),
            Base::Leases => Some("/leases"),
            Base::Reports => Some("/reports"),
            Base::Status => Some("/status"),
            Base::Cordons => Some("/cordons"),
        }
    }
}

/// Who gets rights: nobody in particular (open), or the controller's identity and each
/// node's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// No identities: anyone may do anything. For development only; corral warns.
    Open,
    /// The controller's identity (all of the ids its session authenticated with).
    Secured {
        /// The controller's ids.
        controller: Vec<AclId>,
    },
}

impl Policy {
    /// The policy of a controller that authenticated as `controller`: open without ids.
    pub fn of(controller: &[AclId]) -> Policy {
        if controller.is_empty() {
            Policy::Open
        } else {
            Policy::Secured {
                controller: controller.to_vec(),
            }
        }
    }

    fn anyone_all() -> AclSet {
        AclSet::default().grant([&AclId::anyone()], Perms::ALL)
    }

    fn controller_all(controller: &[AclId]) -> AclSet {
        AclSet::default().grant(controller, Perms::ALL)
    }

    /// The ACL of a base znode.
    pub fn base(&self, base: Base) -> AclSet {
        let Policy::Secured { controller } = self else {
            return Self::anyone_all();
        };
        let owned = Self::controller_all(controller);
        match base {
            // Agents read the leader's epoch; the names there are controllers'.
            Base::Leader => owned.grant([&AclId::anyone()], Perms::READ),
            // ACLs have no "any authenticated client": whoever may ask creates here, and
            // the controller provisions only names the identities file gives ids to.
            Base::Join => owned.grant([&AclId::anyone()], Perms::CREATE),
            Base::Chroot
            | Base::Nodes
            | Base::Leases
            | Base::Reports
            | Base::Status
            | Base::Cordons => owned,
        }
    }

    /// The ACL of a controller's election znode `/leader/c-…`.
    pub fn election(&self) -> AclSet {
        self.base(Base::Leader)
    }

    /// The ACL of `/nodes/<node>`: the node's agent writes its registration there and
    /// creates (and deletes) the ephemeral `agent` below, and nothing else.
    pub fn node_dir(&self, node_ids: &[AclId]) -> AclSet {
        match self {
            Policy::Open => Self::anyone_all(),
            Policy::Secured { controller } => Self::controller_all(controller).grant(
                node_ids,
                Perms::READ | Perms::WRITE | Perms::CREATE | Perms::DELETE,
            ),
        }
    }

    /// The ACL of `/leases/<node>` and of each lease below: only the controller writes; the
    /// node's agent, and nobody else, reads (leases hold env values).
    pub fn leases(&self, node_ids: &[AclId]) -> AclSet {
        match self {
            Policy::Open => Self::anyone_all(),
            Policy::Secured { controller } => {
                Self::controller_all(controller).grant(node_ids, Perms::READ)
            }
        }
    }

    /// The ACL of `/reports/<node>`: the node's agent writes its reports there, the
    /// controller reads them.
    pub fn reports(&self, node_ids: &[AclId]) -> AclSet {
        match self {
            Policy::Open => Self::anyone_all(),
            Policy::Secured { controller } => {
                Self::controller_all(controller).grant(node_ids, Perms::READ | Perms::WRITE)
            }
        }
    }
}

/// The ACL of an agent's `/nodes/<node>/agent`, the ephemeral znode that says it is alive,
/// made by an agent with `own` ids (none when open). It holds nothing: anyone may read it,
/// so that the controller reads its stat with the others' in one request.
pub fn registration(own: &[AclId]) -> AclSet {
    if own.is_empty() {
        Policy::anyone_all()
    } else {
        AclSet::default()
            .grant(own, Perms::ALL)
            .grant([&AclId::anyone()], Perms::READ)
    }
}

/// The ACL of a join request `/join/<node>`, made by an agent with `own` ids (none when
/// open). Nobody reads it; the controller deletes it through its rights on `/join`.
pub fn join_request(own: &[AclId]) -> AclSet {
    if own.is_empty() {
        Policy::anyone_all()
    } else {
        AclSet::default().grant(own, Perms::ALL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> Vec<AclId> {
        vec![AclId::digest("controller", "pw")]
    }

    fn node_a() -> Vec<AclId> {
        vec![AclId::parse("x509:CN=node-a,O=corral-agents").unwrap()]
    }

    #[test]
    fn digest_ids_are_zookeepers() {
        // From ZooKeeper's DigestAuthenticationProvider: super:test is the documented example.
        assert_eq!(
            AclId::digest("super", "test").to_acl_string(),
            "digest:super:D/InIHSb7yEEbrWz8b9l71RjZJU="
        );
        let id = AclId::parse("digest:super:D/InIHSb7yEEbrWz8b9l71RjZJU=").unwrap();
        assert_eq!(id, AclId::digest("super", "test"));
        assert_eq!(
            id.to_string(),
            "digest:super:<hash>",
            "Display elides the hash"
        );
        assert!(!format!("{id:?}").contains("D/In"), "Debug elides the hash");
    }

    #[test]
    fn malformed_ids_are_refused_without_echoing_a_password() {
        let error = AclId::parse("digest:node-a:hunter2").unwrap_err();
        assert!(error.contains("corral zk digest"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        assert!(AclId::parse("x509:node-a").is_err(), "a DN has attributes");
        assert!(AclId::parse("ip:10.0.0.1").unwrap_err().contains("ip"));
        assert!(AclId::parse("world:anyone").is_err());
        assert!(AclId::parse("nothing").is_err());
    }

    #[test]
    fn node_placeholders_are_replaced() {
        let id = AclId::parse("x509:CN={node},O=corral-agents").unwrap();
        assert_eq!(
            id.for_node("node-a").to_acl_string(),
            "x509:CN=node-a,O=corral-agents"
        );
    }

    #[test]
    fn open_means_anyone_may_do_anything() {
        let open = Policy::Open;
        for acl in [
            open.base(Base::Leader),
            open.base(Base::Status),
            open.node_dir(&[]),
            open.leases(&node_a()),
            open.reports(&node_a()),
        ] {
            assert_eq!(acl.perms_of(&AclId::anyone()), Some(Perms::ALL), "{acl}");
            assert_eq!(acl.ids().count(), 1);
        }
    }

    #[test]
    fn only_the_controller_writes_its_znodes_and_nothing_secret_is_world_readable() {
        let policy = Policy::Secured {
            controller: controller(),
        };
        let anyone = AclId::anyone();
        for base in [
            Base::Chroot,
            Base::Nodes,
            Base::Leases,
            Base::Reports,
            Base::Status,
            Base::Cordons,
        ] {
            let acl = policy.base(base);
            assert_eq!(acl.perms_of(&controller()[0]), Some(Perms::ALL), "{base:?}");
            assert_eq!(acl.perms_of(&anyone), None, "{base:?}: {acl}");
        }
        assert_eq!(
            policy.base(Base::Leader).perms_of(&anyone),
            Some(Perms::READ)
        );
        assert_eq!(policy.election(), policy.base(Base::Leader));
        assert_eq!(
            policy.base(Base::Join).perms_of(&anyone),
            Some(Perms::CREATE)
        );
    }

    #[test]
    fn a_node_reads_its_leases_writes_its_reports_and_registers_itself() {
        let policy = Policy::Secured {
            controller: controller(),
        };
        let node = &node_a()[0];
        let leases = policy.leases(&node_a());
        assert_eq!(leases.perms_of(node), Some(Perms::READ));
        assert_eq!(leases.perms_of(&controller()[0]), Some(Perms::ALL));
        assert_eq!(leases.perms_of(&AclId::anyone()), None);
        assert_eq!(
            policy.reports(&node_a()).perms_of(node),
            Some(Perms::READ | Perms::WRITE)
        );
        let reports = policy.reports(&node_a());
        assert!(!reports.perms_of(node).unwrap().has(Perms::ADMIN));
        let dir = policy.node_dir(&node_a());
        assert_eq!(
            dir.perms_of(node),
            Some(Perms::READ | Perms::WRITE | Perms::CREATE | Perms::DELETE)
        );
        assert!(!dir.perms_of(node).unwrap().has(Perms::ADMIN));
        let alive = registration(&node_a());
        assert_eq!(alive.perms_of(node), Some(Perms::ALL));
        assert_eq!(alive.perms_of(&AclId::anyone()), Some(Perms::READ));
        assert_eq!(alive.perms_of(&controller()[0]), None);
    }

    #[test]
    fn an_identity_shared_with_the_controller_is_merged_not_repeated() {
        let policy = Policy::Secured {
            controller: controller(),
        };
        let leases = policy.leases(&controller());
        assert_eq!(leases.to_zk().len(), 1);
        assert_eq!(leases.perms_of(&controller()[0]), Some(Perms::ALL));
    }

    #[test]
    fn acls_round_trip_through_zookeeper_form_and_compare_as_sets() {
        let policy = Policy::Secured {
            controller: controller(),
        };
        let acl = policy.node_dir(&node_a());
        let mut zk = acl.to_zk();
        zk.reverse();
        assert_eq!(AclSet::from_zk(&zk), acl);
        assert_ne!(policy.leases(&node_a()), acl);
        assert_eq!(
            policy.base(Base::Leader).to_string(),
            "digest:controller:<hash>:cdrwa, world:anyone:r"
        );
    }

    #[test]
    fn join_requests_belong_to_their_creator() {
        assert_eq!(
            join_request(&node_a()).perms_of(&node_a()[0]),
            Some(Perms::ALL)
        );
        assert_eq!(
            join_request(&[]).perms_of(&AclId::anyone()),
            Some(Perms::ALL)
        );
    }
}
