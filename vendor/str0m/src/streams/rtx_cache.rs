use std::time::Duration;
use std::time::Instant;

use std::sync::Arc;

use crate::io::DATAGRAM_MAX_PACKET_SIZE;
use crate::packet::Vp8Patch;
use crate::rtp_::{
    ExtensionValues, Frequency, MediaTime, Mid, Pt, Rid, RtpHeader, SenderInfo, SeqNo, Ssrc,
};

use super::RtpPacket;
use super::rtx_cache_buf::EvictingBuffer;

const RTX_CACHE_SIZE_QUANTIZER: usize = 25;
const RTX_CACHE_QUANTIZE_SLOTS: usize = DATAGRAM_MAX_PACKET_SIZE / RTX_CACHE_SIZE_QUANTIZER;

#[derive(Debug)]
pub(crate) struct RtxCache {
    // Data, new additions here probably need to be cleared in [`clear`].
    packet_by_seq_no: EvictingBuffer<CachedPacket>,

    // Technically we want [Option<SeqNo>; X] to indicate the absence of
    // a SeqNo. However We can half the storage space by using the sentinel
    // values SeqNo::MAX to indicate None. Made on the first cached packet (640 bytes that a
    // stream which never caches, such as audio, does not need).
    seq_no_by_quantized_size: Option<Box<[SeqNo; RTX_CACHE_QUANTIZE_SLOTS]>>,

    /// The packet last handed out for a resend, rebuilt from its cached form (made on the
    /// first resend: most streams of an SFU session never resend).
    scratch: Option<Box<RtpPacket>>,

    /// The MID and RID pair the cached packets that carry one carry (see [`CachedPacket`]).
    mid_rid: Option<MidRidPair>,
}

/// A sent packet as the cache keeps it: an [`RtpPacket`] is 408 bytes, mostly header
/// extension values and CSRCs that are nearly always unset, and a stream holds about a second
/// of its packets. This keeps the header's fixed fields inline and the rest only when set. The
/// MID and RID a stream attaches (until the receiver reports on its SSRC) are the same on each
/// of its packets: the cache keeps that pair once and a packet a flag for it. The sequence
/// number is the cache's key, not stored again. `fill` gives back the packet it was made
/// from, equal in every field.
#[derive(Debug)]
struct CachedPacket {
    timestamp: Instant,
    payload: Arc<[u8]>,
    time_numer: u64,
    /// CSRCs, the header extension values (a MID and RID other than the cache's pair among
    /// them) and the sender info, when any is set; the header length when it does not fit
    /// `header_len`.
    rest: Option<Box<Rest>>,
    time_frequency: Frequency,
    rtp_time: u32,
    ssrc: Ssrc,
    sequence_number: u16,
    /// The header length, unless `rest` holds it.
    header_len: u16,
    vp8_patch: Option<Vp8Patch>,
    version: u8,
    payload_type: Pt,
    /// `FLAG_*`.
    flags: u8,
}

const FLAG_PADDING: u8 = 1;
const FLAG_EXTENSION: u8 = 1 << 1;
const FLAG_MARKER: u8 = 1 << 2;
const FLAG_NACKABLE: u8 = 1 << 3;
/// The packet carries the cache's MID and RID pair.
const FLAG_MID_RID: u8 = 1 << 4;

/// The MID and RID a stream attaches to its packets, kept once per cache.
type MidRidPair = (Option<Mid>, Option<Rid>);

#[derive(Debug)]
struct Rest {
    csrc_count: usize,
    csrc: [u32; 15],
    ext_vals: ExtensionValues,
    last_sender_info: Option<SenderInfo>,
    header_len: usize,
}

fn flag(on: bool, f: u8) -> u8 {
    if on { f } else { 0 }
}

/// Whether the pair (MID, RID) of a packet is the cache's `usual` one, which the first
/// packet carrying any becomes.
fn is_usual(pair: MidRidPair, usual: &mut Option<MidRidPair>) -> bool {
    pair != (None, None) && *usual.get_or_insert(pair) == pair
}

