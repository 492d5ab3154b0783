//! Removal tears the transport down at once.

use std::time::Duration;

use sealroom_sfu::{Event, SubscriptionState};

use crate::common::*;

#[test]
fn nothing_is_transmitted_to_a_removed_participant() {
    let mut w = World::new(seed("removal"));
    for _ in 0..3 {
        w.join(AV);
    }
    w.run_for(Duration::from_secs(4));
    let gone = 2;
    let gone_addr = w.client(gone).addr;
    let gone_id = w.id(gone);
    assert!(
        w.transmitted.iter().any(|(_, to)| *to == gone_addr),
        "media flowed to it before"
    );
    let dropped_before = w.sfu.counters().dropped_unknown_pair;
    w.sfu.remove_participant(w.now, gone_id).expect("present");
    let removed_at = w.now;
    let sent_before = w.transmitted.len();
    let before_from_others = w.client(0).video_frames_from(w.id(1));
    w.run_for(Duration::from_secs(3));

    let after: Vec<_> = w.transmitted[sent_before..]
        .iter()
        .filter(|(_, to)| *to == gone_addr)
        .collect();
    assert!(
        after.is_empty(),
        "{} datagrams sent after removal (removed at {:?}): {after:?}",
        after.len(),
        removed_at - w.start
    );
    assert!(!w.sfu.participants().contains(&gone_id));
    assert!(
        w.sfu.counters().dropped_unknown_pair > dropped_before,
        "its datagrams are dropped at the demux"
    );
    for i in 0..2 {
        let info = w.sfu.participant(w.id(i)).expect("present");
        assert!(
            info.subscriptions
                .iter()
                .all(|s| s.track.publisher != gone_id),
            "its tracks are withdrawn from {i}: {:?}",
            info.subscriptions
        );
        assert!(info
            .subscriptions
            .iter()
            .all(|s| s.state == SubscriptionState::Open));
    }
    assert!(w.events.iter().any(
        |(_, e)| matches!(e, Event::TrackUnpublished { track } if track.publisher == gone_id)
    ));
    assert!(
        w.client(0).video_frames_from(w.id(1)) > before_from_others + 30,
        "the others keep exchanging media"
    );
    assert!(w.sfu.remove_participant(w.now, gone_id).is_err());
}
