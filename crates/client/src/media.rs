//! Media for the native client: one str0m [`Rtc`] on a real UDP socket, driven by one tokio
//! task that also owns the signaling WebSocket (it is one stream, so one reader).
//!
//! The task publishes synthetic media — a looped 1 s Opus tone (microphone) every 20 ms and a
//! looped 2 s VP8 stream (camera, 320×240) every 33 ms, both pre-encoded by `assets/make.sh` —
//! answers every renegotiation offer of the SFU, keeps the `media_tracks` mapping, and counts
//! what it receives. Signaling messages that are not about media or MLS go to the caller
//! through [`MediaSession::next_event`]; the caller sends through [`MediaSession::send`].
//!
//! Every frame is end-to-end encrypted ([`crate::e2ee`]): once admitted, the task runs the MLS
//! member of the meeting's group over the same signaling socket; each outgoing frame is
//! SFrame-encrypted with the current epoch's key under its source's KID before str0m sees it,
//! and nothing is sent before there is a key. Each incoming frame is decrypted; what fails is
//! dropped and counted by reason, what decrypts is counted per sender and source as its KID
//! names them (leaf → credential → the server's participant with that device), never as
//! signaling labels the transceiver. The per-transceiver counts in [`MediaStats::tracks`] are
//! the transport's view (ciphertext, labelled by the SFU).
//!
//! The loop is str0m's: drain `poll_output` until it returns a timeout that is not due yet
//! (due ones run in place, [`poll_rtc`]), then wait for the
//! first of a datagram, a signaling message, a command, that timeout or the next media frame,
//! and feed it in with `Instant::now()`. Datagrams from any address other than the SFU's
//! candidates in its answer never reach str0m.
//!
//! A removal, refusal or `leave` does not tear the transport down here: the server must cut
//! it, and tests measure exactly that. [`MediaSession::stop`] ends it.

use crate::e2ee::{self, E2eeStats, SenderStats};
use crate::{Error, Result, Signaling};
use sealroom_e2ee::sframe::Codec as FrameCodec;
use sealroom_proto::{ClientMsg, MediaSource, Participant, RemoteTrack, ServerMsg, Source};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt, Rid};
use str0m::media::{Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::assets::{OpusLoop, Vp8Loop};

/// Audio frame interval (one Opus packet holds 20 ms).
const AUDIO_EVERY: Duration = Duration::from_millis(20);
/// Video frame interval (about 30 fps).
const VIDEO_EVERY: Duration = Duration::from_millis(33);
/// Simulcast layers sent when [`MediaOptions::simulcast`] is set (all carry the same stream).
const SIMULCAST_RIDS: [&str; 3] = ["l", "m", "h"];

/// Due timer passes [`poll_rtc`] runs in place per drain before it hands a due timeout back.
const INLINE_TIMER_ROUNDS: u32 = 64;

/// [`Rtc::poll_output`], with timers that are already due run in place instead of returned.
///
/// str0m releases queued media one timer pass at a time: its pacer asks for an immediate
/// timeout after each packet it lets go, and with no pacer it still sends one simulcast
/// layer per pass. A round trip through tokio's timer (1 ms resolution) for each pass spaced
/// the layers of one frame, and the packets of a paced frame, about 1 ms apart: the last
/// layer of every frame left 2 ms late. `rounds` counts the passes of one drain (start it at
/// 0); after [`INLINE_TIMER_ROUNDS`] a due timeout is returned, so a session that is always
/// due cannot starve the socket and the caller's other inputs.
pub fn poll_rtc(rtc: &mut Rtc, rounds: &mut u32) -> std::result::Result<Output, str0m::RtcError> {
    loop {
        match rtc.poll_output()? {
            Output::Timeout(t) => {
                let now = Instant::now();
                if t > now || *rounds >= INLINE_TIMER_ROUNDS {
                    return Ok(Output::Timeout(t));
                }
                *rounds += 1;
                rtc.handle_input(Input::Timeout(now))?;
            }
            other => return Ok(other),
        }
    }
}

/// What to publish and where to bind.
#[derive(Debug, Clone)]
pub struct MediaOptions {
    /// Local UDP address to bind (default `127.0.0.1:0`).
    pub bind: SocketAddr,
    /// Address advertised as the ICE host candidate (default: the bound address; required
    /// when binding an unspecified address).
    pub advertise: Option<SocketAddr>,
    /// Publish the microphone (Opus).
    pub audio: bool,
    /// Publish the camera (VP8).
    pub video: bool,
    /// Send the camera as three simulcast layers (`l`, `m`, `h`, the same frames on each).
    pub simulcast: bool,
    /// The instant first-frame times are measured from (usually: when `join` was sent).
    pub since: Instant,
    /// A file of server identity keys pinned per origin (docs/E2EE.md §2). Without one the key
    /// is trusted on first use for this session only.
    pub server_key_pins: Option<PathBuf>,
    /// The periodic MLS key update of the designated committer.
    pub key_update_every: Duration,
    /// Seed of the commit backoff (random when `None`).
    pub rng_seed: Option<u64>,
    /// Keep the last this many received frame payloads as they arrived, before decryption
    /// ([`MediaSession::tapped`]); 0 keeps none.
    pub tap_frames: usize,
}

impl Default for MediaOptions {
    fn default() -> Self {
        MediaOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            audio: true,
            video: true,
            simulcast: false,
            since: Instant::now(),
            server_key_pins: None,
            key_update_every: e2ee::KEY_UPDATE_EVERY,
            rng_seed: None,
            tap_frames: 0,
        }
    }
}

