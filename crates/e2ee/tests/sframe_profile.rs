//! The SFrame profile's sender and receiver: clear bytes, replay, tampering, unknown KIDs,
//! epoch switches and the grace period, on a virtual clock.

use std::time::{Duration, Instant};

use sealroom_e2ee::sframe::{
    clear_len, Codec, DropReason, EpochKey, Receiver, Sender, SframeError, Source,
    GRACE_AFTER_SWITCH, MAX_OLD_EPOCH, REPLAY_WINDOW,
};

const MEMBERS: [u32; 3] = [0, 1, 2];

fn key(epoch: u64, fill: u8) -> EpochKey {
    EpochKey::new(epoch, &[fill; 16], MEMBERS).expect("epoch key")
}

fn vp8_key_frame() -> Vec<u8> {
    [0x10u8, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]
        .into_iter()
        .chain((0..100u8).map(|i| i.wrapping_mul(7)))
        .collect()
}

fn vp8_delta_frame() -> Vec<u8> {
    [0x31u8].into_iter().chain(0..50u8).collect()
}

fn opus_frame() -> Vec<u8> {
    vec![0xfc, 0xff, 0xfe, 1, 2, 3, 4]
}

#[test]
fn frames_roundtrip_with_clear_bytes_in_front() {
    let t = Instant::now();
    let mut tx = Sender::new(1, key(5, 0xaa)).expect("sender");
    let mut rx = Receiver::new();
    rx.install_epoch(key(5, 0xaa), t);
    for (source, codec, frame) in [
        (Source::Camera, Codec::Vp8, vp8_key_frame()),
        (Source::Camera, Codec::Vp8, vp8_delta_frame()),
        (Source::Microphone, Codec::Opus, opus_frame()),
        (Source::Screen, Codec::Vp8, vp8_key_frame()),
        (Source::ScreenAudio, Codec::Opus, opus_frame()),
    ] {
        let wire = tx.encrypt(source, codec, &frame).expect("encrypt");
        let clear = clear_len(codec, &frame);
        assert_eq!(&wire[..clear], &frame[..clear], "{source:?}: clear prefix");
        // The rest of the plaintext does not appear in clear.
        assert!(!wire[clear..]
            .windows(8)
            .any(|w| frame[clear..].windows(8).any(|f| f == w)));
        let got = rx.decrypt(codec, &wire, t).expect("decrypt");
        assert_eq!(got.frame, frame);
        assert_eq!((got.source, got.leaf, got.epoch), (source, 1, 5));
    }
    assert_eq!(rx.failures().total(), 0);
}

#[test]
fn one_counter_per_kid_never_reused() {
    let mut tx = Sender::new(0, key(1, 1)).expect("sender");
    let t = Instant::now();
    let mut rx = Receiver::new();
    rx.install_epoch(key(1, 1), t);
    let mut seen = std::collections::HashSet::new();
    for i in 0..10u64 {
        for source in [Source::Microphone, Source::Camera] {
            let codec = if source == Source::Camera {
                Codec::Vp8
            } else {
                Codec::Opus
            };
            let frame = if source == Source::Camera {
                vp8_delta_frame()
            } else {
                opus_frame()
            };
            let wire = tx.encrypt(source, codec, &frame).expect("encrypt");
            let got = rx.decrypt(codec, &wire, t).expect("decrypt");
            assert_eq!(got.counter, i, "each KID counts from 0");
            assert!(seen.insert((got.source, got.counter)));
        }
    }
    // Re-installing the same epoch keeps the counters; going back is refused.
    tx.switch_epoch(key(1, 1)).expect("same epoch");
    let wire = tx
        .encrypt(Source::Microphone, Codec::Opus, &opus_frame())
        .expect("encrypt");
    assert_eq!(
        rx.decrypt(Codec::Opus, &wire, t).expect("decrypt").counter,
        10
    );
    assert_eq!(
        tx.switch_epoch(key(0, 1)),
        Err(SframeError::EpochNotNewer { current: 1, new: 0 })
    );
    assert_eq!(
        tx.switch_epoch(key(1, 2)),
        Err(SframeError::EpochNotNewer { current: 1, new: 1 })
    );
    // A new epoch restarts at 0 under a new KID.
    tx.switch_epoch(key(2, 1)).expect("switch");
    rx.install_epoch(key(2, 1), t);
    let wire = tx
        .encrypt(Source::Microphone, Codec::Opus, &opus_frame())
        .expect("encrypt");
    let got = rx.decrypt(Codec::Opus, &wire, t).expect("decrypt");
    assert_eq!((got.epoch, got.counter), (2, 0));
    // Malformed VP8 input is the caller's error, not a panic.
    assert!(matches!(
        tx.encrypt(Source::Camera, Codec::Vp8, &[0x10, 1, 2]),
        Err(SframeError::FrameTooShort { len: 3, clear: 10 })
    ));
    assert!(tx.encrypt(Source::Camera, Codec::Vp8, &[]).is_err());
    assert!(matches!(
        Sender::new(1 << 16, key(1, 1)),
        Err(SframeError::LeafTooLarge(_))
    ));
}

