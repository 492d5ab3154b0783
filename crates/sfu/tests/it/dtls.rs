//! DTLS fingerprint verification is always on.

use std::time::Duration;

use sealroom_sfu::{Event, ParticipantConfig, RoomId, SessionError};

use crate::common::*;

/// Flips one hex digit of the `a=fingerprint` line.
fn tamper_fingerprint(sdp: &str) -> String {
    let mut out = String::new();
    for line in sdp.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("a=fingerprint:sha-256 ") {
            let mut chars: Vec<char> = rest.chars().collect();
            chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
            out.push_str("a=fingerprint:sha-256 ");
            out.extend(chars);
        } else {
            out.push_str(line);
        }
    }
    assert_ne!(out, sdp, "the offer carried a sha-256 fingerprint");
    out
}

#[test]
fn a_fingerprint_mismatch_fails_the_connection() {
    let mut w = World::new(seed("fingerprint"));
    let honest = w.join(AV);
    let bad = w.join_with(AV, ParticipantConfig::new(RoomId(1)), tamper_fingerprint);
    w.run_for(Duration::from_secs(5));
    let bad_id = w.id(bad);
    assert!(w.client(honest).connected);
    assert!(
        !w.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Connected { participant } if *participant == bad_id)),
        "the SFU never reports DTLS up for the tampered peer"
    );
    let ended = w.events.iter().find_map(|(_, e)| match e {
        Event::SessionEnded {
            participant,
            reason,
        } if *participant == bad_id => Some(reason.clone()),
        _ => None,
    });
    assert!(
        matches!(ended, Some(SessionError::PeerInput(_))),
        "session ended with a peer error: {ended:?}"
    );
    assert!(!w.sfu.participants().contains(&bad_id));
    assert_eq!(w.client(honest).video_frames_from(bad_id), 0);
}
