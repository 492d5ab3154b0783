//! The floor: a null forwarder, to measure the least that any SFU on kernel UDP sockets
//! spends per forwarded packet on this machine.
//!
//! Whatever else an SFU does, it takes each datagram from the kernel, decrypts its SRTP once
//! and, for every subscriber, encrypts it with that subscriber's key and hands it back to the
//! kernel. The forwarder here does exactly that and nothing else: no ICE, no DTLS handshake
//! (fixed keys), no RTCP, no pacing, no bandwidth estimation, no retransmission history, no
//! header rewriting. It uses str0m's own SRTP cipher (AEAD AES-256-GCM, the profile sealroom
//! negotiates), hands datagrams to the kernel with `sendmmsg` in batches of up to
//! [`SEND_BATCH`] as sealroom does, and blocks in `recvfrom` when there is nothing to read. It
//! runs as its own process (this program with `--floor-forwarder`), pinned where the SFUs
//! run, in the same network namespace; the load is plain UDP sockets in this process that
//! publish the real scenarios' packet rate and sizes (the same pre-encoded Opus and VP8
//! loops, cut into packets of at most [`MAX_CHUNK`] bytes) and subscribe to everyone else.
//!
//! So its egress packets per CPU-second bound what any SFU can reach here, and the floor's
//! ratio to Janus's bounds sealroom ÷ Janus. Without the cipher (`floor-udp`) it is the
//! kernel's share alone.

use crate::report::{quantile, Traffic};
use crate::stamp::{AUDIO_EVERY, VIDEO_EVERY};
use crate::system::{self, Net, ProcSample};
use anyhow::{bail, Context};
use sealroom_client::assets::{OpusLoop, Vp8Loop};
use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::crypto::AeadAes256GcmCipher;
use tokio::io::AsyncBufReadExt as _;

/// Bytes of a floor packet's header (authenticated, not encrypted, like an RTP header):
/// magic 2, publisher 2, kind 1, flags 1, reserved 2, packet sequence 4, send time 8, frame 4.
pub const HEADER: usize = 24;
/// The AEAD tag after the body when the packet is encrypted.
pub const TAG: usize = 16;
/// Largest body: a video frame is cut into chunks of at most this (an RTP packetizer's
/// payload size).
pub const MAX_CHUNK: usize = 1_150;
/// Datagrams per `sendmmsg` call at most (sealroom's `SEND_BATCH`).
pub const SEND_BATCH: usize = 32;
const MAGIC: [u8; 2] = *b"FL";
/// Flag: the last packet of its frame.
const LAST: u8 = 1;
/// A peer's first datagram: `HELLO` and its index (u16); the forwarder echoes it back.
const HELLO: &[u8; 6] = b"HELLO!";
const BUF: usize = 2_048;

/// Which floor: kernel UDP alone, or with SRTP's cipher on every packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Udp,
    Aead,
}

impl Variant {
    /// The label in the report (the SFU column).
    pub fn label(self) -> &'static str {
        match self {
            Variant::Udp => "floor-udp",
            Variant::Aead => "floor-aead",
        }
    }
}

/// Peer `index`'s key (fixed: this is a measurement, not a secret).
fn key(index: u16) -> [u8; 32] {
    let mut k = [0x5a; 32];
    k[..2].copy_from_slice(&index.to_be_bytes());
    k
}

fn cipher(index: u16, encrypt: bool) -> Box<dyn AeadAes256GcmCipher> {
    str0m::crypto::from_feature_flags()
        .srtp_provider
        .aead_aes_256_gcm()
        .create_cipher(key(index), encrypt)
}

/// The nonce of a packet: unique per (publisher, kind, sequence), under any one key.
fn nonce(header: &[u8]) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[..3].copy_from_slice(&header[2..5]);
    iv[4..8].copy_from_slice(&header[8..12]);
    iv
}

/// What a floor packet's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub publisher: u16,
    pub video: bool,
    pub last: bool,
    pub seq: u32,
    pub sent_ns: u64,
    pub frame: u32,
}

impl Header {
    pub fn write(&self, out: &mut [u8]) {
        out[0..2].copy_from_slice(&MAGIC);
        out[2..4].copy_from_slice(&self.publisher.to_be_bytes());
        out[4] = u8::from(self.video);
        out[5] = if self.last { LAST } else { 0 };
        out[6..8].fill(0);
        out[8..12].copy_from_slice(&self.seq.to_be_bytes());
        out[12..20].copy_from_slice(&self.sent_ns.to_be_bytes());
        out[20..24].copy_from_slice(&self.frame.to_be_bytes());
    }

