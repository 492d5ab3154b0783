use std::collections::{HashMap, VecDeque};
use std::fmt::{self};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::config_mod::RtcpReportIntervals;
use crate::format::CodecConfig;
use crate::format::PayloadParams;
use crate::media::{KeyframeRequest, MID_PROBE, Media, SenderFeedback};
use crate::pacer::QueueState;
use crate::packet::Vp8Patch;
use crate::rtp_::MidRid;
use crate::rtp_::Ssrc;
use crate::rtp_::{Bitrate, Pt};
use crate::rtp_::{DlrrItem, Rtcp, RtcpFb, RtpHeader};
use crate::rtp_::{MediaTime, SenderInfo};
use crate::rtp_::{Mid, Rid, SeqNo};
use crate::util::already_happened;

pub use self::receive::StreamRx;
pub use self::send::{RtpWrite, StreamTx, StreamTxQueueInfo};

mod receive;
pub(crate) mod register;
pub(crate) mod register_nack;
mod rtx_cache;
pub(crate) mod rtx_cache_buf;
mod send;
mod send_queue;
mod send_stats;

pub(crate) use send::{DEFAULT_RTX_CACHE_DURATION, DEFAULT_RTX_RATIO_CAP};

pub(crate) struct StreamTimeoutConfig<'a> {
    pub(crate) codecs: &'a CodecConfig,
    pub(crate) intervals: RtcpReportIntervals,
}

/// Packet of RTP data.
///
/// As emitted by [`Event::RtpPacket`][crate::Event::RtpPacket] when using rtp mode.
#[derive(PartialEq, Eq)]
pub struct RtpPacket {
    /// Extended sequence number to avoid having to deal with ROC.
    pub seq_no: SeqNo,

    /// Extended RTP time in the clock frequency of the codec. To avoid dealing with ROC.
    ///
    /// For a newly scheduled outgoing packet, the clock_rate is not correctly set until
    /// we do the poll_output().
    pub time: MediaTime,

    /// Parsed RTP header.
    pub header: RtpHeader,

    /// RTP payload. This contains no header.
    pub payload: Arc<[u8]>,

    vp8_patch: Option<Vp8Patch>,

    /// str0m server timestamp.
    ///
    /// This timestamp has nothing to do with RTP itself. For outgoing packets, this is when
    /// the packet was first handed over to str0m and enqueued in the outgoing send buffers.
    /// For incoming packets it's the time we received the network packet.
    pub timestamp: Instant,

    /// Sender information from the most recent Sender Report(SR).
    ///
    /// If no Sender Report(SR) has been received or this packet is being sent by str0m this is [`None`].
    pub last_sender_info: Option<SenderInfo>,

    /// Whether this packet can be nacked.
    ///
    /// This is often false for audio, but might also be false for discardable frames when
    /// using temporal encoding as in a VP8 simulcast situation.
    pub(crate) nackable: bool,
}

/// Event when an encoded stream is considered paused/unpaused.
///
/// This means the stream has not received any data for some time (default 1.5 seconds).
#[derive(Debug)]
pub struct StreamPaused {
    /// The main SSRC of the encoded stream that paused.
    pub ssrc: Ssrc,

    /// The mid the encoded stream belongs to.
    pub mid: Mid,

    /// The rid, if the encoded stream has a rid.
    pub rid: Option<Rid>,

    /// Whether the stream is paused or not.
    pub paused: bool,
}

/// 255 is out of range for a real PT, which is 7 bit.
const BLANK_PACKET_DEFAULT_PT: Pt = Pt::new_with_value(255);

impl RtpPacket {
    pub(crate) fn blank() -> RtpPacket {
        RtpPacket {
            seq_no: 0.into(),
            time: MediaTime::from_90khz(0),
            header: RtpHeader {
                payload_type: BLANK_PACKET_DEFAULT_PT,
                ..Default::default()
            },
            payload: Arc::default(), // This payload is never used. See RtpHeader::create_padding_packet
            vp8_patch: None,
            nackable: false,
            last_sender_info: None,
            timestamp: already_happened(),
        }
    }
}

/// Holder of incoming/outgoing encoded streams.
///
/// Each encoded stream is uniquely identified by an SSRC. The concept of mid/rid sits on the Media
/// level together with the ability to translate a mid/rid to an encoded stream.
#[derive(Debug)]
pub(crate) struct Streams {
    /// All incoming encoded streams.
    streams_rx: HashMap<Ssrc, StreamRx>,

    /// Each incoming SSRC is mapped to a Mid/Ssrc. The Ssrc in the value is for the case
    /// where the incoming SSRC is for an RTX and we want the "main".
    rx_lookup: HashMap<Ssrc, RxLookup>,

    /// Time we last cleaned up unused entries from source_keys_rx.
    last_rx_lookup_cleanup: Instant,

