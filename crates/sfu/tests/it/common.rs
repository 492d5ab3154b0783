//! A virtual world (addresses from the 198.18.0.0/15 benchmark range, never on a wire): str0m clients, the SFU core and a seeded lossy network, all on one
//! virtual clock. Nothing here touches a socket or the real clock (except the start instant).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sealroom_sfu::{
    parse_answer, parse_offer, Event, Input, Output, ParticipantConfig, ParticipantId, RoomId, Sfu,
    SfuConfig,
};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid, Rid};
use str0m::media::{Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Rtc};

/// Seed from `SEALROOM_SFU_SEED` or a fixed default; printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("SEALROOM_SFU_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5ea1_2004);
    println!("{test}: seed {seed} (override with SEALROOM_SFU_SEED)");
    seed
}

pub const SFU_ADDR: &str = "198.18.0.1:5000";

pub fn sfu_addr() -> SocketAddr {
    SFU_ADDR.parse().expect("constant address")
}

pub fn client_addr(i: usize) -> SocketAddr {
    format!("198.18.1.{}:6000", i + 1)
        .parse()
        .expect("constant address")
}

#[derive(Debug, Clone)]
pub struct Packet {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// A tiny netem: independent loss and uniform delay in [delay, delay + jitter].
pub struct Net {
    rng: ChaCha8Rng,
    pub loss: f64,
    pub delay: Duration,
    pub jitter: Duration,
    /// Deliver in bursts: arrival times rounded up to the next multiple of the period
    /// after the origin, as a server that reads its socket in batches sees them.
    pub batch: Option<(Instant, Duration)>,
    seq: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: HashMap<u64, Packet>,
}

impl Net {
    pub fn new(seed: u64) -> Self {
        Net {
            rng: ChaCha8Rng::seed_from_u64(seed),
            loss: 0.0,
            delay: Duration::from_millis(10),
            jitter: Duration::ZERO,
            batch: None,
            seq: 0,
            queue: BinaryHeap::new(),
            packets: HashMap::new(),
        }
    }

    pub fn send(&mut self, now: Instant, p: Packet) {
        if self.loss > 0.0 && self.rng.gen_bool(self.loss) {
            return;
        }
        let jitter = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_micros(self.rng.gen_range(0..self.jitter.as_micros() as u64))
        };
        let mut at = now + self.delay + jitter;
        if let Some((origin, period)) = self.batch {
            let since = at.saturating_duration_since(origin).as_nanos();
            let period = period.as_nanos().max(1);
            let slots = since.div_ceil(period);
            at = origin + Duration::from_nanos((slots * period) as u64);
        }
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.packets.insert(self.seq, p);
    }

    pub fn next_time(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    pub fn pop_due(&mut self, now: Instant) -> Option<Packet> {
        match self.queue.peek() {
            Some(Reverse((t, _))) if *t <= now => {
                let Reverse((_, seq)) = self.queue.pop()?;
                self.packets.remove(&seq)
            }
            _ => None,
        }
    }

    pub fn find(&self, f: impl Fn(&Packet) -> bool) -> Option<Vec<u8>> {
        self.packets.values().find(|p| f(p)).map(|p| p.data.clone())
    }
}

/// What a client publishes.
#[derive(Debug, Clone, Copy)]
pub struct Publish {
    pub audio: bool,
    pub video: bool,
    /// Send the video as three simulcast layers.
    pub simulcast: bool,
}

pub const LAYERS: [(&str, usize); 3] = [("l", 300), ("m", 1_200), ("h", 4_000)];

pub struct Client {
    pub id: ParticipantId,
    pub addr: SocketAddr,
    pub rtc: Rtc,
    pub timeout: Instant,
    pub publish: Publish,
    pub audio_mid: Option<Mid>,
    pub video_mid: Option<Mid>,
    pending: Option<SdpPendingOffer>,
    pub connected: bool,
    pub failed: Option<String>,
    /// Frames received, per (publisher stream id, kind).
    pub frames: HashMap<(String, MediaKind), u64>,
    /// VP8 keyframes received, per publisher stream id.
    pub keyframes: HashMap<String, u64>,
    /// Every video payload received, when `record` is set.
    pub record: bool,
    pub received_payloads: Vec<Vec<u8>>,
    /// Keyframe requests that reached this client as a publisher.
    pub keyframe_requests: u64,
    keyframe_due: bool,
    frame_no: u64,
    /// Payloads to send instead of generated ones (video), front first.
    pub scripted_video: Vec<Vec<u8>>,
    pub sent_payloads: Vec<Vec<u8>>,
}

impl Client {
    pub fn new(now: Instant, i: usize, id: ParticipantId, publish: Publish) -> Self {
        let addr = client_addr(i);
        let mut rtc = Rtc::builder()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .enable_bwe(Some(str0m::bwe::Bitrate::kbps(1500)))
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("valid candidate"));
        Client {
            id,
            addr,
            rtc,
            timeout: now,
            publish,
            audio_mid: None,
            video_mid: None,
            pending: None,
            connected: false,
            failed: None,
            frames: HashMap::new(),
            keyframes: HashMap::new(),
            record: false,
            received_payloads: Vec::new(),
            keyframe_requests: 0,
            keyframe_due: true,
            frame_no: 0,
            scripted_video: Vec::new(),
            sent_payloads: Vec::new(),
        }
    }

