//! Figures from what the peers recorded and what the kernel counted, and the report: a
//! markdown table (sealroom, Janus, ratio) and a CSV with every number.

use crate::capacity::{self, Phase, Verdict};
use crate::peer::PeerReport;
use crate::stamp::{Kind, AUDIO_EVERY, VIDEO_EVERY};
use crate::system::ProcSample;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::time::Duration;

/// Loss above which a forwarding-efficiency figure does not count (issue 5's definition).
const MAX_LOSS_FOR_EFFICIENCY: f64 = 0.005;

/// One forwarding scenario on one SFU.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// Participants per meeting.
    pub n: usize,
    /// Meetings of `n` running at once on the one SFU (`--meetings`).
    pub meetings: usize,
    pub video: bool,
    /// The video was published as three simulcast layers (each subscriber receives one).
    pub simulcast: bool,
    /// Wall time of the window.
    pub seconds: f64,
    /// SFU utime + stime during the window.
    pub sfu_cpu_s: f64,
    /// The part of it its busiest thread used: all of it for work on one core.
    pub sfu_busiest_thread_cpu_s: f64,
    pub load_cpu_s: f64,
    /// CPU the rest of the machine used during the window (all CPUs busy time minus SFU and
    /// load; includes softirq work the kernel did not charge to either): other programs
    /// disturbing the run show here.
    pub other_cpu_s: f64,
    /// RTP packets of the frames delivered to subscribers (sent within the window).
    pub media_packets: u64,
    /// Every datagram the subscribers received from the SFU during the window (media, RTCP,
    /// STUN, padding…), counted at their sockets.
    pub udp_out: u64,
    /// Frames the publishers sent in the window, every publisher and kind. Loss counts
    /// against these, so a load generator that falls behind its schedule (it skips the
    /// frames it is late for) shows here, not as loss: see [`Traffic::published_share`].
    pub frames_published: u64,
    pub frames_expected: u64,
    pub frames_received: u64,
    pub worst_stream_loss: f64,
    /// 99th percentile, nearest rank, of the loss of every (receiver, publisher stream)
    /// pair: the share of the frames a publisher sent on one stream (audio or video) in the
    /// window that one receiver did not get.
    pub stream_loss_p99: f64,
    /// Delay from the publisher's `write` to the kernel's arrival stamp of the datagram that
    /// completed the frame at the subscriber's socket (on loopback, the SFU's send).
    pub delay_p50_ms: f64,
    pub delay_p99_ms: f64,
    pub delay_max_ms: f64,
    /// Delay to the frame complete in the subscriber's str0m: the above plus the load
    /// process's own queueing and receive work.
    pub frame_delay_p50_ms: f64,
    pub frame_delay_p99_ms: f64,
    pub rss_idle_kib: u64,
    pub rss_kib: u64,
    /// Private anonymous memory (RssAnon) idle and loaded: what the SFU allocated.
    pub anon_idle_kib: u64,
    pub anon_kib: u64,
    /// UDP receive buffer overflows in the SFU's network namespace (SFU and load sockets
    /// alike when they share it).
    pub socket_drops: u64,
    pub unstamped: u64,
    pub keyframe_requests: u64,
}

impl Traffic {
    /// Participants of every meeting.
    pub fn participants(&self) -> usize {
        self.n * self.meetings.max(1)
    }
    pub fn cpu_pct(&self) -> f64 {
        100.0 * self.sfu_cpu_s / self.seconds
    }
    pub fn busiest_thread_cpu_pct(&self) -> f64 {
        100.0 * self.sfu_busiest_thread_cpu_s / self.seconds
    }
    pub fn load_cpu_pct(&self) -> f64 {
        100.0 * self.load_cpu_s / self.seconds
    }
    pub fn other_cpu_pct(&self) -> f64 {
        100.0 * self.other_cpu_s.max(0.0) / self.seconds
    }
    pub fn media_pps(&self) -> f64 {
        self.media_packets as f64 / self.seconds
    }
    pub fn udp_out_pps(&self) -> f64 {
        self.udp_out as f64 / self.seconds
    }
    /// Egress media packets per SFU CPU-second.
    pub fn efficiency(&self) -> f64 {
        if self.sfu_cpu_s > 0.0 {
            self.media_packets as f64 / self.sfu_cpu_s
        } else {
            f64::NAN
        }
    }
    /// Frames every publisher should send in the window on schedule: audio every
    /// [`AUDIO_EVERY`], in video meetings also a video frame every [`VIDEO_EVERY`].
    pub fn frames_scheduled(&self) -> f64 {
        let mut per_second = 1.0 / AUDIO_EVERY.as_secs_f64();
        if self.video {
            per_second += 1.0 / VIDEO_EVERY.as_secs_f64();
        }
        self.participants() as f64 * self.seconds * per_second
    }
    /// The share of the scheduled frames the publishers sent: below 1 when the load
    /// generator could not keep up, so the SFU was not offered the whole load.
    pub fn published_share(&self) -> f64 {
        let scheduled = self.frames_scheduled();
        if scheduled > 0.0 {
            self.frames_published as f64 / scheduled
        } else {
            f64::NAN
        }
    }
    pub fn loss(&self) -> f64 {
        if self.frames_expected == 0 {
            return 1.0;
        }
        1.0 - self.frames_received as f64 / self.frames_expected as f64
    }
    /// Private memory (RssAnon) the meeting added, per participant: what the SFU allocated
    /// for it. RSS also counts the pages of the binary and its libraries that the load made
    /// the process touch for the first time; those do not grow with N.
    pub fn mem_per_participant_kib(&self) -> f64 {
        self.anon_kib.saturating_sub(self.anon_idle_kib) as f64 / self.participants() as f64
    }
    /// RSS growth per participant, code pages included.
    pub fn rss_per_participant_kib(&self) -> f64 {
        self.rss_kib.saturating_sub(self.rss_idle_kib) as f64 / self.participants() as f64
    }

    /// A clean 5 s measurement of an N-by-N meeting for tests: no loss, 1 ms p99 delay,
    /// 100 audio packets per second per stream, 10 % SFU CPU, 20 % load CPU.
    #[cfg(test)]
    pub fn example(n: usize, video: bool) -> Traffic {
        let streams = (n * (n - 1)) as u64;
        Traffic {
            n,
            meetings: 1,
            video,
            simulcast: false,
            seconds: 5.0,
            sfu_cpu_s: 0.5,
            sfu_busiest_thread_cpu_s: 0.5,
            load_cpu_s: 1.0,
            other_cpu_s: 0.0,
            media_packets: streams * 500,
            udp_out: streams * 520,
            frames_published: n as u64 * if video { 250 + 150 } else { 250 },
            frames_expected: streams * 250,
            frames_received: streams * 250,
            worst_stream_loss: 0.0,
            stream_loss_p99: 0.0,
            delay_p50_ms: 0.5,
            delay_p99_ms: 1.0,
            delay_max_ms: 2.0,
            frame_delay_p50_ms: 0.6,
            frame_delay_p99_ms: 1.2,
            rss_idle_kib: 10_000,
            rss_kib: 20_000,
            anon_idle_kib: 4_000,
            anon_kib: 14_000,
            socket_drops: 0,
            unstamped: 0,
            keyframe_requests: 0,
        }
    }
}

/// Delay the SFU adds: a quantile of the measured delay minus the same quantile without an
/// SFU (`direct`, one publisher straight to one subscriber). Without that baseline the
/// whole measured delay counts, which overstates what the SFU adds.
pub fn added_delay_ms(measured: f64, direct: Option<f64>) -> f64 {
    measured - direct.unwrap_or(0.0)
}

/// `p`-quantile of sorted values by nearest rank.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The figures of one scenario. `reports[i]` holds participant `i`'s peers, in meetings of
/// `n` (participant i in meeting i / n, each meeting N-by-N); the window is in ns since the
/// epoch and selects frames by send time.
pub fn traffic(
    n: usize,
    video: bool,
    reports: &[Vec<PeerReport>],
    window: (u64, u64),
    sfu: (ProcSample, ProcSample, ProcSample),
    load: (ProcSample, ProcSample),
    datagrams: u64,
) -> Traffic {
    let (w0, w1) = window;
    let inside = |t: u64| t >= w0 && t < w1;
    // Frames each publisher sent in the window, per kind.
    let mut sent: HashMap<(u32, Kind), u64> = HashMap::new();
    for (i, peers) in reports.iter().enumerate() {
        for s in peers.iter().flat_map(|p| &p.sent) {
            if inside(s.sent_ns) {
                *sent.entry((i as u32, s.kind)).or_default() += 1;
            }
        }
    }
    let mut t = Traffic {
        n,
        meetings: reports.len().div_ceil(n.max(1)).max(1),
        video,
        simulcast: false,
        seconds: sfu.2.at.saturating_duration_since(sfu.1.at).as_secs_f64(),
        sfu_cpu_s: sfu.2.cpu_s - sfu.1.cpu_s,
        // Set by the caller, which reads the threads.
        sfu_busiest_thread_cpu_s: f64::NAN,
        load_cpu_s: load.1.cpu_s - load.0.cpu_s,
        other_cpu_s: (sfu.2.machine_busy_s - sfu.1.machine_busy_s)
            - (sfu.2.cpu_s - sfu.1.cpu_s)
            - (load.1.cpu_s - load.0.cpu_s),
        media_packets: 0,
        udp_out: datagrams,
        frames_published: sent.values().sum(),
        frames_expected: 0,
        frames_received: 0,
        worst_stream_loss: 0.0,
        stream_loss_p99: f64::NAN,
        delay_p50_ms: f64::NAN,
        delay_p99_ms: f64::NAN,
        delay_max_ms: f64::NAN,
        frame_delay_p50_ms: f64::NAN,
        frame_delay_p99_ms: f64::NAN,
        rss_idle_kib: sfu.0.rss_kib,
        rss_kib: sfu.2.rss_kib,
        anon_idle_kib: sfu.0.anon_kib,
        anon_kib: sfu.2.anon_kib,
        socket_drops: sfu
            .2
            .udp_rcvbuf_errors
            .saturating_sub(sfu.1.udp_rcvbuf_errors),
        unstamped: 0,
        keyframe_requests: 0,
    };
    let mut delays = Vec::new();
    let mut frame_delays = Vec::new();
    let mut stream_losses = Vec::new();
    // Participant i is in meeting i / n; everyone receives the others of their meeting.
    let meeting = |i: u32| i as usize / n.max(1);
    for (r, peers) in reports.iter().enumerate() {
        let r = r as u32;
        let mut got: HashMap<(u32, Kind), u64> = HashMap::new();
        let mut seen: HashSet<(u32, Kind, u32)> = HashSet::new();
        for p in peers {
            t.unstamped += p.unstamped;
            t.keyframe_requests += p.keyframe_requests;
            for f in &p.received {
                // A frame from another meeting is not this meeting's egress (and would be
                // the SFU's bug: sealroom's call tests check that meetings stay apart).
                if f.from == r
                    || meeting(f.from) != meeting(r)
                    || !inside(f.sent_ns)
                    || !seen.insert((f.from, f.kind, f.seq))
                {
                    continue;
                }
                *got.entry((f.from, f.kind)).or_default() += 1;
                t.media_packets += u64::from(f.packets);
                delays.push(f.arrived_ns.saturating_sub(f.sent_ns) as f64 / 1e6);
                frame_delays.push(f.recv_ns.saturating_sub(f.sent_ns) as f64 / 1e6);
            }
        }
        for (&(from, kind), &expected) in &sent {
            if from == r || expected == 0 || meeting(from) != meeting(r) {
                continue;
            }
            let g = got.get(&(from, kind)).copied().unwrap_or(0).min(expected);
            t.frames_expected += expected;
            t.frames_received += g;
            let loss = 1.0 - g as f64 / expected as f64;
            t.worst_stream_loss = t.worst_stream_loss.max(loss);
            stream_losses.push(loss);
        }
    }
    stream_losses.sort_by(|a, b| a.total_cmp(b));
    t.stream_loss_p99 = quantile(&stream_losses, 0.99);
    delays.sort_by(|a, b| a.total_cmp(b));
    t.delay_p50_ms = quantile(&delays, 0.50);
    t.delay_p99_ms = quantile(&delays, 0.99);
    t.delay_max_ms = delays.last().copied().unwrap_or(f64::NAN);
    frame_delays.sort_by(|a, b| a.total_cmp(b));
    t.frame_delay_p50_ms = quantile(&frame_delays, 0.50);
    t.frame_delay_p99_ms = quantile(&frame_delays, 0.99);
    t
}