    /// All outgoing encoded streams.
    streams_tx: HashMap<Ssrc, StreamTx>,

    /// Non-media padding source. Its sequence counter survives media changes.
    probe_tx: StreamTx,
    probe_media: Option<(Mid, Pt)>,

    /// Local SSRC used before we got any StreamTx. This is used for RTCP if we don't
    /// have any reasonable value to use.
    default_ssrc_tx: Ssrc,

    /// We need to report all RR/SR for a Mid together in one RTCP. This is a dynamic
    /// list that we don't want to allocate on every handle_timeout.
    mids_to_report: Vec<Mid>,

    /// Whether periodic statistics reports are expected to be generated. This informs us on
    /// whether we should be holding onto data needed for those reports or not.
    enable_stats: bool,

    /// Threshold above which an outgoing RTP packet triggers an MTU warning. Used as a
    /// hard cap when selecting RTX cache entries for spurious padding.
    mtu_warn: usize,
    pause_threshold: Duration,

    /// sealroom: the soonest regular RR/SR time (`regular_feedback_at`), kept until something
    /// it depends on changes (PATCHES.md). It depends on the set of streams, each stream's
    /// last report time, a send stream's kind and a receive stream's RTX; those change only
    /// where `forget_feedback_at` is called.
    feedback_at: Option<(Duration, Duration, Option<Instant>)>,
    /// How many timeouts walked the streams for due reports (tests only).
    #[cfg(test)]
    pub(crate) report_walks: usize,
    /// sealroom: whether a send stream may hold a keyframe request (a PLI or FIR arrived
    /// since a walk last found none), so that `poll_keyframe_request` walks the send streams
    /// only then and not on every `poll_event` (PATCHES.md). Set by `note_tx_requests`.
    pub(crate) keyframe_request_maybe: bool,
    /// The same for REMB requests and `poll_remb_request`.
    pub(crate) remb_request_maybe: bool,
}

/// Delay between cleaning up the RxLookup.
const RX_LOOKUP_CLEANUP_INTERVAL: Duration = Duration::from_millis(10_000);

/// How old an RxLookup entry may be.
const RX_LOOKUP_EXPIRY: Duration = Duration::from_millis(30_000);

#[derive(Debug)]
struct RxLookup {
    mid: Mid,
    main: Ssrc,
    last_used: Instant,
}

impl Streams {
    pub(crate) fn new(enable_stats: bool, mtu_warn: usize, pause_threshold: Duration) -> Self {
        Self {
            streams_rx: Default::default(),
            rx_lookup: Default::default(),
            last_rx_lookup_cleanup: already_happened(),
            streams_tx: Default::default(),
            probe_tx: StreamTx::new_probe(mtu_warn),
            probe_media: None,
            default_ssrc_tx: 0.into(), // this will be changed
            mids_to_report: Vec::with_capacity(10),
            enable_stats,
            mtu_warn,
            pause_threshold,
            feedback_at: None,
            #[cfg(test)]
            report_walks: 0,
            keyframe_request_maybe: false,
            remb_request_maybe: false,
        }
    }

    pub(crate) fn map_dynamic_by_rid(
        &mut self,
        ssrc: Ssrc,
        midrid: MidRid,
        media: &mut Media,
        payload: PayloadParams,
        is_main: bool,
    ) {
        // This is the point of the function.
        let rid = midrid
            .rid()
            .expect("map_dynamic_by_rid to be called with Rid");

        // Check if the mid/rid combo is not expected
        if !media.rids_rx().contains(rid) {
            trace!("Mid does not expect rid: {} {}", midrid.mid(), rid);
            return;
        }

        let maybe_stream = self.stream_rx_by_midrid(midrid);

        let (ssrc_main, rtx) = if is_main {
            let maybe_rtx = maybe_stream.and_then(|s| s.rtx());
            (ssrc, maybe_rtx)
        } else {
            // This can bail if the main SSRC has not been discovered yet.
            let Some(stream) = maybe_stream else {
                return;
            };
            (stream.ssrc(), Some(ssrc))
        };

        self.map_dynamic_finish(midrid, ssrc_main, rtx, media, payload);
    }

    pub(crate) fn map_dynamic_by_pt(
        &mut self,
        ssrc: Ssrc,
        midrid: MidRid,
        media: &mut Media,
        payload: PayloadParams,
        is_main: bool,
    ) {
        if media.rids_rx().is_specific() {
            trace!(
                "Media expects rid and RTP packet has only mid: {:?}",
                media.rids_rx()
            );
            return;
        }

        let maybe_stream = self.stream_rx_by_midrid(midrid);

        let (ssrc_main, rtx) = if is_main {
            let maybe_rtx = maybe_stream.and_then(|s| s.rtx());
            (ssrc, maybe_rtx)
        } else {
            // This can bail if the main SSRC has not been discovered yet.
            let Some(stream) = maybe_stream else {
                return;
            };
            // The main is the SSRC in the stream already. The incoming is RTX.
            let ssrc_main = stream.ssrc();
            (ssrc_main, Some(ssrc))
        };

        self.map_dynamic_finish(midrid, ssrc_main, rtx, media, payload);
    }

