//! The MLS delivery service (DESIGN flow 5, docs/E2EE.md): per meeting, the server's public view
//! of the group ([`sealroom_e2ee::ds::DeliveryGroup`]), the identity authority's bindings, the
//! KeyPackages waiting for a group, and which socket holds which leaf.
//!
//! It never holds a key that decrypts anything. Every operation returns what to send to whom
//! and what to audit; the caller (the WebSocket handler) does the IO, so the logic here is
//! plain and synchronous.

use crate::live::SocketId;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use sealroom_e2ee::credential::{self, Binding};
use sealroom_e2ee::ds::{DeliveryGroup, ExpectedMember};
use sealroom_proto::{Level, ServerMsg};
use serde_json::{json, Value};
use std::collections::HashMap;

/// A creator that has not sent its GroupInfo this long after `mls_create` loses the role to
/// the next member that sends a KeyPackage.
const CREATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What one socket is, for the identity authority.
#[derive(Debug, Clone)]
pub struct Who {
    pub socket: SocketId,
    pub meeting_id: String,
    pub level: Level,
    pub user_id: String,
    pub username: String,
    pub display_name: String,
    pub device_id: String,
    pub device_name: String,
    pub device_kind: String,
}

/// The result of one operation: messages to sockets, audit entries (kind, details), and an
/// error for the requesting socket.
#[derive(Debug, Default)]
pub struct Outcome {
    pub send: Vec<(SocketId, ServerMsg)>,
    pub audit: Vec<(&'static str, Value)>,
    pub error: Option<(&'static str, String)>,
}

impl Outcome {
    fn error(code: &'static str, message: impl Into<String>) -> Outcome {
        Outcome {
            error: Some((code, message.into())),
            ..Outcome::default()
        }
    }
}

enum State {
    /// Waiting for the creator's GroupInfo.
    Creating {
        creator: SocketId,
        since: std::time::Instant,
    },
    Active(Box<DeliveryGroup>),
}

struct Group {
    group_id: String,
    state: State,
    /// Sockets that hold a leaf.
    leaves: HashMap<SocketId, u32>,
    /// KeyPackages proposed for adding, by KeyPackage reference.
    adding: HashMap<Vec<u8>, (Who, Vec<u8>)>,
    /// KeyPackages that arrived while the group was being created.
    waiting: Vec<(Who, Vec<u8>)>,
}

/// The delivery service of every live meeting.
pub struct Delivery {
    identity: SigningKey,
    server_id: String,
    /// The signature key bound for each socket (one binding per socket).
    bound: HashMap<SocketId, (String, Vec<u8>)>,
    groups: HashMap<String, Group>,
    generation: u64,
}

impl Delivery {
    pub fn new(identity: SigningKey, server_id: String) -> Delivery {
        Delivery {
            identity,
            server_id,
            bound: HashMap::new(),
            groups: HashMap::new(),
            generation: 0,
        }
    }

    /// The group id prefix of a meeting (docs/E2EE.md §3); the generation follows it.
    pub fn group_id_prefix(&self, meeting_id: &str, level: Level) -> String {
        format!(
            "sealroom/v1/{}/{}/{}/",
            self.server_id,
            meeting_id,
            level.as_str()
        )
    }

    /// `mls_bind`: the identity authority binds this signature key to the socket's (user,
    /// device) in its meeting.
    pub fn bind(&mut self, who: &Who, signature_key_b64: &str, now: u64) -> Outcome {
        let Ok(key) = B64.decode(signature_key_b64) else {
            return Outcome::error("bad_request", "signature_key is not base64");
        };
        if key.len() != 32 {
            return Outcome::error("bad_request", "signature_key must be 32 bytes (Ed25519)");
        }
        if self.bound.contains_key(&who.socket) {
            return Outcome::error(
                "mls_already_bound",
                "This connection already has a binding for this meeting.",
            );
        }
        let binding = Binding {
            v: 1,
            server_id: self.server_id.clone(),
            meeting_id: who.meeting_id.clone(),
            user_id: who.user_id.clone(),
            username: who.username.clone(),
            display_name: who.display_name.clone(),
            device_id: who.device_id.clone(),
            device_name: who.device_name.clone(),
            device_kind: who.device_kind.clone(),
            signature_key: Binding::encode_signature_key(&key),
            issued_at: now,
        };
        let identity = match credential::issue(&self.identity, &binding) {
            Ok(i) => i,
            Err(e) => return Outcome::error("bad_request", e.to_string()),
        };
        self.bound
            .insert(who.socket, (who.meeting_id.clone(), key.clone()));
        Outcome {
            send: vec![(
                who.socket,
                ServerMsg::MlsBinding {
                    credential: B64.encode(identity),
                    identity_key: B64.encode(self.identity.verifying_key().as_bytes()),
                    server_id: self.server_id.clone(),
                    group_id_prefix: self.group_id_prefix(&who.meeting_id, who.level),
                },
            )],
            audit: vec![(
                "mls.bound",
                json!({"signature_key": Binding::encode_signature_key(&key)}),
            )],
            error: None,
        }
    }

    /// `mls_key_package`: the first member is asked to create the group; later ones are
    /// proposed for adding.
    pub fn key_package(&mut self, who: &Who, kp_b64: &str) -> Outcome {
        let Ok(kp) = B64.decode(kp_b64) else {
            return Outcome::error("bad_request", "key_package is not base64");
        };
        if !self.bound.contains_key(&who.socket) {
            return Outcome::error("mls_not_bound", "Ask for a binding (mls_bind) first.");
        }
        if !self.groups.contains_key(&who.meeting_id) {
            self.generation += 1;
            let group_id = format!(
                "{}{}",
                self.group_id_prefix(&who.meeting_id, who.level),
                self.generation
            );
            self.groups.insert(
                who.meeting_id.clone(),
                Group {
                    group_id: group_id.clone(),
                    state: State::Creating {
                        creator: who.socket,
                        since: std::time::Instant::now(),
                    },
                    leaves: HashMap::new(),
                    adding: HashMap::new(),
                    waiting: Vec::new(),
                },
            );
            return Outcome {
                send: vec![(who.socket, ServerMsg::MlsCreate { group_id })],
                ..Outcome::default()
            };
        }
        let group = self.groups.get_mut(&who.meeting_id).expect("checked above");
        match &mut group.state {
            State::Creating { creator, .. } if *creator == who.socket => Outcome::error(
                "mls_unexpected",
                "Create the group (mls_create) and send its GroupInfo.",
            ),
            State::Creating { creator, since } if since.elapsed() > CREATE_TIMEOUT => {
                // The creator never sent its GroupInfo: creation passes to the others.
                let stalled = *creator;
                let mut requeue = std::mem::take(&mut group.waiting);
                requeue.retain(|(w, _)| w.socket != who.socket);
                requeue.insert(0, (who.clone(), kp));
                self.groups.remove(&who.meeting_id);
                let mut out = Outcome::default();
                out.send.push((
                    stalled,
                    ServerMsg::MlsRejected {
                        reason: "the group was not created in time; another member creates it"
                            .into(),
                    },
                ));
                out.audit.push(("mls.create_timed_out", json!({})));
                for (w, kp) in requeue {
                    let o = self.key_package(&w, &B64.encode(kp));
                    out.send.extend(o.send);
                }
                out
            }
            State::Creating { .. } => {
                group.waiting.retain(|(w, _)| w.socket != who.socket);
                group.waiting.push((who.clone(), kp));
                Outcome::default()
            }
            State::Active(ds) => propose_add(ds, &mut group.leaves, &mut group.adding, who, &kp),
        }
    }

    /// `mls_group_info` from the creator: the delivery service starts following the group.
    pub fn group_info(&mut self, who: &Who, gi_b64: &str) -> Outcome {
        let Ok(gi) = B64.decode(gi_b64) else {
            return Outcome::error("bad_request", "group_info is not base64");
        };
        let Some(group) = self.groups.get_mut(&who.meeting_id) else {
            return Outcome::error("mls_unexpected", "No group is being created.");
        };
        let State::Creating { creator, .. } = group.state else {
            return Outcome::error("mls_unexpected", "The group exists already.");
        };
        if creator != who.socket {
            return Outcome::error("mls_unexpected", "Another member creates the group.");
        }
        let ds = match DeliveryGroup::from_group_info(
            &gi,
            group.group_id.as_bytes(),
            &self.identity,
            &self.server_id,
            &who.meeting_id,
        ) {
            Ok(ds) => ds,
            Err(e) => return Outcome::error("mls_invalid", e.to_string()),
        };
        let members = ds.members();
        let [only] = members.as_slice() else {
            return Outcome::error("mls_invalid", "A new group has exactly one member.");
        };
        let creator_ok = only.identity.binding().is_some_and(|b| {
            b.user_id == who.user_id
                && b.device_id == who.device_id
                && self
                    .bound
                    .get(&who.socket)
                    .is_some_and(|(_, k)| *k == only.signature_key)
        });
        if !creator_ok {
            return Outcome::error(
                "mls_invalid",
                "The group's member is not the binding issued to this connection.",
            );
        }
        group.leaves.insert(who.socket, only.leaf);
        let mut ds = Box::new(ds);
        let mut out = Outcome {
            audit: vec![(
                "mls.group_created",
                json!({"group_id": group.group_id, "epoch": ds.epoch()}),
            )],
            ..Outcome::default()
        };
        let waiting = std::mem::take(&mut group.waiting);
        for (w, kp) in waiting {
            let o = propose_add(&mut ds, &mut group.leaves, &mut group.adding, &w, &kp);
            out.send.extend(o.send);
            if let Some((_, message)) = o.error {
                out.send.push((
                    w.socket,
                    ServerMsg::Error {
                        code: "mls_invalid".into(),
                        message,
                    },
                ));
            }
        }
        group.state = State::Active(ds);
        out
    }

    /// `mls_commit` from a member: the first valid commit of the epoch is fanned out, in order,
    /// to every member of that epoch (the committer merges on this echo), and the Welcome goes
    /// to the added members. Anything else is refused with the reason.
    pub fn commit(&mut self, who: &Who, commit_b64: &str, welcome_b64: Option<&str>) -> Outcome {
        let Ok(commit) = B64.decode(commit_b64) else {
            return Outcome::error("bad_request", "commit is not base64");
        };
        let welcome = match welcome_b64.map(|w| B64.decode(w)) {
            None => None,
            Some(Ok(w)) => Some(w),
            Some(Err(_)) => return Outcome::error("bad_request", "welcome is not base64"),
        };
        let Some(group) = self.groups.get_mut(&who.meeting_id) else {
            return Outcome::error("mls_unexpected", "There is no group.");
        };
        let State::Active(ds) = &mut group.state else {
            return Outcome::error("mls_unexpected", "The group is still being created.");
        };
        let Some(&committer_leaf) = group.leaves.get(&who.socket) else {
            return Outcome::error("mls_not_member", "Only members commit.");
        };
        let epoch = ds.epoch();
        let accepted = match ds.accept_commit(&commit, welcome.as_deref()) {
            Ok(a) => a,
            Err(e) => {
                return Outcome {
                    send: vec![(
                        who.socket,
                        ServerMsg::MlsRejected {
                            reason: e.to_string(),
                        },
                    )],
                    audit: vec![(
                        "mls.commit_rejected",
                        json!({"epoch": epoch, "leaf": committer_leaf, "reason": e.to_string()}),
                    )],
                    error: None,
                };
            }
        };
        let commit_b64 = B64.encode(&commit);
        // Fan out to the members of the old epoch (removed ones learn they are out).
        let mut send: Vec<(SocketId, ServerMsg)> = group
            .leaves
            .keys()
            .map(|s| {
                (
                    *s,
                    ServerMsg::MlsCommit {
                        commit: commit_b64.clone(),
                        epoch,
                    },
                )
            })
            .collect();
        let removed: Vec<u32> = accepted.removed.iter().map(|r| r.leaf).collect();
        group.leaves.retain(|_, l| !removed.contains(l));
        let mut gone_added = Vec::new();
        if let Some(w) = &welcome {
            let w = B64.encode(w);
            for a in &accepted.added {
                match group
                    .adding
                    .remove(&a.key_package_ref)
                    .map(|(w, _)| w.socket)
                {
                    Some(socket) if self.bound.contains_key(&socket) => {
                        group.leaves.insert(socket, a.leaf);
                        send.push((socket, ServerMsg::MlsWelcome { welcome: w.clone() }));
                    }
                    // Its socket left before the commit: take the leaf out again.
                    _ => gone_added.push(a.leaf),
                }
            }
        }
        let describe = |b: Option<&Binding>| {
            b.map(|b| format!("user:{}/device:{}", b.username, b.device_id))
                .unwrap_or_else(|| "unverified".into())
        };
        let mut out = Outcome {
            audit: vec![(
                "mls.epoch",
                json!({
                    "group_id": group.group_id,
                    "epoch": accepted.epoch,
                    "committer_leaf": accepted.committer,
                    "added": accepted.added.iter().map(|a| json!({"leaf": a.leaf, "member": describe(Some(&a.binding))})).collect::<Vec<_>>(),
                    "removed": accepted.removed.iter().map(|r| json!({"leaf": r.leaf, "member": describe(r.identity.binding())})).collect::<Vec<_>>(),
                    "members": ds.members().len(),
                }),
            )],
            send,
            error: None,
        };
        for leaf in gone_added {
            if let Ok(p) = ds.propose_remove(leaf) {
                fan_out(&mut out, &group.leaves, p);
            }
        }
        out
    }

    /// `mls_app`: relayed to the other members if it is an application message of the current
    /// epoch (the delivery service reads only the framing).
    pub fn application(&mut self, who: &Who, message_b64: &str) -> Outcome {
        let Ok(message) = B64.decode(message_b64) else {
            return Outcome::error("bad_request", "message is not base64");
        };
        let Some(group) = self.groups.get(&who.meeting_id) else {
            return Outcome::error("mls_unexpected", "There is no group.");
        };
        let State::Active(ds) = &group.state else {
            return Outcome::error("mls_unexpected", "The group is still being created.");
        };
        if !group.leaves.contains_key(&who.socket) {
            return Outcome::error("mls_not_member", "Only members send messages.");
        }
        if let Err(e) = ds.check_application(&message) {
            return Outcome::error("mls_rejected", e.to_string());
        }
        Outcome {
            send: group
                .leaves
                .keys()
                .filter(|s| **s != who.socket)
                .map(|s| {
                    (
                        *s,
                        ServerMsg::MlsApp {
                            message: message_b64.to_string(),
                        },
                    )
                })
                .collect(),
            ..Outcome::default()
        }
    }

    /// A socket is no longer in its meeting (left, removed, revoked, disconnected past the
    /// grace, replaced by a reconnect): the server proposes to remove its leaf. The last member
    /// gone ends the group; a creator gone hands creation to the next waiting member.
    pub fn gone(&mut self, meeting_id: &str, socket: SocketId) -> Outcome {
        self.bound.remove(&socket);
        let mut out = Outcome::default();
        let Some(group) = self.groups.get_mut(meeting_id) else {
            return out;
        };
        group.waiting.retain(|(w, _)| w.socket != socket);
        group.adding.retain(|_, (w, _)| w.socket != socket);
        let requeue: Vec<(Who, Vec<u8>)> = match &mut group.state {
            // The creator left before the group existed: the next waiting member creates it.
            State::Creating { creator, .. } if *creator == socket => {
                std::mem::take(&mut group.waiting)
            }
            State::Creating { .. } => return out,
            State::Active(ds) => {
                let Some(leaf) = group.leaves.remove(&socket) else {
                    return out;
                };
                if group.leaves.is_empty() {
                    // Nobody is left to commit: the group ends; whoever was being added
                    // starts a new one (DESIGN §7: one member left → new group).
                    out.audit.push((
                        "mls.group_ended",
                        json!({"group_id": group.group_id, "epoch": ds.epoch()}),
                    ));
                    group.adding.drain().map(|(_, v)| v).collect()
                } else {
                    match ds.propose_remove(leaf) {
                        Ok(p) => fan_out(&mut out, &group.leaves, p),
                        Err(e) => tracing::warn!(%e, leaf, "could not propose a removal"),
                    }
                    return out;
                }
            }
        };
        self.groups.remove(meeting_id);
        for (w, kp) in requeue {
            let o = self.key_package(&w, &B64.encode(kp));
            out.send.extend(o.send);
        }
        out
    }
}

fn fan_out(out: &mut Outcome, leaves: &HashMap<SocketId, u32>, proposal: Vec<u8>) {
    let message = B64.encode(proposal);
    for s in leaves.keys() {
        out.send.push((
            *s,
            ServerMsg::MlsProposal {
                message: message.clone(),
            },
        ));
    }
}

/// Validate a KeyPackage against the socket and propose it; the proposal goes to every member.
fn propose_add(
    ds: &mut DeliveryGroup,
    leaves: &mut HashMap<SocketId, u32>,
    adding: &mut HashMap<Vec<u8>, (Who, Vec<u8>)>,
    who: &Who,
    kp: &[u8],
) -> Outcome {
    let valid = match ds.validate_key_package(
        kp,
        ExpectedMember {
            user_id: &who.user_id,
            device_id: &who.device_id,
        },
    ) {
        Ok(v) => v,
        Err(e) => return Outcome::error("mls_invalid", e.to_string()),
    };
    let kp_ref = valid.key_package_ref().to_vec();
    let proposal = match ds.propose_add(valid) {
        Ok(p) => p,
        Err(e) => return Outcome::error("mls_invalid", e.to_string()),
    };
    adding.insert(kp_ref, (who.clone(), kp.to_vec()));
    let message = B64.encode(proposal);
    Outcome {
        send: leaves
            .keys()
            .map(|s| {
                (
                    *s,
                    ServerMsg::MlsProposal {
                        message: message.clone(),
                    },
                )
            })
            .collect(),
        ..Outcome::default()
    }
}
