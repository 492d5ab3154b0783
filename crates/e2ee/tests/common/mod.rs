//! Test harness: a server identity, members driven through the public API, a delivery service
//! in the middle, and a "rogue" member built on raw openmls that can produce commits the public
//! API refuses to make.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use openmls::prelude::{
    BasicCredential, CredentialWithKey, Extension, Extensions, ExternalSender, GroupId, KeyPackage,
    LeafNodeIndex, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageBodyIn,
    MlsMessageIn, MlsMessageOut, ProcessedMessageContent, ProtocolVersion, StagedWelcome,
    PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use sealroom_e2ee::credential::{issue, Binding};
use sealroom_e2ee::ds::{AcceptedCommit, DeliveryGroup, ExpectedMember};
use sealroom_e2ee::mls::{
    group_id, server_credential, CommitOut, Identity, Incoming, Member, MemberConfig, CIPHERSUITE,
};
use sealroom_e2ee::Ed25519Signer;
use tls_codec::{Deserialize as _, Serialize as _};

pub const SERVER_ID: &str = "https://sealroom.test:8443";
pub const MEETING_ID: &str = "m-4f1c2a9e";
pub const LEVEL: &str = "internal";

pub fn server_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

pub fn gid(generation: u64) -> Vec<u8> {
    group_id(SERVER_ID, MEETING_ID, LEVEL, generation)
}

pub fn config() -> MemberConfig {
    MemberConfig {
        server_id: SERVER_ID.into(),
        meeting_id: MEETING_ID.into(),
        server_key: server_key().verifying_key(),
    }
}

pub fn binding(name: &str, signature_key: &[u8]) -> Binding {
    Binding {
        v: 1,
        server_id: SERVER_ID.into(),
        meeting_id: MEETING_ID.into(),
        user_id: format!("u-{name}"),
        username: name.into(),
        display_name: name.to_uppercase(),
        device_id: format!("d-{name}"),
        device_name: format!("{name}'s laptop"),
        device_kind: "passkey".into(),
        signature_key: Binding::encode_signature_key(signature_key),
        issued_at: 1_760_000_000,
    }
}

/// The server's binding of `key` for `name` (user `u-name`, device `d-name`).
pub fn identity(name: &str, key: &[u8]) -> Vec<u8> {
    issue(&server_key(), &binding(name, key)).expect("issue binding")
}

pub fn expected(name: &str) -> (String, String) {
    (format!("u-{name}"), format!("d-{name}"))
}

pub struct Peer {
    pub name: String,
    pub member: Member,
}

/// A meeting: the delivery service and the members, messages relayed in order.
pub struct Meeting {
    pub ds: DeliveryGroup,
    pub peers: Vec<Peer>,
    pub gid: Vec<u8>,
}

impl Meeting {
    pub fn create(name: &str) -> Meeting {
        Meeting::create_generation(name, 1)
    }

    pub fn create_generation(name: &str, generation: u64) -> Meeting {
        let gid = gid(generation);
        let mut member = Member::new(config()).expect("member");
        let id = identity(name, &member.signature_key());
        let info = member.create_group(&id, &gid).expect("create group");
        let ds = DeliveryGroup::from_group_info(&info, &gid, &server_key(), SERVER_ID, MEETING_ID)
            .expect("ds from group info");
        Meeting {
            ds,
            peers: vec![Peer {
                name: name.into(),
                member,
            }],
            gid,
        }
    }

    pub fn peer(&mut self, name: &str) -> &mut Member {
        &mut self
            .peers
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no peer {name}"))
            .member
    }

    /// Relays a message to every current peer, returning each outcome.
    pub fn broadcast(&mut self, msg: &[u8]) -> Vec<Incoming> {
        self.peers
            .iter_mut()
            .map(|p| {
                p.member
                    .handle_message(msg)
                    .unwrap_or_else(|e| panic!("{} refused a relayed message: {e}", p.name))
            })
            .collect()
    }

    pub fn committer(&self) -> usize {
        self.peers
            .iter()
            .position(|p| p.member.is_designated_committer())
            .expect("a designated committer")
    }

    /// The designated committer commits; the DS accepts; the commit is fanned out.
    pub fn commit_round(&mut self) -> (AcceptedCommit, CommitOut) {
        let c = self.committer();
        let out = self.peers[c].member.commit_pending().expect("commit");
        let accepted = self
            .ds
            .accept_commit(&out.commit, out.welcome.as_deref())
            .expect("ds accepts commit");
        self.broadcast(&out.commit);
        (accepted, out)
    }

