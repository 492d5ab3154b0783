//! What the client and the delivery service share: the suite, the group id, the server's
//! external-sender entry, credential checks on MLS leaves and the commit rules of
//! docs/E2EE.md §4. Both sides call the same functions so they cannot drift apart.

use std::collections::{HashMap, HashSet};

use ed25519_dalek::VerifyingKey;
use openmls::prelude::{
    BasicCredential, Ciphersuite, Credential, CredentialType, Extension, Extensions,
    ExternalSender, GroupContext, MlsMessageBodyIn, MlsMessageIn, Proposal, ProposalOrRefType,
    Sender, SenderExtensionIndex, StagedCommit,
};
use tls_codec::Deserialize as _;

use crate::credential::{self, Binding, CredentialError};

/// The only MLS cipher suite sealroom uses (0x0001).
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Prefix of the server's external-sender credential identity.
pub const SERVER_CREDENTIAL_PREFIX: &str = "sealroom-server:";

/// The MLS group id of a meeting (docs/E2EE.md §3):
/// `"sealroom/v1/" || server_id || "/" || meeting_id || "/" || level || "/" || generation`.
pub fn group_id(server_id: &str, meeting_id: &str, level: &str, generation: u64) -> Vec<u8> {
    format!("sealroom/v1/{server_id}/{meeting_id}/{level}/{generation}").into_bytes()
}

/// The server's external-sender credential: `BasicCredential("sealroom-server:" || server_id)`.
pub fn server_credential(server_id: &str) -> Credential {
    BasicCredential::new(format!("{SERVER_CREDENTIAL_PREFIX}{server_id}").into_bytes()).into()
}

/// The `external_senders` group-context extension: exactly the server.
pub(crate) fn external_senders_extension(server_key: &VerifyingKey, server_id: &str) -> Extension {
    Extension::ExternalSenders(vec![ExternalSender::new(
        server_key.to_bytes().to_vec().into(),
        server_credential(server_id),
    )])
}

/// Splits an MLS message into its body.
pub(crate) fn parse_body(bytes: &[u8]) -> Result<MlsMessageBodyIn, String> {
    parse_message(bytes).map(MlsMessageIn::extract)
}

/// Checks that a group context's `external_senders` is exactly one entry: the pinned server key
/// with the server credential.
pub(crate) fn check_external_senders(
    extensions: &Extensions<GroupContext>,
    server_key: &VerifyingKey,
    server_id: &str,
) -> Result<(), String> {
    let senders = extensions
        .external_senders()
        .ok_or_else(|| "no external_senders extension".to_owned())?;
    let [only] = senders.as_slice() else {
        return Err(format!(
            "external_senders has {} entries, expected exactly the server",
            senders.len()
        ));
    };
    let expected = ExternalSender::new(
        server_key.to_bytes().to_vec().into(),
        server_credential(server_id),
    );
    if only != &expected {
        return Err("external sender is not the pinned server key and credential".to_owned());
    }
    Ok(())
}

/// Parses one MLS message; never panics on any input.
pub(crate) fn parse_message(bytes: &[u8]) -> Result<MlsMessageIn, String> {
    MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| format!("not an MLS message: {e}"))
}

/// Verifies the binding inside a leaf's credential (docs/E2EE.md §2).
pub(crate) fn verify_leaf(
    credential: &Credential,
    signature_key: &[u8],
    server_key: &VerifyingKey,
    server_id: &str,
    meeting_id: &str,
) -> Result<Binding, CredentialError> {
    if credential.credential_type() != CredentialType::Basic {
        return Err(CredentialError::NotBasic);
    }
    let basic =
        BasicCredential::try_from(credential.clone()).map_err(|_| CredentialError::NotBasic)?;
    credential::verify(
        basic.identity(),
        server_key,
        server_id,
        meeting_id,
        signature_key,
    )
}

/// A member's identity as the verifier sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The credential verifies: the server vouches for this binding.
    Verified(Binding),
    /// The credential does not verify; the caller decides (at `restricted`: leave at once).
    Unverified(CredentialError),
}

impl Identity {
    /// The binding, when verified.
    pub fn binding(&self) -> Option<&Binding> {
        match self {
            Identity::Verified(b) => Some(b),
            Identity::Unverified(_) => None,
        }
    }
}

/// One leaf of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterEntry {
    /// The MLS leaf index (the SFrame KID's sender index).
    pub leaf: u32,
    /// The verified binding, or why it does not verify.
    pub identity: Identity,
    /// The leaf's MLS signature public key.
    pub signature_key: Vec<u8>,
    /// The credential the identity was computed from (to reuse the result while it stays).
    credential: Credential,
}

/// Builds the roster of `members`, verifying only leaves whose key or credential changed since
/// `old` (one Ed25519 verification per new leaf instead of one per leaf and epoch).
pub(crate) fn roster(
    old: &[RosterEntry],
    members: impl Iterator<Item = openmls::group::Member>,
    verify: impl Fn(&Credential, &[u8]) -> Result<Binding, CredentialError>,
) -> Vec<RosterEntry> {
    members
        .map(|m| {
            let leaf = m.index.u32();
            let identity = old
                .iter()
                .find(|e| {
                    e.leaf == leaf
                        && e.signature_key == m.signature_key
                        && e.credential == m.credential
                })
                .map(|e| e.identity.clone())
                .unwrap_or_else(|| match verify(&m.credential, &m.signature_key) {
                    Ok(b) => Identity::Verified(b),
                    Err(e) => Identity::Unverified(e),
                });
            RosterEntry {
                leaf,
                identity,
                signature_key: m.signature_key,
                credential: m.credential,
            }
        })
        .collect()
}