    #[allow(clippy::too_many_arguments)]
    fn map_dynamic_finish(
        &mut self,
        midrid: MidRid,
        ssrc_main: Ssrc,
        rtx: Option<Ssrc>,
        media: &mut Media,
        payload: PayloadParams,
    ) {
        let maybe_stream = self.stream_rx_by_midrid(midrid);

        if let Some(stream) = maybe_stream {
            let ssrc_from = stream.ssrc();
            let rtx_from = stream.rtx();

            // Handle changes in SSRC.
            if ssrc_from != ssrc_main {
                // We got a change in main SSRC for this stream.
                let did_change = self.change_stream_rx_ssrc(ssrc_from, ssrc_main);

                // When the SSRC changes, any payload type on this RID can start with
                // a new sequence number. Reset all depayloaders for the RID.
                if did_change {
                    media.reset_depayloaders_for_rid(midrid.rid());
                }
            }

            // Handle changes in RTX
            if let (Some(rtx_from), Some(rtx_to)) = (rtx_from, rtx) {
                if rtx_from != rtx_to {
                    self.change_stream_rx_rtx(rtx_from, rtx_to);
                }
            }
        }

        // If we don't have an RTX PT configured, we don't want NACK.
        let suppress_nack = payload.resend.is_none();

        // If stream already exists, this might only "fill in" the RTX.
        self.expect_stream_rx(ssrc_main, rtx, midrid, suppress_nack);
    }

    pub fn expect_stream_rx(
        &mut self,
        ssrc: Ssrc,
        rtx: Option<Ssrc>,
        midrid: MidRid,
        suppress_nack: bool,
    ) -> &mut StreamRx {
        // A new stream, or a new RTX (a receive stream's report interval follows it).
        self.forget_feedback_at();
        let stream = self
            .streams_rx
            .entry(ssrc)
            .or_insert_with(|| StreamRx::new(ssrc, midrid, suppress_nack, self.pause_threshold));

        if let Some(rtx) = rtx {
            stream.maybe_reset_rtx(rtx);
        }

        stream
    }

    pub fn remove_stream_rx(&mut self, ssrc: Ssrc) -> bool {
        self.forget_feedback_at();
        let stream = self.streams_rx.remove(&ssrc);
        let existed = stream.is_some();

        self.rx_lookup.retain(|k, l| *k != ssrc && l.main != ssrc);

        existed
    }

    pub fn declare_stream_tx(
        &mut self,
        ssrc: Ssrc,
        rtx: Option<Ssrc>,
        midrid: MidRid,
    ) -> &mut StreamTx {
        self.forget_feedback_at();
        self.streams_tx
            .entry(ssrc)
            .or_insert_with(|| StreamTx::new(ssrc, rtx, midrid, self.enable_stats, self.mtu_warn))
    }

    pub fn remove_stream_tx(&mut self, ssrc: Ssrc) -> bool {
        self.forget_feedback_at();
        self.streams_tx.remove(&ssrc).is_some()
    }

    pub(crate) fn local_sender_ssrcs(&self) -> Vec<Ssrc> {
        self.streams_tx
            .values()
            .flat_map(|s| std::iter::once(s.ssrc()).chain(s.rtx()))
            .collect()
    }

    pub(crate) fn reset_send_buffers(&mut self) {
        for stream in self.streams_tx.values_mut() {
            stream.reset_buffers();
        }
    }

    pub fn stream_rx(&mut self, ssrc: &Ssrc) -> Option<&mut StreamRx> {
        self.streams_rx.get_mut(ssrc)
    }

    pub fn stream_tx(&mut self, ssrc: &Ssrc) -> Option<&mut StreamTx> {
        self.streams_tx.get_mut(ssrc)
    }

    /// Lookup the "main" SSRC and mid for a given SSRC(main or RTX).
    pub(crate) fn mid_ssrc_rx_by_ssrc_or_rtx(
        &mut self,
        now: Instant,
        ssrc: Ssrc,
    ) -> Option<(Mid, Ssrc)> {
        // A direct hit on SSRC is to prefer. The idea is that mid/rid are only sent
        // for the initial x seconds and then we start using SSRC only instead.
        if let Some(r) = self.rx_lookup.get_mut(&ssrc) {
            r.last_used = now;
            return Some((r.mid, r.main));
        }

        let maybe_stream = self.stream_rx_by_ssrc_or_rtx(ssrc);
        if let Some(stream) = maybe_stream {
            let mid = stream.mid();
            let ssrc_main = stream.ssrc();

            self.rx_lookup.insert(
                ssrc,
                RxLookup {
                    mid,
                    main: ssrc_main,
                    last_used: now,
                },
            );

            return Some((mid, ssrc_main));
        }

        None
    }

