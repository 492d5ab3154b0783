//! The client side of MLS ([`Member`]): one member's view of one meeting's group.
//!
//! A member generates its leaf signature key ([`Member::new`]), gets it bound by the server
//! (docs/E2EE.md §2), and then either creates the group ([`Member::create_group`]) or uploads a
//! KeyPackage ([`Member::key_package`]) and joins from the Welcome ([`Member::join`]), which is
//! checked before anything is accepted. Everything the delivery service relays goes through
//! [`Member::handle_message`]: server proposals are stored, commits are checked against
//! docs/E2EE.md §4 before they are merged, chat is decrypted. A member commits the pending
//! proposals with [`Member::commit_pending`] and merges its own commit only when the delivery
//! service echoes it back.
//!
//! Handshake messages are `PublicMessage` in both directions (the delivery service must read
//! them); application messages are always `PrivateMessage`.

use std::collections::HashSet;

use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use openmls::prelude::Extensions;
use openmls::prelude::{
    BasicCredential, Credential, CredentialWithKey, GroupId, KeyPackage, LeafNodeParameters,
    MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageOut,
    ProcessMessageError, ProcessedMessageContent, ProcessedWelcome, Proposal, ProtocolMessage,
    Sender, SenderExtensionIndex, StageCommitError, StagedCommit, ValidationError,
    PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::{random::OpenMlsRand as _, OpenMlsProvider as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tls_codec::Serialize as _;

use crate::credential::{Binding, CredentialError};
use crate::rules::{self, check_commit, verify_leaf};
use crate::sframe::{EpochKey, BASE_KEY_LEN, EXPORTER_LABEL};
use crate::Ed25519Signer;

pub use crate::rules::{
    group_id, server_credential, CommitRuleViolation, Identity, RosterEntry, CIPHERSUITE,
};

/// Label of the security-code derivation (docs/E2EE.md §6).
pub const SECURITY_CODE_LABEL: &[u8] = b"sealroom security code v1";
/// Longest chat text in characters (docs/E2EE.md §7).
pub const MAX_CHAT_CHARS: usize = 4000;
/// Chat plaintext is padded with spaces to a multiple of this (docs/E2EE.md §7).
pub const CHAT_PADDING: usize = 256;

/// What a member needs to know about where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// The server's id (public origin), as in the bindings.
    pub server_id: String,
    /// The meeting this member is in.
    pub meeting_id: String,
    /// The server identity key pinned for this origin.
    pub server_key: VerifyingKey,
}

/// Where a member stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// No group yet (before create or join).
    Idle,
    /// In the group.
    Active,
    /// A merged commit removed this member: it is out, and nothing decrypts any more.
    Removed,
}

/// Why a Welcome was refused (nothing was joined).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WelcomeRejection {
    /// Not the pinned cipher suite.
    #[error("cipher suite {0:?} is not the pinned one")]
    Ciphersuite(String),
    /// The group id is not the one expected.
    #[error("group id {found:?} is not the expected {expected:?}")]
    GroupId {
        /// What the Welcome says.
        found: String,
        /// What the caller expected.
        expected: String,
    },
    /// `external_senders` is not exactly the pinned server.
    #[error("external senders: {0}")]
    ExternalSenders(String),
    /// openmls refused the Welcome (no matching KeyPackage, bad signature, bad tree, ...).
    #[error("invalid Welcome: {0}")]
    Invalid(String),
}

/// Why openmls refused a handshake or application message. The group state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeRejection {
    /// The sender's signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The membership tag does not verify.
    #[error("bad membership tag")]
    BadMembershipTag,
    /// The confirmation tag does not match the new epoch's.
    #[error("bad confirmation tag")]
    BadConfirmationTag,
    /// Not for the current epoch.
    #[error("wrong epoch")]
    WrongEpoch,
    /// A handshake message that is not a `PublicMessage`.
    #[error("handshake message is not a PublicMessage")]
    NotPublicMessage,
    /// Any other validation failure.
    #[error("{0}")]
    Invalid(String),
}

/// Chat payload errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// More than [`MAX_CHAT_CHARS`] characters.
    #[error("chat text of {0} characters exceeds {MAX_CHAT_CHARS}")]
    TooLong(usize),
    /// Not a chat object.
    #[error("application message is not a chat message: {0}")]
    Malformed(String),
}

