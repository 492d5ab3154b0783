//! Identifiers and configuration values passed into the core (never read from globals).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A participant of a room, as the server's admission decided it. Unique per [`crate::Sfu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParticipantId(pub u64);

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// A room (meeting) on this SFU. Media is only forwarded between participants of one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomId(pub u64);

/// Static configuration of one [`crate::Sfu`] (one UDP socket).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SfuConfig {
    /// Addresses the server's UDP socket is bound to; advertised as ICE host candidates.
    pub host_candidates: Vec<SocketAddr>,
    /// At most one keyframe request (PLI/FIR) reaches a publisher's stream per this interval,
    /// however many subscribers ask (a subscriber without keys asks on every frame).
    pub keyframe_request_interval: Duration,
    /// Starting point of the per-subscriber bandwidth estimate, before TWCC feedback arrives.
    pub initial_bitrate_bps: u64,
    /// What the estimator probes towards for each subscriber.
    pub desired_bitrate_bps: u64,
    /// A participant whose DTLS-SRTP is not up this long after it was added (for example
    /// because every path it tried comes from a network its rule refuses) is ended with
    /// [`crate::SessionError::NeverConnected`].
    pub connect_timeout: Duration,
    /// How long each forwarded stream keeps sent packets for retransmission on a NACK.
    /// libwebrtc keeps max(1 s, 3 × RTT); str0m's default of 3 s held about 0.4 MiB per
    /// subscriber of a 12-person video meeting.
    pub retransmission_history: Duration,
}

impl SfuConfig {
    /// A configuration with defaults for everything but the advertised host candidates.
    pub fn new(host_candidates: Vec<SocketAddr>) -> Self {
        SfuConfig {
            host_candidates,
            keyframe_request_interval: Duration::from_millis(1000),
            initial_bitrate_bps: 600_000,
            desired_bitrate_bps: 2_500_000,
            connect_timeout: Duration::from_secs(15),
            retransmission_history: Duration::from_secs(1),
        }
    }
}

/// The server's network rule for one participant: `true` if media may come from this address.
///
/// Applied at the demux to every STUN binding request before str0m sees it, so a pair from a
/// disallowed source can never be bound or nominated (DESIGN §7 "Admission and networks").
pub type SourceFilter = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// Per-participant settings decided by the server from the meeting's level.
#[derive(Clone)]
#[non_exhaustive]
pub struct ParticipantConfig {
    /// The room whose other participants this one receives and sends to.
    pub room: RoomId,
    /// Negotiate and forward the audio-level header extension (RFC 6464). Off by default:
    /// at `internal` and `restricted` it must stay off (DESIGN §7 "Metadata").
    pub audio_level: bool,
    /// Network rule for ICE; `None` accepts any source.
    pub source_filter: Option<SourceFilter>,
}

impl ParticipantConfig {
    /// A participant of `room`, audio level off, any source.
    pub fn new(room: RoomId) -> Self {
        ParticipantConfig {
            room,
            audio_level: false,
            source_filter: None,
        }
    }

    /// Sets [`ParticipantConfig::audio_level`].
    pub fn with_audio_level(mut self, enabled: bool) -> Self {
        self.audio_level = enabled;
        self
    }

    /// Sets [`ParticipantConfig::source_filter`].
    pub fn with_source_filter(mut self, filter: SourceFilter) -> Self {
        self.source_filter = Some(filter);
        self
    }
}

impl fmt::Debug for ParticipantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParticipantConfig")
            .field("room", &self.room)
            .field("audio_level", &self.audio_level)
            .field("source_filter", &self.source_filter.is_some())
            .finish()
    }
}
