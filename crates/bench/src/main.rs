//! `sealroom-bench`: sealroom's SFU and Janus Gateway's VideoRoom under the same load, side by
//! side, from one command.
//!
//! **Owns** the load generator (N str0m participants in this process, each publishing the
//! same pre-encoded Opus and VP8 streams with a measurement stamp in every frame and
//! subscribing to everyone else, as a real client would), the adapters that admit them to
//! each SFU ([`sealroom`]: the real admission path; [`janus`]: its HTTP API), the network
//! namespace the SFU runs in, CPU pinning, reading the kernel's accounting, and the report.
//!
//! **Must not** change either SFU's behaviour, measure anything it did not observe, or run as
//! a timed test: `--smoke` only proves that the pipeline works.
//!
//! **Main loop**: for every scenario, for every SFU: start the SFU pinned to its core, join
//! the participants, let media settle, read the SFU's CPU time and UDP counters, let media
//! run for the measured window, read them again, collect every participant's record of sent
//! and received frames, stop. The capacity scenarios repeat this at the sizes [`capacity`]
//! asks for. Then print one table (sealroom, Janus, ratio) and write it, a CSV and the plots.

#![forbid(unsafe_code)]

mod capacity;
mod floor;
mod janus;
mod peer;
mod plot;
mod report;
mod sealroom;
mod stamp;
mod system;

use anyhow::{bail, Context};
use clap::Parser;
use peer::{PeerConfig, PeerHandle, PeerReport};
use report::{CapacityResult, JoinResult, Outcome, Role, Traffic, Trial};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use system::{Net, Netns, ProcSample};

/// Measure sealroom's SFU against Janus Gateway 1.1.2 (VideoRoom) under the same load.
#[derive(Debug, Clone, Parser)]
#[command(version)]
struct Args {
    /// Tiny run for CI: 2 participants, 3 s windows; Janus only if it is installed. Exits 0
    /// when media flowed through every SFU it ran (no performance threshold).
    #[arg(long)]
    smoke: bool,
    /// Which SFUs to run.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    sfu: Which,
    /// Meeting sizes (N-by-N) of the forwarding scenarios.
    #[arg(long, value_delimiter = ',', default_value = "4,8,12")]
    sizes: Vec<usize>,
    /// Length of each measured window, seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Run every forwarding scenario this many times, alternating which SFU goes first. The
    /// tables then use each SFU's median run by efficiency, and a table lists every run's
    /// efficiency and the run-by-run ratios (the noise between runs, in the open). The
    /// capacity scenarios measure each load point (50 % and 90 % of capacity) this many times
    /// too: their rows use the run with the median p99 delay and name every run's p99.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Media runs this long after everyone receives before the window opens, seconds.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Which scenario groups to run. `capacity` (the largest meeting within the limits, and
    /// latency at 50 % and 90 % of it) is not in the default: it adds about 10-15 minutes;
    /// nor is `join-load` (about a minute per SFU; `--smoke` runs it).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "audio,video,simulcast,join"
    )]
    scenarios: Vec<Group>,
    /// Largest meeting the capacity search tries.
    #[arg(long, default_value_t = 48)]
    max_n: usize,
    /// Length of the measured window of each capacity search trial, seconds (the latency
    /// measurements at 50 % and 90 % of capacity use `--seconds`).
    #[arg(long, default_value_t = 5)]
    capacity_seconds: u64,
    /// Participants of the join-time scenarios (one by one, and all at once).
    #[arg(long, default_value_t = 8)]
    join_n: usize,
    /// Members of the running video meeting in the `join-load` scenario (`--join-n` more
    /// join it at once).
    #[arg(long, default_value_t = 16)]
    join_load_n: usize,
    /// Rounds of each join scenario (a fresh SFU each); the percentiles pool every round.
    #[arg(long, default_value_t = 3)]
    join_rounds: usize,
    /// The sealroom binary (`cargo build --release -p sealroom-server`).
    #[arg(long, default_value = "target/release/sealroom")]
    sealroom_bin: PathBuf,
    /// The Janus binary (Debian package `janus`).
    #[arg(long, default_value = "/usr/bin/janus")]
    janus_bin: PathBuf,
    /// Janus's plugin, transport, logger and event handler folders live here.
    #[arg(long, default_value = "/usr/lib/x86_64-linux-gnu/janus")]
    janus_lib: PathBuf,
    /// Janus `event_loops` (handles share this many media threads; 0: one thread per
    /// handle). One loop matches an SFU pinned to one core.
    #[arg(long, default_value_t = 1)]
    janus_event_loops: u32,
    /// The cores the SFU is pinned to, as taskset takes them: `0`, or `0,1` for an SFU
    /// spread over cores (`--media-shards`, `--janus-event-loops`).
    #[arg(long, default_value = "0")]
    sfu_cpu: String,
    /// Meetings of each forwarding scenario's size that run at once on the one SFU: the
    /// scenario is then M meetings of N, each N-by-N (participant i in meeting i / N).
    #[arg(long, default_value_t = 1)]
    meetings: usize,
    /// sealroom's `--media-shards`: its meetings spread over this many SFU cores, each
    /// meeting on one.
    #[arg(long, default_value_t = 1)]
    media_shards: usize,
    /// The core the load generator (this process) is pinned to.
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// /24 prefix of the veth pair (SFU at .1, load at .2).
    #[arg(long, default_value = "198.19.77")]
    subnet: String,
    /// Run on loopback without a network namespace (sealroom only: Janus needs one).
    #[arg(long)]
    loopback: bool,
    /// Run as the floor's null forwarder on this address (started by the `floor` scenarios).
    #[arg(long, hide = true)]
    floor_forwarder: Option<SocketAddr>,
    /// The null forwarder decrypts and re-encrypts every packet (SRTP's AEAD AES-256-GCM).
    #[arg(long, hide = true)]
    floor_aead: bool,
    /// Write latest.md, latest.csv and the PNG plots here (default: bench/results). --smoke
    /// writes nothing unless this is given, and never plots.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    /// Forwarding, audio-only meetings.
    Audio,
    /// Forwarding, audio and video meetings.
    Video,
    /// Forwarding, audio and video meetings with the video as three simulcast layers.
    Simulcast,
    /// Join time to the first remote frame.
    Join,
    /// The largest audio and video meetings within the loss and delay limits, and latency
    /// at 50 % and 90 % of them.
    Capacity,
    /// Forwarding delay in a running video meeting (`--join-load-n`) before and while
    /// `--join-n` more participants join it at once.
    JoinLoad,
    /// The floor: a null forwarder (kernel UDP only, and with SRTP's cipher on every packet)
    /// carrying the audio and video meetings of `--sizes`. What it reaches bounds what any
    /// SFU can reach on this machine (`crates/bench/src/floor.rs`).
    Floor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    Both,
    Sealroom,
    Janus,
}