/// Errors of [`Member`]. "Caller" variants mean the API was used out of order; "peer" variants
/// mean the bytes received were refused (and the state is unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MlsError {
    /// Caller: no identity set yet (call [`Member::key_package`] or [`Member::create_group`]).
    #[error("no identity bytes set")]
    NoIdentity,
    /// Caller: not in a group.
    #[error("not in a group")]
    NoGroup,
    /// Caller: already in a group.
    #[error("already in a group")]
    AlreadyInGroup,
    /// This member was removed; it can neither send nor decrypt.
    #[error("removed from the group")]
    Removed,
    /// Caller: a commit of ours is pending; merge or discard it first.
    #[error("a commit is already pending")]
    CommitPending,
    /// The server's binding of our own key does not verify.
    #[error("own identity does not verify: {0}")]
    OwnIdentity(CredentialError),
    /// Peer: bytes that are not an acceptable MLS message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Peer: a message for another group.
    #[error("message for another group")]
    WrongGroup,
    /// Peer: the Welcome was refused.
    #[error("welcome refused: {0}")]
    Welcome(WelcomeRejection),
    /// Peer: openmls refused the message.
    #[error("message refused: {0}")]
    Handshake(HandshakeRejection),
    /// Peer: the commit breaks docs/E2EE.md §4; it was not merged.
    #[error("commit refused: {0}")]
    CommitRule(CommitRuleViolation),
    /// Peer: a proposal that does not come from the server or is not Add/Remove.
    #[error("proposal refused: {0}")]
    ProposalRefused(String),
    /// Chat payload problem.
    #[error(transparent)]
    Chat(ChatError),
    /// Internal failure of openmls or the crypto provider.
    #[error("internal: {0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> MlsError {
    MlsError::Internal(e.to_string())
}

fn classify<E: std::fmt::Debug + std::fmt::Display>(e: ProcessMessageError<E>) -> MlsError {
    let r = match &e {
        ProcessMessageError::ValidationError(ValidationError::InvalidSignature) => {
            HandshakeRejection::BadSignature
        }
        ProcessMessageError::ValidationError(ValidationError::InvalidMembershipTag) => {
            HandshakeRejection::BadMembershipTag
        }
        ProcessMessageError::ValidationError(ValidationError::WrongEpoch)
        | ProcessMessageError::InvalidCommit(StageCommitError::EpochMismatch) => {
            HandshakeRejection::WrongEpoch
        }
        ProcessMessageError::InvalidCommit(StageCommitError::ConfirmationTagMismatch) => {
            HandshakeRejection::BadConfirmationTag
        }
        ProcessMessageError::IncompatibleWireFormat => HandshakeRejection::NotPublicMessage,
        other => HandshakeRejection::Invalid(other.to_string()),
    };
    MlsError::Handshake(r)
}

/// A commit (and, when it adds members, the Welcome) to hand to the delivery service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOut {
    /// The commit (`PublicMessage`).
    pub commit: Vec<u8>,
    /// The Welcome for the added members, if any.
    pub welcome: Option<Vec<u8>>,
    /// The GroupInfo of the new epoch (with the ratchet tree).
    pub group_info: Option<Vec<u8>>,
}

/// What a merged commit changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSummary {
    /// The new epoch.
    pub epoch: u64,
    /// Who committed.
    pub committer: u32,
    /// The leaves added, with their identities.
    pub added: Vec<RosterEntry>,
    /// The leaves removed.
    pub removed: Vec<u32>,
    /// This member was removed by it.
    pub self_removed: bool,
}

/// A server proposal that was stored (it must be in the next commit).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per relayed proposal; boxing would only cost readability"
)]
pub enum ProposalInfo {
    /// Add a member: its leaf signature key and identity.
    Add {
        /// The new member's identity as verified here.
        identity: Identity,
        /// Its leaf signature key.
        signature_key: Vec<u8>,
    },
    /// Remove a leaf.
    Remove {
        /// The leaf to remove.
        leaf: u32,
    },
}

/// The outcome of [`Member::handle_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incoming {
    /// A server proposal, stored for the next commit.
    Proposal(ProposalInfo),
    /// Another member's commit, checked and merged.
    Commit(CommitSummary),
    /// Our own commit, echoed by the delivery service and merged.
    OwnCommit(CommitSummary),
    /// A chat message.
    Chat {
        /// The sender's leaf.
        sender: u32,
        /// The text.
        text: String,
    },
    /// Our own application message echoed back; nothing to do.
    OwnApplicationMessage,
}

#[derive(Serialize, Deserialize)]
struct ChatWire {
    t: String,
    text: String,
}

/// Encodes a chat text as the padded application-message plaintext of docs/E2EE.md §7.
pub fn encode_chat(text: &str) -> Result<Vec<u8>, ChatError> {
    let chars = text.chars().count();
    if chars > MAX_CHAT_CHARS {
        return Err(ChatError::TooLong(chars));
    }
    let mut out = serde_json::to_vec(&ChatWire {
        t: "chat".to_owned(),
        text: text.to_owned(),
    })
    .map_err(|e| ChatError::Malformed(e.to_string()))?;
    let padded = out.len().div_ceil(CHAT_PADDING) * CHAT_PADDING;
    out.resize(padded, b' ');
    Ok(out)
}

/// Decodes a chat plaintext (trailing space padding is JSON whitespace).
pub fn decode_chat(plaintext: &[u8]) -> Result<String, ChatError> {
    let wire: ChatWire =
        serde_json::from_slice(plaintext).map_err(|e| ChatError::Malformed(e.to_string()))?;
    if wire.t != "chat" {
        return Err(ChatError::Malformed(format!("type {:?}", wire.t)));
    }
    let chars = wire.text.chars().count();
    if chars > MAX_CHAT_CHARS {
        return Err(ChatError::TooLong(chars));
    }
    Ok(wire.text)
}

