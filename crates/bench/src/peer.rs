//! One load peer connection: a str0m [`Rtc`] on its own UDP socket, driven by one tokio task.
//!
//! It publishes the looped pre-encoded streams ([`crate::stamp`]) with a stamp in every frame,
//! and records every stamped frame it receives (who sent it, which one, when it was sent and
//! when it arrived). It speaks no signaling: the SFU adapters ([`crate::sealroom`],
//! [`crate::janus`]) carry its SDP through [`PeerHandle`]. There is no end-to-end encryption
//! and no MLS here: the SFUs forward payloads as opaque bytes, and the benchmark measures that
//! forwarding.
//!
//! The loop is str0m's: drain `poll_output` to a timeout, then wait for the first of a
//! datagram, a command, that timeout or the next frame to send. Datagrams from addresses that
//! are not among the remote side's SDP candidates never reach str0m.

use crate::stamp::{self, Kind, Stamp, AUDIO_EVERY, VIDEO_EVERY};
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use sealroom_client::assets::{OpusLoop, Vp8Loop};
use sealroom_client::media::{candidates, poll_rtc};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, Frequency, MediaKind, MediaTime, Mid, Pt, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// What one peer publishes and where it binds.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Local address (an explicit IP: it is advertised as the only ICE host candidate).
    pub bind: SocketAddr,
    /// The participant's index, written into every stamp.
    pub me: u32,
    /// Publish audio (Opus, 50 frames/s).
    pub audio: bool,
    /// Publish video (VP8, 30 frames/s).
    pub video: bool,
    /// Publish the video as three simulcast layers ([`SIMULCAST_LAYERS`]) instead of one.
    pub simulcast: bool,
    /// The instant stamps count from (shared by every peer of the run).
    pub epoch: Instant,
}

/// Our SDP offer and the mids of what it publishes.
#[derive(Debug, Clone)]
pub struct Offer {
    pub sdp: String,
    pub audio_mid: Option<String>,
    pub video_mid: Option<String>,
}

/// A frame this peer sent.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub kind: Kind,
    pub sent_ns: u64,
}

/// A stamped frame this peer received.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub from: u32,
    pub kind: Kind,
    pub seq: u32,
    pub sent_ns: u64,
    /// When str0m handed the complete frame to the peer (the peer's own queueing included).
    pub recv_ns: u64,
    /// When the datagram that completed the frame arrived at the peer's socket, by the
    /// kernel's receive timestamp: the SFU's send, on loopback. Without the load process's
    /// own queueing, which at high load is on the order of the SFU's.
    pub arrived_ns: u64,
    /// RTP packets that made up the frame (str0m's sequence number range).
    pub packets: u32,
}

/// Everything a peer recorded.
#[derive(Debug, Clone, Default)]
pub struct PeerReport {
    pub sent: Vec<Sent>,
    pub received: Vec<Received>,
    /// Frames that arrived without a stamp (there should be none).
    pub unstamped: u64,
    /// Keyframe requests (PLI/FIR) that reached us as a publisher.
    pub keyframe_requests: u64,
    /// Datagrams we could not send at once (full socket buffer): dropped, as a network would.
    pub send_drops: u64,
}

/// What the scenario polls while the peer runs.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub connected_at: Option<Instant>,
    pub first_remote_frame_at: Option<Instant>,
    pub frames_received: u64,
    /// Distinct (publisher, kind) streams heard from.
    pub streams_heard: usize,
    /// Why the task ended, if it ended by itself.
    pub ended: Option<String>,
}

