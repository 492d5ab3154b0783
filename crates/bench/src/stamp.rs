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

/// The pre-encoded camera stream (IVF, VP8 320×240, 60 frames, keyframes at 0 and 30); the
/// native client's asset, made by `crates/client/assets/make.sh`.
const CAMERA_IVF: &[u8] = include_bytes!("../../client/assets/camera.ivf");
/// The pre-encoded microphone stream: 50 Opus packets of 20 ms, each after a big-endian u16
/// length.
const MICROPHONE_OPUS: &[u8] = include_bytes!("../../client/assets/microphone.opus");

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

/// The looped microphone stream.
pub struct OpusLoop {
    packets: Vec<&'static [u8]>,
    n: u64,
}

impl OpusLoop {
    pub fn new() -> OpusLoop {
        let mut packets = Vec::new();
        let mut rest = MICROPHONE_OPUS;
        while let [a, b, tail @ ..] = rest {
            let len = u16::from_be_bytes([*a, *b]) as usize;
            if tail.len() < len {
                break;
            }
            packets.push(&tail[..len]);
            rest = &tail[len..];
        }
        OpusLoop { packets, n: 0 }
    }

    /// (frame number, packet).
    pub fn next_frame(&mut self) -> (u64, &'static [u8]) {
        let n = self.n;
        self.n += 1;
        // The asset is compiled in and holds 50 packets (a unit test checks it).
        let p = self.packets[(n % self.packets.len() as u64) as usize];
        (n, p)
    }
}

impl Default for OpusLoop {
    fn default() -> Self {
        Self::new()
    }
}

/// The looped camera stream; jumps to the next keyframe when one is asked for.
pub struct Vp8Loop {
    frames: Vec<&'static [u8]>,
    pos: usize,
    n: u64,
    pub keyframe_due: bool,
}

impl Vp8Loop {
    /// IVF: a 32-byte file header, then per frame a 12-byte header (u32 LE size, u64 LE pts).
    pub fn new() -> Vp8Loop {
        let mut frames = Vec::new();
        let mut rest = CAMERA_IVF.get(32..).unwrap_or_default();
        while rest.len() >= 12 {
            let size = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let Some(f) = rest.get(12..12 + size) else {
                break;
            };
            frames.push(f);
            rest = &rest[12 + size..];
        }
        Vp8Loop {
            frames,
            pos: 0,
            n: 0,
            keyframe_due: false,
        }
    }

    /// RFC 6386 §9.1: bit 0 of the frame tag is clear on keyframes.
    fn is_keyframe(f: &[u8]) -> bool {
        f.first().is_some_and(|b| b & 1 == 0)
    }

    /// (frame number, frame).
    pub fn next_frame(&mut self) -> (u64, &'static [u8]) {
        let len = self.frames.len();
        if std::mem::take(&mut self.keyframe_due) && !Self::is_keyframe(self.frames[self.pos]) {
            // The asset starts with a keyframe (a unit test checks it), so this ends.
            while !Self::is_keyframe(self.frames[self.pos]) {
                self.pos = (self.pos + 1) % len;
            }
        }
        let f = self.frames[self.pos];
        self.pos = (self.pos + 1) % len;
        let n = self.n;
        self.n += 1;
        (n, f)
    }
}

impl Default for Vp8Loop {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_keep_the_frame_start() {
        let mut v = Vp8Loop::new();
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

    #[test]
    fn the_assets_loop_and_keyframe_requests_jump() {
        let mut a = OpusLoop::new();
        assert_eq!(a.packets.len(), 50);
        assert_eq!(a.next_frame().0, 0);
        let mut v = Vp8Loop::new();
        assert_eq!(v.frames.len(), 60);
        assert!(Vp8Loop::is_keyframe(v.frames[0]));
        v.next_frame();
        v.next_frame();
        v.keyframe_due = true;
        let (n, f) = v.next_frame();
        assert_eq!(n, 2);
        assert!(Vp8Loop::is_keyframe(f));
    }
}