/// The security code of an epoch (docs/E2EE.md §6):
/// `HMAC-SHA256(key = epoch_authenticator, "sealroom security code v1")`, first 8 bytes as a
/// big-endian u64, printed as 20 digits in four groups of five: `"01234 56789 01234 56789"`.
pub fn security_code(epoch_authenticator: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(epoch_authenticator) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(SECURITY_CODE_LABEL);
    let out = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    let digits = format!("{:020}", u64::from_be_bytes(first));
    let groups: Vec<&str> = (0..4).map(|i| &digits[i * 5..i * 5 + 5]).collect();
    groups.join(" ")
}

/// Whether a group id is the expected one: equal to it, or, when `expected` ends in `/` (the
/// meeting's prefix, docs/E2EE.md §3), that prefix followed by a decimal generation.
fn group_id_matches(found: &[u8], expected: &[u8]) -> bool {
    match expected.last() {
        Some(b'/') => found
            .strip_prefix(expected)
            .is_some_and(|g| !g.is_empty() && g.iter().all(u8::is_ascii_digit)),
        _ => found == expected,
    }
}

fn create_config(
    server_key: &VerifyingKey,
    server_id: &str,
) -> Result<MlsGroupCreateConfig, MlsError> {
    let extensions = Extensions::single(rules::external_senders_extension(server_key, server_id))
        .map_err(internal)?;
    Ok(MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .with_group_context_extensions(extensions)
        .build())
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .build()
}

fn serialize(msg: &MlsMessageOut) -> Result<Vec<u8>, MlsError> {
    msg.tls_serialize_detached().map_err(internal)
}

/// One member of one meeting's MLS group (the native client's side).
pub struct Member {
    provider: OpenMlsRustCrypto,
    signer: Ed25519Signer,
    config: MemberConfig,
    own: Option<CredentialWithKey>,
    group: Option<MlsGroup>,
    /// The verified roster of the current epoch (refreshed on every epoch change).
    roster: Vec<RosterEntry>,
    removed: bool,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("meeting_id", &self.config.meeting_id)
            .field("state", &self.state())
            .field("epoch", &self.epoch())
            .field("leaf", &self.own_leaf())
            .finish_non_exhaustive()
    }
}

impl Member {
    /// A member with a fresh leaf signature key (from the crypto provider's randomness).
    pub fn new(config: MemberConfig) -> Result<Self, MlsError> {
        let provider = OpenMlsRustCrypto::default();
        let seed: [u8; 32] = provider.rand().random_array().map_err(internal)?;
        let signer = Ed25519Signer::new(SigningKey::from_bytes(&seed));
        Ok(Member {
            provider,
            signer,
            config,
            own: None,
            group: None,
            roster: Vec::new(),
            removed: false,
        })
    }

    /// The leaf signature public key the server must bind (`signature_key` of the binding).
    pub fn signature_key(&self) -> [u8; 32] {
        self.signer.public_bytes()
    }

    /// The configuration.
    pub fn config(&self) -> &MemberConfig {
        &self.config
    }

    /// Sets the server identity key when it was not known at [`Member::new`] (trust on first
    /// use: the key arrives with the first binding, which needs this member's signature key).
    /// Only before the identity is set; afterwards every check already depends on the key.
    pub fn set_server_key(&mut self, server_key: VerifyingKey) -> Result<(), MlsError> {
        if self.own.is_some() || self.group.is_some() || self.removed {
            return Err(MlsError::AlreadyInGroup);
        }
        self.config.server_key = server_key;
        Ok(())
    }

    /// Where this member stands.
    pub fn state(&self) -> MemberState {
        if self.removed {
            MemberState::Removed
        } else if self.group.is_some() {
            MemberState::Active
        } else {
            MemberState::Idle
        }
    }

    fn set_identity(&mut self, identity: &[u8]) -> Result<Binding, MlsError> {
        let binding = crate::credential::verify(
            identity,
            &self.config.server_key,
            &self.config.server_id,
            &self.config.meeting_id,
            &self.signature_key(),
        )
        .map_err(MlsError::OwnIdentity)?;
        self.own = Some(CredentialWithKey {
            credential: BasicCredential::new(identity.to_vec()).into(),
            signature_key: self.signature_key().to_vec().into(),
        });
        Ok(binding)
    }

    fn own_credential(&self) -> Result<CredentialWithKey, MlsError> {
        self.own.clone().ok_or(MlsError::NoIdentity)
    }

    fn group(&self) -> Result<&MlsGroup, MlsError> {
        if self.removed {
            return Err(MlsError::Removed);
        }
        self.group.as_ref().ok_or(MlsError::NoGroup)
    }

    /// The provider and the group, borrowed apart so openmls can take both.
    fn parts(&mut self) -> Result<(&OpenMlsRustCrypto, &Ed25519Signer, &mut MlsGroup), MlsError> {
        if self.removed {
            return Err(MlsError::Removed);
        }
        let group = self.group.as_mut().ok_or(MlsError::NoGroup)?;
        Ok((&self.provider, &self.signer, group))
    }