    pub(crate) fn regular_feedback_at(&mut self, i: RtcpReportIntervals) -> Option<Instant> {
        if let Some((audio, video, at)) = self.feedback_at {
            if (audio, video) == (i.audio, i.video) {
                // Every test in a debug build checks the cache against a fresh walk.
                debug_assert_eq!(at, self.feedback_at_uncached(i), "stale feedback_at");
                return at;
            }
        }
        let at = self.feedback_at_uncached(i);
        self.feedback_at = Some((i.audio, i.video, at));
        at
    }

    fn feedback_at_uncached(&self, i: RtcpReportIntervals) -> Option<Instant> {
        let r = self
            .streams_rx
            .values()
            .filter(|s| !s.ssrc().is_probe())
            .map(|s| s.receiver_report_at(i));
        let s = self.streams_tx.values().map(|s| s.sender_report_at(i));
        r.chain(s).min()
    }

    /// sealroom: something `regular_feedback_at` depends on may have changed (PATCHES.md).
    pub(crate) fn forget_feedback_at(&mut self) {
        self.feedback_at = None;
    }

    pub(crate) fn paused_at(&self) -> Option<Instant> {
        self.streams_rx.values().find_map(|s| s.paused_at())
    }

    pub(crate) fn send_stream(&self) -> Option<Instant> {
        if self.streams_tx.values().any(|s| s.need_timeout()) {
            Some(already_happened())
        } else {
            None
        }
    }

    pub(crate) fn pending_request(&self) -> Option<Instant> {
        if self.streams_rx.values().any(|s| s.has_pending_request()) {
            Some(already_happened())
        } else {
            None
        }
    }

    pub(crate) fn handle_timeout(
        &mut self,
        now: Instant,
        sender_ssrc: Ssrc,
        do_nack: bool,
        medias: &[Media],
        config: StreamTimeoutConfig<'_>,
        feedback: &mut VecDeque<Rtcp>,
    ) {
        let StreamTimeoutConfig { codecs, intervals } = config;

        // sealroom: no stream needs a report before the cached next report time (the
        // minimum of exactly the times `need_rr` and `need_sr` compare against), so the two
        // walks that ask every stream are skipped until then. A pass runs once per packet
        // queued; in debug builds the cache is checked against a fresh walk on every read.
        let report_due = self
            .regular_feedback_at(intervals)
            .is_some_and(|at| now >= at);
        #[cfg(test)]
        if report_due {
            self.report_walks += 1;
        }

        self.mids_to_report.clear(); // Clear for checking StreamRx.
        if report_due {
            for stream in self.streams_rx.values() {
                if stream.need_rr(now, intervals) {
                    self.mids_to_report.push(stream.mid());
                }
            }
        }
        // sealroom: receiver reports are created below, so their next times move.
        if !self.mids_to_report.is_empty() {
            self.forget_feedback_at();
        }

        for stream in self.streams_rx.values_mut() {
            stream.maybe_create_keyframe_request(sender_ssrc, feedback);
            stream.maybe_create_remb_request(sender_ssrc, feedback);

            // All StreamRx belonging to the same Mid are reported together.
            if self.mids_to_report.contains(&stream.mid()) {
                stream.create_rr_and_update(now, sender_ssrc, feedback);
            }

            if do_nack {
                stream.maybe_create_nack(now, sender_ssrc, feedback);
            }

            stream.handle_timeout(now);
        }

        self.mids_to_report.clear(); // start over for StreamTx.
        if report_due {
            for stream in self.streams_tx.values() {
                if stream.need_sr(now, intervals) {
                    self.mids_to_report.push(stream.mid());
                }
            }
        }
        let mut kind_unknown = false;

        for stream in self.streams_tx.values_mut() {
            let mid = stream.mid();
            kind_unknown |= !stream.kind_known();

            // All StreamTx belonging to the same Mid are reported together.
            if self.mids_to_report.contains(&mid) {
                stream.create_sr_and_update(now, feedback);
            }

            // Finding the first (main) PT that also has RTX for the Media is expensive,
            // this closure is run only when needed.
            // The unwrap is okay because we cannot have StreamTx with a Mid without the corresponding Media.
            let get_media = move || (medias.iter().find(|m| m.mid() == mid).unwrap(), codecs);

            stream.handle_timeout(now, get_media);
        }
        // sealroom: sender reports were created, or a send stream learned its kind (its
        // first timeout), which starts its reports.
        if !self.mids_to_report.is_empty() || kind_unknown {
            self.forget_feedback_at();
        }

        if now > self.rx_lookup_at() {
            self.rx_lookup
                .retain(|_, l| now - l.last_used <= RX_LOOKUP_EXPIRY);
            self.last_rx_lookup_cleanup = now;
        }
    }