/// Simulcast layers: rid and the share of each frame's bytes it carries. The load has one
/// pre-encoded stream, so the lower layers send a prefix of each frame (the VP8 header and
/// the stamp stay intact; nobody decodes load video): about 1/4, 1/2 and all of the bytes,
/// like a 3-layer camera at one resolution step apart. Every layer carries every frame with
/// the same stamp, so a subscriber receiving any one layer receives each frame once.
pub const SIMULCAST_LAYERS: [(&str, usize); 3] = [("l", 4), ("m", 2), ("h", 1)];

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Cmd {
    Offer(Reply<Offer>),
    AcceptAnswer(String, Reply<()>),
    AcceptOffer(String, Reply<String>),
    Report(oneshot::Sender<PeerReport>),
}

/// Commands to a running peer; dropping the last handle stops it.
#[derive(Clone)]
pub struct PeerHandle {
    cmd: mpsc::UnboundedSender<Cmd>,
    live: Arc<Mutex<Live>>,
    datagrams: Arc<AtomicU64>,
}

const GONE: &str = "the peer task has ended";

impl PeerHandle {
    /// Bind the socket and start the task.
    pub async fn spawn(cfg: PeerConfig) -> Result<PeerHandle, String> {
        let socket = bind(cfg.bind).map_err(|e| format!("{e:#}"))?;
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        let rtc = Rtc::builder()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(Instant::now());
        let mut task = Task {
            rtc,
            socket,
            local,
            remote: HashSet::new(),
            pending: None,
            audio_mid: None,
            video_mid: None,
            audio: OpusLoop::microphone(),
            video: Vp8Loop::camera(),
            audio_seq: 0,
            video_seq: 0,
            connected: false,
            report: PeerReport::default(),
            live: Arc::new(Mutex::new(Live::default())),
            datagrams: Arc::new(AtomicU64::new(0)),
            heard: HashSet::new(),
            arrived: Instant::now(),
            cfg,
        };
        let candidate =
            Candidate::host(local, "udp").map_err(|e| format!("host candidate {local}: {e}"))?;
        task.rtc.add_local_candidate(candidate);
        let live = task.live.clone();
        let datagrams = task.datagrams.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(task.run(rx));
        Ok(PeerHandle {
            cmd: tx,
            live,
            datagrams,
        })
    }

    /// An offer publishing what the config says (send-only m-lines).
    pub async fn offer(&self) -> Result<Offer, String> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Offer(tx))
            .map_err(|_| GONE.to_string())?;
        rx.await.map_err(|_| GONE.to_string())?
    }

    pub async fn accept_answer(&self, sdp: String) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::AcceptAnswer(sdp, tx))
            .map_err(|_| GONE.to_string())?;
        rx.await.map_err(|_| GONE.to_string())?
    }

    /// Answer the remote side's offer (receiving what it sends).
    pub async fn accept_offer(&self, sdp: String) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::AcceptOffer(sdp, tx))
            .map_err(|_| GONE.to_string())?;
        rx.await.map_err(|_| GONE.to_string())?
    }

    /// What the peer recorded so far (empty if it has ended).
    pub async fn report(&self) -> PeerReport {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Report(tx)).is_err() {
            return PeerReport::default();
        }
        rx.await.unwrap_or_default()
    }

    pub fn live(&self) -> Live {
        lock(&self.live).clone()
    }

    /// Datagrams received from the remote side so far (media, RTCP, STUN, DTLS).
    pub fn datagrams(&self) -> u64 {
        self.datagrams.load(Ordering::Relaxed)
    }
}

fn lock(m: &Mutex<Live>) -> std::sync::MutexGuard<'_, Live> {
    // Every update is a plain field write, so the value stays consistent after a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A UDP socket with a large receive buffer (a burst of forwarded frames must not be lost
/// in the load generator and then blamed on the SFU).
fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let s = crate::floor::udp_socket(addr, true)?;
    setsockopt(&s, sockopt::ReceiveTimestampns, &true)?;
    Ok(UdpSocket::from_std(s)?)
}

