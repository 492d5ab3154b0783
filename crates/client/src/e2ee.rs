//! End-to-end encryption of the native client's call (docs/E2EE.md): one MLS member per
//! admission, driven by the delivery service's messages, and the SFrame sender and receiver
//! keyed from its epochs.
//!
//! [`Session`] is sans-IO: the media task feeds it server messages
//! ([`Session::handle_message`]), the clock ([`Session::handle_timeout`]), outgoing frames
//! ([`Session::encrypt`]) and incoming ones ([`Session::decrypt`]), and drains
//! [`Session::poll_output`] for signaling messages to send and the server key to pin. It never
//! reads the clock.
//!
//! The flow: `mls_bind` → `mls_binding` (the server key is checked against the pin for this
//! origin, or pinned on first use) → `mls_key_package` → either `mls_create` (we create the
//! group and send its GroupInfo) or `mls_welcome`. Server proposals are committed at once by
//! the designated committer, by everyone else after a random 1.5–3 s backoff if no commit
//! came; our own commit is merged only on the delivery service's echo, and a refused one is
//! dropped (and redone if still needed).
//!
//! Fail closed: nothing is encrypted, so nothing is sent, without a group key; a member we
//! cannot follow stops sending; at `restricted`, a member whose binding does not verify ends
//! our participation (we send `leave`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sealroom_e2ee::mls::{Identity, Incoming, Member, MemberConfig, MlsError, RosterEntry};
use sealroom_e2ee::sframe::{
    self, Codec, DropReason, FailureCounts, ReceivedFrame, Receiver, Sender, Source as KidSource,
};
use sealroom_proto::{ClientMsg, Level, MeetingInfo, Participant, ServerMsg, Source};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

/// Shortest wait before a member that is not the designated committer commits (docs/E2EE.md §4).
pub const COMMIT_BACKOFF_MIN: Duration = Duration::from_millis(1500);
/// Longest such wait.
pub const COMMIT_BACKOFF_MAX: Duration = Duration::from_millis(3000);
/// The periodic key update (DESIGN §7: an Update commit every 10 minutes).
pub const KEY_UPDATE_EVERY: Duration = Duration::from_secs(600);
/// A participant the server lists without an MLS leaf for this long is flagged.
pub const NO_LEAF_GRACE: Duration = Duration::from_secs(5);
/// "Sender X sends but nothing decrypts for 2 s" is a security warning (DESIGN §7).
pub const UNDECRYPTABLE_WARNING: Duration = Duration::from_secs(2);
/// MLS problems kept for the stats (the oldest are dropped).
const MAX_ERRORS: usize = 32;

/// What the session needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's origin: its id in every binding.
    pub origin: String,
    /// The meeting we are admitted to.
    pub meeting: MeetingInfo,
    /// Our participant id.
    pub you: String,
    /// The server identity key pinned for this origin, if any (else: pinned on first use).
    pub pinned: Option<VerifyingKey>,
    /// How often the designated committer sends an empty commit with a fresh path.
    pub key_update_every: Duration,
    /// Seed of the backoff randomness (not cryptographic).
    pub rng_seed: u64,
}

/// Work for the caller.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send this on the signaling socket.
    Send(ClientMsg),
    /// First use of this origin's server key: remember it (the next session checks it).
    PinServerKey(VerifyingKey),
}

/// Where the member stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `mls_bind` sent.
    AwaitingBinding,
    /// KeyPackage sent; waiting for `mls_create` or `mls_welcome`.
    AwaitingGroup,
    /// In the group: media is encrypted and decrypted.
    Active,
    /// A commit removed us.
    Removed,
    /// We left the meeting, or it ended for us.
    Ended,
    /// Fail closed: something did not verify, or we cannot follow the group.
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::AwaitingBinding => "awaiting_binding",
            Phase::AwaitingGroup => "awaiting_group",
            Phase::Active => "active",
            Phase::Removed => "removed",
            Phase::Ended => "ended",
            Phase::Failed => "failed",
        }
    }
}

/// One MLS member as this client sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RosterMember {
    pub leaf: u32,
    /// This is us.
    pub you: bool,
    /// Its credential verifies under the pinned server key (docs/E2EE.md §2).
    pub verified: bool,
    /// Why it does not verify.
    pub problem: Option<String>,
    /// From the verified binding (empty when unverified).
    pub user_id: String,
    pub user_name: String,
    pub display_name: String,
    pub device_id: String,
    pub device_name: String,
    pub device_kind: String,
    /// The participant the server lists for this (user, device), if any.
    pub participant_id: Option<String>,
}

/// A new epoch, when this client reached it.
#[derive(Debug, Clone)]
pub struct EpochChange {
    pub epoch: u64,
    pub at: Instant,
    pub security_code: String,
    /// Hex of `MLS-Exporter("sealroom test", "", 16)`: the same value the web client shows as
    /// its check value, so tests compare exporters across implementations.
    pub check_value: String,
    pub members: usize,
    /// Leaves added and removed by the commit (empty for create/join).
    pub added: Vec<u32>,
    pub removed: Vec<u32>,
    /// It was our own commit.
    pub own: bool,
}