    /// The header of a datagram; `None` for anything else (bytes from the network).
    pub fn read(d: &[u8]) -> Option<Header> {
        let h = d.get(..HEADER)?;
        if h[0..2] != MAGIC || h[4] > 1 {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let mut ns = [0u8; 8];
        ns.copy_from_slice(&h[12..20]);
        Some(Header {
            publisher: u16::from_be_bytes([h[2], h[3]]),
            video: h[4] == 1,
            last: h[5] & LAST != 0,
            seq: u32_at(8),
            sent_ns: u64::from_be_bytes(ns),
            frame: u32_at(20),
        })
    }
}

/// Seal `body` after `header` into `out` (header, ciphertext, tag): the datagram's length.
fn seal(c: &mut dyn AeadAes256GcmCipher, header: &[u8], body: &[u8], out: &mut [u8]) -> usize {
    out[..HEADER].copy_from_slice(header);
    let end = HEADER + body.len() + TAG;
    // Only fails for a nonce of the wrong size, which `nonce` never makes.
    if c.encrypt(&nonce(header), header, body, &mut out[HEADER..end])
        .is_err()
    {
        return 0;
    }
    end
}

/// Open an encrypted datagram's body into `out`: its length, or `None` if it does not
/// authenticate (or is too short to hold a tag).
fn open(c: &mut dyn AeadAes256GcmCipher, d: &[u8], out: &mut [u8]) -> Option<usize> {
    if d.len() < HEADER + TAG {
        return None;
    }
    let (header, sealed) = d.split_at(HEADER);
    c.decrypt(&nonce(header), &[header], sealed, out).ok()
}

/// A UDP socket bound to `bind` with 4 MiB buffers each way (capped by net.core.rmem_max /
/// wmem_max; a smaller buffer still works): a burst of forwarded packets must not be lost
/// in the load generator and then blamed on the forwarder.
pub fn udp_socket(bind: SocketAddr, nonblocking: bool) -> anyhow::Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(nonblocking)?;
    s.bind(&bind.into())
        .with_context(|| format!("binding {bind}"))?;
    Ok(s.into())
}

/// The forwarder's peers: address, and the ciphers for what it receives from and sends to
/// each, by index.
struct Peer {
    addr: SocketAddr,
    open: Box<dyn AeadAes256GcmCipher>,
    seal: Box<dyn AeadAes256GcmCipher>,
}

/// Datagrams waiting for one `sendmmsg`, in buffers kept from batch to batch.
struct Batch {
    to: Vec<SocketAddr>,
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            to: Vec::with_capacity(SEND_BATCH),
            bufs: (0..SEND_BATCH).map(|_| vec![0u8; BUF]).collect(),
            lens: Vec::with_capacity(SEND_BATCH),
        }
    }

    /// The next free buffer, for a datagram to `to`; flushes first when the batch is full.
    fn slot(&mut self, socket: &std::net::UdpSocket, to: SocketAddr) -> &mut [u8] {
        if self.to.len() == SEND_BATCH {
            self.flush(socket);
        }
        self.to.push(to);
        self.lens.push(0);
        let i = self.to.len() - 1;
        &mut self.bufs[i]
    }

    /// Sets the length of the datagram [`Batch::slot`] gave last; 0 takes it back.
    fn fill(&mut self, len: usize) {
        if len == 0 {
            self.to.pop();
            self.lens.pop();
        } else if let Some(l) = self.lens.last_mut() {
            *l = len;
        }
    }

    /// Hand everything to the kernel; a datagram it refuses is dropped, the rest still go.
    fn flush(&mut self, socket: &std::net::UdpSocket) {
        use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
        use std::io::IoSlice;
        let mut at = 0;
        while at < self.to.len() {
            let addresses: Vec<SocketAddrAny> = self.to[at..]
                .iter()
                .map(|a| SocketAddrAny::from(*a))
                .collect();
            let slices: Vec<[IoSlice<'_>; 1]> = self.bufs[at..self.to.len()]
                .iter()
                .zip(&self.lens[at..])
                .map(|(b, &l)| [IoSlice::new(&b[..l])])
                .collect();
            let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = addresses
                .iter()
                .map(|_| SendAncillaryBuffer::default())
                .collect();
            let mut headers: Vec<MMsgHdr<'_>> = addresses
                .iter()
                .zip(&slices)
                .zip(controls.iter_mut())
                .map(|((a, s), c)| MMsgHdr::new_with_addr(a, s, c))
                .collect();
            match rustix::net::sendmmsg(socket, &mut headers, SendFlags::empty()) {
                Ok(sent) => at += sent.max(1),
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => at += 1,
            }
        }
        self.to.clear();
        self.lens.clear();
    }
}

