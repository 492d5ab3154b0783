//! The VP8 RTP payload descriptor (RFC 7741 §4.2), read for keyframe detection.
//!
//! The SFU sees VP8 only as RTP payloads whose frames are SFrame ciphertext; the descriptor
//! is RTP packetization and stays in clear, and so do the first 10 bytes of each frame
//! (docs/E2EE.md), which hold the VP8 payload header (RFC 7741 §4.3) with its P bit.
//! Parsing never panics: a short or inconsistent descriptor yields `None`.

/// What the SFU needs from one VP8 RTP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vp8Descriptor {
    /// S bit: the packet starts a VP8 partition.
    pub start: bool,
    /// PID: the partition index (3 bits).
    pub partition: u8,
    /// PictureID (7 or 15 bits) and whether it is the 15-bit form (M bit).
    pub picture_id: Option<(u16, bool)>,
    /// TL0PICIDX, if present (L bit).
    pub tl0_pic_idx: Option<u8>,
    /// Offset of the VP8 payload (after the descriptor).
    pub payload_offset: usize,
}

impl Vp8Descriptor {
    /// Parses the descriptor at the start of `payload` (RFC 7741 §4.2):
    /// ```text
    ///       0 1 2 3 4 5 6 7
    ///      +-+-+-+-+-+-+-+-+
    ///      |X|R|N|S|R| PID | (REQUIRED)
    ///      +-+-+-+-+-+-+-+-+
    /// X:   |I|L|T|K| RSV   | (OPTIONAL)
    ///      +-+-+-+-+-+-+-+-+
    /// I:   |M| PictureID   | (OPTIONAL, 7 or 15 bits)
    ///      +-+-+-+-+-+-+-+-+
    /// L:   |   TL0PICIDX   | (OPTIONAL)
    ///      +-+-+-+-+-+-+-+-+
    /// T/K: |TID|Y| KEYIDX  | (OPTIONAL)
    ///      +-+-+-+-+-+-+-+-+
    /// ```
    /// `None` when the payload ends inside the descriptor or carries no VP8 byte after it.
    pub(crate) fn parse(payload: &[u8]) -> Option<Self> {
        let first = *payload.first()?;
        let mut at = 1;
        let mut picture_id = None;
        let mut tl0_pic_idx = None;
        if first & 0x80 != 0 {
            let x = *payload.get(at)?;
            at += 1;
            if x & 0x80 != 0 {
                let b = *payload.get(at)?;
                at += 1;
                if b & 0x80 != 0 {
                    let low = *payload.get(at)?;
                    at += 1;
                    picture_id = Some(((u16::from(b & 0x7f) << 8) | u16::from(low), true));
                } else {
                    picture_id = Some((u16::from(b), false));
                }
            }
            if x & 0x40 != 0 {
                tl0_pic_idx = Some(*payload.get(at)?);
                at += 1;
            }
            if x & 0x30 != 0 {
                // TID/Y/KEYIDX share one byte (T or K).
                payload.get(at)?;
                at += 1;
            }
        }
        if at >= payload.len() {
            return None;
        }
        Some(Vp8Descriptor {
            start: first & 0x10 != 0,
            partition: first & 0x07,
            picture_id,
            tl0_pic_idx,
            payload_offset: at,
        })
    }

    /// The packet starts a VP8 frame (S=1, PID=0) whose payload header says keyframe
    /// (P bit = 0, RFC 7741 §4.3; RFC 6386 §9.1).
    pub(crate) fn starts_keyframe(&self, payload: &[u8]) -> bool {
        self.start
            && self.partition == 0
            && payload
                .get(self.payload_offset)
                .is_some_and(|b| b & 0x01 == 0)
    }
}

/// Whether this VP8 RTP payload is the first packet of a keyframe.
#[cfg(test)]
pub(crate) fn is_keyframe_start(payload: &[u8]) -> bool {
    Vp8Descriptor::parse(payload).is_some_and(|d| d.starts_keyframe(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_descriptor_keyframe_and_delta() {
        // S=1, PID=0; payload header 0x10 (P=0: keyframe) / 0x11 (P=1: delta).
        assert!(is_keyframe_start(&[0x10, 0x10, 0x02, 0x00]));
        assert!(!is_keyframe_start(&[0x10, 0x11, 0x02, 0x00]));
        let d = Vp8Descriptor::parse(&[0x10, 0x10]).expect("present in this test");
        assert_eq!(d.payload_offset, 1);
        assert_eq!(d.picture_id, None);
    }

    #[test]
    fn continuation_and_later_partitions_are_not_keyframe_starts() {
        // S=0: middle of a frame, whatever the byte after the descriptor says.
        assert!(!is_keyframe_start(&[0x00, 0x10, 0x00]));
        // S=1 but PID=1: start of the second partition.
        assert!(!is_keyframe_start(&[0x11, 0x10, 0x00]));
    }

    #[test]
    fn extensions_with_15_bit_picture_id() {
        // X=1, S=1; I,L,T set; M=1 PictureID 0x1234; TL0PICIDX 7; TID byte; header P=0.
        let p = [0x90, 0xe0, 0x80 | 0x12, 0x34, 0x07, 0x40, 0x50, 0xaa];
        let d = Vp8Descriptor::parse(&p).expect("present in this test");
        assert_eq!(d.picture_id, Some((0x1234, true)));
        assert_eq!(d.tl0_pic_idx, Some(7));
        assert_eq!(d.payload_offset, 6);
        assert!(d.starts_keyframe(&p));
        // The same with P=1 is a delta frame.
        let mut delta = p;
        delta[6] = 0x51;
        assert!(!is_keyframe_start(&delta));
    }

    #[test]
    fn extensions_with_7_bit_picture_id_and_keyidx_only() {
        // X=1, S=1; I and K set; M=0 PictureID 0x45; KEYIDX byte; header.
        let p = [0x90, 0x90, 0x45, 0x03, 0x00];
        let d = Vp8Descriptor::parse(&p).expect("present in this test");
        assert_eq!(d.picture_id, Some((0x45, false)));
        assert_eq!(d.tl0_pic_idx, None);
        assert_eq!(d.payload_offset, 4);
        assert!(d.starts_keyframe(&p));
    }

    #[test]
    fn truncated_descriptors_are_rejected() {
        let full = [0x90, 0xf0, 0x80 | 0x12, 0x34, 0x07, 0x40, 0x50];
        for len in 0..full.len() - 1 {
            assert_eq!(Vp8Descriptor::parse(&full[..len]), None, "len {len}");
            assert!(!is_keyframe_start(&full[..len]));
        }
        assert!(Vp8Descriptor::parse(&full).is_some());
        // A descriptor with nothing after it.
        assert_eq!(Vp8Descriptor::parse(&[0x10]), None);
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift, seeded; SEALROOM_TEST_SEED overrides (STYLE: randomised tests print
        // their seed).
        let seed = std::env::var("SEALROOM_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x9e37_79b9_7f4a_7c15_u64);
        println!("seed {seed}");
        let mut x = seed | 1;
        let mut buf = [0u8; 12];
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 13) as usize;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (x >> (i * 5)) as u8;
            }
            let p = &buf[..len];
            if let Some(d) = Vp8Descriptor::parse(p) {
                assert!(d.payload_offset < p.len());
                let _ = d.starts_keyframe(p);
            }
        }
    }
}