    /// Builds a KeyPackage whose `BasicCredential` carries `identity` (the server's binding of
    /// [`Member::signature_key`]). Returns the `MlsMessage` bytes to upload. The binding is
    /// checked first: a server that binds the wrong key or meeting is caught here.
    pub fn key_package(&mut self, identity: &[u8]) -> Result<Vec<u8>, MlsError> {
        if self.group.is_some() || self.removed {
            return Err(MlsError::AlreadyInGroup);
        }
        self.set_identity(identity)?;
        let bundle = KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.own_credential()?,
            )
            .map_err(internal)?;
        serialize(&MlsMessageOut::from(bundle.key_package().clone()))
    }

    /// Creates the group (first member) with id `group_id` (see [`group_id`]) and the server as
    /// its only external sender. Returns the GroupInfo (with the ratchet tree) for the delivery
    /// service.
    pub fn create_group(&mut self, identity: &[u8], group_id: &[u8]) -> Result<Vec<u8>, MlsError> {
        if self.group.is_some() || self.removed {
            return Err(MlsError::AlreadyInGroup);
        }
        self.set_identity(identity)?;
        let config = create_config(&self.config.server_key, &self.config.server_id)?;
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &config,
            GroupId::from_slice(group_id),
            self.own_credential()?,
        )
        .map_err(internal)?;
        let info = group
            .export_group_info(self.provider.crypto(), &self.signer, true)
            .map_err(internal)?;
        self.group = Some(group);
        self.refresh_roster();
        serialize(&info)
    }

    /// Joins from a Welcome after the checks of docs/E2EE.md §1-§3: the pinned cipher suite,
    /// `expected_group_id`, `external_senders` equal to the pinned server key and credential.
    /// `expected_group_id` may also be the meeting's group id prefix ending in `/` (a joiner
    /// does not know the generation the delivery service picked): then the group id must be
    /// that prefix followed by a decimal generation.
    /// Every leaf's credential is verified; the returned roster marks unverified members rather
    /// than refusing the group (the caller decides; at `restricted` it must leave).
    pub fn join(
        &mut self,
        welcome: &[u8],
        expected_group_id: &[u8],
    ) -> Result<Vec<RosterEntry>, MlsError> {
        if self.group.is_some() || self.removed {
            return Err(MlsError::AlreadyInGroup);
        }
        self.own_credential()?;
        let MlsMessageBodyIn::Welcome(welcome) =
            rules::parse_body(welcome).map_err(MlsError::Malformed)?
        else {
            return Err(MlsError::Malformed("not a Welcome".to_owned()));
        };
        if welcome.ciphersuite() != CIPHERSUITE {
            return Err(MlsError::Welcome(WelcomeRejection::Ciphersuite(format!(
                "{:?}",
                welcome.ciphersuite()
            ))));
        }
        let reject = |r| MlsError::Welcome(r);
        let processed = ProcessedWelcome::new_from_welcome(&self.provider, &join_config(), welcome)
            .map_err(|e| reject(WelcomeRejection::Invalid(e.to_string())))?;
        self.check_group_context(
            processed.unverified_group_info().group_context(),
            expected_group_id,
        )?;
        let staged = processed
            .into_staged_welcome(&self.provider, None)
            .map_err(|e| reject(WelcomeRejection::Invalid(e.to_string())))?;
        // Again on the verified context (the GroupInfo signature is checked by now).
        self.check_group_context(staged.group_context(), expected_group_id)?;
        let group = staged
            .into_group(&self.provider)
            .map_err(|e| reject(WelcomeRejection::Invalid(e.to_string())))?;
        self.group = Some(group);
        self.refresh_roster();
        self.roster()
    }

    fn check_group_context(
        &self,
        context: &openmls::prelude::GroupContext,
        expected_group_id: &[u8],
    ) -> Result<(), MlsError> {
        let reject = |r| MlsError::Welcome(r);
        if context.ciphersuite() != CIPHERSUITE {
            return Err(reject(WelcomeRejection::Ciphersuite(format!(
                "{:?}",
                context.ciphersuite()
            ))));
        }
        if !group_id_matches(context.group_id().as_slice(), expected_group_id) {
            return Err(reject(WelcomeRejection::GroupId {
                found: String::from_utf8_lossy(context.group_id().as_slice()).into_owned(),
                expected: String::from_utf8_lossy(expected_group_id).into_owned(),
            }));
        }
        rules::check_external_senders(
            context.extensions(),
            &self.config.server_key,
            &self.config.server_id,
        )
        .map_err(|e| reject(WelcomeRejection::ExternalSenders(e)))
    }

    fn verify_credential(&self, credential: &Credential, signature_key: &[u8]) -> Identity {
        match verify_leaf(
            credential,
            signature_key,
            &self.config.server_key,
            &self.config.server_id,
            &self.config.meeting_id,
        ) {
            Ok(b) => Identity::Verified(b),
            Err(e) => Identity::Unverified(e),
        }
    }

    /// Every leaf of the current epoch with its verified binding or why it does not verify.
    pub fn roster(&self) -> Result<Vec<RosterEntry>, MlsError> {
        self.group()?;
        Ok(self.roster.clone())
    }

    /// Recomputes the roster after an epoch change (only new or changed leaves are verified).
    fn refresh_roster(&mut self) {
        let Some(group) = self.group.as_ref() else {
            return;
        };
        let roster = rules::roster(&self.roster, group.members(), |c, k| {
            self.verify_binding(c, k)
        });
        self.roster = roster;
    }

    /// The current epoch (`None` before create/join).
    pub fn epoch(&self) -> Option<u64> {
        self.group.as_ref().map(|g| g.epoch().as_u64())
    }

    /// Our leaf index (`None` before create/join).
    pub fn own_leaf(&self) -> Option<u32> {
        self.group.as_ref().map(|g| g.own_leaf_index().u32())
    }

    /// The group id.
    pub fn group_id(&self) -> Option<Vec<u8>> {
        self.group.as_ref().map(|g| g.group_id().to_vec())
    }

    /// The current epoch authenticator (RFC 9420 §8.7).
    pub fn epoch_authenticator(&self) -> Result<Vec<u8>, MlsError> {
        Ok(self.group()?.epoch_authenticator().as_slice().to_vec())
    }

    /// The security code of the current epoch (see [`security_code`]).
    pub fn security_code(&self) -> Result<String, MlsError> {
        Ok(security_code(&self.epoch_authenticator()?))
    }

    /// `MLS-Exporter(label, context, len)` of the current epoch (RFC 9420 §8.5).
    pub fn export_secret(
        &self,
        label: &str,
        context: &[u8],
        len: usize,
    ) -> Result<Vec<u8>, MlsError> {
        let group = self.group()?;
        group
            .export_secret(self.provider.crypto(), label, context, len)
            .map_err(internal)
    }

    /// The SFrame key of the current epoch (docs/E2EE.md §5, RFC 9605 §5.2):
    /// `MLS-Exporter("SFrame 1.0 Base Key", "", 16)`, with the current members' leaves.
    pub fn sframe_key(&self) -> Result<EpochKey, MlsError> {
        let group = self.group()?;
        let base = self.export_secret(EXPORTER_LABEL, &[], BASE_KEY_LEN)?;
        EpochKey::new(
            group.epoch().as_u64(),
            &base,
            group.members().map(|m| m.index.u32()),
        )
        .map_err(internal)
    }

    /// Whether this member should commit the pending proposals at once (docs/E2EE.md §4): it is
    /// the member with the lowest leaf index that is not being removed. Others wait 1.5-3 s.
    pub fn is_designated_committer(&self) -> bool {
        let Ok(group) = self.group() else {
            return false;
        };
        let removed: HashSet<u32> = group
            .pending_proposals()
            .filter_map(|p| match p.proposal() {
                Proposal::Remove(r) => Some(r.removed().u32()),
                _ => None,
            })
            .collect();
        group
            .members()
            .map(|m| m.index.u32())
            .find(|l| !removed.contains(l))
            == Some(group.own_leaf_index().u32())
    }

    /// Whether server proposals are waiting for a commit.
    pub fn has_pending_proposals(&self) -> bool {
        self.group().is_ok_and(|g| g.has_pending_proposals())
    }

    /// Whether a commit of ours awaits the delivery service's echo.
    pub fn has_pending_commit(&self) -> bool {
        self.group().is_ok_and(|g| g.pending_commit().is_some())
    }

    /// Commits all pending server proposals. The commit stays pending until the delivery
    /// service echoes it ([`Member::handle_message`] or [`Member::merge_pending_commit`]) or
    /// refuses it ([`Member::discard_pending_commit`]).
    pub fn commit_pending(&mut self) -> Result<CommitOut, MlsError> {
        self.commit(false)
    }

    /// A commit with a fresh path (the periodic key update); it also covers any pending
    /// proposals.
    pub fn self_update(&mut self) -> Result<CommitOut, MlsError> {
        self.commit(true)
    }

    fn commit(&mut self, update: bool) -> Result<CommitOut, MlsError> {
        if self.has_pending_commit() {
            return Err(MlsError::CommitPending);
        }
        let (provider, signer, group) = self.parts()?;
        let (commit, welcome, group_info) = if update {
            let bundle = group
                .self_update(provider, signer, LeafNodeParameters::default())
                .map_err(internal)?;
            let (c, w, g) = bundle.into_messages();
            (c, w, g)
        } else {
            let (c, w, g) = group
                .commit_to_pending_proposals(provider, signer)
                .map_err(internal)?;
            (c, w, g.map(MlsMessageOut::from))
        };
        // Never send a commit we would refuse from someone else (e.g. a duplicate device that
        // a misbehaving server proposed).
        if let Err(v) = self.check_own_pending_commit() {
            let (provider, _, group) = self.parts()?;
            group
                .clear_pending_commit(provider.storage())
                .map_err(internal)?;
            return Err(MlsError::CommitRule(v));
        }
        Ok(CommitOut {
            commit: serialize(&commit)?,
            welcome: welcome.as_ref().map(serialize).transpose()?,
            group_info: group_info.as_ref().map(serialize).transpose()?,
        })
    }

    fn check_own_pending_commit(&self) -> Result<(), CommitRuleViolation> {
        let Ok(group) = self.group() else {
            return Ok(());
        };
        let Some(staged) = group.pending_commit() else {
            return Ok(());
        };
        let pending = self.pending_refs();
        let members = self.roster().unwrap_or_default();
        check_commit(
            &Sender::Member(group.own_leaf_index()),
            staged,
            &pending,
            &members,
            |c, k| self.verify_binding(c, k),
        )
    }

    fn pending_refs(&self) -> HashSet<Vec<u8>> {
        self.group
            .as_ref()
            .map(|g| {
                g.pending_proposals()
                    .map(|p| p.proposal_reference_ref().as_slice().to_vec())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn verify_binding(
        &self,
        credential: &Credential,
        key: &[u8],
    ) -> Result<Binding, CredentialError> {
        verify_leaf(
            credential,
            key,
            &self.config.server_key,
            &self.config.server_id,
            &self.config.meeting_id,
        )
    }

    /// Merges our pending commit (the delivery service accepted it). No-op without one.
    pub fn merge_pending_commit(&mut self) -> Result<Option<CommitSummary>, MlsError> {
        let Some(staged) = self.group()?.pending_commit() else {
            return Ok(None);
        };
        let committer = self.own_leaf().unwrap_or_default();
        let (removed, added_keys, self_removed) = Self::staged_changes(staged);
        let (provider, _, group) = self.parts()?;
        group.merge_pending_commit(provider).map_err(internal)?;
        Ok(Some(self.summary(
            committer,
            removed,
            added_keys,
            self_removed,
        )?))
    }

    /// Drops our pending commit (the delivery service refused it, e.g. another commit won).
    pub fn discard_pending_commit(&mut self) -> Result<(), MlsError> {
        let provider = &self.provider;
        let group = match self.group.as_mut() {
            Some(g) => g,
            None => return Err(MlsError::NoGroup),
        };
        group
            .clear_pending_commit(provider.storage())
            .map_err(internal)
    }

    fn staged_changes(staged: &StagedCommit) -> (Vec<u32>, Vec<Vec<u8>>, bool) {
        let removed = staged
            .remove_proposals()
            .map(|r| r.remove_proposal().removed().u32())
            .collect();
        let added = staged
            .add_proposals()
            .map(|a| {
                a.add_proposal()
                    .key_package()
                    .leaf_node()
                    .signature_key()
                    .as_slice()
                    .to_vec()
            })
            .collect();
        (removed, added, staged.self_removed())
    }

    fn summary(
        &mut self,
        committer: u32,
        removed: Vec<u32>,
        added_keys: Vec<Vec<u8>>,
        self_removed: bool,
    ) -> Result<CommitSummary, MlsError> {
        let epoch = self.epoch().unwrap_or_default();
        self.refresh_roster();
        if self_removed {
            self.removed = true;
            return Ok(CommitSummary {
                epoch,
                committer,
                added: Vec::new(),
                removed,
                self_removed,
            });
        }
        let roster = self.roster()?;
        let added = roster
            .into_iter()
            .filter(|e| added_keys.contains(&e.signature_key))
            .collect();
        Ok(CommitSummary {
            epoch,
            committer,
            added,
            removed,
            self_removed,
        })
    }

    /// Processes one message relayed by the delivery service: a server proposal (stored), a
    /// commit (checked against docs/E2EE.md §4, then merged; refused ones leave the state
    /// unchanged), our own echoed commit (merged), or chat.
    pub fn handle_message(&mut self, bytes: &[u8]) -> Result<Incoming, MlsError> {
        let group_id = self.group()?.group_id().clone();
        let msg = rules::parse_message(bytes).map_err(MlsError::Malformed)?;
        let protocol: ProtocolMessage = msg
            .try_into_protocol_message()
            .map_err(|_| MlsError::Malformed("not a PublicMessage or PrivateMessage".to_owned()))?;
        if protocol.group_id() != &group_id {
            return Err(MlsError::WrongGroup);
        }
        let processed = {
            let (provider, _, group) = self.parts()?;
            group
                .process_message(provider, protocol)
                .map_err(classify)?
        };
        let sender = processed.sender().clone();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let Sender::Member(leaf) = sender else {
                    return Err(MlsError::Malformed(
                        "application message not from a member".into(),
                    ));
                };
                let text = decode_chat(&app.into_bytes()).map_err(MlsError::Chat)?;
                Ok(Incoming::Chat {
                    sender: leaf.u32(),
                    text,
                })
            }
            ProcessedMessageContent::ProposalMessage(qp) => {
                if sender != Sender::External(SenderExtensionIndex::new(0)) {
                    return Err(MlsError::ProposalRefused(
                        "only the server proposes (external sender 0)".to_owned(),
                    ));
                }
                let info = match qp.proposal() {
                    Proposal::Add(add) => {
                        let leaf = add.key_package().leaf_node();
                        ProposalInfo::Add {
                            identity: self.verify_credential(
                                leaf.credential(),
                                leaf.signature_key().as_slice(),
                            ),
                            signature_key: leaf.signature_key().as_slice().to_vec(),
                        }
                    }
                    Proposal::Remove(r) => ProposalInfo::Remove {
                        leaf: r.removed().u32(),
                    },
                    other => {
                        return Err(MlsError::ProposalRefused(format!(
                            "proposal type {:#06x} is not Add or Remove",
                            u16::from(other.proposal_type())
                        )))
                    }
                };
                let (provider, _, group) = self.parts()?;
                group
                    .store_pending_proposal(provider.storage(), *qp)
                    .map_err(internal)?;
                Ok(Incoming::Proposal(info))
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => Err(
                MlsError::ProposalRefused("join proposals are not accepted".to_owned()),
            ),
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let pending = self.pending_refs();
                let members = self.roster()?;
                check_commit(&sender, &staged, &pending, &members, |c, k| {
                    self.verify_binding(c, k)
                })
                .map_err(MlsError::CommitRule)?;
                let Sender::Member(committer) = sender else {
                    return Err(MlsError::CommitRule(CommitRuleViolation::NotFromMember));
                };
                let (removed, added_keys, self_removed) = Self::staged_changes(&staged);
                {
                    let (provider, _, group) = self.parts()?;
                    group
                        .merge_staged_commit(provider, *staged)
                        .map_err(internal)?;
                }
                let summary = self.summary(committer.u32(), removed, added_keys, self_removed)?;
                Ok(Incoming::Commit(summary))
            }
            ProcessedMessageContent::OwnPendingCommit => {
                let summary = self
                    .merge_pending_commit()?
                    .ok_or_else(|| internal("own commit echoed without a pending commit"))?;
                Ok(Incoming::OwnCommit(summary))
            }
            ProcessedMessageContent::OwnPrivateMessage => Ok(Incoming::OwnApplicationMessage),
            #[allow(unreachable_patterns)]
            _ => Err(MlsError::Malformed(
                "unsupported message content".to_owned(),
            )),
        }
    }

    /// Encrypts a chat message (`PrivateMessage`, padded per docs/E2EE.md §7).
    pub fn send_chat(&mut self, text: &str) -> Result<Vec<u8>, MlsError> {
        let plaintext = encode_chat(text).map_err(MlsError::Chat)?;
        let (provider, signer, group) = self.parts()?;
        let msg = group
            .create_message(provider, signer, &plaintext)
            .map_err(internal)?;
        serialize(&msg)
    }
}

