//! Wire types of sealroom: the JSON exchanged over the REST API and the signaling WebSocket.
//!
//! This crate owns the shape of every message and nothing else: no IO, no policy. The web
//! client's TypeScript types are generated from these definitions (`cargo run -p sealroom-proto
//! --bin gen-ts`), so a message is defined exactly once.

use serde::{Deserialize, Serialize};
use ts_rs::TS;

/// Largest WebSocket text message the server accepts, in bytes.
/// MLS commits with a Welcome (which carries the ratchet tree) for a 100-member meeting are
/// around 100 KiB in base64.
pub const MAX_WS_MESSAGE: usize = 384 * 1024;

/// A person's role. Admins manage users and devices; organisers create meetings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Organiser,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Organiser => "organiser",
            Role::Member => "member",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "organiser" | "organizer" => Some(Role::Organiser),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
    /// May create meetings.
    pub fn may_organise(self) -> bool {
        matches!(self, Role::Admin | Role::Organiser)
    }
}

/// How a device proves itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// A WebAuthn passkey with user verification.
    Passkey,
    /// An enrolled Ed25519 key held by a native client (bots, load tests). Shown as
    /// "software device" everywhere.
    Software,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Passkey => "passkey",
            DeviceKind::Software => "software",
        }
    }
    pub fn parse(s: &str) -> Option<DeviceKind> {
        match s {
            "passkey" => Some(DeviceKind::Passkey),
            "software" => Some(DeviceKind::Software),
            _ => None,
        }
    }
}

/// A meeting's security level (DESIGN.md section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Open,
    Internal,
    Restricted,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Open => "open",
            Level::Internal => "internal",
            Level::Restricted => "restricted",
        }
    }
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "open" => Some(Level::Open),
            "internal" => Some(Level::Internal),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
}

/// Error body of every failed REST call.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct ApiError {
    /// Stable machine-readable code.
    pub code: String,
    /// Human-readable explanation, safe to show.
    pub message: String,
}

/// The logged-in person and device.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct Me {
    pub user_id: String,
    pub name: String,
    pub display_name: String,
    pub role: Role,
    pub device_id: String,
    pub device_name: String,
    pub device_kind: DeviceKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct EnrolInfoRequest {
    pub token: String,
}