/// What every participant of a forwarding scenario publishes (audio always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Audio,
    Video,
    /// Video as three simulcast layers.
    Simulcast,
}

impl Media {
    fn of(video: bool) -> Media {
        if video {
            Media::Video
        } else {
            Media::Audio
        }
    }

    fn video(self) -> bool {
        self != Media::Audio
    }

    fn name(self) -> &'static str {
        match self {
            Media::Audio => "audio",
            Media::Video => "video",
            Media::Simulcast => "simulcast",
        }
    }
}

/// A participant being joined or in the meeting: its signaling driver and its peers.
pub struct Participant {
    started: Instant,
    peers: Arc<Mutex<Vec<PeerHandle>>>,
    error: Arc<Mutex<Option<String>>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Participant {
    fn new(
        started: Instant,
        peers: Arc<Mutex<Vec<PeerHandle>>>,
        error: Arc<Mutex<Option<String>>>,
        driver: tokio::task::JoinHandle<()>,
    ) -> Participant {
        Participant {
            started,
            peers,
            error,
            driver,
        }
    }

    /// Datagrams its peers received from the SFU so far.
    fn datagrams(&self) -> u64 {
        self.peers().iter().map(PeerHandle::datagrams).sum()
    }

    fn peers(&self) -> Vec<PeerHandle> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// From the start of the join to the first frame from anyone.
    fn first_remote_frame(&self) -> Option<Duration> {
        self.peers()
            .iter()
            .filter_map(|p| p.live().first_remote_frame_at)
            .min()
            .map(|t| t.saturating_duration_since(self.started))
    }

    /// Distinct (publisher, kind) streams it has received from.
    fn streams_heard(&self) -> usize {
        self.peers().iter().map(|p| p.live().streams_heard).sum()
    }

    /// Why it failed, if it did.
    fn failure(&self) -> Option<String> {
        if let Some(e) = self.error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(e);
        }
        self.peers().iter().find_map(|p| p.live().ended)
    }

    async fn reports(&self) -> Vec<PeerReport> {
        let mut out = Vec::new();
        for p in self.peers() {
            out.push(p.report().await);
        }
        out
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        // The driver holds the signaling; the peers stop when their last handle goes.
        self.driver.abort();
    }
}

enum Server {
    Sealroom(sealroom::Sealroom),
    Janus(janus::Janus),
}

enum Room {
    Sealroom(sealroom::Room),
    Janus(janus::Room),
}

impl Server {
    /// The last lines of the SFU's log: printed when a scenario on it fails, since its data
    /// directory (and the log with it) goes when it stops.
    fn log_tail(&self) -> String {
        match self {
            Server::Sealroom(s) => s.log_tail(),
            Server::Janus(j) => j.log_tail(),
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Server::Sealroom(s) => s.pid,
            Server::Janus(j) => j.pid,
        }
    }

    async fn room(&mut self, n: usize) -> anyhow::Result<Room> {
        Ok(match self {
            Server::Sealroom(s) => Room::Sealroom(s.room(n).await?),
            Server::Janus(j) => Room::Janus(j.room(n).await?),
        })
    }