/// What arrived on one remote track.
#[derive(Debug, Clone)]
pub struct TrackStats {
    /// Our receiving transceiver.
    pub mid: String,
    /// The publisher, by its participant id (in [`MediaStats::tracks`]: from `media_tracks`,
    /// the SFU's label; in [`MediaStats::by_source`]: from the frames' KIDs). Empty if unknown.
    pub participant_id: String,
    pub source: Option<Source>,
    pub frames: u64,
    pub bytes: u64,
    /// From [`MediaOptions::since`] to the first frame.
    pub first_frame_after: Option<Duration>,
    pub last_frame_at: Option<Instant>,
}

/// A received frame as it arrived, before decryption.
#[derive(Debug, Clone)]
pub struct TappedFrame {
    pub mid: String,
    pub codec: FrameCodec,
    pub payload: Vec<u8>,
    pub at: Instant,
}

/// A snapshot of the session.
#[derive(Debug, Clone, Default)]
pub struct MediaStats {
    /// From [`MediaOptions::since`] to DTLS-SRTP up.
    pub connected_after: Option<Duration>,
    /// From [`MediaOptions::since`] to the first frame from anyone that decrypted.
    pub first_remote_frame_after: Option<Duration>,
    /// From [`MediaOptions::since`] to the first frame from anyone, decrypted or not.
    pub first_raw_frame_after: Option<Duration>,
    pub audio_frames_sent: u64,
    pub video_frames_sent: u64,
    /// Keyframe requests (PLI/FIR) that reached us as a publisher.
    pub keyframe_requests: u64,
    /// Renegotiation offers from the SFU answered.
    pub offers_answered: u64,
    /// Datagrams dropped because they came from an address that is not the SFU's.
    pub foreign_datagrams: u64,
    /// The SFU's addresses (its host candidates), the only ones media goes to and comes from.
    pub sfu_addresses: Vec<SocketAddr>,
    /// ICE state, as str0m reports it.
    pub ice: String,
    /// Every remote track ever received on, by mid: frames as they arrived (ciphertext),
    /// labelled by the SFU's `media_tracks`.
    pub tracks: Vec<TrackStats>,
    /// Frames that decrypted, per sender (MLS leaf) and source, labelled from their KIDs.
    pub senders: Vec<SenderStats>,
    /// Frames that arrived while we had no E2EE session (not admitted); all dropped.
    pub frames_without_session: u64,
    /// MLS membership and SFrame state.
    pub e2ee: E2eeStats,
    /// Why the task ended, if it did by itself.
    pub ended: Option<String>,
}

impl MediaStats {
    /// Decrypted totals per (participant, source), from the frames' KIDs.
    pub fn by_source(&self) -> Vec<TrackStats> {
        let mut out: Vec<TrackStats> = Vec::new();
        let decrypted = self.senders.iter().map(|s| TrackStats {
            mid: s.mid.clone(),
            participant_id: s.participant_id.clone(),
            source: Some(s.source),
            frames: s.frames,
            bytes: s.bytes,
            first_frame_after: s.first_frame_after,
            last_frame_at: s.last_frame_at,
        });
        for t in decrypted {
            match out
                .iter_mut()
                .find(|o| o.participant_id == t.participant_id && o.source == t.source)
            {
                Some(o) => {
                    o.frames += t.frames;
                    o.bytes += t.bytes;
                    o.first_frame_after = match (o.first_frame_after, t.first_frame_after) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    o.last_frame_at = o.last_frame_at.max(t.last_frame_at);
                }
                None => out.push(t),
            }
        }
        out
    }

    /// Frames from `participant_id`'s `source` that decrypted (labelled from their KIDs).
    pub fn frames_from(&self, participant_id: &str, source: Source) -> u64 {
        self.senders
            .iter()
            .filter(|s| s.participant_id == participant_id && s.source == source)
            .map(|s| s.frames)
            .sum()
    }

    /// The last frame from `participant_id` (any source) that decrypted.
    pub fn last_frame_from(&self, participant_id: &str) -> Option<Instant> {
        self.senders
            .iter()
            .filter(|s| s.participant_id == participant_id)
            .filter_map(|s| s.last_frame_at)
            .max()
    }