/// Who an enrolment link is for (shown before the passkey is created).
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct EnrolInfo {
    pub name: String,
    pub display_name: String,
    pub role: Role,
    /// Unix seconds.
    #[ts(type = "number")]
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct EnrolPasskeyStart {
    pub token: String,
    pub device_name: String,
}

/// A WebAuthn ceremony in progress: `options` is the JSON the browser's
/// `PublicKeyCredential.parse*OptionsFromJSON` takes (under `publicKey`).
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct CeremonyStarted {
    pub flow_id: String,
    #[ts(type = "any")]
    pub options: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct EnrolPasskeyFinish {
    pub flow_id: String,
    pub token: String,
    /// The browser's `credential.toJSON()`.
    #[ts(type = "any")]
    pub credential: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct LoginPasskeyFinish {
    pub flow_id: String,
    #[ts(type = "any")]
    pub credential: serde_json::Value,
}

/// Enrol a software (Ed25519) device for a native client.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct EnrolSoftware {
    pub token: String,
    pub device_name: String,
    /// Ed25519 public key, base64url without padding (32 bytes).
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct EnrolSoftwareDone {
    pub device_id: String,
    pub user_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct SoftwareLoginStart {
    pub device_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct SoftwareChallenge {
    pub flow_id: String,
    /// base64url nonce to sign (see [`software_login_message`]).
    pub nonce: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct SoftwareLoginFinish {
    pub flow_id: String,
    pub device_id: String,
    /// Ed25519 signature over [`software_login_message`], base64url without padding.
    pub signature: String,
}

/// The domain-separated message a software device signs to log in.
pub fn software_login_message(origin: &str, nonce: &str, device_id: &str) -> Vec<u8> {
    let mut m = b"sealroom software device login v1\0".to_vec();
    for part in [origin, nonce, device_id] {
        m.extend_from_slice(part.as_bytes());
        m.push(0);
    }
    m
}

/// A device as shown to its owner and to admins.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct DeviceView {
    pub id: String,
    pub name: String,
    pub kind: DeviceKind,
    /// Approved by an admin for `restricted` meetings.
    pub restricted_ok: bool,
    /// The passkey may be synced to other devices (WebAuthn backup eligible).
    pub backup_eligible: bool,
    pub revoked: bool,
    #[ts(type = "number")]
    pub created_at: i64,
    #[ts(type = "number | null")]
    pub last_used_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct UserView {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub role: Role,
    pub disabled: bool,
    pub devices: Vec<DeviceView>,
}

/// A user as organisers see them when inviting.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct UserRef {
    pub name: String,
    pub display_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct CreateUser {
    pub name: String,
    pub display_name: String,
    pub role: Role,
}

/// Approve (or withdraw approval of) a device for levels that require approved devices.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
#[serde(deny_unknown_fields)]
pub struct SetDeviceRestricted {
    pub allowed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct EnrolmentView {
    pub id: String,
    pub user_name: String,
    #[ts(type = "number")]
    pub created_at: i64,
    #[ts(type = "number")]
    pub expires_at: i64,
    /// `pending`, `used`, `revoked` or `expired`.
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct EnrolmentLink {
    pub enrolment: EnrolmentView,
    /// Full link; the token is in the fragment so it never reaches a server log.
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct CreateMeeting {
    pub title: String,
    pub level: Level,
    /// User names. The creator is always invited and a host.
    pub invitees: Vec<String>,
    pub hosts: Vec<String>,
    /// Unix seconds; null = no bound.
    #[ts(type = "number | null")]
    pub starts_at: Option<i64>,
    #[ts(type = "number | null")]
    pub ends_at: Option<i64>,
    pub lobby: bool,
    pub capacity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct MeetingCreated {
    pub id: String,
    pub url: String,
}

/// A meeting as its invitees see it in "my meetings".
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct MeetingSummary {
    pub id: String,
    pub title: String,
    pub level: Level,
    pub lobby: bool,
    pub locked: bool,
    pub capacity: u32,
    #[ts(type = "number | null")]
    pub starts_at: Option<i64>,
    #[ts(type = "number | null")]
    pub ends_at: Option<i64>,
    pub host: bool,
    pub organiser: String,
    pub invitees: Vec<String>,
    pub hosts: Vec<String>,
}

/// Someone admitted to a meeting.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct Participant {
    /// Random per admission; names this presence, not the person.
    pub id: String,
    pub user_name: String,
    pub display_name: String,
    pub device_name: String,
    pub device_kind: DeviceKind,
    /// The network zone that satisfied the level (for example `198.18.1.0/24`, `loopback`, or
    /// `other (no configured range)` at the `open` level).
    pub network: String,
    pub host: bool,
    /// What this participant says it sends (shown as text next to the tile).
    pub audio_muted: bool,
    pub video_muted: bool,
    pub screen: bool,
    /// Its media transport is connected (DTLS-SRTP up).
    pub media_connected: bool,
    /// Its signaling connection dropped; it keeps its place for the reconnect grace period.
    pub away: bool,
    /// The enrolled device (as in its MLS credential): clients match MLS members to the
    /// participant list by (user name, device id) and flag disagreement either way.
    pub device_id: String,
}

/// Where a published track comes from (also the SFrame context id of the E2EE issue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Microphone,
    Camera,
    Screen,
    ScreenAudio,
}

/// A sender's transceiver and what it carries.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
#[serde(deny_unknown_fields)]
pub struct MediaSource {
    pub mid: String,
    pub source: Source,
}

/// A track a subscriber receives: which of its transceivers (mid) carries whose source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct RemoteTrack {
    pub mid: String,
    pub participant_id: String,
    pub source: Source,
}

/// Someone waiting in the lobby, as hosts see them.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct LobbyEntry {
    pub id: String,
    pub user_name: String,
    pub display_name: String,
    pub device_name: String,
    pub device_kind: DeviceKind,
    /// Source address and the zone it falls in.
    pub network: String,
}

/// Why a join was refused. `not_found` is the single answer for a meeting that does not exist,
/// one the caller is not invited to, and a caller who is not logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    NotFound,
    DeviceRevoked,
    DeviceKindNotAllowed,
    DeviceNotApproved,
    NetworkNotAllowed,
    TooEarly,
    TooLate,
    Locked,
    Full,
    RefusedByHost,
    RemovedByHost,
    RateLimited,
    SessionEnded,
    /// The media path failed or came from a network the level does not allow.
    MediaFailed,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NotFound => "not_found",
            RefusalReason::DeviceRevoked => "device_revoked",
            RefusalReason::DeviceKindNotAllowed => "device_kind_not_allowed",
            RefusalReason::DeviceNotApproved => "device_not_approved",
            RefusalReason::NetworkNotAllowed => "network_not_allowed",
            RefusalReason::TooEarly => "too_early",
            RefusalReason::TooLate => "too_late",
            RefusalReason::Locked => "locked",
            RefusalReason::Full => "full",
            RefusalReason::RefusedByHost => "refused_by_host",
            RefusalReason::RemovedByHost => "removed_by_host",
            RefusalReason::RateLimited => "rate_limited",
            RefusalReason::SessionEnded => "session_ended",
            RefusalReason::MediaFailed => "media_failed",
        }
    }

    /// The sentence shown to the person refused.
    pub fn message(self) -> &'static str {
        match self {
            RefusalReason::NotFound => "There is no meeting you can join at this address.",
            RefusalReason::DeviceRevoked => "This device has been revoked.",
            RefusalReason::DeviceKindNotAllowed => {
                "This meeting's level does not allow this kind of device."
            }
            RefusalReason::DeviceNotApproved => {
                "This device is not approved for restricted meetings. Ask an administrator."
            }
            RefusalReason::NetworkNotAllowed => {
                "You are connecting from a network this meeting's level does not allow."
            }
            RefusalReason::TooEarly => "The meeting has not started yet.",
            RefusalReason::TooLate => "The meeting has ended.",
            RefusalReason::Locked => "The meeting is locked.",
            RefusalReason::Full => "The meeting is full.",
            RefusalReason::RefusedByHost => "A host refused your request to join.",
            RefusalReason::RemovedByHost => "A host removed you from the meeting.",
            RefusalReason::RateLimited => "Too many attempts. Wait a moment and try again.",
            RefusalReason::SessionEnded => "Your session has ended. Log in again.",
            RefusalReason::MediaFailed => {
                "Your media connection failed or came from a network this meeting does not allow."
            }
        }
    }
}

/// Messages a client sends over the signaling WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// Ask to join a meeting (allowed when authenticated and in no meeting).
    Join {
        meeting_id: String,
    },
    /// Leave the current meeting or lobby.
    Leave,
    /// Host: admit someone from the lobby.
    Admit {
        participant_id: String,
    },
    /// Host: refuse someone in the lobby.
    Refuse {
        participant_id: String,
    },
    /// Host: remove an admitted participant.
    Remove {
        participant_id: String,
    },
    /// Host: lock or unlock the meeting.
    Lock {
        locked: bool,
    },
    /// Admitted: an SDP offer for the media transport (first, renegotiation, ICE restart),
    /// with what each sending transceiver carries. Answered by `media_answer`.
    MediaOffer {
        sdp: String,
        sources: Vec<MediaSource>,
    },
    /// Admitted: the answer to a server `media_offer`.
    MediaAnswer {
        sdp: String,
    },
    /// Admitted: what this participant currently sends.
    MediaState {
        audio_muted: bool,
        video_muted: bool,
        screen: bool,
    },
    /// Admitted: ask the identity authority to bind this MLS signature public key (base64,
    /// 32 bytes Ed25519) to this socket's (user, device) for this meeting. Answered by
    /// `mls_binding`. See docs/E2EE.md.
    MlsBind {
        signature_key: String,
    },
    /// Admitted: a KeyPackage (base64 MLS message) whose credential is the binding. The
    /// delivery service validates it and either asks this client to create the group
    /// (`mls_create`) or proposes to add it.
    MlsKeyPackage {
        key_package: String,
    },
    /// The group's creator: the GroupInfo (base64 MLS message, with the ratchet tree) of the
    /// new group, so the delivery service can follow it.
    MlsGroupInfo {
        group_info: String,
    },
    /// A member: a commit (base64 MLS PublicMessage) of the pending proposals, with the
    /// Welcome for the added members if any. Echoed to every member when accepted
    /// (`mls_commit`), refused with `mls_rejected` otherwise.
    MlsCommit {
        commit: String,
        welcome: Option<String>,
    },
    /// A member: an application message (base64 MLS PrivateMessage: chat), relayed to the
    /// other members.
    MlsApp {
        message: String,
    },
    Ping,
}

impl ClientMsg {
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Join { .. } => "join",
            ClientMsg::Leave => "leave",
            ClientMsg::Admit { .. } => "admit",
            ClientMsg::Refuse { .. } => "refuse",
            ClientMsg::Remove { .. } => "remove",
            ClientMsg::Lock { .. } => "lock",
            ClientMsg::MediaOffer { .. } => "media_offer",
            ClientMsg::MediaAnswer { .. } => "media_answer",
            ClientMsg::MediaState { .. } => "media_state",
            ClientMsg::MlsBind { .. } => "mls_bind",
            ClientMsg::MlsKeyPackage { .. } => "mls_key_package",
            ClientMsg::MlsGroupInfo { .. } => "mls_group_info",
            ClientMsg::MlsCommit { .. } => "mls_commit",
            ClientMsg::MlsApp { .. } => "mls_app",
            ClientMsg::Ping => "ping",
        }
    }
}