/// A chat message that decrypted.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub leaf: u32,
    /// From the sender's verified binding (empty when unverified).
    pub user_name: String,
    pub device_id: String,
    pub text: String,
    pub at: Instant,
}

/// Decrypted frames from one sender's source, labelled from the KID (leaf → credential, context
/// → source), never from signaling.
#[derive(Debug, Clone)]
pub struct SenderStats {
    pub leaf: u32,
    pub source: Source,
    /// From the credential of the leaf in the epoch the frame was decrypted in.
    pub user_name: String,
    pub device_id: String,
    /// The server's participant with that device (empty when the server lists none).
    pub participant_id: String,
    /// The receiving transceiver the last frame came on.
    pub mid: String,
    pub frames: u64,
    /// Plaintext bytes (clear bytes included).
    pub bytes: u64,
    /// Frames per MLS epoch.
    pub frames_by_epoch: BTreeMap<u64, u64>,
    pub first_frame_at: Option<Instant>,
    /// From the media session's start instant to the first frame (filled in by the media task).
    pub first_frame_after: Option<Duration>,
    pub last_frame_at: Option<Instant>,
}

/// The E2EE part of the media stats.
#[derive(Debug, Clone, Default)]
pub struct E2eeStats {
    /// `awaiting_binding`, `awaiting_group`, `active`, `removed`, `ended`, `failed`, or
    /// `off` before admission.
    pub state: String,
    /// Why it failed or ended.
    pub reason: Option<String>,
    pub level: Option<Level>,
    pub epoch: Option<u64>,
    pub security_code: Option<String>,
    pub own_leaf: Option<u32>,
    pub group_id: Option<String>,
    /// The server identity key (base64) and whether this session pinned it first.
    pub server_key: Option<String>,
    pub server_key_first_use: bool,
    /// The MLS members of the current epoch.
    pub roster: Vec<RosterMember>,
    /// MLS members the server's participant list does not have (DESIGN flow 7).
    pub unannounced_members: Vec<RosterMember>,
    /// Participants the server lists that have had no MLS leaf for [`NO_LEAF_GRACE`].
    pub participants_without_leaf: Vec<String>,
    /// Transceivers whose frames have not decrypted for [`UNDECRYPTABLE_WARNING`] while
    /// arriving: a security warning, not a glitch.
    pub undecryptable_mids: Vec<String>,
    /// Incoming frames dropped, by reason.
    pub failures: FailureCounts,
    pub frames_decrypted: u64,
    pub frames_encrypted: u64,
    /// Outgoing frames not sent because there was no group key (or we failed closed).
    pub frames_withheld: u64,
    pub commits_sent: u64,
    pub commits_rejected: u64,
    pub epochs: Vec<EpochChange>,
    pub chat: Vec<ChatMessage>,
    /// Application messages that did not decrypt or parse.
    pub chat_rejected: u64,
    /// The latest MLS problems, oldest first.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SenderKey {
    leaf: u32,
    source: KidSource,
}