impl CachedPacket {
    fn new(p: RtpPacket, usual: &mut Option<MidRidPair>) -> Self {
        let RtpPacket {
            seq_no: _,
            time,
            header,
            payload,
            vp8_patch,
            timestamp,
            last_sender_info,
            nackable,
        } = p;
        let RtpHeader {
            version,
            has_padding,
            has_extension,
            csrc_count,
            marker,
            payload_type,
            sequence_number,
            timestamp: rtp_time,
            ssrc,
            csrc,
            mut ext_vals,
            header_len,
        } = header;
        let mid_rid = is_usual((ext_vals.mid, ext_vals.rid), usual);
        if mid_rid {
            ext_vals.mid = None;
            ext_vals.rid = None;
        }
        let short_len = u16::try_from(header_len).ok();
        let rest = (csrc_count != 0
            || csrc != [0; 15]
            || ext_vals != ExtensionValues::default()
            || last_sender_info.is_some()
            || short_len.is_none())
        .then(|| {
            Box::new(Rest {
                csrc_count,
                csrc,
                ext_vals,
                last_sender_info,
                header_len,
            })
        });
        CachedPacket {
            timestamp,
            payload,
            time_numer: time.numer(),
            rest,
            time_frequency: time.frequency(),
            rtp_time,
            ssrc,
            sequence_number,
            header_len: short_len.unwrap_or(u16::MAX),
            vp8_patch,
            version,
            payload_type,
            flags: flag(has_padding, FLAG_PADDING)
                | flag(has_extension, FLAG_EXTENSION)
                | flag(marker, FLAG_MARKER)
                | flag(nackable, FLAG_NACKABLE)
                | flag(mid_rid, FLAG_MID_RID),
        }
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Rebuilds the packet kept under `seq_no` in `into` (reusing its storage).
    fn fill(&self, seq_no: SeqNo, usual: Option<MidRidPair>, into: &mut RtpPacket) {
        let (csrc_count, csrc, mut ext_vals, last_sender_info, header_len) = match &self.rest {
            Some(r) => (
                r.csrc_count,
                r.csrc,
                r.ext_vals.clone(),
                r.last_sender_info,
                r.header_len,
            ),
            None => (
                0,
                [0; 15],
                ExtensionValues::default(),
                None,
                usize::from(self.header_len),
            ),
        };
        if self.has(FLAG_MID_RID) {
            if let Some((mid, rid)) = usual {
                ext_vals.mid = mid;
                ext_vals.rid = rid;
            }
        }
        *into = RtpPacket {
            seq_no,
            time: MediaTime::new(self.time_numer, self.time_frequency),
            header: RtpHeader {
                version: self.version,
                has_padding: self.has(FLAG_PADDING),
                has_extension: self.has(FLAG_EXTENSION),
                csrc_count,
                marker: self.has(FLAG_MARKER),
                payload_type: self.payload_type,
                sequence_number: self.sequence_number,
                timestamp: self.rtp_time,
                ssrc: self.ssrc,
                csrc,
                ext_vals,
                header_len,
            },
            payload: self.payload.clone(),
            vp8_patch: self.vp8_patch,
            timestamp: self.timestamp,
            last_sender_info,
            nackable: self.has(FLAG_NACKABLE),
        };
    }

    /// Takes back what a resend changed in the rebuilt packet (`poll_packet` sets MID and RID
    /// on the cached header while the remote has not acknowledged the SSRC).
    fn update_from(&mut self, p: &RtpPacket, usual: &mut Option<MidRidPair>) {
        let pair = (p.header.ext_vals.mid, p.header.ext_vals.rid);
        let mid_rid = is_usual(pair, usual);
        let aside = if mid_rid { (None, None) } else { pair };
        match &mut self.rest {
            Some(r) => (r.ext_vals.mid, r.ext_vals.rid) = aside,
            None if aside != (None, None) => {
                self.rest = Some(Box::new(Rest {
                    csrc_count: 0,
                    csrc: [0; 15],
                    ext_vals: ExtensionValues {
                        mid: aside.0,
                        rid: aside.1,
                        ..Default::default()
                    },
                    last_sender_info: None,
                    header_len: usize::from(self.header_len),
                }));
            }
            None => {}
        }
        self.flags = (self.flags & !(FLAG_MID_RID | FLAG_NACKABLE))
            | flag(mid_rid, FLAG_MID_RID)
            | flag(p.nackable, FLAG_NACKABLE);
        self.time_numer = p.time.numer();
        self.time_frequency = p.time.frequency();
    }
}

impl RtxCache {
    pub fn new(max_packet_count: usize, max_packet_age: Duration) -> Self {
        Self {
            packet_by_seq_no: EvictingBuffer::new(10, max_packet_age, max_packet_count),
            seq_no_by_quantized_size: None,
            scratch: None,
            mid_rid: None,
        }
    }

