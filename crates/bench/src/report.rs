//! Figures from what the peers recorded and what the kernel counted, and the report: a
//! markdown table (sealroom, Janus, ratio) and a CSV with every number.

use crate::peer::PeerReport;
use crate::stamp::Kind;
use crate::system::ProcSample;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::time::Duration;

/// Loss above which a forwarding-efficiency figure does not count (issue 5's definition).
const MAX_LOSS_FOR_EFFICIENCY: f64 = 0.005;

/// One forwarding scenario on one SFU.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub n: usize,
    pub video: bool,
    /// Wall time of the window.
    pub seconds: f64,
    /// SFU utime + stime during the window.
    pub sfu_cpu_s: f64,
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
    pub frames_expected: u64,
    pub frames_received: u64,
    pub worst_stream_loss: f64,
    pub delay_p50_ms: f64,
    pub delay_p99_ms: f64,
    pub delay_max_ms: f64,
    pub rss_idle_kib: u64,
    pub rss_kib: u64,
    /// UDP receive buffer overflows in the SFU's network namespace (SFU and load sockets
    /// alike when they share it).
    pub socket_drops: u64,
    pub unstamped: u64,
    pub keyframe_requests: u64,
}

impl Traffic {
    pub fn cpu_pct(&self) -> f64 {
        100.0 * self.sfu_cpu_s / self.seconds
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
    pub fn loss(&self) -> f64 {
        if self.frames_expected == 0 {
            return 1.0;
        }
        1.0 - self.frames_received as f64 / self.frames_expected as f64
    }
    pub fn mem_per_participant_kib(&self) -> f64 {
        self.rss_kib.saturating_sub(self.rss_idle_kib) as f64 / self.n as f64
    }
}

/// `p`-quantile of sorted values by nearest rank.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The figures of one scenario. `reports[i]` holds participant `i`'s peers; the window is
/// in ns since the epoch and selects frames by send time.
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
        video,
        seconds: sfu.2.at.saturating_duration_since(sfu.1.at).as_secs_f64(),
        sfu_cpu_s: sfu.2.cpu_s - sfu.1.cpu_s,
        load_cpu_s: load.1.cpu_s - load.0.cpu_s,
        other_cpu_s: (sfu.2.machine_busy_s - sfu.1.machine_busy_s)
            - (sfu.2.cpu_s - sfu.1.cpu_s)
            - (load.1.cpu_s - load.0.cpu_s),
        media_packets: 0,
        udp_out: datagrams,
        frames_expected: 0,
        frames_received: 0,
        worst_stream_loss: 0.0,
        delay_p50_ms: f64::NAN,
        delay_p99_ms: f64::NAN,
        delay_max_ms: f64::NAN,
        rss_idle_kib: sfu.0.rss_kib,
        rss_kib: sfu.2.rss_kib,
        socket_drops: sfu
            .2
            .udp_rcvbuf_errors
            .saturating_sub(sfu.1.udp_rcvbuf_errors),
        unstamped: 0,
        keyframe_requests: 0,
    };
    let mut delays = Vec::new();
    for (r, peers) in reports.iter().enumerate() {
        let r = r as u32;
        let mut got: HashMap<(u32, Kind), u64> = HashMap::new();
        let mut seen: HashSet<(u32, Kind, u32)> = HashSet::new();
        for p in peers {
            t.unstamped += p.unstamped;
            t.keyframe_requests += p.keyframe_requests;
            for f in &p.received {
                if f.from == r || !inside(f.sent_ns) || !seen.insert((f.from, f.kind, f.seq)) {
                    continue;
                }
                *got.entry((f.from, f.kind)).or_default() += 1;
                t.media_packets += u64::from(f.packets);
                delays.push(f.recv_ns.saturating_sub(f.sent_ns) as f64 / 1e6);
            }
        }
        for (&(from, kind), &expected) in &sent {
            if from == r || expected == 0 {
                continue;
            }
            let g = got.get(&(from, kind)).copied().unwrap_or(0).min(expected);
            t.frames_expected += expected;
            t.frames_received += g;
            t.worst_stream_loss = t.worst_stream_loss.max(1.0 - g as f64 / expected as f64);
        }
    }
    delays.sort_by(|a, b| a.total_cmp(b));
    t.delay_p50_ms = quantile(&delays, 0.50);
    t.delay_p99_ms = quantile(&delays, 0.99);
    t.delay_max_ms = delays.last().copied().unwrap_or(f64::NAN);
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