/// The E2EE state of one admission.
pub struct Session {
    cfg: Config,
    member: Member,
    phase: Phase,
    reason: Option<String>,
    credential: Vec<u8>,
    prefix: String,
    server_key: Option<VerifyingKey>,
    first_use: bool,
    sender: Option<Sender>,
    receiver: Receiver,
    commit_due: Option<Instant>,
    update_due: Option<Instant>,
    keyframe_wanted: bool,
    rng: StdRng,
    out: VecDeque<Output>,
    roster: Vec<RosterMember>,
    /// The previous epoch's roster (frames of the grace period are labelled with it).
    previous_roster: Vec<RosterMember>,
    participants: Vec<Participant>,
    first_seen: HashMap<String, Instant>,
    active_since: Option<Instant>,
    epochs: Vec<EpochChange>,
    senders: BTreeMap<(SenderKey, String), SenderStats>,
    /// Per mid: last frame that arrived, last that decrypted, first that arrived.
    mids: HashMap<String, (Instant, Option<Instant>, Instant)>,
    frames_decrypted: u64,
    frames_encrypted: u64,
    frames_withheld: u64,
    commits_sent: u64,
    commits_rejected: u64,
    chat: Vec<ChatMessage>,
    chat_rejected: u64,
    errors: VecDeque<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("phase", &self.phase)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

fn kid_source(s: KidSource) -> Source {
    match s {
        KidSource::Microphone => Source::Microphone,
        KidSource::Camera => Source::Camera,
        KidSource::Screen => Source::Screen,
        KidSource::ScreenAudio => Source::ScreenAudio,
    }
}

/// The KID context of a published source.
pub fn context_of(source: Source) -> KidSource {
    match source {
        Source::Microphone => KidSource::Microphone,
        Source::Camera => KidSource::Camera,
        Source::Screen => KidSource::Screen,
        Source::ScreenAudio => KidSource::ScreenAudio,
    }
}

/// The meeting's MLS group id without its generation (docs/E2EE.md §3), as this client
/// computes it from what it knows.
pub fn group_id_prefix(origin: &str, meeting: &MeetingInfo) -> String {
    format!(
        "sealroom/v1/{origin}/{}/{}/",
        meeting.id,
        meeting.level.as_str()
    )
}

impl Session {
    /// A session with a fresh MLS leaf key; its first output is `mls_bind`.
    pub fn new(cfg: Config) -> Result<Session, MlsError> {
        // Until the binding names the server key, a throwaway key stands in; it is replaced
        // (or checked against the pin) before anything is verified.
        let placeholder = SigningKey::from_bytes(&rand::random()).verifying_key();
        let member = Member::new(MemberConfig {
            server_id: cfg.origin.clone(),
            meeting_id: cfg.meeting.id.clone(),
            server_key: cfg.pinned.unwrap_or(placeholder),
        })?;
        let mut out = VecDeque::new();
        out.push_back(Output::Send(ClientMsg::MlsBind {
            signature_key: B64.encode(member.signature_key()),
        }));
        Ok(Session {
            prefix: group_id_prefix(&cfg.origin, &cfg.meeting),
            rng: StdRng::seed_from_u64(cfg.rng_seed),
            cfg,
            member,
            phase: Phase::AwaitingBinding,
            reason: None,
            credential: Vec::new(),
            server_key: None,
            first_use: false,
            sender: None,
            receiver: Receiver::new(),
            commit_due: None,
            update_due: None,
            keyframe_wanted: false,
            out,
            roster: Vec::new(),
            previous_roster: Vec::new(),
            participants: Vec::new(),
            first_seen: HashMap::new(),
            active_since: None,
            epochs: Vec::new(),
            senders: BTreeMap::new(),
            mids: HashMap::new(),
            frames_decrypted: 0,
            frames_encrypted: 0,
            frames_withheld: 0,
            commits_sent: 0,
            commits_rejected: 0,
            chat: Vec::new(),
            chat_rejected: 0,
            errors: VecDeque::new(),
        })
    }

    /// Where the member stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The next piece of work for the caller.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Session::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.commit_due, self.update_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the next video frame should be a keyframe (we just got our first key: the
    /// frames before it were withheld, so receivers have nothing to decode from).
    pub fn take_keyframe_wanted(&mut self) -> bool {
        std::mem::take(&mut self.keyframe_wanted)
    }

    fn send(&mut self, msg: ClientMsg) {
        self.out.push_back(Output::Send(msg));
    }

    fn error(&mut self, e: impl Into<String>) {
        let e = e.into();
        if self.errors.len() == MAX_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back(e);
    }

    /// Stops all media crypto: no key to send with, none to decrypt with.
    fn stop(&mut self, phase: Phase, reason: impl Into<String>) {
        let reason = reason.into();
        if matches!(phase, Phase::Failed) {
            self.error(format!("failed closed: {reason}"));
        }
        self.phase = phase;
        self.reason = Some(reason);
        self.sender = None;
        self.commit_due = None;
        self.update_due = None;
        if phase == Phase::Failed {
            self.receiver.clear();
        }
    }

    /// Fail closed (and, at `restricted`, leave the meeting).
    fn fail(&mut self, reason: impl Into<String>) {
        self.stop(Phase::Failed, reason);
        if self.cfg.meeting.level == Level::Restricted {
            self.send(ClientMsg::Leave);
        }
    }

    /// Feeds one server message. Returns whether it was MLS traffic, consumed here; everything
    /// else should also reach the caller's own handling.
    pub fn handle_message(&mut self, msg: &ServerMsg, now: Instant) -> bool {
        match msg {
            ServerMsg::MlsBinding {
                credential,
                identity_key,
                server_id,
                group_id_prefix,
            } => self.on_binding(credential, identity_key, server_id, group_id_prefix),
            ServerMsg::MlsCreate { group_id } => self.on_create(group_id, now),
            ServerMsg::MlsWelcome { welcome } => self.on_welcome(welcome, now),
            ServerMsg::MlsProposal { message } => self.on_proposal(message, now),
            ServerMsg::MlsCommit { commit, epoch } => self.on_commit(commit, *epoch, now),
            ServerMsg::MlsRejected { reason } => self.on_rejected(reason, now),
            ServerMsg::MlsApp { message } => self.on_app(message, now),
            ServerMsg::Participants { participants } => {
                self.set_participants(participants, now);
                return false;
            }
            ServerMsg::Error { code, message } if code.starts_with("mls_") => {
                self.error(format!("server: {code}: {message}"));
                if matches!(self.phase, Phase::AwaitingBinding | Phase::AwaitingGroup) {
                    self.fail(format!("the delivery service refused us: {message}"));
                }
                return false;
            }
            ServerMsg::Refused { message, .. } => {
                if !matches!(self.phase, Phase::Failed) {
                    self.stop(Phase::Ended, format!("participation ended: {message}"));
                }
                return false;
            }
            ServerMsg::Left => {
                if !matches!(self.phase, Phase::Failed) {
                    self.stop(Phase::Ended, "left the meeting");
                }
                return false;
            }
            _ => return false,
        }
        true
    }