/// Join time to the first remote frame.
#[derive(Debug, Clone)]
pub struct JoinResult {
    pub n: usize,
    pub times_ms: Vec<f64>,
}

impl JoinResult {
    pub fn new(n: usize, times: Vec<Duration>) -> JoinResult {
        let mut times_ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        times_ms.sort_by(|a, b| a.total_cmp(b));
        JoinResult { n, times_ms }
    }
    pub fn p50(&self) -> f64 {
        quantile(&self.times_ms, 0.50)
    }
    pub fn p95(&self) -> f64 {
        quantile(&self.times_ms, 0.95)
    }
}

/// A running video meeting while more participants join at once: the forwarding delay its
/// members see before and while the newcomers join. Joining costs the SFU signaling and
/// negotiation work (every member's session gets the newcomers' tracks), and where that
/// work shares a thread with forwarding, everyone's media waits for it.
#[derive(Debug, Clone)]
pub struct JoinLoad {
    /// Members of the running meeting.
    pub n: usize,
    /// Participants who join at once.
    pub joining: usize,
    /// Delay (publisher's write → the kernel's receive stamp at the subscriber) of the
    /// members' frames among each other, in a window before the joins, sorted, ms.
    pub before_ms: Vec<f64>,
    /// The same from the first join until a second after everyone receives everyone.
    pub during_ms: Vec<f64>,
    /// The audio frames of `during_ms` (what a member hears as a stall).
    pub audio_during_ms: Vec<f64>,
    /// Members' frames among each other that were sent in that window and never arrived.
    pub lost_during: u64,
    /// Join → first remote frame of each newcomer.
    pub join: JoinResult,
}

impl JoinLoad {
    /// Delays of frames sent inside `window` (ns since the epoch) between members (`from`
    /// and receiver both below `n`), of their audio frames alone, and how many such frames
    /// were sent and not received. Sorted.
    pub fn window(
        n: usize,
        reports: &[Vec<PeerReport>],
        window: (u64, u64),
    ) -> (Vec<f64>, Vec<f64>, u64) {
        let inside = |t: u64| t >= window.0 && t < window.1;
        let mut sent: HashMap<(u32, Kind), u64> = HashMap::new();
        for (i, peers) in reports.iter().enumerate().take(n) {
            for p in peers {
                for f in p.sent.iter().filter(|f| inside(f.sent_ns)) {
                    *sent.entry((i as u32, f.kind)).or_default() += 1;
                }
            }
        }
        let mut delays = Vec::new();
        let mut audio = Vec::new();
        let mut lost = 0;
        for (r, peers) in reports.iter().enumerate().take(n) {
            let r = r as u32;
            let mut got: HashMap<(u32, Kind), u64> = HashMap::new();
            let mut seen: HashSet<(u32, Kind, u32)> = HashSet::new();
            for f in peers.iter().flat_map(|p| &p.received) {
                let member = (f.from as usize) < n;
                if !member || f.from == r || !inside(f.sent_ns) {
                    continue;
                }
                if !seen.insert((f.from, f.kind, f.seq)) {
                    continue;
                }
                *got.entry((f.from, f.kind)).or_default() += 1;
                let d = f.arrived_ns.saturating_sub(f.sent_ns) as f64 / 1e6;
                delays.push(d);
                if f.kind == Kind::Audio {
                    audio.push(d);
                }
            }
            for (&(from, kind), &expected) in &sent {
                if from != r {
                    let g = got.get(&(from, kind)).copied().unwrap_or(0);
                    lost += expected.saturating_sub(g);
                }
            }
        }
        delays.sort_by(|a, b| a.total_cmp(b));
        audio.sort_by(|a, b| a.total_cmp(b));
        (delays, audio, lost)
    }

    /// Pools another round's figures into these (every list stays sorted).
    pub fn merge(&mut self, other: JoinLoad) {
        let by_value = |a: &f64, b: &f64| a.total_cmp(b);
        self.before_ms.extend(other.before_ms);
        self.before_ms.sort_by(by_value);
        self.during_ms.extend(other.during_ms);
        self.during_ms.sort_by(by_value);
        self.audio_during_ms.extend(other.audio_during_ms);
        self.audio_during_ms.sort_by(by_value);
        self.lost_during += other.lost_during;
        self.join.times_ms.extend(other.join.times_ms);
        self.join.times_ms.sort_by(by_value);
    }

    pub fn max_during_ms(&self) -> f64 {
        self.during_ms.last().copied().unwrap_or(f64::NAN)
    }
}

/// What a capacity trial was for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    /// A step of the search.
    Search(Phase),
    /// Latency at the size closest to this share of the capacity's egress packet rate.
    Share(f64),
}

impl Role {
    pub fn describe(&self) -> String {
        match self {
            Role::Search(Phase::Grow) => "grow".into(),
            Role::Search(Phase::Bisect) => "bisect".into(),
            Role::Share(s) => format!("{:.0} % of capacity", 100.0 * s),
        }
    }
}

/// One meeting of a capacity search, each on a fresh SFU.
#[derive(Debug, Clone)]
pub struct Trial {
    pub n: usize,
    pub role: Role,
    pub result: Result<Traffic, String>,
    pub verdict: Verdict,
}

impl Trial {
    /// A trial and its verdict against the limits (an error fails).
    pub fn new(
        n: usize,
        role: Role,
        result: anyhow::Result<Traffic>,
        direct_p99_ms: Option<f64>,
    ) -> Trial {
        let result = result.map_err(|e| format!("{e:#}"));
        let verdict = match &result {
            Ok(t) => capacity::verdict(t, direct_p99_ms),
            Err(e) => Verdict {
                reasons: vec![format!("failed: {e}")],
            },
        };
        Trial {
            n,
            role,
            result,
            verdict,
        }
    }

    fn traffic(&self) -> Option<&Traffic> {
        self.result.as_ref().ok()
    }
}

/// The largest meeting one SFU sustains within the limits, every trial of the search, and
/// the measurements at shares of it.
#[derive(Debug, Clone)]
pub struct CapacityResult {
    pub video: bool,
    pub max_n: usize,
    /// The largest size that passed (`None`: not even 2).
    pub capacity: Option<usize>,
    /// Every size up to `max_n` passed: the capacity is at least `max_n`.
    pub reached_max: bool,
    pub trials: Vec<Trial>,
}

impl CapacityResult {
    /// The search's measurement at the capacity.
    pub fn at_capacity(&self) -> Option<&Traffic> {
        let n = self.capacity?;
        self.trials
            .iter()
            .find(|t| t.n == n && matches!(t.role, Role::Search(_)) && t.verdict.pass())
            .and_then(Trial::traffic)
    }

    /// The smallest size of the search that failed.
    pub fn first_failure(&self) -> Option<&Trial> {
        self.trials
            .iter()
            .filter(|t| matches!(t.role, Role::Search(_)) && !t.verdict.pass())
            .min_by_key(|t| t.n)
    }

    /// The load process used more than [`capacity::LOAD_BOUND_CPU_PCT`] of its core at the
    /// capacity or at the first failure: the load, not the SFU, may be what limited it.
    pub fn load_bound(&self) -> bool {
        let busy = |t: Option<&Traffic>| {
            t.is_some_and(|t| t.load_cpu_pct() > capacity::LOAD_BOUND_CPU_PCT)
        };
        busy(self.at_capacity()) || busy(self.first_failure().and_then(Trial::traffic))
    }

    /// Every measurement at `share` of the capacity (one per `--repeat`), in the order run.
    pub fn runs_at_share(&self, share: f64) -> impl Iterator<Item = &Trial> {
        self.trials
            .iter()
            .filter(move |t| t.role == Role::Share(share))
    }