#[derive(Debug)]
pub enum Data {
    Traffic(Traffic),
    Join(JoinResult),
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

    /// The pipeline did not work: an error, or no media at all.
    pub fn failed(&self) -> bool {
        match &self.data {
            Err(_) => true,
            Ok(Data::Traffic(t)) => t.frames_received == 0,
            Ok(Data::Join(j)) => j.times_ms.is_empty(),
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
    pub join_rounds: usize,
    pub command: String,
    pub smoke: bool,
    /// Delay p50 and p99 of a direct publisher → subscriber connection (no SFU), ms.
    pub direct_delay_ms: Option<(f64, f64)>,
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "—".into()
    }
}

/// Whether a smaller value is better, for the ratio column's note.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

struct Row {
    scenario: String,
    metric: &'static str,
    better: Better,
    decimals: usize,
    /// Value and a mark (†: above the loss limit) per SFU.
    values: HashMap<&'static str, (f64, &'static str)>,
    errors: HashMap<&'static str, String>,
}

fn headline_rows(results: &[Outcome]) -> Vec<Row> {
    type Metric = (
        &'static str,
        Better,
        usize,
        fn(&Data) -> Option<(f64, &'static str)>,
    );
    let traffic_metrics: [Metric; 6] = [
        (
            "egress media pkt per SFU CPU-s",
            Better::Higher,
            0,
            |d| match d {
                Data::Traffic(t) => Some((
                    t.efficiency(),
                    if t.loss() > MAX_LOSS_FOR_EFFICIENCY {
                        " †"
                    } else {
                        ""
                    },
                )),
                _ => None,
            },
        ),
        ("SFU CPU, % of one core", Better::Lower, 1, |d| match d {
            Data::Traffic(t) => Some((t.cpu_pct(), "")),
            _ => None,
        }),
        ("frame loss %", Better::Lower, 2, |d| match d {
            Data::Traffic(t) => Some((100.0 * t.loss(), "")),
            _ => None,
        }),
        ("delay p50, ms", Better::Lower, 2, |d| match d {
            Data::Traffic(t) => Some((t.delay_p50_ms, "")),
            _ => None,
        }),
        ("delay p99, ms", Better::Lower, 2, |d| match d {
            Data::Traffic(t) => Some((t.delay_p99_ms, "")),
            _ => None,
        }),
        (
            "SFU memory per participant, KiB",
            Better::Lower,
            0,
            |d| match d {
                Data::Traffic(t) => Some((t.mem_per_participant_kib(), "")),
                _ => None,
            },
        ),
    ];
    let join_metrics: [Metric; 2] = [
        (
            "join → first remote frame p50, ms",
            Better::Lower,
            0,
            |d| match d {
                Data::Join(j) => Some((j.p50(), "")),
                _ => None,
            },
        ),
        (
            "join → first remote frame p95, ms",
            Better::Lower,
            0,
            |d| match d {
                Data::Join(j) => Some((j.p95(), "")),
                _ => None,
            },
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
        let is_join = s.starts_with("join");
        let metrics: &[Metric] = if is_join {
            &join_metrics
        } else {
            &traffic_metrics
        };
        for (metric, better, decimals, f) in metrics {
            let mut row = Row {
                scenario: s.to_string(),
                metric,
                better: *better,
                decimals: *decimals,
                values: HashMap::new(),
                errors: HashMap::new(),
            };
            for o in &of {
                match &o.data {
                    Ok(d) => {
                        if let Some(v) = f(d) {
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
         (30 frames/s, ≈100 kbit/s, no simulcast) and subscribes to everyone else. sealroom: \
         one bundled connection per participant (open level, no MLS). Janus: VideoRoom, a \
         publisher connection and one multistream subscriber connection per participant, \
         `event_loops = {}`. CPU is utime+stime of the SFU process from /proc; egress media \
         packets are the RTP packets of the frames the subscribers received; delay is \
         publisher `write` to subscriber frame complete, both in the load process, so it \
         includes both clients' str0m and the kernel path. Join time runs from opening \
         the signaling (sealroom: the WebSocket of a logged-in device; Janus: creating the API \
         session) to the first frame from anyone; one by one: each joins alone into the \
         meeting the previous ones made; storm: all N start at once; {} rounds pooled, each on \
         a fresh SFU.\n",
        ctx.warmup, ctx.seconds, ctx.janus_event_loops, ctx.join_rounds
    );
    if let Some((p50, p99)) = ctx.direct_delay_ms {
        let _ = writeln!(
            md,
            "Baseline without an SFU (one publisher straight to one subscriber, same \
             measurement): delay p50 {} ms, p99 {} ms. The delay rows below include it.\n",
            num(p50, 2),
            num(p99, 2)
        );
    }
    let _ = writeln!(
        md,
        "| Scenario | Metric | sealroom | Janus | sealroom ÷ Janus |\n|---|---|---:|---:|---:|"
    );
    for row in headline_rows(results) {
        let cell = |sfu: &str| match (row.values.get(sfu), row.errors.get(sfu)) {
            (Some((v, mark)), _) => format!("{}{mark}", num(*v, row.decimals)),
            (None, Some(_)) => "failed".into(),
            (None, None) => "—".into(),
        };
        let ratio = match (row.values.get("sealroom"), row.values.get("janus")) {
            (Some((s, _)), Some((j, _))) if *j != 0.0 && s.is_finite() && j.is_finite() => {
                format!(
                    "{:.2} ({} is better)",
                    s / j,
                    match row.better {
                        Better::Higher => "higher",
                        Better::Lower => "lower",
                    }
                )
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
        "\n† loss above 0.5 %: the efficiency figure does not meet issue 5's definition.\n"
    );
    let _ = writeln!(
        md,
        "## Details\n\n| Scenario | SFU | SFU CPU % | media pkt/s out | datagrams/s out | \
         frames received / expected | worst stream loss % | delay max ms | SFU RSS idle → \
         loaded MiB | load CPU % | other CPU % | socket drops | keyframe requests |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for o in results {
        match &o.data {
            Ok(Data::Traffic(t)) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} → {} | {} | {} | {} | {} |",
                    o.scenario,
                    o.sfu,
                    num(t.cpu_pct(), 1),
                    num(t.media_pps(), 0),
                    num(t.udp_out_pps(), 0),
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
                    "| {} | {} | join times ms: {} | | | | | | | | | | |",
                    o.scenario,
                    o.sfu,
                    j.times_ms
                        .iter()
                        .map(|t| num(*t, 0))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Err(e) => {
                let e = e.replace('|', "/").replace('\n', " ");
                let _ = writeln!(
                    md,
                    "| {} | {} | failed: {e} | | | | | | | | | | |",
                    o.scenario, o.sfu
                );
            }
        }
    }
    md
}

pub fn csv(results: &[Outcome]) -> String {
    let mut out = String::from(
        "scenario,sfu,n,video,seconds,sfu_cpu_s,sfu_cpu_pct,media_packets,media_pps,udp_out_pps,\
         media_pkt_per_cpu_s,frames_expected,frames_received,loss_pct,worst_stream_loss_pct,\
         delay_p50_ms,delay_p99_ms,delay_max_ms,rss_idle_kib,rss_kib,mem_per_participant_kib,\
         load_cpu_pct,other_cpu_pct,socket_drops,keyframe_requests,join_p50_ms,join_p95_ms,error\n",
    );
    for o in results {
        let _ = match &o.data {
            Ok(Data::Traffic(t)) => writeln!(
                out,
                "{},{},{},{},{:.3},{:.3},{:.2},{},{:.1},{:.1},{:.0},{},{},{:.4},{:.4},{:.3},{:.3},{:.3},{},{},{:.1},{:.2},{:.2},{},{},,,",
                o.scenario,
                o.sfu,
                t.n,
                t.video,
                t.seconds,
                t.sfu_cpu_s,
                t.cpu_pct(),
                t.media_packets,
                t.media_pps(),
                t.udp_out_pps(),
                t.efficiency(),
                t.frames_expected,
                t.frames_received,
                100.0 * t.loss(),
                100.0 * t.worst_stream_loss,
                t.delay_p50_ms,
                t.delay_p99_ms,
                t.delay_max_ms,
                t.rss_idle_kib,
                t.rss_kib,
                t.mem_per_participant_kib(),
                t.load_cpu_pct(),
                t.other_cpu_pct(),
                t.socket_drops,
                t.keyframe_requests,
            ),
            Ok(Data::Join(j)) => writeln!(
                out,
                "{},{},{},true,,,,,,,,,,,,,,,,,,,,,,{:.1},{:.1},",
                o.scenario,
                o.sfu,
                j.n,
                j.p50(),
                j.p95()
            ),
            Err(e) => writeln!(
                out,
                "{},{},,,,,,,,,,,,,,,,,,,,,,,,,,\"{}\"",
                o.scenario,
                o.sfu,
                e.replace('"', "'").replace('\n', " ")
            ),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{Received, Sent};
    use std::time::Instant;

    fn sample(at: Instant, cpu_s: f64, rss_kib: u64) -> ProcSample {
        ProcSample {
            at,
            cpu_s,
            rss_kib,
            udp_rcvbuf_errors: 0,
            machine_busy_s: 0.0,
        }
    }

    #[test]
    fn loss_delay_and_efficiency_come_from_the_window() {
        // Two participants; each sends 10 audio frames at 0..10 ms, the window is [2, 8) ms.
        let ms = 1_000_000u64;
        let sent: Vec<Sent> = (0..10u32)
            .map(|i| Sent {
                kind: Kind::Audio,
                sent_ns: u64::from(i) * ms,
            })
            .collect();
        // 0 receives everything 1 sent with 1 ms delay; 1 receives every other frame of 0's
        // with 3 ms delay, one of them twice.
        let from = |who: u32, seqs: &[u32], delay: u64| -> Vec<Received> {
            seqs.iter()
                .map(|&s| Received {
                    from: who,
                    kind: Kind::Audio,
                    seq: s,
                    sent_ns: u64::from(s) * ms,
                    recv_ns: u64::from(s) * ms + delay * ms,
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
        assert_eq!(t.media_packets, 9);
        assert!((t.udp_out_pps() - 20.0).abs() < 1e-9);
        assert!(
            (t.efficiency() - 18.0).abs() < 1e-9,
            "9 packets per 0.5 CPU-s"
        );
        assert!((t.cpu_pct() - 25.0).abs() < 1e-9);
        assert!((t.mem_per_participant_kib() - 1000.0).abs() < 1e-9);
        assert_eq!(t.delay_p50_ms, 1.0);
        assert_eq!(t.delay_max_ms, 3.0);
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
        let text = csv(&results);
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
                join_rounds: 1,
                command: String::new(),
                smoke: true,
                direct_delay_ms: None,
            },
            &results,
        );
        assert!(md.contains("| join storm N=2 | join → first remote frame p50, ms | failed | 5 |"));
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
}
