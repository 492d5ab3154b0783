//! The state shared by every request: store, configuration, WebAuthn, ceremonies in flight,
//! rate limiters and the live hub.

use crate::config::Config;
use crate::live::Hub;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac};
use sealroom_store::{AuditEntry, AuditKey, Store};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use webauthn_rs::prelude::{DiscoverableAuthentication, PasskeyRegistration};
use webauthn_rs::Webauthn;

/// How long a ceremony (WebAuthn or software challenge) may take.
pub const CEREMONY_TTL: Duration = Duration::from_secs(120);

/// Wall-clock unix seconds (the edge reads the clock; the cores take it as a parameter).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A ceremony waiting for its second half. Each is single-use: taken out on the first finish.
pub enum Ceremony {
    Register {
        state: PasskeyRegistration,
        token_hash: String,
        device_name: String,
    },
    Login {
        state: DiscoverableAuthentication,
    },
    Software {
        nonce: String,
        device_id: String,
    },
}

/// Secrets of this server, derived from one 32-byte master key in the data directory.
#[derive(Clone)]
pub struct Keys {
    pub audit: AuditKey,
    /// The identity authority's key: signs MLS bindings and the server's external proposals
    /// (docs/E2EE.md §2).
    pub identity: ed25519_dalek::SigningKey,
    refusal_hmac: [u8; 32],
}

impl Keys {
    /// Load `<data>/secret.key`, creating it (0600) if absent.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Keys> {
        let path = data_dir.join("secret.key");
        let master: [u8; 32] = match std::fs::read(&path) {
            Ok(b) => b
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} is not 32 bytes", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k: [u8; 32] = rand::random();
                write_private(&path, &k)?;
                k
            }
            Err(e) => return Err(e.into()),
        };
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(b"sealroom-key-v1\0");
            h.update(label);
            h.update(master);
            h.finalize().into()
        };
        Ok(Keys {
            audit: AuditKey::from_bytes(&derive(b"audit-checkpoints")),
            identity: ed25519_dalek::SigningKey::from_bytes(&derive(b"mls-identity-authority")),
            refusal_hmac: derive(b"refused-meeting-ids"),
        })
    }

    /// HMAC of a requested meeting id, so that refusals are audited without storing probes.
    pub fn meeting_id_hmac(&self, id: &str) -> String {
        // HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.refusal_hmac).expect("any key length");
        mac.update(id.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

/// Write a file readable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// Keyed rate limiters (governor), one per kind of attempt.
pub struct Limiters {
    pub login_ip: DefaultKeyedRateLimiter<IpAddr>,
    pub enrol_ip: DefaultKeyedRateLimiter<IpAddr>,
    pub join_ip: DefaultKeyedRateLimiter<IpAddr>,
    pub join_account: DefaultKeyedRateLimiter<String>,
    pub login_account: DefaultKeyedRateLimiter<String>,
    pub enrol_account: DefaultKeyedRateLimiter<String>,
    scan_threshold: u32,
    /// Not-found refusals per source address: (window start, count).
    probes: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Last time a rate-limit hit was audited per key: hits are aggregated per minute.
    audited: Mutex<HashMap<String, (Instant, u64)>>,
}

fn quota(per_minute: u32) -> Quota {
    let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(n)
}

impl Limiters {
    pub fn new(c: &crate::config::RateLimits) -> Limiters {
        Limiters {
            login_ip: RateLimiter::keyed(quota(c.login_per_ip)),
            enrol_ip: RateLimiter::keyed(quota(c.enrol_per_ip)),
            join_ip: RateLimiter::keyed(quota(c.join_per_ip)),
            join_account: RateLimiter::keyed(quota(c.join_per_account)),
            login_account: RateLimiter::keyed(quota(c.login_per_account)),
            enrol_account: RateLimiter::keyed(quota(c.enrol_per_account)),
            scan_threshold: c.scan_threshold.max(1),
            probes: Mutex::new(HashMap::new()),
            audited: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` when the key is over its limit.
    pub fn check<K: Clone + std::hash::Hash + Eq>(
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
    ) -> Result<(), u64> {
        limiter.check_key(key).map_err(|n| Self::retry_after(&n))
    }

    /// Whole seconds (at least 1) until a limiter that refused lets the next attempt in.
    pub fn retry_after(not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> u64 {
        not_until
            .wait_time_from(DefaultClock::default().now())
            .as_secs()
            .max(1)
    }

    /// Count a not-found refusal from `ip`; returns the count when it reaches the scan
    /// threshold (or 10x, 100x it) within a 10-minute window, so it is audited as a scan.
    pub fn count_probe(&self, ip: IpAddr) -> Option<u32> {
        let mut g = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let window = Duration::from_secs(600);
        if g.len() > 10_000 {
            g.retain(|_, (t, _)| now.duration_since(*t) < window);
        }
        let e = g.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= window {
            *e = (now, 0);
        }
        e.1 += 1;
        let t = self.scan_threshold;
        [t, t.saturating_mul(10), t.saturating_mul(100)]
            .contains(&e.1)
            .then_some(e.1)
    }

    /// Whether this rate-limit hit should be written to the audit log now (the first per key
    /// and minute; the entry carries how many hits were folded into it).
    pub fn should_audit(&self, key: &str) -> Option<u64> {
        let mut g = self.audited.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if g.len() > 10_000 {
            g.retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(60));
        }
        match g.get_mut(key) {
            Some((t, n)) if now.duration_since(*t) < Duration::from_secs(60) => {
                *n += 1;
                None
            }
            Some(entry) => {
                let folded = entry.1;
                *entry = (now, 0);
                Some(folded)
            }
            None => {
                g.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

/// Everything a handler needs.
pub struct App {
    pub config: Config,
    /// `scheme://host[:port]` exactly as browsers send it in `Origin`.
    pub origin: String,
    /// `host[:port]` as browsers send it in `Host`.
    pub host: String,
    pub tls: bool,
    pub store: Store,
    pub keys: Keys,
    pub webauthn: Webauthn,
    pub ceremonies: Mutex<HashMap<String, (Instant, Ceremony)>>,
    pub limiters: Limiters,
    pub hub: Hub,
    /// The MLS delivery service (never holds media keys).
    pub delivery: Mutex<crate::delivery::Delivery>,
}

pub type AppRef = Arc<App>;

impl App {
    pub fn put_ceremony(&self, c: Ceremony) -> String {
        let id = sealroom_store::random_secret();
        let mut g = self.ceremonies.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        g.retain(|_, (t, _)| now.duration_since(*t) < CEREMONY_TTL);
        g.insert(id.clone(), (now, c));
        id
    }

    /// Take a ceremony out (single use); `None` if unknown or expired.
    pub fn take_ceremony(&self, id: &str) -> Option<Ceremony> {
        let mut g = self.ceremonies.lock().unwrap_or_else(|p| p.into_inner());
        let (t, c) = g.remove(id)?;
        (t.elapsed() < CEREMONY_TTL).then_some(c)
    }

    /// Build an audit entry stamped now.
    pub fn entry(
        &self,
        kind: &str,
        actor: &str,
        subject: &str,
        source: &str,
        detail: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            at: unix_now(),
            kind: kind.into(),
            actor: actor.into(),
            subject: subject.into(),
            source: source.into(),
            detail: detail.to_string(),
        }
    }

    /// Write one audit entry in its own transaction (for events with no other write).
    pub async fn audit_alone(&self, e: AuditEntry) -> Result<(), sealroom_store::StoreError> {
        let mut tx = self.store.begin().await?;
        tx.audit(e).await?;
        tx.commit().await
    }
}