    /// The measurement at `share` of the capacity: of several runs, the one with the median
    /// p99 delay among those that ran (the lower one of two middles); if none ran, the first
    /// failure. Every run's p99 is beside it in the table ([`capacity_rows`]).
    pub fn at_share(&self, share: f64) -> Option<&Trial> {
        let mut ran: Vec<&Trial> = self
            .runs_at_share(share)
            .filter(|t| t.traffic().is_some())
            .collect();
        ran.sort_by(|a, b| {
            let p99 = |t: &Trial| t.traffic().map_or(f64::NAN, |m| m.delay_p99_ms);
            p99(a).total_cmp(&p99(b))
        });
        match ran.len() {
            0 => self.runs_at_share(share).next(),
            n => Some(ran[(n - 1) / 2]),
        }
    }
}

#[derive(Debug)]
pub enum Data {
    Traffic(Traffic),
    Join(JoinResult),
    Capacity(CapacityResult),
    JoinLoad(JoinLoad),
}

/// One scenario on one SFU, or why it failed.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: String,
    pub sfu: &'static str,
    pub data: Result<Data, String>,
}

impl Outcome {
    pub fn traffic(scenario: String, sfu: &'static str, r: anyhow::Result<Traffic>) -> Outcome {
        Outcome {
            scenario,
            sfu,
            data: r.map(Data::Traffic).map_err(|e| format!("{e:#}")),
        }
    }

    pub fn join(scenario: String, sfu: &'static str, r: anyhow::Result<JoinResult>) -> Outcome {
        Outcome {
            scenario,
            sfu,
            data: r.map(Data::Join).map_err(|e| format!("{e:#}")),
        }
    }

    pub fn join_load(scenario: String, sfu: &'static str, r: anyhow::Result<JoinLoad>) -> Outcome {
        Outcome {
            scenario,
            sfu,
            data: r.map(Data::JoinLoad).map_err(|e| format!("{e:#}")),
        }
    }

    pub fn capacity(scenario: String, sfu: &'static str, c: CapacityResult) -> Outcome {
        Outcome {
            scenario,
            sfu,
            data: Ok(Data::Capacity(c)),
        }
    }

    /// The pipeline did not work: an error, or no media at all.
    pub fn failed(&self) -> bool {
        match &self.data {
            Err(_) => true,
            Ok(Data::Traffic(t)) => t.frames_received == 0,
            Ok(Data::Join(j)) => j.times_ms.is_empty(),
            Ok(Data::JoinLoad(j)) => j.during_ms.is_empty(),
            Ok(Data::Capacity(c)) => !c
                .trials
                .iter()
                .any(|t| t.traffic().is_some_and(|t| t.frames_received > 0)),
        }
    }
}

/// What the report says about how it was made.
pub struct Context {
    pub topology: String,
    pub pinning: String,
    pub busy_before: Option<f64>,
    pub seconds: u64,
    pub warmup: u64,
    pub janus_event_loops: u32,
    /// sealroom's `--media-shards`.
    pub media_shards: usize,
    pub join_rounds: usize,
    /// Window of each capacity search trial, seconds.
    pub capacity_seconds: u64,
    pub command: String,
    pub smoke: bool,
    /// Delay p50 and p99 of a direct publisher → subscriber connection (no SFU), ms.
    pub direct_delay_ms: Option<(f64, f64)>,
}

/// Every run's efficiency of one forwarding scenario on one SFU (`--repeat`); `None` for a
/// run that failed.
#[derive(Debug, Clone)]
pub struct Repeats {
    pub scenario: String,
    pub sfu: &'static str,
    pub efficiency: Vec<Option<f64>>,
}

