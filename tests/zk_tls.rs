//! The ZooKeeper store over TLS, against a real TLS-enabled ZooKeeper server: a store that
//! trusts the server's CA and shows a client certificate connects, leads, writes and reads a
//! lease (and so does `corral status` with the `--zookeeper-tls-*` options); a store that
//! trusts another CA, one without a client certificate, and one that does not speak TLS at
//! all are refused, and write nothing. With a certificate per node, each node's znodes are
//! bound to its certificate's subject: another node's certificate reads nothing there.
//!
//! Every test generates its own certificates with `openssl` (a test CA, a server certificate
//! for 127.0.0.1 and localhost, a client certificate of the same CA, and an unrelated CA) and
//! starts its own standalone server on loopback ports with `ssl.clientAuth=need`.
//!
//! Needs `java`, `openssl` and the Debian `zookeeper` package (`/usr/share/java/zookeeper.jar`
//! and the Netty jars in `/usr/share/java`). Root is not required.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::zk::{ZkCluster, ZkOptions};
use tempfile::TempDir;
use zookeeper_client::{Client, TlsOptions};

use corral::alloc::Res;
use corral::alloc::fixtures::mk_lease;
use corral::controller::provision;
use corral::lease::acl::AclId;
use corral::lease::identities::AgentIdentities;
use corral::lease::zookeeper::{Role, TlsFiles, ZkConfig, ZkStore};
use corral::lease::{FORMAT_VERSION, Lease, LeaseChange, LeaseStore, NodeRegistration, StoreError};

/// How long a refused connection may take: the store's operation timeout.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Slack on top of [`REFUSAL_TIMEOUT`] for a loaded machine.
const SLACK: Duration = Duration::from_secs(2);

/// Jars TLS needs on top of Debian's `zookeeper.jar` manifest, which lists Netty's buffer,
/// common, handler and transport jars but not these two (`SslHandler` is a codec; the
/// transport needs the resolver).
const NETTY_JARS: &[&str] = &[
    "/usr/share/java/netty-codec.jar",
    "/usr/share/java/netty-resolver.jar",
];

/// `openssl` sections of the certificates: all X.509 v3, with the extensions rustls wants.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:corral-test-client
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// The client certificate's subject, as the server logs it once it authenticated the client.
const CLIENT_SUBJECT: &str = "CN=corral-test-client";

/// Certificates and keys generated for one test, in PEM files of a temporary directory that
/// goes with it.
struct Pki {
    dir: TempDir,
}

