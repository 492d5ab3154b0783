//! The machine side of a run: the kernel's accounting of a process (CPU, memory, UDP
//! counters of its network namespace), the network namespace the SFU runs in, and pinning.

use anyhow::{bail, Context};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Instant;

/// Linux `USER_HZ`: the unit of utime/stime in `/proc/<pid>/stat`. It is 100 on every Linux
/// ABI the benchmark runs on (x86_64, aarch64); `getconf CLK_TCK` confirms it.
const CLK_TCK: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// utime + stime of every thread, seconds.
    pub cpu_s: f64,
    pub rss_kib: u64,
    /// The private anonymous part of `rss_kib` (heap, stacks): what the process allocated, as
    /// opposed to the pages of its binary and libraries it has touched (file-backed, shared
    /// with the page cache, bounded by their size whatever the load).
    pub anon_kib: u64,
    /// UDP receive buffer overflows in the process's network namespace
    /// (`/proc/<pid>/net/snmp`, `Udp:` line).
    pub udp_rcvbuf_errors: u64,
    /// Busy time of the whole machine (all CPUs), seconds.
    pub machine_busy_s: f64,
}

impl ProcSample {
    pub fn read(pid: u32) -> anyhow::Result<ProcSample> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("process {pid} is gone"))?;
        // A process that exited but is not yet reaped still has its stat, not its net/.
        let gone = || format!("process {pid} is gone");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(gone)?;
        let snmp = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).with_context(gone)?;
        let cpu_s = cpu_seconds(&stat).context("unreadable /proc/<pid>/stat")?;
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let udp = |name: &str| snmp_field(&snmp, "Udp", name).unwrap_or(0);
        Ok(ProcSample {
            at,
            cpu_s,
            rss_kib: kib("VmRSS:"),
            anon_kib: kib("RssAnon:"),
            udp_rcvbuf_errors: udp("RcvbufErrors"),
            machine_busy_s: machine_busy().map_or(0.0, |(busy, _)| busy),
        })
    }
}

/// utime + stime of each thread of process `pid`, seconds, by thread id (threads that end
/// between the listing and the read are left out).
pub fn thread_cpu(pid: u32) -> HashMap<u32, f64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let tid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        Some((tid, cpu_seconds(&stat)?))
    })
    .collect()
}

/// The most CPU one thread used between two [`thread_cpu`] readings, seconds: with the
/// SFU's CPU it shows how much of the work one core carried.
pub fn busiest_thread_s(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(tid, t)| t - before.get(tid).copied().unwrap_or(0.0))
        .fold(0.0, f64::max)
}

/// (busy, total) seconds of all CPUs from the `cpu` line of /proc/stat: user, nice, system,
/// idle, iowait, irq, softirq, steal; busy is all but idle and iowait.
pub fn machine_busy() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3)? + f.get(4)?;
    Some((
        total.saturating_sub(idle) as f64 / CLK_TCK,
        total as f64 / CLK_TCK,
    ))
}

/// utime + stime (fields 14 and 15) in seconds. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted after its last `)`.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split(' ').collect();
    // After the name, field 3 (state) is index 0, so field 14 is index 11.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / CLK_TCK)
}

