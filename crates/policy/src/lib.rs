//! The admission policy of sealroom: which networks a level allows, which devices it accepts,
//! and the single decision every path into a meeting goes through.
//!
//! Pure logic: no IO, no clock (time is a parameter), no database. The server gathers the facts
//! (session, invitation, device, source address, meeting state) and asks [`decide`]; the answer
//! is data that the server then records and acts on.

#![forbid(unsafe_code)]

pub mod network;

pub use network::{canonical_ip, client_address, NetworkError, NetworkRules, Zone};
use sealroom_proto::{DeviceKind, Level, RefusalReason};
use serde::{Deserialize, Serialize};

/// What a level demands of a device and its network (configurable; DESIGN.md section 4).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LevelRules {
    /// CIDR ranges a participant's address must fall in. Empty with `any_network` false means
    /// nobody can join at this level until ranges are configured.
    #[serde(default)]
    pub networks: Vec<ipnet::IpNet>,
    /// Any source address is allowed (the `open` level).
    #[serde(default)]
    pub any_network: bool,
    /// Software (native-client) devices may join.
    #[serde(default)]
    pub allow_software_devices: bool,
    /// Only devices an admin approved for this level, whose passkey is device-bound
    /// (backup-eligible flag 0), may join.
    #[serde(default)]
    pub require_approved_device: bool,
    /// The lobby is always on, whatever the meeting says.
    #[serde(default)]
    pub force_lobby: bool,
}

/// Rules of all three levels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Levels {
    pub open: LevelRules,
    pub internal: LevelRules,
    pub restricted: LevelRules,
}

impl Default for Levels {
    fn default() -> Self {
        Levels {
            open: LevelRules {
                networks: vec![],
                any_network: true,
                allow_software_devices: true,
                require_approved_device: false,
                force_lobby: false,
            },
            internal: LevelRules {
                networks: vec![],
                any_network: false,
                allow_software_devices: true,
                require_approved_device: false,
                force_lobby: false,
            },
            restricted: LevelRules {
                networks: vec![],
                any_network: false,
                allow_software_devices: false,
                require_approved_device: true,
                force_lobby: true,
            },
        }
    }
}

impl Levels {
    pub fn rules(&self, level: Level) -> &LevelRules {
        match level {
            Level::Open => &self.open,
            Level::Internal => &self.internal,
            Level::Restricted => &self.restricted,
        }
    }
}

/// The device asking to join, as the server knows it now.
#[derive(Debug, Clone)]
pub struct DeviceFacts {
    pub kind: DeviceKind,
    pub revoked: bool,
    /// Approved by an admin for levels with `require_approved_device`.
    pub approved: bool,
    /// The passkey is backup eligible (synced), so not bound to this device.
    pub backup_eligible: bool,
}

/// The meeting and the caller's invitation, from one keyed lookup.
#[derive(Debug, Clone)]
pub struct InvitationFacts {
    pub level: Level,
    pub host: bool,
    pub locked: bool,
    pub lobby: bool,
    pub capacity: u32,
    /// Unix seconds.
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
    /// Participants admitted now (this device excluded).
    pub admitted_now: u32,
}

/// Everything [`decide`] needs.
#[derive(Debug, Clone)]
pub struct JoinRequest<'a> {
    /// `None`: no invitation for this (meeting, user), or no such meeting, or not logged in.
    pub invitation: Option<&'a InvitationFacts>,
    pub device: Option<&'a DeviceFacts>,
    /// The zone the source address falls in, as [`NetworkRules::zone_for`] said.
    pub zone: &'a Zone,
    /// Unix seconds.
    pub now: i64,
    /// Seconds before `starts_at` when joining is already allowed.
    pub early_join_secs: i64,
}

/// The outcome of a join request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Refuse(RefusalReason),
    /// Wait for a host.
    Lobby,
    Admit,
}

/// The one admission function (DESIGN.md flow 4 and section 7). The order matters: nothing
/// precise is said to anyone who is not invited.
pub fn decide(levels: &Levels, req: &JoinRequest<'_>) -> Decision {
    let (Some(inv), Some(dev)) = (req.invitation, req.device) else {
        return Decision::Refuse(RefusalReason::NotFound);
    };
    let rules = levels.rules(inv.level);
    if dev.revoked {
        return Decision::Refuse(RefusalReason::DeviceRevoked);
    }
    if dev.kind == DeviceKind::Software && !rules.allow_software_devices {
        return Decision::Refuse(RefusalReason::DeviceKindNotAllowed);
    }
    if rules.require_approved_device
        && (dev.kind != DeviceKind::Passkey || !dev.approved || dev.backup_eligible)
    {
        return Decision::Refuse(RefusalReason::DeviceNotApproved);
    }
    if !zone_allowed(rules, req.zone) {
        return Decision::Refuse(RefusalReason::NetworkNotAllowed);
    }
    if let Some(start) = inv.starts_at {
        if req.now < start - req.early_join_secs {
            return Decision::Refuse(RefusalReason::TooEarly);
        }
    }
    if let Some(end) = inv.ends_at {
        if req.now >= end {
            return Decision::Refuse(RefusalReason::TooLate);
        }
    }
    if inv.locked {
        return Decision::Refuse(RefusalReason::Locked);
    }
    if inv.admitted_now >= inv.capacity {
        return Decision::Refuse(RefusalReason::Full);
    }
    if !inv.host && (inv.lobby || rules.force_lobby) {
        return Decision::Lobby;
    }
    Decision::Admit
}

/// Whether a source zone satisfies a level (used at join and whenever the path changes).
pub fn zone_allowed(rules: &LevelRules, zone: &Zone) -> bool {
    match zone {
        Zone::Denied => false,
        Zone::Range(net) => rules.any_network || rules.networks.contains(net),
        Zone::Loopback { local_mode } => rules.any_network || *local_mode,
        Zone::Other => rules.any_network,
    }
}

/// A host's admission of someone from the lobby re-checks what may have changed meanwhile.
pub fn admit_from_lobby(inv: &InvitationFacts) -> Result<(), RefusalReason> {
    if inv.locked {
        return Err(RefusalReason::Locked);
    }
    if inv.admitted_now >= inv.capacity {
        return Err(RefusalReason::Full);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