/// The run with the median efficiency (the lower middle for an even count) among those that
/// succeeded; the first error if none did.
pub fn median_run(runs: Vec<anyhow::Result<Traffic>>) -> anyhow::Result<Traffic> {
    let mut ok = Vec::new();
    let mut first_err = None;
    for r in runs {
        match r {
            Ok(t) => ok.push(t),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if ok.is_empty() {
        return Err(first_err.unwrap_or_else(|| anyhow::anyhow!("no runs")));
    }
    ok.sort_by(|a, b| a.efficiency().total_cmp(&b.efficiency()));
    let mid = (ok.len() - 1) / 2;
    Ok(ok.swap_remove(mid))
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

fn spread(values: &[f64]) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let (lo, hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    if finite.is_empty() {
        "—".into()
    } else {
        format!(
            "{} [{}–{}]",
            num(median(&finite), 0),
            num(lo, 0),
            num(hi, 0)
        )
    }
}

/// The repeats table: each SFU's efficiency per run (median and range), the ratio of the
/// medians, and the ratios of the runs paired in order (run k of sealroom against run k of
/// Janus, which ran next to it). Empty without `--repeat`.
pub fn repeats_markdown(reps: &[Repeats]) -> String {
    let mut md = String::new();
    if reps.is_empty() {
        return md;
    }
    let runs = reps.iter().map(|r| r.efficiency.len()).max().unwrap_or(0);
    let _ = writeln!(
        md,
        "\n## Repeats: egress media packets per SFU CPU-second, every run\n\n{runs} runs of each \
         forwarding scenario, alternating which SFU runs first; the tables above use each SFU's \
         median run. Failed runs count as —.\n"
    );
    let _ = writeln!(
        md,
        "| Scenario | sealroom median [min–max] | Janus median [min–max] | ratio of medians | run-by-run ratios |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---|");
    let mut scenarios: Vec<&str> = Vec::new();
    for r in reps {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    for sc in scenarios {
        let of = |sfu: &str| -> Vec<f64> {
            reps.iter()
                .find(|r| r.scenario == sc && r.sfu == sfu)
                .map(|r| r.efficiency.iter().map(|e| e.unwrap_or(f64::NAN)).collect())
                .unwrap_or_default()
        };
        let (a, b) = (of("sealroom"), of("janus"));
        let ratio = median(&a) / median(&b);
        let paired: Vec<String> = a.iter().zip(&b).map(|(x, y)| num(x / y, 2)).collect();
        let _ = writeln!(
            md,
            "| {sc} | {} | {} | {} | {} |",
            spread(&a),
            spread(&b),
            num(ratio, 2),
            if paired.is_empty() {
                "—".into()
            } else {
                paired.join(", ")
            }
        );
    }
    md
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "—".into()
    }
}

/// Which way is better, for the ratio column's note.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
    /// A condition of the measurement (a size, the load's CPU), not a score.
    Neither,
}

struct Row {
    scenario: String,
    metric: &'static str,
    better: Better,
    decimals: usize,
    /// Value and a mark (†, ‡, +: see the notes under the table) per SFU.
    values: HashMap<&'static str, (f64, String)>,
    errors: HashMap<&'static str, String>,
}

impl Row {
    fn new(scenario: String, metric: &'static str, better: Better, decimals: usize) -> Row {
        Row {
            scenario,
            metric,
            better,
            decimals,
            values: HashMap::new(),
            errors: HashMap::new(),
        }
    }
}

/// A figure: its name, which way is better, decimals, and how to read it (value and mark).
type Metric<T> = (
    &'static str,
    Better,
    usize,
    fn(&T, Option<(f64, f64)>) -> Option<(f64, String)>,
);

fn plain(v: f64) -> Option<(f64, String)> {
    Some((v, String::new()))
}

fn headline_rows(results: &[Outcome], direct: Option<(f64, f64)>) -> Vec<Row> {
    let traffic_metrics: [Metric<Traffic>; 9] = [
        (
            "egress media pkt per SFU CPU-s",
            Better::Higher,
            0,
            |t, _| {
                let over = t.loss() > MAX_LOSS_FOR_EFFICIENCY;
                Some((t.efficiency(), if over { " †" } else { "" }.into()))
            },
        ),
        ("SFU CPU, % of one core", Better::Lower, 1, |t, _| {
            plain(t.cpu_pct())
        }),
        ("frame loss %", Better::Lower, 2, |t, _| {
            plain(100.0 * t.loss())
        }),
        ("delay p50, ms", Better::Lower, 2, |t, _| {
            plain(t.delay_p50_ms)
        }),
        ("delay p99, ms", Better::Lower, 2, |t, _| {
            plain(t.delay_p99_ms)
        }),
        (
            "delay to the frame in the load peer p50, ms",
            Better::Lower,
            2,
            |t, _| plain(t.frame_delay_p50_ms),
        ),
        (
            "delay to the frame in the load peer p99, ms",
            Better::Lower,
            2,
            |t, _| plain(t.frame_delay_p99_ms),
        ),
        (
            "SFU memory per participant (private), KiB",
            Better::Lower,
            0,
            |t, _| plain(t.mem_per_participant_kib()),
        ),
        (
            "SFU RSS growth per participant (code pages included), KiB",
            Better::Lower,
            0,
            |t, _| plain(t.rss_per_participant_kib()),
        ),
    ];
    let join_metrics: [Metric<JoinResult>; 2] = [
        (
            "join → first remote frame p50, ms",
            Better::Lower,
            0,
            |j, _| plain(j.p50()),
        ),
        (
            "join → first remote frame p95, ms",
            Better::Lower,
            0,
            |j, _| plain(j.p95()),
        ),
    ];
    let join_load_metrics: [Metric<JoinLoad>; 8] = [
        (
            "delay p99 before the joins, ms",
            Better::Lower,
            2,
            |j, _| plain(quantile(&j.before_ms, 0.99)),
        ),
        ("delay p50 while joining, ms", Better::Lower, 2, |j, _| {
            plain(quantile(&j.during_ms, 0.50))
        }),
        ("delay p99 while joining, ms", Better::Lower, 2, |j, _| {
            plain(quantile(&j.during_ms, 0.99))
        }),
        ("delay max while joining, ms", Better::Lower, 1, |j, _| {
            plain(j.max_during_ms())
        }),
        (
            "audio delay p99 while joining, ms",
            Better::Lower,
            2,
            |j, _| plain(quantile(&j.audio_during_ms, 0.99)),
        ),
        (
            "audio delay max while joining, ms",
            Better::Lower,
            1,
            |j, _| plain(j.audio_during_ms.last().copied().unwrap_or(f64::NAN)),
        ),
        (
            "members' frames lost while joining",
            Better::Lower,
            0,
            |j, _| plain(j.lost_during as f64),
        ),
        (
            "newcomers: join → first remote frame p50, ms",
            Better::Lower,
            0,
            |j, _| plain(j.join.p50()),
        ),
    ];
    let mut scenarios: Vec<&str> = Vec::new();
    for r in results {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    let mut rows = Vec::new();
    for s in scenarios {
        let of: Vec<&Outcome> = results.iter().filter(|r| r.scenario == s).collect();
        if of.iter().any(|o| matches!(o.data, Ok(Data::Capacity(_)))) {
            rows.extend(capacity_rows(s, &of, direct));
            continue;
        }
        if of.iter().any(|o| matches!(o.data, Ok(Data::JoinLoad(_)))) {
            rows.extend(metric_rows(
                s,
                &of,
                &join_load_metrics,
                direct,
                |d| match d {
                    Data::JoinLoad(j) => Some(j),
                    _ => None,
                },
            ));
            continue;
        }
        let is_join =
            of.iter().any(|o| matches!(o.data, Ok(Data::Join(_)))) || s.starts_with("join");
        if is_join {
            rows.extend(metric_rows(s, &of, &join_metrics, direct, |d| match d {
                Data::Join(j) => Some(j),
                _ => None,
            }));
        } else {
            rows.extend(metric_rows(s, &of, &traffic_metrics, direct, |d| match d {
                Data::Traffic(t) => Some(t),
                _ => None,
            }));
        }
    }
    for video in [false, true] {
        rows.extend(marginal_memory_row(results, video));
    }
    rows
}

/// Memory per *added* participant: the RSS difference between the largest and the smallest
/// meeting of one kind, per participant of difference. Unlike memory ÷ N it leaves out what
/// the first participants cost once (database page cache, runtime threads, lazy tables).
fn marginal_memory_row(results: &[Outcome], video: bool) -> Option<Row> {
    let mut sizes: Vec<usize> = results
        .iter()
        .filter_map(|o| match &o.data {
            Ok(Data::Traffic(t)) if t.video == video && !t.simulcast => Some(t.n),
            _ => None,
        })
        .collect();
    sizes.sort_unstable();
    let (&small, &large) = (sizes.first()?, sizes.last()?);
    if small == large {
        return None;
    }
    let kind = if video { "video" } else { "audio" };
    let mut row = Row::new(
        format!("{kind} N={small}→{large}"),
        "SFU memory per added participant (private), KiB",
        Better::Lower,
        0,
    );
    let mut sfus: Vec<&'static str> = Vec::new();
    for o in results {
        if !sfus.contains(&o.sfu) {
            sfus.push(o.sfu);
        }
    }
    for sfu in sfus {
        let rss = |n: usize| {
            results.iter().find_map(|o| match &o.data {
                Ok(Data::Traffic(t))
                    if o.sfu == sfu && t.video == video && !t.simulcast && t.n == n =>
                {
                    Some(t.anon_kib)
                }
                _ => None,
            })
        };
        if let (Some(a), Some(b)) = (rss(small), rss(large)) {
            let per = (b as f64 - a as f64) / (large - small) as f64;
            row.values.insert(sfu, (per, String::new()));
        }
    }
    Some(row)
}

/// One row per metric of scenario `s`, a value per SFU from the data `pick` finds.
fn metric_rows<T>(
    s: &str,
    of: &[&Outcome],
    metrics: &[Metric<T>],
    direct: Option<(f64, f64)>,
    pick: fn(&Data) -> Option<&T>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (metric, better, decimals, f) in metrics {
        let mut row = Row::new(s.to_string(), metric, *better, *decimals);
        for o in of {
            match &o.data {
                Ok(d) => {
                    if let Some(v) = pick(d).and_then(|t| f(t, direct)) {
                        row.values.insert(o.sfu, v);
                    }
                }
                Err(e) => {
                    row.errors.insert(o.sfu, e.clone());
                }
            }
        }
        rows.push(row);
    }
    rows
}

/// The row of a load point that names every run when the point was measured more than once.
const P99_AT_SHARE: &str = "added delay p99, ms";

/// Rows of a capacity scenario: the capacity and what it took, then latency at each share
/// (the run with the median p99 delay, when repeated).
fn capacity_rows(scenario: &str, of: &[&Outcome], direct: Option<(f64, f64)>) -> Vec<Row> {
    let at_capacity: [Metric<CapacityResult>; 7] = [
        ("largest N within limits", Better::Higher, 0, |c, _| {
            let mut mark = String::new();
            if c.reached_max {
                mark.push('+');
            }
            if c.load_bound() {
                mark.push_str(" ‡");
            }
            c.capacity.map(|n| (n as f64, mark))
        }),
        (
            "egress media pkt/s at capacity",
            Better::Higher,
            0,
            |c, _| plain(c.at_capacity()?.media_pps()),
        ),
        (
            "egress media pkt per SFU CPU-s at capacity",
            Better::Higher,
            0,
            |c, _| plain(c.at_capacity()?.efficiency()),
        ),
        (
            "SFU CPU at capacity, % of one core",
            Better::Neither,
            1,
            |c, _| plain(c.at_capacity()?.cpu_pct()),
        ),
        (
            "load CPU at capacity, % of its core",
            Better::Neither,
            1,
            |c, _| plain(c.at_capacity()?.load_cpu_pct()),
        ),
        (
            "p99 stream loss at capacity, %",
            Better::Lower,
            2,
            |c, _| plain(100.0 * c.at_capacity()?.stream_loss_p99),
        ),
        (
            "added delay p99 at capacity, ms",
            Better::Lower,
            2,
            |c, d| {
                plain(added_delay_ms(
                    c.at_capacity()?.delay_p99_ms,
                    d.map(|d| d.1),
                ))
            },
        ),
    ];
    let at_share: [Metric<Traffic>; 6] = [
        ("egress media pkt/s", Better::Neither, 0, |t, _| {
            plain(t.media_pps())
        }),
        ("added delay p50, ms", Better::Lower, 2, |t, d| {
            plain(added_delay_ms(t.delay_p50_ms, d.map(|d| d.0)))
        }),
        (P99_AT_SHARE, Better::Lower, 2, |t, d| {
            plain(added_delay_ms(t.delay_p99_ms, d.map(|d| d.1)))
        }),
        ("frame loss %", Better::Lower, 2, |t, _| {
            plain(100.0 * t.loss())
        }),
        ("SFU CPU, % of one core", Better::Lower, 1, |t, _| {
            plain(t.cpu_pct())
        }),
        ("load CPU, % of its core", Better::Neither, 1, |t, _| {
            plain(t.load_cpu_pct())
        }),
    ];
    let results: Vec<(&'static str, &CapacityResult)> = of
        .iter()
        .filter_map(|o| match &o.data {
            Ok(Data::Capacity(c)) => Some((o.sfu, c)),
            _ => None,
        })
        .collect();
    let mut rows = Vec::new();
    for (metric, better, decimals, f) in at_capacity {
        let mut row = Row::new(scenario.to_string(), metric, better, decimals);
        for (sfu, c) in &results {
            if let Some(v) = f(c, direct) {
                row.values.insert(sfu, v);
            }
        }
        rows.push(row);
    }
    let kind = scenario.trim_end_matches(" capacity");
    for share in capacity::LOAD_POINTS {
        let name = format!("{kind} at {:.0} % of capacity", 100.0 * share);
        let mut size = Row::new(name.clone(), "meeting size N", Better::Neither, 0);
        let mut rest: Vec<Row> = at_share
            .iter()
            .map(|(metric, better, decimals, _)| Row::new(name.clone(), metric, *better, *decimals))
            .collect();
        for (sfu, c) in &results {
            let Some(trial) = c.at_share(share) else {
                continue;
            };
            size.values.insert(sfu, (trial.n as f64, String::new()));
            for (row, (_, _, _, f)) in rest.iter_mut().zip(&at_share) {
                match &trial.result {
                    Ok(t) => {
                        if let Some(v) = f(t, direct) {
                            row.values.insert(sfu, v);
                        }
                    }
                    Err(e) => {
                        row.errors.insert(sfu, e.clone());
                    }
                }
            }
            // Repeated windows: the p99 row is their median, and names every run's p99.
            let runs: Vec<String> = c
                .runs_at_share(share)
                .map(|t| match &t.result {
                    Ok(m) => num(added_delay_ms(m.delay_p99_ms, direct.map(|d| d.1)), 2),
                    Err(_) => "failed".to_string(),
                })
                .collect();
            if runs.len() > 1 {
                if let Some((_, mark)) = rest
                    .iter_mut()
                    .find(|r| r.metric == P99_AT_SHARE)
                    .and_then(|r| r.values.get_mut(sfu))
                {
                    *mark = format!(" (runs {})", runs.join(", "));
                }
            }
        }
        rows.push(size);
        rows.extend(rest);
    }
    rows
}

pub fn markdown(ctx: &Context, results: &[Outcome]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# sealroom vs Janus: forwarding benchmark{}\n",
        if ctx.smoke {
            " (smoke run: not figures)"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "Command: `{}`  ", ctx.command);
    let _ = writeln!(md, "Topology: {}  ", ctx.topology);
    let _ = writeln!(md, "Pinning: {}  ", ctx.pinning);
    if let Some(b) = ctx.busy_before {
        let _ = writeln!(
            md,
            "Machine busy before the run: {:.0} % of all CPUs  ",
            b * 100.0
        );
    }
    let _ = writeln!(
        md,
        "Each scenario on a fresh SFU process: everyone joins, media runs {} s, then a {} s \
         window is measured (frames selected by send time, 1 s grace for frames in flight). \
         Every participant publishes Opus (50 frames/s) and, in video meetings, VP8 320×240 \
         (30 frames/s, ≈100 kbit/s; in simulcast meetings as three layers rid l/m/h carrying \
         1/4, 1/2 and all of each frame, the SFU choosing one per subscriber) and subscribes \
         to everyone else; a scenario named M×N=n runs M meetings of n at once on the one \
         SFU, each n-by-n. sealroom: \
         one bundled connection per participant (open level, no MLS), {} media shard(s). \
         Janus: VideoRoom, a \
         publisher connection and one multistream subscriber connection per participant, \
         `event_loops = {}`. CPU is utime+stime of the SFU process from /proc; egress media \
         packets are the RTP packets of the frames the subscribers received; delay runs from the \
         publisher's `write` to the kernel's receive timestamp (`SO_TIMESTAMPNS`) of the \
         datagram that completed the frame at the subscriber's socket, which on loopback is \
         the SFU's send: it includes the publisher's str0m and the kernel path, not the load \
         process's own queueing before it reads the datagram (that is in *delay to the frame \
         in the load peer*, to the frame complete in the subscriber's str0m). Join time runs from opening \
         the signaling (sealroom: the WebSocket of a logged-in device; Janus: creating the API \
         session) to the first frame from anyone; one by one: each joins alone into the \
         meeting the previous ones made; storm: all N start at once; {} rounds pooled, each on \
         a fresh SFU. *join e2ee* (sealroom only; Janus has no counterpart): the participants \
         are the native client with end-to-end encryption, so the time runs to the first frame \
         that decrypted: signaling, admission, the MLS binding, KeyPackage, the commit that \
         adds the newcomer and its Welcome (or, for the first, the new group), SFrame keys, \
         media connection and a keyframe.\n",
        ctx.warmup, ctx.seconds, ctx.media_shards, ctx.janus_event_loops, ctx.join_rounds
    );
    if let Some((p50, p99)) = ctx.direct_delay_ms {
        let _ = writeln!(
            md,
            "Baseline without an SFU (one publisher straight to one subscriber, same \
             measurement): delay p50 {} ms, p99 {} ms. The delay rows below include it; the \
             added delay rows subtract it.\n",
            num(p50, 2),
            num(p99, 2)
        );
    }
    let capacities = results
        .iter()
        .any(|o| matches!(o.data, Ok(Data::Capacity(_))));
    if capacities {
        let _ = writeln!(md, "{}", capacity_method(ctx));
    }
    let _ = writeln!(
        md,
        "| Scenario | Metric | sealroom | Janus | sealroom ÷ Janus |\n|---|---|---:|---:|---:|"
    );
    for row in headline_rows(results, ctx.direct_delay_ms) {
        let cell = |sfu: &str| match (row.values.get(sfu), row.errors.get(sfu)) {
            (Some((v, mark)), _) => format!("{}{mark}", num(*v, row.decimals)),
            (None, Some(_)) => "failed".into(),
            (None, None) => "—".into(),
        };
        let ratio = match (row.values.get("sealroom"), row.values.get("janus")) {
            (Some((s, _)), Some((j, _))) if *j != 0.0 && s.is_finite() && j.is_finite() => {
                match row.better {
                    Better::Higher => format!("{:.2} (higher is better)", s / j),
                    Better::Lower => format!("{:.2} (lower is better)", s / j),
                    Better::Neither => format!("{:.2}", s / j),
                }
            }
            _ => "—".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            row.scenario,
            row.metric,
            cell("sealroom"),
            cell("janus"),
            ratio
        );
    }
    let _ = writeln!(
        md,
        "\n† loss above 0.5 %: the efficiency figure does not meet issue 5's definition."
    );
    if capacities {
        let _ = writeln!(
            md,
            "+ every size up to `--max-n` passed: the capacity is at least this.  \n\
             ‡ the load process used more than {:.0} % of its core at the capacity or at the \
             first size that failed: the load generator, not the SFU, may have been the limit.",
            capacity::LOAD_BOUND_CPU_PCT
        );
    }
    md.push_str(&floor_section(results));
    let fixed = results
        .iter()
        .any(|o| !matches!(o.data, Ok(Data::Capacity(_))));
    if fixed {
        let _ = writeln!(
            md,
            "\n## Details\n\n| Scenario | SFU | SFU CPU % (its busiest thread) | media pkt/s out | datagrams/s out \
             | frames published, % of schedule | frames received / expected | worst stream loss % \
             | delay max ms | SFU RSS idle → loaded MiB | load CPU % | other CPU % | socket drops \
             | keyframe requests |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
    }
    for o in results {
        match &o.data {
            Ok(Data::Traffic(t)) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} ({}) | {} | {} | {} | {} / {} | {} | {} | {} → {} | {} | {} | {} | {} |",
                    o.scenario,
                    o.sfu,
                    num(t.cpu_pct(), 1),
                    num(t.busiest_thread_cpu_pct(), 1),
                    num(t.media_pps(), 0),
                    num(t.udp_out_pps(), 0),
                    num(100.0 * t.published_share(), 1),
                    t.frames_received,
                    t.frames_expected,
                    num(100.0 * t.worst_stream_loss, 2),
                    num(t.delay_max_ms, 1),
                    num(t.rss_idle_kib as f64 / 1024.0, 1),
                    num(t.rss_kib as f64 / 1024.0, 1),
                    num(t.load_cpu_pct(), 1),
                    num(t.other_cpu_pct(), 1),
                    t.socket_drops,
                    t.keyframe_requests,
                );
            }
            Ok(Data::Join(j)) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | join times ms: {} | | | | | | | | | | | |",
                    o.scenario,
                    o.sfu,
                    j.times_ms
                        .iter()
                        .map(|t| num(*t, 0))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(Data::JoinLoad(j)) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | frames among members: {} before, {} while joining | | | | | | \
                     {} | | | | | |",
                    o.scenario,
                    o.sfu,
                    j.before_ms.len(),
                    j.during_ms.len(),
                    num(j.max_during_ms(), 1),
                );
            }
            // Listed trial by trial below.
            Ok(Data::Capacity(_)) => {}
            Err(e) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | failed: {} | | | | | | | | | | | |",
                    o.scenario,
                    o.sfu,
                    cell_text(e)
                );
            }
        }
    }
    if capacities {
        md.push_str(&capacity_details(results, ctx.direct_delay_ms));
    }
    md
}