#[test]
fn replays_and_too_old_counters_are_dropped() {
    let t = Instant::now();
    let mut tx = Sender::new(2, key(9, 3)).expect("sender");
    let mut rx = Receiver::new();
    rx.install_epoch(key(9, 3), t);
    let frames: Vec<Vec<u8>> = (0..300)
        .map(|_| {
            tx.encrypt(Source::Microphone, Codec::Opus, &opus_frame())
                .expect("encrypt")
        })
        .collect();
    rx.decrypt(Codec::Opus, &frames[0], t).expect("first");
    assert_eq!(
        rx.decrypt(Codec::Opus, &frames[0], t),
        Err(DropReason::Replay)
    );
    rx.decrypt(Codec::Opus, &frames[200], t)
        .expect("jump ahead");
    // Within the window, out of order, once.
    let inside = 200 - (REPLAY_WINDOW as usize - 1);
    rx.decrypt(Codec::Opus, &frames[inside], t)
        .expect("inside the window");
    assert_eq!(
        rx.decrypt(Codec::Opus, &frames[inside], t),
        Err(DropReason::Replay)
    );
    // Just outside.
    assert_eq!(
        rx.decrypt(Codec::Opus, &frames[200 - REPLAY_WINDOW as usize], t),
        Err(DropReason::TooOld)
    );
    assert_eq!(
        rx.decrypt(Codec::Opus, &frames[5], t),
        Err(DropReason::TooOld)
    );
    let f = rx.failures();
    assert_eq!((f.replay, f.too_old, f.total()), (2, 2, 4));
}

#[test]
fn tampered_frames_are_dropped_and_counted() {
    let t = Instant::now();
    let mut tx = Sender::new(0, key(3, 9)).expect("sender");
    let mut rx = Receiver::new();
    rx.install_epoch(key(3, 9), t);
    let frame = vp8_key_frame();
    let wire = tx
        .encrypt(Source::Camera, Codec::Vp8, &frame)
        .expect("encrypt");
    let header_at = 10; // after the 10 clear bytes
    let mut cases = Vec::new();
    // A clear (authenticated) byte: the VP8 dimensions.
    let mut w = wire.clone();
    w[7] ^= 0x01;
    cases.push(("clear byte", w));
    // The header: the counter (last header byte; KID 0x01000003 takes 4 bytes).
    let mut w = wire.clone();
    w[header_at] |= 0x01; // counter 0 -> 1 in the config byte
    cases.push(("header counter", w));
    // Ciphertext and tag.
    let mut w = wire.clone();
    w[header_at + 8] ^= 0x80;
    cases.push(("ciphertext", w));
    let mut w = wire.clone();
    let last = w.len() - 1;
    w[last] ^= 0x01;
    cases.push(("tag", w));
    // The header's KID pointing at another member's key: authentication fails, no trial.
    let mut w = wire.clone();
    w[header_at + 3] ^= 0x01; // leaf 0 -> 1 inside KID bytes 01 00 00 03
    cases.push(("header kid -> leaf 1", w));
    // The key-frame bit: the receiver reads a delta frame (1 clear byte) and fails.
    let mut w = wire.clone();
    w[0] |= 0x01;
    cases.push(("key frame bit", w));
    for (what, w) in &cases {
        let r = rx.decrypt(Codec::Vp8, w, t);
        assert!(r.is_err(), "{what}: tampered frame accepted");
        eprintln!("tampered {what}: {:?}", r.err());
    }
    assert_eq!(rx.failures().total(), cases.len() as u64);
    // The genuine frame still decrypts after all that (nothing was recorded by failures).
    assert_eq!(
        rx.decrypt(Codec::Vp8, &wire, t).expect("genuine").frame,
        frame
    );
}