    pub fn cache_sent_packet(&mut self, packet: RtpPacket, now: Instant) {
        assert!(packet.nackable);
        let seq_no = packet.seq_no;
        let quantized_size = packet.payload.len() / RTX_CACHE_SIZE_QUANTIZER;
        self.packet_by_seq_no
            .push(*seq_no, now, CachedPacket::new(packet, &mut self.mid_rid));
        self.seq_no_by_quantized_size
            .get_or_insert_with(|| Box::new([SeqNo::MAX; RTX_CACHE_QUANTIZE_SLOTS]))
            [quantized_size] = seq_no;
        self.remove_old_packets(now);
    }

    pub fn last_cached_seq_no(&self) -> Option<SeqNo> {
        Some(self.packet_by_seq_no.last_position()?.into())
    }

    /// The payload size of a cached packet, without rebuilding it.
    pub fn cached_payload_len(&self, seq_no: SeqNo) -> Option<usize> {
        Some(self.packet_by_seq_no.get(*seq_no)?.payload.len())
    }

    /// The cached packet, rebuilt. Changes to it reach the cache only through
    /// [`RtxCache::write_back`].
    pub fn get_cached_packet_by_seq_no(&mut self, seq_no: SeqNo) -> Option<&mut RtpPacket> {
        let cached = self.packet_by_seq_no.get(*seq_no)?;
        let scratch = self
            .scratch
            .get_or_insert_with(|| Box::new(RtpPacket::blank()));
        cached.fill(seq_no, self.mid_rid, scratch);
        Some(scratch)
    }

    /// Keeps what the sender changed in the packet last handed out (its MID, RID, time and
    /// whether it can be nacked), as it would have changed a packet kept whole.
    pub fn write_back(&mut self) {
        let Some(scratch) = &self.scratch else {
            return;
        };
        if let Some(cached) = self.packet_by_seq_no.get_mut(*scratch.seq_no) {
            cached.update_from(scratch, &mut self.mid_rid);
        }
    }

    pub fn get_cached_packet_smaller_than(&mut self, max_size: usize) -> Option<&mut RtpPacket> {
        let quantized_size = max_size / RTX_CACHE_SIZE_QUANTIZER;

        let seq_no = self.seq_no_by_quantized_size.as_ref()?[..quantized_size]
            .iter()
            .rev()
            .filter(|seq_no| !seq_no.is_max())
            .find(|seq_no| self.packet_by_seq_no.contains(***seq_no))?;

        self.get_cached_packet_by_seq_no(*seq_no)
    }

    fn remove_old_packets(&mut self, now: Instant) {
        self.packet_by_seq_no.maybe_evict(now);
    }

    pub(crate) fn last_packet(&self) -> Option<&[u8]> {
        let packet = self.packet_by_seq_no.last()?;
        Some(packet.payload.as_ref())
    }

    pub(crate) fn clear(&mut self) {
        self.packet_by_seq_no.clear();
        self.seq_no_by_quantized_size = None;
        self.mid_rid = None;
    }
}

#[cfg(test)]
mod test {
    use crate::rtp_::MediaTime;
    use crate::rtp_::RtpHeader;

    use super::*;

    fn after(now: Instant, millis: u64) -> Instant {
        now + Duration::from_millis(millis)
    }

    fn packet(now: Instant, seq_no: u64, millis: u64) -> RtpPacket {
        RtpPacket {
            header: RtpHeader::default(),
            seq_no: seq_no.into(),
            time: MediaTime::from_90khz(0),
            payload: millis.to_be_bytes().into(),
            vp8_patch: None,
            timestamp: after(now, millis),
            last_sender_info: None,
            nackable: true,
        }
    }

