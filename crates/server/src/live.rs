//! The live state of meetings: who is admitted, who waits in the lobby, and every open socket,
//! so that removal, lock-out and revocation reach open sockets at once.
//!
//! Sockets own a channel receiver; the hub only ever sends to it (never blocks, never awaits),
//! so it is safe to act on it under its mutex. What is durable (decisions) is in the store;
//! this is only what is true right now and vanishes on restart.

use sealroom_proto::{LobbyEntry, MeetingInfo, Participant, RefusalReason, ServerMsg};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc::UnboundedSender;

/// Sent by the hub to one socket task.
#[derive(Debug)]
pub enum Notice {
    /// Forward this message to the client.
    Send(ServerMsg),
    /// A host admitted this socket from the lobby.
    Admitted,
    /// Participation (or lobby wait) ends for this reason; the socket stays open.
    Ended(RefusalReason),
    /// The session is over (device revoked, user disabled, logout): close the socket.
    Close(RefusalReason),
}

pub type SocketId = u64;

/// What the hub knows about an open socket.
#[derive(Debug, Clone)]
pub struct SocketHandle {
    pub user_id: String,
    pub device_id: String,
    pub session_hash: String,
    /// The user is an admin (told about every new device).
    pub admin: bool,
    pub tx: UnboundedSender<Notice>,
}

#[derive(Debug, Clone)]
struct Member {
    socket: SocketId,
    participant: Participant,
    lobby: LobbyEntry,
    user_id: String,
    device_id: String,
    session_hash: String,
    /// The socket is gone; the member keeps its place until the reconnect grace ends.
    away: bool,
}

impl Member {
    fn new(g: &Inner, socket: SocketId, participant: Participant, lobby: LobbyEntry) -> Member {
        let h = g.sockets.get(&socket);
        Member {
            socket,
            participant,
            lobby,
            user_id: h.map(|h| h.user_id.clone()).unwrap_or_default(),
            device_id: h.map(|h| h.device_id.clone()).unwrap_or_default(),
            session_hash: h.map(|h| h.session_hash.clone()).unwrap_or_default(),
            away: false,
        }
    }
}

#[derive(Debug, Default)]
struct Room {
    /// The SFU room of this meeting.
    sfu_room: u64,
    info: Option<MeetingInfo>,
    admitted: Vec<Member>,
    lobby: Vec<Member>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Told about every admitted socket that leaves its meeting (for the MLS delivery service).
    gone: Option<UnboundedSender<(String, SocketId)>>,
    /// See `Config::test_ghosts`.
    ghosts: Vec<String>,
    next_socket: SocketId,
    next_room: u64,
    sockets: HashMap<SocketId, SocketHandle>,
    rooms: HashMap<String, Room>,
}

/// Live meetings and sockets.
#[derive(Debug, Default)]
pub struct Hub {
    inner: Mutex<Inner>,
    /// The media edge: every way out of a meeting removes the socket's transport here.
    media: std::sync::OnceLock<crate::media::MediaHandle>,
}

/// A member found by a host action.
#[derive(Debug, Clone)]
pub struct Found {
    pub socket: SocketId,
    pub user_id: String,
    pub user_name: String,
    pub device_id: String,
}

impl Hub {
    /// `user:<name>/device:<id>` of an admitted socket, for the audit log.
    pub fn socket_actor(&self, socket: SocketId) -> Option<String> {
        let g = self.lock();
        let h = g.sockets.get(&socket)?;
        let name = g
            .rooms
            .values()
            .flat_map(|r| r.admitted.iter())
            .find(|m| m.socket == socket)?
            .participant
            .user_name
            .clone();
        Some(format!("user:{name}/device:{}", h.device_id))
    }

    /// Where admitted sockets leaving their meeting are reported, as (meeting, socket).
    pub fn set_gone(&self, tx: UnboundedSender<(String, SocketId)>) {
        self.lock().gone = Some(tx);
    }

    /// Tests only: see `Config::test_ghosts`.
    pub fn set_test_ghosts(&self, ghosts: Vec<String>) {
        if !ghosts.is_empty() {
            tracing::warn!(
                ?ghosts,
                "TEST MODE: these users are never announced to others"
            );
        }
        self.lock().ghosts = ghosts;
    }

    pub fn set_media(&self, media: crate::media::MediaHandle) {
        let _ = self.media.set(media);
    }

    pub fn media(&self) -> Option<&crate::media::MediaHandle> {
        self.media.get()
    }

    /// The SFU room and level of the meeting an admitted socket is in.
    pub fn media_room(&self, socket: SocketId) -> Option<(u64, MeetingInfo)> {
        let g = self.lock();
        g.rooms.values().find_map(|r| {
            r.admitted
                .iter()
                .any(|m| m.socket == socket)
                .then(|| r.info.clone().map(|i| (r.sfu_room, i)))
                .flatten()
        })
    }