#[cfg(test)]
mod tests {
    //! Refusals that need a member's internals to provoke: a commit from a real member whose
    //! signature, membership tag or confirmation tag is wrong. Each leaves the receiver's epoch,
    //! exporter and epoch authenticator exactly as they were, and the group keeps working.
    use super::*;
    use crate::credential::issue;
    use crate::ds::{DeliveryGroup, ExpectedMember};
    use openmls::prelude::{PreSharedKeyProposal, Proposal};
    use openmls::schedule::PreSharedKeyId;

    const SERVER: &str = "https://unit.test";
    const MEETING: &str = "m-unit";

    fn server_key() -> SigningKey {
        SigningKey::from_bytes(&[0x24; 32])
    }

    fn config() -> MemberConfig {
        MemberConfig {
            server_id: SERVER.into(),
            meeting_id: MEETING.into(),
            server_key: server_key().verifying_key(),
        }
    }

    fn identity(name: &str, key: &[u8]) -> Vec<u8> {
        let b = Binding {
            v: 1,
            server_id: SERVER.into(),
            meeting_id: MEETING.into(),
            user_id: format!("u-{name}"),
            username: name.into(),
            display_name: name.into(),
            device_id: format!("d-{name}"),
            device_name: "dev".into(),
            device_kind: "software".into(),
            signature_key: Binding::encode_signature_key(key),
            issued_at: 0,
        };
        issue(&server_key(), &b).expect("issue")
    }

