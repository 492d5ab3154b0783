//! The delivery-service side of MLS ([`DeliveryGroup`]): the server's public view of one
//! meeting's group, built on openmls's `PublicGroup`.
//!
//! The delivery service cannot decrypt anything. It tracks the ratchet tree and group context
//! from the creator's GroupInfo onwards, validates KeyPackages against the socket's (user,
//! device) and the meeting, proposes Add and Remove as the group's only external sender (index
//! 0, signed with the server identity key), and accepts exactly one commit per epoch: the first
//! one that passes openmls's public checks (signature, proposal validity) and the rules of
//! docs/E2EE.md §4. Its [`DeliveryGroup::members`] are what the server compares with the SFU's
//! forwarding set.
//!
//! The delivery service cannot check membership or confirmation tags (they need the epoch
//! secrets); every client checks those before merging.

use std::collections::HashSet;

use ed25519_dalek::{SigningKey, VerifyingKey};
use openmls::prelude::{
    ContentType, ExternalProposal, GroupEpoch, KeyPackage, LeafNodeIndex, MlsMessageBodyIn,
    MlsMessageOut, ProcessedMessageContent, ProposalStore, ProtocolMessage, ProtocolVersion,
    PublicGroup, PublicProcessMessageError, SenderExtensionIndex, ValidationError,
};
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use tls_codec::Serialize as _;

use crate::credential::{Binding, CredentialError};
use crate::rules::{self, check_commit, verify_leaf, Identity, RosterEntry, CIPHERSUITE};
use crate::Ed25519Signer;

pub use crate::rules::CommitRuleViolation;

/// Errors of [`DeliveryGroup`] operations other than [`DeliveryGroup::accept_commit`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DsError {
    /// Peer: bytes that are not the expected MLS message.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Peer: not the pinned cipher suite.
    #[error("cipher suite is not the pinned one")]
    Ciphersuite,
    /// Peer: the GroupInfo is for another group id.
    #[error("group id {found:?} is not the expected {expected:?}")]
    WrongGroup {
        /// What the message says.
        found: String,
        /// What was expected.
        expected: String,
    },
    /// Peer: the group's `external_senders` is not exactly this server.
    #[error("external senders: {0}")]
    ExternalSenders(String),
    /// Peer: openmls refused the GroupInfo, tree or KeyPackage.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Peer: a credential does not verify.
    #[error("credential of leaf {leaf:?}: {error}")]
    Credential {
        /// The leaf (None for a KeyPackage).
        leaf: Option<u32>,
        /// Why.
        error: CredentialError,
    },
    /// Peer: the KeyPackage is bound to another (user, device) than the socket's.
    #[error("KeyPackage is bound to user {user_id:?} device {device_id:?}, not the socket's")]
    WrongMember {
        /// The bound user.
        user_id: String,
        /// The bound device.
        device_id: String,
    },
    /// Caller or peer: (user, device) is already in the group or pending.
    #[error("user {user_id:?} device {device_id:?} is already a member or pending")]
    Duplicate {
        /// The user.
        user_id: String,
        /// The device.
        device_id: String,
    },
    /// Caller: the leaf is not a member.
    #[error("leaf {0} is not a member")]
    NoSuchLeaf(u32),
    /// Caller: a Remove for the leaf is already pending.
    #[error("a Remove for leaf {0} is already pending")]
    RemovePending(u32),
    /// Internal failure of openmls or the crypto provider.
    #[error("internal: {0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> DsError {
    DsError::Internal(e.to_string())
}

