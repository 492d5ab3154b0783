use super::*;
use std::net::IpAddr;

fn net(s: &str) -> ipnet::IpNet {
    s.parse().expect("test range parses")
}

fn levels() -> Levels {
    let mut l = Levels::default();
    l.internal.networks = vec![net("198.18.1.0/24")];
    l.restricted.networks = vec![net("198.18.1.0/24")];
    l
}

fn rules() -> NetworkRules {
    NetworkRules {
        deny: vec![net("198.18.1.66/32")],
        trusted_proxies: vec![net("127.0.0.1/32")],
        known_ranges: vec![net("198.18.0.0/15"), net("198.18.1.0/24")],
        local_mode: false,
    }
}

fn invitation(level: Level) -> InvitationFacts {
    InvitationFacts {
        level,
        host: false,
        locked: false,
        lobby: false,
        capacity: 10,
        starts_at: None,
        ends_at: None,
        admitted_now: 0,
    }
}

fn passkey() -> DeviceFacts {
    DeviceFacts {
        kind: DeviceKind::Passkey,
        revoked: false,
        approved: false,
        backup_eligible: false,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address parses")
}

fn decide_at(inv: Option<&InvitationFacts>, dev: &DeviceFacts, addr: &str, now: i64) -> Decision {
    let zone = rules().zone_for(ip(addr));
    decide(
        &levels(),
        &JoinRequest {
            invitation: inv,
            device: Some(dev),
            zone: &zone,
            now,
            early_join_secs: 600,
        },
    )
}

#[test]
fn not_invited_gets_not_found_whatever_else_is_wrong() {
    let mut dev = passkey();
    dev.revoked = true;
    assert_eq!(
        decide_at(None, &dev, "203.0.113.9", 0),
        Decision::Refuse(RefusalReason::NotFound)
    );
}

#[test]
fn internal_level_admits_only_its_ranges() {
    let inv = invitation(Level::Internal);
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "198.18.1.7", 0),
        Decision::Admit
    );
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "198.18.2.7", 0),
        Decision::Refuse(RefusalReason::NetworkNotAllowed)
    );
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "203.0.113.9", 0),
        Decision::Refuse(RefusalReason::NetworkNotAllowed)
    );
}

#[test]
fn deny_range_wins_over_allow_range() {
    let inv = invitation(Level::Internal);
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "198.18.1.66", 0),
        Decision::Refuse(RefusalReason::NetworkNotAllowed)
    );
    let open = invitation(Level::Open);
    assert_eq!(
        decide_at(Some(&open), &passkey(), "198.18.1.66", 0),
        Decision::Refuse(RefusalReason::NetworkNotAllowed)
    );
}

#[test]
fn ipv4_mapped_ipv6_is_treated_as_ipv4() {
    let inv = invitation(Level::Internal);
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "::ffff:198.18.1.7", 0),
        Decision::Admit
    );
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "::ffff:198.18.1.66", 0),
        Decision::Refuse(RefusalReason::NetworkNotAllowed)
    );
}

#[test]
fn loopback_satisfies_internal_only_in_local_mode() {
    let inv = invitation(Level::Internal);
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "127.0.0.1", 0),
        Decision::Refuse(RefusalReason::NetworkNotAllowed)
    );
    let mut r = rules();
    r.local_mode = true;
    let zone = r.zone_for(ip("127.0.0.1"));
    let d = decide(
        &levels(),
        &JoinRequest {
            invitation: Some(&inv),
            device: Some(&passkey()),
            zone: &zone,
            now: 0,
            early_join_secs: 0,
        },
    );
    assert_eq!(d, Decision::Admit);
}

#[test]
fn device_rules_per_level() {
    let mut sw = passkey();
    sw.kind = DeviceKind::Software;
    let open = invitation(Level::Open);
    assert_eq!(
        decide_at(Some(&open), &sw, "198.18.1.7", 0),
        Decision::Admit
    );
    let restricted = invitation(Level::Restricted);
    assert_eq!(
        decide_at(Some(&restricted), &sw, "198.18.1.7", 0),
        Decision::Refuse(RefusalReason::DeviceKindNotAllowed)
    );
    assert_eq!(
        decide_at(Some(&restricted), &passkey(), "198.18.1.7", 0),
        Decision::Refuse(RefusalReason::DeviceNotApproved)
    );
    let mut approved = passkey();
    approved.approved = true;
    assert_eq!(
        decide_at(Some(&restricted), &approved, "198.18.1.7", 0),
        Decision::Lobby
    );
    approved.backup_eligible = true;
    assert_eq!(
        decide_at(Some(&restricted), &approved, "198.18.1.7", 0),
        Decision::Refuse(RefusalReason::DeviceNotApproved)
    );
    let mut revoked = passkey();
    revoked.revoked = true;
    assert_eq!(
        decide_at(Some(&open), &revoked, "198.18.1.7", 0),
        Decision::Refuse(RefusalReason::DeviceRevoked)
    );
}

#[test]
fn time_window_lock_capacity_and_lobby() {
    let mut inv = invitation(Level::Open);
    inv.starts_at = Some(10_000);
    inv.ends_at = Some(20_000);
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "1.2.3.4", 9_399),
        Decision::Refuse(RefusalReason::TooEarly)
    );
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "1.2.3.4", 9_400),
        Decision::Admit
    );
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "1.2.3.4", 20_000),
        Decision::Refuse(RefusalReason::TooLate)
    );
    inv.locked = true;
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "1.2.3.4", 15_000),
        Decision::Refuse(RefusalReason::Locked)
    );
    inv.locked = false;
    inv.admitted_now = 10;
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "1.2.3.4", 15_000),
        Decision::Refuse(RefusalReason::Full)
    );
    inv.admitted_now = 0;
    inv.lobby = true;
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "1.2.3.4", 15_000),
        Decision::Lobby
    );
    inv.host = true;
    assert_eq!(
        decide_at(Some(&inv), &passkey(), "1.2.3.4", 15_000),
        Decision::Admit
    );
}

#[test]
fn forwarded_for_only_from_trusted_proxies_walked_right_to_left() {
    let r = rules();
    // Untrusted peer: header ignored.
    assert_eq!(
        client_address(&r, ip("198.18.2.2"), Some("198.18.1.7")),
        Ok(ip("198.18.2.2"))
    );
    // Trusted peer: rightmost untrusted entry wins; a spoofed leftmost entry is ignored.
    assert_eq!(
        client_address(&r, ip("127.0.0.1"), Some("198.18.1.7, 198.18.2.9")),
        Ok(ip("198.18.2.9"))
    );
    assert_eq!(
        client_address(&r, ip("127.0.0.1"), Some("198.18.1.7, 127.0.0.1")),
        Ok(ip("198.18.1.7"))
    );
    assert_eq!(
        client_address(&r, ip("127.0.0.1"), Some("not-an-ip")),
        Err(NetworkError::MalformedForwardedFor)
    );
    assert_eq!(
        client_address(&r, ip("::ffff:127.0.0.1"), None),
        Ok(ip("127.0.0.1"))
    );
}

#[test]
fn most_specific_range_names_the_zone() {
    assert_eq!(
        rules().zone_for(ip("198.18.1.9")),
        Zone::Range(net("198.18.1.0/24"))
    );
    assert_eq!(
        rules().zone_for(ip("198.19.0.1")),
        Zone::Range(net("198.18.0.0/15"))
    );
    assert_eq!(rules().zone_for(ip("203.0.113.1")), Zone::Other);
}