    /// The last frame from anyone, as it arrived (decrypted or not).
    pub fn last_frame(&self) -> Option<Instant> {
        self.tracks.iter().filter_map(|t| t.last_frame_at).max()
    }

    /// The last frame from anyone that decrypted.
    pub fn last_decrypted_frame(&self) -> Option<Instant> {
        self.senders.iter().filter_map(|s| s.last_frame_at).max()
    }
}

type Reply<T> = oneshot::Sender<std::result::Result<T, String>>;

enum Cmd {
    Send(ClientMsg),
    Stop(oneshot::Sender<Signaling>),
    Chat(String, Reply<()>),
    Export {
        label: String,
        context: Vec<u8>,
        len: usize,
        reply: Reply<Vec<u8>>,
    },
}

/// A running media session; dropping it stops the task (and closes the signaling socket).
pub struct MediaSession {
    local: SocketAddr,
    stats: Arc<Mutex<MediaStats>>,
    tap: Arc<Mutex<VecDeque<TappedFrame>>>,
    cmd: mpsc::UnboundedSender<Cmd>,
    events: mpsc::UnboundedReceiver<ServerMsg>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MediaSession {
    /// Bind the socket, send our offer (`media_offer`) over `sig` and start the task. Call it
    /// once admitted; a refusal of the offer arrives as a `ServerMsg::Error` event. The MLS
    /// member starts at once if `sig` is admitted, else when the admission arrives.
    pub async fn start(mut sig: Signaling, opts: MediaOptions) -> Result<MediaSession> {
        let socket = UdpSocket::bind(opts.bind).await?;
        let local = socket.local_addr()?;
        let advertised = opts.advertise.unwrap_or(local);
        if advertised.ip().is_unspecified() {
            return Err(Error::Usage(format!(
                "media is bound to {local}: give an address to advertise"
            )));
        }
        let now = Instant::now();
        let mut rtc = Rtc::builder()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_bwe(Some(str0m::bwe::Bitrate::kbps(1_500)))
            .build(now);
        let candidate = Candidate::host(advertised, "udp")
            .map_err(|e| Error::Usage(format!("host candidate {advertised}: {e}")))?;
        rtc.add_local_candidate(candidate);

        let mut api = rtc.sdp_api();
        let mut sources = Vec::new();
        let audio_mid = opts.audio.then(|| {
            let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            sources.push(MediaSource {
                mid: mid.to_string(),
                source: Source::Microphone,
            });
            mid
        });
        let video_mid = opts.video.then(|| {
            let sim = opts.simulcast.then(|| {
                let mut s = Simulcast::new();
                for rid in SIMULCAST_RIDS {
                    s.add_send_layer(SimulcastLayer::new(rid));
                }
                s
            });
            let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, sim);
            sources.push(MediaSource {
                mid: mid.to_string(),
                source: Source::Camera,
            });
            mid
        });
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| Error::Usage("nothing to publish".into()))?;
        sig.send(&ClientMsg::MediaOffer {
            sdp: offer.to_sdp_string(),
            sources,
        })
        .await?;

        let pinned = match &opts.server_key_pins {
            Some(path) => e2ee::load_pin(path, sig.origin())?,
            None => None,
        };
        let e2ee_opts = E2eeOptions {
            origin: sig.origin().to_string(),
            pins: opts.server_key_pins.clone(),
            pinned,
            key_update_every: opts.key_update_every,
            rng_seed: opts.rng_seed.unwrap_or_else(rand::random),
        };
        let e2ee = match sig.admission() {
            Some(a) => Some(e2ee_opts.session(a.meeting.clone(), &a.you, &a.participants, now)?),
            None => None,
        };
        let stats = Arc::new(Mutex::new(MediaStats {
            ice: "new".into(),
            e2ee: E2eeStats {
                state: "off".into(),
                ..E2eeStats::default()
            },
            ..MediaStats::default()
        }));
        let tap = Arc::new(Mutex::new(VecDeque::new()));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let task = Task {
            rtc,
            socket,
            local: advertised,
            sig: Some(sig),
            pending: Some(pending),
            sfu_addrs: HashSet::new(),
            since: opts.since,
            audio_mid,
            video_mid,
            simulcast: opts.simulcast,
            audio: OpusLoop::microphone(),
            video: Vp8Loop::camera(),
            connected: false,
            mapping: HashMap::new(),
            tracks: HashMap::new(),
            stats: stats.clone(),
            events: ev_tx,
            e2ee_opts,
            e2ee,
            frames_without_session: 0,
            first_raw: None,
            first_decrypted: None,
            tap: tap.clone(),
            tap_frames: opts.tap_frames,
        };
        let task = tokio::spawn(task.run(cmd_rx));
        Ok(MediaSession {
            local,
            stats,
            tap,
            cmd: cmd_tx,
            events: ev_rx,
            task: Some(task),
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A snapshot of what was sent and received so far.
    pub fn stats(&self) -> MediaStats {
        lock(&self.stats).clone()
    }

    /// Send a signaling message (e.g. `leave`, `remove`).
    pub fn send(&self, msg: ClientMsg) -> Result<()> {
        self.cmd
            .send(Cmd::Send(msg))
            .map_err(|_| Error::Transport("the media session has ended".into()))
    }

    /// Send a chat message to the group (an MLS application message, docs/E2EE.md §7).
    pub async fn send_chat(&self, text: &str) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Chat(text.to_string(), tx))
            .map_err(|_| Error::Transport("the media session has ended".into()))?;
        rx.await
            .map_err(|_| Error::Transport("the media session has ended".into()))?
            .map_err(Error::Usage)
    }