/// The forwarder process: bind `bind`, print the bound address on a line of its own, then
/// forward until killed.
pub fn forward(bind: SocketAddr, variant: Variant) -> anyhow::Result<()> {
    let socket = udp_socket(bind, false)?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", socket.local_addr()?)?;
    stdout.flush()?;
    forward_on(&socket, variant)
}

/// Forward on a bound, blocking `socket` until an error: a datagram from a registered peer
/// goes to every other registered peer (re-encrypted for each with [`Variant::Aead`]);
/// anything else (no floor header, a failed tag, an unknown source) is dropped.
fn forward_on(socket: &std::net::UdpSocket, variant: Variant) -> anyhow::Result<()> {
    let mut by_addr: HashMap<SocketAddr, u16> = HashMap::new();
    let mut peers: Vec<Option<Peer>> = Vec::new();
    let mut buf = vec![0u8; BUF];
    let mut plain = vec![0u8; BUF];
    let mut batch = Batch::new();
    let mut flags = rustix::net::RecvFlags::empty();
    loop {
        let (len, from) = match rustix::net::recvfrom(socket, &mut buf[..], flags) {
            Ok((len, _, Some(from))) => match SocketAddr::try_from(from) {
                Ok(a) => (len, a),
                Err(_) => continue,
            },
            Ok(_) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                // Nothing more to read: send what this drain made, then block again.
                batch.flush(socket);
                flags = rustix::net::RecvFlags::empty();
                continue;
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => bail!("receiving: {e}"),
        };
        flags = rustix::net::RecvFlags::DONTWAIT;
        let d = &buf[..len.min(BUF)];
        if d.len() == HELLO.len() + 2 && d.starts_with(HELLO) {
            let index = u16::from_be_bytes([d[6], d[7]]);
            let slot = usize::from(index);
            if peers.len() <= slot {
                peers.resize_with(slot + 1, || None);
            }
            peers[slot] = Some(Peer {
                addr: from,
                open: cipher(index, false),
                seal: cipher(index, true),
            });
            by_addr.insert(from, index);
            let _ = socket.send_to(d, from);
            continue;
        }
        let Some(&index) = by_addr.get(&from) else {
            continue;
        };
        let (header, body) = match variant {
            Variant::Udp => {
                if Header::read(d).is_none() {
                    continue;
                }
                (&d[..HEADER], &d[HEADER..])
            }
            Variant::Aead => {
                let Some(p) = peers.get_mut(usize::from(index)).and_then(Option::as_mut) else {
                    continue;
                };
                if Header::read(d).is_none() {
                    continue;
                }
                let Some(n) = open(p.open.as_mut(), d, &mut plain) else {
                    continue;
                };
                (&d[..HEADER], &plain[..n])
            }
        };
        for (q, peer) in peers.iter_mut().enumerate() {
            let Some(peer) = peer else { continue };
            if q == usize::from(index) {
                continue;
            }
            let out = batch.slot(socket, peer.addr);
            let n = match variant {
                Variant::Udp => {
                    let n = header.len() + body.len();
                    out[..HEADER].copy_from_slice(header);
                    out[HEADER..n].copy_from_slice(body);
                    n
                }
                Variant::Aead => seal(peer.seal.as_mut(), header, body, out),
            };
            batch.fill(n);
        }
    }
}

/// One floor measurement: `n` participants (audio, and video if `video`) for `seconds`
/// after `warmup`.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub n: usize,
    pub video: bool,
    pub variant: Variant,
    pub warmup: Duration,
    pub seconds: Duration,
}

/// What one load peer counted.
#[derive(Debug, Default)]
struct Counted {
    /// Frames it published with a send time in the window, by kind (audio, video).
    published: [u64; 2],
    /// Frames it received, complete with their last packet, sent in the window, by
    /// (publisher, kind).
    frames: HashMap<(u16, bool), u64>,
    /// Packets it received that were sent in the window.
    packets: u64,
    /// Every datagram that arrived while the window was open.
    datagrams: u64,
    /// Delay from the publisher's send to this peer's read, ms, of every packet in the
    /// window.
    delays_ms: Vec<f64>,
    /// Packets that did not authenticate or had no floor header.
    bad: u64,
}

