//! Configuration: a TOML file, overridden by environment variables and flags (clap derive; the
//! doc comments are `sealroom serve --help`). Passed around as a value, never a global.

use anyhow::{bail, Context};
use clap::Args;
use sealroom_policy::{Levels, NetworkRules};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags shared by every command that touches the data directory.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Data directory (database, keys, certificates, admin socket).
    #[arg(
        long,
        env = "SEALROOM_DATA_DIR",
        default_value = "./sealroom-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// TOML configuration file (default: <data-dir>/sealroom.toml if it exists).
    #[arg(long, env = "SEALROOM_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

/// `sealroom serve` flags. Each overrides the same setting in the TOML file.
#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// Address for HTTPS/HTTP (web client, API, WebSocket). Non-loopback addresses need TLS.
    /// [default: 127.0.0.1:8443]
    #[arg(long, env = "SEALROOM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Public URL users open, used as the WebAuthn origin and RP id and for the Host and Origin
    /// checks. [default: http://localhost:<port> on loopback, https://<listen> with TLS]
    #[arg(long, env = "SEALROOM_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "SEALROOM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "SEALROOM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Generate a local CA (name-constrained to the public host; its key is not kept) and a
    /// server certificate in the data directory, and print how to trust the CA.
    #[arg(long, env = "SEALROOM_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,
    /// Name of the first admin created on an empty database. [default: admin]
    #[arg(long, env = "SEALROOM_FIRST_ADMIN")]
    pub first_admin: Option<String>,
    /// UDP address for media (ICE, DTLS-SRTP). [default: the listen address's IP and port]
    #[arg(long, env = "SEALROOM_MEDIA_LISTEN")]
    pub media_listen: Option<SocketAddr>,
    /// Address clients send media to, if not the media listen address (1:1 NAT in front).
    #[arg(long, env = "SEALROOM_MEDIA_ADVERTISE")]
    pub media_advertise: Option<SocketAddr>,
    /// Media shards, 1 to 64: each forwards its meetings on one core, with its own UDP port
    /// (the media port + k, advertised likewise). A meeting stays on one shard. [default: 1]
    #[arg(long, env = "SEALROOM_MEDIA_SHARDS")]
    pub media_shards: Option<usize>,
    /// Address ranges (CIDR, comma-separated) from which `internal` meetings may be joined.
    #[arg(long, env = "SEALROOM_INTERNAL_NETWORKS", value_delimiter = ',')]
    pub internal_networks: Option<Vec<ipnet::IpNet>>,
    /// Address ranges (CIDR, comma-separated) from which `restricted` meetings may be joined.
    #[arg(long, env = "SEALROOM_RESTRICTED_NETWORKS", value_delimiter = ',')]
    pub restricted_networks: Option<Vec<ipnet::IpNet>>,
    /// Address ranges never allowed at any level (deny wins over allow).
    #[arg(long, env = "SEALROOM_DENY_NETWORKS", value_delimiter = ',')]
    pub deny_networks: Option<Vec<ipnet::IpNet>>,
    /// Reverse proxies whose X-Forwarded-For is believed (CIDR, comma-separated).
    #[arg(long, env = "SEALROOM_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
    /// Login attempts per minute per source address. [default: 30]
    #[arg(long, env = "SEALROOM_LOGIN_PER_IP")]
    pub login_per_ip: Option<u32>,
    /// Enrolment attempts per minute per source address. [default: 20]
    #[arg(long, env = "SEALROOM_ENROL_PER_IP")]
    pub enrol_per_ip: Option<u32>,
    /// Join attempts per minute per source address. [default: 60]
    #[arg(long, env = "SEALROOM_JOIN_PER_IP")]
    pub join_per_ip: Option<u32>,
    /// Join attempts per minute per account. [default: 30]
    #[arg(long, env = "SEALROOM_JOIN_PER_ACCOUNT")]
    pub join_per_account: Option<u32>,
}

/// Rate limits: attempts per minute (with an equal burst) per source address and per account.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    pub login_per_ip: u32,
    pub enrol_per_ip: u32,
    pub join_per_ip: u32,
    pub join_per_account: u32,
    pub login_per_account: u32,
    pub enrol_per_account: u32,
    /// Not-found join refusals from one address within 10 minutes that are recorded as a
    /// suspected scan (again at 10x and 100x this count).
    pub scan_threshold: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            login_per_ip: 30,
            enrol_per_ip: 20,
            join_per_ip: 60,
            join_per_account: 30,
            login_per_account: 20,
            enrol_per_account: 20,
            scan_threshold: 10,
        }
    }
}