    /// The participant list the server reports (for matching and flagging).
    pub fn set_participants(&mut self, participants: &[Participant], now: Instant) {
        for p in participants {
            self.first_seen.entry(p.id.clone()).or_insert(now);
        }
        self.participants = participants.to_vec();
        let roster = std::mem::take(&mut self.roster);
        self.roster = self.matched(roster);
        // A sender keeps the participant it was matched to after that participant left.
        for s in self.senders.values_mut() {
            if s.participant_id.is_empty() && !s.device_id.is_empty() {
                s.participant_id = participant_of(&self.participants, &s.device_id);
            }
        }
    }

    fn on_binding(&mut self, credential: &str, identity_key: &str, server_id: &str, prefix: &str) {
        if self.phase != Phase::AwaitingBinding {
            self.error("a binding we did not ask for");
            return;
        }
        let key = B64
            .decode(identity_key)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .and_then(|k| VerifyingKey::from_bytes(&k).ok());
        let Some(key) = key else {
            return self.fail("the server's identity key is not an Ed25519 public key");
        };
        match self.cfg.pinned {
            Some(pinned) if pinned != key => {
                return self.fail(
                    "the server's identity key is not the one pinned for this origin (KEY CHANGED)",
                )
            }
            Some(_) => {}
            None => {
                self.first_use = true;
                self.out.push_back(Output::PinServerKey(key));
            }
        }
        self.server_key = Some(key);
        if server_id != self.cfg.origin {
            return self.fail(format!(
                "the binding names server {server_id:?}, we talk to {:?}",
                self.cfg.origin
            ));
        }
        if prefix != self.prefix {
            return self.fail(format!(
                "the group id prefix {prefix:?} is not this meeting's {:?}",
                self.prefix
            ));
        }
        if let Err(e) = self.member.set_server_key(key) {
            return self.fail(format!("cannot set the server key: {e}"));
        }
        let Ok(credential) = B64.decode(credential) else {
            return self.fail("the binding is not base64");
        };
        match self.member.key_package(&credential) {
            Ok(kp) => {
                self.credential = credential;
                self.phase = Phase::AwaitingGroup;
                self.send(ClientMsg::MlsKeyPackage {
                    key_package: B64.encode(kp),
                });
            }
            Err(e) => self.fail(format!("our binding does not verify: {e}")),
        }
    }

    fn group_id_ok(&self, group_id: &str) -> bool {
        group_id
            .strip_prefix(&self.prefix)
            .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
    }

    fn on_create(&mut self, group_id: &str, now: Instant) {
        if self.phase != Phase::AwaitingGroup {
            self.error("asked to create a group out of turn");
            return;
        }
        if !self.group_id_ok(group_id) {
            return self.fail(format!("group id {group_id:?} is not this meeting's"));
        }
        let credential = self.credential.clone();
        match self.member.create_group(&credential, group_id.as_bytes()) {
            Ok(info) => {
                self.send(ClientMsg::MlsGroupInfo {
                    group_info: B64.encode(info),
                });
                self.activate(now);
            }
            Err(e) => self.fail(format!("could not create the group: {e}")),
        }
    }

    fn on_welcome(&mut self, welcome: &str, now: Instant) {
        if self.phase != Phase::AwaitingGroup {
            self.error("a Welcome out of turn");
            return;
        }
        let Ok(welcome) = B64.decode(welcome) else {
            return self.fail("the Welcome is not base64");
        };
        // The prefix ends in '/': the group id must be it plus a decimal generation.
        match self.member.join(&welcome, self.prefix.as_bytes()) {
            Ok(_) => self.activate(now),
            Err(e) => self.fail(format!("Welcome refused: {e}")),
        }
    }

    fn activate(&mut self, now: Instant) {
        let (Some(leaf), Ok(key)) = (self.member.own_leaf(), self.member.sframe_key()) else {
            return self.fail("in a group without a key");
        };
        match Sender::new(leaf, key.clone()) {
            Ok(s) => self.sender = Some(s),
            Err(e) => return self.fail(format!("SFrame sender: {e}")),
        }
        self.receiver.install_epoch(key, now);
        self.phase = Phase::Active;
        self.active_since = Some(now);
        self.keyframe_wanted = true;
        self.update_due = Some(now + self.cfg.key_update_every);
        self.refresh_roster();
        self.record_epoch(now, Vec::new(), Vec::new(), false);
        self.check_verified();
    }

    fn record_epoch(&mut self, now: Instant, added: Vec<u32>, removed: Vec<u32>, own: bool) {
        let (Some(epoch), Ok(code)) = (self.member.epoch(), self.member.security_code()) else {
            return;
        };
        let check_value = self
            .member
            .export_secret("sealroom test", &[], 16)
            .map(hex::encode)
            .unwrap_or_default();
        self.epochs.push(EpochChange {
            epoch,
            at: now,
            security_code: code,
            check_value,
            members: self.roster.len(),
            added,
            removed,
            own,
        });
    }

