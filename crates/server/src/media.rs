//! The media edge: owns the one UDP socket and the clock, and drives the sans-IO SFU core
//! (`sealroom-sfu`). Signaling reaches it as commands; what the core decides comes back as
//! events for the socket tasks, routed through the hub.
//!
//! The SFU participant id of an admitted socket is its hub `SocketId`, so every path out of
//! a meeting (leave, removal, revocation, disconnect) removes its transport through
//! [`MediaHandle::remove`] at the moment of the decision.

use sealroom_proto::{RemoteTrack, Source};
use sealroom_sfu::{
    Event, Input, Output, ParticipantConfig, ParticipantId, RoomId, SessionError, Sfu, SfuConfig,
    SourceFilter,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Socket buffer asked for, each way (the kernel doubles it for its own accounting): about
/// a thousand datagrams, a fraction of a second of a large meeting's ingress. Larger only
/// turns an overload into seconds of delay instead of loss.
const MEDIA_SOCKET_BUFFER: usize = 1 << 20;

/// Datagrams read from the socket per wakeup before the core is drained.
const RECV_BATCH: usize = 32;

/// What the media edge tells a participant's socket task.
#[derive(Debug, Clone)]
pub enum MediaEvent {
    /// Renegotiation offer from the SFU.
    Offer(String),
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

enum Cmd {
    Offer {
        socket: u64,
        join: Option<Join>,
        sdp: String,
        sources: Vec<(String, Source)>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Answer {
        socket: u64,
        sdp: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Remove {
        socket: u64,
    },
}

/// Commands to the media task.
#[derive(Clone, Debug)]
pub struct MediaHandle {
    tx: mpsc::UnboundedSender<Cmd>,
    /// The UDP address media arrives at.
    pub local: SocketAddr,
    /// The address advertised as the ICE host candidate.
    pub advertised: SocketAddr,
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
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Offer {
                socket,
                join,
                sdp,
                sources,
                reply,
            })
            .map_err(|_| "media is not running".to_string())?;
        rx.await.map_err(|_| "media is not running".to_string())?
    }

    pub async fn answer(&self, socket: u64, sdp: String) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Answer { socket, sdp, reply })
            .map_err(|_| "media is not running".to_string())?;
        rx.await.map_err(|_| "media is not running".to_string())?
    }

    /// Tear the participant's transport down now (idempotent).
    pub fn remove(&self, socket: u64) {
        let _ = self.tx.send(Cmd::Remove { socket });
    }
}

struct Part {
    room: u64,
    participant_id: String,
    /// What each of its sending mids carries.
    sources: HashMap<String, Source>,
    /// The track list last sent to it.
    sent_tracks: Vec<RemoteTrack>,
}

/// Bind the UDP socket and start the media task. Events go to `events` as (socket, event).
pub async fn start(
    bind: SocketAddr,
    advertise: Option<SocketAddr>,
    connect_timeout: std::time::Duration,
    events: mpsc::UnboundedSender<(u64, MediaEvent)>,
) -> anyhow::Result<MediaHandle> {
    let socket = bind_media(bind)?;
    let local = socket.local_addr()?;
    let advertised = advertise.unwrap_or(local);
    if advertised.ip().is_unspecified() {
        anyhow::bail!(
            "media is bound to {local}: set an address to advertise to clients (--media-advertise)"
        );
    }
    let mut config = SfuConfig::new(vec![advertised]);
    config.connect_timeout = connect_timeout;
    let sfu = Sfu::new(config).map_err(|e| anyhow::anyhow!("SFU: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(sfu, socket, advertised, rx, events));
    Ok(MediaHandle {
        tx,
        local,
        advertised,
    })
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
    loop {
        let deadline = drain(&mut sfu, &socket, &mut parts, &events).await;
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
            sdp,
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
                        room: j.room,
                        participant_id: j.participant_id,
                        sources: HashMap::new(),
                        sent_tracks: vec![],
                    });
                }
            }
            let Some(part) = parts.get_mut(&socket) else {
                let _ = reply.send(Err("no media session".into()));
                return;
            };
            part.sources = sources.into_iter().collect();
            let _ = reply.send(sfu.accept_offer(now, pid, &sdp).map_err(|e| e.to_string()));
        }
        Cmd::Answer { socket, sdp, reply } => {
            let _ = reply.send(
                sfu.accept_answer(ParticipantId(socket), &sdp)
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
async fn drain(
    sfu: &mut Sfu,
    socket: &UdpSocket,
    parts: &mut HashMap<u64, Part>,
    events: &mpsc::UnboundedSender<(u64, MediaEvent)>,
) -> Instant {
    let mut tracks_changed = false;
    let deadline = loop {
        match sfu.poll_output(Instant::now()) {
            Output::Transmit {
                destination,
                contents,
                ..
            } => {
                // A full socket buffer drops the datagram, as the network would.
                let _ = socket.try_send_to(&contents, destination);
            }
            Output::Event(e) => match e {
                Event::Offer { participant, sdp } => {
                    tracks_changed = true;
                    let _ = events.send((participant.0, MediaEvent::Offer(sdp)));
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
    if tracks_changed {
        send_tracks(sfu, parts, events);
    }
    deadline
}

/// Tell each participant which of its receiving mids carries whose source, when it changed.
fn send_tracks(
    sfu: &Sfu,
    parts: &mut HashMap<u64, Part>,
    events: &mpsc::UnboundedSender<(u64, MediaEvent)>,
) {
    let lookup: HashMap<u64, (String, HashMap<String, Source>)> = parts
        .iter()
        .map(|(k, p)| (*k, (p.participant_id.clone(), p.sources.clone())))
        .collect();
    for (socket, part) in parts.iter_mut() {
        let Some(info) = sfu.participant(ParticipantId(*socket)) else {
            continue;
        };
        let mut tracks: Vec<RemoteTrack> =
            info.subscriptions
                .iter()
                .filter_map(|s| {
                    let mid = s.mid?;
                    let (pid, sources) = lookup.get(&s.track.publisher.0)?;
                    let source = sources
                        .get(&s.track.mid.to_string())
                        .copied()
                        .unwrap_or(match s.kind {
                            sealroom_sfu::MediaKind::Audio => Source::Microphone,
                            sealroom_sfu::MediaKind::Video => Source::Camera,
                        });
                    Some(RemoteTrack {
                        mid: mid.to_string(),
                        participant_id: pid.clone(),
                        source,
                    })
                })
                .collect();
        tracks.sort_by(|a, b| a.mid.cmp(&b.mid));
        let _ = part.room;
        if tracks != part.sent_tracks {
            part.sent_tracks = tracks.clone();
            let _ = events.send((*socket, MediaEvent::Tracks(tracks)));
        }
    }
}
