//! The ZooKeeper options shared by `controller`, `agent`, `run` and `status`.
//!
//! Credentials come from a file (`--zookeeper-credentials-file`) or the environment
//! (`CORRAL_ZK_CREDENTIALS=user:password`), never from the command line, where other users
//! could read them in the process list.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::lease::zookeeper::{Credentials, TlsFiles, ZkConfig};

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
    #[arg(long, default_value_t = 15.0, value_name = "SECONDS")]
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
}

impl ZkArgs {
    /// The store's configuration, or `None` without `--zookeeper`.
    ///
    /// # Errors
    /// The credentials file cannot be read or does not hold user:password, or the chroot is
    /// not an absolute path.
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
        config.session_timeout = Duration::from_secs_f64(self.session_timeout.clamp(1.0, 600.0));
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
        if config.credentials.is_none() {
            tracing::warn!(
                "no ZooKeeper credentials: corral's znodes are writable by anyone who reaches the ensemble"
            );
        }
        config.tls = self.tls_ca.as_ref().map(|ca| TlsFiles {
            ca: ca.clone(),
            identity: self.tls_cert.clone().zip(self.tls_key.clone()),
        });
        Ok(Some(config))
    }
}
