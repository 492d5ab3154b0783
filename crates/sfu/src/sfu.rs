//! The core: participants, demultiplexing, negotiation and forwarding.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::crypto::CryptoProvider;
use str0m::format::PayloadParams;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::{Extension, ExtensionValues, RtpPacket, RtpWrite, SeqNo};
use str0m::{Candidate, IceConnectionState, IceCreds, Rtc, RtcError};

use crate::config::{ParticipantConfig, ParticipantId, RoomId, SfuConfig};
use crate::demux::{self, Kind};
use crate::error::{SessionError, SfuError};
use crate::loss::LossTracker;
use crate::simulcast::{self, LayerMeter};
use crate::vp8::Vp8Descriptor;

/// How far ahead the core asks to be woken when it has nothing scheduled.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many rounds of due timers one [`Sfu::poll_output`] call runs before it hands control
/// back to the caller with `Timeout(now)`.
const MAX_INLINE_ROUNDS: usize = 64;

/// Upper bound of packets kept per forwarded stream for retransmission (the age bound,
/// [`SfuConfig::retransmission_history`], is what limits it below about 8 Mbit/s).
const RTX_MAX_PACKETS: usize = 1000;

/// Retransmissions may use at most this share of a stream's rate (str0m's default).
const RTX_RATIO_CAP: f32 = 0.15;

/// A datagram from the server's UDP socket.
#[derive(Debug)]
pub enum Input<'a> {
    /// One UDP datagram as received.
    Receive {
        /// The remote address it came from.
        source: SocketAddr,
        /// The local address it arrived at.
        destination: SocketAddr,
        /// Its bytes, untrusted.
        contents: &'a [u8],
    },
}

/// Work for the server, drained with [`Sfu::poll_output`] until it returns `Timeout`.
#[derive(Debug)]
pub enum Output {
    /// Send this datagram.
    Transmit {
        /// Local address to send from.
        source: SocketAddr,
        /// Remote address to send to.
        destination: SocketAddr,
        /// The datagram.
        contents: Vec<u8>,
    },
    /// Something the server must act on or record.
    Event(Event),
    /// Call [`Sfu::handle_timeout`] at this instant (or earlier, on input).
    Timeout(Instant),
}

/// A published track: the publisher and its media id in the publisher's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId {
    /// Who sends it.
    pub publisher: ParticipantId,
    /// Its m-line in the publisher's session.
    pub mid: Mid,
}

/// Events for the server.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// Send this SDP offer to the participant; feed its answer to [`Sfu::accept_answer`].
    /// It is handed over unserialized ([`SdpOffer::to_sdp_string`]): text work on an SDP
    /// grows with the meeting (an m-line per track), and the core's thread forwards media.
    Offer {
        /// Whom to send it to.
        participant: ParticipantId,
        /// The offer.
        offer: SdpOffer,
    },
    /// ICE connectivity checks succeed for the participant.
    IceConnected {
        /// Who.
        participant: ParticipantId,
    },
    /// ICE lost the participant (no consent checks for a while). The transport stays until
    /// the server removes the participant or ICE recovers.
    IceDisconnected {
        /// Who.
        participant: ParticipantId,
    },
    /// DTLS-SRTP is established (the peer's certificate matched its SDP fingerprint).
    Connected {
        /// Who.
        participant: ParticipantId,
    },
    /// The participant's media path, first and at every change. Emitted before any datagram
    /// goes out on the new path: the server re-checks its network rule here and may call
    /// [`Sfu::remove_participant`], which discards what was queued for the participant.
    PathSelected {
        /// Who.
        participant: ParticipantId,
        /// Our socket address.
        local: SocketAddr,
        /// The participant's address.
        remote: SocketAddr,
    },
    /// A binding request for the participant came from a source its network rule refuses; it
    /// was dropped before str0m. Reported once per source (at most
    /// [`MAX_REFUSED_SOURCES`] per participant): the server audits it. It does not end the
    /// session by itself (a multi-homed client may also try an allowed path, and a spoofed
    /// request must not be able to end a call); a participant with no allowed path is ended
    /// after [`crate::SfuConfig::connect_timeout`].
    PathRefused {
        /// Who.
        participant: ParticipantId,
        /// Where the request came from.
        remote: SocketAddr,
    },
    /// A participant started sending a track; the others in its room are offered it.
    TrackPublished {
        /// The track.
        track: TrackId,
        /// Audio or video (camera and screen share are both video).
        kind: MediaKind,
    },
    /// A track ended (unpublished, or its publisher left).
    TrackUnpublished {
        /// The track.
        track: TrackId,
    },
    /// A keyframe request reached a publisher; counters are totals for that publisher.
    KeyframeRequested {
        /// The track asked for.
        track: TrackId,
        /// The simulcast layer asked for.
        rid: Option<Rid>,
        /// Requests forwarded to this publisher so far.
        forwarded: u64,
        /// Requests dropped by the throttle for this publisher so far.
        throttled: u64,
    },
    /// The participant's session ended inside the core; it is already torn down and no
    /// longer in [`Sfu::participants`].
    SessionEnded {
        /// Who.
        participant: ParticipantId,
        /// Why.
        reason: SessionError,
    },
}

/// How many refused sources are reported per participant (the rest are only counted).
pub const MAX_REFUSED_SOURCES: usize = 8;

/// Datagram and keyframe counters of the whole SFU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Every datagram given to [`Sfu::handle_input`].
    pub datagrams_received: u64,
    /// Not STUN, DTLS, RTP or RTCP by its first byte (RFC 7983).
    pub dropped_unclassified: u64,
    /// From a (source, destination) pair not bound to any participant.
    pub dropped_unknown_pair: u64,
    /// A STUN binding request naming no participant's ufrag.
    pub dropped_unknown_ufrag: u64,
    /// A STUN binding request from a source the participant's network rule refuses.
    pub dropped_disallowed_source: u64,
    /// A STUN binding request the participant's ICE agent does not accept.
    pub dropped_rejected: u64,
    /// Bytes str0m's demultiplexer cannot parse (e.g. malformed STUN).
    pub dropped_malformed: u64,
    /// Sessions ended by an error.
    pub session_errors: u64,
    /// Media writes that found no send stream for the subscriber's m-line.
    pub write_errors: u64,
    /// Keyframe requests from subscribers (and from the SFU on loss or layer switches).
    pub keyframe_requests_received: u64,
    /// Keyframe requests passed on to publishers.
    pub keyframe_requests_forwarded: u64,
    /// Keyframe requests held back by the per-stream throttle: each is merged into one
    /// pending request per stream, sent when the interval ends unless a keyframe of that
    /// stream passes first.
    pub keyframe_requests_throttled: u64,
    /// Held-back requests that were sent when their interval ended (no keyframe came).
    pub keyframe_requests_deferred_sent: u64,
}

/// State of one track a participant receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Waiting for the next offer to this participant.
    Pending,
    /// Offered, waiting for the answer.
    Negotiating,
    /// Negotiated: media is forwarded.
    Open,
    /// Being removed from the session.
    Stopping,
}

/// One track a participant receives (or is about to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The source track.
    pub track: TrackId,
    /// Audio or video.
    pub kind: MediaKind,
    /// Its m-line in the receiver's session, once offered.
    pub mid: Option<Mid>,
    /// Negotiation state.
    pub state: SubscriptionState,
    /// The simulcast layer forwarded now (None: not simulcast or nothing forwarded yet).
    pub layer: Option<Rid>,
    /// Frames forwarded on it: RTP packets with the marker bit for video (the last packet
    /// of a frame), every packet for audio (one Opus frame each).
    pub frames: u64,
    /// RTP packets forwarded on it.
    pub packets: u64,
}