/// Why a commit was refused. The group state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitRejected {
    /// Not an MLS message.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A `PrivateMessage` or other non-`PublicMessage`.
    #[error("a commit must be a PublicMessage")]
    NotPublicMessage,
    /// A `PublicMessage` that is not a commit.
    #[error("not a commit")]
    NotACommit,
    /// For another group.
    #[error("commit for another group")]
    WrongGroup,
    /// Not for the current epoch (a commit for this epoch was already accepted, or it is from
    /// the future).
    #[error("commit for epoch {got}, current epoch is {current}")]
    WrongEpoch {
        /// The commit's epoch.
        got: u64,
        /// The group's epoch.
        current: u64,
    },
    /// The committer's signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// openmls refused the commit (invalid proposals, missing proposals, bad path, ...).
    #[error("invalid commit: {0}")]
    Invalid(String),
    /// The commit breaks docs/E2EE.md §4.
    #[error(transparent)]
    Rule(CommitRuleViolation),
    /// The commit adds members but no Welcome came with it.
    #[error("commit adds members but carries no Welcome")]
    WelcomeMissing,
    /// A Welcome came with a commit that adds nobody.
    #[error("Welcome with a commit that adds nobody")]
    UnexpectedWelcome,
    /// The Welcome is not for exactly the added KeyPackages.
    #[error("Welcome is not for exactly the added members: {0}")]
    WelcomeMismatch(String),
}

/// Why an application message is not relayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppMessageRejected {
    /// Not an MLS message.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Not a `PrivateMessage` application message.
    #[error("not a PrivateMessage application message")]
    NotApplication,
    /// For another group.
    #[error("application message for another group")]
    WrongGroup,
    /// Not for the current epoch.
    #[error("application message for epoch {got}, current epoch is {current}")]
    StaleEpoch {
        /// The message's epoch.
        got: u64,
        /// The group's epoch.
        current: u64,
    },
}

/// The (user, device) a socket is admitted as; a KeyPackage must be bound to exactly this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedMember<'a> {
    /// The socket's user.
    pub user_id: &'a str,
    /// The socket's device.
    pub device_id: &'a str,
}

/// A KeyPackage that passed [`DeliveryGroup::validate_key_package`].
#[derive(Debug, Clone)]
pub struct ValidatedKeyPackage {
    key_package: KeyPackage,
    binding: Binding,
    key_package_ref: Vec<u8>,
}

impl ValidatedKeyPackage {
    /// The verified binding.
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// The KeyPackage reference (RFC 9420 §5.2): the Welcome for this member names it.
    pub fn key_package_ref(&self) -> &[u8] {
        &self.key_package_ref
    }
}

/// What a pending server proposal does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a handful exist per epoch; boxing would only cost readability"
)]
pub enum PendingKind {
    /// Add the member bound by `binding`.
    Add {
        /// The new member's binding.
        binding: Binding,
        /// Its KeyPackage reference.
        key_package_ref: Vec<u8>,
    },
    /// Remove a leaf.
    Remove {
        /// The leaf.
        leaf: u32,
    },
}

/// A proposal the server sent in the current epoch, which the next commit must cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingProposal {
    /// The proposal reference (RFC 9420 §5.2).
    pub reference: Vec<u8>,
    /// What it does.
    pub kind: PendingKind,
    /// The proposal message as sent (to relay it to every member).
    pub message: Vec<u8>,
}

/// A member added by an accepted commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedMember {
    /// Its leaf index.
    pub leaf: u32,
    /// Its binding.
    pub binding: Binding,
    /// The KeyPackage reference the Welcome names (route the Welcome to this member's socket).
    pub key_package_ref: Vec<u8>,
}

/// A member removed by an accepted commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedMember {
    /// Its former leaf index.
    pub leaf: u32,
    /// Its identity.
    pub identity: Identity,
}

/// An accepted commit: fan it out, in order, to the members of the old epoch, and the Welcome
/// to the [`AcceptedCommit::added`] members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedCommit {
    /// The new epoch.
    pub epoch: u64,
    /// The committer's leaf.
    pub committer: u32,
    /// Members added (each is a Welcome recipient).
    pub added: Vec<AddedMember>,
    /// Members removed.
    pub removed: Vec<RemovedMember>,
}