/// Why a commit breaks the rules of docs/E2EE.md §4. Checked by every client before merging and
/// by the delivery service before accepting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitRuleViolation {
    /// The commit was not sent by a member (e.g. an external commit).
    #[error("commit is not from a member")]
    NotFromMember,
    /// A proposal is included by value.
    #[error("a proposal is included by value")]
    ProposalByValue,
    /// A proposal was not proposed by the server (external sender 0).
    #[error("a proposal was not proposed by the server")]
    ProposalNotFromServer,
    /// A proposal type other than Add or Remove.
    #[error("proposal type {0:#06x} is not allowed")]
    ProposalTypeNotAllowed(u16),
    /// The committed proposals are not exactly the server's pending proposals.
    #[error("the committed proposals ({committed}) are not the {pending} pending proposals")]
    ProposalsDiffer {
        /// Proposals in the commit.
        committed: usize,
        /// Proposals pending.
        pending: usize,
    },
    /// Two leaves would share (user_id, device_id) after the commit.
    #[error("user {user_id:?} device {device_id:?} would be in the group twice")]
    DuplicateMember {
        /// The user.
        user_id: String,
        /// The device.
        device_id: String,
    },
    /// The committer's new leaf credential does not verify or names another (user, device).
    #[error("the committer's new leaf credential is not its own: {0}")]
    CommitterCredential(String),
}

fn proposal_type_code(p: &Proposal) -> u16 {
    u16::from(p.proposal_type())
}

/// Applies docs/E2EE.md §4 to a staged commit (signatures, tags and the epoch are openmls's).
///
/// `pending` are the references of the server proposals received in this epoch; `members` the
/// leaves before the commit; `verify` the credential check of the caller.
pub(crate) fn check_commit(
    sender: &Sender,
    staged: &StagedCommit,
    pending: &HashSet<Vec<u8>>,
    members: &[RosterEntry],
    verify: impl Fn(&Credential, &[u8]) -> Result<Binding, CredentialError>,
) -> Result<(), CommitRuleViolation> {
    let Sender::Member(committer) = sender else {
        return Err(CommitRuleViolation::NotFromMember);
    };
    let committer = committer.u32();

    let mut committed = HashSet::new();
    for qp in staged.queued_proposals() {
        if qp.proposal_or_ref_type() != ProposalOrRefType::Reference {
            return Err(CommitRuleViolation::ProposalByValue);
        }
        if qp.sender() != &Sender::External(SenderExtensionIndex::new(0)) {
            return Err(CommitRuleViolation::ProposalNotFromServer);
        }
        match qp.proposal() {
            Proposal::Add(_) | Proposal::Remove(_) => {}
            other => {
                return Err(CommitRuleViolation::ProposalTypeNotAllowed(
                    proposal_type_code(other),
                ))
            }
        }
        committed.insert(qp.proposal_reference_ref().as_slice().to_vec());
    }
    // An empty (path-only) commit is the periodic key update; it is allowed only when nothing is
    // pending, so it can never be used to skip the server's proposals.
    if committed != *pending {
        return Err(CommitRuleViolation::ProposalsDiffer {
            committed: committed.len(),
            pending: pending.len(),
        });
    }

    // (user, device) of every leaf after the commit; unverified leaves have none.
    let mut after: HashMap<u32, Option<(String, String)>> = members
        .iter()
        .map(|m| {
            (
                m.leaf,
                m.identity
                    .binding()
                    .map(|b| (b.user_id.clone(), b.device_id.clone())),
            )
        })
        .collect();
    for r in staged.remove_proposals() {
        after.remove(&r.remove_proposal().removed().u32());
    }
    if let Some(leaf) = staged.update_path_leaf_node() {
        let old = after.get(&committer).cloned().flatten();
        if let Some((user_id, device_id)) = old {
            let new = verify(leaf.credential(), leaf.signature_key().as_slice())
                .map_err(|e| CommitRuleViolation::CommitterCredential(e.to_string()))?;
            if new.user_id != user_id || new.device_id != device_id {
                return Err(CommitRuleViolation::CommitterCredential(format!(
                    "was user {user_id:?} device {device_id:?}, now user {:?} device {:?}",
                    new.user_id, new.device_id
                )));
            }
        }
    }
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let adds = staged.add_proposals().map(|a| {
        let leaf = a.add_proposal().key_package().leaf_node();
        verify(leaf.credential(), leaf.signature_key().as_slice())
            .ok()
            .map(|b| (b.user_id, b.device_id))
    });
    for (user_id, device_id) in after.into_values().chain(adds).flatten() {
        if !seen.insert((user_id.clone(), device_id.clone())) {
            return Err(CommitRuleViolation::DuplicateMember { user_id, device_id });
        }
    }
    Ok(())
}