/// A snapshot of one participant, for tests and the server's roster check.
#[derive(Debug, Clone)]
pub struct ParticipantInfo {
    /// Its room.
    pub room: RoomId,
    /// DTLS-SRTP established.
    pub connected: bool,
    /// (local, remote) of the media path, once selected.
    pub path: Option<(SocketAddr, SocketAddr)>,
    /// Tracks it publishes.
    pub published: Vec<(TrackId, MediaKind)>,
    /// Tracks it receives.
    pub subscriptions: Vec<Subscription>,
    /// Latest egress bandwidth estimate toward it, bit/s.
    pub estimate_bps: u64,
    /// Keyframe requests forwarded to it as a publisher.
    pub keyframe_requests_forwarded: u64,
    /// Keyframe requests to it held back by the throttle (merged, sent when the interval
    /// ends unless a keyframe passes first).
    pub keyframe_requests_throttled: u64,
}

#[derive(Debug)]
struct TrackIn {
    mid: Mid,
    kind: MediaKind,
    meter: LayerMeter,
    simulcast: bool,
    last_keyframe_request: HashMap<Option<Rid>, Instant>,
    /// Unrepaired holes per incoming stream (one per simulcast layer), video only.
    loss: Vec<(Option<Rid>, LossTracker)>,
    /// The publisher's codec for the last payload type seen (looked up once per change).
    params: Option<PayloadParams>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    ToOpen,
    Negotiating(Mid),
    Open(Mid),
    ToStop(Mid),
    NegotiatingStop(Mid),
}

impl OutState {
    fn mid(self) -> Option<Mid> {
        match self {
            OutState::ToOpen => None,
            OutState::Negotiating(m)
            | OutState::Open(m)
            | OutState::ToStop(m)
            | OutState::NegotiatingStop(m) => Some(m),
        }
    }
}

#[derive(Debug)]
struct TrackOut {
    source: TrackId,
    kind: MediaKind,
    state: OutState,
    /// Layer forwarded now and layer wanted (simulcast only).
    current: Option<Rid>,
    target: Option<Rid>,
    /// Sequence numbers, timestamps and VP8 picture ids of the output stream.
    timeline: Timeline,
    /// (publisher's payload type, ours) for the last payload type forwarded.
    pt: Option<(Pt, Pt)>,
    /// Whether its send stream is left out of str0m's pacing (set at the first write).
    unpaced: Option<bool>,
    frames: u64,
    packets: u64,
}

/// The output timeline of one forwarded stream: the source's numbers shifted by offsets
/// that change only when the forwarded layer does, so the subscriber sees one stream with
/// continuous sequence numbers (RFC 3550 §5.1: no jump, no gap caused by other layers),
/// RTP time that keeps advancing with arrival time, and VP8 picture ids that continue
/// (RFC 7741 §4.2; a decoder drops frames whose id goes backwards).
#[derive(Debug, Default, Clone)]
struct Timeline {
    /// Output minus input extended sequence number; None before the first packet.
    seq_offset: Option<i64>,
    /// Input packets below this (of the layer switched to) predate the switch: dropped.
    seq_floor: u64,
    /// Highest output sequence number written.
    last_seq: u64,
    /// Added to the source's RTP time (layers need not share a timestamp base).
    time_offset: i64,
    /// Last output RTP time (extended ticks) and when its packet arrived.
    last_out: Option<(u64, Instant)>,
    /// Added (wrapping) to VP8 PictureID and TL0PICIDX.
    pid_offset: u16,
    tl0_offset: u8,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
}

/// Where one input packet goes on the output timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapped {
    seq: u64,
    time: u32,
    picture_id: Option<u16>,
    tl0_pic_idx: Option<u8>,
}

struct Participant {
    config: ParticipantConfig,
    rtc: Rtc,
    ufrag: String,
    /// The participant's first offer was accepted: the SFU may make offers from now on.
    negotiated: bool,
    pending: Option<SdpPendingOffer>,
    tracks_in: Vec<TrackIn>,
    tracks_out: Vec<TrackOut>,
    path: Option<(SocketAddr, SocketAddr)>,
    connected: bool,
    /// When the participant was added (for the connect timeout).
    added: Instant,
    /// Sources refused by the network rule, already reported.
    refused_sources: Vec<SocketAddr>,
    timeout: Instant,
    /// Something may have changed inside its session (input, a write, a timeout, a
    /// negotiation change): poll it on the next drive. Only dirty sessions are polled, so
    /// one datagram costs the sessions it touches, not every session of the SFU.
    dirty: bool,
    estimate_bps: u64,
    kf_forwarded: u64,
    kf_throttled: u64,
}

/// Work collected while polling one participant, applied to the others afterwards.
#[derive(Default)]
struct Work {
    published: Vec<TrackId>,
    unpublished: Vec<TrackId>,
    media: Vec<Incoming>,
    keyframes: Vec<KeyframeAsk>,
    ended: Vec<(ParticipantId, SessionError)>,
}

impl Work {
    fn is_empty(&self) -> bool {
        self.published.is_empty()
            && self.unpublished.is_empty()
            && self.media.is_empty()
            && self.keyframes.is_empty()
            && self.ended.is_empty()
    }
}

/// One RTP packet received from a publisher, to be forwarded.
struct Incoming {
    publisher: ParticipantId,
    mid: Mid,
    rid: Option<Rid>,
    params: PayloadParams,
    keyframe: bool,
    vp8: Option<Vp8Descriptor>,
    packet: Box<RtpPacket>,
}

#[derive(Debug, Clone, Copy)]
struct KeyframeAsk {
    track: TrackId,
    rid: Option<Rid>,
    kind: KeyframeRequestKind,
}

struct Queued {
    participant: Option<ParticipantId>,
    output: Output,
}

/// Parses a participant's SDP offer for [`Sfu::accept_offer`].
///
/// A pure function, apart from the core on purpose: parsing costs about 300 instructions
/// a byte (4 M for a participant's answer in a meeting of 12, an m-line per track), which
/// the thread that forwards everyone's media should not spend.
pub fn parse_offer(participant: ParticipantId, sdp: &str) -> Result<SdpOffer, SfuError> {
    SdpOffer::from_sdp_string(sdp).map_err(|e| SfuError::MalformedSdp {
        participant,
        reason: e.to_string(),
    })
}

/// Parses a participant's SDP answer for [`Sfu::accept_answer`] (see [`parse_offer`]).
pub fn parse_answer(participant: ParticipantId, sdp: &str) -> Result<SdpAnswer, SfuError> {
    SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::MalformedSdp {
        participant,
        reason: e.to_string(),
    })
}

/// The sans-IO SFU for one UDP socket (any number of rooms).
pub struct Sfu {
    config: SfuConfig,
    crypto: Arc<CryptoProvider>,
    participants: BTreeMap<ParticipantId, Participant>,
    ufrags: HashMap<String, ParticipantId>,
    /// (remote, local) pairs proven by an authenticated STUN binding. Looked up for every
    /// datagram, so hashed with foldhash (randomly seeded per map) rather than SipHash; only
    /// authenticated pairs are ever inserted, so a sender cannot grow its buckets.
    pairs: HashMap<(SocketAddr, SocketAddr), ParticipantId, foldhash::fast::RandomState>,
    queue: VecDeque<Queued>,
    keyframes_wanted: Vec<KeyframeAsk>,
    /// Keyframe requests held back by the throttle, at most one per (track, rid), with the
    /// instant the stream's interval ends. A keyframe of the stream cancels its entry.
    deferred_keyframes: Vec<(Instant, KeyframeAsk)>,
    /// Participants with `dirty` set, in the order they became dirty.
    dirty: Vec<ParticipantId>,
    /// Media and events taken from publishers' sessions as each datagram arrived, applied
    /// on the next drive. str0m in RTP mode keeps only one received packet for
    /// `poll_output`: a second `handle_input` before the poll overwrites it, so a batch of
    /// datagrams from one publisher must be drained one by one.
    received: Work,
    /// Layer ranking of the frame being forwarded (reused: no allocation per frame).
    ranked_scratch: Vec<(Rid, Option<u64>)>,
    counters: Counters,
    last_now: Option<Instant>,
}