/// The delivery service's state of one MLS group.
pub struct DeliveryGroup {
    provider: OpenMlsRustCrypto,
    group: PublicGroup,
    signer: Ed25519Signer,
    server_key: VerifyingKey,
    server_id: String,
    meeting_id: String,
    pending: Vec<PendingProposal>,
    /// The roster of the current epoch (refreshed on every merge).
    roster: Vec<RosterEntry>,
}

impl std::fmt::Debug for DeliveryGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryGroup")
            .field("meeting_id", &self.meeting_id)
            .field("epoch", &self.epoch())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl DeliveryGroup {
    /// Starts tracking a group from its creator's GroupInfo (which must carry the ratchet
    /// tree). Checks the cipher suite, `expected_group_id`, that `external_senders` is exactly
    /// this server, the GroupInfo signature and tree, and that every leaf's credential verifies
    /// and no (user, device) appears twice.
    pub fn from_group_info(
        group_info: &[u8],
        expected_group_id: &[u8],
        server_identity_key: &SigningKey,
        server_id: &str,
        meeting_id: &str,
    ) -> Result<Self, DsError> {
        let MlsMessageBodyIn::GroupInfo(info) =
            rules::parse_body(group_info).map_err(DsError::Malformed)?
        else {
            return Err(DsError::Malformed("not a GroupInfo".to_owned()));
        };
        if info.ciphersuite() != CIPHERSUITE {
            return Err(DsError::Ciphersuite);
        }
        if info.group_id().as_slice() != expected_group_id {
            return Err(DsError::WrongGroup {
                found: String::from_utf8_lossy(info.group_id().as_slice()).into_owned(),
                expected: String::from_utf8_lossy(expected_group_id).into_owned(),
            });
        }
        let tree = info
            .extensions()
            .ratchet_tree()
            .map(|t| t.ratchet_tree().clone())
            .ok_or_else(|| DsError::Invalid("GroupInfo carries no ratchet tree".to_owned()))?;
        let provider = OpenMlsRustCrypto::default();
        let (group, _) = PublicGroup::from_external(
            provider.crypto(),
            provider.storage(),
            tree,
            info,
            ProposalStore::new(),
        )
        .map_err(|e| DsError::Invalid(e.to_string()))?;
        let server_key = server_identity_key.verifying_key();
        rules::check_external_senders(group.group_context().extensions(), &server_key, server_id)
            .map_err(DsError::ExternalSenders)?;
        let mut dg = DeliveryGroup {
            provider,
            group,
            signer: Ed25519Signer::new(server_identity_key.clone()),
            server_key,
            server_id: server_id.to_owned(),
            meeting_id: meeting_id.to_owned(),
            pending: Vec::new(),
            roster: Vec::new(),
        };
        dg.refresh_roster();
        let mut seen = HashSet::new();
        for m in dg.roster.clone() {
            match m.identity {
                Identity::Verified(b) => {
                    if !seen.insert((b.user_id.clone(), b.device_id.clone())) {
                        return Err(DsError::Duplicate {
                            user_id: b.user_id,
                            device_id: b.device_id,
                        });
                    }
                }
                Identity::Unverified(error) => {
                    return Err(DsError::Credential {
                        leaf: Some(m.leaf),
                        error,
                    })
                }
            }
        }
        Ok(dg)
    }

    /// The group id.
    pub fn group_id(&self) -> &[u8] {
        self.group.group_id().as_slice()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.group_context().epoch().as_u64()
    }

    fn verify(
        &self,
        credential: &openmls::prelude::Credential,
        key: &[u8],
    ) -> Result<Binding, CredentialError> {
        verify_leaf(
            credential,
            key,
            &self.server_key,
            &self.server_id,
            &self.meeting_id,
        )
    }

    /// Every leaf with its identity. All of them verify unless a client broke the rules in a
    /// way only clients can see; compare this with the SFU's forwarding set.
    pub fn members(&self) -> Vec<RosterEntry> {
        self.roster.clone()
    }

    fn refresh_roster(&mut self) {
        let roster = rules::roster(&self.roster, self.group.members(), |c, k| self.verify(c, k));
        self.roster = roster;
    }

    /// The leaf of (user, device), if it is a member.
    pub fn leaf_of(&self, user_id: &str, device_id: &str) -> Option<u32> {
        self.roster.iter().find_map(|m| match &m.identity {
            Identity::Verified(b) if b.user_id == user_id && b.device_id == device_id => {
                Some(m.leaf)
            }
            _ => None,
        })
    }

    /// The proposals sent in this epoch that the next commit must cover.
    pub fn pending_proposals(&self) -> &[PendingProposal] {
        &self.pending
    }

    /// Validates an uploaded KeyPackage: openmls validation (signatures, lifetime, keys), the
    /// pinned cipher suite, a credential binding that verifies for this server, meeting and leaf
    /// key, and that it is bound to the socket's (user, device).
    pub fn validate_key_package(
        &self,
        key_package: &[u8],
        expected: ExpectedMember<'_>,
    ) -> Result<ValidatedKeyPackage, DsError> {
        let MlsMessageBodyIn::KeyPackage(kp) =
            rules::parse_body(key_package).map_err(DsError::Malformed)?
        else {
            return Err(DsError::Malformed("not a KeyPackage".to_owned()));
        };
        let kp = kp
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(|e| DsError::Invalid(e.to_string()))?;
        if kp.ciphersuite() != CIPHERSUITE {
            return Err(DsError::Ciphersuite);
        }
        let leaf = kp.leaf_node();
        let binding = self
            .verify(leaf.credential(), leaf.signature_key().as_slice())
            .map_err(|error| DsError::Credential { leaf: None, error })?;
        if binding.user_id != expected.user_id || binding.device_id != expected.device_id {
            return Err(DsError::WrongMember {
                user_id: binding.user_id,
                device_id: binding.device_id,
            });
        }
        let key_package_ref = kp
            .hash_ref(self.provider.crypto())
            .map_err(internal)?
            .as_slice()
            .to_vec();
        Ok(ValidatedKeyPackage {
            key_package: kp,
            binding,
            key_package_ref,
        })
    }

    /// Proposes adding a validated member (external proposal, server as external sender 0).
    /// Refused when the (user, device) is a member not being removed, or already pending.
    /// Returns the proposal message to relay to every member.
    pub fn propose_add(&mut self, kp: ValidatedKeyPackage) -> Result<Vec<u8>, DsError> {
        let (user_id, device_id) = (kp.binding.user_id.clone(), kp.binding.device_id.clone());
        let removing: HashSet<u32> = self
            .pending
            .iter()
            .filter_map(|p| match p.kind {
                PendingKind::Remove { leaf } => Some(leaf),
                PendingKind::Add { .. } => None,
            })
            .collect();
        let member = self
            .leaf_of(&user_id, &device_id)
            .is_some_and(|l| !removing.contains(&l));
        let pending = self.pending.iter().any(|p| {
            matches!(&p.kind, PendingKind::Add { binding, .. }
                if binding.user_id == user_id && binding.device_id == device_id)
        });
        if member || pending {
            return Err(DsError::Duplicate { user_id, device_id });
        }
        let msg = ExternalProposal::new_add::<OpenMlsRustCrypto>(
            kp.key_package,
            self.group.group_id().clone(),
            self.group.group_context().epoch(),
            &self.signer,
            SenderExtensionIndex::new(0),
        )
        .map_err(internal)?;
        self.queue_own(
            msg,
            PendingKind::Add {
                binding: kp.binding,
                key_package_ref: kp.key_package_ref,
            },
        )
    }

    /// Proposes removing a leaf (external proposal, server as external sender 0). Returns the
    /// proposal message to relay to every member.
    pub fn propose_remove(&mut self, leaf: u32) -> Result<Vec<u8>, DsError> {
        if self.group.leaf(LeafNodeIndex::new(leaf)).is_none() {
            return Err(DsError::NoSuchLeaf(leaf));
        }
        if self
            .pending
            .iter()
            .any(|p| p.kind == PendingKind::Remove { leaf })
        {
            return Err(DsError::RemovePending(leaf));
        }
        let msg = ExternalProposal::new_remove::<OpenMlsRustCrypto>(
            LeafNodeIndex::new(leaf),
            self.group.group_id().clone(),
            self.group.group_context().epoch(),
            &self.signer,
            SenderExtensionIndex::new(0),
        )
        .map_err(internal)?;
        self.queue_own(msg, PendingKind::Remove { leaf })
    }

    /// Runs our own proposal through the public group (as every member will) and queues it.
    fn queue_own(&mut self, msg: MlsMessageOut, kind: PendingKind) -> Result<Vec<u8>, DsError> {
        let bytes = msg.tls_serialize_detached().map_err(internal)?;
        let protocol = rules::parse_message(&bytes)
            .map_err(internal)?
            .try_into_protocol_message()
            .map_err(internal)?;
        let processed = self
            .group
            .process_message(self.provider.crypto(), protocol)
            .map_err(internal)?;
        let ProcessedMessageContent::ProposalMessage(qp) = processed.into_content() else {
            return Err(internal("own proposal did not process as a proposal"));
        };
        let reference = qp.proposal_reference_ref().as_slice().to_vec();
        self.group
            .add_proposal(self.provider.storage(), *qp)
            .map_err(internal)?;
        self.pending.push(PendingProposal {
            reference,
            kind,
            message: bytes.clone(),
        });
        Ok(bytes)
    }

    /// Accepts a commit (and the Welcome that comes with it) if it is valid for the current
    /// epoch and follows docs/E2EE.md §4, then moves to the new epoch. The first valid commit of
    /// an epoch wins; any later one is refused with [`CommitRejected::WrongEpoch`].
    pub fn accept_commit(
        &mut self,
        commit: &[u8],
        welcome: Option<&[u8]>,
    ) -> Result<AcceptedCommit, CommitRejected> {
        let body = rules::parse_body(commit).map_err(CommitRejected::Malformed)?;
        let MlsMessageBodyIn::PublicMessage(pm) = body else {
            return Err(CommitRejected::NotPublicMessage);
        };
        let protocol = ProtocolMessage::from(pm);
        if protocol.content_type() != ContentType::Commit {
            return Err(CommitRejected::NotACommit);
        }
        if protocol.group_id() != self.group.group_id() {
            return Err(CommitRejected::WrongGroup);
        }
        let current = self.epoch();
        if protocol.epoch() != GroupEpoch::from(current) {
            return Err(CommitRejected::WrongEpoch {
                got: protocol.epoch().as_u64(),
                current,
            });
        }
        let processed = self
            .group
            .process_message(self.provider.crypto(), protocol)
            .map_err(|e| match e {
                PublicProcessMessageError::ValidationError(ValidationError::InvalidSignature) => {
                    CommitRejected::BadSignature
                }
                other => CommitRejected::Invalid(other.to_string()),
            })?;
        let sender = processed.sender().clone();
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(CommitRejected::NotACommit);
        };
        let members = self.members();
        let pending: HashSet<Vec<u8>> = self.pending.iter().map(|p| p.reference.clone()).collect();
        check_commit(&sender, &staged, &pending, &members, |c, k| {
            self.verify(c, k)
        })
        .map_err(CommitRejected::Rule)?;
        let openmls::prelude::Sender::Member(committer) = sender else {
            return Err(CommitRejected::Rule(CommitRuleViolation::NotFromMember));
        };

        // Adds must be verified members (the server only proposes validated KeyPackages, so
        // this holds unless the pending list and the proposal store disagree).
        let mut added_keys = Vec::new();
        for a in staged.add_proposals() {
            let kp = a.add_proposal().key_package();
            let key_package_ref = kp
                .hash_ref(self.provider.crypto())
                .map_err(|e| CommitRejected::Invalid(e.to_string()))?
                .as_slice()
                .to_vec();
            let leaf = kp.leaf_node();
            let binding = self
                .verify(leaf.credential(), leaf.signature_key().as_slice())
                .map_err(|e| CommitRejected::Invalid(format!("added member: {e}")))?;
            added_keys.push((
                leaf.signature_key().as_slice().to_vec(),
                binding,
                key_package_ref,
            ));
        }
        // openmls has checked that every removed leaf is a member.
        let removed: Vec<RemovedMember> = staged
            .remove_proposals()
            .filter_map(|r| {
                let leaf = r.remove_proposal().removed().u32();
                members
                    .iter()
                    .find(|m| m.leaf == leaf)
                    .map(|m| RemovedMember {
                        leaf,
                        identity: m.identity.clone(),
                    })
            })
            .collect();

        match (added_keys.is_empty(), welcome) {
            (false, None) => return Err(CommitRejected::WelcomeMissing),
            (true, Some(_)) => return Err(CommitRejected::UnexpectedWelcome),
            (true, None) => {}
            (false, Some(w)) => {
                let MlsMessageBodyIn::Welcome(w) =
                    rules::parse_body(w).map_err(CommitRejected::WelcomeMismatch)?
                else {
                    return Err(CommitRejected::WelcomeMismatch("not a Welcome".to_owned()));
                };
                if w.ciphersuite() != CIPHERSUITE {
                    return Err(CommitRejected::WelcomeMismatch(
                        "cipher suite is not the pinned one".to_owned(),
                    ));
                }
                let named: Vec<Vec<u8>> = w
                    .secrets()
                    .iter()
                    .map(|s| s.new_member().as_slice().to_vec())
                    .collect();
                let named_set: HashSet<&Vec<u8>> = named.iter().collect();
                let added_set: HashSet<&Vec<u8>> = added_keys.iter().map(|(_, _, r)| r).collect();
                if named.len() != named_set.len() || named_set != added_set {
                    return Err(CommitRejected::WelcomeMismatch(format!(
                        "Welcome names {} KeyPackages, the commit adds {}",
                        named.len(),
                        added_set.len()
                    )));
                }
            }
        }

        self.group
            .merge_commit(self.provider.storage(), *staged)
            .map_err(|e| CommitRejected::Invalid(format!("merge: {e}")))?;
        self.pending.clear();
        self.refresh_roster();

        let after = self.group.members().collect::<Vec<_>>();
        let added = added_keys
            .into_iter()
            .filter_map(|(key, binding, key_package_ref)| {
                after
                    .iter()
                    .find(|m| m.signature_key == key)
                    .map(|m| AddedMember {
                        leaf: m.index.u32(),
                        binding,
                        key_package_ref,
                    })
            })
            .collect();
        Ok(AcceptedCommit {
            epoch: self.epoch(),
            committer: committer.u32(),
            added,
            removed,
        })
    }

    /// Checks an application message before relaying it: a `PrivateMessage` application
    /// message of this group in the current epoch (the delivery service cannot decrypt it; it
    /// only reads the framing). Returns the epoch.
    pub fn check_application(&self, message: &[u8]) -> Result<u64, AppMessageRejected> {
        let body = rules::parse_body(message).map_err(AppMessageRejected::Malformed)?;
        let MlsMessageBodyIn::PrivateMessage(pm) = body else {
            return Err(AppMessageRejected::NotApplication);
        };
        let protocol = ProtocolMessage::from(pm);
        if protocol.content_type() != ContentType::Application {
            return Err(AppMessageRejected::NotApplication);
        }
        if protocol.group_id() != self.group.group_id() {
            return Err(AppMessageRejected::WrongGroup);
        }
        let got = protocol.epoch().as_u64();
        let current = self.epoch();
        if got != current {
            return Err(AppMessageRejected::StaleEpoch { got, current });
        }
        Ok(got)
    }
}