    /// sealroom: a send stream was given a PLI or FIR (`keyframe`) or a REMB (`remb`) in
    /// `StreamTx::handle_rtcp`; the requests it may hold are looked for on the next poll.
    pub(crate) fn note_tx_requests(&mut self, keyframe: bool, remb: bool) {
        self.keyframe_request_maybe |= keyframe;
        self.remb_request_maybe |= remb;
    }

    pub(crate) fn poll_keyframe_request(&mut self) -> Option<KeyframeRequest> {
        if !self.keyframe_request_maybe {
            debug_assert!(
                self.streams_tx.values().all(|s| !s.has_keyframe_request()),
                "a keyframe request was left without note_tx_requests"
            );
            return None;
        }
        let found = self.streams_tx.values_mut().find_map(|s| {
            let kind = s.poll_keyframe_request()?;
            Some(KeyframeRequest {
                mid: s.mid(),
                rid: s.rid(),
                kind,
            })
        });
        if found.is_none() {
            self.keyframe_request_maybe = false;
        }
        found
    }

    pub(crate) fn poll_sender_feedback(&mut self) -> Option<SenderFeedback> {
        self.streams_rx.values_mut().find_map(|s| {
            let (sender_info, at) = s.poll_sender_info()?;

            Some(SenderFeedback {
                mid: s.mid(),
                rid: s.rid(),
                received_at: at,
                sender_info,
            })
        })
    }

    pub(crate) fn poll_remb_request(&mut self) -> Option<(Mid, Bitrate)> {
        if !self.remb_request_maybe {
            debug_assert!(
                self.streams_tx.values().all(|s| !s.has_remb_request()),
                "a REMB request was left without note_tx_requests"
            );
            return None;
        }
        let found = self
            .streams_tx
            .values_mut()
            .find_map(|s| s.poll_remb_request().map(|b| (s.mid(), b)));
        if found.is_none() {
            self.remb_request_maybe = false;
        }
        found
    }

    pub(crate) fn poll_stream_paused(&mut self) -> Option<StreamPaused> {
        self.streams_rx.values_mut().find_map(|s| s.poll_paused())
    }

    pub(crate) fn has_stream_rx(&self, ssrc: Ssrc) -> bool {
        self.streams_rx.contains_key(&ssrc)
    }

    pub(crate) fn has_stream_tx(&self, ssrc: Ssrc) -> bool {
        self.streams_tx.contains_key(&ssrc)
    }

    pub(crate) fn handle_dlrr(&mut self, now: Instant, dlrr: DlrrItem) {
        let is_default_ssrc = !self.default_ssrc_tx.is_probe() && dlrr.ssrc == self.default_ssrc_tx;
        if !is_default_ssrc && !self.has_stream_tx(dlrr.ssrc) {
            trace!("Ignoring DLRR for unknown local SSRC: {}", dlrr.ssrc);
            return;
        }

        // DLRR identifies our RRTR sender, not a remote media SSRC. The measured
        // round trip is shared by receive streams on this peer's transport.
        for stream in self.streams_rx.values_mut() {
            stream.handle_rtcp(now, RtcpFb::DlrrItem(dlrr));
        }
    }

    pub(crate) fn streams_rx(&mut self) -> impl Iterator<Item = &mut StreamRx> {
        self.streams_rx.values_mut()
    }

    pub(crate) fn streams_tx(&mut self) -> impl Iterator<Item = &mut StreamTx> {
        self.streams_tx.values_mut()
    }

    pub(crate) fn ssrcs_tx(&self, mid: Mid) -> Vec<(Ssrc, Option<Ssrc>)> {
        self.streams_tx
            .values()
            .filter(|s| s.mid() == mid)
            .map(|s| (s.ssrc(), s.rtx()))
            .collect()
    }

    pub(crate) fn new_ssrc(&self) -> Ssrc {
        loop {
            // This new guarantees we never get SSRC 0 (reserved for BWE probes)
            let ssrc = Ssrc::new();

            let has_ssrc = self.has_stream_rx(ssrc) || self.has_stream_tx(ssrc);

            if has_ssrc {
                continue;
            }

            // Need to check RTX as well.
            let has_rtx_rx = self.streams_rx.values().any(|s| s.rtx() == Some(ssrc));
            if has_rtx_rx {
                continue;
            }

            let has_rtx_tx = self.streams_tx.values().any(|s| s.rtx() == Some(ssrc));
            if has_rtx_tx {
                continue;
            }

            // Not used
            break ssrc;
        }
    }

