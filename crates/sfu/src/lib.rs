//! sealroom's SFU core: a sans-IO selective forwarding unit over str0m.
//!
//! **Owns** one [`str0m::Rtc`] per admitted participant (ICE-lite with the configured host
//! candidates, DTLS-SRTP with fingerprint verification always on), the demultiplexing of the
//! one shared UDP socket (STUN binding requests routed by ICE ufrag; every other datagram only
//! from a (remote, local) pair that an authenticated binding proved for a participant; the
//! rest dropped and counted before str0m sees it), SDP negotiation (the participant offers
//! first, the SFU re-offers when tracks come and go), and forwarding of Opus, VP8 (simulcast
//! layer chosen per subscriber) and screen-share media as RTP packets whose payloads stay
//! opaque — they are SFrame ciphertext; the core never holds media keys. str0m runs in RTP
//! mode: each packet is written to each subscriber as it came (no depacketizing and
//! packetizing again), with the sequence numbers, RTP time and VP8 picture ids of the
//! subscriber's stream rewritten so a simulcast layer switch stays one continuous stream.
//! The core reads only the VP8 payload descriptor and the clear VP8 payload header byte
//! (keyframe detection, [`RFC 7741`](https://www.rfc-editor.org/rfc/rfc7741) §4.2-4.3). With
//! NACK/RTX, transport-wide congestion control and per-stream throttled keyframe requests
//! (also when a sequence gap is not repaired).
//!
//! **Must not**: open sockets, spawn tasks, read the clock or the environment, decide
//! admission (the server adds and removes participants; the forwarding set is exactly
//! [`Sfu::participants`]), inspect or alter payloads beyond the VP8 descriptor, or panic on
//! bytes from the network.
//!
//! **Main loop** (in the server, which owns the socket and the timer):
//! ```text
//! loop {
//!     match sfu.poll_output(now) {
//!         Output::Transmit { source, destination, contents } => socket.send_to(..),
//!         Output::Event(e) => handle (send offers, re-check paths, log counters),
//!         Output::Timeout(t) => {
//!             wait for a datagram or t;
//!             sfu.handle_input(now, Input::Receive { .. }) or sfu.handle_timeout(now);
//!         }
//!     }
//! }
//! ```
#![forbid(unsafe_code)]

mod config;
mod demux;
mod error;
mod loss;
mod sfu;
mod simulcast;
mod vp8;

pub use config::{ParticipantConfig, ParticipantId, RoomId, SfuConfig, SourceFilter};
pub use error::{Fault, SessionError, SfuError};
pub use sfu::{
    parse_answer, parse_offer, Counters, Event, Input, Output, ParticipantInfo, Sfu, Subscription,
    SubscriptionState, TrackId, MAX_REFUSED_SOURCES,
};
pub use simulcast::AUDIO_RESERVE_BPS;
/// str0m types that appear in this crate's API.
pub use str0m::change::{SdpAnswer, SdpOffer};
pub use str0m::media::{MediaKind, Mid, Rid};