/// The floor's table: each SFU's efficiency beside the null forwarder's on the same meetings,
/// and the ratios that bound sealroom ÷ Janus. Empty without floor results.
fn floor_section(results: &[Outcome]) -> String {
    let mut md = String::new();
    let efficiency = |scenario: &str, sfu: &str| {
        results.iter().find_map(|o| match &o.data {
            Ok(Data::Traffic(t)) if o.scenario == scenario && o.sfu == sfu => Some(t.efficiency()),
            _ => None,
        })
    };
    let mut scenarios: Vec<&str> = Vec::new();
    for o in results.iter().filter(|o| o.sfu.starts_with("floor")) {
        if !scenarios.contains(&o.scenario.as_str()) {
            scenarios.push(&o.scenario);
        }
    }
    if scenarios.is_empty() {
        return md;
    }
    let _ = writeln!(
        md,
        "\n## The floor: what any SFU can reach on this machine\n\n\
         A null forwarder carries the same meetings (`--scenarios floor`, \
         `crates/bench/src/floor.rs`): the same packet rate and sizes, pinned where the SFUs \
         run, in the same network namespace. It takes each datagram from the kernel and hands \
         a copy per subscriber back with `sendmmsg`, and nothing else: no ICE, DTLS, RTCP, \
         pacing, bandwidth estimation or retransmission history. *floor-udp* forwards the \
         bytes as they came (the kernel's share alone); *floor-aead* also opens each packet \
         with SRTP's cipher (AEAD AES-256-GCM, str0m's) and seals it again with each \
         subscriber's key, as every SFU must. Egress media packets per CPU-second, and in \
         brackets µs of CPU per packet; the last column, floor-aead ÷ Janus, is the most \
         sealroom ÷ Janus could be on this machine.\n"
    );
    let _ = writeln!(
        md,
        "| Scenario | sealroom | Janus | floor-udp | floor-aead | sealroom ÷ floor-aead | \
         Janus ÷ floor-aead | floor-aead ÷ Janus |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    let cell = |e: Option<f64>| match e {
        Some(e) if e.is_finite() && e > 0.0 => format!("{} ({})", num(e, 0), num(1e6 / e, 2)),
        _ => "—".into(),
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => num(a / b, 2),
        _ => "—".into(),
    };
    for s in scenarios {
        let (ours, janus) = (efficiency(s, "sealroom"), efficiency(s, "janus"));
        let (udp, aead) = (efficiency(s, "floor-udp"), efficiency(s, "floor-aead"));
        let _ = writeln!(
            md,
            "| {s} | {} | {} | {} | {} | {} | {} | {} |",
            cell(ours),
            cell(janus),
            cell(udp),
            cell(aead),
            ratio(ours, aead),
            ratio(janus, aead),
            ratio(aead, janus),
        );
    }
    md
}

/// Text safe inside a markdown table cell.
fn cell_text(s: &str) -> String {
    s.replace('|', "/").replace('\n', " ")
}

/// How the capacity figures are defined and searched for.
fn capacity_method(ctx: &Context) -> String {
    format!(
        "Capacity: the largest N-by-N meeting within the limits, p99 stream loss under {:.0} % \
         and p99 added delay under {:.0} ms, with the load publishing at least {:.0} % of its \
         scheduled frames (a load generator that falls behind skips frames, which no receiver \
         then misses: the SFU was not offered the meeting's load). *p99 stream loss* is the \
         99th percentile \
         (nearest rank) over every (receiver, publisher stream) pair — N·(N−1) pairs in an \
         audio meeting, 2·N·(N−1) in a video meeting, where a publisher's audio and video are \
         separate streams — of the share of the frames sent on that stream in the window that \
         the receiver did not get. *Added delay* pN is the pN of the delay of every frame \
         received in the window minus the pN of the baseline{}. The search tries N = 4, 8, 12, \
         16, 24, 32, 48 … up to `--max-n` until a size fails, then bisects between the last \
         pass and the first failure; each trial on a fresh SFU process, media for {} s, then \
         a {} s window. Latency is then measured, over a {} s window, at the sizes whose \
         egress packet rate N·(N−1)·(one stream's rate) is closest to 50 % and 90 % of the \
         capacity's.\n",
        100.0 * capacity::MAX_STREAM_LOSS_P99,
        capacity::MAX_ADDED_DELAY_P99_MS,
        100.0 * capacity::MIN_PUBLISHED_SHARE,
        if ctx.direct_delay_ms.is_some() {
            ""
        } else {
            " (the baseline failed in this run: added delay is the whole measured delay)"
        },
        ctx.warmup,
        ctx.capacity_seconds,
        ctx.seconds,
    )
}