impl Pki {
    /// Generates a test CA, a server certificate (and key, in one file for ZooKeeper's PEM
    /// key store) and a client certificate signed by it, and an unrelated CA.
    fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("corral-zk-tls-")
            .tempdir()
            .unwrap();
        let pki = Pki { dir };
        fs::write(pki.path("openssl.cnf"), OPENSSL_CNF).unwrap();
        for name in ["ca", "other-ca", "server", "client"] {
            pki.openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &format!("{name}.key"),
            ]);
        }
        for (name, subject) in [
            ("ca", "/CN=corral-test-ca"),
            ("other-ca", "/CN=corral-other-ca"),
        ] {
            pki.openssl(&[
                "req",
                "-x509",
                "-new",
                "-config",
                "openssl.cnf",
                "-extensions",
                "ca",
                "-key",
                &format!("{name}.key"),
                "-subj",
                subject,
                "-days",
                "2",
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        for (serial, name, subject) in [
            ("1001", "server", "/CN=127.0.0.1"),
            ("1002", "client", &format!("/{CLIENT_SUBJECT}")),
        ] {
            pki.openssl(&[
                "req",
                "-new",
                "-config",
                "openssl.cnf",
                "-key",
                &format!("{name}.key"),
                "-subj",
                subject,
                "-out",
                &format!("{name}.csr"),
            ]);
            pki.openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "2",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                name,
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        let keystore = [
            fs::read_to_string(pki.path("server.pem")).unwrap(),
            fs::read_to_string(pki.path("server.key")).unwrap(),
        ]
        .concat();
        fs::write(pki.server_keystore(), keystore).unwrap();
        pki
    }

    /// Another client certificate of the test CA, with `subject` (e.g. `/O=corral/CN=x`);
    /// returns its certificate and key.
    fn client(&self, name: &str, subject: &str) -> (PathBuf, PathBuf) {
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ]);
        self.openssl(&[
            "req",
            "-new",
            "-config",
            "openssl.cnf",
            "-key",
            &key,
            "-subj",
            subject,
            "-out",
            &csr,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "client",
            "-out",
            &cert,
        ]);
        (self.path(&cert), self.path(&key))
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (is it installed?): {e}"));
        assert!(
            output.status.success(),
            "openssl {}: {}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA that signed the server and client certificates.
    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A CA that signed nothing here.
    fn other_ca(&self) -> PathBuf {
        self.path("other-ca.pem")
    }

    /// The server's certificate followed by its key.
    fn server_keystore(&self) -> PathBuf {
        self.path("server-keystore.pem")
    }

    /// The client certificate and its key.
    fn client_identity(&self) -> (PathBuf, PathBuf) {
        (self.path("client.pem"), self.path("client.key"))
    }

    fn tls(&self, ca: PathBuf, with_identity: bool) -> TlsFiles {
        TlsFiles {
            ca,
            identity: with_identity.then(|| self.client_identity()),
        }
    }
}

/// A standalone server with a TLS-only secure client port that trusts the test CA and needs
/// a client certificate (plus the plain client port the harness checks it with). Panics
/// unless its log shows the secure port served by Netty with TLS.
fn tls_server(pki: &Pki) -> ZkCluster {
    for jar in NETTY_JARS {
        assert!(
            Path::new(jar).exists(),
            "{jar} not found; install the Debian zookeeper package"
        );
    }
    let zk = ZkCluster::standalone_with(&ZkOptions {
        config_lines: vec![
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory".into(),
            format!("ssl.keyStore.location={}", pki.server_keystore().display()),
            "ssl.keyStore.type=PEM".into(),
            format!("ssl.trustStore.location={}", pki.ca().display()),
            "ssl.trustStore.type=PEM".into(),
            "ssl.clientAuth=need".into(),
            "authProvider.x509=org.apache.zookeeper.server.auth.X509AuthenticationProvider".into(),
        ],
        classpath: NETTY_JARS.iter().map(PathBuf::from).collect(),
        secure_client_port: true,
        ..ZkOptions::default()
    });
    let secure = format!("secure: true on addr /{}", zk.secure_client_addr(1));
    assert!(
        server_log(&zk).contains(&secure),
        "the server log does not say {secure:?}\n{}",
        zk.log_tail(1, 40)
    );
    zk
}

fn server_log(zk: &ZkCluster) -> String {
    fs::read_to_string(zk.dir(1).join("server.log")).unwrap_or_default()
}

fn chroot(test: &str) -> String {
    format!("/corral-tls-{}-{test}", std::process::id())
}

/// The store's configuration for the secure port, with a short operation timeout.
fn config(zk: &ZkCluster, chroot: &str, tls: Option<TlsFiles>) -> ZkConfig {
    let mut config = ZkConfig::new(&zk.secure_client_addr(1));
    config.chroot = chroot.to_string();
    config.session_timeout = Duration::from_secs(4);
    config.operation_timeout = REFUSAL_TIMEOUT;
    config.tls = tls;
    config
}

/// Whether `path` exists, asked over TLS by a trusted client with a certificate, straight
/// through zookeeper-client rather than the store (which would create its chroot).
async fn exists_for_trusted_client(zk: &ZkCluster, pki: &Pki, path: &str) -> bool {
    let (cert, key) = pki.client_identity();
    let tls = TlsOptions::default()
        .with_pem_ca(&fs::read_to_string(pki.ca()).unwrap())
        .unwrap()
        .with_pem_identity(
            &fs::read_to_string(cert).unwrap(),
            &fs::read_to_string(key).unwrap(),
        )
        .unwrap();
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        Client::connector()
            .with_connection_timeout(Duration::from_secs(5))
            .with_tls(tls)
            .secure_connect(&zk.secure_client_addr(1)),
    )
    .await
    .expect("the trusted client connects in time")
    .expect("the trusted client connects");
    client.check_stat(path).await.unwrap().is_some()
}

/// Connects with `tls` and asserts that the connection is refused within the operation
/// timeout and that the chroot, which a successful connect creates first, does not exist.
async fn assert_refused(zk: &ZkCluster, pki: &Pki, test: &str, tls: Option<TlsFiles>) -> String {
    let chroot = chroot(test);
    let started = Instant::now();
    let with_tls = tls.is_some();
    let result = ZkStore::connect(config(zk, &chroot, tls)).await;
    let took = started.elapsed();
    let error = match result {
        Ok(store) => panic!("{test}: the store connected: {store:?}"),
        Err(e) => e.to_string(),
    };
    eprintln!("{test}: refused after {took:?}: {error}");
    if with_tls {
        assert!(
            error.contains("over TLS") && error.contains("--zookeeper-tls-ca"),
            "{test}: the error points at the TLS settings: {error}"
        );
    }
    assert!(
        took < REFUSAL_TIMEOUT + SLACK,
        "{test}: the refusal took {took:?}, more than the operation timeout {REFUSAL_TIMEOUT:?}"
    );
    assert!(
        !exists_for_trusted_client(zk, pki, &chroot).await,
        "{test}: {chroot} was created although the connection was refused"
    );
    error
}

fn registration(name: &str) -> NodeRegistration {
    NodeRegistration {
        version: FORMAT_VERSION,
        name: name.into(),
        labels: BTreeMap::new(),
        capacity: Res::new(2000, 1 << 30, 1000),
        cgroup_mode: "v2".into(),
        agent_version: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn store_and_status_connect_over_tls_with_a_client_certificate() {
    let pki = Pki::generate();
    let zk = tls_server(&pki);
    let chroot = chroot("trusted");

    let store = ZkStore::connect(config(&zk, &chroot, Some(pki.tls(pki.ca(), true))))
        .await
        .expect("a store that trusts the CA and shows a certificate connects over TLS");
    assert!(
        server_log(&zk).contains(&format!(
            "Authenticated Id '{CLIENT_SUBJECT}' for Scheme 'x509'"
        )),
        "the server did not authenticate the client certificate\n{}",
        zk.log_tail(1, 40)
    );
    let epoch = store.campaign("tls-controller").await.unwrap();
    let lease = mk_lease("n1", "web", 0, epoch);
    store
        .write_leases(epoch, &[LeaseChange::Put(Box::new(lease.clone()))])
        .await
        .unwrap();
    store.register_node(&registration("n1")).await.unwrap();
    assert_eq!(store.leases().await.unwrap(), std::slice::from_ref(&lease));
    assert_eq!(store.nodes().await.unwrap(), [registration("n1")]);

    // The same over the command line, while the store keeps n1 registered.
    let (cert, key) = pki.client_identity();
    let hosts = zk.secure_client_addr(1);
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["status", "-o", "json", "--zookeeper", &hosts])
        .args(["--zookeeper-chroot", &chroot])
        .arg("--zookeeper-tls-ca")
        .arg(pki.ca())
        .arg("--zookeeper-tls-cert")
        .arg(cert)
        .arg("--zookeeper-tls-key")
        .arg(key)
        .env_remove("CORRAL_ZOOKEEPER")
        .env_remove("CORRAL_ZK_CREDENTIALS")
        .env_remove("CORRAL_ZK_CREDENTIALS_FILE")
        .output()
        .unwrap();
    eprintln!("corral status over TLS took {:?}", started.elapsed());
    assert!(
        output.status.success(),
        "corral status over TLS failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let replicas = status["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 1, "{status:#}");
    let read: Lease = serde_json::from_value(replicas[0]["lease"].clone()).unwrap();
    assert_eq!(read, lease);
    assert_eq!(status["nodes"][0]["name"], "n1", "{status:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn store_that_trusts_another_ca_is_refused() {
    let pki = Pki::generate();
    let zk = tls_server(&pki);
    let error = assert_refused(&zk, &pki, "other-ca", Some(pki.tls(pki.other_ca(), true))).await;
    assert!(error.contains("connect to"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_without_a_certificate_is_refused_when_the_server_needs_one() {
    let pki = Pki::generate();
    let zk = tls_server(&pki);
    let error = assert_refused(&zk, &pki, "no-cert", Some(pki.tls(pki.ca(), false))).await;
    assert!(error.contains("connect to"), "{error}");
    assert!(
        server_log(&zk).contains("Empty client certificate chain"),
        "the server did not refuse the missing certificate\n{}",
        zk.log_tail(1, 40)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_client_cannot_talk_to_the_secure_port() {
    let pki = Pki::generate();
    let zk = tls_server(&pki);
    let error = assert_refused(&zk, &pki, "plain", None).await;
    assert!(error.contains("connect to"), "{error}");
}

/// A certificate per node: the controller knows the agents as `x509:CN={node},O=corral-agents`,
/// provisions each node that asks for that node's subject, and another node's certificate
/// can neither read its leases nor use znodes provisioned for a name it asked for.
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_per_node_binds_each_nodes_znodes_to_its_subject() {
    let pki = Pki::generate();
    let zk = tls_server(&pki);
    let chroot = chroot("per-node");
    let cert = |name: &str, subject: &str, role: Role| {
        let mut config = config(&zk, &chroot, None);
        config.tls = Some(TlsFiles {
            ca: pki.ca(),
            identity: Some(pki.client(name, subject)),
        });
        config.role = role;
        config
    };
    let mut controller_config = cert(
        "controller",
        "/O=corral/CN=corral-controller",
        Role::Controller,
    );
    controller_config.agents =
        AgentIdentities::parse("ids.yaml", "\"*\": [\"x509:CN={node},O=corral-agents\"]").unwrap();
    let controller = ZkStore::connect(controller_config).await.unwrap();
    assert_eq!(
        controller.identity(),
        [AclId::parse("x509:CN=corral-controller,O=corral").unwrap()]
    );
    let epoch = controller.campaign("c1").await.unwrap();
    let a_config = cert("node-a", "/O=corral-agents/CN=node-a", Role::Agent);
    let a = ZkStore::connect(a_config.clone()).await.unwrap();
    let b = ZkStore::connect(cert("node-b", "/O=corral-agents/CN=node-b", Role::Agent))
        .await
        .unwrap();
    assert_eq!(
        a.identity(),
        [AclId::parse("x509:CN=node-a,O=corral-agents").unwrap()],
        "the subject as ZooKeeper writes it, most specific first"
    );
    for (store, node) in [(&a, "node-a"), (&b, "node-b"), (&b, "fake")] {
        let asked = store.register_node(&registration(node)).await;
        assert!(
            matches!(asked, Err(StoreError::NotProvisioned { .. })),
            "{asked:?}"
        );
    }
    let requests = controller.join_requests().await.unwrap();
    assert_eq!(requests, ["fake", "node-a", "node-b"]);
    let plan = provision::plan_joins(&requests, controller.agent_identities(), false, 32);
    let (_, failed) = controller.provision_nodes(&plan.serve).await;
    assert!(failed.is_empty(), "{failed:?}");
    a.register_node(&registration("node-a")).await.unwrap();
    b.register_node(&registration("node-b")).await.unwrap();
    let fake = b.register_node(&registration("fake")).await;
    assert!(
        matches!(
            &fake,
            Err(StoreError::Zk {
                source: zookeeper_client::Error::NoAuth,
                ..
            })
        ),
        "a forged request gave node-b nothing: {fake:?}"
    );
    let lease = mk_lease("node-a", "web", 0, epoch);
    controller
        .write_leases(epoch, &[LeaseChange::Put(Box::new(lease.clone()))])
        .await
        .unwrap();
    assert_eq!(a.node_leases("node-a").await.unwrap(), [lease]);
    let other = b.node_leases("node-a").await;
    assert!(
        matches!(
            &other,
            Err(StoreError::Zk {
                source: zookeeper_client::Error::NoAuth,
                ..
            })
        ),
        "{other:?}"
    );
    assert_eq!(
        controller.nodes().await.unwrap(),
        [registration("node-a"), registration("node-b")]
    );

    // What an admin runs to learn the id to put in the identities file.
    let (cert, key) = a_config.tls.unwrap().identity.unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["zk", "whoami", "--zookeeper", &zk.secure_client_addr(1)])
        .arg("--zookeeper-tls-ca")
        .arg(pki.ca())
        .arg("--zookeeper-tls-cert")
        .arg(cert)
        .arg("--zookeeper-tls-key")
        .arg(key)
        .env_remove("CORRAL_ZOOKEEPER")
        .env_remove("CORRAL_ZK_CREDENTIALS")
        .env_remove("CORRAL_ZK_CREDENTIALS_FILE")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "x509:CN=node-a,O=corral-agents\n"
    );
}