    fn refresh_roster(&mut self) {
        let own = self.member.own_leaf();
        let entries = match self.member.roster() {
            Ok(r) => r,
            Err(e) => {
                self.error(format!("roster: {e}"));
                return;
            }
        };
        let roster: Vec<RosterMember> =
            entries.into_iter().map(|e| roster_member(e, own)).collect();
        let roster = self.matched(roster);
        self.previous_roster = std::mem::replace(&mut self.roster, roster);
    }

    /// Matches MLS members to the server's participants by (user name, device id).
    fn matched(&self, roster: Vec<RosterMember>) -> Vec<RosterMember> {
        roster
            .into_iter()
            .map(|mut m| {
                m.participant_id = if m.you {
                    Some(self.cfg.you.clone())
                } else if m.verified {
                    self.participants
                        .iter()
                        .find(|p| p.device_id == m.device_id && p.user_name == m.user_name)
                        .map(|p| p.id.clone())
                } else {
                    None
                };
                m
            })
            .collect()
    }

    /// At `restricted`, a member whose binding does not verify ends our participation.
    fn check_verified(&mut self) {
        if self.cfg.meeting.level != Level::Restricted {
            return;
        }
        if let Some(m) = self.roster.iter().find(|m| !m.verified) {
            let why = format!(
                "member at leaf {} does not verify at the restricted level: {}",
                m.leaf,
                m.problem.clone().unwrap_or_default()
            );
            self.fail(why);
        }
    }

    fn on_proposal(&mut self, message: &str, now: Instant) {
        if self.phase != Phase::Active {
            self.error("a proposal while not in the group");
            return;
        }
        let Ok(bytes) = B64.decode(message) else {
            self.error("a proposal that is not base64");
            return;
        };
        match self.member.handle_message(&bytes) {
            Ok(Incoming::Proposal(_)) => self.schedule_commit(now),
            Ok(other) => self.error(format!("expected a proposal, got {other:?}")),
            Err(e) => self.error(format!("proposal refused: {e}")),
        }
    }

    /// The designated committer commits at once; everyone else after a random backoff, if no
    /// commit for the epoch arrives first (docs/E2EE.md §4).
    fn schedule_commit(&mut self, now: Instant) {
        if self.phase != Phase::Active
            || self.member.has_pending_commit()
            || !self.member.has_pending_proposals()
        {
            return;
        }
        if self.member.is_designated_committer() {
            self.commit();
        } else if self.commit_due.is_none() {
            let wait = self.rng.gen_range(COMMIT_BACKOFF_MIN..=COMMIT_BACKOFF_MAX);
            self.commit_due = Some(now + wait);
        }
    }

    fn commit(&mut self) {
        self.commit_due = None;
        match self.member.commit_pending() {
            Ok(out) => self.send_commit(out),
            Err(e) => self.error(format!("could not commit: {e}")),
        }
    }

    fn send_commit(&mut self, out: sealroom_e2ee::mls::CommitOut) {
        self.commits_sent += 1;
        self.send(ClientMsg::MlsCommit {
            commit: B64.encode(&out.commit),
            welcome: out.welcome.as_ref().map(|w| B64.encode(w)),
        });
    }

    fn on_commit(&mut self, commit: &str, made_in: u64, now: Instant) {
        if self.phase != Phase::Active {
            return;
        }
        let Ok(bytes) = B64.decode(commit) else {
            return self.fail("an accepted commit that is not base64");
        };
        if self.member.epoch().is_some_and(|e| made_in < e) {
            // Made before we joined (we came in with its Welcome).
            return;
        }
        let mut r = self.member.handle_message(&bytes);
        if r.is_err() && self.member.has_pending_commit() {
            // Another member's commit won this epoch while ours waited: ours is dead.
            if let Err(e) = self.member.discard_pending_commit() {
                self.error(format!("discard: {e}"));
            }
            r = self.member.handle_message(&bytes);
        }
        match r {
            Ok(Incoming::Commit(s)) => self.after_commit(s, false, now),
            Ok(Incoming::OwnCommit(s)) => self.after_commit(s, true, now),
            Ok(other) => self.error(format!("expected a commit, got {other:?}")),
            // The delivery service accepted it, every member must follow it: one we refuse
            // leaves us out of step with the group.
            Err(e) => self.fail(format!("cannot follow the group's commit: {e}")),
        }
    }

    fn after_commit(&mut self, s: sealroom_e2ee::mls::CommitSummary, own: bool, now: Instant) {
        self.commit_due = None;
        if s.self_removed {
            self.stop(Phase::Removed, "a commit removed us from the group");
            return;
        }
        let key = match self.member.sframe_key() {
            Ok(k) => k,
            Err(e) => return self.fail(format!("no key after the commit: {e}")),
        };
        if let Some(sender) = &mut self.sender {
            if let Err(e) = sender.switch_epoch(key.clone()) {
                return self.fail(format!("SFrame sender: {e}"));
            }
        }
        self.receiver.install_epoch(key, now);
        self.update_due = Some(now + self.cfg.key_update_every);
        self.refresh_roster();
        let added = s.added.iter().map(|a| a.leaf).collect();
        self.record_epoch(now, added, s.removed.clone(), own);
        self.check_verified();
        self.schedule_commit(now);
    }