/// Every trial of every capacity search.
fn capacity_details(results: &[Outcome], direct: Option<(f64, f64)>) -> String {
    let mut md = String::from("\n## Capacity search\n\n");
    for o in results {
        let Ok(Data::Capacity(c)) = &o.data else {
            continue;
        };
        let mut line = format!("- {}, {}: ", o.scenario, o.sfu);
        match c.capacity {
            Some(n) if c.reached_max => {
                let _ = write!(line, "every size up to {n} (`--max-n`) passed");
            }
            Some(n) => {
                let _ = write!(line, "capacity N = {n}");
            }
            None => line.push_str("no size passed, not even 2"),
        }
        if let Some(f) = c.first_failure() {
            let _ = write!(
                line,
                "; first failure at N = {}: {}",
                f.n,
                cell_text(&f.verdict.describe())
            );
        }
        if c.load_bound() {
            let _ = write!(
                line,
                "; the load process was above {:.0} % of its core: it may be the limit",
                capacity::LOAD_BOUND_CPU_PCT
            );
        }
        let _ = writeln!(md, "{line}.");
    }
    md.push_str(
        "\n| Meeting | SFU | N | trial | window s | verdict | p99 stream loss % | worst stream \
         loss % | added delay p50 / p99 ms | media pkt/s out | SFU CPU % | load CPU % | socket \
         drops |\n|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for o in results {
        let Ok(Data::Capacity(c)) = &o.data else {
            continue;
        };
        for t in &c.trials {
            let verdict = if t.verdict.pass() {
                "pass".to_string()
            } else {
                cell_text(&t.verdict.describe())
            };
            match &t.result {
                Ok(m) => {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
                        o.scenario,
                        o.sfu,
                        t.n,
                        t.role.describe(),
                        num(m.seconds, 1),
                        verdict,
                        num(100.0 * m.stream_loss_p99, 2),
                        num(100.0 * m.worst_stream_loss, 2),
                        num(added_delay_ms(m.delay_p50_ms, direct.map(|d| d.0)), 2),
                        num(added_delay_ms(m.delay_p99_ms, direct.map(|d| d.1)), 2),
                        num(m.media_pps(), 0),
                        num(m.cpu_pct(), 1),
                        num(m.load_cpu_pct(), 1),
                        m.socket_drops,
                    );
                }
                Err(_) => {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | | {} | | | | | | | |",
                        o.scenario,
                        o.sfu,
                        t.n,
                        t.role.describe(),
                        verdict
                    );
                }
            }
        }
    }
    md
}

/// The columns of the CSV, in order.
const CSV_COLUMNS: [&str; 43] = [
    "scenario",
    "sfu",
    "n",
    "video",
    "simulcast",
    "seconds",
    "sfu_cpu_s",
    "sfu_cpu_pct",
    "media_packets",
    "media_pps",
    "udp_out_pps",
    "media_pkt_per_cpu_s",
    "frames_expected",
    "frames_received",
    "loss_pct",
    "worst_stream_loss_pct",
    "delay_p50_ms",
    "delay_p99_ms",
    "delay_max_ms",
    "rss_idle_kib",
    "rss_kib",
    "mem_per_participant_kib",
    "load_cpu_pct",
    "other_cpu_pct",
    "socket_drops",
    "keyframe_requests",
    "join_p50_ms",
    "join_p95_ms",
    "trial",
    "stream_loss_p99_pct",
    "added_delay_p50_ms",
    "added_delay_p99_ms",
    "within_limits",
    "anon_idle_kib",
    "anon_kib",
    "rss_per_participant_kib",
    "frame_delay_p50_ms",
    "frame_delay_p99_ms",
    "published_pct",
    "meetings",
    "sfu_busiest_thread_cpu_pct",
    "note",
    "error",
];

/// One CSV line, filled by column name.
struct CsvRow([String; CSV_COLUMNS.len()]);

impl CsvRow {
    fn new(scenario: &str, sfu: &str) -> CsvRow {
        let mut r = CsvRow(std::array::from_fn(|_| String::new()));
        r.set("scenario", scenario);
        r.set("sfu", sfu);
        r
    }

    fn set(&mut self, column: &str, value: impl ToString) {
        let i = CSV_COLUMNS.iter().position(|c| *c == column);
        debug_assert!(i.is_some(), "no CSV column {column}");
        if let Some(i) = i {
            self.0[i] = value.to_string();
        }
    }

    /// Free text, quoted.
    fn set_text(&mut self, column: &str, value: &str) {
        if !value.is_empty() {
            self.set(
                column,
                format!("\"{}\"", value.replace('"', "'").replace('\n', " ")),
            );
        }
    }

    fn traffic(&mut self, t: &Traffic, direct: Option<(f64, f64)>) {
        self.set("n", t.n);
        self.set("meetings", t.meetings);
        self.set("video", t.video);
        self.set("simulcast", t.simulcast);
        self.set("seconds", format!("{:.3}", t.seconds));
        self.set("sfu_cpu_s", format!("{:.3}", t.sfu_cpu_s));
        self.set("sfu_cpu_pct", format!("{:.2}", t.cpu_pct()));
        self.set(
            "sfu_busiest_thread_cpu_pct",
            format!("{:.2}", t.busiest_thread_cpu_pct()),
        );
        self.set("media_packets", t.media_packets);
        self.set("media_pps", format!("{:.1}", t.media_pps()));
        self.set("udp_out_pps", format!("{:.1}", t.udp_out_pps()));
        self.set("media_pkt_per_cpu_s", format!("{:.0}", t.efficiency()));
        self.set("frames_expected", t.frames_expected);
        self.set("frames_received", t.frames_received);
        self.set(
            "published_pct",
            format!("{:.2}", 100.0 * t.published_share()),
        );
        self.set("loss_pct", format!("{:.4}", 100.0 * t.loss()));
        self.set(
            "worst_stream_loss_pct",
            format!("{:.4}", 100.0 * t.worst_stream_loss),
        );
        self.set("delay_p50_ms", format!("{:.3}", t.delay_p50_ms));
        self.set("delay_p99_ms", format!("{:.3}", t.delay_p99_ms));
        self.set("delay_max_ms", format!("{:.3}", t.delay_max_ms));
        self.set("frame_delay_p50_ms", format!("{:.3}", t.frame_delay_p50_ms));
        self.set("frame_delay_p99_ms", format!("{:.3}", t.frame_delay_p99_ms));
        self.set("rss_idle_kib", t.rss_idle_kib);
        self.set("rss_kib", t.rss_kib);
        self.set(
            "mem_per_participant_kib",
            format!("{:.1}", t.mem_per_participant_kib()),
        );
        self.set("anon_idle_kib", t.anon_idle_kib);
        self.set("anon_kib", t.anon_kib);
        self.set(
            "rss_per_participant_kib",
            format!("{:.1}", t.rss_per_participant_kib()),
        );
        self.set("load_cpu_pct", format!("{:.2}", t.load_cpu_pct()));
        self.set("other_cpu_pct", format!("{:.2}", t.other_cpu_pct()));
        self.set("socket_drops", t.socket_drops);
        self.set("keyframe_requests", t.keyframe_requests);
        self.set(
            "stream_loss_p99_pct",
            format!("{:.4}", 100.0 * t.stream_loss_p99),
        );
        self.set(
            "added_delay_p50_ms",
            format!("{:.3}", added_delay_ms(t.delay_p50_ms, direct.map(|d| d.0))),
        );
        self.set(
            "added_delay_p99_ms",
            format!("{:.3}", added_delay_ms(t.delay_p99_ms, direct.map(|d| d.1))),
        );
        self.set(
            "within_limits",
            capacity::verdict(t, direct.map(|d| d.1)).pass(),
        );
    }

    fn line(&self) -> String {
        self.0.join(",")
    }
}

