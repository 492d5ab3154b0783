//! The measurement stamp each load frame carries, and the pre-encoded streams it is put into.
//!
//! A stamp sits after the first [`STAMP_AT`] bytes of a frame: an SFU may read the start of a
//! payload (VP8 keyframe bit and size, sealroom's SFrame header), so that part stays as the
//! encoder wrote it. The SFUs forward the rest as opaque bytes.

use std::time::Duration;

/// Bytes at the start of a frame left as they are.
pub const STAMP_AT: usize = 10;
/// `SRB1`: the bytes that mark a stamped frame.
const MAGIC: [u8; 4] = *b"SRB1";
/// magic 4, publisher 4, sequence 4, kind 1, padding 3, send time 8.
pub const STAMP_LEN: usize = 24;

/// Audio frame interval (one Opus packet holds 20 ms).
pub const AUDIO_EVERY: Duration = Duration::from_millis(20);
/// Video frame interval (about 30 fps).
pub const VIDEO_EVERY: Duration = Duration::from_millis(33);

/// Which stream a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Audio,
    Video,
}

/// What a stamp says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The publishing participant's index.
    pub from: u32,
    pub kind: Kind,
    /// Per (publisher, kind), from 0.
    pub seq: u32,
    /// When the publisher handed the frame to str0m, ns since the run's epoch.
    pub sent_ns: u64,
}

/// `frame` with `s` written after its first [`STAMP_AT`] bytes (grown if it is too short).
pub fn stamp(frame: &[u8], s: Stamp) -> Vec<u8> {
    let mut out = frame.to_vec();
    if out.len() < STAMP_AT + STAMP_LEN {
        out.resize(STAMP_AT + STAMP_LEN, 0);
    }
    let b = &mut out[STAMP_AT..STAMP_AT + STAMP_LEN];
    b[0..4].copy_from_slice(&MAGIC);
    b[4..8].copy_from_slice(&s.from.to_be_bytes());
    b[8..12].copy_from_slice(&s.seq.to_be_bytes());
    b[12] = match s.kind {
        Kind::Audio => 0,
        Kind::Video => 1,
    };
    b[13..16].fill(0);
    b[16..24].copy_from_slice(&s.sent_ns.to_be_bytes());
    out
}

/// The stamp in a received frame; `None` if it carries none (bytes from the network: any
/// length, any content).
pub fn read(data: &[u8]) -> Option<Stamp> {
    let b = data.get(STAMP_AT..STAMP_AT + STAMP_LEN)?;
    if b[0..4] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let kind = match b[12] {
        0 => Kind::Audio,
        1 => Kind::Video,
        _ => return None,
    };
    let mut t = [0u8; 8];
    t.copy_from_slice(&b[16..24]);
    Some(Stamp {
        from: u32_at(4),
        kind,
        seq: u32_at(8),
        sent_ns: u64::from_be_bytes(t),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealroom_client::assets::Vp8Loop;

    #[test]
    fn stamps_round_trip_and_keep_the_frame_start() {
        let mut v = Vp8Loop::camera();
        let (_, key) = v.next_frame();
        let s = Stamp {
            from: 7,
            kind: Kind::Video,
            seq: 123_456,
            sent_ns: 9_876_543_210,
        };
        let out = stamp(key, s);
        assert_eq!(out.len(), key.len(), "a large frame keeps its length");
        assert_eq!(
            &out[..STAMP_AT],
            &key[..STAMP_AT],
            "the codec header stays in clear"
        );
        assert_eq!(read(&out), Some(s));
        // A short frame grows to hold the stamp.
        let short = stamp(&[1, 2, 3], s);
        assert_eq!(short.len(), STAMP_AT + STAMP_LEN);
        assert_eq!(read(&short), Some(s));
        // Anything else is not a stamp.
        assert_eq!(read(key), None);
        assert_eq!(read(&out[..STAMP_AT + STAMP_LEN - 1]), None);
        let mut bad = out.clone();
        bad[STAMP_AT + 12] = 9;
        assert_eq!(read(&bad), None);
    }
}