    /// Update what a participant says it sends, or its transport state; everyone is told.
    pub fn update_participant(&self, socket: SocketId, f: impl FnOnce(&mut Participant)) {
        let mut guard = self.lock();
        let g = &mut *guard;
        let mut changed = None;
        for (id, room) in g.rooms.iter_mut() {
            if let Some(m) = room.admitted.iter_mut().find(|m| m.socket == socket) {
                f(&mut m.participant);
                changed = Some(id.clone());
                break;
            }
        }
        if let Some(id) = changed {
            broadcast_participants(g, &id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug in this file; recover the data anyway
        // rather than take the whole server down.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, handle: SocketHandle) -> SocketId {
        let mut g = self.lock();
        g.next_socket += 1;
        let id = g.next_socket;
        g.sockets.insert(id, handle);
        id
    }

    /// Update the session a socket belongs to (after a login on an open socket is not
    /// supported; this exists for unauthenticated sockets, which are not registered).
    pub fn unregister(&self, socket: SocketId) {
        self.drop_media(socket);
        let mut g = self.lock();
        g.sockets.remove(&socket);
        let rooms: Vec<String> = g
            .rooms
            .iter()
            .filter(|(_, r)| {
                r.admitted.iter().any(|m| m.socket == socket && !m.away)
                    || r.lobby.iter().any(|m| m.socket == socket)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for room in rooms {
            remove_from_room(&mut g, &room, socket);
        }
    }

    /// The admitted socket's connection dropped: its media stops now, its place is kept (shown
    /// as away) until [`Hub::expire_away`] or a rejoin from the same device.
    pub fn go_away(&self, meeting_id: &str, socket: SocketId) -> bool {
        self.drop_media(socket);
        let mut g = self.lock();
        let Some(m) = g
            .rooms
            .get_mut(meeting_id)
            .and_then(|r| r.admitted.iter_mut().find(|m| m.socket == socket))
        else {
            return false;
        };
        m.away = true;
        m.participant.away = true;
        m.participant.media_connected = false;
        broadcast_participants(&g, meeting_id);
        true
    }

    /// The grace period of an away member ended: it leaves. False when it came back, or was
    /// removed some other way meanwhile.
    pub fn expire_away(&self, meeting_id: &str, socket: SocketId) -> bool {
        let mut g = self.lock();
        let still_away = g
            .rooms
            .get(meeting_id)
            .is_some_and(|r| r.admitted.iter().any(|m| m.socket == socket && m.away));
        if still_away {
            remove_from_room(&mut g, meeting_id, socket);
        }
        still_away
    }

    /// The participant this (user, device) already has in the meeting: away (its socket
    /// dropped) or still admitted on a socket the server has not yet seen die (a reconnect
    /// that is faster than the server's notice of the drop). Either way the device was
    /// admitted, so it keeps its place.
    pub fn away_member(
        &self,
        meeting_id: &str,
        user_id: &str,
        device_id: &str,
    ) -> Option<Participant> {
        let g = self.lock();
        g.rooms.get(meeting_id).and_then(|r| {
            r.admitted
                .iter()
                .find(|m| m.user_id == user_id && m.device_id == device_id)
                .map(|m| m.participant.clone())
        })
    }

    /// Admitted participants of a meeting (count used by the capacity rule).
    pub fn admitted_count(&self, meeting_id: &str, except_device: &str) -> u32 {
        let g = self.lock();
        g.rooms
            .get(meeting_id)
            .map(|r| {
                r.admitted
                    .iter()
                    .filter(|m| m.device_id != except_device)
                    .count() as u32
            })
            .unwrap_or(0)
    }

    /// The same device already in this meeting (a second tab, or a reconnect) is replaced.
    pub fn replace_device(&self, meeting_id: &str, device_id: &str, socket: SocketId) {
        let mut g = self.lock();
        let old: Vec<SocketId> = g
            .rooms
            .get(meeting_id)
            .map(|r| {
                r.admitted
                    .iter()
                    .chain(&r.lobby)
                    .filter(|m| m.socket != socket && m.device_id == device_id)
                    .map(|m| m.socket)
                    .collect()
            })
            .unwrap_or_default();
        for s in old {
            if let Some(m) = self.media.get() {
                m.remove(s);
            }
            if let Some(h) = g.sockets.get(&s) {
                let _ = h.tx.send(Notice::Ended(RefusalReason::SessionEnded));
            }
            remove_from_room(&mut g, meeting_id, s);
        }
    }

    /// Put a socket into the lobby; hosts are told.
    pub fn enter_lobby(
        &self,
        meeting_id: &str,
        socket: SocketId,
        user_id: &str,
        participant: Participant,
        lobby: LobbyEntry,
    ) {
        let mut g = self.lock();
        let member = Member::new(&g, socket, participant, lobby);
        debug_assert_eq!(member.user_id, user_id);
        let room = room_entry(&mut g, meeting_id);
        room.lobby.push(member);
        notify_hosts(&g, meeting_id);
    }

    /// Admit a socket (directly, or from the lobby by [`Hub::take_from_lobby`]). Returns the
    /// participant list to send it.
    pub fn admit(
        &self,
        meeting_id: &str,
        info: MeetingInfo,
        socket: SocketId,
        user_id: &str,
        participant: Participant,
        lobby: LobbyEntry,
    ) -> Vec<Participant> {
        let mut g = self.lock();
        let member = Member::new(&g, socket, participant, lobby);
        debug_assert_eq!(member.user_id, user_id);
        let ghosts = g.ghosts.clone();
        let room = room_entry(&mut g, meeting_id);
        room.info = Some(info);
        room.lobby.retain(|m| m.socket != socket);
        room.admitted.push(member);
        let list = participants(room, &ghosts);
        broadcast_participants(&g, meeting_id);
        notify_hosts(&g, meeting_id);
        list
    }

    /// Remove a lobby entry (admit or refuse by a host).
    pub fn take_from_lobby(
        &self,
        meeting_id: &str,
        participant_id: &str,
    ) -> Option<(Found, Participant, LobbyEntry)> {
        let mut g = self.lock();
        let room = g.rooms.get_mut(meeting_id)?;
        let pos = room
            .lobby
            .iter()
            .position(|m| m.participant.id == participant_id)?;
        let m = room.lobby.remove(pos);
        let found = found(&g, &m)?;
        notify_hosts(&g, meeting_id);
        Some((found, m.participant, m.lobby))
    }

    /// Find an admitted participant.
    pub fn find_admitted(&self, meeting_id: &str, participant_id: &str) -> Option<Found> {
        let g = self.lock();
        let room = g.rooms.get(meeting_id)?;
        let m = room
            .admitted
            .iter()
            .find(|m| m.participant.id == participant_id)?;
        found(&g, m)
    }

    /// Take a socket out of a meeting (leave, removal, refusal); others are told.
    pub fn leave(&self, meeting_id: &str, socket: SocketId) {
        self.drop_media(socket);
        let mut g = self.lock();
        remove_from_room(&mut g, meeting_id, socket);
    }

    /// Tear down a socket's media transport (idempotent).
    pub fn drop_media(&self, socket: SocketId) {
        if let Some(m) = self.media.get() {
            m.remove(socket);
        }
    }

    pub fn send(&self, socket: SocketId, notice: Notice) {
        let g = self.lock();
        if let Some(h) = g.sockets.get(&socket) {
            let _ = h.tx.send(notice);
        }
    }

    /// Current lobby (for a host that was just admitted).
    pub fn lobby(&self, meeting_id: &str) -> Vec<LobbyEntry> {
        let g = self.lock();
        g.rooms
            .get(meeting_id)
            .map(|r| r.lobby.iter().map(|m| m.lobby.clone()).collect())
            .unwrap_or_default()
    }

    pub fn participants(&self, meeting_id: &str) -> Vec<Participant> {
        let g = self.lock();
        g.rooms
            .get(meeting_id)
            .map(|r| participants(r, &g.ghosts))
            .unwrap_or_default()
    }

    /// Tell everyone in a meeting that it changed (lock state).
    pub fn meeting_changed(&self, info: MeetingInfo) {
        let mut guard = self.lock();
        let g = &mut *guard;
        let Some(room) = g.rooms.get_mut(&info.id) else {
            return;
        };
        room.info = Some(info.clone());
        for m in &room.admitted {
            if let Some(h) = g.sockets.get(&m.socket) {
                let _ = h.tx.send(Notice::Send(ServerMsg::MeetingUpdate {
                    meeting: info.clone(),
                }));
            }
        }
    }

    /// Close every socket matching `pred` with `reason`.
    /// `pred` is asked with (user id, device id, session hash).
    fn close_where(&self, reason: RefusalReason, pred: impl Fn(&str, &str, &str) -> bool) -> usize {
        let mut g = self.lock();
        // Away members of the same sessions lose their place too (no socket to tell).
        let away: Vec<(String, SocketId)> = g
            .rooms
            .iter()
            .flat_map(|(id, r)| {
                r.admitted
                    .iter()
                    .filter(|m| m.away)
                    .filter(|m| pred(&m.user_id, &m.device_id, &m.session_hash))
                    .map(|m| (id.clone(), m.socket))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (meeting, socket) in away {
            remove_from_room(&mut g, &meeting, socket);
        }
        let mut n = 0;
        for (id, h) in g
            .sockets
            .iter()
            .filter(|(_, h)| pred(&h.user_id, &h.device_id, &h.session_hash))
        {
            // Media stops at the decision, before the socket task even wakes up.
            if let Some(m) = self.media.get() {
                m.remove(*id);
            }
            let _ = h.tx.send(Notice::Close(reason));
            n += 1;
        }
        n
    }

    /// Tell the user's other devices and every admin that a device was enrolled.
    pub fn device_added(&self, user_id: &str, device_id: &str, msg: ServerMsg) -> usize {
        let g = self.lock();
        let mut n = 0;
        for h in g.sockets.values() {
            if (h.user_id == user_id && h.device_id != device_id) || h.admin {
                let _ = h.tx.send(Notice::Send(msg.clone()));
                n += 1;
            }
        }
        n
    }

    pub fn close_device(&self, device_id: &str, reason: RefusalReason) -> usize {
        self.close_where(reason, |_, d, _| d == device_id)
    }

    pub fn close_user(&self, user_id: &str, reason: RefusalReason) -> usize {
        self.close_where(reason, |u, _, _| u == user_id)
    }

    pub fn close_session(&self, session_hash: &str, reason: RefusalReason) -> usize {
        self.close_where(reason, |_, _, s| s == session_hash)
    }

    /// Sockets in a meeting as (socket, user id) — used to re-check invitations.
    pub fn members_of(&self, meeting_id: &str) -> Vec<(SocketId, String)> {
        let g = self.lock();
        g.rooms
            .get(meeting_id)
            .map(|r| {
                r.admitted
                    .iter()
                    .chain(&r.lobby)
                    .map(|m| (m.socket, m.user_id.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn room_entry<'a>(g: &'a mut Inner, meeting_id: &str) -> &'a mut Room {
    if !g.rooms.contains_key(meeting_id) {
        g.next_room += 1;
        let sfu_room = g.next_room;
        g.rooms.insert(
            meeting_id.to_string(),
            Room {
                sfu_room,
                ..Room::default()
            },
        );
    }
    g.rooms.get_mut(meeting_id).expect("inserted above")
}

fn found(_g: &Inner, m: &Member) -> Option<Found> {
    Some(Found {
        socket: m.socket,
        user_id: m.user_id.clone(),
        user_name: m.participant.user_name.clone(),
        device_id: m.device_id.clone(),
    })
}

fn participants(room: &Room, ghosts: &[String]) -> Vec<Participant> {
    room.admitted
        .iter()
        .filter(|m| !ghosts.contains(&m.participant.user_name))
        .map(|m| m.participant.clone())
        .collect()
}

fn remove_from_room(g: &mut Inner, meeting_id: &str, socket: SocketId) {
    let Some(room) = g.rooms.get_mut(meeting_id) else {
        return;
    };
    let before = (room.admitted.len(), room.lobby.len());
    if room.admitted.iter().any(|m| m.socket == socket) {
        if let Some(tx) = &g.gone {
            let _ = tx.send((meeting_id.to_string(), socket));
        }
    }
    let Some(room) = g.rooms.get_mut(meeting_id) else {
        return;
    };
    room.admitted.retain(|m| m.socket != socket);
    room.lobby.retain(|m| m.socket != socket);
    let after = (room.admitted.len(), room.lobby.len());
    if room.admitted.is_empty() && room.lobby.is_empty() {
        g.rooms.remove(meeting_id);
        return;
    }
    if before.0 != after.0 {
        broadcast_participants(g, meeting_id);
    }
    if before.1 != after.1 {
        notify_hosts(g, meeting_id);
    }
}

fn broadcast_participants(g: &Inner, meeting_id: &str) {
    let Some(room) = g.rooms.get(meeting_id) else {
        return;
    };
    let list = participants(room, &g.ghosts);
    for m in &room.admitted {
        if let Some(h) = g.sockets.get(&m.socket) {
            let _ = h.tx.send(Notice::Send(ServerMsg::Participants {
                participants: list.clone(),
            }));
        }
    }
}

fn notify_hosts(g: &Inner, meeting_id: &str) {
    let Some(room) = g.rooms.get(meeting_id) else {
        return;
    };
    let waiting: Vec<LobbyEntry> = room.lobby.iter().map(|m| m.lobby.clone()).collect();
    for m in room.admitted.iter().filter(|m| m.participant.host) {
        if let Some(h) = g.sockets.get(&m.socket) {
            let _ = h.tx.send(Notice::Send(ServerMsg::LobbyUpdate {
                waiting: waiting.clone(),
            }));
        }
    }
}