impl Sfu {
    /// A new SFU with no participants.
    pub fn new(config: SfuConfig) -> Result<Self, SfuError> {
        if config.host_candidates.is_empty() {
            return Err(SfuError::InvalidCandidate("no host candidate".into()));
        }
        for a in &config.host_candidates {
            Candidate::host(*a, "udp").map_err(|e| SfuError::InvalidCandidate(e.to_string()))?;
        }
        Ok(Sfu {
            config,
            crypto: Arc::new(str0m::crypto::from_feature_flags()),
            participants: BTreeMap::new(),
            ufrags: HashMap::new(),
            pairs: HashMap::default(),
            queue: VecDeque::new(),
            keyframes_wanted: Vec::new(),
            deferred_keyframes: Vec::new(),
            dirty: Vec::new(),
            received: Work::default(),
            ranked_scratch: Vec::new(),
            counters: Counters::default(),
            last_now: None,
        })
    }

    /// Admits a participant: creates its ICE-lite, DTLS-SRTP session. It sends the first
    /// offer ([`Sfu::accept_offer`]).
    pub fn add_participant(
        &mut self,
        now: Instant,
        id: ParticipantId,
        config: ParticipantConfig,
    ) -> Result<(), SfuError> {
        if self.participants.contains_key(&id) {
            return Err(SfuError::DuplicateParticipant(id));
        }
        self.touch(now);
        let creds = loop {
            let c = IceCreds::new();
            if !self.ufrags.contains_key(&c.ufrag) {
                break c;
            }
        };
        let mut builder = Rtc::builder()
            .set_ice_lite(true)
            .set_crypto_provider(self.crypto.clone())
            .set_local_ice_credentials(creds.clone())
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_bwe(Some(Bitrate::bps(self.config.initial_bitrate_bps)))
            // Forward RTP packets as they are (no depacketize/packetize per subscriber);
            // str0m still runs SRTP, NACK/RTX on both sides, TWCC and the pacer.
            .set_rtp_mode(true)
            // DESIGN §7 "Metadata": mid, rid, repaired-rid, transport-cc, abs-send-time,
            // and the audio level only where the level allows it.
            .clear_extension_map()
            .set_extension(2, Extension::AbsoluteSendTime)
            .set_extension(3, Extension::TransportSequenceNumber)
            .set_extension(4, Extension::RtpMid)
            .set_extension(10, Extension::RtpStreamId)
            .set_extension(11, Extension::RepairedRtpStreamId);
        if config.audio_level {
            builder = builder.set_extension(1, Extension::AudioLevel);
        }
        let mut rtc = builder.build(now);
        for a in &self.config.host_candidates {
            let c = Candidate::host(*a, "udp")
                .map_err(|e| SfuError::InvalidCandidate(e.to_string()))?;
            rtc.add_local_candidate(c);
        }
        // Probe towards the desired rate (simulcast layers climb with the estimate), but do
        // not sustain padding: a minimum above what the subscriber receives would fill every
        // gap with padding packets that cost the SFU as much as media (str0m keeps its own
        // small padding target for NAT bindings and RTX state).
        let desired = self.config.desired_bitrate_bps;
        rtc.bwe().set_bitrate(Bitrate::ZERO, Bitrate::bps(desired));
        self.ufrags.insert(creds.ufrag.clone(), id);
        self.participants.insert(
            id,
            Participant {
                config,
                rtc,
                ufrag: creds.ufrag,
                negotiated: false,
                pending: None,
                tracks_in: Vec::new(),
                tracks_out: Vec::new(),
                path: None,
                connected: false,
                added: now,
                refused_sources: Vec::new(),
                timeout: now,
                dirty: false,
                estimate_bps: self.config.initial_bitrate_bps,
                kf_forwarded: 0,
                kf_throttled: 0,
            },
        );
        // Every track already published in the room is offered to the newcomer.
        let room = self.participants[&id].config.room;
        let existing: Vec<(TrackId, MediaKind)> = self
            .participants
            .iter()
            .filter(|(pid, p)| **pid != id && p.config.room == room)
            .flat_map(|(pid, p)| {
                p.tracks_in.iter().map(move |t| {
                    (
                        TrackId {
                            publisher: *pid,
                            mid: t.mid,
                        },
                        t.kind,
                    )
                })
            })
            .collect();
        if let Some(p) = self.participants.get_mut(&id) {
            for (track, kind) in existing {
                p.tracks_out.push(TrackOut::new(track, kind));
            }
        }
        self.mark(id);
        Ok(())
    }