/// When things happen, in ns since `epoch`.
#[derive(Debug, Clone, Copy)]
struct Times {
    epoch: Instant,
    start: Instant,
    window_ns: (u64, u64),
    stop: Instant,
}

fn ns_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// One load peer: register with the forwarder, then publish on schedule and count what
/// arrives until `times.stop`.
async fn peer(
    socket: tokio::net::UdpSocket,
    index: u16,
    forwarder: SocketAddr,
    plan: Plan,
    times: Times,
) -> anyhow::Result<Counted> {
    let mut buf = vec![0u8; BUF];
    let mut hello = HELLO.to_vec();
    hello.extend_from_slice(&index.to_be_bytes());
    let registered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            socket.send_to(&hello, forwarder).await?;
            let got = tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await;
            if let Ok(Ok(n)) = got {
                if buf[..n] == hello[..] {
                    return Ok::<_, std::io::Error>(());
                }
            }
        }
    })
    .await;
    match registered {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("peer {index}: {e}"),
        Err(_) => bail!("peer {index}: the forwarder did not answer within 5 s"),
    }
    let mut own_seal = cipher(index, true);
    let mut open_own = cipher(index, false);
    let mut audio = OpusLoop::microphone();
    let mut video = Vp8Loop::camera();
    // Spread the publishers over the frame intervals, as joins at different moments do.
    let n = plan.n.max(1) as u32;
    let mut next_audio = times.start + AUDIO_EVERY * u32::from(index) / n;
    let mut next_video = times.start + VIDEO_EVERY * u32::from(index) / n;
    let (mut seq, mut frame) = ([0u32; 2], [0u32; 2]);
    let mut out = vec![0u8; BUF];
    let mut plain = vec![0u8; BUF];
    let mut counted = Counted::default();
    let in_window = |ns: u64| ns >= times.window_ns.0 && ns < times.window_ns.1;
    loop {
        let mut wake = next_audio.min(times.stop);
        if plan.video {
            wake = wake.min(next_video);
        }
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((len, _)) = r else { continue };
                let now = ns_since(times.epoch, Instant::now());
                if in_window(now) {
                    counted.datagrams += 1;
                }
                let d = &buf[..len];
                let Some(h) = Header::read(d) else {
                    counted.bad += 1;
                    continue;
                };
                if plan.variant == Variant::Aead && open(open_own.as_mut(), d, &mut plain).is_none() {
                    counted.bad += 1;
                    continue;
                }
                if in_window(h.sent_ns) {
                    counted.packets += 1;
                    counted.delays_ms.push(now.saturating_sub(h.sent_ns) as f64 / 1e6);
                    if h.last {
                        *counted.frames.entry((h.publisher, h.video)).or_default() += 1;
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if now >= times.stop {
                    return Ok(counted);
                }
                for (video_kind, next, every) in [(false, &mut next_audio, AUDIO_EVERY), (true, &mut next_video, VIDEO_EVERY)] {
                    if (video_kind && !plan.video) || now < *next {
                        continue;
                    }
                    // A peer that is late skips the frames it is late for, as the real
                    // load peers do.
                    while *next <= now {
                        *next += every;
                    }
                    let body = if video_kind { video.next_frame().1 } else { audio.next_frame().1 };
                    let k = usize::from(video_kind);
                    let sent_ns = ns_since(times.epoch, now);
                    let chunks = body.len().div_ceil(MAX_CHUNK).max(1);
                    let mut whole = true;
                    for (i, chunk) in body.chunks(MAX_CHUNK).enumerate() {
                        let h = Header {
                            publisher: index,
                            video: video_kind,
                            last: i + 1 == chunks,
                            seq: seq[k],
                            sent_ns,
                            frame: frame[k],
                        };
                        seq[k] = seq[k].wrapping_add(1);
                        h.write(&mut out[..HEADER]);
                        let len = match plan.variant {
                            Variant::Udp => {
                                out[HEADER..HEADER + chunk.len()].copy_from_slice(chunk);
                                HEADER + chunk.len()
                            }
                            Variant::Aead => {
                                let mut header = [0u8; HEADER];
                                header.copy_from_slice(&out[..HEADER]);
                                seal(own_seal.as_mut(), &header, chunk, &mut out)
                            }
                        };
                        // A full socket buffer drops the packet, as a network would; the
                        // frame then does not count as published.
                        whole &= socket.try_send_to(&out[..len], forwarder).is_ok();
                    }
                    frame[k] = frame[k].wrapping_add(1);
                    if whole && in_window(sent_ns) {
                        counted.published[k] += 1;
                    }
                }
            }
        }
    }
}