    /// ada creates, bob joins through the DS; returns (ds, ada, bob).
    fn pair() -> (DeliveryGroup, Member, Member) {
        let gid = group_id(SERVER, MEETING, "open", 1);
        let mut ada = Member::new(config()).expect("ada");
        let info = ada
            .create_group(&identity("ada", &ada.signature_key()), &gid)
            .expect("create");
        let mut ds = DeliveryGroup::from_group_info(&info, &gid, &server_key(), SERVER, MEETING)
            .expect("ds");
        let mut bob = Member::new(config()).expect("bob");
        let kp = bob
            .key_package(&identity("bob", &bob.signature_key()))
            .expect("kp");
        let vkp = ds
            .validate_key_package(
                &kp,
                ExpectedMember {
                    user_id: "u-bob",
                    device_id: "d-bob",
                },
            )
            .expect("valid");
        let p = ds.propose_add(vkp).expect("propose");
        ada.handle_message(&p).expect("proposal");
        let out = ada.commit_pending().expect("commit");
        ds.accept_commit(&out.commit, out.welcome.as_deref())
            .expect("accept");
        assert!(matches!(
            ada.handle_message(&out.commit),
            Ok(Incoming::OwnCommit(_))
        ));
        bob.join(out.welcome.as_deref().expect("welcome"), &gid)
            .expect("join");
        (ds, ada, bob)
    }