    /// Applies the participant's SDP offer and returns the answer. Cancels an offer of the
    /// SFU still waiting for its answer (glare: the participant's offer wins, the SFU offers
    /// again afterwards).
    ///
    /// The offer comes parsed ([`parse_offer`]) and the answer goes back unserialized
    /// ([`SdpAnswer::to_sdp_string`]), so that the caller can do that text work away from
    /// the thread that forwards media.
    pub fn accept_offer(
        &mut self,
        now: Instant,
        id: ParticipantId,
        offer: SdpOffer,
    ) -> Result<SdpAnswer, SfuError> {
        self.touch(now);
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant(id))?;
        if p.pending.take().is_some() {
            p.rollback_offer();
        }
        let answer = p
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SfuError::Negotiation {
                participant: id,
                reason: e.to_string(),
            })?;
        p.negotiated = true;
        // An ICE restart in the offer gives this side new credentials too: route binding
        // requests by the new ufrag from now on (the old one is dead).
        let creds = p.rtc.direct_api().local_ice_credentials();
        if creds.ufrag != p.ufrag {
            self.ufrags.remove(&p.ufrag);
            self.ufrags.insert(creds.ufrag.clone(), id);
            p.ufrag = creds.ufrag;
        }
        self.mark(id);
        Ok(answer)
    }

    /// Applies the participant's answer ([`parse_answer`]) to the last [`Event::Offer`].
    pub fn accept_answer(&mut self, id: ParticipantId, answer: SdpAnswer) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant(id))?;
        let pending = p.pending.take().ok_or(SfuError::NoPendingOffer(id))?;
        let result =
            p.rtc
                .sdp_api()
                .accept_answer(pending, answer)
                .map_err(|e| SfuError::Negotiation {
                    participant: id,
                    reason: e.to_string(),
                });
        if let Err(e) = result {
            p.rollback_offer();
            self.mark(id);
            return Err(e);
        }
        let history = self.config.retransmission_history;
        for t in &mut p.tracks_out {
            if let OutState::Negotiating(m) = t.state {
                t.state = OutState::Open(m);
                if let Some(tx) = p.rtc.direct_api().stream_tx_by_mid(m, None) {
                    // Audio is written non-nackable (`forward`): it is never kept or resent,
                    // so it needs no history of the bytes sent for the resend cap (24 bytes
                    // per packet sent in the last second, per stream).
                    let cap = (t.kind == MediaKind::Video).then_some(RTX_RATIO_CAP);
                    tx.set_rtx_cache(RTX_MAX_PACKETS, history, cap);
                }
                if t.kind == MediaKind::Video && p.connected {
                    // A new receiver cannot decode until the next keyframe (one that is not
                    // connected yet asks when it connects).
                    self.keyframes_wanted.push(KeyframeAsk {
                        track: t.source,
                        rid: None,
                        kind: KeyframeRequestKind::Pli,
                    });
                }
            }
        }
        p.tracks_out
            .retain(|t| !matches!(t.state, OutState::NegotiatingStop(_)));
        self.mark(id);
        Ok(())
    }

    /// Tears the participant's transport down at once: its session is dropped without a
    /// goodbye, its address pairs are unbound, datagrams queued for it are discarded, and
    /// its tracks are withdrawn from the others. Nothing is sent to or accepted from it
    /// afterwards.
    pub fn remove_participant(&mut self, now: Instant, id: ParticipantId) -> Result<(), SfuError> {
        self.touch(now);
        if self.teardown(id) {
            Ok(())
        } else {
            Err(SfuError::UnknownParticipant(id))
        }
    }

    /// Feeds one datagram from the socket.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        self.touch(now);
        let Input::Receive {
            source,
            destination,
            contents,
        } = input;
        self.counters.datagrams_received += 1;
        let pair = (source, destination);
        match demux::classify(contents) {
            Kind::Other => self.counters.dropped_unclassified += 1,
            Kind::Stun => {
                if let Some(ufrag) = demux::binding_request_ufrag(contents) {
                    let Some(&id) = self.ufrags.get(ufrag) else {
                        self.counters.dropped_unknown_ufrag += 1;
                        return;
                    };
                    let allowed = self.participants.get(&id).is_some_and(|p| {
                        p.config
                            .source_filter
                            .as_ref()
                            .is_none_or(|allow| allow(source))
                    });
                    if !allowed {
                        self.counters.dropped_disallowed_source += 1;
                        let report = self.participants.get_mut(&id).is_some_and(|p| {
                            let new = p.refused_sources.len() < MAX_REFUSED_SOURCES
                                && !p.refused_sources.contains(&source);
                            if new {
                                p.refused_sources.push(source);
                            }
                            new
                        });
                        if report {
                            self.push_event(
                                None,
                                Event::PathRefused {
                                    participant: id,
                                    remote: source,
                                },
                            );
                        }
                        return;
                    }
                    self.feed(now, id, source, destination, contents, true);
                } else if let Some(&id) = self.pairs.get(&pair) {
                    self.feed(now, id, source, destination, contents, false);
                } else {
                    self.counters.dropped_unknown_pair += 1;
                }
            }
            Kind::Dtls | Kind::Rtp => match self.pairs.get(&pair) {
                Some(&id) => self.feed(now, id, source, destination, contents, false),
                None => self.counters.dropped_unknown_pair += 1,
            },
        }
    }

    /// Advances every session's timers to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        let mut failed = Vec::new();
        let connect_timeout = self.config.connect_timeout;
        for (id, p) in &mut self.participants {
            if !p.connected && now.saturating_duration_since(p.added) >= connect_timeout {
                failed.push((*id, SessionError::NeverConnected));
                continue;
            }
            if p.timeout <= now {
                if let Err(e) = p.rtc.handle_input(str0m::Input::Timeout(now)) {
                    failed.push((*id, session_error(&e)));
                }
                // Re-polled in drive(); until then assume it wants to run again now.
                p.timeout = now;
                p.mark_dirty(*id, &mut self.dirty);
            }
        }
        for (id, reason) in failed {
            self.end_session(id, reason);
        }
    }

    /// The next thing to do: a datagram to send, an event, or when to call
    /// [`Sfu::handle_timeout`]. Call until it returns `Timeout`.
    pub fn poll_output(&mut self, now: Instant) -> Output {
        self.touch(now);
        // Timers that are already due are run here rather than handed back to the caller:
        // str0m's pacer asks for a timeout after every packet it releases, and a round trip
        // through the caller's event loop per packet costs a wakeup and adds latency (and,
        // with a timer of 1 ms resolution, throttled the pacer until queues collapsed). The
        // bound keeps a session that is always due from starving the caller's socket.
        for _ in 0..MAX_INLINE_ROUNDS {
            if let Some(q) = self.queue.pop_front() {
                return q.output;
            }
            self.drive(now);
            if let Some(q) = self.queue.pop_front() {
                return q.output;
            }
            if self.next_timeout(now) > now {
                break;
            }
            self.handle_timeout(now);
        }
        Output::Timeout(self.next_timeout(now))
    }

    /// When the next timer of any session (or a connect timeout) is due; `now` if one is
    /// due already.
    fn next_timeout(&self, now: Instant) -> Instant {
        let next = self
            .participants
            .values()
            .map(|p| {
                if p.connected {
                    p.timeout
                } else {
                    p.timeout.min(p.added + self.config.connect_timeout)
                }
            })
            .min()
            .unwrap_or(now + IDLE_TIMEOUT);
        let deferred = self.deferred_keyframes.iter().map(|(due, _)| *due).min();
        deferred.map_or(next, |d| d.min(next)).max(now)
    }

    /// Participants currently in the SFU: the forwarding set.
    pub fn participants(&self) -> Vec<ParticipantId> {
        self.participants.keys().copied().collect()
    }

    /// A snapshot of one participant.
    pub fn participant(&self, id: ParticipantId) -> Option<ParticipantInfo> {
        let p = self.participants.get(&id)?;
        Some(ParticipantInfo {
            room: p.config.room,
            connected: p.connected,
            path: p.path,
            published: p
                .tracks_in
                .iter()
                .map(|t| {
                    (
                        TrackId {
                            publisher: id,
                            mid: t.mid,
                        },
                        t.kind,
                    )
                })
                .collect(),
            subscriptions: p
                .tracks_out
                .iter()
                .map(|t| Subscription {
                    track: t.source,
                    kind: t.kind,
                    mid: t.state.mid(),
                    state: match t.state {
                        OutState::ToOpen => SubscriptionState::Pending,
                        OutState::Negotiating(_) => SubscriptionState::Negotiating,
                        OutState::Open(_) => SubscriptionState::Open,
                        OutState::ToStop(_) | OutState::NegotiatingStop(_) => {
                            SubscriptionState::Stopping
                        }
                    },
                    layer: t.current,
                    frames: t.frames,
                    packets: t.packets,
                })
                .collect(),
            estimate_bps: p.estimate_bps,
            keyframe_requests_forwarded: p.kf_forwarded,
            keyframe_requests_throttled: p.kf_throttled,
        })
    }

    /// The participant a (remote, local) address pair is bound to, if any.
    pub fn bound_participant(
        &self,
        remote: SocketAddr,
        local: SocketAddr,
    ) -> Option<ParticipantId> {
        self.pairs.get(&(remote, local)).copied()
    }

    /// Datagram and keyframe counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn touch(&mut self, now: Instant) {
        if self.last_now.is_none_or(|t| now > t) {
            self.last_now = Some(now);
        }
    }

    fn feed(
        &mut self,
        now: Instant,
        id: ParticipantId,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
        check_accepts: bool,
    ) {
        let Ok(datagram) = DatagramRecv::try_from(contents) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let Some(p) = self.participants.get_mut(&id) else {
            self.counters.dropped_unknown_pair += 1;
            return;
        };
        let input = str0m::Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents: datagram,
            },
        );
        if check_accepts && !p.rtc.accepts(&input) {
            self.counters.dropped_rejected += 1;
            return;
        }
        if let Err(e) = p.rtc.handle_input(input) {
            tracing::debug!(participant = %id, error = %e, "input ends session");
            self.end_session(id, session_error(&e));
            return;
        }
        p.timeout = now;
        self.mark(id);
        // Take the packet now (see `received`); forwarding waits for the next drive so a
        // batch of datagrams still costs each subscriber's session one poll.
        let mut work = std::mem::take(&mut self.received);
        self.poll_participant(now, id, &mut work);
        self.received = work;
    }

    fn end_session(&mut self, id: ParticipantId, reason: SessionError) {
        if reason != SessionError::ClosedByPeer {
            self.counters.session_errors += 1;
        }
        if self.teardown(id) {
            self.push_event(
                None,
                Event::SessionEnded {
                    participant: id,
                    reason,
                },
            );
        }
    }

    /// Removes a participant and everything that refers to it. Returns whether it existed.
    fn teardown(&mut self, id: ParticipantId) -> bool {
        let Some(p) = self.participants.remove(&id) else {
            return false;
        };
        self.ufrags.remove(&p.ufrag);
        self.dirty.retain(|d| *d != id);
        self.pairs.retain(|_, v| *v != id);
        self.queue.retain(|q| {
            !(q.participant == Some(id) && matches!(q.output, Output::Transmit { .. }))
        });
        self.keyframes_wanted.retain(|k| k.track.publisher != id);
        self.deferred_keyframes
            .retain(|(_, k)| k.track.publisher != id);
        for t in &p.tracks_in {
            let track = TrackId {
                publisher: id,
                mid: t.mid,
            };
            self.withdraw(track);
            self.push_event(None, Event::TrackUnpublished { track });
        }
        true
    }

    /// Stops forwarding `track` to everybody.
    fn withdraw(&mut self, track: TrackId) {
        for (id, p) in &mut self.participants {
            if p.tracks_out.iter().any(|t| t.source == track) {
                p.mark_dirty(*id, &mut self.dirty);
            }
            p.tracks_out.retain_mut(|t| {
                if t.source != track {
                    return true;
                }
                match t.state {
                    OutState::ToOpen => false,
                    OutState::Negotiating(m) | OutState::Open(m) => {
                        t.state = OutState::ToStop(m);
                        true
                    }
                    OutState::ToStop(_) | OutState::NegotiatingStop(_) => true,
                }
            });
        }
    }

    fn push_event(&mut self, participant: Option<ParticipantId>, event: Event) {
        self.queue.push_back(Queued {
            participant,
            output: Output::Event(event),
        });
    }

    /// Polls every session until none has more to say, moving media and keyframe requests
    /// between them.
    fn drive(&mut self, now: Instant) {
        let wanted = std::mem::take(&mut self.keyframes_wanted);
        for ask in wanted {
            self.request_keyframe(now, ask);
        }
        if self.deferred_keyframes.iter().any(|(due, _)| *due <= now) {
            let mut due = Vec::new();
            self.deferred_keyframes.retain(|(at, ask)| {
                let ready = *at <= now;
                if ready {
                    due.push(*ask);
                }
                !ready
            });
            for ask in due {
                self.counters.keyframe_requests_deferred_sent += 1;
                self.request_keyframe(now, ask);
            }
        }
        let received = std::mem::take(&mut self.received);
        if !received.is_empty() {
            self.apply(now, received);
        }
        // Each pass forwards what the previous one received; forwarding only writes into
        // other sessions, which yields transmits but no new work, so this ends.
        let mut ids = Vec::new();
        loop {
            let mut work = Work::default();
            std::mem::swap(&mut ids, &mut self.dirty);
            if ids.is_empty() {
                break;
            }
            for &id in &ids {
                if let Some(p) = self.participants.get_mut(&id) {
                    p.dirty = false;
                }
            }
            for id in ids.drain(..) {
                self.negotiate(id);
                self.poll_participant(now, id, &mut work);
            }
            if !work.is_empty() {
                self.apply(now, work);
            }
        }
        // Keep the allocation for the next drive.
        if self.dirty.is_empty() {
            self.dirty = ids;
        }
    }

    /// Polls this session on the next drive.
    fn mark(&mut self, id: ParticipantId) {
        if let Some(p) = self.participants.get_mut(&id) {
            p.mark_dirty(id, &mut self.dirty);
        }
    }

    fn negotiate(&mut self, id: ParticipantId) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        if !p.negotiated || p.pending.is_some() {
            return;
        }
        if !p
            .tracks_out
            .iter()
            .any(|t| matches!(t.state, OutState::ToOpen | OutState::ToStop(_)))
        {
            return;
        }
        let mut api = p.rtc.sdp_api();
        for t in &mut p.tracks_out {
            match t.state {
                OutState::ToOpen => {
                    let stream = t.source.publisher.to_string();
                    let track = format!("{}-{}", t.source.publisher, t.source.mid);
                    let mid =
                        api.add_media(t.kind, Direction::SendOnly, Some(stream), Some(track), None);
                    t.state = OutState::Negotiating(mid);
                }
                OutState::ToStop(m) => {
                    api.stop_media(m);
                    t.state = OutState::NegotiatingStop(m);
                }
                _ => {}
            }
        }
        match api.apply() {
            Some((offer, pending)) => {
                p.pending = Some(pending);
                self.push_event(
                    Some(id),
                    Event::Offer {
                        participant: id,
                        offer,
                    },
                );
            }
            None => p.rollback_offer(),
        }
    }

    fn poll_participant(&mut self, now: Instant, id: ParticipantId, work: &mut Work) {
        loop {
            let Some(p) = self.participants.get_mut(&id) else {
                return;
            };
            let output = match p.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    work.ended.push((id, session_error(&e)));
                    return;
                }
            };
            match output {
                str0m::Output::Timeout(t) => {
                    p.timeout = t;
                    if !p.rtc.is_alive() {
                        work.ended.push((id, SessionError::ClosedByPeer));
                    }
                    return;
                }
                str0m::Output::Transmit(t) => {
                    // str0m built this datagram in its own buffer: take it, no copy.
                    let contents: Vec<u8> = t.contents.into();
                    if demux::is_binding_success(&contents) {
                        // str0m answered an authenticated binding request: the pair is
                        // proven (RFC 8445 §7.3), bind it.
                        self.pairs.insert((t.destination, t.source), id);
                    } else if demux::classify(&contents) != Kind::Stun
                        && p.path != Some((t.source, t.destination))
                    {
                        p.path = Some((t.source, t.destination));
                        self.push_event(
                            Some(id),
                            Event::PathSelected {
                                participant: id,
                                local: t.source,
                                remote: t.destination,
                            },
                        );
                    }
                    self.queue.push_back(Queued {
                        participant: Some(id),
                        output: Output::Transmit {
                            source: t.source,
                            destination: t.destination,
                            contents,
                        },
                    });
                }
                str0m::Output::Event(e) => self.handle_rtc_event(now, id, e, work),
            }
        }
    }

    fn handle_rtc_event(
        &mut self,
        now: Instant,
        id: ParticipantId,
        e: str0m::Event,
        work: &mut Work,
    ) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        match e {
            str0m::Event::IceConnectionStateChange(s) => match s {
                IceConnectionState::Connected | IceConnectionState::Completed => {
                    self.push_event(Some(id), Event::IceConnected { participant: id });
                }
                IceConnectionState::Disconnected => {
                    self.push_event(Some(id), Event::IceDisconnected { participant: id });
                }
                _ => {}
            },
            str0m::Event::Connected => {
                p.connected = true;
                // Tracks that opened while DTLS was still running: nothing reached it yet,
                // and the keyframe asked for at opening may have passed before SRTP was up.
                for t in &p.tracks_out {
                    if t.kind == MediaKind::Video && matches!(t.state, OutState::Open(_)) {
                        work.keyframes.push(KeyframeAsk {
                            track: t.source,
                            rid: None,
                            kind: KeyframeRequestKind::Pli,
                        });
                    }
                }
                self.push_event(Some(id), Event::Connected { participant: id });
            }
            str0m::Event::MediaAdded(m)
                if m.direction.is_receiving() && !p.tracks_in.iter().any(|t| t.mid == m.mid) =>
            {
                p.tracks_in.push(TrackIn {
                    mid: m.mid,
                    kind: m.kind,
                    meter: LayerMeter::default(),
                    simulcast: false,
                    last_keyframe_request: HashMap::new(),
                    loss: Vec::new(),
                    params: None,
                });
                let track = TrackId {
                    publisher: id,
                    mid: m.mid,
                };
                work.published.push(track);
                self.push_event(
                    Some(id),
                    Event::TrackPublished {
                        track,
                        kind: m.kind,
                    },
                );
            }
            str0m::Event::MediaChanged(m) if !m.direction.is_receiving() => {
                if let Some(i) = p.tracks_in.iter().position(|t| t.mid == m.mid) {
                    p.tracks_in.remove(i);
                    let track = TrackId {
                        publisher: id,
                        mid: m.mid,
                    };
                    work.unpublished.push(track);
                    self.push_event(Some(id), Event::TrackUnpublished { track });
                }
            }
            str0m::Event::RtpPacket(packet) => {
                // The stream names the track (mid) and layer (rid): the header carries them
                // only until the publisher knows its SSRC is bound.
                let Some((mid, rid)) = p
                    .rtc
                    .direct_api()
                    .stream_rx(&packet.header.ssrc)
                    .map(|rx| (rx.mid(), rx.rid()))
                else {
                    return;
                };
                let Some(t) = p.tracks_in.iter_mut().find(|t| t.mid == mid) else {
                    return;
                };
                let pt = packet.header.payload_type;
                let params = match t.params {
                    Some(params) if params.pt() == pt => params,
                    _ => {
                        let Some(params) =
                            p.rtc.codec_config().iter().find(|c| c.pt() == pt).copied()
                        else {
                            return;
                        };
                        t.params = Some(params);
                        params
                    }
                };
                if let Some(rid) = rid {
                    t.simulcast = true;
                    t.meter.record(rid, now, packet.payload.len());
                }
                let (mut keyframe, mut descriptor) = (false, None);
                if t.kind == MediaKind::Video {
                    descriptor = Vp8Descriptor::parse(&packet.payload);
                    keyframe = descriptor.is_some_and(|d| d.starts_keyframe(&packet.payload));
                    let i = match t.loss.iter().position(|(r, _)| *r == rid) {
                        Some(i) => i,
                        None => {
                            t.loss.push((rid, LossTracker::default()));
                            t.loss.len() - 1
                        }
                    };
                    if t.loss[i].1.record(now, *packet.seq_no) {
                        // Packets were lost for good (NACK/RTX did not recover them).
                        work.keyframes.push(KeyframeAsk {
                            track: TrackId { publisher: id, mid },
                            rid,
                            kind: KeyframeRequestKind::Pli,
                        });
                    }
                }
                if packet.payload.is_empty() {
                    return;
                }
                work.media.push(Incoming {
                    publisher: id,
                    mid,
                    rid,
                    params,
                    keyframe,
                    vp8: descriptor,
                    packet,
                });
            }
            str0m::Event::KeyframeRequest(r) => {
                if let Some(t) = p.tracks_out.iter().find(|t| t.state.mid() == Some(r.mid)) {
                    work.keyframes.push(KeyframeAsk {
                        track: t.source,
                        rid: t.current.or(t.target),
                        kind: r.kind,
                    });
                }
            }
            str0m::Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                p.estimate_bps = estimate.as_u64();
            }
            str0m::Event::Closed => work.ended.push((id, SessionError::ClosedByPeer)),
            _ => {}
        }
    }

    fn apply(&mut self, now: Instant, work: Work) {
        for (id, reason) in work.ended {
            self.end_session(id, reason);
        }
        for track in work.unpublished {
            self.withdraw(track);
        }
        for track in work.published {
            let Some(room) = self
                .participants
                .get(&track.publisher)
                .map(|p| p.config.room)
            else {
                continue;
            };
            let kind = self.participants[&track.publisher]
                .tracks_in
                .iter()
                .find(|t| t.mid == track.mid)
                .map(|t| t.kind);
            let Some(kind) = kind else { continue };
            for (sid, s) in &mut self.participants {
                if *sid != track.publisher
                    && s.config.room == room
                    && !s.tracks_out.iter().any(|t| t.source == track)
                {
                    s.tracks_out.push(TrackOut::new(track, kind));
                    s.mark_dirty(*sid, &mut self.dirty);
                }
            }
        }
        let mut asks = work.keyframes;
        for incoming in &work.media {
            if incoming.keyframe && !self.deferred_keyframes.is_empty() {
                // The keyframe a held-back request waits for: everyone subscribed now gets it.
                self.deferred_keyframes.retain(|(_, k)| {
                    k.track.publisher != incoming.publisher
                        || k.track.mid != incoming.mid
                        || k.rid != incoming.rid
                });
            }
            self.forward(incoming, &mut asks);
        }
        for ask in asks {
            self.request_keyframe(now, ask);
        }
    }

    /// Writes one incoming RTP packet to every subscriber of its track in the publisher's
    /// room. The payload is shared (`Arc<[u8]>`), not copied, per subscriber; str0m copies
    /// it once more into each subscriber's datagram when it encrypts it.
    fn forward(&mut self, data: &Incoming, asks: &mut Vec<KeyframeAsk>) {
        let publisher = data.publisher;
        let Some(src) = self.participants.get(&publisher) else {
            return;
        };
        let room = src.config.room;
        let packet = &data.packet;
        let mut ranked = std::mem::take(&mut self.ranked_scratch);
        let simulcast = match src.tracks_in.iter().find(|t| t.mid == data.mid) {
            Some(t) if t.simulcast => {
                t.meter.rank_into(packet.timestamp, &mut ranked);
                true
            }
            _ => false,
        };
        let track = TrackId {
            publisher,
            mid: data.mid,
        };
        let hz = u64::from(data.params.spec().clock_rate.get());
        let in_seq = *packet.seq_no;
        let in_ticks = packet.time.numer();
        for (sid, s) in &mut self.participants {
            // Not connected yet: SRTP is not up, so nothing could leave; it asks for a
            // keyframe when it connects.
            if *sid == publisher || s.config.room != room || !s.connected {
                continue;
            }
            let (audio, video) = if simulcast { s.open_counts() } else { (0, 0) };
            let estimate = s.estimate_bps;
            let Some(t) = s.tracks_out.iter_mut().find(|t| t.source == track) else {
                continue;
            };
            let OutState::Open(mid) = t.state else {
                continue;
            };
            if let (Some(rid), true) = (data.rid, simulcast) {
                t.target =
                    simulcast::choose(&ranked, simulcast::video_share(estimate, audio, video));
                if t.current != Some(rid) {
                    if t.target == Some(rid) {
                        if data.keyframe {
                            t.current = Some(rid);
                            t.timeline.switch_to(
                                in_seq,
                                in_ticks,
                                hz,
                                packet.timestamp,
                                data.vp8.as_ref(),
                            );
                        } else {
                            asks.push(KeyframeAsk {
                                track,
                                rid: Some(rid),
                                kind: KeyframeRequestKind::Pli,
                            });
                            continue;
                        }
                    } else {
                        continue;
                    }
                }
            }
            let pt = match t.pt {
                Some((from, to)) if from == data.params.pt() => to,
                _ => {
                    let Some(to) = s
                        .rtc
                        .codec_config()
                        .match_params(data.params)
                        .map(|p| p.pt())
                    else {
                        continue;
                    };
                    t.pt = Some((data.params.pt(), to));
                    to
                }
            };
            let Some(out) = t
                .timeline
                .map(in_seq, in_ticks, packet.timestamp, data.vp8.as_ref())
            else {
                continue;
            };
            // DESIGN §7 "Metadata": the audio level only where the subscriber's level allows
            // it; mid, rid, transport-cc and abs-send-time are str0m's own per session.
            let mut ext_vals = ExtensionValues::default();
            if s.config.audio_level {
                ext_vals.audio_level = packet.header.ext_vals.audio_level;
                ext_vals.voice_activity = packet.header.ext_vals.voice_activity;
            }
            let mut write = RtpWrite::new(
                pt,
                SeqNo::from(out.seq),
                out.time,
                packet.timestamp,
                packet.payload.clone(),
            )
            .marker(packet.header.marker)
            .ext_vals(ext_vals)
            .nackable(t.kind == MediaKind::Video);
            if let Some(patch) = vp8_patch(&packet.payload, data.vp8.as_ref(), &out) {
                write = write.vp8_patch(patch);
            }
            let mut api = s.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                self.counters.write_errors += 1;
                continue;
            };
            // Only a stream whose layer follows the subscriber's estimate is paced to it. A
            // single-layer video cannot go slower than its publisher sends: pacing it to an
            // estimate below that rate only queues it (hundreds of milliseconds once the
            // estimate dips under load), so it leaves as it came, in the publisher's own
            // pacing. Audio is never paced (str0m's default).
            let unpaced = t.kind == MediaKind::Audio || !simulcast;
            if t.unpaced != Some(unpaced) {
                tx.set_unpaced(unpaced);
                t.unpaced = Some(unpaced);
            }
            tx.write_rtp(write);
            t.packets += 1;
            if t.kind == MediaKind::Audio || packet.header.marker {
                t.frames += 1;
            }
            s.mark_dirty(*sid, &mut self.dirty);
        }
        self.ranked_scratch = ranked;
    }

    /// Passes a keyframe request to the publisher, or, if one went to the same stream within
    /// the configured interval, holds it until the interval ends: a subscriber whose track
    /// opened just after the previous keyframe passed still gets one, even from a publisher
    /// that sends keyframes only when asked (a still shared screen).
    fn request_keyframe(&mut self, now: Instant, ask: KeyframeAsk) {
        self.counters.keyframe_requests_received += 1;
        let interval = self.config.keyframe_request_interval;
        let Some(p) = self.participants.get_mut(&ask.track.publisher) else {
            return;
        };
        let Some(t) = p.tracks_in.iter_mut().find(|t| t.mid == ask.track.mid) else {
            return;
        };
        if let Some(last) = t
            .last_keyframe_request
            .get(&ask.rid)
            .filter(|last| now.saturating_duration_since(**last) < interval)
        {
            p.kf_throttled += 1;
            self.counters.keyframe_requests_throttled += 1;
            let due = *last + interval;
            match self
                .deferred_keyframes
                .iter_mut()
                .find(|(_, k)| k.track == ask.track && k.rid == ask.rid)
            {
                Some((_, held)) => {
                    if ask.kind == KeyframeRequestKind::Fir {
                        held.kind = KeyframeRequestKind::Fir;
                    }
                }
                None => self.deferred_keyframes.push((due, ask)),
            }
            return;
        }
        let mut api = p.rtc.direct_api();
        let Some(rx) = api.stream_rx_by_mid(ask.track.mid, ask.rid) else {
            // No incoming stream for that rid yet: nothing to ask.
            return;
        };
        rx.request_keyframe(ask.kind);
        t.last_keyframe_request.insert(ask.rid, now);
        p.mark_dirty(ask.track.publisher, &mut self.dirty);
        p.kf_forwarded += 1;
        self.counters.keyframe_requests_forwarded += 1;
        let event = Event::KeyframeRequested {
            track: ask.track,
            rid: ask.rid,
            forwarded: p.kf_forwarded,
            throttled: p.kf_throttled,
        };
        self.push_event(Some(ask.track.publisher), event);
    }
}