/// Start the forwarder pinned to `cpu`, run `plan`'s meeting through it, and measure.
pub async fn measure(net: &Net, cpu: Option<&str>, plan: Plan) -> anyhow::Result<Traffic> {
    if plan.n < 2 || plan.n > usize::from(u16::MAX) {
        bail!("a floor meeting needs 2 to 65535 participants");
    }
    let exe = std::env::current_exe().context("finding this program")?;
    let mut cmd = net.command(cpu, &exe.to_string_lossy());
    cmd.arg("--floor-forwarder")
        .arg(SocketAddr::new(net.media_ip(), 0).to_string());
    if plan.variant == Variant::Aead {
        cmd.arg("--floor-aead");
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the floor forwarder")?;
    let stdout = child.stdout.take().context("the forwarder's stdout")?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .context("the forwarder did not start within 10 s")??;
    let forwarder: SocketAddr = line
        .trim()
        .parse()
        .with_context(|| format!("the forwarder printed {line:?}, not its address"))?;
    let pid = child.id().context("the forwarder has exited")?;
    let epoch = Instant::now();
    let start = epoch + Duration::from_millis(300);
    let w0 = start + plan.warmup;
    let w1 = w0 + plan.seconds;
    let times = Times {
        epoch,
        start,
        window_ns: (ns_since(epoch, w0), ns_since(epoch, w1)),
        // Frames sent late in the window have a second to arrive.
        stop: w1 + Duration::from_secs(1),
    };
    let mut tasks = Vec::with_capacity(plan.n);
    for i in 0..plan.n {
        let std = udp_socket(SocketAddr::new(net.media_ip(), 0), true)?;
        let socket = tokio::net::UdpSocket::from_std(std)?;
        let index = u16::try_from(i)?;
        tasks.push(tokio::spawn(peer(socket, index, forwarder, plan, times)));
    }
    tokio::time::sleep_until(w0.into()).await;
    let own = std::process::id();
    let (sfu0, load0) = (ProcSample::read(pid)?, ProcSample::read(own)?);
    let threads0 = system::thread_cpu(pid);
    tokio::time::sleep_until(w1.into()).await;
    let (sfu1, load1) = (ProcSample::read(pid)?, ProcSample::read(own)?);
    let threads1 = system::thread_cpu(pid);
    let mut counts = Vec::with_capacity(plan.n);
    for t in tasks {
        counts.push(t.await.context("a load peer panicked")??);
    }
    drop(child);
    Ok(traffic(plan, &counts, (&sfu0, &sfu1), (&load0, &load1), {
        system::busiest_thread_s(&threads0, &threads1)
    }))
}

/// The measurement as the report reads it.
fn traffic(
    plan: Plan,
    counts: &[Counted],
    sfu: (&ProcSample, &ProcSample),
    load: (&ProcSample, &ProcSample),
    busiest_s: f64,
) -> Traffic {
    let seconds = sfu.1.at.duration_since(sfu.0.at).as_secs_f64();
    let sfu_cpu_s = sfu.1.cpu_s - sfu.0.cpu_s;
    let load_cpu_s = load.1.cpu_s - load.0.cpu_s;
    let published: Vec<[u64; 2]> = counts.iter().map(|c| c.published).collect();
    let mut expected = 0;
    let mut losses = Vec::new();
    for (r, c) in counts.iter().enumerate() {
        for (p, sent) in published.iter().enumerate() {
            if p == r {
                continue;
            }
            for (k, video) in [(0, false), (1, true)] {
                if video && !plan.video {
                    continue;
                }
                expected += sent[k];
                let got = u16::try_from(p)
                    .ok()
                    .and_then(|p| c.frames.get(&(p, video)))
                    .copied()
                    .unwrap_or(0);
                if sent[k] > 0 {
                    losses.push(1.0 - (got.min(sent[k]) as f64 / sent[k] as f64));
                }
            }
        }
    }
    losses.sort_by(f64::total_cmp);
    let mut delays: Vec<f64> = counts
        .iter()
        .flat_map(|c| c.delays_ms.iter().copied())
        .collect();
    delays.sort_by(f64::total_cmp);
    let received: u64 = counts.iter().flat_map(|c| c.frames.values()).sum();
    Traffic {
        n: plan.n,
        meetings: 1,
        video: plan.video,
        simulcast: false,
        seconds,
        sfu_cpu_s,
        sfu_busiest_thread_cpu_s: busiest_s,
        load_cpu_s,
        other_cpu_s: (sfu.1.machine_busy_s - sfu.0.machine_busy_s) - sfu_cpu_s - load_cpu_s,
        media_packets: counts.iter().map(|c| c.packets).sum(),
        udp_out: counts.iter().map(|c| c.datagrams).sum(),
        frames_published: published.iter().flatten().sum(),
        frames_expected: expected,
        frames_received: received,
        worst_stream_loss: losses.last().copied().unwrap_or(0.0),
        stream_loss_p99: quantile(&losses, 0.99),
        // No kernel receive stamps here: the read in the load peer is the only delay.
        delay_p50_ms: f64::NAN,
        delay_p99_ms: f64::NAN,
        delay_max_ms: delays.last().copied().unwrap_or(f64::NAN),
        frame_delay_p50_ms: quantile(&delays, 0.5),
        frame_delay_p99_ms: quantile(&delays, 0.99),
        rss_idle_kib: sfu.0.rss_kib,
        rss_kib: sfu.1.rss_kib,
        anon_idle_kib: sfu.0.anon_kib,
        anon_kib: sfu.1.anon_kib,
        socket_drops: sfu.1.udp_rcvbuf_errors - sfu.0.udp_rcvbuf_errors,
        unstamped: counts.iter().map(|c| c.bad).sum(),
        keyframe_requests: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(publisher: u16, seq: u32) -> Header {
        Header {
            publisher,
            video: true,
            last: seq % 2 == 1,
            seq,
            sent_ns: 1_234_567_890_123,
            frame: seq / 2,
        }
    }

    #[test]
    fn headers_read_back_and_anything_else_is_refused() {
        let h = header(7, 41);
        let mut b = [0u8; HEADER];
        h.write(&mut b);
        assert_eq!(Header::read(&b), Some(h));
        assert_eq!(Header::read(&b[..HEADER - 1]), None);
        let mut wrong = b;
        wrong[0] = b'X';
        assert_eq!(Header::read(&wrong), None);
        let mut kind = b;
        kind[4] = 2;
        assert_eq!(Header::read(&kind), None);
        assert_eq!(Header::read(HELLO), None);
    }

    #[test]
    fn a_sealed_packet_opens_only_with_its_key_and_untouched() {
        let mut h = [0u8; HEADER];
        header(3, 9).write(&mut h);
        let body = b"forty-two bytes of a frame, more or less..";
        let mut d = vec![0u8; BUF];
        let len = seal(cipher(3, true).as_mut(), &h, body, &mut d);
        assert_eq!(len, HEADER + body.len() + TAG);
        let d = &d[..len];
        let mut plain = vec![0u8; BUF];
        let n = open(cipher(3, false).as_mut(), d, &mut plain).expect("its own key opens it");
        assert_eq!(&plain[..n], body);
        assert_eq!(open(cipher(4, false).as_mut(), d, &mut plain), None);
        for i in [0, HEADER - 1, HEADER, len - 1] {
            let mut t = d.to_vec();
            t[i] ^= 0x01;
            assert_eq!(
                open(cipher(3, false).as_mut(), &t, &mut plain),
                None,
                "byte {i}"
            );
        }
        assert_eq!(
            open(
                cipher(3, false).as_mut(),
                &d[..HEADER + TAG - 1],
                &mut plain
            ),
            None
        );
    }

    fn peer_socket() -> std::net::UdpSocket {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind on loopback");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("read timeout");
        s
    }

    fn register(s: &std::net::UdpSocket, index: u16, to: SocketAddr) {
        let mut hello = HELLO.to_vec();
        hello.extend_from_slice(&index.to_be_bytes());
        s.send_to(&hello, to).expect("send hello");
        let mut b = [0u8; 64];
        let (n, _) = s.recv_from(&mut b).expect("the forwarder echoes the hello");
        assert_eq!(&b[..n], &hello[..]);
    }

    fn recv(s: &std::net::UdpSocket) -> Option<Vec<u8>> {
        let mut b = vec![0u8; BUF];
        s.recv_from(&mut b).ok().map(|(n, _)| b[..n].to_vec())
    }

    #[test]
    fn the_forwarder_reseals_for_every_other_peer_and_drops_what_does_not_authenticate() {
        let socket = udp_socket("127.0.0.1:0".parse().expect("address"), false).expect("bind");
        let at = socket.local_addr().expect("bound");
        // Blocks in recvfrom for the rest of the test process.
        std::thread::spawn(move || forward_on(&socket, Variant::Aead));
        let peers: Vec<std::net::UdpSocket> = (0..3).map(|_| peer_socket()).collect();
        for (i, p) in peers.iter().enumerate() {
            register(p, u16::try_from(i).expect("small"), at);
        }
        let stranger = peer_socket();
        let mut h = [0u8; HEADER];
        header(0, 1).write(&mut h);
        let body = b"an opus frame";
        let mut d = vec![0u8; BUF];
        let len = seal(cipher(0, true).as_mut(), &h, body, &mut d);
        peers[0].send_to(&d[..len], at).expect("send");
        let mut plain = vec![0u8; BUF];
        for (i, p) in peers.iter().enumerate().skip(1) {
            let got = recv(p).expect("every other peer gets the packet");
            assert_eq!(Header::read(&got), Some(header(0, 1)));
            let index = u16::try_from(i).expect("small");
            let n = open(cipher(index, false).as_mut(), &got, &mut plain)
                .expect("sealed with the subscriber's own key");
            assert_eq!(&plain[..n], body);
            assert_eq!(open(cipher(0, false).as_mut(), &got, &mut plain), None);
        }
        assert_eq!(
            recv(&peers[0]),
            None,
            "the publisher does not get its own packet"
        );
        // A flipped byte, a packet under another peer's key, a stranger's packet and
        // garbage are all dropped.
        let mut tampered = d[..len].to_vec();
        tampered[HEADER + 2] ^= 0x80;
        peers[0].send_to(&tampered, at).expect("send");
        let mut other = vec![0u8; BUF];
        let olen = seal(cipher(2, true).as_mut(), &h, body, &mut other);
        peers[0].send_to(&other[..olen], at).expect("send");
        stranger.send_to(&d[..len], at).expect("send");
        peers[0].send_to(b"garbage", at).expect("send");
        for p in &peers[1..] {
            assert_eq!(recv(p), None);
        }
        // And the forwarder still works after all of it.
        peers[1].send_to(&seal_for(1, 5), at).expect("send");
        assert!(recv(&peers[0]).is_some() && recv(&peers[2]).is_some());
    }

    fn seal_for(index: u16, seq: u32) -> Vec<u8> {
        let mut h = [0u8; HEADER];
        header(index, seq).write(&mut h);
        let mut d = vec![0u8; BUF];
        let len = seal(cipher(index, true).as_mut(), &h, b"x", &mut d);
        d.truncate(len);
        d
    }

    #[test]
    fn loss_and_expected_frames_count_every_receiver_and_publisher() {
        let plan = Plan {
            n: 3,
            video: false,
            variant: Variant::Udp,
            warmup: Duration::ZERO,
            seconds: Duration::from_secs(1),
        };
        let counted = |published: u64, got: [(u16, u64); 2]| Counted {
            published: [published, 0],
            frames: got.iter().map(|&(p, n)| ((p, false), n)).collect(),
            packets: got.iter().map(|g| g.1).sum(),
            ..Counted::default()
        };
        // Each publishes 50 frames; peer 2 missed 5 of peer 0's.
        let counts = [
            counted(50, [(1, 50), (2, 50)]),
            counted(50, [(0, 50), (2, 50)]),
            counted(50, [(0, 45), (1, 50)]),
        ];
        let s = ProcSample::read(std::process::id()).expect("own /proc");
        let t = traffic(plan, &counts, (&s, &s), (&s, &s), 0.0);
        assert_eq!(t.frames_published, 150);
        assert_eq!(t.frames_expected, 300);
        assert_eq!(t.frames_received, 295);
        assert_eq!(t.media_packets, 295);
        assert!((t.worst_stream_loss - 0.1).abs() < 1e-9);
        assert!((t.loss() - 5.0 / 300.0).abs() < 1e-9);
    }
}