/// Reads one datagram with its kernel arrival time (`SO_TIMESTAMPNS`, wall clock), turned
/// into an [`Instant`] by its age now. A datagram without a stamp counts as arriving now.
fn recv_stamped(
    socket: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Instant)> {
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg =
        recvmsg::<SockaddrStorage>(socket.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())?;
    let (now, wall) = (Instant::now(), SystemTime::now());
    let mut arrived = now;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            // A wall clock stepped since then gives a nonsense age: keep `now`.
            let age = wall.duration_since(UNIX_EPOCH + Duration::from(ts));
            arrived = age.ok().and_then(|a| now.checked_sub(a)).unwrap_or(now);
        }
    }
    let source = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| std::io::Error::other("datagram without a source address"))?;
    Ok((msg.bytes, source, arrived))
}

struct Task {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    /// The remote side's candidates: the only sources accepted.
    remote: HashSet<SocketAddr>,
    pending: Option<SdpPendingOffer>,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    audio: OpusLoop,
    video: Vp8Loop,
    audio_seq: u32,
    video_seq: u32,
    connected: bool,
    report: PeerReport,
    live: Arc<Mutex<Live>>,
    datagrams: Arc<AtomicU64>,
    heard: HashSet<(u32, Kind)>,
    /// Kernel arrival time of the last datagram read.
    arrived: Instant,
    cfg: PeerConfig,
}