/// Errors caused by what the peer sent (its SDP, DTLS, packets) versus our own failures.
fn session_error(e: &RtcError) -> SessionError {
    match e {
        RtcError::RemoteSdp(_)
        | RtcError::Sdp(_)
        | RtcError::Rtp(_)
        | RtcError::Dtls(_)
        | RtcError::Packet(..)
        | RtcError::Net(_)
        | RtcError::Ice(_)
        | RtcError::Sctp(_) => SessionError::PeerInput(e.to_string()),
        _ => SessionError::Internal(e.to_string()),
    }
}

impl Participant {
    /// Queues the participant (`id`) on the SFU's dirty list unless it is on it already.
    fn mark_dirty(&mut self, id: ParticipantId, list: &mut Vec<ParticipantId>) {
        if !self.dirty {
            self.dirty = true;
            list.push(id);
        }
    }

    /// Undo the state changes of an offer that will not be answered.
    fn rollback_offer(&mut self) {
        for t in &mut self.tracks_out {
            match t.state {
                OutState::Negotiating(_) => t.state = OutState::ToOpen,
                OutState::NegotiatingStop(m) => t.state = OutState::ToStop(m),
                _ => {}
            }
        }
    }

    fn open_counts(&self) -> (usize, usize) {
        let open = self
            .tracks_out
            .iter()
            .filter(|t| matches!(t.state, OutState::Open(_)));
        let audio = open.clone().filter(|t| t.kind == MediaKind::Audio).count();
        (audio, open.count() - audio)
    }
}