    /// A packet with every field set, unlike any the SFU sends.
    fn full_packet(now: Instant, seq_no: u64) -> RtpPacket {
        use crate::packet::Vp8Descriptor;
        use crate::rtp_::{ExtensionValues, VideoOrientation};
        let payload: Arc<[u8]> = vec![0x90, 0xf0, 0x92, 0x34, 0x55, 0xa7, 0x00, 1, 2, 3].into();
        let vp8_patch = Vp8Descriptor::parse(&payload)
            .expect("descriptor")
            .patch()
            .picture_id(0x1234)
            .tl0_pic_idx(7)
            .build()
            .expect("patch");
        let mut csrc = [0; 15];
        csrc[0] = 0x1111;
        csrc[1] = 0x2222;
        RtpPacket {
            seq_no: seq_no.into(),
            time: MediaTime::from_90khz(123_456),
            header: RtpHeader {
                version: 2,
                has_padding: false,
                has_extension: true,
                csrc_count: 2,
                marker: true,
                payload_type: 96.into(),
                sequence_number: seq_no as u16,
                timestamp: 987_654,
                ssrc: 0xabcd.into(),
                csrc,
                ext_vals: ExtensionValues {
                    audio_level: Some(-30),
                    video_orientation: Some(VideoOrientation::Deg90),
                    transport_cc: Some(77),
                    abs_send_time: Some(now),
                    mid: Some("v1".into()),
                    rid: Some("h".into()),
                    ..Default::default()
                },
                header_len: 44,
            },
            payload,
            vp8_patch: Some(vp8_patch),
            timestamp: after(now, 5),
            last_sender_info: Some(SenderInfo {
                ssrc: 0xabcd.into(),
                ntp_time: std::time::SystemTime::UNIX_EPOCH,
                rtp_time: MediaTime::from_90khz(1),
                sender_packet_count: 3,
                sender_octet_count: 4,
            }),
            nackable: true,
        }
    }

    #[test]
    fn a_cached_packet_comes_back_equal_in_every_field() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(10, Duration::from_secs(3));
        // Every field set (the rest kept aside), the SFU's usual packet (all inline), one
        // sent before the receiver reported on the SSRC (with the stream's MID and RID:
        // inline too), one with another MID (aside) and one whose header length does not
        // fit inline (aside).
        let mut usual = packet(now, 2, 20);
        usual.header.payload_type = 96.into();
        usual.header.header_len = 24;
        let mut early = packet_clone(&usual);
        early.seq_no = 3.into();
        early.header.ext_vals.mid = Some("v1".into());
        early.header.ext_vals.rid = Some("h".into());
        let mut other = packet_clone(&early);
        other.seq_no = 4.into();
        other.header.ext_vals.mid = Some("v2".into());
        let mut long = packet_clone(&usual);
        long.seq_no = 5.into();
        long.header.header_len = 70_000;
        rtx_cache.cache_sent_packet(full_packet(now, 1), after(now, 10));
        for p in [&usual, &early, &other, &long] {
            rtx_cache.cache_sent_packet(packet_clone(p), after(now, 20));
        }
        let kept_aside = |seq: u64| {
            rtx_cache
                .packet_by_seq_no
                .get(seq)
                .expect("cached")
                .rest
                .is_some()
        };
        assert!(kept_aside(1));
        assert!(!kept_aside(2));
        assert!(!kept_aside(3));
        assert!(kept_aside(4));
        assert!(kept_aside(5));
        for p in [&early, &other, &long, &early] {
            assert_eq!(
                Some(&mut packet_clone(p)),
                rtx_cache.get_cached_packet_by_seq_no(p.seq_no)
            );
        }
        assert_eq!(
            Some(&mut full_packet(now, 1)),
            rtx_cache.get_cached_packet_by_seq_no(1.into())
        );
        assert_eq!(
            Some(&mut usual),
            rtx_cache.get_cached_packet_by_seq_no(2.into())
        );
        assert_eq!(Some(10), rtx_cache.cached_payload_len(1.into()));
        // Asking again after another packet was rebuilt gives the same.
        assert_eq!(
            Some(&mut full_packet(now, 1)),
            rtx_cache.get_cached_packet_by_seq_no(1.into())
        );
    }