    /// A new member uploads a KeyPackage, the server proposes Add, a member commits, the new
    /// member joins from the Welcome.
    pub fn join(&mut self, name: &str) -> u32 {
        let mut member = Member::new(config()).expect("member");
        let id = identity(name, &member.signature_key());
        let kp = member.key_package(&id).expect("key package");
        let (user, device) = expected(name);
        let vkp = self
            .ds
            .validate_key_package(
                &kp,
                ExpectedMember {
                    user_id: &user,
                    device_id: &device,
                },
            )
            .expect("valid key package");
        let proposal = self.ds.propose_add(vkp).expect("propose add");
        self.broadcast(&proposal);
        let (accepted, out) = self.commit_round();
        assert_eq!(accepted.added.len(), 1);
        let welcome = out.welcome.expect("welcome");
        let roster = member.join(&welcome, &self.gid).expect("join from welcome");
        assert!(roster
            .iter()
            .all(|e| matches!(e.identity, Identity::Verified(_))));
        self.peers.push(Peer {
            name: name.into(),
            member,
        });
        accepted.added[0].leaf
    }

    /// The server proposes removing `name`; a member commits; everyone (the removed one
    /// included) processes it. Returns the removed peer.
    pub fn remove(&mut self, name: &str) -> Peer {
        let (user, device) = expected(name);
        let leaf = self.ds.leaf_of(&user, &device).expect("member leaf");
        let proposal = self.ds.propose_remove(leaf).expect("propose remove");
        self.broadcast(&proposal);
        let (accepted, _) = self.commit_round();
        assert_eq!(accepted.removed.len(), 1);
        assert_eq!(accepted.removed[0].leaf, leaf);
        let i = self
            .peers
            .iter()
            .position(|p| p.name == name)
            .expect("peer");
        self.peers.remove(i)
    }

    /// Every member agrees with every other and with the DS: epoch, exporter, epoch
    /// authenticator, security code, roster = DS members, all verified.
    pub fn assert_in_sync(&self) {
        let epoch = self.ds.epoch();
        let ds_members = self.ds.members();
        assert!(ds_members
            .iter()
            .all(|m| matches!(m.identity, Identity::Verified(_))));
        let first = &self.peers[0].member;
        let key = first.sframe_key().expect("sframe key");
        let auth = first.epoch_authenticator().expect("authenticator");
        let code = first.security_code().expect("code");
        for p in &self.peers {
            let m = &p.member;
            assert_eq!(m.epoch(), Some(epoch), "{} epoch", p.name);
            assert_eq!(m.sframe_key().expect("key"), key, "{} exporter", p.name);
            assert_eq!(
                m.epoch_authenticator().expect("auth"),
                auth,
                "{} authenticator",
                p.name
            );
            assert_eq!(
                m.security_code().expect("code"),
                code,
                "{} security code",
                p.name
            );
            assert_eq!(m.roster().expect("roster"), ds_members, "{} roster", p.name);
        }
        assert_eq!(ds_members.len(), self.peers.len());
    }
}

pub fn parse(bytes: &[u8]) -> MlsMessageBodyIn {
    MlsMessageIn::tls_deserialize_exact(bytes)
        .expect("mls message")
        .extract()
}

pub fn ser(msg: &MlsMessageOut) -> Vec<u8> {
    msg.tls_serialize_detached().expect("serialize")
}

/// A member on raw openmls: a legitimate leaf (its binding verifies) whose client ignores the
/// rules, to produce commits the public API never makes.
pub struct Rogue {
    pub provider: OpenMlsRustCrypto,
    pub signer: Ed25519Signer,
    pub credential: CredentialWithKey,
    pub group: Option<MlsGroup>,
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .build()
}

impl Rogue {
    /// A rogue whose identity bytes are whatever `identity` returns for its key.
    pub fn new(seed: u8, identity: impl FnOnce(&[u8]) -> Vec<u8>) -> Rogue {
        let signer = Ed25519Signer::new(SigningKey::from_bytes(&[seed; 32]));
        let id = identity(&signer.public_bytes());
        let credential = CredentialWithKey {
            credential: BasicCredential::new(id).into(),
            signature_key: signer.public_bytes().to_vec().into(),
        };
        Rogue {
            provider: OpenMlsRustCrypto::default(),
            signer,
            credential,
            group: None,
        }
    }

    pub fn key_package(&self) -> Vec<u8> {
        let bundle = KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .expect("key package");
        ser(&MlsMessageOut::from(bundle.key_package().clone()))
    }

