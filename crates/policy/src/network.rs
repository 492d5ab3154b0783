//! Source addresses: canonical form, trusted proxies, deny ranges and the zone an address is in.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Network configuration shared by all levels.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkRules {
    /// Ranges that are never allowed, whatever a level says. Deny wins over allow.
    #[serde(default)]
    pub deny: Vec<IpNet>,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// Ranges named by any level, longest prefix first when matching.
    #[serde(skip)]
    pub known_ranges: Vec<IpNet>,
    /// Local mode: a loopback peer satisfies the `internal` and `restricted` levels.
    #[serde(skip)]
    pub local_mode: bool,
}

/// Where an address falls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Zone {
    /// In a deny range: never allowed.
    Denied,
    /// Inside a range some level names (the most specific one).
    Range(IpNet),
    /// A loopback peer (127.0.0.0/8, ::1).
    Loopback { local_mode: bool },
    /// Anywhere else.
    Other,
}

impl Zone {
    /// Label shown to participants and hosts.
    pub fn label(&self) -> String {
        match self {
            Zone::Denied => "denied".into(),
            Zone::Range(net) => net.to_string(),
            Zone::Loopback { .. } => "loopback".into(),
            Zone::Other => "other (no configured range)".into(),
        }
    }
}

/// Errors reading a forwarded-for header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkError {
    /// A trusted proxy sent a header that does not parse as a list of addresses.
    #[error("malformed X-Forwarded-For from a trusted proxy")]
    MalformedForwardedFor,
}

/// IPv4-mapped IPv6 addresses become IPv4, so ranges are written once.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in which case the
/// `X-Forwarded-For` list is walked from the right, skipping trusted proxies, and the first
/// untrusted address is the client.
pub fn client_address(
    rules: &NetworkRules,
    peer: IpAddr,
    forwarded_for: Option<&str>,
) -> Result<IpAddr, NetworkError> {
    let peer = canonical_ip(peer);
    if !rules.trusted_proxies.iter().any(|n| n.contains(&peer)) {
        return Ok(peer);
    }
    let Some(header) = forwarded_for else {
        return Ok(peer);
    };
    let mut current = peer;
    for part in header.rsplit(',') {
        let ip: IpAddr = part
            .trim()
            .parse()
            .map_err(|_| NetworkError::MalformedForwardedFor)?;
        current = canonical_ip(ip);
        if !rules.trusted_proxies.iter().any(|n| n.contains(&current)) {
            return Ok(current);
        }
    }
    Ok(current)
}

impl NetworkRules {
    /// The zone of a (canonical) client address.
    pub fn zone_for(&self, ip: IpAddr) -> Zone {
        let ip = canonical_ip(ip);
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Zone::Denied;
        }
        if let Some(net) = self
            .known_ranges
            .iter()
            .filter(|n| n.contains(&ip))
            .max_by_key(|n| n.prefix_len())
        {
            return Zone::Range(*net);
        }
        if ip.is_loopback() {
            return Zone::Loopback {
                local_mode: self.local_mode,
            };
        }
        Zone::Other
    }
}