    /// `MLS-Exporter(label, context, len)` of the current epoch (RFC 9420 §8.5): members of
    /// one epoch agree on it, nobody else can compute it.
    pub async fn export_secret(&self, label: &str, context: &[u8], len: usize) -> Result<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Export {
                label: label.to_string(),
                context: context.to_vec(),
                len,
                reply: tx,
            })
            .map_err(|_| Error::Transport("the media session has ended".into()))?;
        rx.await
            .map_err(|_| Error::Transport("the media session has ended".into()))?
            .map_err(Error::Usage)
    }

    /// The last [`MediaOptions::tap_frames`] received frames as they arrived from the SFU.
    pub fn tapped(&self) -> Vec<TappedFrame> {
        self.tap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The next server message that is not about media (participants, refusals, errors…);
    /// `None` when `within` passed or the session ended.
    pub async fn next_event(&mut self, within: Duration) -> Option<ServerMsg> {
        tokio::time::timeout(within, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Stop the task; the final stats, and the signaling socket if it is still open.
    pub async fn stop(mut self) -> (MediaStats, Option<Signaling>) {
        let (tx, rx) = oneshot::channel();
        let sig = if self.cmd.send(Cmd::Stop(tx)).is_ok() {
            rx.await.ok()
        } else {
            None
        };
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        (lock(&self.stats).clone(), sig)
    }
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn lock(m: &Mutex<MediaStats>) -> std::sync::MutexGuard<'_, MediaStats> {
    // Stats stay consistent under a panic elsewhere: every update is a plain field write.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per-mid receive counters (mapped to publishers at snapshot time by `mapping`).
#[derive(Default)]
struct MidCount {
    frames: u64,
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

struct Task {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    sig: Option<Signaling>,
    pending: Option<SdpPendingOffer>,
    /// The SFU's candidate addresses from its answer: the only sources we accept.
    sfu_addrs: HashSet<SocketAddr>,
    since: Instant,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    simulcast: bool,
    audio: OpusLoop,
    video: Vp8Loop,
    connected: bool,
    /// mid → publisher, from the latest `media_tracks` (entries stay for stats).
    mapping: HashMap<String, (String, Source)>,
    tracks: HashMap<String, MidCount>,
    stats: Arc<Mutex<MediaStats>>,
    events: mpsc::UnboundedSender<ServerMsg>,
    e2ee_opts: E2eeOptions,
    /// The MLS member and SFrame state of the current admission.
    e2ee: Option<e2ee::Session>,
    frames_without_session: u64,
    first_raw: Option<Instant>,
    first_decrypted: Option<Instant>,
    tap: Arc<Mutex<VecDeque<TappedFrame>>>,
    tap_frames: usize,
}

/// What every E2EE session of this media session shares.
struct E2eeOptions {
    origin: String,
    pins: Option<PathBuf>,
    pinned: Option<ed25519_dalek::VerifyingKey>,
    key_update_every: Duration,
    rng_seed: u64,
}

impl E2eeOptions {
    fn session(
        &self,
        meeting: sealroom_proto::MeetingInfo,
        you: &str,
        participants: &[Participant],
        now: Instant,
    ) -> Result<e2ee::Session> {
        let mut s = e2ee::Session::new(e2ee::Config {
            origin: self.origin.clone(),
            meeting,
            you: you.to_string(),
            pinned: self.pinned,
            key_update_every: self.key_update_every,
            rng_seed: self.rng_seed,
        })
        .map_err(|e| Error::Protocol(format!("MLS: {e}")))?;
        s.set_participants(participants, now);
        Ok(s)
    }
}

enum Step {
    Go,
    Stop(oneshot::Sender<Signaling>),
    End(String),
}

impl Task {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut buf = vec![0u8; 65_536];
        let start = Instant::now();
        let mut next_audio = start;
        let mut next_video = start;
        let why = loop {
            if let Step::End(e) = self.flush_e2ee().await {
                break Step::End(e);
            }
            let timeout = match self.drain() {
                Ok(t) => t,
                Err(e) => break Step::End(e),
            };
            let mut wake = timeout;
            if self.connected {
                wake = wake.min(next_audio).min(next_video);
            }
            if let Some(t) = self.e2ee.as_ref().and_then(|e| e.poll_timeout()) {
                wake = wake.min(t);
            }
            let step = tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, source)) => self.receive(source, &buf[..n]),
                    // ICMP errors surface here on Linux (port unreachable); not fatal.
                    Err(_) => Step::Go,
                },
                m = recv_signaling(&mut self.sig) => match m {
                    Ok(Some(m)) => self.signaling(m).await,
                    Ok(None) => {
                        self.sig = None;
                        Step::Go
                    }
                    Err(e) => Step::End(e.to_string()),
                },
                c = cmds.recv() => match c {
                    Some(Cmd::Send(m)) => match &mut self.sig {
                        Some(sig) => match sig.send(&m).await {
                            Ok(()) => Step::Go,
                            Err(e) => Step::End(e.to_string()),
                        },
                        None => Step::Go,
                    },
                    Some(Cmd::Stop(reply)) => Step::Stop(reply),
                    Some(Cmd::Chat(text, reply)) => {
                        let r = match &mut self.e2ee {
                            Some(e) => e.send_chat(&text),
                            None => Err("not admitted".into()),
                        };
                        let _ = reply.send(r);
                        Step::Go
                    }
                    Some(Cmd::Export { label, context, len, reply }) => {
                        let r = match &self.e2ee {
                            Some(e) => e.export_secret(&label, &context, len),
                            None => Err("not admitted".into()),
                        };
                        let _ = reply.send(r);
                        Step::Go
                    }
                    None => Step::End("dropped".into()),
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if let Some(e) = &mut self.e2ee {
                        e.handle_timeout(now);
                    }
                    // After a stall the clock restarts at `now` rather than sending a burst.
                    if self.connected && now >= next_audio {
                        next_audio = (next_audio + AUDIO_EVERY).max(now);
                        self.send_audio(now);
                    }
                    if self.connected && now >= next_video {
                        next_video = (next_video + VIDEO_EVERY).max(now);
                        self.send_video(now);
                    }
                    match self.rtc.handle_input(Input::Timeout(now)) {
                        Ok(()) => Step::Go,
                        Err(e) => Step::End(format!("rtc: {e}")),
                    }
                }
            };
            match step {
                Step::Go => {}
                other => break other,
            }
        };
        self.rtc.disconnect();
        self.publish_stats();
        match why {
            Step::Stop(reply) => {
                if let Some(sig) = self.sig.take() {
                    let _ = reply.send(sig);
                }
            }
            Step::End(e) => lock(&self.stats).ended = Some(e),
            Step::Go => {}
        }
    }

    /// Sends what the MLS member has for the delivery service; pins a first-use server key.
    async fn flush_e2ee(&mut self) -> Step {
        let Some(e) = &mut self.e2ee else {
            return Step::Go;
        };
        let mut msgs = Vec::new();
        let mut pin = None;
        while let Some(o) = e.poll_output() {
            match o {
                e2ee::Output::Send(m) => msgs.push(m),
                e2ee::Output::PinServerKey(k) => pin = Some(k),
            }
        }
        if let (Some(k), Some(path)) = (pin, &self.e2ee_opts.pins) {
            if let Err(err) = e2ee::save_pin(path, &self.e2ee_opts.origin, &k) {
                return Step::End(format!("pinning the server key: {err}"));
            }
            self.e2ee_opts.pinned = Some(k);
        }
        for m in msgs {
            if let Some(sig) = &mut self.sig {
                if let Err(e) = sig.send(&m).await {
                    return Step::End(e.to_string());
                }
            }
        }
        Step::Go
    }

    /// Drain str0m's output; returns when to wake it next.
    fn drain(&mut self) -> Result<Instant, String> {
        let mut rounds = 0;
        loop {
            match poll_rtc(&mut self.rtc, &mut rounds) {
                Ok(Output::Timeout(t)) => return Ok(t),
                Ok(Output::Transmit(t)) => {
                    // A full socket buffer drops the datagram, as the network would.
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(e)) => self.event(e),
                Err(e) => return Err(format!("rtc: {e}")),
            }
        }
    }

    fn event(&mut self, e: Event) {
        let now = Instant::now();
        match e {
            Event::Connected => {
                self.connected = true;
                lock(&self.stats).connected_after = Some(now.saturating_duration_since(self.since));
            }
            Event::IceConnectionStateChange(s) => {
                lock(&self.stats).ice = match s {
                    IceConnectionState::New => "new",
                    IceConnectionState::Checking => "checking",
                    IceConnectionState::Connected => "connected",
                    IceConnectionState::Completed => "completed",
                    IceConnectionState::Disconnected => "disconnected",
                }
                .into();
            }
            Event::MediaData(d) => {
                let mid = d.mid.to_string();
                let c = self.tracks.entry(mid.clone()).or_default();
                c.frames += 1;
                c.bytes += d.data.len() as u64;
                c.first.get_or_insert(now);
                c.last = Some(now);
                self.first_raw.get_or_insert(now);
                let codec = match d.params.spec().codec {
                    Codec::Opus => FrameCodec::Opus,
                    _ => FrameCodec::Vp8,
                };
                if self.tap_frames > 0 {
                    let mut tap = self.tap.lock().unwrap_or_else(|p| p.into_inner());
                    if tap.len() == self.tap_frames {
                        tap.pop_front();
                    }
                    tap.push_back(TappedFrame {
                        mid: mid.clone(),
                        codec,
                        payload: d.data.to_vec(),
                        at: now,
                    });
                }
                match &mut self.e2ee {
                    // A frame that fails is dropped here (the session counts why); there is
                    // no passthrough.
                    Some(e) => {
                        if e.decrypt(&mid, codec, &d.data, now).is_ok() {
                            self.first_decrypted.get_or_insert(now);
                        }
                    }
                    None => self.frames_without_session += 1,
                }
                // A snapshot per frame is cheap enough at these rates (≈ 80 frames/s per
                // remote participant).
                self.publish_stats();
            }
            Event::KeyframeRequest(r) if Some(r.mid) == self.video_mid => {
                lock(&self.stats).keyframe_requests += 1;
                self.video.keyframe_due = true;
            }
            _ => {}
        }
    }

    fn publish_stats(&self) {
        let mut tracks: Vec<TrackStats> = self
            .tracks
            .iter()
            .map(|(mid, c)| {
                let (pid, source) = match self.mapping.get(mid) {
                    Some((p, s)) => (p.clone(), Some(*s)),
                    None => (String::new(), None),
                };
                TrackStats {
                    mid: mid.clone(),
                    participant_id: pid,
                    source,
                    frames: c.frames,
                    bytes: c.bytes,
                    first_frame_after: c.first.map(|f| f.saturating_duration_since(self.since)),
                    last_frame_at: c.last,
                }
            })
            .collect();
        tracks.sort_by(|a, b| a.mid.cmp(&b.mid));
        let now = Instant::now();
        let (senders, e2ee) = match &self.e2ee {
            Some(e) => {
                let mut senders = e.senders();
                for s in &mut senders {
                    s.first_frame_after = s
                        .first_frame_at
                        .map(|t| t.saturating_duration_since(self.since));
                }
                (senders, e.stats(now))
            }
            None => (
                Vec::new(),
                E2eeStats {
                    state: "off".into(),
                    ..E2eeStats::default()
                },
            ),
        };
        let mut s = lock(&self.stats);
        s.tracks = tracks;
        s.senders = senders;
        s.e2ee = e2ee;
        s.frames_without_session = self.frames_without_session;
        s.first_raw_frame_after = self
            .first_raw
            .map(|t| t.saturating_duration_since(self.since));
        s.first_remote_frame_after = self
            .first_decrypted
            .map(|t| t.saturating_duration_since(self.since));
    }

    fn receive(&mut self, source: SocketAddr, data: &[u8]) -> Step {
        if !self.sfu_addrs.contains(&source) {
            lock(&self.stats).foreign_datagrams += 1;
            return Step::Go;
        }
        let Ok(contents) = data.try_into() else {
            return Step::Go;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        match self.rtc.handle_input(input) {
            Ok(()) => Step::Go,
            Err(e) => Step::End(format!("rtc: {e}")),
        }
    }

    /// Accept media from (and show) the SFU addresses an SDP of the SFU names.
    fn learn_sfu_addresses(&mut self, sdp: &str) {
        let before = self.sfu_addrs.len();
        self.sfu_addrs.extend(candidates(sdp));
        if self.sfu_addrs.len() != before {
            let mut all: Vec<SocketAddr> = self.sfu_addrs.iter().copied().collect();
            all.sort();
            lock(&self.stats).sfu_addresses = all;
        }
    }

    async fn signaling(&mut self, m: ServerMsg) -> Step {
        let now = Instant::now();
        if let ServerMsg::Admitted {
            meeting,
            you,
            participants,
            ..
        } = &m
        {
            // Admitted from the lobby (or again): a fresh MLS member for this admission.
            match self
                .e2ee_opts
                .session(meeting.clone(), you, participants, now)
            {
                Ok(s) => self.e2ee = Some(s),
                Err(e) => return Step::End(e.to_string()),
            }
        }
        if let Some(e) = &mut self.e2ee {
            let consumed = e.handle_message(&m, now);
            self.publish_stats();
            if consumed {
                return Step::Go;
            }
        }
        match m {
            ServerMsg::MediaAnswer { sdp } => {
                let Some(pending) = self.pending.take() else {
                    return Step::End("protocol: a media answer without an offer".into());
                };
                let answer = match SdpAnswer::from_sdp_string(&sdp) {
                    Ok(a) => a,
                    Err(e) => return Step::End(format!("protocol: media answer: {e}")),
                };
                self.learn_sfu_addresses(&sdp);
                if let Err(e) = self.rtc.sdp_api().accept_answer(pending, answer) {
                    return Step::End(format!("protocol: media answer: {e}"));
                }
                Step::Go
            }
            ServerMsg::MediaOffer { sdp } => {
                let offer = match SdpOffer::from_sdp_string(&sdp) {
                    Ok(o) => o,
                    Err(e) => return Step::End(format!("protocol: media offer: {e}")),
                };
                self.learn_sfu_addresses(&sdp);
                let answer = match self.rtc.sdp_api().accept_offer(offer) {
                    Ok(a) => a,
                    Err(e) => return Step::End(format!("protocol: media offer: {e}")),
                };
                lock(&self.stats).offers_answered += 1;
                let msg = ClientMsg::MediaAnswer {
                    sdp: answer.to_sdp_string(),
                };
                match &mut self.sig {
                    Some(sig) => match sig.send(&msg).await {
                        Ok(()) => Step::Go,
                        Err(e) => Step::End(e.to_string()),
                    },
                    None => Step::Go,
                }
            }
            ServerMsg::MediaTracks { tracks } => {
                for RemoteTrack {
                    mid,
                    participant_id,
                    source,
                } in tracks
                {
                    self.mapping.insert(mid, (participant_id, source));
                }
                self.publish_stats();
                Step::Go
            }
            other => {
                let _ = self.events.send(other);
                Step::Go
            }
        }
    }

    fn pt(&self, codec: Codec) -> Option<Pt> {
        self.rtc
            .codec_config()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
    }

    /// SFrame-encrypts one frame of ours; `None`: not sent (no group key yet, or failed).
    fn encrypt(&mut self, source: Source, frame: &[u8]) -> Option<Vec<u8>> {
        match &mut self.e2ee {
            Some(e) => e.encrypt(source, e2ee::codec_of(source), frame),
            None => None,
        }
    }

    fn send_audio(&mut self, now: Instant) {
        let (Some(mid), Some(pt)) = (self.audio_mid, self.pt(Codec::Opus)) else {
            return;
        };
        let (n, packet) = self.audio.next_frame();
        let t = MediaTime::new(n * 960, Frequency::FORTY_EIGHT_KHZ);
        let Some(wire) = self.encrypt(Source::Microphone, packet) else {
            return;
        };
        if let Some(w) = self.rtc.writer(mid) {
            if w.write(pt, now, t, wire).is_ok() {
                lock(&self.stats).audio_frames_sent += 1;
            }
        }
    }

    fn send_video(&mut self, now: Instant) {
        let (Some(mid), Some(pt)) = (self.video_mid, self.pt(Codec::Vp8)) else {
            return;
        };
        if self.e2ee.as_mut().is_some_and(|e| e.take_keyframe_wanted()) {
            self.video.keyframe_due = true;
        }
        let (n, frame) = self.video.next_frame();
        let t = MediaTime::new(n * 3_000, Frequency::NINETY_KHZ);
        let rids: Vec<Option<Rid>> = if self.simulcast {
            SIMULCAST_RIDS.iter().map(|r| Some((*r).into())).collect()
        } else {
            vec![None]
        };
        let mut sent = false;
        for rid in rids {
            // Each layer is its own SFrame frame: one counter per encryption, never reused.
            let Some(wire) = self.encrypt(Source::Camera, frame) else {
                return;
            };
            let Some(mut w) = self.rtc.writer(mid) else {
                return;
            };
            if let Some(rid) = rid {
                w = w.rid(rid);
            }
            sent |= w.write(pt, now, t, wire).is_ok();
        }
        if sent {
            lock(&self.stats).video_frames_sent += 1;
        }
    }
}