    fn join(&self, room: &Room, i: usize, cfg: PeerConfig) -> anyhow::Result<Participant> {
        match (self, room) {
            (Server::Sealroom(s), Room::Sealroom(r)) => s.join(r, i, cfg),
            (Server::Janus(j), Room::Janus(r)) => Ok(j.join(r, i, cfg)),
            _ => bail!("a room of another SFU"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Server::Sealroom(s) => s.describe(),
            Server::Janus(j) => j.describe(),
        }
    }

    async fn stop(self) {
        match self {
            Server::Sealroom(s) => s.stop().await,
            Server::Janus(j) => j.stop().await,
        }
    }

    /// Stop, after printing the end of the SFU's log if what ran on it failed.
    async fn stop_after<T>(self, result: &anyhow::Result<T>) {
        if result.is_err() {
            eprintln!("  the SFU's log ends:\n{}", self.log_tail());
        }
        self.stop().await;
    }
}

/// What a run needs to start SFUs and make peers.
struct Env {
    args: Args,
    net: Net,
    epoch: Instant,
}

impl Env {
    fn sfu_cpu(&self) -> Option<&str> {
        (!self.args.no_pin).then_some(self.args.sfu_cpu.as_str())
    }

    async fn start(&self, which: Which) -> anyhow::Result<Server> {
        Ok(match which {
            Which::Janus => {
                let opts = janus::JanusOptions {
                    bin: self.args.janus_bin.clone(),
                    lib_dir: self.args.janus_lib.clone(),
                    event_loops: self.args.janus_event_loops,
                };
                Server::Janus(janus::Janus::start(&opts, &self.net, self.sfu_cpu()).await?)
            }
            _ => Server::Sealroom(
                sealroom::Sealroom::start(
                    &self.args.sealroom_bin,
                    &self.net,
                    self.sfu_cpu(),
                    self.args.media_shards,
                )
                .await?,
            ),
        })
    }