impl TrackOut {
    fn new(source: TrackId, kind: MediaKind) -> Self {
        TrackOut {
            source,
            kind,
            state: OutState::ToOpen,
            current: None,
            target: None,
            timeline: Timeline::default(),
            pt: None,
            unpaced: None,
            frames: 0,
            packets: 0,
        }
    }
}

impl Timeline {
    /// Continues the output with another layer from its keyframe packet on: the next
    /// sequence number, RTP time advanced by the arrival time since the last output, the
    /// next picture id.
    fn switch_to(
        &mut self,
        in_seq: u64,
        in_ticks: u64,
        hz: u64,
        arrival: Instant,
        vp8: Option<&Vp8Descriptor>,
    ) {
        if self.seq_offset.is_some() {
            self.seq_offset = Some(self.last_seq as i64 + 1 - in_seq as i64);
        }
        self.seq_floor = in_seq;
        if let Some((last_ticks, last_at)) = self.last_out {
            let elapsed = arrival.saturating_duration_since(last_at).as_micros();
            let advance = (elapsed * u128::from(hz) / 1_000_000).max(1) as i64;
            let want = last_ticks as i64 + advance;
            self.time_offset = want - in_ticks as i64;
        }
        if let Some(d) = vp8 {
            if let (Some((pid, _)), Some(last)) = (d.picture_id, self.last_pid) {
                self.pid_offset = last.wrapping_add(1).wrapping_sub(pid);
            }
            if let (Some(tl0), Some(last)) = (d.tl0_pic_idx, self.last_tl0) {
                self.tl0_offset = last.wrapping_add(1).wrapping_sub(tl0);
            }
        }
    }