async fn recv_signaling(sig: &mut Option<Signaling>) -> Result<Option<ServerMsg>> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// The `host` candidate addresses in an SDP (RFC 8839 §5.1: `a=candidate:<foundation>
/// <component> <transport> <priority> <address> <port> typ <type>`). Datagrams from any other
/// address are dropped; the benchmark's load participants use it too.
pub fn candidates(sdp: &str) -> Vec<SocketAddr> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=candidate:"))
        .filter_map(|c| {
            let f: Vec<&str> = c.split_whitespace().collect();
            if f.len() < 8 || !f[2].eq_ignore_ascii_case("udp") {
                return None;
            }
            let ip: std::net::IpAddr = f[4].parse().ok()?;
            let port: u16 = f[5].parse().ok()?;
            Some(SocketAddr::new(ip, port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_read_from_sdp() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n\
                   a=candidate:2 1 tcp 1 127.0.0.1 9 typ host\r\na=candidate:bad\r\n";
        assert_eq!(
            candidates(sdp),
            vec!["127.0.0.1:40000".parse().expect("addr")]
        );
    }

    /// One side of an in-memory call: a session and the address it is known by (a label;
    /// datagrams go from one session to the other in memory, never over a socket).
    struct Side {
        rtc: Rtc,
        addr: SocketAddr,
        connected: bool,
    }

    fn side(port: u16, bwe: bool) -> Side {
        let mut b = Rtc::builder()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .clear_codecs()
            .enable_vp8(true);
        if bwe {
            b = b.enable_bwe(Some(str0m::bwe::Bitrate::kbps(1_500)));
        }
        let mut rtc = b.build(Instant::now());
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        Side {
            rtc,
            addr,
            connected: false,
        }
    }

    /// Drains `from` with [`poll_rtc`] into `to`; returns the RTP datagrams among them (SRTP
    /// packets after the handshake: first byte 128-191, second not an RTCP type) and when
    /// `from` wants to be woken.
    fn pass(from: &mut Side, to: &mut Side) -> (usize, Instant) {
        let (mut rounds, mut rtp) = (0, 0);
        loop {
            match poll_rtc(&mut from.rtc, &mut rounds).expect("poll") {
                Output::Timeout(t) => return (rtp, t),
                Output::Event(Event::Connected) => from.connected = true,
                Output::Event(_) => {}
                Output::Transmit(t) => {
                    let d = &t.contents[..];
                    if d.len() > 1 && (128..192).contains(&d[0]) && !(192..=223).contains(&d[1]) {
                        rtp += 1;
                    }
                    let input = Input::Receive(
                        Instant::now(),
                        Receive {
                            proto: Protocol::Udp,
                            source: from.addr,
                            destination: to.addr,
                            contents: d.try_into().expect("a datagram"),
                        },
                    );
                    to.rtc.handle_input(input).expect("receive");
                }
            }
        }
    }

    /// Waits until `wake`, then gives every side its timeout, as the task's loop does.
    fn tick(sides: &mut [&mut Side], wake: Instant) {
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        for s in sides {
            s.rtc
                .handle_input(Input::Timeout(Instant::now()))
                .expect("timeout");
        }
    }

    /// `a` sends simulcast video to `b`; both connected.
    fn simulcast_call(bwe: bool) -> (Side, Side, Mid) {
        let (mut a, mut b) = (side(41_000, bwe), side(41_001, false));
        let mut api = a.rtc.sdp_api();
        let mut sim = Simulcast::new();
        for rid in SIMULCAST_RIDS {
            sim.add_send_layer(SimulcastLayer::new(rid));
        }
        let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, Some(sim));
        let (offer, pending) = api.apply().expect("an offer");
        let answer = b.rtc.sdp_api().accept_offer(offer).expect("answer");
        a.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("accepted");
        let give_up = Instant::now() + Duration::from_secs(10);
        while !(a.connected && b.connected) {
            assert!(
                Instant::now() < give_up,
                "the in-memory call did not connect"
            );
            let (_, ta) = pass(&mut a, &mut b);
            let (_, tb) = pass(&mut b, &mut a);
            let wake = ta.min(tb).min(Instant::now() + Duration::from_millis(5));
            tick(&mut [&mut a, &mut b], wake);
        }
        // Let the first RTCP and BWE timers settle, as a call would have before a frame.
        let settle = Instant::now() + Duration::from_millis(200);
        while Instant::now() < settle {
            let (_, ta) = pass(&mut a, &mut b);
            pass(&mut b, &mut a);
            let wake = ta.min(Instant::now() + Duration::from_millis(5));
            tick(&mut [&mut a, &mut b], wake);
        }
        (a, b, mid)
    }

    /// A frame written on three simulcast layers leaves in the drain that follows the write,
    /// with and without a pacer. Before `poll_rtc` ran due timers in place, str0m let one
    /// layer go per timer pass, and every pass waited for tokio's next 1 ms tick.
    #[test]
    fn every_layer_of_a_frame_leaves_in_one_drain() {
        for bwe in [false, true] {
            let (mut a, mut b, mid) = simulcast_call(bwe);
            let pt = a
                .rtc
                .writer(mid)
                .expect("writer")
                .payload_params()
                .find(|p| p.spec().codec == Codec::Vp8)
                .expect("VP8")
                .pt();
            let frame = Vp8Loop::camera().next_frame().1;
            for rid in SIMULCAST_RIDS {
                let w = a.rtc.writer(mid).expect("writer").rid(rid.into());
                let t = MediaTime::new(90_000, Frequency::NINETY_KHZ);
                w.write(pt, Instant::now(), t, frame.to_vec())
                    .expect("written");
            }
            let (sent, _) = pass(&mut a, &mut b);
            assert!(
                sent >= SIMULCAST_RIDS.len(),
                "with bwe {bwe}: {sent} of the frame's {} layers left in one drain",
                SIMULCAST_RIDS.len()
            );
        }
    }
}