    fn on_rejected(&mut self, reason: &str, now: Instant) {
        self.commits_rejected += 1;
        self.error(format!("our commit was refused: {reason}"));
        if self.phase != Phase::Active {
            return;
        }
        if let Err(e) = self.member.discard_pending_commit() {
            self.error(format!("discard: {e}"));
        }
        // Still needed (e.g. a proposal arrived after ours was built): commit again.
        self.schedule_commit(now);
    }

    fn on_app(&mut self, message: &str, now: Instant) {
        if self.phase != Phase::Active {
            return;
        }
        let Ok(bytes) = B64.decode(message) else {
            self.chat_rejected += 1;
            return;
        };
        match self.member.handle_message(&bytes) {
            Ok(Incoming::Chat { sender, text }) => {
                let m = self.roster.iter().find(|m| m.leaf == sender);
                self.chat.push(ChatMessage {
                    leaf: sender,
                    user_name: m.map(|m| m.user_name.clone()).unwrap_or_default(),
                    device_id: m.map(|m| m.device_id.clone()).unwrap_or_default(),
                    text,
                    at: now,
                });
            }
            Ok(Incoming::OwnApplicationMessage) => {}
            Ok(other) => {
                self.chat_rejected += 1;
                self.error(format!("expected chat, got {other:?}"));
            }
            Err(e) => {
                self.chat_rejected += 1;
                self.error(format!("application message refused: {e}"));
            }
        }
    }