    /// The output numbers of one input packet of the forwarded layer; None for a packet
    /// from before the last switch (it would land on the previous layer's numbers).
    fn map(
        &mut self,
        in_seq: u64,
        in_ticks: u64,
        arrival: Instant,
        vp8: Option<&Vp8Descriptor>,
    ) -> Option<Mapped> {
        if in_seq < self.seq_floor {
            return None;
        }
        // The first output packet keeps the input's 16-bit number but starts the rollover
        // counter at 0, as a receiver expects (RFC 3711 §3.3.1) even when the publisher's
        // stream wrapped before this subscriber joined.
        let offset = *self.seq_offset.get_or_insert(-((in_seq & !0xffff) as i64));
        let seq = u64::try_from(in_seq as i64 + offset).ok()?;
        let ticks = (in_ticks as i64).saturating_add(self.time_offset).max(0) as u64;
        self.last_seq = self.last_seq.max(seq);
        if self.last_out.is_none_or(|(t, _)| ticks >= t) {
            self.last_out = Some((ticks, arrival));
        }
        let picture_id = vp8.and_then(|d| d.picture_id).map(|(pid, long)| {
            let mask: u16 = if long { 0x7fff } else { 0x7f };
            let pid = pid.wrapping_add(self.pid_offset) & mask;
            // Keep the newest (a retransmission of an old frame must not move it back).
            if self
                .last_pid
                .is_none_or(|last| pid.wrapping_sub(last) & mask <= mask / 2)
            {
                self.last_pid = Some(pid);
            }
            pid
        });
        let tl0_pic_idx = vp8
            .and_then(|d| d.tl0_pic_idx)
            .map(|t| t.wrapping_add(self.tl0_offset));
        if let Some(tl0) = tl0_pic_idx {
            if self
                .last_tl0
                .is_none_or(|last| tl0.wrapping_sub(last) < 0x80)
            {
                self.last_tl0 = Some(tl0);
            }
        }
        Some(Mapped {
            seq,
            // RTP time is 32 bits on the wire (RFC 3550 §5.1): wrap.
            time: ticks as u32,
            picture_id,
            tl0_pic_idx,
        })
    }
}

