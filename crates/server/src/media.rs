//! The media edge: owns the UDP sockets and the clock, and drives the sans-IO SFU core
//! (`sealroom-sfu`). Signaling reaches it as commands; what the core decides comes back as
//! events for the socket tasks, routed through the hub.
//!
//! It runs as one or more *shards* (`media_shards`, default 1): each is a task with its own
//! SFU core and UDP socket (shard k on the media port + k), so meetings spread over the
//! runtime's worker threads, one core each at most. A meeting lives on one shard, since its
//! participants forward to each other: the first participant of a meeting places it on the
//! shard with the fewest participants, and it stays there until its last participant's
//! transport goes ([`Placement`]).
//!
//! The SFU participant id of an admitted socket is its hub `SocketId`, so every path out of
//! a meeting (leave, removal, revocation, disconnect) removes its transport through
//! [`MediaHandle::remove`] at the moment of the decision.

use sealroom_proto::{RemoteTrack, Source};
use sealroom_sfu::{
    Event, Input, Output, ParticipantConfig, ParticipantId, RoomId, SdpAnswer, SdpOffer,
    SessionError, Sfu, SfuConfig, SourceFilter,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Socket buffer asked for, each way (the kernel doubles it for its own accounting): about
/// a thousand datagrams, a fraction of a second of a large meeting's ingress. Larger only
/// turns an overload into seconds of delay instead of loss.
const MEDIA_SOCKET_BUFFER: usize = 1 << 20;

/// Datagrams read from the socket per wakeup before the core is drained.
const RECV_BATCH: usize = 32;

/// Datagrams handed to the kernel per `sendmmsg` call, at most. The fan-out makes many
/// datagrams at once (one received packet becomes N - 1), and batching saves the system
/// call's entry and exit for all but one of them; the UDP send and loopback delivery, most
/// of the kernel's share, remain per datagram. Measured on loopback: 0.67 µs less CPU per
/// datagram at 32 per call (4.2 µs with one call each). At audio N = 30 (three runs each):
/// 69 k packets per SFU CPU-second with one call per datagram, 78 k at 8, 86 k at 32.
const SEND_BATCH: usize = 32;

/// How long a queued datagram may wait for its batch to fill. A batch is flushed when full,
/// when its first datagram is this old at the next push, and whenever the core has nothing
/// more to send, so a datagram never waits for an event, only while the core builds the
/// rest of its batch.
const SEND_HOLD: std::time::Duration = std::time::Duration::from_micros(100);

/// What the media edge tells a participant's socket task.
#[derive(Debug)]
pub enum MediaEvent {
    /// Renegotiation offer from the SFU, serialized by whoever sends it, off the media task.
    Offer(Box<SdpOffer>),
    /// The full list of tracks this participant receives, changed.
    Tracks(Vec<RemoteTrack>),
    /// DTLS-SRTP is up.
    Connected,
    /// The media path (first, or changed): re-check the network rule.
    Path(SocketAddr),
    /// A connectivity check came from a source the level refuses (dropped, not used).
    PathRefused(SocketAddr),
    /// The transport failed inside the SFU (peer error, never connected).
    Ended(String),
    /// The peer closed its transport (DTLS close): it is leaving, or restarting its call
    /// after its signaling dropped. Participation is the signaling socket's business.
    Closed,
}

/// Everything needed to add a participant on its first offer.
pub struct Join {
    pub room: u64,
    pub participant_id: String,
    pub audio_level: bool,
    pub filter: SourceFilter,
}

/// SDP reaches the media task parsed and leaves it unserialized: the text work grows with
/// the meeting (an m-line per track: a participant's answer in a meeting of 12 costs about
/// 4 M instructions to parse, and a join renegotiates with everyone in the room), and on
/// the media task it would hold up every participant's forwarding. [`MediaHandle`] does it in
/// the calling task (a participant's signaling), so with more than one runtime worker the
/// media task goes on forwarding on another. Not on a thread of its own: every thread that
/// parses keeps its own malloc arena and stack pages, and a dedicated thread (or tokio's
/// blocking pool) raised the private memory per participant at video N = 12 from about 640
/// to 730–1000 KiB.
enum Cmd {
    Offer {
        socket: u64,
        join: Option<Join>,
        offer: Box<SdpOffer>,
        sources: Vec<(String, Source)>,
        reply: oneshot::Sender<Result<Box<SdpAnswer>, String>>,
    },
    Answer {
        socket: u64,
        answer: Box<SdpAnswer>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Remove {
        socket: u64,
    },
}

/// Commands to the media shards, each routed to the shard of the participant's meeting.
#[derive(Clone, Debug)]
pub struct MediaHandle {
    shards: Arc<[Shard]>,
    placement: Arc<Mutex<Placement>>,
}

/// One media shard: its task's command queue and its socket's addresses.
#[derive(Debug)]
struct Shard {
    tx: mpsc::UnboundedSender<Cmd>,
    /// The UDP address its media arrives at.
    local: SocketAddr,
    /// The address it advertises as the ICE host candidate.
    advertised: SocketAddr,
}

/// Which shard each meeting (SFU room) and each participant's transport is on.
///
/// Plain bookkeeping under a lock, done in the signaling task that sends the command, so a
/// participant's commands always reach the shard it was placed on, in order.
#[derive(Debug)]
struct Placement {
    /// Transports placed on each shard.
    load: Vec<usize>,
    /// Meeting → (shard, transports placed with it).
    rooms: HashMap<u64, (usize, usize)>,
    /// Transport (signaling socket id) → (shard, meeting).
    sockets: HashMap<u64, (usize, u64)>,
}

impl Placement {
    fn new(shards: usize) -> Placement {
        Placement {
            load: vec![0; shards.max(1)],
            rooms: HashMap::new(),
            sockets: HashMap::new(),
        }
    }

    /// The shard of `socket`, placing it with its meeting if it is not placed yet: on the
    /// meeting's shard, or for a meeting with nobody placed, on the least loaded shard (the
    /// lowest index of equals).
    fn place(&mut self, socket: u64, room: u64) -> usize {
        if let Some((shard, _)) = self.sockets.get(&socket) {
            return *shard;
        }
        let load = &self.load;
        let entry = self.rooms.entry(room).or_insert_with(|| {
            let least = (0..load.len()).min_by_key(|k| load[*k]).unwrap_or(0);
            (least, 0)
        });
        entry.1 += 1;
        let shard = entry.0;
        self.load[shard] += 1;
        self.sockets.insert(socket, (shard, room));
        shard
    }

    fn shard_of(&self, socket: u64) -> Option<usize> {
        self.sockets.get(&socket).map(|(shard, _)| *shard)
    }

    /// Forget `socket`; its meeting is forgotten with its last transport, so it may be
    /// placed afresh next time.
    fn release(&mut self, socket: u64) -> Option<usize> {
        let (shard, room) = self.sockets.remove(&socket)?;
        self.load[shard] -= 1;
        if let std::collections::hash_map::Entry::Occupied(mut e) = self.rooms.entry(room) {
            e.get_mut().1 -= 1;
            if e.get().1 == 0 {
                e.remove();
            }
        }
        Some(shard)
    }
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("media command")
    }
}

impl MediaHandle {
    /// Apply an offer (adding the participant on the first one); returns the answer.
    pub async fn offer(
        &self,
        socket: u64,
        join: Option<Join>,
        sdp: String,
        sources: Vec<(String, Source)>,
    ) -> Result<String, String> {
        let pid = ParticipantId(socket);
        let offer = sealroom_sfu::parse_offer(pid, &sdp).map_err(|e| e.to_string())?;
        let offer = Box::new(offer);
        let shard = {
            let mut placement = self.lock();
            match &join {
                Some(j) => placement.place(socket, j.room),
                None => placement.shard_of(socket).ok_or(NO_SESSION)?,
            }
        };
        let (reply, rx) = oneshot::channel();
        self.shards[shard]
            .tx
            .send(Cmd::Offer {
                socket,
                join,
                offer,
                sources,
                reply,
            })
            .map_err(|_| "media is not running".to_string())?;
        let answer = rx.await.map_err(|_| "media is not running".to_string())??;
        Ok(answer.to_sdp_string())
    }

    pub async fn answer(&self, socket: u64, sdp: String) -> Result<(), String> {
        let pid = ParticipantId(socket);
        let answer = sealroom_sfu::parse_answer(pid, &sdp).map_err(|e| e.to_string())?;
        let answer = Box::new(answer);
        let shard = self.lock().shard_of(socket).ok_or(NO_SESSION)?;
        let (reply, rx) = oneshot::channel();
        self.shards[shard]
            .tx
            .send(Cmd::Answer {
                socket,
                answer,
                reply,
            })
            .map_err(|_| "media is not running".to_string())?;
        rx.await.map_err(|_| "media is not running".to_string())?
    }

    /// Tear the participant's transport down now (idempotent).
    pub fn remove(&self, socket: u64) {
        if let Some(shard) = self.lock().release(socket) {
            let _ = self.shards[shard].tx.send(Cmd::Remove { socket });
        }
    }

    /// Each shard's (local, advertised) UDP address, by shard.
    pub fn addresses(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.shards
            .iter()
            .map(|s| (s.local, s.advertised))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Placement> {
        // The bookkeeping is consistent after every statement that can panic.
        self.placement.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A command for a participant that has no media transport (never offered, or removed).
const NO_SESSION: &str = "no media session";

/// One entry of a participant's track list as last sent: which publisher's source its
/// receiving mid carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SentTrack {
    mid: sealroom_sfu::Mid,
    publisher: u64,
    source: Source,
}

struct Part {
    participant_id: String,
    /// What each of its sending mids carries.
    sources: HashMap<String, Source>,
    /// The track list last sent to it, by mid.
    sent_tracks: Vec<SentTrack>,
}

/// Bind the shards' UDP sockets and start their tasks. Shard k listens on `bind`'s port + k
/// and advertises `advertise`'s port + k (with port 0, each takes a free port). Events go to
/// `events` as (socket, event).
pub async fn start(
    bind: SocketAddr,
    advertise: Option<SocketAddr>,
    shards: usize,
    connect_timeout: std::time::Duration,
    events: mpsc::UnboundedSender<(u64, MediaEvent)>,
) -> anyhow::Result<MediaHandle> {
    let shards = shards.max(1);
    let mut started = Vec::with_capacity(shards);
    for k in 0..shards {
        let socket = bind_media(shard_address(bind, k)?)?;
        let local = socket.local_addr()?;
        let advertised = match advertise {
            Some(a) => shard_address(a, k)?,
            None => local,
        };
        if advertised.ip().is_unspecified() {
            anyhow::bail!(
                "media is bound to {local}: set an address to advertise to clients (--media-advertise)"
            );
        }
        let mut config = SfuConfig::new(vec![advertised]);
        config.connect_timeout = connect_timeout;
        let sfu = Sfu::new(config).map_err(|e| anyhow::anyhow!("SFU: {e}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(sfu, socket, advertised, rx, events.clone()));
        started.push(Shard {
            tx,
            local,
            advertised,
        });
    }
    Ok(MediaHandle {
        shards: started.into(),
        placement: Arc::new(Mutex::new(Placement::new(shards))),
    })
}

/// Shard k's address: `base` with its port + k (port 0 stays 0: any free port).
fn shard_address(base: SocketAddr, k: usize) -> anyhow::Result<SocketAddr> {
    if base.port() == 0 {
        return Ok(base);
    }
    let port = u16::try_from(usize::from(base.port()) + k).map_err(|_| {
        anyhow::anyhow!("media shard {k}: port {} + {k} is past 65535", base.port())
    })?;
    Ok(SocketAddr::new(base.ip(), port))
}

/// The media socket, with socket buffers sized for a large meeting. The kernel's default
/// receive buffer (208 KiB, about 90 small datagrams by the kernel's accounting) overflowed
/// while the SFU fanned out one batch of a 33-person meeting, and every lost ingress packet
/// then stalled its stream: the meeting collapsed at under 70 % CPU. The kernel caps the
/// request at `net.core.rmem_max` / `wmem_max`; what it granted is logged.
fn bind_media(bind: SocketAddr) -> anyhow::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = s.set_recv_buffer_size(MEDIA_SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(MEDIA_SOCKET_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&bind.into())?;
    let (recv, send) = (s.recv_buffer_size()?, s.send_buffer_size()?);
    if recv < MEDIA_SOCKET_BUFFER {
        tracing::warn!(
            granted = recv,
            wanted = MEDIA_SOCKET_BUFFER,
            "media socket receive buffer capped by net.core.rmem_max: large meetings may lose packets"
        );
    }
    tracing::debug!(recv, send, "media socket buffers");
    Ok(UdpSocket::from_std(s.into())?)
}

async fn run(
    mut sfu: Sfu,
    socket: UdpSocket,
    advertised: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<(u64, MediaEvent)>,
) {
    let mut parts: HashMap<u64, Part> = HashMap::new();
    let mut buf = vec![0u8; 2000];
    let mut outbox = Outbox::default();
    loop {
        let deadline = drain(&mut sfu, &socket, &mut outbox, &mut parts, &events);
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, source)) = r {
                    let now = Instant::now();
                    sfu.handle_input(now, Input::Receive { source, destination: advertised, contents: &buf[..n] });
                    // Take what else is already queued before draining once: the core then
                    // polls each touched session once for the whole batch.
                    for _ in 1..RECV_BATCH {
                        let Ok((n, source)) = socket.try_recv_from(&mut buf) else { break };
                        sfu.handle_input(now, Input::Receive { source, destination: advertised, contents: &buf[..n] });
                    }
                }
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                apply(&mut sfu, &mut parts, cmd);
                // Negotiation may have opened or stopped tracks: refresh the mappings.
                send_tracks(&sfu, &mut parts, &events);
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                sfu.handle_timeout(Instant::now());
            }
        }
    }
}

fn apply(sfu: &mut Sfu, parts: &mut HashMap<u64, Part>, cmd: Cmd) {
    let now = Instant::now();
    match cmd {
        Cmd::Offer {
            socket,
            join,
            offer,
            sources,
            reply,
        } => {
            let pid = ParticipantId(socket);
            if let Some(j) = join {
                if let std::collections::hash_map::Entry::Vacant(slot) = parts.entry(socket) {
                    let cfg = ParticipantConfig::new(RoomId(j.room))
                        .with_audio_level(j.audio_level)
                        .with_source_filter(j.filter);
                    if let Err(e) = sfu.add_participant(now, pid, cfg) {
                        let _ = reply.send(Err(e.to_string()));
                        return;
                    }
                    slot.insert(Part {
                        participant_id: j.participant_id,
                        sources: HashMap::new(),
                        sent_tracks: vec![],
                    });
                }
            }
            let Some(part) = parts.get_mut(&socket) else {
                let _ = reply.send(Err(NO_SESSION.into()));
                return;
            };
            part.sources = sources.into_iter().collect();
            let _ = reply.send(
                sfu.accept_offer(now, pid, *offer)
                    .map(Box::new)
                    .map_err(|e| e.to_string()),
            );
        }
        Cmd::Answer {
            socket,
            answer,
            reply,
        } => {
            let _ = reply.send(
                sfu.accept_answer(ParticipantId(socket), *answer)
                    .map_err(|e| e.to_string()),
            );
        }
        Cmd::Remove { socket } => {
            if parts.remove(&socket).is_some() {
                let _ = sfu.remove_participant(now, ParticipantId(socket));
            }
        }
    }
}

/// Send what the core wants sent, route its events, and return when to wake it next.
fn drain(
    sfu: &mut Sfu,
    socket: &UdpSocket,
    outbox: &mut Outbox,
    parts: &mut HashMap<u64, Part>,
    events: &mpsc::UnboundedSender<(u64, MediaEvent)>,
) -> Instant {
    let mut tracks_changed = false;
    let deadline = loop {
        let now = Instant::now();
        match sfu.poll_output(now) {
            Output::Transmit {
                destination,
                contents,
                ..
            } => outbox.push(socket, now, destination, contents),
            Output::Event(e) => match e {
                Event::Offer { participant, offer } => {
                    tracks_changed = true;
                    let _ = events.send((participant.0, MediaEvent::Offer(Box::new(offer))));
                }
                Event::Connected { participant } => {
                    let _ = events.send((participant.0, MediaEvent::Connected));
                }
                Event::PathSelected {
                    participant,
                    remote,
                    ..
                } => {
                    let _ = events.send((participant.0, MediaEvent::Path(remote)));
                }
                Event::PathRefused {
                    participant,
                    remote,
                } => {
                    let _ = events.send((participant.0, MediaEvent::PathRefused(remote)));
                }
                Event::SessionEnded {
                    participant,
                    reason,
                } => {
                    parts.remove(&participant.0);
                    let event = if reason == SessionError::ClosedByPeer {
                        MediaEvent::Closed
                    } else {
                        MediaEvent::Ended(format!("{reason:?}"))
                    };
                    let _ = events.send((participant.0, event));
                }
                Event::TrackPublished { .. } | Event::TrackUnpublished { .. } => {
                    tracks_changed = true
                }
                _ => {}
            },
            Output::Timeout(t) => break t,
        }
    };
    outbox.flush(socket);
    if tracks_changed {
        send_tracks(sfu, parts, events);
    }
    deadline
}

/// Datagrams waiting to be handed to the kernel together (see [`SEND_BATCH`]).
#[derive(Default)]
struct Outbox {
    queue: Vec<(SocketAddr, Vec<u8>)>,
    /// When the first queued datagram was queued.
    since: Option<Instant>,
}

impl Outbox {
    fn push(&mut self, socket: &UdpSocket, now: Instant, to: SocketAddr, contents: Vec<u8>) {
        let since = *self.since.get_or_insert(now);
        self.queue.push((to, contents));
        if self.queue.len() >= SEND_BATCH || now.saturating_duration_since(since) >= SEND_HOLD {
            self.flush(socket);
        }
    }

    /// Hand every queued datagram to the kernel. One that the kernel refuses (a full socket
    /// buffer, an unreachable destination) is dropped, as the network would drop it, and
    /// the rest still go.
    fn flush(&mut self, socket: &UdpSocket) {
        let mut at = 0;
        while at < self.queue.len() {
            match send_batch(socket, &self.queue[at..]) {
                Ok(sent) => at += sent.max(1),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => at += 1,
            }
        }
        self.queue.clear();
        self.since = None;
    }
}

/// One `sendmmsg(2)`: returns how many datagrams from the front of `batch` the kernel took.
/// It stops at the first one it refuses; that one's error is returned when it is the first.
fn send_batch(socket: &UdpSocket, batch: &[(SocketAddr, Vec<u8>)]) -> std::io::Result<usize> {
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
    use std::io::IoSlice;
    // The headers point into these, so they are built per call (the media task cannot
    // keep them across an await); small allocations next to the system calls they save.
    let addresses: Vec<SocketAddrAny> =
        batch.iter().map(|(a, _)| SocketAddrAny::from(*a)).collect();
    let slices: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|(_, c)| [IoSlice::new(c)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = batch
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut headers: Vec<MMsgHdr<'_>> = addresses
        .iter()
        .zip(&slices)
        .zip(controls.iter_mut())
        .map(|((a, s), c)| MMsgHdr::new_with_addr(a, s, c))
        .collect();
    Ok(rustix::net::sendmmsg(
        socket,
        &mut headers,
        SendFlags::empty(),
    )?)
}

/// Tell each participant which of its receiving mids carries whose source, when it changed.
///
/// Runs after every negotiation step, over every participant: while a newcomer joins a
/// meeting of N, each of the N members renegotiates. So each list is first compared as
/// (mid, publisher, source) values, without allocating, and the text the socket task sends
/// is only built for a list that changed (building every list each time, with two strings per
/// track, was a tenth of the SFU process's CPU while 8 joined a meeting of 16).
fn send_tracks(
    sfu: &Sfu,
    parts: &mut HashMap<u64, Part>,
    events: &mpsc::UnboundedSender<(u64, MediaEvent)>,
) {
    let mut changed = Vec::new();
    let mut list = Vec::new();
    for (socket, part) in parts.iter() {
        let Some(info) = sfu.participant(ParticipantId(*socket)) else {
            continue;
        };
        list.clear();
        list.extend(info.subscriptions.iter().filter_map(|s| {
            let mid = s.mid?;
            let publisher = parts.get(&s.track.publisher.0)?;
            let source = publisher
                .sources
                .get(&*s.track.mid)
                .copied()
                .unwrap_or(match s.kind {
                    sealroom_sfu::MediaKind::Audio => Source::Microphone,
                    sealroom_sfu::MediaKind::Video => Source::Camera,
                });
            Some(SentTrack {
                mid,
                publisher: s.track.publisher.0,
                source,
            })
        }));
        // By the mid as text, as the list was sent before (a mid is unique in a session).
        list.sort_unstable_by(|a, b| Ord::cmp(&*a.mid, &*b.mid));
        if list != part.sent_tracks {
            changed.push((*socket, list.clone()));
        }
    }
    for (socket, list) in changed {
        let tracks = list
            .iter()
            .filter_map(|t| {
                Some(RemoteTrack {
                    mid: t.mid.to_string(),
                    participant_id: parts.get(&t.publisher)?.participant_id.clone(),
                    source: t.source,
                })
            })
            .collect();
        if let Some(part) = parts.get_mut(&socket) {
            part.sent_tracks = list;
        }
        let _ = events.send((socket, MediaEvent::Tracks(tracks)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn bound() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.expect("bind")
    }

    async fn receive(socket: &UdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
            .await
            .expect("a datagram arrives")
            .expect("receive");
        buf[..n].to_vec()
    }

    #[test]
    fn a_meeting_stays_on_one_shard_and_new_meetings_go_to_the_least_loaded() {
        let mut p = Placement::new(3);
        // Meeting 7 opens on shard 0 (all empty: the lowest index); its members follow it.
        assert_eq!(p.place(1, 7), 0);
        assert_eq!(p.place(2, 7), 0);
        assert_eq!(p.place(3, 7), 0);
        // New meetings go to the emptiest shard.
        assert_eq!(p.place(4, 8), 1);
        assert_eq!(p.place(5, 9), 2);
        assert_eq!(p.place(6, 9), 2);
        assert_eq!(
            p.place(7, 10),
            1,
            "shard 1 has 1, shard 2 has 2, shard 0 has 3"
        );
        // Placing a placed transport again changes nothing, whatever meeting it names.
        assert_eq!(p.place(1, 10), 0);
        assert_eq!(p.load, vec![3, 2, 2]);
        assert_eq!(p.shard_of(5), Some(2));
        assert_eq!(p.shard_of(99), None);
    }

    #[test]
    fn a_meeting_is_forgotten_with_its_last_transport() {
        let mut p = Placement::new(2);
        assert_eq!(p.place(1, 7), 0);
        assert_eq!(p.place(2, 7), 0);
        assert_eq!(p.place(3, 8), 1);
        assert_eq!(p.release(1), Some(0));
        assert_eq!(p.release(1), None, "release is idempotent");
        assert_eq!(p.shard_of(1), None);
        // Meeting 7 still has a member on shard 0: a newcomer joins it there, though shard 0
        // and 1 are equally loaded.
        assert_eq!(p.place(4, 7), 0);
        assert_eq!(p.release(2), Some(0));
        assert_eq!(p.release(4), Some(0));
        assert!(!p.rooms.contains_key(&7));
        assert_eq!(p.load, vec![0, 1]);
        // Empty now, meeting 7 is placed afresh: on the emptiest shard.
        assert_eq!(p.place(5, 8), 1);
        assert_eq!(p.place(6, 7), 0);
        assert_eq!(p.release(3), Some(1));
        assert_eq!(p.release(5), Some(1));
        assert_eq!(p.place(9, 7), 0, "meeting 7 stays where its member is");
        assert!(p.sockets.len() == 2 && p.rooms.len() == 1);
    }

    #[test]
    fn shard_ports_follow_the_base_port() {
        let base: SocketAddr = "127.0.0.1:8443".parse().expect("address");
        assert_eq!(shard_address(base, 0).expect("fits"), base);
        assert_eq!(
            shard_address(base, 3).expect("fits"),
            "127.0.0.1:8446".parse::<SocketAddr>().expect("address")
        );
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        assert_eq!(shard_address(any, 5).expect("any port"), any);
        let last: SocketAddr = "127.0.0.1:65535".parse().expect("address");
        let e = shard_address(last, 1).expect_err("past the last port");
        assert!(e.to_string().contains("past 65535"), "{e}");
    }

    #[tokio::test]
    async fn batches_reach_every_destination_in_order() {
        let sender = bound().await;
        let receivers = [bound().await, bound().await, bound().await];
        let mut outbox = Outbox::default();
        let now = Instant::now();
        // More than two batches: two flushes when full, one for the rest.
        let count = 2 * SEND_BATCH + 5;
        for i in 0..count {
            let to = receivers[i % 3].local_addr().expect("address");
            outbox.push(&sender, now, to, format!("datagram {i}").into_bytes());
        }
        assert_eq!(outbox.queue.len(), 5, "full batches went out at once");
        outbox.flush(&sender);
        assert!(outbox.queue.is_empty());
        for i in 0..count {
            let got = receive(&receivers[i % 3]).await;
            assert_eq!(got, format!("datagram {i}").into_bytes());
        }
    }

    #[tokio::test]
    async fn a_refused_datagram_does_not_drop_the_rest_of_its_batch() {
        let sender = bound().await;
        let receiver = bound().await;
        let to = receiver.local_addr().expect("address");
        // The kernel refuses UDP to port 0 (EINVAL) and an IPv6 destination on an IPv4
        // socket; each is dropped alone, as the network would drop it.
        let refused_port: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let refused_family: SocketAddr = "[::1]:9".parse().expect("address");
        let mut outbox = Outbox::default();
        let now = Instant::now();
        outbox.push(&sender, now, refused_port, b"never".to_vec());
        outbox.push(&sender, now, to, b"first".to_vec());
        outbox.push(&sender, now, refused_family, b"never".to_vec());
        outbox.push(&sender, now, refused_port, b"never".to_vec());
        outbox.push(&sender, now, to, b"second".to_vec());
        outbox.flush(&sender);
        assert_eq!(receive(&receiver).await, b"first");
        assert_eq!(receive(&receiver).await, b"second");
        assert!(outbox.queue.is_empty());
    }

    #[tokio::test]
    async fn a_datagram_waits_no_longer_than_the_hold() {
        let sender = bound().await;
        let receiver = bound().await;
        let to = receiver.local_addr().expect("address");
        let start = Instant::now();
        let mut outbox = Outbox::default();
        outbox.push(&sender, start, to, b"first".to_vec());
        outbox.push(&sender, start + SEND_HOLD / 2, to, b"second".to_vec());
        assert_eq!(outbox.queue.len(), 2, "the batch is still young");
        outbox.push(&sender, start + SEND_HOLD, to, b"third".to_vec());
        assert!(
            outbox.queue.is_empty(),
            "the first datagram waited the hold: all went"
        );
        assert_eq!(receive(&receiver).await, b"first");
        assert_eq!(receive(&receiver).await, b"second");
        assert_eq!(receive(&receiver).await, b"third");
        // The next batch starts its own clock.
        outbox.push(&sender, start + 3 * SEND_HOLD, to, b"fourth".to_vec());
        assert_eq!(outbox.queue.len(), 1);
    }
}