    /// Runs what is due: a backed-off commit, the periodic key update.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.commit_due.is_some_and(|t| now >= t) {
            self.commit_due = None;
            self.commit_if_still_needed();
        }
        if self.update_due.is_some_and(|t| now >= t) {
            self.update_due = Some(now + self.cfg.key_update_every);
            if self.phase == Phase::Active
                && self.member.is_designated_committer()
                && !self.member.has_pending_proposals()
                && !self.member.has_pending_commit()
            {
                match self.member.self_update() {
                    Ok(out) => self.send_commit(out),
                    Err(e) => self.error(format!("key update: {e}")),
                }
            }
        }
        self.receiver.expire(now);
    }

    /// The backoff ran out and no commit for the epoch came: commit ourselves.
    fn commit_if_still_needed(&mut self) {
        if self.phase == Phase::Active
            && !self.member.has_pending_commit()
            && self.member.has_pending_proposals()
        {
            self.commit();
        }
    }

    /// Encrypts one outgoing frame; `None` means: do not send it (no group key, or failed).
    pub fn encrypt(&mut self, source: Source, codec: Codec, frame: &[u8]) -> Option<Vec<u8>> {
        let r = match (&mut self.sender, self.phase) {
            (Some(s), Phase::Active) => s.encrypt(context_of(source), codec, frame),
            _ => {
                self.frames_withheld += 1;
                return None;
            }
        };
        match r {
            Ok(wire) => {
                self.frames_encrypted += 1;
                Some(wire)
            }
            Err(e) => {
                self.frames_withheld += 1;
                self.error(format!("encrypt: {e}"));
                None
            }
        }
    }

    /// Decrypts one incoming frame that arrived on `mid`. A frame that fails is dropped and
    /// counted by reason; one that decrypts is counted under its KID's sender and source.
    pub fn decrypt(
        &mut self,
        mid: &str,
        codec: Codec,
        wire: &[u8],
        now: Instant,
    ) -> Result<ReceivedFrame, DropReason> {
        let seen = self.mids.entry(mid.to_string()).or_insert((now, None, now));
        seen.0 = now;
        let frame = self.receiver.decrypt(codec, wire, now)?;
        if let Some(seen) = self.mids.get_mut(mid) {
            seen.1 = Some(now);
        }
        self.frames_decrypted += 1;
        let roster = if Some(frame.epoch) == self.member.epoch() {
            &self.roster
        } else {
            &self.previous_roster
        };
        let who = roster.iter().find(|m| m.leaf == frame.leaf);
        let device_id = who.map(|m| m.device_id.clone()).unwrap_or_default();
        let user_name = who.map(|m| m.user_name.clone()).unwrap_or_default();
        let key = (
            SenderKey {
                leaf: frame.leaf,
                source: frame.source,
            },
            device_id.clone(),
        );
        let s = self.senders.entry(key).or_insert_with(|| SenderStats {
            leaf: frame.leaf,
            source: kid_source(frame.source),
            user_name,
            device_id,
            participant_id: String::new(),
            mid: String::new(),
            frames: 0,
            bytes: 0,
            frames_by_epoch: BTreeMap::new(),
            first_frame_at: None,
            first_frame_after: None,
            last_frame_at: None,
        });
        if s.participant_id.is_empty() && !s.device_id.is_empty() {
            s.participant_id = participant_of(&self.participants, &s.device_id);
        }
        s.mid = mid.to_string();
        s.frames += 1;
        s.bytes += frame.frame.len() as u64;
        *s.frames_by_epoch.entry(frame.epoch).or_default() += 1;
        s.first_frame_at.get_or_insert(now);
        s.last_frame_at = Some(now);
        Ok(frame)
    }

    /// Sends a chat message (MLS application message, docs/E2EE.md §7).
    pub fn send_chat(&mut self, text: &str) -> Result<(), String> {
        if self.phase != Phase::Active {
            return Err(format!("not in the group ({})", self.phase.as_str()));
        }
        let msg = self.member.send_chat(text).map_err(|e| e.to_string())?;
        self.send(ClientMsg::MlsApp {
            message: B64.encode(msg),
        });
        Ok(())
    }

    /// `MLS-Exporter(label, context, len)` of the current epoch.
    pub fn export_secret(
        &self,
        label: &str,
        context: &[u8],
        len: usize,
    ) -> Result<Vec<u8>, String> {
        if self.phase != Phase::Active {
            return Err(format!("not in the group ({})", self.phase.as_str()));
        }
        self.member
            .export_secret(label, context, len)
            .map_err(|e| e.to_string())
    }

    /// Decrypted frames per sender and source, matched to the server's participants by the
    /// device in the sender's credential (a match is kept after the participant left).
    pub fn senders(&self) -> Vec<SenderStats> {
        self.senders.values().cloned().collect()
    }

    /// A snapshot for [`crate::media::MediaStats`].
    pub fn stats(&self, now: Instant) -> E2eeStats {
        let in_group = self.phase == Phase::Active;
        let unannounced_members = self
            .roster
            .iter()
            .filter(|m| !m.you && m.participant_id.is_none())
            .cloned()
            .collect();
        let participants_without_leaf = match self.active_since {
            Some(active) if in_group => self
                .participants
                .iter()
                .filter(|p| p.id != self.cfg.you)
                .filter(|p| {
                    !self
                        .roster
                        .iter()
                        .any(|m| m.participant_id.as_deref() == Some(p.id.as_str()))
                })
                .filter(|p| {
                    let since = self.first_seen.get(&p.id).copied().unwrap_or(now);
                    now.saturating_duration_since(since.max(active)) >= NO_LEAF_GRACE
                })
                .map(|p| p.id.clone())
                .collect(),
            _ => Vec::new(),
        };
        let undecryptable_mids = self
            .mids
            .iter()
            .filter(|(_, (last, ok, first))| {
                now.saturating_duration_since(*last) < Duration::from_millis(500)
                    && now.saturating_duration_since(ok.unwrap_or(*first)) >= UNDECRYPTABLE_WARNING
            })
            .map(|(mid, _)| mid.clone())
            .collect();
        E2eeStats {
            state: self.phase.as_str().into(),
            reason: self.reason.clone(),
            level: Some(self.cfg.meeting.level),
            epoch: self.member.epoch().filter(|_| in_group),
            security_code: self
                .epochs
                .last()
                .map(|e| e.security_code.clone())
                .filter(|_| in_group),
            own_leaf: self.member.own_leaf(),
            group_id: self
                .member
                .group_id()
                .map(|g| String::from_utf8_lossy(&g).into_owned()),
            server_key: self.server_key.map(|k| B64.encode(k.as_bytes())),
            server_key_first_use: self.first_use,
            roster: self.roster.clone(),
            unannounced_members,
            participants_without_leaf,
            undecryptable_mids,
            failures: self.receiver.failures(),
            frames_decrypted: self.frames_decrypted,
            frames_encrypted: self.frames_encrypted,
            frames_withheld: self.frames_withheld,
            commits_sent: self.commits_sent,
            commits_rejected: self.commits_rejected,
            epochs: self.epochs.clone(),
            chat: self.chat.clone(),
            chat_rejected: self.chat_rejected,
            errors: self.errors.iter().cloned().collect(),
        }
    }
}

/// The participant the server lists with this device, or "".
fn participant_of(participants: &[Participant], device_id: &str) -> String {
    participants
        .iter()
        .find(|p| p.device_id == device_id)
        .map(|p| p.id.clone())
        .unwrap_or_default()
}

fn roster_member(e: RosterEntry, own: Option<u32>) -> RosterMember {
    let you = Some(e.leaf) == own;
    match e.identity {
        Identity::Verified(b) => RosterMember {
            leaf: e.leaf,
            you,
            verified: true,
            problem: None,
            user_id: b.user_id,
            user_name: b.username,
            display_name: b.display_name,
            device_id: b.device_id,
            device_name: b.device_name,
            device_kind: b.device_kind,
            participant_id: None,
        },
        Identity::Unverified(err) => RosterMember {
            leaf: e.leaf,
            you,
            verified: false,
            problem: Some(err.to_string()),
            ..RosterMember::default()
        },
    }
}

