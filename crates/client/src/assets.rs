//! The pre-encoded media the native client (and the benchmark's load participants) publish:
//! a VP8 camera loop and an Opus microphone loop, compiled in. See `assets/make.sh`.

/// The pre-encoded camera stream (IVF container, VP8).
const CAMERA_IVF: &[u8] = include_bytes!("../assets/camera.ivf");
/// The pre-encoded microphone stream: Opus packets, each after a big-endian u16 length.
const MICROPHONE_OPUS: &[u8] = include_bytes!("../assets/microphone.opus");

/// The looped microphone stream.
pub struct OpusLoop {
    packets: Vec<&'static [u8]>,
    n: u64,
}

impl OpusLoop {
    /// The compiled-in microphone asset.
    pub fn microphone() -> OpusLoop {
        OpusLoop::new(MICROPHONE_OPUS)
    }

    fn new(data: &'static [u8]) -> OpusLoop {
        let mut packets = Vec::new();
        let mut rest = data;
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
        // The asset is compiled in and has 50 packets (checked by a unit test).
        let p = self.packets[(n % self.packets.len() as u64) as usize];
        (n, p)
    }
}

/// The looped camera stream; jumps to the next keyframe when one is asked for.
pub struct Vp8Loop {
    frames: Vec<&'static [u8]>,
    pos: usize,
    n: u64,
    /// Set to jump to the next keyframe (a keyframe request arrived).
    pub keyframe_due: bool,
}

impl Vp8Loop {
    /// Frames of an IVF file (32-byte file header, then 12-byte frame headers: u32 LE size,
    /// u64 LE timestamp).
    /// The compiled-in camera asset.
    pub fn camera() -> Vp8Loop {
        Vp8Loop::new(CAMERA_IVF)
    }

    fn new(ivf: &'static [u8]) -> Vp8Loop {
        let mut frames = Vec::new();
        let mut rest = ivf.get(32..).unwrap_or_default();
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
            // The asset starts with a keyframe (checked by a unit test), so this ends.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assets_parse_and_start_decodable() {
        let mut a = OpusLoop::new(MICROPHONE_OPUS);
        assert_eq!(a.packets.len(), 50);
        // RFC 6716 §3.1: every TOC names a 20 ms configuration (SILK 1/5/9, hybrid 13/15,
        // CELT 19/23/27/31) and frame-count code 0 (one frame per packet).
        let twenty_ms = [1, 5, 9, 13, 15, 19, 23, 27, 31];
        assert!(a
            .packets
            .iter()
            .all(|p| p.len() > 1 && twenty_ms.contains(&(p[0] >> 3)) && p[0] & 0x03 == 0));
        assert_eq!(a.next_frame().0, 0);

        let mut v = Vp8Loop::new(CAMERA_IVF);
        assert_eq!(v.frames.len(), 60);
        let keys: Vec<usize> = (0..60)
            .filter(|i| Vp8Loop::is_keyframe(v.frames[*i]))
            .collect();
        assert_eq!(keys, vec![0, 30]);
        // RFC 6386 §9.1: keyframes carry the start code and 320×240.
        assert_eq!(&v.frames[0][3..6], &[0x9d, 0x01, 0x2a]);
        assert_eq!(&v.frames[0][6..10], &[0x40, 0x01, 0xf0, 0x00]);
        v.next_frame();
        v.next_frame();
        v.keyframe_due = true;
        let (n, f) = v.next_frame();
        assert_eq!(n, 2);
        assert!(
            Vp8Loop::is_keyframe(f),
            "a keyframe request jumps to a keyframe"
        );
        assert_eq!(v.pos, 31);
    }
}