    type Snapshot = (Option<u64>, EpochKey, Vec<u8>);

    fn snapshot(m: &Member) -> Snapshot {
        (
            m.epoch(),
            m.sframe_key().expect("key"),
            m.epoch_authenticator().expect("auth"),
        )
    }

    /// After a refusal the honest path still works: bob's genuine update merges on both sides.
    fn still_works(ds: &mut DeliveryGroup, ada: &mut Member, bob: &mut Member) {
        let out = bob.self_update().expect("update");
        ds.accept_commit(&out.commit, None).expect("accept");
        assert!(matches!(
            ada.handle_message(&out.commit),
            Ok(Incoming::Commit(_))
        ));
        assert!(matches!(
            bob.handle_message(&out.commit),
            Ok(Incoming::OwnCommit(_))
        ));
        assert_eq!(ada.sframe_key().expect("k"), bob.sframe_key().expect("k"));
        assert_eq!(ada.epoch(), Some(ds.epoch()));
    }

    #[test]
    fn commit_with_bad_signature_is_refused_without_state_change() {
        let (mut ds, mut ada, mut bob) = pair();
        let before = snapshot(&ada);
        // bob signs with a key that is not his leaf's (membership tag still valid).
        let real = std::mem::replace(
            &mut bob.signer,
            Ed25519Signer::new(SigningKey::from_bytes(&[0x99; 32])),
        );
        let out = bob.self_update().expect("update");
        assert_eq!(
            ada.handle_message(&out.commit),
            Err(MlsError::Handshake(HandshakeRejection::BadSignature))
        );
        assert_eq!(snapshot(&ada), before);
        assert_eq!(
            ds.accept_commit(&out.commit, None).map(|_| ()),
            Err(crate::ds::CommitRejected::BadSignature)
        );
        bob.signer = real;
        bob.discard_pending_commit().expect("discard");
        still_works(&mut ds, &mut ada, &mut bob);
    }