    pub fn new_ssrc_pair(&self) -> (Ssrc, Ssrc) {
        let ssrc = self.new_ssrc();

        let rtx = loop {
            let proposed = self.new_ssrc();
            // Avoid clashing with just allocated main SSRC.
            if proposed != ssrc {
                break proposed;
            }
        };

        (ssrc, rtx)
    }

    pub(crate) fn first_ssrc_remote(&self) -> Ssrc {
        *self.streams_rx.keys().next().unwrap_or(&0.into())
    }

    pub(crate) fn first_ssrc_local(&mut self) -> Ssrc {
        if let Some(ssrc) = self.streams_tx.keys().next() {
            // If there is some local Tx SSRC, use that.
            *ssrc
        } else {
            // Fallback in case we don't have any Tx SSRC.
            if *self.default_ssrc_tx == 0 {
                // Do not use 0, allocate one that is not in session already.
                self.default_ssrc_tx = self.new_ssrc();
            }
            self.default_ssrc_tx
        }
    }

    /// Bind the probe source only while a cluster is authorized. Changing the
    /// binding drops queued padding but preserves the SSRC's SRTP sequence.
    pub(crate) fn set_probe_media(&mut self, media: Option<(Mid, Pt)>) {
        if media == self.probe_media {
            return;
        }
        self.probe_tx.reset_buffers();
        if let Some((mid, pt)) = media {
            self.probe_tx.set_probe_media(mid, pt);
        }
        self.probe_media = media;
    }

    pub(crate) fn send_queue_states(
        &mut self,
        now: Instant,
        mut can_probe: impl FnMut(Mid, Pt) -> bool,
    ) -> impl Iterator<Item = QueueState> {
        // Snapshot each stream once, preferring media/RTX padding over the
        // fallback. No extra stream or retransmission-queue scan is needed.
        let mut media_padding = false;
        let mut probe_queue = self.probe_media.map(|_| {
            let mut queue = self.probe_tx.queue_state(now);
            queue.midrid = MidRid(MID_PROBE, None);
            queue
        });
        // sealroom: idle streams (nothing queued, no resends, no padding; see
        // `StreamTx::pacer_idle`) are mostly left out. Their states change none of the
        // pacer's decisions except one, the padding source: the pacer pads on the eligible
        // source sent on most recently, so of the idle sources only that one is kept. Every
        // pacer pass copied and folded over all of them, and a pass runs once per packet
        // queued; an SFU session has one send stream per remote track, nearly all idle at
        // any moment (audio between its packets, video between frames).
        let mut streams = self.streams_tx.values_mut();
        let mut idle_padding: Option<QueueState> = None;
        std::iter::from_fn(move || {
            for stream in streams.by_ref() {
                let idle = stream.pacer_idle();
                if idle && !stream.padding_enabled() {
                    stream.idle_queue_info(now);
                    continue;
                }
                let mut queue = stream.queue_state(now);
                if probe_queue.is_some() && queue.use_for_padding {
                    // Only negotiated feedback sources can provide probe padding.
                    // Ordinary padding keeps its existing eligibility.
                    queue.use_for_padding = stream
                        .padding_pt()
                        .is_some_and(|pt| can_probe(stream.mid(), pt));
                }
                media_padding |= queue.use_for_padding;
                if !idle {
                    return Some(queue);
                }
                // Ties go to the later stream, as the pacer's `max_by_key` would pick.
                let best = idle_padding
                    .as_ref()
                    .is_none_or(|b| queue.snapshot.last_emitted >= b.snapshot.last_emitted);
                if queue.use_for_padding && best {
                    idle_padding = Some(queue);
                }
            }
            if let Some(queue) = idle_padding.take() {
                return Some(queue);
            }
            let mut queue = probe_queue.take()?;
            queue.use_for_padding = !media_padding;
            Some(queue)
        })
    }

    pub(crate) fn stream_tx_by_midrid(&mut self, midrid: MidRid) -> Option<&mut StreamTx> {
        if midrid == MidRid(MID_PROBE, None) {
            self.probe_media?;
            return Some(&mut self.probe_tx);
        }
        self.streams_tx.values_mut().find(|s| s.is_midrid(midrid))
    }

    pub(crate) fn stream_rx_by_midrid(&mut self, midrid: MidRid) -> Option<&mut StreamRx> {
        self.streams_rx.values_mut().find(|s| s.is_midrid(midrid))
    }

    pub(crate) fn remove_streams_by_mid(&mut self, mid: Mid) {
        self.forget_feedback_at();
        self.streams_tx.retain(|_, s| s.mid() != mid);
        self.streams_rx.retain(|_, s| s.mid() != mid);
        self.rx_lookup.retain(|_, v| v.mid != mid);
    }

    /// An iterator over all the tx streams for a given mid.
    pub(crate) fn streams_tx_by_mid(&mut self, mid: Mid) -> impl Iterator<Item = &mut StreamTx> {
        self.streams_tx.values_mut().filter(move |s| s.mid() == mid)
    }