/// A counter of `/proc/net/snmp`: a header line and a value line share the prefix.
fn snmp_field(snmp: &str, proto: &str, name: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = snmp.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// The CPUs this process may run on, as the kernel lists them (`0-1`, `1`).
pub fn allowed_cpus() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Pin this process (every thread it has now; later threads inherit) to `cpu`.
pub fn pin_self(cpu: usize) -> anyhow::Result<()> {
    let out = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .output()
        .context("running taskset (util-linux)")?;
    if !out.status.success() {
        bail!(
            "taskset could not pin the load to CPU {cpu}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Where the SFU and the load run.
pub enum Net {
    /// Inside a network namespace made for the run (this process runs in it): media goes to
    /// the address of a veth interface there. Janus gathers no ICE candidates on loopback
    /// interfaces, so it needs one; both SFUs then take the same kernel path (local delivery
    /// within the namespace).
    Netns {
        name: String,
        /// The veth interface with the address (Janus's `ice_enforce_list`).
        iface: String,
        ip: Ipv4Addr,
    },
    /// Plain loopback in the caller's namespace (sealroom only; for runs without root).
    Loopback,
}

/// Environment variable that tells a re-executed benchmark it runs in the namespace made for
/// it: `<name>,<interface>,<ip>`.
pub const INNER_ENV: &str = "SEALROOM_BENCH_NETNS";

impl Net {
    /// The namespace this process was started in by [`Netns::run_inside`], if any.
    pub fn inner() -> Option<Net> {
        let v = std::env::var(INNER_ENV).ok()?;
        let mut f = v.split(',');
        let (name, iface, ip) = (f.next()?, f.next()?, f.next()?.parse().ok()?);
        Some(Net::Netns {
            name: name.to_string(),
            iface: iface.to_string(),
            ip,
        })
    }

    /// The address media is sent to and from (SFU and load alike).
    pub fn media_ip(&self) -> IpAddr {
        match self {
            Net::Netns { ip, .. } => IpAddr::V4(*ip),
            Net::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// A command that runs `program` pinned to `cpus` (a taskset CPU list).
    pub fn command(&self, cpus: Option<&str>, program: &str) -> tokio::process::Command {
        match cpus {
            Some(c) => {
                let mut cmd = tokio::process::Command::new("taskset");
                cmd.args(["-c", c, program]);
                cmd
            }
            None => tokio::process::Command::new(program),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Net::Netns { name, iface, ip } => format!(
                "SFU and load in network namespace {name}; media to and from {ip} (veth {iface}, \
                 local delivery: the same kernel path for both SFUs)"
            ),
            Net::Loopback => "loopback (no network namespace)".into(),
        }
    }
}

/// A network namespace with a veth pair inside it (one end addressed); deleted on drop.
pub struct Netns {
    pub name: String,
    pub iface: String,
    pub ip: Ipv4Addr,
    /// We mounted /run/netns (no namespace existed before): unmount it when the last goes.
    created_run_netns: bool,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Create namespace `sbench-<pid>` holding a veth pair `sb0`/`sb1`, `sb0` at
    /// `<prefix>.1/24`. Nothing is added to the caller's namespace.
    pub fn create(prefix: [u8; 3]) -> anyhow::Result<Netns> {
        let [a, b, c] = prefix;
        let created_run_netns = std::fs::read_dir("/run/netns").is_err();
        let ns = Netns {
            name: format!("sbench-{}", std::process::id()),
            iface: "sb0".into(),
            ip: Ipv4Addr::new(a, b, c, 1),
            created_run_netns,
        };
        ip(&["netns", "add", &ns.name])?;
        // From here on, drop cleans up whatever was made.
        let cidr = format!("{}/24", ns.ip);
        let inside = |rest: &[&str]| {
            let mut a = vec!["netns", "exec", ns.name.as_str(), "ip"];
            a.extend_from_slice(rest);
            ip(&a)
        };
        inside(&["link", "set", "lo", "up"])?;
        inside(&["link", "add", "sb0", "type", "veth", "peer", "name", "sb1"])?;
        inside(&["addr", "add", &cidr, "dev", "sb0"])?;
        inside(&["link", "set", "sb0", "up"])?;
        inside(&["link", "set", "sb1", "up"])?;
        Ok(ns)
    }

    /// Run this program again inside the namespace, pinned to `cpu`, with `args`; its exit
    /// status.
    pub fn run_inside(&self, cpu: Option<usize>, args: &[String]) -> anyhow::Result<i32> {
        let exe = std::env::current_exe().context("finding this program")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        if let Some(c) = cpu {
            cmd.args(["taskset", "-c", &c.to_string()]);
        }
        let status = cmd
            .arg(exe)
            .args(args)
            .env(
                INNER_ENV,
                format!("{},{},{}", self.name, self.iface, self.ip),
            )
            .status()
            .context("running the benchmark in its network namespace")?;
        Ok(status.code().unwrap_or(1))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair in it.
        let _ = ip(&["netns", "del", &self.name]);
        let empty = std::fs::read_dir("/run/netns").is_ok_and(|mut d| d.next().is_none());
        if self.created_run_netns && empty {
            let _ = Command::new("umount").arg("/run/netns").output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_and_snmp_parse() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(cpu_seconds("garbage"), None);
        let snmp = "Ip: Forwarding\nIp: 1\nUdp: InDatagrams NoPorts InErrors OutDatagrams \
                    RcvbufErrors\nUdp: 10 0 0 20 3\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(snmp_field(snmp, "Udp", "OutDatagrams"), Some(20));
        assert_eq!(snmp_field(snmp, "Udp", "RcvbufErrors"), Some(3));
        assert_eq!(snmp_field(snmp, "Udp", "Nope"), None);
    }

    #[test]
    fn the_busiest_thread_is_the_one_that_used_most_between_readings() {
        let before = HashMap::from([(1, 10.0), (2, 3.0)]);
        // Thread 1 used 0.5 s, thread 2 1.5 s, thread 3 started and used 0.75 s.
        let after = HashMap::from([(1, 10.5), (2, 4.5), (3, 0.75)]);
        assert_eq!(busiest_thread_s(&before, &after), 1.5);
        assert_eq!(busiest_thread_s(&after, &HashMap::new()), 0.0);
        // This process has at least the test's thread, and its CPU is counted.
        let own = thread_cpu(std::process::id());
        assert!(!own.is_empty());
        assert!(own.values().all(|t| *t >= 0.0));
    }

    #[test]
    fn this_process_can_be_read() {
        let s = ProcSample::read(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
        assert!(s.anon_kib > 0 && s.anon_kib < s.rss_kib, "{s:?}");
    }
}
