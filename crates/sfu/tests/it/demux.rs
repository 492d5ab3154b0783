//! The demultiplexer in front of str0m.

use std::time::Duration;

use rand::Rng;
use sealroom_sfu::{Event, Input, Output, ParticipantConfig, RoomId};

use crate::common::*;

fn transmits(w: &mut World) -> usize {
    let mut n = 0;
    loop {
        match w.sfu.poll_output(w.now) {
            Output::Transmit { .. } => n += 1,
            Output::Event(_) => {}
            Output::Timeout(_) => return n,
        }
    }
}

#[test]
fn datagrams_from_unknown_pairs_are_dropped_and_counted_before_str0m() {
    let mut w = World::new(seed("unknown_pairs"));
    w.join(AV);
    let _ = transmits(&mut w);
    let stranger = "192.0.2.7:4444".parse().expect("address");
    let before = w.sfu.counters().clone();
    // RTP, RTCP, DTLS-looking datagrams and a STUN indication from nobody we know.
    let dgrams: [&[u8]; 4] = [
        &[0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 1, 2, 3],
        &[0x81, 0xc8, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[
            0, 0x11, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ],
    ];
    for d in dgrams {
        w.sfu.handle_input(
            w.now,
            Input::Receive {
                source: stranger,
                destination: sfu_addr(),
                contents: d,
            },
        );
    }
    let c = w.sfu.counters();
    assert_eq!(c.datagrams_received - before.datagrams_received, 4);
    assert_eq!(c.dropped_unknown_pair - before.dropped_unknown_pair, 4);
    assert_eq!(transmits(&mut w), 0, "nothing may answer an unknown pair");
    assert_eq!(w.sfu.bound_participant(stranger, sfu_addr()), None);
}

#[test]
fn stun_binding_requests_are_routed_by_ufrag_and_bind_only_their_pair() {
    let mut w = World::new(seed("routing"));
    w.media = false;
    let a = w.join(AV);
    let b = w.join(AV);
    w.run_for(Duration::from_secs(2));
    for i in [a, b] {
        assert!(
            w.client(i).connected,
            "client {i} connected through the demux"
        );
        assert_eq!(
            w.sfu.bound_participant(w.client(i).addr, sfu_addr()),
            Some(w.id(i)),
            "client {i}'s pair is bound to it and not to the other"
        );
        let info = w.sfu.participant(w.id(i)).expect("present");
        assert_eq!(info.path, Some((sfu_addr(), w.client(i).addr)));
    }
    let paths = w
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::PathSelected { .. }))
        .count();
    assert_eq!(paths, 2, "one path selection per participant");

    // A binding request naming a ufrag nobody has is dropped and counted.
    let before = w.sfu.counters().dropped_unknown_ufrag;
    let m = stun_request(b"nosuchufrag:zz");
    w.sfu.handle_input(
        w.now,
        Input::Receive {
            source: "192.0.2.9:1".parse().expect("address"),
            destination: sfu_addr(),
            contents: &m,
        },
    );
    assert_eq!(w.sfu.counters().dropped_unknown_ufrag, before + 1);
}

#[test]
fn a_binding_request_with_a_broken_integrity_binds_nothing() {
    let mut w = World::new(seed("forged_stun"));
    w.media = false;
    let a = w.join(AV);
    // Capture the client's first binding request on the wire.
    let mut captured = None;
    let client = w.client(a).addr;
    for _ in 0..50 {
        w.run_for(Duration::from_millis(1));
        if let Some(p) = w.net_peek_from(client) {
            captured = Some(p);
            break;
        }
    }
    let mut forged = captured.expect("the client sends a binding request");
    forged[10] ^= 0xff; // transaction id: MESSAGE-INTEGRITY no longer matches
    let attacker = "192.0.2.66:1234".parse().expect("address");
    w.sfu.handle_input(
        w.now,
        Input::Receive {
            source: attacker,
            destination: sfu_addr(),
            contents: &forged,
        },
    );
    let _ = transmits(&mut w);
    assert_eq!(w.sfu.bound_participant(attacker, sfu_addr()), None);
}

#[test]
fn binding_requests_from_a_disallowed_source_never_reach_ice() {
    let mut w = World::new(seed("disallowed"));
    w.media = false;
    let refused = client_addr(0);
    let filter = std::sync::Arc::new(move |a: std::net::SocketAddr| a != refused);
    let i = w.join_with(
        AV,
        ParticipantConfig::new(RoomId(1)).with_source_filter(filter),
        |s| s.to_string(),
    );
    w.run_for(Duration::from_secs(3));
    assert!(!w.client(i).connected);
    assert!(w.sfu.counters().dropped_disallowed_source > 0);
    assert_eq!(w.sfu.bound_participant(refused, sfu_addr()), None);
    assert!(w.sfu.participant(w.id(i)).expect("present").path.is_none());
}

/// Random datagrams of random sizes, from known and unknown addresses, shaped to hit every
/// branch of the demux (STUN with our ufrag, DTLS, RTP/RTCP, junk). The process must survive;
/// a participant whose address sent junk may lose its session, nothing else.
#[test]
fn junk_datagrams_never_panic() {
    let seed = seed("junk");
    let mut w = World::new(seed);
    let a = w.join(AV);
    let b = w.join(AV);
    w.run_for(Duration::from_secs(2));
    assert!(w.client(a).connected && w.client(b).connected);
    let known = [w.client(a).addr, w.client(b).addr];
    let ufrag = w.first_ufrag_seen();
    for round in 0..20_000u32 {
        let source = if w.rng().gen_bool(0.5) {
            known[w.rng().gen_range(0..2)]
        } else {
            format!(
                "198.51.100.{}:{}",
                w.rng().gen_range(1..255),
                w.rng().gen_range(1..65535)
            )
            .parse()
            .expect("address")
        };
        let len = w.rng().gen_range(0..1500);
        let mut d = w.random_bytes(len);
        match round % 5 {
            0 if len > 0 => d[0] = w.rng().gen_range(0..4),
            1 if len > 0 => d[0] = w.rng().gen_range(20..64),
            2 if len > 0 => d[0] = w.rng().gen_range(128..192),
            3 => {
                // A syntactically valid binding request with our ufrag and junk after it.
                let mut m = stun_request(format!("{ufrag}:x").as_bytes());
                let n = w.rng().gen_range(0..64) * 4;
                let extra = w.random_bytes(n);
                m.extend_from_slice(&extra);
                let l = (m.len() - 20) as u16;
                m[2..4].copy_from_slice(&l.to_be_bytes());
                d = m;
            }
            _ => {}
        }
        w.sfu.handle_input(
            w.now,
            Input::Receive {
                source,
                destination: sfu_addr(),
                contents: &d,
            },
        );
        if round % 100 == 0 {
            w.run_for(Duration::from_millis(5));
        }
    }
    w.run_for(Duration::from_millis(100));
    let c = w.sfu.counters();
    assert!(c.datagrams_received >= 20_000);
    assert!(
        c.dropped_unknown_pair > 0 && c.dropped_unclassified > 0,
        "{c:?}"
    );
}

/// A STUN binding request (RFC 8489) with only a USERNAME attribute.
pub fn stun_request(username: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&6u16.to_be_bytes());
    body.extend_from_slice(&(username.len() as u16).to_be_bytes());
    body.extend_from_slice(username);
    while body.len() % 4 != 0 {
        body.push(0);
    }
    let mut m = vec![0, 1];
    m.extend_from_slice(&(body.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[9; 12]);
    m.extend_from_slice(&body);
    m
}