    /// An iterator over all the rx streams for a given mid.
    pub(crate) fn streams_rx_by_mid(&mut self, mid: Mid) -> impl Iterator<Item = &mut StreamRx> {
        self.streams_rx.values_mut().filter(move |s| s.mid() == mid)
    }

    pub(crate) fn reset_buffers_tx(&mut self, mid: Mid) {
        for s in self.streams_tx_by_mid(mid) {
            s.reset_buffers();
        }
    }

    pub(crate) fn reset_buffers_rx(
        &mut self,
        mid: Mid,
        max_seq_lookup: impl Fn(Ssrc) -> Option<SeqNo>,
    ) {
        for s in self.streams_rx_by_mid(mid) {
            s.reset_buffers(&max_seq_lookup);
        }
    }

    pub(crate) fn change_stream_rx_ssrc(&mut self, ssrc_from: Ssrc, ssrc_to: Ssrc) -> bool {
        // A changed SSRC resets the stream's last receiver report.
        self.forget_feedback_at();
        // This unwrap is OK, because we can't call change_stream_rx_ssrc without first
        // knowing there is such a StreamRx.
        let maybe_change = self.streams_rx.get_mut(&ssrc_from).unwrap();

        // The StreamRx is allowed to not change the SSRC in case it is switching back
        // to the previous SSRC. This is to avoid flapping in case RTP packets arrive
        // out of order.
        let did_change = maybe_change.change_ssrc(ssrc_to);

        if did_change {
            // Unwrap is OK, see above.
            let to_change = self.streams_rx.remove(&ssrc_from).unwrap();

            // Reinsert under new SSRC key.
            self.streams_rx.insert(ssrc_to, to_change);

            // Remove previous mappings for the SSRC
            self.rx_lookup
                .retain(|k, l| *k != ssrc_from && l.main != ssrc_from);
        }

        did_change
    }

    fn change_stream_rx_rtx(&mut self, rtx_from: Ssrc, rtx_to: Ssrc) {
        self.forget_feedback_at();
        // Remove the SSRC mapping
        self.rx_lookup.remove(&rtx_from);

        let Some(to_change) = self
            .streams_rx
            .values_mut()
            .find(|s| s.rtx() == Some(rtx_from))
        else {
            // If there's no main stream associated with the RTX our job is done.
            return;
        };

        to_change.maybe_reset_rtx(rtx_to);
    }

    fn stream_rx_by_ssrc_or_rtx(&self, ssrc: Ssrc) -> Option<&StreamRx> {
        self.streams_rx
            .values()
            .find(|s| s.ssrc() == ssrc || s.rtx() == Some(ssrc))
    }

    /// Whether any receive stream currently needs NACK reports (see [`StreamRx::nack_enabled`]).
    ///
    /// Not cached: the answer changes with pause state and pending NACK retries.
    pub(crate) fn any_nack_enabled(&self) -> bool {
        self.streams_rx.values().any(|s| s.nack_enabled())
    }

    fn rx_lookup_at(&self) -> Instant {
        self.last_rx_lookup_cleanup + RX_LOOKUP_CLEANUP_INTERVAL
    }
}

impl fmt::Debug for RtpPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtpPacket")
            .field("seq_no", &self.seq_no)
            .field("time", &self.time)
            .field("header", &self.header)
            .field("payload", &self.payload.len())
            .field("nackable", &self.nackable)
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

// sealroom: the tests of the cached report time (PATCHES.md).
#[cfg(test)]
mod feedback_at_tests {
    use super::*;

    const I: RtcpReportIntervals = RtcpReportIntervals {
        audio: Duration::from_millis(5000),
        video: Duration::from_millis(1000),
    };

    /// The cached value, checked against a fresh walk over the streams after every change
    /// that moves it (and, in debug builds, on every call).
    fn at(s: &mut Streams) -> Option<Instant> {
        let cached = s.regular_feedback_at(I);
        assert_eq!(cached, s.feedback_at_uncached(I));
        cached
    }

    fn timeout(s: &mut Streams, now: Instant, medias: &[Media], codecs: &CodecConfig) {
        let config = StreamTimeoutConfig {
            codecs,
            intervals: I,
        };
        let mut feedback = VecDeque::new();
        s.handle_timeout(now, 1.into(), false, medias, config, &mut feedback);
    }

