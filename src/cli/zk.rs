//! The ZooKeeper options shared by `controller`, `agent`, `run` and `status`, and
//! `corral zk`, the helpers for setting up identities.
//!
//! Credentials come from a file (`--zookeeper-credentials-file`) or the environment
//! (`CORRAL_ZK_CREDENTIALS=user:password`), never from the command line, where other users
//! could read them in the process list. Digest credentials need TLS, or
//! `--zookeeper-insecure` to send them in clear text.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::lease::StoreError;
use crate::lease::acl::AclId;
use crate::lease::zookeeper::{Credentials, TlsFiles, ZkConfig, ZkStore};

/// The environment variable holding `user:password`.
pub const CREDENTIALS_ENV: &str = "CORRAL_ZK_CREDENTIALS";

/// How to reach ZooKeeper.
#[derive(Debug, Clone, clap::Args)]
pub struct ZkArgs {
    /// ZooKeeper servers, host:port,host:port. Without it, the embedded store is used.
    #[arg(long = "zookeeper", env = "CORRAL_ZOOKEEPER", value_name = "HOSTS")]
    pub hosts: Option<String>,
    /// The znode under which corral keeps everything.
    #[arg(
        long = "zookeeper-chroot",
        default_value = "/corral",
        value_name = "PATH"
    )]
    pub chroot: String,
    /// Session timeout in seconds. A frozen ensemble leader takes about 10 s to be replaced,
    /// so much shorter sessions expire in ordinary failovers.
    #[arg(long, default_value_t = 15.0, value_name = "SECONDS", value_parser = super::seconds::session_timeout)]
    pub session_timeout: f64,
    /// A file holding the digest credentials, user:password (or set CORRAL_ZK_CREDENTIALS).
    #[arg(
        long = "zookeeper-credentials-file",
        env = "CORRAL_ZK_CREDENTIALS_FILE",
        value_name = "FILE"
    )]
    pub credentials_file: Option<PathBuf>,
    /// PEM CA certificates: connect with TLS and trust these.
    #[arg(long = "zookeeper-tls-ca", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that require one (with --zookeeper-tls-key).
    #[arg(long = "zookeeper-tls-cert", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long = "zookeeper-tls-key", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Send digest credentials without TLS, in clear text (loopback, tests). Without it,
    /// credentials without --zookeeper-tls-ca are refused.
    #[arg(long = "zookeeper-insecure", env = "CORRAL_ZK_INSECURE")]
    pub insecure: bool,
}

impl ZkArgs {
    /// The store's configuration, or `None` without `--zookeeper`.
    ///
    /// # Errors
    /// The credentials file cannot be read or does not hold user:password, credentials
    /// come without TLS or --zookeeper-insecure, or the chroot is not an absolute path.
    pub fn config(&self) -> anyhow::Result<Option<ZkConfig>> {
        let Some(hosts) = &self.hosts else {
            return Ok(None);
        };
        if !self.chroot.starts_with('/') || self.chroot.contains("..") {
            bail!(
                "--zookeeper-chroot {:?} must be an absolute znode path",
                self.chroot
            );
        }
        let mut config = ZkConfig::new(hosts);
        config.chroot.clone_from(&self.chroot);
        config.session_timeout = super::seconds::duration(self.session_timeout);
        config.credentials = match (&self.credentials_file, std::env::var(CREDENTIALS_ENV)) {
            (Some(file), _) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading the credentials file {}", file.display()))?;
                Some(
                    Credentials::parse(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
                )
            }
            (None, Ok(text)) => Some(
                Credentials::parse(&text).map_err(|e| anyhow::anyhow!("{CREDENTIALS_ENV}: {e}"))?,
            ),
            (None, Err(_)) => None,
        };
        config.tls = self.tls_ca.as_ref().map(|ca| TlsFiles {
            ca: ca.clone(),
            identity: self.tls_cert.clone().zip(self.tls_key.clone()),
        });
        config.insecure = self.insecure;
        if config.credentials.is_some() && config.tls.is_none() && !config.insecure {
            bail!(StoreError::Insecure);
        }
        Ok(Some(config))
    }
}

/// `corral zk`: helpers for ZooKeeper identities.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: ZkCommand,
}

/// The `corral zk` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ZkCommand {
    /// Read user:password on standard input and print its digest ACL id,
    /// digest:user:base64(sha1(user:password)), for the file of --agent-identities.
    Digest,
    /// Connect with these options and print the ACL ids ZooKeeper knows this client by
    /// (ZooKeeper 3.7 or later): with a client certificate, its subject as ZooKeeper
    /// writes it, e.g. x509:CN=node-a,O=corral-agents.
    Whoami {
        /// How to reach ZooKeeper, and as whom.
        #[command(flatten)]
        zk: ZkArgs,
    },
}

/// Runs `corral zk`. Returns the exit code.
///
/// # Errors
/// Standard input does not hold user:password, or ZooKeeper cannot be reached.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    match &args.command {
        ZkCommand::Digest => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading user:password from standard input")?;
            let credentials = Credentials::parse(&line).map_err(|e| {
                anyhow::anyhow!(
                    "standard input: {e} (e.g. printf '%s' node-a:secret | corral zk digest)"
                )
            })?;
            writeln!(
                std::io::stdout(),
                "{}",
                credentials.acl_id().to_acl_string()
            )?;
            Ok(0)
        }
        ZkCommand::Whoami { zk } => {
            let Some(config) = zk.config()? else {
                bail!("corral zk whoami needs --zookeeper");
            };
            let ids: Vec<AclId> = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(ZkStore::whoami(&config))?;
            if ids.is_empty() {
                eprintln!("ZooKeeper knows this client by no identity (world:anyone only)");
                return Ok(1);
            }
            let mut out = std::io::stdout().lock();
            for id in ids {
                writeln!(out, "{}", id.to_acl_string())?;
            }
            Ok(0)
        }
    }
}