#[test]
fn unknown_kids_and_garbage_are_dropped() {
    let t = Instant::now();
    let mut rx = Receiver::new();
    // No epoch installed: nothing decrypts.
    let mut tx = Sender::new(0, key(4, 4)).expect("sender");
    let wire = tx
        .encrypt(Source::Microphone, Codec::Opus, &opus_frame())
        .expect("encrypt");
    assert_eq!(
        rx.decrypt(Codec::Opus, &wire, t),
        Err(DropReason::UnknownKid)
    );
    rx.install_epoch(key(4, 4), t);
    // A leaf that is not a member of the epoch.
    let mut stranger = Sender::new(7, key(4, 4)).expect("sender");
    let w = stranger
        .encrypt(Source::Microphone, Codec::Opus, &opus_frame())
        .expect("encrypt");
    assert_eq!(rx.decrypt(Codec::Opus, &w, t), Err(DropReason::UnknownKid));
    // An epoch the receiver does not hold.
    let mut future = Sender::new(0, key(5, 4)).expect("sender");
    let w = future
        .encrypt(Source::Microphone, Codec::Opus, &opus_frame())
        .expect("encrypt");
    assert_eq!(rx.decrypt(Codec::Opus, &w, t), Err(DropReason::UnknownKid));
    // A context id that is not a source: KID (5 << 24) | 4, header b0 05 00 00 04, ctr 0.
    let mut w = vec![0xb0, 0x05, 0x00, 0x00, 0x04];
    w.extend_from_slice(&[0u8; 20]);
    assert_eq!(rx.decrypt(Codec::Opus, &w, t), Err(DropReason::UnknownKid));
    // Too short or unparsable.
    for bad in [&[][..], &[0x00][..], &[0x8f, 1, 2][..], &[0u8; 16][..]] {
        assert_eq!(
            rx.decrypt(Codec::Opus, bad, t),
            Err(DropReason::Malformed),
            "{bad:?}"
        );
    }
    assert_eq!(
        rx.decrypt(Codec::Vp8, &[0x10; 12], t),
        Err(DropReason::Malformed)
    );
    // Arbitrary bytes never panic and never decrypt.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..400usize {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(rx.decrypt(Codec::Vp8, &bytes, t).is_err());
        assert!(rx.decrypt(Codec::Opus, &bytes, t).is_err());
    }
    // And the real sender still works.
    assert!(rx.decrypt(Codec::Opus, &wire, t).is_ok());
}