    #[test]
    fn commit_with_bad_membership_tag_is_refused_without_state_change() {
        let (mut ds, mut ada, mut bob) = pair();
        let before = snapshot(&ada);
        let out = bob.self_update().expect("update");
        let mut tampered = out.commit.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        assert_eq!(
            ada.handle_message(&tampered),
            Err(MlsError::Handshake(HandshakeRejection::BadMembershipTag))
        );
        assert_eq!(snapshot(&ada), before);
        bob.discard_pending_commit().expect("discard");
        still_works(&mut ds, &mut ada, &mut bob);
    }

    #[test]
    fn commit_with_bad_confirmation_tag_is_refused_without_state_change() {
        let (mut ds, mut ada, mut bob) = pair();
        // bob's commit mixes a PSK into the key schedule that ada holds with another value:
        // signature and membership tag are valid, the confirmation tag is not (for ada).
        let psk = PreSharedKeyId::external(b"psk".to_vec(), vec![7u8; 32]);
        psk.store(&bob.provider, b"bob's value").expect("store");
        psk.store(&ada.provider, b"ada's value").expect("store");
        let before = snapshot(&ada);
        let commit = {
            let (provider, signer, group) = bob.parts().expect("parts");
            let bundle = group
                .commit_builder()
                .add_proposal(Proposal::PreSharedKey(Box::new(PreSharedKeyProposal::new(
                    psk,
                ))))
                .load_psks(provider.storage())
                .expect("psks")
                .build(provider.rand(), provider.crypto(), signer, |_| true)
                .expect("build")
                .stage_commit(provider)
                .expect("stage");
            serialize(bundle.commit()).expect("serialize")
        };
        assert_eq!(
            ada.handle_message(&commit),
            Err(MlsError::Handshake(HandshakeRejection::BadConfirmationTag))
        );
        assert_eq!(snapshot(&ada), before);
        // The DS cannot see confirmation tags; it refuses this one for the PSK proposal.
        assert!(matches!(
            ds.accept_commit(&commit, None),
            Err(crate::ds::CommitRejected::Rule(
                CommitRuleViolation::ProposalByValue
            ))
        ));
        bob.discard_pending_commit().expect("discard");
        still_works(&mut ds, &mut ada, &mut bob);
    }

    #[test]
    fn security_code_layout() {
        let code = security_code(b"any authenticator");
        assert_eq!(code.len(), 23);
        assert_eq!(code.split(' ').count(), 4);
        assert_ne!(code, security_code(b"another authenticator"));
    }

    #[test]
    fn group_id_prefix_matches_only_a_decimal_generation() {
        let prefix = b"sealroom/v1/https://a.test/m1/open/";
        assert!(group_id_matches(
            b"sealroom/v1/https://a.test/m1/open/12",
            prefix
        ));
        assert!(!group_id_matches(
            b"sealroom/v1/https://a.test/m1/open/",
            prefix
        ));
        assert!(!group_id_matches(
            b"sealroom/v1/https://a.test/m1/open/1/x",
            prefix
        ));
        assert!(!group_id_matches(
            b"sealroom/v1/https://a.test/m2/open/1",
            prefix
        ));
        assert!(group_id_matches(b"exact/1", b"exact/1"));
        assert!(!group_id_matches(b"exact/12", b"exact/1"));
    }
}