/// Every figure, one line per scenario and SFU; a capacity search gives one line per trial
/// and a `capacity` line with the figures at the capacity.
pub fn csv(results: &[Outcome], direct: Option<(f64, f64)>) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    for o in results {
        let mut rows = Vec::new();
        let mut row = CsvRow::new(&o.scenario, o.sfu);
        match &o.data {
            Ok(Data::Traffic(t)) => {
                row.traffic(t, direct);
                rows.push(row);
            }
            Ok(Data::Join(j)) => {
                row.set("n", j.n);
                row.set("video", true);
                row.set("join_p50_ms", format!("{:.1}", j.p50()));
                row.set("join_p95_ms", format!("{:.1}", j.p95()));
                rows.push(row);
            }
            Ok(Data::JoinLoad(j)) => {
                row.set("n", j.n);
                row.set("video", true);
                row.set(
                    "delay_p50_ms",
                    format!("{:.3}", quantile(&j.during_ms, 0.50)),
                );
                row.set(
                    "delay_p99_ms",
                    format!("{:.3}", quantile(&j.during_ms, 0.99)),
                );
                row.set("delay_max_ms", format!("{:.3}", j.max_during_ms()));
                row.set("join_p50_ms", format!("{:.1}", j.join.p50()));
                row.set("join_p95_ms", format!("{:.1}", j.join.p95()));
                row.set_text(
                    "note",
                    &format!(
                        "{} joining; before the joins delay p99 {:.3} ms; {} members' frames lost",
                        j.joining,
                        quantile(&j.before_ms, 0.99),
                        j.lost_during
                    ),
                );
                rows.push(row);
            }
            Ok(Data::Capacity(c)) => {
                for t in &c.trials {
                    let mut r = CsvRow::new(&o.scenario, o.sfu);
                    r.set("n", t.n);
                    r.set("video", c.video);
                    r.set("trial", t.role.describe());
                    match &t.result {
                        Ok(m) => r.traffic(m, direct),
                        Err(e) => {
                            r.set("within_limits", false);
                            r.set_text("error", e);
                        }
                    }
                    if !t.verdict.pass() {
                        r.set_text("note", &t.verdict.describe());
                    }
                    rows.push(r);
                }
                row.set("video", c.video);
                row.set("trial", "capacity");
                if let Some(t) = c.at_capacity() {
                    row.traffic(t, direct);
                }
                if let Some(n) = c.capacity {
                    row.set("n", n);
                }
                let mut notes = Vec::new();
                if c.capacity.is_none() {
                    notes.push("no size passed".to_string());
                }
                if c.reached_max {
                    notes.push(format!("every size up to --max-n {} passed", c.max_n));
                }
                if c.load_bound() {
                    notes.push(format!(
                        "load process above {:.0} % of its core",
                        capacity::LOAD_BOUND_CPU_PCT
                    ));
                }
                row.set_text("note", &notes.join("; "));
                rows.push(row);
            }
            Err(e) => {
                row.set_text("error", e);
                rows.push(row);
            }
        }
        for r in rows {
            out.push_str(&r.line());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{Received, Sent};
    use std::time::Instant;

    fn context() -> Context {
        Context {
            topology: String::new(),
            pinning: String::new(),
            busy_before: None,
            seconds: 10,
            warmup: 3,
            janus_event_loops: 1,
            media_shards: 1,
            join_rounds: 1,
            capacity_seconds: 5,
            command: String::new(),
            smoke: false,
            direct_delay_ms: Some((0.1, 0.5)),
        }
    }

    #[test]
    fn the_floor_table_sets_each_sfu_beside_the_null_forwarder() {
        let with_cpu = |cpu_s: f64| {
            let mut t = Traffic::example(4, false);
            t.sfu_cpu_s = cpu_s;
            t
        };
        // 6 000 egress packets: 0.1 s of CPU is 60 000 per CPU-second.
        let results = vec![
            Outcome::traffic("audio N=4".into(), "sealroom", Ok(with_cpu(0.2))),
            Outcome::traffic("audio N=4".into(), "janus", Ok(with_cpu(0.25))),
            Outcome::traffic("audio N=4".into(), "floor-udp", Ok(with_cpu(0.05))),
            Outcome::traffic("audio N=4".into(), "floor-aead", Ok(with_cpu(0.1))),
        ];
        let md = floor_section(&results);
        assert!(
            md.contains(
                "| audio N=4 | 30000 (33.33) | 24000 (41.67) | 120000 (8.33) | 60000 (16.67) \
                 | 0.50 | 0.40 | 2.50 |"
            ),
            "{md}"
        );
        // The headline table keeps to the two SFUs; the floor has its own section.
        let all = markdown(&context(), &results);
        assert!(all.contains("## The floor"), "{all}");
        assert!(floor_section(&results[..2]).is_empty());
    }

    fn sample(at: Instant, cpu_s: f64, rss_kib: u64) -> ProcSample {
        ProcSample {
            at,
            cpu_s,
            rss_kib,
            anon_kib: rss_kib / 2,
            udp_rcvbuf_errors: 0,
            machine_busy_s: 0.0,
        }
    }

    #[test]
    fn join_load_counts_only_members_frames_to_members_inside_the_window() {
        // Members 0 and 1, newcomer 2. Frames every 10 ms from 0 to 90 ms; the window is
        // [20, 60) ms: frames 2, 3, 4 and 5 of each stream.
        let ms = 1_000_000u64;
        let sent = |kind: Kind| -> Vec<Sent> {
            (0..10u64)
                .map(|i| Sent {
                    kind,
                    sent_ns: i * 10 * ms,
                })
                .collect()
        };
        let frame = |from: u32, kind: Kind, seq: u32, delay_ms: u64| Received {
            from,
            kind,
            seq,
            sent_ns: u64::from(seq) * 10 * ms,
            recv_ns: u64::from(seq) * 10 * ms + (delay_ms + 1) * ms,
            arrived_ns: u64::from(seq) * 10 * ms + delay_ms * ms,
            packets: 1,
        };
        let mut both = sent(Kind::Audio);
        both.extend(sent(Kind::Video));
        // 0 hears all of 1's audio (1 ms, frame 4 late: 30 ms) and video (2 ms), and the
        // newcomer's audio (50 ms: not a member's frame, not counted).
        let mut r0: Vec<Received> = (0..10).map(|s| frame(1, Kind::Audio, s, 1)).collect();
        r0[4] = frame(1, Kind::Audio, 4, 30);
        r0.extend((0..10).map(|s| frame(1, Kind::Video, s, 2)));
        r0.extend((0..10).map(|s| frame(2, Kind::Audio, s, 50)));
        // 1 hears 0's audio except frame 3 (lost), frame 5 twice, and no video at all.
        let mut r1: Vec<Received> = (0..10)
            .filter(|&s| s != 3)
            .map(|s| frame(0, Kind::Audio, s, 1))
            .collect();
        r1.push(frame(0, Kind::Audio, 5, 7));
        let reports = vec![
            vec![PeerReport {
                sent: both.clone(),
                received: r0,
                ..PeerReport::default()
            }],
            vec![PeerReport {
                sent: both,
                received: r1,
                ..PeerReport::default()
            }],
            vec![PeerReport {
                sent: sent(Kind::Audio),
                received: (0..10).map(|s| frame(0, Kind::Audio, s, 80)).collect(),
                ..PeerReport::default()
            }],
        ];
        let (all, audio, lost) = JoinLoad::window(2, &reports, (20 * ms, 60 * ms));
        // 0: audio 1, 1, 30, 1 and video 2 × 4; 1: audio 1, 1, 1 (3 lost, 5's copy dropped).
        assert_eq!(audio, vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 30.0]);
        assert_eq!(all.len(), 11);
        assert_eq!(all.last().copied(), Some(30.0));
        assert_eq!(all.iter().filter(|d| **d == 2.0).count(), 4);
        // 1 missed audio frame 3 and all four video frames of 0.
        assert_eq!(lost, 5);

        // Rounds pool, and every list stays sorted.
        let round = |extra: f64| JoinLoad {
            n: 2,
            joining: 1,
            before_ms: vec![0.5, extra],
            during_ms: all.clone(),
            audio_during_ms: audio.clone(),
            lost_during: lost,
            join: JoinResult::new(1, vec![Duration::from_millis(90 + extra as u64)]),
        };
        let mut pooled = round(3.0);
        pooled.merge(round(0.1));
        assert_eq!(pooled.before_ms, vec![0.1, 0.5, 0.5, 3.0]);
        assert_eq!(pooled.during_ms.len(), 22);
        assert!(pooled.during_ms.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(pooled.max_during_ms(), 30.0);
        assert_eq!(pooled.lost_during, 10);
        assert_eq!(pooled.join.times_ms, vec![90.0, 93.0]);
    }

    /// A publisher's record of `frames` audio frames, one a millisecond from 0.
    fn audio_every_ms(frames: u32) -> Vec<Sent> {
        (0..frames)
            .map(|i| Sent {
                kind: Kind::Audio,
                sent_ns: u64::from(i) * 1_000_000,
            })
            .collect()
    }

    #[test]
    fn loss_delay_and_efficiency_come_from_the_window() {
        // Two participants; each sends 10 audio frames at 0..10 ms, the window is [2, 8) ms.
        let ms = 1_000_000u64;
        let sent = audio_every_ms(10);
        // 0 receives everything 1 sent with 1 ms delay; 1 receives every other frame of 0's
        // with 3 ms delay, one of them twice. Each frame waits 2 ms more in the load peer.
        let from = |who: u32, seqs: &[u32], delay: u64| -> Vec<Received> {
            seqs.iter()
                .map(|&s| Received {
                    from: who,
                    kind: Kind::Audio,
                    seq: s,
                    sent_ns: u64::from(s) * ms,
                    recv_ns: u64::from(s) * ms + (delay + 2) * ms,
                    arrived_ns: u64::from(s) * ms + delay * ms,
                    packets: 1,
                })
                .collect()
        };
        let mut r1 = from(0, &[0, 2, 4, 6, 8], 3);
        r1.extend(from(0, &[4], 9));
        let reports = vec![
            vec![PeerReport {
                sent: sent.clone(),
                received: from(1, &(0..10).collect::<Vec<_>>(), 1),
                ..PeerReport::default()
            }],
            vec![PeerReport {
                sent,
                received: r1,
                ..PeerReport::default()
            }],
        ];
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let t = traffic(
            2,
            false,
            &reports,
            (2 * ms, 8 * ms),
            (
                sample(t0, 0.0, 1000),
                sample(t0, 1.0, 1500),
                sample(t1, 1.5, 3000),
            ),
            (sample(t0, 0.0, 0), sample(t1, 0.2, 0)),
            40,
        );
        // In the window: 6 frames each way; 0 got 6, 1 got 3 (2, 4, 6) — the duplicate of
        // 4 counts once.
        assert_eq!((t.frames_expected, t.frames_received), (12, 9));
        assert!((t.loss() - 0.25).abs() < 1e-9);
        assert!((t.worst_stream_loss - 0.5).abs() < 1e-9);
        // Two (receiver, stream) pairs, losing 0 and 50 %: the p99 is the worse.
        assert!((t.stream_loss_p99 - 0.5).abs() < 1e-9);
        assert_eq!(t.media_packets, 9);
        assert!((t.udp_out_pps() - 20.0).abs() < 1e-9);
        assert!(
            (t.efficiency() - 18.0).abs() < 1e-9,
            "9 packets per 0.5 CPU-s"
        );
        assert!((t.cpu_pct() - 25.0).abs() < 1e-9);
        // RSS 1000 → 3000 KiB, of which private 500 → 1500 KiB, for 2 participants.
        assert!((t.rss_per_participant_kib() - 1000.0).abs() < 1e-9);
        assert!((t.mem_per_participant_kib() - 500.0).abs() < 1e-9);
        // The delay is to the socket; the load peer's own 2 ms are only in the frame delay.
        assert_eq!(t.delay_p50_ms, 1.0);
        assert_eq!(t.delay_max_ms, 3.0);
        assert_eq!((t.frame_delay_p50_ms, t.frame_delay_p99_ms), (3.0, 5.0));
    }

    #[test]
    fn meetings_at_once_expect_frames_only_from_their_own_members() {
        // Two meetings of two: 0 and 1, 2 and 3. Each sends 10 audio frames at 0..10 ms;
        // each receives all of its partner's, and 0 also gets frames from 2 (another meeting).
        let ms = 1_000_000u64;
        let sent = audio_every_ms(10);
        let from = |who: u32| -> Vec<Received> {
            (0..10u32)
                .map(|s| Received {
                    from: who,
                    kind: Kind::Audio,
                    seq: s,
                    sent_ns: u64::from(s) * ms,
                    recv_ns: u64::from(s) * ms + ms,
                    arrived_ns: u64::from(s) * ms + ms,
                    packets: 1,
                })
                .collect()
        };
        let peer = |received: Vec<Received>| {
            vec![PeerReport {
                sent: sent.clone(),
                received,
                ..PeerReport::default()
            }]
        };
        let mut leaked = from(1);
        leaked.extend(from(2));
        let reports = vec![peer(leaked), peer(from(0)), peer(from(3)), peer(from(2))];
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let t = traffic(
            2,
            false,
            &reports,
            (0, 10 * ms),
            (
                sample(t0, 0.0, 1000),
                sample(t0, 1.0, 1500),
                sample(t1, 1.5, 3000),
            ),
            (sample(t0, 0.0, 0), sample(t1, 0.2, 0)),
            40,
        );
        assert_eq!((t.n, t.meetings, t.participants()), (2, 2, 4));
        // Four streams of 10 frames, all received; the other meeting's 10 are not egress.
        assert_eq!((t.frames_expected, t.frames_received), (40, 40));
        assert_eq!(t.media_packets, 40);
        assert_eq!(t.frames_published, 40);
        assert!((t.mem_per_participant_kib() - 250.0).abs() < 1e-9);
        // The schedule counts every publisher of every meeting: 4 × 2 s × 50 frames/s.
        assert!((t.frames_scheduled() - 400.0).abs() < 1e-9);
    }

    #[test]
    fn every_csv_row_has_the_header_s_columns() {
        let t0 = Instant::now();
        let t = traffic(
            2,
            true,
            &[vec![PeerReport::default()], vec![PeerReport::default()]],
            (0, 1),
            (sample(t0, 0.0, 0), sample(t0, 0.0, 0), sample(t0, 0.0, 0)),
            (sample(t0, 0.0, 0), sample(t0, 0.0, 0)),
            0,
        );
        let results = vec![
            Outcome::traffic("video N=2".into(), "sealroom", Ok(t)),
            Outcome::join(
                "join storm N=2".into(),
                "janus",
                Ok(JoinResult::new(2, vec![Duration::from_millis(5)])),
            ),
            Outcome::join(
                "join storm N=2".into(),
                "sealroom",
                Err(anyhow::anyhow!("no")),
            ),
        ];
        let text = csv(&results, None);
        let widths: Vec<usize> = text.lines().map(|l| l.split(',').count()).collect();
        assert_eq!(widths.len(), 4);
        assert!(widths.iter().all(|w| *w == widths[0]), "{widths:?}");
        let failed: Vec<bool> = results.iter().map(Outcome::failed).collect();
        assert_eq!(
            failed,
            [true, false, true],
            "no media, or an error, is a failure"
        );
        let md = markdown(
            &Context {
                topology: String::new(),
                pinning: String::new(),
                busy_before: None,
                seconds: 1,
                warmup: 1,
                janus_event_loops: 1,
                media_shards: 1,
                join_rounds: 1,
                capacity_seconds: 1,
                command: String::new(),
                smoke: true,
                direct_delay_ms: None,
            },
            &results,
        );
        assert!(md.contains("| join storm N=2 | join → first remote frame p50, ms | failed | 5 |"));
        // The details table: every row (a measurement, join times, a failure) has the
        // header's cells.
        let details: Vec<usize> = md
            .split("## Details")
            .nth(1)
            .unwrap_or_default()
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.matches('|').count())
            .collect();
        assert_eq!(details.len(), 5, "{md}");
        assert!(details.iter().all(|c| *c == details[0]), "{details:?}");
    }

    fn trial(n: usize, role: Role, loss: f64, delay: f64, load_pct: f64) -> Trial {
        let mut t = Traffic::example(n, false);
        t.stream_loss_p99 = loss;
        t.delay_p99_ms = delay;
        t.load_cpu_s = load_pct / 100.0 * t.seconds;
        Trial::new(n, role, Ok(t), Some(0.5))
    }

    #[test]
    fn capacity_searches_render_as_rows_details_and_csv() {
        let (grow, bisect) = (Role::Search(Phase::Grow), Role::Search(Phase::Bisect));
        let sealroom = CapacityResult {
            video: false,
            max_n: 8,
            capacity: Some(6),
            reached_max: false,
            trials: vec![
                trial(4, grow, 0.0, 2.0, 10.0),
                trial(8, grow, 0.0, 30.0, 40.0),
                trial(6, bisect, 0.0, 3.0, 30.0),
                trial(7, bisect, 0.02, 3.0, 35.0),
                trial(4, Role::Share(0.5), 0.0, 1.5, 10.0),
                trial(4, Role::Share(0.5), 0.0, 3.0, 12.0),
                trial(4, Role::Share(0.5), 0.0, 1.0, 11.0),
                trial(6, Role::Share(0.9), 0.0, 2.5, 30.0),
            ],
        };
        let janus = CapacityResult {
            video: false,
            max_n: 8,
            capacity: Some(8),
            reached_max: true,
            trials: vec![
                trial(4, grow, 0.0, 1.0, 20.0),
                trial(8, grow, 0.0, 1.0, 90.0),
                Trial::new(6, Role::Share(0.5), Err(anyhow::anyhow!("no")), Some(0.5)),
                trial(8, Role::Share(0.9), 0.0, 1.0, 90.0),
            ],
        };
        assert!(!sealroom.trials[1].verdict.pass() && !sealroom.trials[3].verdict.pass());
        assert_eq!(sealroom.first_failure().map(|t| t.n), Some(7));
        assert!(!sealroom.load_bound());
        assert!(
            janus.load_bound(),
            "the load used 90 % of its core at the capacity"
        );
        let results = vec![
            Outcome::capacity("audio capacity".into(), "sealroom", sealroom),
            Outcome::capacity("audio capacity".into(), "janus", janus),
        ];
        let md = markdown(&context(), &results);
        for line in [
            "| audio capacity | largest N within limits | 6 | 8+ ‡ | 0.75 (higher is better) |",
            "| audio capacity | added delay p99 at capacity, ms | 2.50 | 0.50 | 5.00 (lower is better) |",
            "| audio at 50 % of capacity | meeting size N | 4 | 6 | 0.67 |",
            // Three runs at 50 %: the median p99 (1.5 - 0.5 direct) and every run's.
            "| audio at 50 % of capacity | added delay p99, ms | 1.00 (runs 1.00, 2.50, 0.50) | failed | — |",
            "| audio at 50 % of capacity | load CPU, % of its core | 10.0 | failed | — |",
            "| audio at 90 % of capacity | load CPU, % of its core | 30.0 | 90.0 | 0.33 |",
            "| audio capacity | sealroom | 7 | bisect | 5.0 | p99 stream loss 2.00 % ≥ 1 % |",
        ] {
            assert!(md.contains(line), "missing {line:?} in\n{md}");
        }
        assert!(md.contains("- audio capacity, sealroom: capacity N = 6; first failure at N = 7"));
        let text = csv(&results, context().direct_delay_ms);
        let widths: Vec<usize> = text.lines().map(|l| l.split(',').count()).collect();
        assert_eq!(
            widths.len(),
            1 + 9 + 5,
            "a line per trial and one per capacity"
        );
        assert!(widths.iter().all(|w| *w == CSV_COLUMNS.len()), "{widths:?}");
        assert!(text.contains("audio capacity,janus,8,false,"));
    }

    #[test]
    fn memory_per_added_participant_is_the_slope_between_sizes() {
        // Private memory is what counts; RSS (code pages included) grows the same for both.
        let with_anon = |n: usize, anon_kib: u64| {
            let mut t = Traffic::example(n, false);
            t.anon_kib = anon_kib;
            t.rss_kib = 100_000 + 10_000 * n as u64;
            t
        };
        let results = vec![
            Outcome::traffic("audio N=4".into(), "sealroom", Ok(with_anon(4, 20_000))),
            Outcome::traffic("audio N=4".into(), "janus", Ok(with_anon(4, 30_000))),
            Outcome::traffic("audio N=12".into(), "sealroom", Ok(with_anon(12, 24_000))),
            Outcome::traffic("audio N=12".into(), "janus", Ok(with_anon(12, 38_000))),
        ];
        let row = marginal_memory_row(&results, false).expect("two sizes");
        assert_eq!(row.scenario, "audio N=4→12");
        assert_eq!(row.values["sealroom"].0, 500.0);
        assert_eq!(row.values["janus"].0, 1000.0);
        assert!(
            marginal_memory_row(&results, true).is_none(),
            "no video runs"
        );
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert!(quantile(&[], 0.5).is_nan());
        let j = JoinResult::new(
            3,
            vec![Duration::from_millis(30), Duration::from_millis(10)],
        );
        assert_eq!((j.p50(), j.p95()), (10.0, 30.0));
    }

    fn run(eff_packets: u64) -> anyhow::Result<Traffic> {
        let mut t = Traffic::example(4, false);
        t.media_packets = eff_packets;
        Ok(t)
    }

    #[test]
    fn the_median_run_by_efficiency_is_kept_and_failures_are_skipped() {
        let runs = vec![run(300), Err(anyhow::anyhow!("boom")), run(100), run(200)];
        // Efficiencies 600, 200, 400 packets per CPU-s: the lower middle of three is 400.
        assert_eq!(median_run(runs).expect("a run").media_packets, 200);
        let err = median_run(vec![
            Err(anyhow::anyhow!("first")),
            Err(anyhow::anyhow!("second")),
        ]);
        assert_eq!(err.expect_err("all failed").to_string(), "first");
    }

    #[test]
    fn repeats_table_shows_medians_ranges_and_paired_ratios() {
        let reps = vec![
            Repeats {
                scenario: "audio N=4".into(),
                sfu: "sealroom",
                efficiency: vec![Some(100.0), Some(300.0), Some(200.0)],
            },
            Repeats {
                scenario: "audio N=4".into(),
                sfu: "janus",
                efficiency: vec![Some(100.0), None, Some(50.0)],
            },
        ];
        let md = repeats_markdown(&reps);
        assert!(
            md.contains("| audio N=4 | 200 [100–300] | 50 [50–100] | 4.00 | 1.00, —, 4.00 |"),
            "{md}"
        );
        assert!(repeats_markdown(&[]).is_empty());
    }
}
