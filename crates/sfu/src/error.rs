//! Errors, split by who is at fault (as rustls does).

use crate::config::ParticipantId;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The remote participant sent something unacceptable.
    Peer,
    /// The caller (the server) misused the API.
    Caller,
    /// An invariant of this crate or of str0m broke.
    Internal,
}

/// Errors returned by [`crate::Sfu`] calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// The participant is not (or no longer) in the SFU.
    #[error("unknown participant {0}")]
    UnknownParticipant(ParticipantId),
    /// `add_participant` was called twice with one id.
    #[error("participant {0} already exists")]
    DuplicateParticipant(ParticipantId),
    /// `accept_answer` without an offer from the SFU outstanding.
    #[error("no offer pending for participant {0}")]
    NoPendingOffer(ParticipantId),
    /// The configuration has no usable host candidate.
    #[error("invalid host candidate configuration: {0}")]
    InvalidCandidate(String),
    /// The participant's SDP does not parse.
    #[error("malformed SDP from {participant}: {reason}")]
    MalformedSdp {
        /// Whose SDP.
        participant: ParticipantId,
        /// Parser message.
        reason: String,
    },
    /// The participant's SDP parses but cannot be negotiated.
    #[error("SDP negotiation with {participant} failed: {reason}")]
    Negotiation {
        /// Whose SDP.
        participant: ParticipantId,
        /// str0m's message.
        reason: String,
    },
}

impl SfuError {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            SfuError::UnknownParticipant(_)
            | SfuError::DuplicateParticipant(_)
            | SfuError::NoPendingOffer(_)
            | SfuError::InvalidCandidate(_) => Fault::Caller,
            SfuError::MalformedSdp { .. } | SfuError::Negotiation { .. } => Fault::Peer,
        }
    }
}

/// Why a participant's session ended inside the core (reported in
/// [`crate::Event::SessionEnded`]); the participant is torn down already.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer closed DTLS (or SCTP).
    #[error("closed by the peer")]
    ClosedByPeer,
    /// Input from the peer's bound address was rejected by str0m (DTLS failure, bad
    /// fingerprint, protocol violation).
    #[error("peer input rejected: {0}")]
    PeerInput(String),
    /// str0m failed while producing output or writing media.
    #[error("internal: {0}")]
    Internal(String),
    /// DTLS-SRTP did not come up within [`crate::SfuConfig::connect_timeout`] (no allowed
    /// path, or the peer gave up).
    #[error("no connection within the connect timeout")]
    NeverConnected,
}

impl SessionError {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            SessionError::ClosedByPeer
            | SessionError::PeerInput(_)
            | SessionError::NeverConnected => Fault::Peer,
            SessionError::Internal(_) => Fault::Internal,
        }
    }
}