/// The state a signaling socket is in; each allows its own set of [`ClientMsg`] types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum SocketState {
    Unauthenticated,
    Authenticated,
    Lobby,
    Admitted,
}

/// What an admitted participant learns about the meeting.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct MeetingInfo {
    pub id: String,
    pub title: String,
    pub level: Level,
    pub locked: bool,
    pub lobby: bool,
    pub capacity: u32,
}

/// Why a session ended, in [`ServerMsg::Hello`].
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct SessionEnd {
    pub reason: RefusalReason,
    pub message: String,
}

impl From<RefusalReason> for SessionEnd {
    fn from(reason: RefusalReason) -> SessionEnd {
        SessionEnd {
            reason,
            message: reason.message().into(),
        }
    }
}

/// Messages the server sends over the signaling WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// First message on every socket.
    Hello {
        state: SocketState,
        /// Only on an unauthenticated socket whose session cookie names a session that was
        /// valid once: why it no longer is (`device_revoked`, or `session_ended` for one that
        /// was signed out, expired or whose user was disabled). The page shows it instead of
        /// joining as nobody. `null` otherwise, and always for a cookie the server does not
        /// know, so a scanner learns nothing it did not already hold.
        ended: Option<SessionEnd>,
    },
    /// The join was refused, or participation ended; the socket is back to `authenticated`.
    Refused {
        reason: RefusalReason,
        message: String,
    },
    /// Waiting in the lobby for a host.
    Lobby,
    /// Admitted: the meeting, who you are in it, and who else is there.
    Admitted {
        meeting: MeetingInfo,
        you: String,
        host: bool,
        participants: Vec<Participant>,
    },
    /// The live participant list changed.
    Participants {
        participants: Vec<Participant>,
    },
    /// Hosts only: who waits in the lobby.
    LobbyUpdate {
        waiting: Vec<LobbyEntry>,
    },
    /// The meeting changed (lock state).
    MeetingUpdate {
        meeting: MeetingInfo,
    },
    /// Left the meeting at the client's request.
    Left,
    /// The SFU's answer to the client's `media_offer`.
    MediaAnswer {
        sdp: String,
    },
    /// The SFU offers a renegotiation (tracks added or removed); answer with `media_answer`.
    MediaOffer {
        sdp: String,
    },
    /// Every track this client receives, by its transceiver mid.
    MediaTracks {
        tracks: Vec<RemoteTrack>,
    },
    /// A new device was enrolled for this user (sent to their other devices) or for anyone
    /// (sent to admins).
    DeviceAdded {
        user_name: String,
        device_name: String,
        device_kind: DeviceKind,
    },
    /// The identity authority's binding for the signature key of `mls_bind`: the MLS
    /// credential identity (base64), the server's identity public key (base64, to pin) and
    /// the group id prefix of this meeting. See docs/E2EE.md section 2.
    MlsBinding {
        credential: String,
        identity_key: String,
        server_id: String,
        group_id_prefix: String,
    },
    /// No group exists yet: create it with this id, then send `mls_group_info`.
    MlsCreate {
        group_id: String,
    },
    /// A proposal by the server as external sender (base64 MLS PublicMessage): Add for a
    /// newly admitted member, Remove for one who left. A member commits it.
    MlsProposal {
        message: String,
    },
    /// The accepted commit for `epoch` (the epoch it was made in), in order, to every member
    /// (the committer merges its own commit only on this echo).
    MlsCommit {
        commit: String,
        #[ts(type = "number")]
        epoch: u64,
    },
    /// Your Welcome into the group (base64 MLS message).
    MlsWelcome {
        welcome: String,
    },
    /// Your commit was not accepted (another one won the epoch, or it broke the rules).
    MlsRejected {
        reason: String,
    },
    /// An application message from another member (base64 MLS PrivateMessage).
    MlsApp {
        message: String,
    },
    /// A message was malformed, too large or not allowed in this state. Nothing changed.
    Error {
        code: String,
        message: String,
    },
    Pong,
}