    #[test]
    fn a_timeout_before_the_next_report_does_not_walk_the_streams() {
        let start = Instant::now();
        let codecs = CodecConfig::new_with_defaults();
        let mid = Mid::from("v");
        let medias = [Media::from_app_tmp(mid, 0)];
        let mut s = Streams::new(false, 1200, Duration::from_millis(1500));
        s.declare_stream_tx(10.into(), None, MidRid(mid, None));
        s.expect_stream_rx(20.into(), None, MidRid(mid, None), false);

        // The receiver report is due at once, then the sender report once the send stream
        // knows its kind: both timeouts walk.
        timeout(&mut s, start, &medias, &codecs);
        let later = start + Duration::from_millis(10);
        timeout(&mut s, later, &medias, &codecs);
        assert_eq!(s.report_walks, 2);
        let next = at(&mut s).expect("a next report");
        assert_eq!(next, later + I.video);

        // Until then, timeouts (an SFU session has one per queued packet) walk nothing.
        for ms in 1..100 {
            timeout(&mut s, later + Duration::from_millis(ms), &medias, &codecs);
        }
        assert_eq!(s.report_walks, 2);
        assert_eq!(at(&mut s), Some(next), "no report was made");

        // At the report time the walk runs and the sender report is made.
        let mut feedback = VecDeque::new();
        let config = StreamTimeoutConfig {
            codecs: &codecs,
            intervals: I,
        };
        s.handle_timeout(next, 1.into(), false, &medias, config, &mut feedback);
        assert_eq!(s.report_walks, 3);
        assert!(
            feedback.iter().any(|r| matches!(r, Rtcp::SenderReport(_))),
            "{feedback:?}"
        );
        assert_eq!(at(&mut s), Some(next + I.video));
    }

    #[test]
    fn the_cached_report_time_follows_every_change() {
        let start = Instant::now();
        let codecs = CodecConfig::new_with_defaults();
        let mid = Mid::from("v");
        let medias = [Media::from_app_tmp(mid, 0)];
        let mut s = Streams::new(false, 1200, Duration::from_millis(1500));

        assert_eq!(at(&mut s), None, "no streams, no reports");

        s.declare_stream_tx(10.into(), None, MidRid(mid, None));
        let before_kind = at(&mut s);
        assert!(
            before_kind > Some(start + Duration::from_secs(3600)),
            "a send stream reports only once its kind is known"
        );

        // A receive stream that never reported is due at once.
        s.expect_stream_rx(20.into(), None, MidRid(mid, None), false);
        let rr_due = at(&mut s);
        assert!(rr_due < Some(start), "{rr_due:?}");

        // The first timeout sends the receiver report and teaches the send stream its kind:
        // its (never sent) sender report is now the soonest.
        timeout(&mut s, start, &medias, &codecs);
        let sr_due = at(&mut s);
        assert!(sr_due < Some(start), "the sender report is due: {sr_due:?}");
        assert_ne!(sr_due, rr_due);

        // The next one sends it. A receive stream without RTX counts as audio (5 s), the
        // video send stream reports every second: next the sender report.
        let later = start + Duration::from_millis(10);
        timeout(&mut s, later, &medias, &codecs);
        assert_eq!(at(&mut s), Some(later + I.video));

        // An RTX makes the receive stream video: its report, sent at `start`, is next.
        s.expect_stream_rx(20.into(), Some(21.into()), MidRid(mid, None), false);
        assert_eq!(at(&mut s), Some(start + I.video));
        // A new send stream (kind unknown) changes nothing; without the receive stream the
        // sender report is next again.
        s.declare_stream_tx(11.into(), None, MidRid(mid, Some("h".into())));
        assert_eq!(at(&mut s), Some(start + I.video));
        s.remove_stream_rx(20.into());
        assert_eq!(at(&mut s), Some(later + I.video));

        // A receive stream that changes SSRC starts reporting afresh: due at once.
        // (Two timeouts: the first teaches the second send stream its kind, the next sends
        // its first sender report, with its mid's other one.)
        s.expect_stream_rx(30.into(), None, MidRid(mid, None), false);
        timeout(&mut s, later, &medias, &codecs);
        let last = later + Duration::from_millis(10);
        timeout(&mut s, last, &medias, &codecs);
        assert_eq!(at(&mut s), Some(last + I.video));
        assert!(s.change_stream_rx_ssrc(30.into(), 31.into()));
        assert!(at(&mut s) < Some(start));
        // A timeout that sends only that receiver report: the sender reports are next.
        let rr_sent = last + Duration::from_millis(10);
        timeout(&mut s, rr_sent, &medias, &codecs);
        assert_eq!(at(&mut s), Some(last + I.video));

        // Without the send streams, the receive stream's next report (audio: no RTX).
        s.declare_stream_tx(12.into(), None, MidRid(mid, Some("l".into())));
        assert!(s.remove_stream_tx(10.into()));
        assert_eq!(at(&mut s), Some(last + I.video));
        assert!(s.remove_stream_tx(11.into()));
        assert!(s.remove_stream_tx(12.into()));
        assert_eq!(at(&mut s), Some(rr_sent + I.audio));

        // Removing every stream of the mid leaves nothing to report.
        s.remove_streams_by_mid(mid);
        assert_eq!(at(&mut s), None);
    }
}