    #[test]
    fn a_change_to_a_handed_out_packet_is_kept_when_written_back() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(10, Duration::from_secs(3));
        rtx_cache.cache_sent_packet(packet(now, 1, 10), after(now, 10));
        let p = rtx_cache
            .get_cached_packet_by_seq_no(1.into())
            .expect("cached");
        p.header.ext_vals.mid = Some("a0".into());
        rtx_cache.write_back();
        let p = rtx_cache
            .get_cached_packet_by_seq_no(1.into())
            .expect("cached");
        assert_eq!(p.header.ext_vals.mid, Some("a0".into()));
        // Another MID than the cache's pair, then none: each is kept as written.
        for mid in [Some("b1".into()), None, Some("a0".into())] {
            let p = rtx_cache
                .get_cached_packet_by_seq_no(1.into())
                .expect("cached");
            p.header.ext_vals.mid = mid;
            p.nackable = mid.is_some();
            rtx_cache.write_back();
            let p = rtx_cache
                .get_cached_packet_by_seq_no(1.into())
                .expect("cached");
            assert_eq!((p.header.ext_vals.mid, p.nackable), (mid, mid.is_some()));
        }
    }

    #[test]
    fn a_cached_packet_is_much_smaller_than_a_packet() {
        // About a second of every send stream's packets is kept: an SFU session has one
        // stream per forwarded track, so this is most of its memory in a large meeting.
        let cached = std::mem::size_of::<CachedPacket>();
        let whole = std::mem::size_of::<RtpPacket>();
        println!("cached packet {cached} bytes, whole packet {whole} bytes");
        assert!(
            cached * 5 <= whole,
            "cached packet {cached} bytes against {whole} for a whole one"
        );
    }

    fn packet_clone(p: &RtpPacket) -> RtpPacket {
        RtpPacket {
            seq_no: p.seq_no,
            time: p.time,
            header: p.header.clone(),
            payload: p.payload.clone(),
            vp8_patch: p.vp8_patch,
            timestamp: p.timestamp,
            last_sender_info: p.last_sender_info,
            nackable: p.nackable,
        }
    }

    #[test]
    fn rtx_cache_0_sized() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(0, Duration::from_secs(3));
        rtx_cache.cache_sent_packet(packet(now, 1, 10), after(now, 10));
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_by_seq_no(1.into())
        );
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_smaller_than(1000)
        );
    }

    #[test]
    fn rtx_cache_0_duration() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(10, Duration::from_secs(0));
        rtx_cache.cache_sent_packet(packet(now, 1, 10), after(now, 10));
        assert_eq!(None, rtx_cache.get_cached_packet_by_seq_no(1.into()));
        assert_eq!(None, rtx_cache.get_cached_packet_smaller_than(1000));
    }

    #[test]
    fn rtx_cache_1_sized() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(1, Duration::from_secs(3));
        rtx_cache.cache_sent_packet(packet(now, 1, 10), after(now, 10));
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_by_seq_no(1.into())
        );
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_smaller_than(1000)
        );
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_smaller_than(25)
        );
        assert_eq!(None, rtx_cache.get_cached_packet_smaller_than(24));
        rtx_cache.cache_sent_packet(packet(now, 2, 20), after(now, 20));
        assert_eq!(
            Some(&mut packet(now, 2, 20)),
            rtx_cache.get_cached_packet_by_seq_no(2.into())
        );
    }

    #[test]
    fn rtx_cache_100_sized_backwards() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(100, Duration::from_secs(3));

        for i in 1..=200 {
            let seq_no = 201 - i;
            let pkt = packet(now, seq_no, (201 - i) * 10);
            let now = after(now, i * 10);
            rtx_cache.cache_sent_packet(pkt, now);
        }

        assert_eq!(
            Some(&mut packet(now, 200, 2000)),
            rtx_cache.get_cached_packet_by_seq_no(200.into())
        );
        assert_eq!(None, rtx_cache.get_cached_packet_by_seq_no(100.into()));
        assert_eq!(None, rtx_cache.get_cached_packet_by_seq_no(101.into()));
    }

    #[test]
    fn rtx_cache_eviction() {
        let now = Instant::now();
        // Cache can take all entries
        let mut rtx_cache = RtxCache::new(400, Duration::from_secs(1));
        for i in 1..=200 {
            let seq_no = i;
            let pkt = packet(now, seq_no, i * 10);
            let now = after(now, i * 10);
            rtx_cache.cache_sent_packet(pkt, now);
        }

        assert_eq!(None, rtx_cache.get_cached_packet_by_seq_no(99.into()));

        assert_eq!(
            Some(&mut packet(now, 100, 1000)),
            rtx_cache.get_cached_packet_by_seq_no(100.into())
        );
        assert_eq!(
            Some(&mut packet(now, 200, 2000)),
            rtx_cache.get_cached_packet_by_seq_no(200.into())
        );
    }
}