    /// Creates a group with the given external senders (the honest API always uses the
    /// pinned server).
    pub fn create(
        &mut self,
        group_id: &[u8],
        external_sender: &SigningKey,
        server_id: &str,
    ) -> Vec<u8> {
        let ext = Extension::ExternalSenders(vec![ExternalSender::new(
            external_sender.verifying_key().to_bytes().to_vec().into(),
            server_credential(server_id),
        )]);
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .with_group_context_extensions(Extensions::single(ext).expect("extensions"))
            .build();
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &config,
            GroupId::from_slice(group_id),
            self.credential.clone(),
        )
        .expect("rogue group");
        let info = group
            .export_group_info(self.provider.crypto(), &self.signer, true)
            .expect("group info");
        self.group = Some(group);
        ser(&info)
    }

    pub fn join(&mut self, welcome: &[u8]) {
        let MlsMessageBodyIn::Welcome(w) = parse(welcome) else {
            panic!("not a welcome")
        };
        let staged = StagedWelcome::new_from_welcome(&self.provider, &join_config(), w, None)
            .expect("rogue staged welcome");
        self.group = Some(staged.into_group(&self.provider).expect("rogue group"));
    }

    /// Processes anything without our rules: stores proposals, merges commits.
    pub fn handle(&mut self, bytes: &[u8]) {
        let msg = MlsMessageIn::tls_deserialize_exact(bytes).expect("message");
        let protocol = msg.try_into_protocol_message().expect("protocol");
        let group = self.group.as_mut().expect("group");
        let processed = group
            .process_message(&self.provider, protocol)
            .expect("rogue process");
        match processed.into_content() {
            ProcessedMessageContent::ProposalMessage(p) => group
                .store_pending_proposal(self.provider.storage(), *p)
                .expect("store"),
            ProcessedMessageContent::StagedCommitMessage(s) => group
                .merge_staged_commit(&self.provider, *s)
                .expect("merge"),
            ProcessedMessageContent::OwnPendingCommit => group
                .merge_pending_commit(&self.provider)
                .expect("merge own"),
            _ => {}
        }
    }

    /// Commits the pending proposals plus Adds and Removes by value.
    pub fn commit_with_by_value(
        &mut self,
        adds: Vec<KeyPackage>,
        removes: Vec<u32>,
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        let group = self.group.as_mut().expect("group");
        let bundle = group
            .commit_builder()
            .consume_proposal_store(true)
            .propose_adds(adds)
            .propose_removals(removes.into_iter().map(LeafNodeIndex::new))
            .load_psks(self.provider.storage())
            .expect("psks")
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .expect("build")
            .stage_commit(&self.provider)
            .expect("stage");
        let (commit, welcome, _) = bundle.into_messages();
        (ser(&commit), welcome.as_ref().map(ser))
    }

    /// Commits the pending proposals, signed by `signer` (not the leaf's key).
    pub fn commit_signed_by(&mut self, signer: &Ed25519Signer) -> Vec<u8> {
        let group = self.group.as_mut().expect("group");
        let (commit, _, _) = group
            .commit_to_pending_proposals(&self.provider, signer)
            .expect("commit");
        ser(&commit)
    }

    /// A member proposal (by reference) to remove `leaf`, kept in the rogue's own store.
    pub fn propose_remove(&mut self, leaf: u32) -> Vec<u8> {
        let group = self.group.as_mut().expect("group");
        let (msg, _) = group
            .propose_remove_member(&self.provider, &self.signer, LeafNodeIndex::new(leaf))
            .expect("propose");
        ser(&msg)
    }

    pub fn discard_pending_commit(&mut self) {
        let group = self.group.as_mut().expect("group");
        group
            .clear_pending_commit(self.provider.storage())
            .expect("clear");
    }
}

/// A validated KeyPackage parsed back (for the rogue's by-value Adds).
pub fn key_package_from(bytes: &[u8], provider: &OpenMlsRustCrypto) -> KeyPackage {
    let MlsMessageBodyIn::KeyPackage(kp) = parse(bytes) else {
        panic!("not a key package")
    };
    kp.validate(provider.crypto(), ProtocolVersion::Mls10)
        .expect("valid key package")
}

/// Adds a rogue to the meeting through the DS (its binding is valid: it is a real member whose
/// client misbehaves later).
pub fn add_rogue(meeting: &mut Meeting, name: &str, seed: u8) -> Rogue {
    let mut rogue = Rogue::new(seed, |k| identity(name, k));
    let kp = rogue.key_package();
    let (user, device) = expected(name);
    let vkp = meeting
        .ds
        .validate_key_package(
            &kp,
            ExpectedMember {
                user_id: &user,
                device_id: &device,
            },
        )
        .expect("rogue key package");
    let proposal = meeting.ds.propose_add(vkp).expect("propose");
    meeting.broadcast(&proposal);
    let (_, out) = meeting.commit_round();
    rogue.join(out.welcome.as_deref().expect("welcome"));
    rogue
}