    fn peer(&self, i: usize, audio: bool, video: bool) -> PeerConfig {
        PeerConfig {
            bind: SocketAddr::new(self.net.media_ip(), 0),
            me: u32::try_from(i).unwrap_or(u32::MAX),
            audio,
            video,
            simulcast: false,
            epoch: self.epoch,
        }
    }
}

/// Fails with the first participant's failure, if one failed.
fn no_failure<T>(ps: &[T], failure: impl Fn(&T) -> Option<String>) -> anyhow::Result<()> {
    match ps
        .iter()
        .enumerate()
        .find_map(|(i, p)| failure(p).map(|e| (i, e)))
    {
        Some((i, e)) => bail!("participant {i} failed: {e}"),
        None => Ok(()),
    }
}

/// Wait until every participant receives `streams` streams (at least one when 0); fail on
/// the first failure.
async fn all_receiving(ps: &[Participant], streams: usize, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        no_failure(ps, Participant::failure)?;
        let waiting = ps
            .iter()
            .filter(|p| p.first_remote_frame().is_none() || p.streams_heard() < streams)
            .count();
        if waiting == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{waiting} of {} participants did not receive every stream within {} s",
                ps.len(),
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Forwarding: N participants publish and receive each other for a window of `seconds`.
async fn traffic(
    env: &Env,
    which: Which,
    n: usize,
    media: Media,
    seconds: u64,
) -> anyhow::Result<Traffic> {
    let mut server = env.start(which).await?;
    let result = traffic_on(env, &mut server, n, media, seconds).await;
    server.stop_after(&result).await;
    result
}

async fn traffic_on(
    env: &Env,
    server: &mut Server,
    n: usize,
    media: Media,
    seconds: u64,
) -> anyhow::Result<Traffic> {
    let video = media.video();
    let pid = server.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = ProcSample::read(pid)?;
    // `--meetings` M: meeting m's participants are m·N … m·N + N − 1 (their stamps say so).
    let meetings = env.args.meetings.max(1);
    let mut rooms = Vec::with_capacity(meetings);
    for _ in 0..meetings {
        rooms.push(server.room(n).await?);
    }
    let mut ps = Vec::new();
    for (m, room) in rooms.iter().enumerate() {
        for i in 0..n {
            let mut cfg = env.peer(m * n + i, true, video);
            cfg.simulcast = media == Media::Simulcast;
            ps.push(server.join(room, i, cfg)?);
        }
    }
    let streams = (n - 1) * if video { 2 } else { 1 };
    all_receiving(&ps, streams, Duration::from_secs(30))
        .await
        .with_context(|| {
            format!(
                "joining {meetings} meeting(s) of {n} participants to {}",
                server.describe()
            )
        })?;
    tokio::time::sleep(Duration::from_secs(env.args.warmup)).await;
    let me = std::process::id();
    let dgrams = |ps: &[Participant]| ps.iter().map(Participant::datagrams).sum::<u64>();
    let (s0, l0, d0) = (ProcSample::read(pid)?, ProcSample::read(me)?, dgrams(&ps));
    // The threads are read inside the process's readings, so no thread's share can exceed
    // the process's CPU.
    let threads0 = system::thread_cpu(pid);
    // bench/profile.sh waits for this line to attach perf to the SFU for the window.
    eprintln!("  window: {seconds} s, SFU pid {pid}");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let busiest_thread = system::busiest_thread_s(&threads0, &system::thread_cpu(pid));
    let (s1, l1, d1) = (ProcSample::read(pid)?, ProcSample::read(me)?, dgrams(&ps));
    if let Some((i, e)) = ps
        .iter()
        .enumerate()
        .find_map(|(i, p)| p.failure().map(|e| (i, e)))
    {
        bail!("participant {i} failed during the window: {e}");
    }
    // Frames in flight at the end of the window arrive (or are lost) by then.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut reports = Vec::new();
    for p in &ps {
        reports.push(p.reports().await);
    }
    drop(ps);
    let ns = |t: Instant| t.saturating_duration_since(env.epoch).as_nanos() as u64;
    let mut t = report::traffic(
        n,
        video,
        &reports,
        (ns(s0.at), ns(s1.at)),
        (idle, s0, s1),
        (l0, l1),
        d1.saturating_sub(d0),
    );
    t.simulcast = media == Media::Simulcast;
    t.sfu_busiest_thread_cpu_s = busiest_thread;
    Ok(t)
}

/// The capacity search for one SFU and media kind ([`capacity`]): a fresh SFU for every
/// size it asks for, then latency at the sizes closest to 50 % and 90 % of the capacity's
/// egress packet rate.
async fn capacity_search(
    env: &Env,
    which: Which,
    video: bool,
    direct_p99_ms: Option<f64>,
) -> CapacityResult {
    let mut search = capacity::Search::new(env.args.max_n);
    let mut trials = Vec::new();
    while let Some((n, phase)) = search.next() {
        let role = Role::Search(phase);
        eprintln!(" N={n} ({}) …", role.describe());
        let r = traffic(env, which, n, Media::of(video), env.args.capacity_seconds).await;
        let trial = Trial::new(n, role, r, direct_p99_ms);
        eprintln!("  {}", trial.verdict.describe());
        search.record(n, trial.verdict.pass());
        trials.push(trial);
    }
    if let Some(cap) = search.capacity() {
        // One window's p99 moves by a factor of two or three between runs on a shared
        // machine, so each load point is measured `--repeat` times, each on a fresh SFU.
        let rounds = env.args.repeat.max(1);
        for share in capacity::LOAD_POINTS {
            let n = capacity::size_at_share(cap, share);
            let role = Role::Share(share);
            for round in 1..=rounds {
                match rounds {
                    1 => eprintln!(" N={n} ({}) …", role.describe()),
                    _ => eprintln!(" N={n} ({}, run {round}/{rounds}) …", role.describe()),
                }
                let r = traffic(env, which, n, Media::of(video), env.args.seconds).await;
                let trial = Trial::new(n, role, r, direct_p99_ms);
                eprintln!("  {}", trial.verdict.describe());
                trials.push(trial);
            }
        }
    }
    CapacityResult {
        video,
        max_n: env.args.max_n,
        capacity: search.capacity(),
        reached_max: search.reached_max(),
        trials,
    }
}

/// Join time to the first remote frame: one by one, or all at once; `rounds` times, each on
/// a fresh SFU.
async fn joins(
    env: &Env,
    which: Which,
    n: usize,
    storm: bool,
    rounds: usize,
) -> anyhow::Result<JoinResult> {
    let mut times = Vec::new();
    for _ in 0..rounds.max(1) {
        let mut server = env.start(which).await?;
        let result = joins_on(env, &mut server, n, storm).await;
        server.stop_after(&result).await;
        times.extend(result?);
    }
    Ok(JoinResult::new(n, times))
}

async fn joins_on(
    env: &Env,
    server: &mut Server,
    n: usize,
    storm: bool,
) -> anyhow::Result<Vec<Duration>> {
    let room = server.room(n).await?;
    let mut ps: Vec<Participant> = Vec::new();
    let mut times = Vec::new();
    if storm {
        for i in 0..n {
            ps.push(server.join(&room, i, env.peer(i, true, true))?);
        }
        all_receiving(&ps, 0, Duration::from_secs(30)).await?;
        times.extend(ps.iter().filter_map(|p| p.first_remote_frame()));
    } else {
        for i in 0..n {
            ps.push(server.join(&room, i, env.peer(i, true, true))?);
            if i == 0 {
                // Alone: nothing to receive. Wait until it publishes.
                let p = &ps[0];
                first_settled(
                    "connect",
                    || p.peers().iter().any(|p| p.live().connected_at.is_some()),
                    || p.failure(),
                )
                .await?;
                continue;
            }
            all_receiving(&ps[i..], 0, Duration::from_secs(15))
                .await
                .with_context(|| format!("participant {i} joining"))?;
            times.extend(ps[i].first_remote_frame());
        }
    }
    Ok(times)
}

/// How long the members' delay is measured before the joins.
const JOIN_LOAD_BEFORE: Duration = Duration::from_secs(3);

/// [`report::JoinLoad`], `rounds` times (a fresh SFU each); the delays pool every round.
async fn join_load(
    env: &Env,
    which: Which,
    n: usize,
    joining: usize,
    rounds: usize,
) -> anyhow::Result<report::JoinLoad> {
    let mut all: Option<report::JoinLoad> = None;
    for _ in 0..rounds.max(1) {
        let mut server = env.start(which).await?;
        let result = join_load_on(env, &mut server, n, joining).await;
        server.stop_after(&result).await;
        let r = result?;
        match &mut all {
            None => all = Some(r),
            Some(a) => a.merge(r),
        }
    }
    all.context("no round ran")
}

async fn join_load_on(
    env: &Env,
    server: &mut Server,
    n: usize,
    joining: usize,
) -> anyhow::Result<report::JoinLoad> {
    let room = server.room(n + joining).await?;
    let mut ps = Vec::new();
    for i in 0..n {
        ps.push(server.join(&room, i, env.peer(i, true, true))?);
    }
    all_receiving(&ps, (n - 1) * 2, Duration::from_secs(30))
        .await
        .with_context(|| format!("joining {n} members to {}", server.describe()))?;
    tokio::time::sleep(Duration::from_secs(env.args.warmup)).await;
    let before_from = Instant::now();
    tokio::time::sleep(JOIN_LOAD_BEFORE).await;
    let joins_from = Instant::now();
    // For a profiler (as bench/profile.sh does with the forwarding window).
    eprintln!("  joining: {joining} at once, SFU pid {}", server.pid());
    for i in n..n + joining {
        ps.push(server.join(&room, i, env.peer(i, true, true))?);
    }
    let everyone = (n + joining - 1) * 2;
    all_receiving(&ps, everyone, Duration::from_secs(30))
        .await
        .with_context(|| format!("{joining} joining {n} members on {}", server.describe()))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let joins_to = Instant::now();
    // Frames in flight at the end of the window arrive (or are lost) by then.
    tokio::time::sleep(Duration::from_secs(1)).await;
    no_failure(&ps, Participant::failure)?;
    let times: Vec<Duration> = ps[n..]
        .iter()
        .filter_map(Participant::first_remote_frame)
        .collect();
    let mut reports = Vec::new();
    for p in &ps[..n] {
        reports.push(p.reports().await);
    }
    drop(ps);
    let ns = |t: Instant| t.saturating_duration_since(env.epoch).as_nanos() as u64;
    let (before_ms, _, _) =
        report::JoinLoad::window(n, &reports, (ns(before_from), ns(joins_from)));
    let (during_ms, audio_during_ms, lost_during) =
        report::JoinLoad::window(n, &reports, (ns(joins_from), ns(joins_to)));
    let r = report::JoinLoad {
        n,
        joining,
        before_ms,
        during_ms,
        audio_during_ms,
        lost_during,
        join: report::JoinResult::new(joining, times),
    };
    Ok(r)
}

/// Wait up to 15 s for the first participant of a one-by-one join to `what` (`settled`).
async fn first_settled(
    what: &str,
    settled: impl Fn() -> bool,
    failure: impl Fn() -> Option<String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !settled() {
        if let Some(e) = failure() {
            bail!("participant 0 failed: {e}");
        }
        if Instant::now() > deadline {
            bail!("participant 0 did not {what} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Join time to the first remote frame that decrypted, with end-to-end encryption: the
/// native client's media session (MLS member, SFrame on every frame) instead of a load peer.
/// sealroom only (Janus has no counterpart); one by one, or all at once; `rounds` times, each
/// on a fresh SFU.
async fn joins_e2ee(env: &Env, n: usize, storm: bool, rounds: usize) -> anyhow::Result<JoinResult> {
    let mut times = Vec::new();
    for _ in 0..rounds.max(1) {
        let mut server = env.start(Which::Sealroom).await?;
        let result = match &mut server {
            Server::Sealroom(s) => joins_e2ee_on(env, s, n, storm).await,
            Server::Janus(_) => Err(anyhow::anyhow!("encrypted joins need sealroom")),
        };
        server.stop_after(&result).await;
        times.extend(result?);
    }
    Ok(JoinResult::new(n, times))
}

async fn joins_e2ee_on(
    env: &Env,
    s: &mut sealroom::Sealroom,
    n: usize,
    storm: bool,
) -> anyhow::Result<Vec<Duration>> {
    let room = s.room(n).await?;
    let bind = SocketAddr::new(env.net.media_ip(), 0);
    let mut ps = Vec::new();
    if storm {
        for i in 0..n {
            ps.push(s.join_e2ee(&room, i, bind)?);
        }
        return all_decrypting(&ps, Duration::from_secs(30)).await;
    }
    let mut times = Vec::new();
    for i in 0..n {
        ps.push(s.join_e2ee(&room, i, bind)?);
        if i == 0 {
            // Alone: nothing to receive. Wait until it is connected and has made the group.
            let p = &ps[0];
            first_settled(
                "connect and make the MLS group",
                || p.settled(),
                || p.failure(),
            )
            .await?;
            continue;
        }
        let t = all_decrypting(&ps[i..], Duration::from_secs(15))
            .await
            .with_context(|| format!("participant {i} joining"))?;
        times.extend(t);
    }
    Ok(times)
}

/// Wait until every participant has decrypted a frame from someone; their join times.
async fn all_decrypting(
    ps: &[sealroom::E2eeParticipant],
    within: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let deadline = Instant::now() + within;
    loop {
        no_failure(ps, sealroom::E2eeParticipant::failure)?;
        let times: Vec<Duration> = ps
            .iter()
            .filter_map(sealroom::E2eeParticipant::first_decrypted_frame)
            .collect();
        if times.len() == ps.len() {
            return Ok(times);
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} participants decrypted nothing within {within:?}",
                ps.len() - times.len(),
                ps.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A forwarding scenario's outcome on one SFU: its median run by efficiency; with more than
/// one run, every run's efficiency goes to `repeats`.
fn median_outcome(
    name: &str,
    sfu: &'static str,
    runs: Vec<anyhow::Result<Traffic>>,
    repeats: &mut Vec<report::Repeats>,
) -> Outcome {
    if runs.len() > 1 {
        repeats.push(report::Repeats {
            scenario: name.to_string(),
            sfu,
            efficiency: runs
                .iter()
                .map(|r| r.as_ref().ok().map(Traffic::efficiency))
                .collect(),
        });
    }
    Outcome::traffic(name.to_string(), sfu, report::median_run(runs))
}

/// The floor scenarios: every size of `--sizes`, audio and video, through the null forwarder
/// without and with the cipher, `rounds` times each (the median run by efficiency).
async fn floors(
    env: &Env,
    sizes: &[usize],
    rounds: usize,
    repeats: &mut Vec<report::Repeats>,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    if env.args.meetings != 1 {
        eprintln!("note: the floor runs one meeting at a time; skipped with --meetings");
        return out;
    }
    for media in [Media::Audio, Media::Video] {
        for &n in sizes {
            let name = format!("{} N={n}", media.name());
            for variant in [floor::Variant::Udp, floor::Variant::Aead] {
                let plan = floor::Plan {
                    n,
                    video: media.video(),
                    variant,
                    warmup: Duration::from_secs(env.args.warmup),
                    seconds: Duration::from_secs(env.args.seconds),
                };
                let mut runs = Vec::new();
                for round in 0..rounds {
                    eprintln!("{name}: {} (run {}/{rounds}) …", variant.label(), round + 1);
                    let r = floor::measure(&env.net, env.sfu_cpu(), plan).await;
                    if let Err(e) = &r {
                        eprintln!("  failed: {e:#}");
                    }
                    runs.push(r);
                }
                out.push(median_outcome(&name, variant.label(), runs, repeats));
            }
        }
    }
    out
}

/// The same delay measured without an SFU: one publisher straight to one subscriber, for
/// `seconds`. What the SFUs add is their delay minus this.
async fn baseline(env: &Env) -> anyhow::Result<(f64, f64)> {
    let a = PeerHandle::spawn(env.peer(0, true, true))
        .await
        .map_err(anyhow::Error::msg)?;
    let b = PeerHandle::spawn(env.peer(1, false, false))
        .await
        .map_err(anyhow::Error::msg)?;
    let offer = a.offer().await.map_err(anyhow::Error::msg)?;
    let answer = b
        .accept_offer(offer.sdp)
        .await
        .map_err(anyhow::Error::msg)?;
    a.accept_answer(answer).await.map_err(anyhow::Error::msg)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.live().first_remote_frame_at.is_none() {
        if Instant::now() > deadline {
            bail!("the direct connection carried nothing within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(env.args.seconds)).await;
    let mut delays: Vec<f64> = b
        .report()
        .await
        .received
        .iter()
        .map(|f| f.arrived_ns.saturating_sub(f.sent_ns) as f64 / 1e6)
        .collect();
    delays.sort_by(|x, y| x.total_cmp(y));
    Ok((
        report::quantile(&delays, 0.5),
        report::quantile(&delays, 0.99),
    ))
}

/// Busy share of all CPUs over one second.
fn quiet_check() -> Option<f64> {
    let (b0, t0) = system::machine_busy()?;
    std::thread::sleep(Duration::from_secs(1));
    let (b1, t1) = system::machine_busy()?;
    Some((b1 - b0) / (t1 - t0).max(0.01))
}

fn janus_available(args: &Args) -> bool {
    args.janus_bin.exists()
        && args
            .janus_lib
            .join("plugins/libjanus_videoroom.so")
            .exists()
}

fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    if let Some(bind) = args.floor_forwarder {
        let variant = match args.floor_aead {
            true => floor::Variant::Aead,
            false => floor::Variant::Udp,
        };
        return match floor::forward(bind, variant) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("floor forwarder: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match run(&mut args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &mut Args) -> anyhow::Result<std::process::ExitCode> {
    if args.smoke {
        args.sizes = vec![2];
        args.seconds = 3;
        args.warmup = 1;
        args.join_n = 2;
        args.join_rounds = 1;
        args.max_n = 2;
        args.capacity_seconds = 3;
        args.join_load_n = 2;
        // Not in the default set, but smoke runs them too, so that they cannot rot.
        for g in [Group::JoinLoad, Group::Floor] {
            if !args.scenarios.contains(&g) {
                args.scenarios.push(g);
            }
        }
    }
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if args.sizes.iter().any(|n| *n < 2)
        || args.join_n < 2
        || args.max_n < 2
        || args.join_load_n < 2
    {
        bail!("meetings need at least 2 participants");
    }
    if args.meetings == 0 || !(1..=64).contains(&args.media_shards) {
        bail!("--meetings must be at least 1, --media-shards 1 to 64");
    }
    if args.sfu_cpu.is_empty()
        || !args
            .sfu_cpu
            .chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
    {
        bail!("--sfu-cpu takes a CPU list like 0 or 0,1");
    }
    if args.seconds == 0 || args.capacity_seconds == 0 {
        bail!("measured windows need at least 1 s");
    }
    let prefix: Vec<u8> = args
        .subnet
        .split('.')
        .map(|p| p.parse::<u8>())
        .collect::<Result<_, _>>()
        .ok()
        .filter(|v: &Vec<u8>| v.len() == 3)
        .context("--subnet takes a /24 prefix like 198.19.77")?;
    let net = if let Some(inner) = Net::inner() {
        inner
    } else if args.loopback {
        Net::Loopback
    } else {
        match Netns::create([prefix[0], prefix[1], prefix[2]]) {
            Ok(ns) => {
                // The whole run happens inside; the namespace goes when `ns` drops.
                let argv: Vec<String> = std::env::args().skip(1).collect();
                let cpu = (!args.no_pin).then_some(args.load_cpu);
                let code = ns.run_inside(cpu, &argv)?;
                return Ok(std::process::ExitCode::from(
                    u8::try_from(code).unwrap_or(1),
                ));
            }
            Err(e) if args.smoke => {
                eprintln!("note: no network namespace ({e:#}); sealroom on loopback only");
                Net::Loopback
            }
            Err(e) => return Err(e.context("creating the network namespace (run as root)")),
        }
    };
    let janus_ok = janus_available(args);
    let mut which = match args.sfu {
        Which::Both => vec![Which::Sealroom, Which::Janus],
        w => vec![w],
    };
    if matches!(net, Net::Loopback) || !janus_ok {
        if args.sfu == Which::Janus {
            bail!("Janus needs its binary, its VideoRoom plugin and a network namespace");
        }
        if which.contains(&Which::Janus) {
            if !args.smoke {
                bail!(
                    "Janus is not installed ({}): run bench/sfu-vs-janus.sh, or pass --sfu sealroom",
                    args.janus_bin.display()
                );
            }
            eprintln!("note: Janus skipped (not installed, or no network namespace)");
        }
        which.retain(|w| *w != Which::Janus);
    }
    if !args.no_pin {
        system::pin_self(args.load_cpu)?;
    }
    let busy = quiet_check();
    if let Some(b) = busy.filter(|b| *b > 0.10) {
        eprintln!(
            "warning: the machine was {:.0} % busy before the run; figures will be noisy",
            b * 100.0
        );
    }
    // reqwest (Janus's HTTP API) is built without a default TLS provider; ring is ours.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let env = Env {
        args: args.clone(),
        net,
        epoch: Instant::now(),
    };
    let forwarding = args.scenarios.iter().any(|g| *g != Group::Join);
    let (results, direct) = runtime.block_on(async {
        let direct = match forwarding {
            true => baseline(&env).await,
            false => Err(anyhow::anyhow!("not asked for")),
        };
        if let (true, Err(e)) = (forwarding, &direct) {
            eprintln!("baseline failed: {e:#}");
        }
        let direct = direct.ok();
        (scenarios(&env, &which, direct).await, direct)
    });
    let (results, repeats) = results;
    let ctx = report::Context {
        topology: env.net.describe(),
        pinning: if args.no_pin {
            "none".into()
        } else {
            format!(
                "SFU on CPU {}, load on CPU {} (this process: {})",
                args.sfu_cpu,
                args.load_cpu,
                system::allowed_cpus()
            )
        },
        busy_before: busy,
        seconds: args.seconds,
        warmup: args.warmup,
        janus_event_loops: args.janus_event_loops,
        media_shards: args.media_shards,
        join_rounds: args.join_rounds,
        capacity_seconds: args.capacity_seconds,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        direct_delay_ms: direct,
        smoke: args.smoke,
    };
    let mut md = report::markdown(&ctx, &results);
    md.push_str(&report::repeats_markdown(&repeats));
    println!("{md}");
    let out = args
        .out
        .clone()
        .or_else(|| (!args.smoke).then(|| PathBuf::from("bench/results")));
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("latest.md"), &md)?;
        std::fs::write(dir.join("latest.csv"), report::csv(&results, direct))?;
        eprintln!("wrote {}/latest.md and latest.csv", dir.display());
        if !args.smoke {
            for name in plot::write_all(&dir, &results, direct)? {
                eprintln!("wrote {}/{name}", dir.display());
            }
        }
    }
    drop(env);
    let failed: Vec<&Outcome> = results.iter().filter(|r| r.failed()).collect();
    if args.smoke && !failed.is_empty() {
        eprintln!("smoke: {} scenario(s) failed", failed.len());
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn scenarios(
    env: &Env,
    which: &[Which],
    direct: Option<(f64, f64)>,
) -> (Vec<Outcome>, Vec<report::Repeats>) {
    let mut out = Vec::new();
    let mut repeats = Vec::new();
    let label = |w: Which| match w {
        Which::Janus => "janus",
        _ => "sealroom",
    };
    let mut sizes = env.args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let rounds = env.args.repeat.max(1);
    for (media, group) in [
        (Media::Audio, Group::Audio),
        (Media::Video, Group::Video),
        (Media::Simulcast, Group::Simulcast),
    ] {
        if !env.args.scenarios.contains(&group) {
            continue;
        }
        for &n in &sizes {
            let name = match env.args.meetings {
                1 => format!("{} N={n}", media.name()),
                m => format!("{} {m}×N={n}", media.name()),
            };
            let mut runs: Vec<Vec<anyhow::Result<report::Traffic>>> =
                which.iter().map(|_| Vec::new()).collect();
            for round in 0..rounds {
                // ABBA: neither SFU always runs first (on a warmer or cooler machine).
                let mut order: Vec<usize> = (0..which.len()).collect();
                if round % 2 == 1 {
                    order.reverse();
                }
                for i in order {
                    let w = which[i];
                    match rounds {
                        1 => eprintln!("{name}: {} …", label(w)),
                        _ => eprintln!("{name}: {} (run {}/{rounds}) …", label(w), round + 1),
                    }
                    let r = traffic(env, w, n, media, env.args.seconds).await;
                    if let Err(e) = &r {
                        eprintln!("  failed: {e:#}");
                    }
                    runs[i].push(r);
                }
            }
            for (&w, rs) in which.iter().zip(runs) {
                out.push(median_outcome(&name, label(w), rs, &mut repeats));
            }
        }
    }
    if env.args.scenarios.contains(&Group::Floor) {
        out.extend(floors(env, &sizes, rounds, &mut repeats).await);
    }
    let joins_wanted = env.args.scenarios.contains(&Group::Join);
    for storm in [false, true].into_iter().filter(|_| joins_wanted) {
        for &w in which {
            let n = env.args.join_n;
            let name = format!("join {} N={n}", if storm { "storm" } else { "one by one" });
            eprintln!("{name}: {} …", label(w));
            let r = joins(env, w, n, storm, env.args.join_rounds).await;
            if let Err(e) = &r {
                eprintln!("  failed: {e:#}");
            }
            out.push(Outcome::join(name, label(w), r));
        }
        if which.contains(&Which::Sealroom) {
            let n = env.args.join_n;
            let name = format!(
                "join e2ee {} N={n}",
                if storm { "storm" } else { "one by one" }
            );
            eprintln!("{name}: sealroom …");
            let r = joins_e2ee(env, n, storm, env.args.join_rounds).await;
            if let Err(e) = &r {
                eprintln!("  failed: {e:#}");
            }
            out.push(Outcome::join(name, label(Which::Sealroom), r));
        }
    }
    if env.args.scenarios.contains(&Group::JoinLoad) {
        let (n, j) = (env.args.join_load_n, env.args.join_n);
        let name = format!("video N={n}, {j} joining");
        for &w in which {
            eprintln!("{name}: {} …", label(w));
            let r = join_load(env, w, n, j, env.args.join_rounds).await;
            if let Err(e) = &r {
                eprintln!("  failed: {e:#}");
            }
            out.push(Outcome::join_load(name.clone(), label(w), r));
        }
    }
    let capacity_wanted = env.args.scenarios.contains(&Group::Capacity);
    for video in [false, true].into_iter().filter(|_| capacity_wanted) {
        for &w in which {
            let name = format!("{} capacity", if video { "video" } else { "audio" });
            eprintln!("{name}: {} …", label(w));
            let c = capacity_search(env, w, video, direct.map(|d| d.1)).await;
            out.push(Outcome::capacity(name, label(w), c));
        }
    }
    (out, repeats)
}