/// The descriptor rewrite that carries the mapped picture id and TL0PICIDX, if either
/// differs from the input (str0m applies it while serializing: the shared payload stays
/// as it is).
fn vp8_patch(
    payload: &[u8],
    vp8: Option<&Vp8Descriptor>,
    out: &Mapped,
) -> Option<str0m::rtp::Vp8Patch> {
    let d = vp8?;
    let pid = out
        .picture_id
        .filter(|p| Some(*p) != d.picture_id.map(|x| x.0));
    let tl0 = out.tl0_pic_idx.filter(|t| Some(*t) != d.tl0_pic_idx);
    if pid.is_none() && tl0.is_none() {
        return None;
    }
    let mut builder = str0m::rtp::Vp8Descriptor::parse(payload).ok()?.patch();
    if let Some(pid) = pid {
        builder = builder.picture_id(pid);
    }
    if let Some(tl0) = tl0 {
        builder = builder.tl0_pic_idx(tl0);
    }
    builder.build().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 first-packet descriptor with a 15-bit picture id and TL0PICIDX.
    fn vp8(picture_id: u16, tl0: u8) -> Vp8Descriptor {
        let p = [
            0x90,
            0xe0,
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
            tl0,
            0x00,
            0x10,
        ];
        Vp8Descriptor::parse(&p).expect("valid descriptor")
    }

    /// Layer "l" runs from sequence 1000 / time 90 000 / picture id 300; at 1 s the
    /// subscriber switches to layer "h", which numbers everything differently (sequence
    /// 60 000 near the 16-bit wrap, time 5 000 000, picture id 32 760 near the 15-bit
    /// wrap). The output stays one stream: every sequence number once, in order, no gap;
    /// time and picture ids keep increasing.
    #[test]
    fn a_layer_switch_continues_sequence_time_and_picture_id() {
        let t0 = Instant::now();
        let frame = Duration::from_millis(33);
        let mut tl = Timeline::default();
        let mut out = Vec::new();
        // Layer l: 30 frames of 2 packets.
        for f in 0..30u64 {
            for k in 0..2u64 {
                let at = t0 + frame * f as u32;
                let d = vp8(300 + f as u16, 7 + f as u8);
                out.push(
                    tl.map(1000 + 2 * f + k, 90_000 + 2970 * f, at, Some(&d))
                        .expect("present in this test"),
                );
            }
        }
        // A retransmission of l arriving late still maps into l's range.
        let late = tl
            .map(1001, 90_000, t0 + frame * 30, Some(&vp8(300, 7)))
            .expect("present in this test");
        assert_eq!(late.seq, out[1].seq);
        // Switch to h at its keyframe; h wraps its 16-bit sequence and 15-bit picture id.
        let switch_at = t0 + frame * 30;
        let h_seq = 65_530u64;
        let h_time = 5_000_000u64;
        let first = vp8(32_760, 200);
        tl.switch_to(h_seq, h_time, 90_000, switch_at, Some(&first));
        // A packet of h from before its keyframe is not forwarded (it would reuse numbers).
        assert_eq!(
            tl.map(h_seq - 1, h_time - 2970, switch_at, Some(&first)),
            None
        );
        for f in 0..30u64 {
            for k in 0..3u64 {
                let at = switch_at + frame * f as u32;
                let pid = (32_760 + f as u16) & 0x7fff;
                let d = vp8(pid, 200u8.wrapping_add(f as u8));
                out.push(
                    tl.map(h_seq + 3 * f + k, h_time + 2970 * f, at, Some(&d))
                        .expect("present in this test"),
                );
            }
        }
        for w in out.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert_eq!(b.seq, a.seq + 1, "sequence continues: {a:?} -> {b:?}");
            assert!(b.time >= a.time, "time does not go back: {a:?} -> {b:?}");
            let (pa, pb) = (
                a.picture_id.expect("present in this test"),
                b.picture_id.expect("present in this test"),
            );
            let step = pb.wrapping_sub(pa) & 0x7fff;
            assert!(step <= 1, "picture id continues: {pa} -> {pb}");
            let step = b
                .tl0_pic_idx
                .expect("present in this test")
                .wrapping_sub(a.tl0_pic_idx.expect("present in this test"));
            assert!(step <= 1, "TL0PICIDX continues: {a:?} -> {b:?}");
        }
        // At the switch: one frame interval of time later, next picture id.
        let (before, after) = (out[59], out[60]);
        assert_eq!(after.time - before.time, 2970);
        assert_eq!(after.picture_id, Some(300 + 29 + 1));
        // The first output packet kept the publisher's 16-bit number with rollover 0.
        assert_eq!(out[0].seq, 1000);
    }

    /// A subscriber that joins after the publisher's sequence numbers wrapped starts with
    /// rollover counter 0 (it could not know the publisher's), then follows the wrap.
    #[test]
    fn a_late_subscriber_starts_at_rollover_zero() {
        let t0 = Instant::now();
        let mut tl = Timeline::default();
        let seq = 3 * 65_536 + 65_535;
        assert_eq!(
            tl.map(seq, 0, t0, None).expect("present in this test").seq,
            65_535
        );
        assert_eq!(
            tl.map(seq + 1, 0, t0, None)
                .expect("present in this test")
                .seq,
            65_536
        );
        // Reordered from before the first packet, across the wrap: no underflow.
        assert_eq!(
            tl.map(seq - 1, 0, t0, None)
                .expect("present in this test")
                .seq,
            65_534
        );
        let mut tl = Timeline::default();
        assert_eq!(
            tl.map(65_536, 0, t0, None)
                .expect("present in this test")
                .seq,
            0
        );
        assert_eq!(tl.map(65_535, 0, t0, None), None);
    }

    #[test]
    fn picture_ids_are_patched_only_when_they_change() {
        let payload = [0x90, 0xe0, 0x80 | 0x01, 0x02, 0x05, 0x00, 0x10];
        let d = Vp8Descriptor::parse(&payload).expect("present in this test");
        let same = Mapped {
            seq: 0,
            time: 0,
            picture_id: Some(0x0102),
            tl0_pic_idx: Some(5),
        };
        assert!(vp8_patch(&payload, Some(&d), &same).is_none());
        let moved = Mapped {
            picture_id: Some(0x0203),
            tl0_pic_idx: Some(9),
            ..same
        };
        let patch = vp8_patch(&payload, Some(&d), &moved).expect("a patch");
        let want = str0m::rtp::Vp8Descriptor::parse(&payload)
            .expect("present in this test")
            .patch()
            .picture_id(0x0203)
            .tl0_pic_idx(9)
            .build()
            .expect("present in this test");
        assert_eq!(patch, want);
        let only_pid = Mapped {
            picture_id: Some(0x0203),
            ..same
        };
        let want = str0m::rtp::Vp8Descriptor::parse(&payload)
            .expect("present in this test")
            .patch()
            .picture_id(0x0203)
            .build()
            .expect("present in this test");
        assert_eq!(vp8_patch(&payload, Some(&d), &only_pid), Some(want));
    }
}