/// The TOML file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub media_listen: Option<SocketAddr>,
    pub media_advertise: Option<SocketAddr>,
    /// Media shards (1 to 64), each with its own UDP port: the media port + k. [default: 1]
    pub media_shards: Option<usize>,
    pub public_url: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_self_signed: Option<bool>,
    pub first_admin: Option<String>,
    pub rate_limits: RateLimits,
    pub levels: Option<Levels>,
    pub networks: NetworkRules,
    /// In local mode (loopback listener), a loopback client satisfies every level's ranges.
    /// [default: true]
    pub local_mode_loopback_is_internal: Option<bool>,
    pub session: SessionLimits,
    pub enrolment: EnrolmentLimits,
    /// Joining is allowed this many seconds before a meeting's start. [default: 600]
    pub early_join_secs: Option<i64>,
    /// An admitted participant whose signaling connection drops keeps its place (shown as
    /// reconnecting, media stopped) this long; the same device rejoining within it skips the
    /// lobby (every other admission check still applies). [default: 20]
    pub reconnect_grace_secs: Option<u64>,
    /// A media transport not connected this long after the first offer ends participation
    /// (`media_failed`), e.g. when every path comes from a network the level refuses.
    /// [default: 15]
    pub media_connect_timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionLimits {
    pub idle_secs: i64,
    pub absolute_secs: i64,
    /// An open WebSocket re-checks its session, device and user this often (revocations
    /// made without notifying the server, expiry).
    pub recheck_secs: u64,
    /// An open WebSocket is sent a protocol ping this often (browsers and WebSocket libraries
    /// answer it by themselves).
    pub ping_secs: u64,
    /// A WebSocket that sent nothing for this long, not even the answer to a ping, is
    /// treated as dropped: a connection that died without a close (a lost network, a
    /// sleeping laptop) can otherwise stay open on the server for many minutes. So is one
    /// that takes nothing the server sends for as long: a send waits at most this.
    pub silence_secs: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            idle_secs: 30 * 60,
            absolute_secs: 12 * 3600,
            recheck_secs: 20,
            ping_secs: 15,
            silence_secs: 45,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EnrolmentLimits {
    /// Lifetime of an enrolment link for members and organisers.
    pub expiry_secs: i64,
    /// Lifetime of an enrolment link for admins.
    pub admin_expiry_secs: i64,
    /// Lifetime of the first-admin link.
    pub first_admin_expiry_secs: i64,
}

impl Default for EnrolmentLimits {
    fn default() -> Self {
        EnrolmentLimits {
            expiry_secs: 4 * 3600,
            admin_expiry_secs: 3600,
            first_admin_expiry_secs: 30 * 60,
        }
    }
}

/// How the listener is secured.
#[derive(Debug, Clone)]
pub enum Tls {
    /// Plain HTTP; only allowed on loopback (local mode).
    None,
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    SelfSigned,
}

/// More media shards than this is a typo: each is a core's worth of forwarding.
const MAX_MEDIA_SHARDS: usize = 64;

/// The resolved configuration of a running server.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub media_listen: SocketAddr,
    pub media_advertise: Option<SocketAddr>,
    /// Media shards: meetings spread over this many SFU cores, shard k on the media port + k.
    pub media_shards: usize,
    /// Set explicitly; otherwise derived from the bound address at start.
    pub public_url: Option<String>,
    pub tls: Tls,
    pub first_admin: String,
    pub rate_limits: RateLimits,
    pub levels: Levels,
    pub networks: NetworkRules,
    pub session: SessionLimits,
    pub enrolment: EnrolmentLimits,
    pub early_join_secs: i64,
    pub reconnect_grace: std::time::Duration,
    pub media_connect_timeout: std::time::Duration,
    /// Adversarial tests only (debug builds, `SEALROOM_TEST_GHOSTS=name,name`): a lying server
    /// that admits these users and adds them to the MLS group but never announces them in the
    /// participant list. Clients must flag them from their own MLS state. Always empty in
    /// release builds.
    pub test_ghosts: Vec<String>,
}

impl Config {
    /// Local mode: plain HTTP on a loopback listener.
    pub fn local_mode(&self) -> bool {
        self.listen.ip().is_loopback() && matches!(self.tls, Tls::None)
    }

    /// Defaults for tests: port 0 on loopback, everything else as shipped.
    pub fn test_config(data_dir: PathBuf) -> Config {
        let mut c = Config::resolve(
            &DataArgs {
                data_dir,
                config: None,
            },
            &ServeArgs {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                ..ServeArgs::default()
            },
        )
        .expect("the shipped defaults are valid");
        c.levels.internal.networks.clear();
        c
    }