    /// The client's first offer (its own tracks, sendonly).
    pub fn offer(&mut self) -> String {
        let mut api = self.rtc.sdp_api();
        if self.publish.audio {
            self.audio_mid =
                Some(api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        }
        if self.publish.video {
            let sim = self.publish.simulcast.then(|| {
                let mut s = Simulcast::new();
                for (rid, _) in LAYERS {
                    s.add_send_layer(SimulcastLayer::new(rid));
                }
                s
            });
            self.video_mid =
                Some(api.add_media(MediaKind::Video, Direction::SendOnly, None, None, sim));
        }
        let (offer, pending) = api.apply().expect("the client has media to offer");
        self.pending = Some(pending);
        offer.to_sdp_string()
    }

    pub fn accept_answer(&mut self, sdp: &str) {
        let answer = SdpAnswer::from_sdp_string(sdp).expect("SFU answer parses");
        let pending = self.pending.take().expect("an offer is pending");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
    }

    /// Answers an offer from the SFU.
    pub fn answer(&mut self, sdp: &str) -> String {
        let offer = SdpOffer::from_sdp_string(sdp).expect("SFU offer parses");
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .expect("offer accepted");
        answer.to_sdp_string()
    }

    fn pt(&self, codec: Codec) -> Option<str0m::media::Pt> {
        self.rtc
            .codec_config()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
    }

    pub fn send_audio(&mut self, now: Instant, rng: &mut impl RngCore) {
        let (Some(mid), Some(pt)) = (self.audio_mid, self.pt(Codec::Opus)) else {
            return;
        };
        if !self.connected {
            return;
        }
        let mut payload = vec![0u8; 80];
        rng.fill_bytes(&mut payload);
        let t = MediaTime::new(self.frame_no * 960, Frequency::FORTY_EIGHT_KHZ);
        if let Some(w) = self.rtc.writer(mid) {
            let _ = w.write(pt, now, t, payload);
        }
    }

    /// One video frame; a keyframe first and whenever one was asked for. Payloads follow the
    /// SFrame profile: 10 clear bytes on keyframes, 1 on delta frames, then random bytes.
    pub fn send_video(&mut self, now: Instant, rng: &mut impl RngCore) {
        let (Some(mid), Some(pt)) = (self.video_mid, self.pt(Codec::Vp8)) else {
            return;
        };
        if !self.connected {
            return;
        }
        self.frame_no += 1;
        let key = std::mem::take(&mut self.keyframe_due);
        let t = MediaTime::new(self.frame_no * 3000, Frequency::NINETY_KHZ);
        let layers: Vec<(Option<Rid>, usize)> = if self.publish.simulcast {
            LAYERS
                .iter()
                .map(|(r, n)| (Some((*r).into()), *n))
                .collect()
        } else {
            vec![(None, 1_500)]
        };
        for (rid, size) in layers {
            let payload = if !self.scripted_video.is_empty() && rid.is_none() {
                self.scripted_video.remove(0)
            } else {
                vp8_frame(key, size, rng)
            };
            if self.record {
                self.sent_payloads.push(payload.clone());
            }
            let Some(mut w) = self.rtc.writer(mid) else {
                return;
            };
            if let Some(rid) = rid {
                w = w.rid(rid);
            }
            let _ = w.write(pt, now, t, payload);
        }
    }

    pub fn request_keyframe(&mut self, mid: Mid) -> bool {
        self.rtc
            .writer(mid)
            .map(|mut w| w.request_keyframe(None, KeyframeRequestKind::Pli).is_ok())
            .unwrap_or(false)
    }

    pub fn frame_no_video(&self) -> u64 {
        self.frame_no
    }

    pub fn video_frames_from(&self, publisher: ParticipantId) -> u64 {
        self.frames
            .get(&(publisher.to_string(), MediaKind::Video))
            .copied()
            .unwrap_or(0)
    }

    pub fn keyframes_from(&self, publisher: ParticipantId) -> u64 {
        self.keyframes
            .get(&publisher.to_string())
            .copied()
            .unwrap_or(0)
    }

    pub fn audio_frames_from(&self, publisher: ParticipantId) -> u64 {
        self.frames
            .get(&(publisher.to_string(), MediaKind::Audio))
            .copied()
            .unwrap_or(0)
    }
}

/// A VP8-shaped frame: RFC 6386 §9.1 frame tag (bit 0 clear on keyframes) and, on keyframes,
/// the start code and dimensions; then random "ciphertext".
pub fn vp8_frame(key: bool, size: usize, rng: &mut impl RngCore) -> Vec<u8> {
    let mut f = vec![0u8; size.max(16)];
    rng.fill_bytes(&mut f);
    if key {
        f[0] = (f[0] & !0x01) | 0x10;
        f[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        f[6..10].copy_from_slice(&[0x80, 0x02, 0xe0, 0x01]);
    } else {
        f[0] |= 0x11;
    }
    f
}

pub struct World {
    pub now: Instant,
    pub start: Instant,
    pub sfu: Sfu,
    pub sfu_timeout: Instant,
    pub clients: Vec<Client>,
    pub net: Net,
    pub events: Vec<(Instant, Event)>,
    /// Datagrams the SFU emitted, per destination, with the time.
    pub transmitted: Vec<(Instant, SocketAddr)>,
    /// How often the SFU asked to be woken (`Output::Timeout`), and how often for a time
    /// that was already due.
    pub timeouts_returned: u64,
    pub timeouts_already_due: u64,
    pub media: bool,
    /// The SFU's answers to each client's first offer.
    pub answers: Vec<String>,
    next_audio: Instant,
    next_video: Instant,
    rng: ChaCha8Rng,
}

impl World {
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, SfuConfig::new(vec![sfu_addr()]))
    }