#[test]
fn old_epoch_is_kept_until_first_new_frame_plus_250ms_and_at_most_1s() {
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let mut a = Sender::new(0, key(10, 1)).expect("a");
    let mut b = Sender::new(1, key(10, 1)).expect("b");
    let mut rx = Receiver::new();
    rx.install_epoch(key(10, 1), t0);
    let op = opus_frame();
    let enc = |s: &mut Sender| {
        s.encrypt(Source::Microphone, Codec::Opus, &op)
            .expect("encrypt")
    };

    rx.decrypt(Codec::Opus, &enc(&mut a), ms(0)).expect("a old");
    // The commit is merged here: the receiver installs epoch 11.
    rx.install_epoch(key(11, 2), ms(10));
    // Both senders still in epoch 10: accepted.
    rx.decrypt(Codec::Opus, &enc(&mut a), ms(50))
        .expect("a old, before switching");
    rx.decrypt(Codec::Opus, &enc(&mut b), ms(60))
        .expect("b old");
    // a switches; its first new-epoch frame arrives at 100 ms.
    let a_late_old = enc(&mut a);
    a.switch_epoch(key(11, 2)).expect("switch");
    let r = rx
        .decrypt(Codec::Opus, &enc(&mut a), ms(100))
        .expect("a new");
    assert_eq!(r.epoch, 11);
    // a's old-epoch frames (reordered) are accepted until 100 + 250 ms ...
    let a_old_2 = {
        let mut a_old = Sender::new(0, key(10, 1)).expect("a old");
        // counters 0..=2 were used in epoch 10 by `a`; reuse a fresh one only as a stand-in
        // for a frame delayed in the network: skip to a counter the receiver has not seen.
        for _ in 0..5 {
            a_old
                .encrypt(Source::Microphone, Codec::Opus, &op)
                .expect("skip");
        }
        a_old
            .encrypt(Source::Microphone, Codec::Opus, &op)
            .expect("delayed")
    };
    rx.decrypt(Codec::Opus, &a_late_old, ms(340))
        .expect("a old, within 250 ms");
    // ... and refused from then on.
    assert_eq!(
        rx.decrypt(Codec::Opus, &a_old_2, ms(100) + GRACE_AFTER_SWITCH),
        Err(DropReason::EpochExpired)
    );
    // b has not switched: its old-epoch frames are accepted until install + 1 s.
    rx.decrypt(Codec::Opus, &enc(&mut b), ms(900))
        .expect("b old at 900 ms");
    assert!(rx.holds_previous_epoch(ms(1009)));
    let b_old = enc(&mut b);
    assert_eq!(
        rx.decrypt(Codec::Opus, &b_old, ms(10) + MAX_OLD_EPOCH),
        Err(DropReason::UnknownKid)
    );
    assert!(!rx.holds_previous_epoch(ms(1010)));
    // b switches late; fine.
    b.switch_epoch(key(11, 2)).expect("switch");
    rx.decrypt(Codec::Opus, &enc(&mut b), ms(1100))
        .expect("b new");
    let f = rx.failures();
    assert_eq!((f.epoch_expired, f.unknown_kid), (1, 1));
}

#[test]
fn epochs_sharing_low_bits_never_coexist() {
    let t = Instant::now();
    let mut rx = Receiver::new();
    rx.install_epoch(key(3, 1), t);
    // Skipping 256 epochs (e.g. after a long reconnect): the old one is dropped at once, so a
    // KID with low bits 3 can only mean epoch 259.
    rx.install_epoch(key(259, 2), t);
    assert!(!rx.holds_previous_epoch(t));
    let mut old = Sender::new(0, key(3, 1)).expect("old");
    let w = old
        .encrypt(Source::Microphone, Codec::Opus, &opus_frame())
        .expect("encrypt");
    assert_eq!(rx.decrypt(Codec::Opus, &w, t), Err(DropReason::AuthFailed));
    let mut new = Sender::new(0, key(259, 2)).expect("new");
    let w = new
        .encrypt(Source::Microphone, Codec::Opus, &opus_frame())
        .expect("encrypt");
    assert_eq!(rx.decrypt(Codec::Opus, &w, t).expect("new").epoch, 259);
    // Installing an older epoch is ignored.
    rx.install_epoch(key(258, 3), t);
    assert_eq!(rx.epoch(), Some(259));
    rx.clear();
    assert_eq!(rx.decrypt(Codec::Opus, &w, t), Err(DropReason::UnknownKid));
}