/// The codec of a published or received source.
pub fn codec_of(source: Source) -> Codec {
    match source {
        Source::Microphone | Source::ScreenAudio => Codec::Opus,
        Source::Camera | Source::Screen => Codec::Vp8,
    }
}

/// The server identity keys this client pinned, one per origin, in a JSON file (mode 0600)
/// beside the device identity.
pub fn load_pin(path: &Path, origin: &str) -> std::io::Result<Option<VerifyingKey>> {
    let pins = read_pins(path)?;
    let Some(b64) = pins.get(origin) else {
        return Ok(None);
    };
    let key = B64
        .decode(b64)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: the pin for {origin} is not a key", path.display()),
            )
        })?;
    Ok(Some(key))
}

/// Remembers `origin`'s server identity key (first use).
pub fn save_pin(path: &Path, origin: &str, key: &VerifyingKey) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut pins = read_pins(path)?;
    pins.insert(origin.to_string(), B64.encode(key.as_bytes()));
    let text = serde_json::to_string_pretty(&pins)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

fn read_pins(path: &Path) -> std::io::Result<BTreeMap<String, String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// Re-exported for callers that inspect frames (tests of "the server cannot listen").
pub use sframe::{parse_kid, KidParts};

#[cfg(test)]
mod tests {
    use super::*;

    fn meeting(level: Level) -> MeetingInfo {
        MeetingInfo {
            id: "m1".into(),
            title: "t".into(),
            level,
            locked: false,
            lobby: false,
            capacity: 10,
        }
    }

    fn session(level: Level, pinned: Option<VerifyingKey>) -> Session {
        Session::new(Config {
            origin: "http://localhost:1".into(),
            meeting: meeting(level),
            you: "p1".into(),
            pinned,
            key_update_every: KEY_UPDATE_EVERY,
            rng_seed: 7,
        })
        .expect("session")
    }

    fn binding(s: &mut Session, key: &SigningKey, server_id: &str, prefix: &str) {
        let msg = ServerMsg::MlsBinding {
            credential: B64.encode(b"not a real binding"),
            identity_key: B64.encode(key.verifying_key().as_bytes()),
            server_id: server_id.into(),
            group_id_prefix: prefix.into(),
        };
        assert!(s.handle_message(&msg, Instant::now()));
    }

    #[test]
    fn the_first_output_is_a_bind_and_nothing_is_sent_without_a_key() {
        let mut s = session(Level::Open, None);
        assert!(matches!(
            s.poll_output(),
            Some(Output::Send(ClientMsg::MlsBind { .. }))
        ));
        assert_eq!(s.encrypt(Source::Microphone, Codec::Opus, &[1, 2, 3]), None);
        assert_eq!(s.stats(Instant::now()).frames_withheld, 1);
        let now = Instant::now();
        assert!(s.decrypt("0", Codec::Opus, &[0u8; 40], now).is_err());
        assert_eq!(s.stats(now).frames_decrypted, 0);
    }

    #[test]
    fn a_changed_server_key_fails_closed_and_restricted_leaves() {
        let pinned = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let mut s = session(Level::Restricted, Some(pinned.verifying_key()));
        s.poll_output();
        let prefix = group_id_prefix("http://localhost:1", &meeting(Level::Restricted));
        binding(&mut s, &other, "http://localhost:1", &prefix);
        assert_eq!(s.phase(), Phase::Failed);
        assert!(s
            .stats(Instant::now())
            .reason
            .is_some_and(|r| r.contains("KEY CHANGED")));
        assert!(matches!(
            s.poll_output(),
            Some(Output::Send(ClientMsg::Leave))
        ));
    }

    #[test]
    fn a_binding_for_another_server_or_meeting_fails_closed() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let prefix = group_id_prefix("http://localhost:1", &meeting(Level::Open));
        let mut s = session(Level::Open, None);
        binding(&mut s, &key, "http://evil:1", &prefix);
        assert_eq!(s.phase(), Phase::Failed);

        let mut s = session(Level::Open, None);
        binding(
            &mut s,
            &key,
            "http://localhost:1",
            "sealroom/v1/http://localhost:1/other/open/",
        );
        assert_eq!(s.phase(), Phase::Failed);

        // The right server and prefix, but the binding itself does not verify.
        let mut s = session(Level::Open, None);
        s.poll_output();
        binding(&mut s, &key, "http://localhost:1", &prefix);
        assert!(matches!(s.poll_output(), Some(Output::PinServerKey(_))));
        assert_eq!(s.phase(), Phase::Failed);
        assert!(
            s.poll_output().is_none(),
            "no key package after a bad binding"
        );
    }

    #[test]
    fn pins_round_trip_in_a_private_file() {
        let dir = std::env::temp_dir().join(format!("sealroom-pins-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("pins.json");
        assert_eq!(load_pin(&path, "http://a").expect("load"), None);
        let k = SigningKey::from_bytes(&[9; 32]).verifying_key();
        save_pin(&path, "http://a", &k).expect("save");
        assert_eq!(load_pin(&path, "http://a").expect("load"), Some(k));
        assert_eq!(load_pin(&path, "http://b").expect("load"), None);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