    /// A world whose SFU has `config` (its host candidates should be [`sfu_addr`]).
    pub fn with_config(seed: u64, config: SfuConfig) -> Self {
        let now = Instant::now();
        let sfu = Sfu::new(config).expect("valid config");
        World {
            now,
            start: now,
            sfu,
            sfu_timeout: now,
            timeouts_returned: 0,
            timeouts_already_due: 0,
            clients: Vec::new(),
            net: Net::new(seed),
            events: Vec::new(),
            transmitted: Vec::new(),
            media: true,
            answers: Vec::new(),
            next_audio: now,
            next_video: now,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xa5a5),
        }
    }

    /// Adds a participant to room 1 and runs its first offer/answer.
    pub fn join(&mut self, publish: Publish) -> usize {
        self.join_with(publish, ParticipantConfig::new(RoomId(1)), |s| {
            s.to_string()
        })
    }

    /// Like [`World::join`] with a config and a hook that may alter the client's offer.
    pub fn join_with(
        &mut self,
        publish: Publish,
        config: ParticipantConfig,
        tamper: impl FnOnce(&str) -> String,
    ) -> usize {
        let i = self.clients.len();
        let id = ParticipantId(i as u64 + 1);
        let mut c = Client::new(self.now, i, id, publish);
        self.sfu
            .add_participant(self.now, id, config)
            .expect("new participant");
        // Through the wire format, as a server does it.
        let offer = parse_offer(id, &tamper(&c.offer())).expect("client offer parses");
        let answer = self
            .sfu
            .accept_offer(self.now, id, offer)
            .expect("offer accepted")
            .to_sdp_string();
        c.accept_answer(&answer);
        self.answers.push(answer);
        self.clients.push(c);
        i
    }

    fn drain(&mut self) {
        loop {
            match self.sfu.poll_output(self.now) {
                Output::Transmit {
                    source,
                    destination,
                    contents,
                } => {
                    self.transmitted.push((self.now, destination));
                    self.net.send(
                        self.now,
                        Packet {
                            from: source,
                            to: destination,
                            data: contents,
                        },
                    );
                }
                Output::Event(e) => {
                    if let Event::Offer { participant, offer } = &e {
                        if let Some(c) = self.clients.iter_mut().find(|c| c.id == *participant) {
                            let answer = c.answer(&offer.to_sdp_string());
                            let answer =
                                parse_answer(*participant, &answer).expect("client answer parses");
                            self.sfu
                                .accept_answer(*participant, answer)
                                .expect("answer accepted");
                        }
                    }
                    self.events.push((self.now, e));
                }
                Output::Timeout(t) => {
                    self.timeouts_returned += 1;
                    if t <= self.now {
                        self.timeouts_already_due += 1;
                    }
                    self.sfu_timeout = t;
                    break;
                }
            }
        }
        for c in &mut self.clients {
            if c.failed.is_some() {
                continue;
            }
            loop {
                match c.rtc.poll_output() {
                    Ok(str0m::Output::Timeout(t)) => {
                        c.timeout = t;
                        break;
                    }
                    Ok(str0m::Output::Transmit(t)) => self.net.send(
                        self.now,
                        Packet {
                            from: t.source,
                            to: t.destination,
                            data: t.contents.to_vec(),
                        },
                    ),
                    Ok(str0m::Output::Event(e)) => match e {
                        str0m::Event::Connected => c.connected = true,
                        str0m::Event::MediaData(d) => {
                            if let Some(media) = c.rtc.media(d.mid) {
                                let key = (media.stream_id().to_string(), media.kind());
                                // RFC 6386 §9.1: bit 0 of the frame tag is clear on keyframes.
                                if media.kind() == MediaKind::Video
                                    && d.data.first().is_some_and(|b| b & 0x01 == 0)
                                {
                                    *c.keyframes.entry(key.0.clone()).or_default() += 1;
                                }
                                *c.frames.entry(key).or_default() += 1;
                                if c.record && media.kind() == MediaKind::Video {
                                    c.received_payloads.push(d.data.to_vec());
                                }
                            }
                        }
                        str0m::Event::KeyframeRequest(r) if Some(r.mid) == c.video_mid => {
                            c.keyframe_requests += 1;
                            c.keyframe_due = true;
                        }
                        _ => {}
                    },
                    Err(e) => {
                        c.failed = Some(e.to_string());
                        break;
                    }
                }
            }
        }
    }

    /// Runs the world for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.drain();
        while self.now < end {
            let mut next = end.min(self.sfu_timeout);
            for c in &self.clients {
                if c.failed.is_none() {
                    next = next.min(c.timeout);
                }
            }
            if let Some(t) = self.net.next_time() {
                next = next.min(t);
            }
            if self.media {
                next = next.min(self.next_audio).min(self.next_video);
            }
            self.now = next.max(self.now);

            while let Some(p) = self.net.pop_due(self.now) {
                if p.to == sfu_addr() {
                    self.sfu.handle_input(
                        self.now,
                        Input::Receive {
                            source: p.from,
                            destination: p.to,
                            contents: &p.data,
                        },
                    );
                } else if let Some(c) = self.clients.iter_mut().find(|c| c.addr == p.to) {
                    if c.failed.is_some() {
                        continue;
                    }
                    let Ok(contents) = p.data.as_slice().try_into() else {
                        continue;
                    };
                    let input = str0m::Input::Receive(
                        self.now,
                        Receive {
                            proto: Protocol::Udp,
                            source: p.from,
                            destination: p.to,
                            contents,
                        },
                    );
                    if let Err(e) = c.rtc.handle_input(input) {
                        c.failed = Some(e.to_string());
                    }
                }
            }
            if self.now >= self.sfu_timeout {
                self.sfu.handle_timeout(self.now);
            }
            for c in &mut self.clients {
                if c.failed.is_none() && self.now >= c.timeout {
                    if let Err(e) = c.rtc.handle_input(str0m::Input::Timeout(self.now)) {
                        c.failed = Some(e.to_string());
                    }
                }
            }
            if self.media && self.now >= self.next_audio {
                self.next_audio = self.now + Duration::from_millis(20);
                for c in &mut self.clients {
                    c.send_audio(self.now, &mut self.rng);
                }
            }
            if self.media && self.now >= self.next_video {
                self.next_video = self.now + Duration::from_millis(33);
                for c in &mut self.clients {
                    c.send_video(self.now, &mut self.rng);
                }
            }
            self.drain();
        }
    }

    /// The SFU's ICE ufrag for the first client, from its answer.
    pub fn first_ufrag_seen(&self) -> String {
        self.answers[0]
            .lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .expect("answer carries a ufrag")
            .trim()
            .to_string()
    }

    /// The first queued datagram from `from` that is a STUN binding request.
    pub fn net_peek_from(&self, from: SocketAddr) -> Option<Vec<u8>> {
        self.net
            .find(|p| p.from == from && p.data.len() > 20 && p.data[0..2] == [0, 1])
    }

    pub fn client(&self, i: usize) -> &Client {
        &self.clients[i]
    }

    pub fn id(&self, i: usize) -> ParticipantId {
        self.clients[i].id
    }

    pub fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.rng.fill_bytes(&mut v);
        v
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

pub const AV: Publish = Publish {
    audio: true,
    video: true,
    simulcast: false,
};