    /// Merge file, environment and flags (flags win), and validate.
    pub fn resolve(data: &DataArgs, flags: &ServeArgs) -> anyhow::Result<Config> {
        let file = load_file(data)?;
        let listen = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)));
        let tls = match (
            flags.tls_cert.clone().or(file.tls_cert.clone()),
            flags.tls_key.clone().or(file.tls_key.clone()),
            flags.tls_self_signed || file.tls_self_signed.unwrap_or(false),
        ) {
            (Some(cert), Some(key), false) => Tls::Files { cert, key },
            (None, None, true) => Tls::SelfSigned,
            (None, None, false) => Tls::None,
            (Some(_), Some(_), true) => {
                bail!("choose either --tls-cert/--tls-key or --tls-self-signed")
            }
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        if !listen.ip().is_loopback() && matches!(tls, Tls::None) {
            bail!(
                "refusing to listen on {listen} without TLS: a non-loopback address needs \
                 --tls-cert/--tls-key or --tls-self-signed"
            );
        }
        let public_url = flags.public_url.clone().or(file.public_url.clone());
        if let Some(u) = &public_url {
            let parsed = url::Url::parse(u).with_context(|| format!("public URL {u}"))?;
            if parsed.scheme() == "http" && !matches!(tls, Tls::None) {
                bail!("public URL {u} is http but TLS is configured");
            }
            if parsed.scheme() == "https" && matches!(tls, Tls::None) {
                bail!("public URL {u} is https but no TLS is configured");
            }
            if parsed.host_str().is_none() || parsed.path() != "/" {
                bail!("public URL {u} must be scheme://host[:port] with no path");
            }
        }
        let media_shards = flags.media_shards.or(file.media_shards).unwrap_or(1);
        if !(1..=MAX_MEDIA_SHARDS).contains(&media_shards) {
            bail!("media_shards must be 1 to {MAX_MEDIA_SHARDS}, not {media_shards}");
        }
        let mut levels = file.levels.clone().unwrap_or_default();
        if let Some(n) = &flags.internal_networks {
            levels.internal.networks = n.clone();
        }
        if let Some(n) = &flags.restricted_networks {
            levels.restricted.networks = n.clone();
        }
        let mut networks = file.networks.clone();
        if let Some(n) = &flags.deny_networks {
            networks.deny = n.clone();
        }
        if let Some(n) = &flags.trusted_proxies {
            networks.trusted_proxies = n.clone();
        }
        let mut rate_limits = file.rate_limits.clone();
        for (flag, field) in [
            (flags.login_per_ip, &mut rate_limits.login_per_ip),
            (flags.enrol_per_ip, &mut rate_limits.enrol_per_ip),
            (flags.join_per_ip, &mut rate_limits.join_per_ip),
            (flags.join_per_account, &mut rate_limits.join_per_account),
        ] {
            if let Some(v) = flag {
                *field = v;
            }
        }
        let mut known: Vec<ipnet::IpNet> = levels
            .open
            .networks
            .iter()
            .chain(&levels.internal.networks)
            .chain(&levels.restricted.networks)
            .copied()
            .collect();
        known.sort();
        known.dedup();
        networks.known_ranges = known;
        let cfg = Config {
            data_dir: data.data_dir.clone(),
            listen,
            media_listen: flags.media_listen.or(file.media_listen).unwrap_or(listen),
            media_advertise: flags.media_advertise.or(file.media_advertise),
            media_shards,
            public_url,
            tls,
            first_admin: flags
                .first_admin
                .clone()
                .or(file.first_admin.clone())
                .unwrap_or_else(|| "admin".into()),
            rate_limits,
            levels,
            networks,
            session: file.session.clone(),
            enrolment: file.enrolment.clone(),
            early_join_secs: file.early_join_secs.unwrap_or(600),
            reconnect_grace: std::time::Duration::from_secs(
                file.reconnect_grace_secs.unwrap_or(20).min(300),
            ),
            test_ghosts: if cfg!(debug_assertions) {
                std::env::var("SEALROOM_TEST_GHOSTS")
                    .map(|v| {
                        v.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                Vec::new()
            },
            media_connect_timeout: std::time::Duration::from_secs(
                file.media_connect_timeout_secs.unwrap_or(15).clamp(1, 300),
            ),
        };
        let mut cfg = cfg;
        cfg.networks.local_mode =
            cfg.local_mode() && file.local_mode_loopback_is_internal.unwrap_or(true);
        Ok(cfg)
    }
}

fn load_file(data: &DataArgs) -> anyhow::Result<FileConfig> {
    let path = match &data.config {
        Some(p) => p.clone(),
        None => {
            let p = data.data_dir.join("sealroom.toml");
            if !p.exists() {
                return Ok(FileConfig::default());
            }
            p
        }
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(dir: &std::path::Path, toml: Option<&str>) -> DataArgs {
        let config = toml.map(|t| {
            let p = dir.join("c.toml");
            std::fs::write(&p, t).expect("write config");
            p
        });
        DataArgs {
            data_dir: dir.to_path_buf(),
            config,
        }
    }

    #[test]
    fn defaults_are_local_mode_on_loopback() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = Config::resolve(&data(d.path(), None), &ServeArgs::default()).expect("resolve");
        assert_eq!(c.listen, "127.0.0.1:8443".parse().expect("addr"));
        assert!(c.local_mode());
        assert!(c.networks.local_mode);
    }

    #[test]
    fn non_loopback_without_tls_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let flags = ServeArgs {
            listen: Some("198.18.0.1:8443".parse().expect("addr")),
            ..ServeArgs::default()
        };
        let err = Config::resolve(&data(d.path(), None), &flags).expect_err("must refuse");
        assert!(err.to_string().contains("without TLS"), "{err}");
        let flags = ServeArgs {
            tls_self_signed: true,
            ..flags
        };
        assert!(Config::resolve(&data(d.path(), None), &flags).is_ok());
    }

    #[test]
    fn file_settings_apply_and_flags_win() {
        let d = tempfile::tempdir().expect("tempdir");
        let toml = r#"
listen = "127.0.0.1:9000"
[rate_limits]
join_per_ip = 5
[networks]
deny = ["198.18.9.0/24"]
[levels.open]
any_network = true
allow_software_devices = false
[levels.internal]
networks = ["198.18.1.0/24"]
[levels.restricted]
networks = ["198.18.1.0/24"]
require_approved_device = true
force_lobby = true
"#;
        let flags = ServeArgs {
            listen: Some("127.0.0.1:9100".parse().expect("addr")),
            ..ServeArgs::default()
        };
        let c = Config::resolve(&data(d.path(), Some(toml)), &flags).expect("resolve");
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.rate_limits.join_per_ip, 5);
        assert!(!c.levels.open.allow_software_devices);
        assert_eq!(c.networks.known_ranges.len(), 1);
        assert_eq!(c.networks.deny.len(), 1);

        let flags = ServeArgs {
            internal_networks: Some(vec!["198.18.5.0/24".parse().expect("net")]),
            join_per_ip: Some(7),
            ..ServeArgs::default()
        };
        let c = Config::resolve(&data(d.path(), Some(toml)), &flags).expect("resolve");
        assert_eq!(c.rate_limits.join_per_ip, 7);
        assert_eq!(
            c.levels.internal.networks,
            vec!["198.18.5.0/24".parse::<ipnet::IpNet>().expect("net")]
        );
        assert!(c
            .networks
            .known_ranges
            .contains(&"198.18.5.0/24".parse().expect("net")));
    }

    #[test]
    fn media_shards_default_to_one_and_out_of_range_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = Config::resolve(&data(d.path(), None), &ServeArgs::default()).expect("resolve");
        assert_eq!(c.media_shards, 1);
        let c = Config::resolve(
            &data(d.path(), Some("media_shards = 4")),
            &ServeArgs::default(),
        )
        .expect("resolve");
        assert_eq!(c.media_shards, 4);
        let flags = ServeArgs {
            media_shards: Some(2),
            ..ServeArgs::default()
        };
        let c =
            Config::resolve(&data(d.path(), Some("media_shards = 4")), &flags).expect("resolve");
        assert_eq!(c.media_shards, 2, "the flag wins");
        for n in [0, 65] {
            let flags = ServeArgs {
                media_shards: Some(n),
                ..ServeArgs::default()
            };
            let err = Config::resolve(&data(d.path(), None), &flags).expect_err("out of range");
            assert!(
                err.to_string().contains("media_shards must be 1 to 64"),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_an_error() {
        let d = tempfile::tempdir().expect("tempdir");
        let err = Config::resolve(
            &data(d.path(), Some("listn = \"x\"")),
            &ServeArgs::default(),
        )
        .expect_err("typo must fail");
        assert!(format!("{err:#}").contains("listn"), "{err:#}");
    }
}