impl Task {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut buf = vec![0u8; 65_536];
        let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
        let mut next_audio = Instant::now();
        let mut next_video = next_audio;
        let why = loop {
            let timeout = match self.drain() {
                Ok(t) => t,
                Err(e) => break e,
            };
            let mut wake = timeout;
            if self.connected && self.audio_mid.is_some() {
                wake = wake.min(next_audio);
            }
            if self.connected && self.video_mid.is_some() {
                wake = wake.min(next_video);
            }
            let r = tokio::select! {
                r = self.socket.async_io(Interest::READABLE, || recv_stamped(&self.socket, &mut buf, &mut cmsg)) => match r {
                    Ok((n, source, arrived)) => self.receive(source, &buf[..n], arrived),
                    // ICMP errors (port unreachable) surface here on Linux; not fatal.
                    Err(_) => Ok(()),
                },
                c = cmds.recv() => match c {
                    Some(c) => self.command(c),
                    None => break "stopped".to_string(),
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    // After a stall the clock restarts at `now` rather than sending a burst.
                    if self.connected && now >= next_audio {
                        next_audio = (next_audio + AUDIO_EVERY).max(now);
                        self.send_audio(now);
                    }
                    if self.connected && now >= next_video {
                        next_video = (next_video + VIDEO_EVERY).max(now);
                        self.send_video(now);
                    }
                    self.rtc.handle_input(Input::Timeout(now)).map_err(|e| format!("rtc: {e}"))
                }
            };
            if let Err(e) = r {
                break e;
            }
        };
        self.rtc.disconnect();
        lock(&self.live).ended = Some(why);
    }

    fn command(&mut self, c: Cmd) -> Result<(), String> {
        match c {
            Cmd::Offer(reply) => {
                let r = self.make_offer();
                let _ = reply.send(r);
            }
            Cmd::AcceptAnswer(sdp, reply) => {
                let r = match self.pending.take() {
                    None => Err("an answer without an offer".to_string()),
                    Some(pending) => SdpAnswer::from_sdp_string(&sdp)
                        .map_err(|e| format!("answer: {e}"))
                        .and_then(|a| {
                            self.remote.extend(candidates(&sdp));
                            self.rtc
                                .sdp_api()
                                .accept_answer(pending, a)
                                .map_err(|e| format!("answer: {e}"))
                        }),
                };
                let _ = reply.send(r);
            }
            Cmd::AcceptOffer(sdp, reply) => {
                let r = SdpOffer::from_sdp_string(&sdp)
                    .map_err(|e| format!("offer: {e}"))
                    .and_then(|o| {
                        self.remote.extend(candidates(&sdp));
                        self.rtc
                            .sdp_api()
                            .accept_offer(o)
                            .map_err(|e| format!("offer: {e}"))
                    })
                    .map(|a| a.to_sdp_string());
                let _ = reply.send(r);
            }
            Cmd::Report(reply) => {
                let _ = reply.send(self.report.clone());
            }
        }
        Ok(())
    }

    fn make_offer(&mut self) -> Result<Offer, String> {
        let mut api = self.rtc.sdp_api();
        let audio = self
            .cfg
            .audio
            .then(|| api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        let simulcast = self.cfg.simulcast.then(|| {
            let mut s = Simulcast::new();
            for (rid, _) in SIMULCAST_LAYERS {
                s.add_send_layer(SimulcastLayer::new(rid));
            }
            s
        });
        let video = self
            .cfg
            .video
            .then(|| api.add_media(MediaKind::Video, Direction::SendOnly, None, None, simulcast));
        let (offer, pending) = api.apply().ok_or("nothing to publish")?;
        self.pending = Some(pending);
        self.audio_mid = audio;
        self.video_mid = video;
        Ok(Offer {
            sdp: offer.to_sdp_string(),
            audio_mid: audio.map(|m| m.to_string()),
            video_mid: video.map(|m| m.to_string()),
        })
    }

    /// Drain str0m's output; when to wake it next.
    fn drain(&mut self) -> Result<Instant, String> {
        let mut rounds = 0;
        loop {
            match poll_rtc(&mut self.rtc, &mut rounds) {
                Ok(Output::Timeout(t)) => return Ok(t),
                Ok(Output::Transmit(t)) => {
                    if self.socket.try_send_to(&t.contents, t.destination).is_err() {
                        self.report.send_drops += 1;
                    }
                }
                Ok(Output::Event(e)) => self.event(e),
                Err(e) => return Err(format!("rtc: {e}")),
            }
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Connected => {
                self.connected = true;
                lock(&self.live).connected_at = Some(Instant::now());
            }
            Event::MediaData(d) => {
                let now = Instant::now();
                let Some(s) = stamp::read(&d.data) else {
                    self.report.unstamped += 1;
                    return;
                };
                let (first, last): (u64, u64) = (**d.seq_range.start(), **d.seq_range.end());
                let packets = last.saturating_sub(first).saturating_add(1);
                self.report.received.push(Received {
                    from: s.from,
                    kind: s.kind,
                    seq: s.seq,
                    sent_ns: s.sent_ns,
                    recv_ns: self.ns(now),
                    // drain() runs after every datagram, so a frame completes on the last one.
                    arrived_ns: self.ns(self.arrived.min(now)),
                    packets: u32::try_from(packets).unwrap_or(u32::MAX),
                });
                self.heard.insert((s.from, s.kind));
                let mut live = lock(&self.live);
                live.first_remote_frame_at.get_or_insert(now);
                live.frames_received += 1;
                live.streams_heard = self.heard.len();
            }
            Event::KeyframeRequest(r) if Some(r.mid) == self.video_mid => {
                self.report.keyframe_requests += 1;
                self.video.keyframe_due = true;
            }
            _ => {}
        }
    }

    fn receive(&mut self, source: SocketAddr, data: &[u8], arrived: Instant) -> Result<(), String> {
        if !self.remote.contains(&source) {
            return Ok(());
        }
        self.datagrams.fetch_add(1, Ordering::Relaxed);
        self.arrived = arrived;
        let Ok(contents) = data.try_into() else {
            return Ok(());
        };
        self.rtc
            .handle_input(Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: self.local,
                    contents,
                },
            ))
            .map_err(|e| format!("rtc: {e}"))
    }

    fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.cfg.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn pt(&self, codec: Codec) -> Option<Pt> {
        self.rtc
            .codec_config()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
    }

    fn send_audio(&mut self, now: Instant) {
        let (Some(mid), Some(pt)) = (self.audio_mid, self.pt(Codec::Opus)) else {
            return;
        };
        let (n, packet) = self.audio.next_frame();
        let s = Stamp {
            from: self.cfg.me,
            kind: Kind::Audio,
            seq: self.audio_seq,
            sent_ns: self.ns(now),
        };
        let data = stamp::stamp(packet, s);
        let t = MediaTime::new(n * 960, Frequency::FORTY_EIGHT_KHZ);
        if let Some(w) = self.rtc.writer(mid) {
            if w.write(pt, now, t, data).is_ok() {
                self.report.sent.push(Sent {
                    kind: Kind::Audio,
                    sent_ns: s.sent_ns,
                });
                self.audio_seq += 1;
            }
        }
    }

    fn send_video(&mut self, now: Instant) {
        let (Some(mid), Some(pt)) = (self.video_mid, self.pt(Codec::Vp8)) else {
            return;
        };
        let (n, frame) = self.video.next_frame();
        let s = Stamp {
            from: self.cfg.me,
            kind: Kind::Video,
            seq: self.video_seq,
            sent_ns: self.ns(now),
        };
        let t = MediaTime::new(n * 3_000, Frequency::NINETY_KHZ);
        let layers: &[(&str, usize)] = if self.cfg.simulcast {
            &SIMULCAST_LAYERS
        } else {
            &[("", 1)]
        };
        let mut written = false;
        for &(rid, divisor) in layers {
            let data = stamp::stamp(&frame[..frame.len() / divisor], s);
            let Some(mut w) = self.rtc.writer(mid) else {
                return;
            };
            if !rid.is_empty() {
                w = w.rid(Rid::from(rid));
            }
            written |= w.write(pt, now, t, data).is_ok();
        }
        if written {
            self.report.sent.push(Sent {
                kind: Kind::Video,
                sent_ns: s.sent_ns,
            });
            self.video_seq += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One datagram from `rx`: its bytes, source and stamped arrival.
    async fn read(rx: &UdpSocket) -> (Vec<u8>, SocketAddr, Instant) {
        let (mut buf, mut cmsg) = ([0u8; 64], nix::cmsg_space!(nix::sys::time::TimeSpec));
        let (n, source, arrived) = rx
            .async_io(Interest::READABLE, || recv_stamped(rx, &mut buf, &mut cmsg))
            .await
            .expect("read");
        (buf[..n].to_vec(), source, arrived)
    }

    /// A datagram read 50 ms after it arrived is dated by the kernel's stamp, not by the read.
    ///
    /// The first socket on the machine that asks for receive stamps turns the kernel's
    /// stamping on through deferred work, and a datagram that arrives before that work has
    /// run is stamped when it is read. So probes go first until one is dated before its read
    /// (in the benchmark, sockets are bound seconds before the measured window).
    #[tokio::test]
    async fn a_datagram_is_dated_by_its_arrival_not_by_its_read() {
        let rx = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        let mut stamping = false;
        for _ in 0..100 {
            tx.send_to(b"probe", to).expect("send");
            std::thread::sleep(Duration::from_millis(5));
            if read(&rx).await.2.elapsed() >= Duration::from_millis(4) {
                stamping = true;
                break;
            }
        }
        assert!(
            stamping,
            "the kernel never dated a datagram before its read"
        );
        tx.send_to(b"stamp", to).expect("send");
        let sent = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let (data, source, arrived) = read(&rx).await;
        assert_eq!(data, b"stamp");
        assert_eq!(source, tx.local_addr().expect("addr"));
        let read = Instant::now();
        assert!(
            read.duration_since(arrived) >= Duration::from_millis(45),
            "dated {:?} before the read",
            read.duration_since(arrived)
        );
        // Loopback delivers inside the send; allow for the clocks' granularity.
        assert!(
            arrived + Duration::from_millis(5) >= sent,
            "dated {:?} before the send",
            sent.duration_since(arrived)
        );
    }
}
