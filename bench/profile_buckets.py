#!/usr/bin/env python3
"""Classify a perf profile of sealroom's server into where the time per forwarded packet goes.

Reads `perf script -F comm,tid,ip,sym,dso` output of `perf record -g -p <sealroom serve>`
(bench/profile.sh makes it) and the CSV the benchmark wrote over the same window, and prints
a markdown table: the share of the samples in each bucket and the SFU CPU microseconds per
egress media packet that share stands for.

Every sample counts once, for the function it was in (self time, the leaf frame). Kernel
samples are put in a bucket by the system call they are under: the kernel's own call chains
are reliable, while user-space chains of a release build without frame pointers are not, so
those are not used. Softirq work done inside our sendto (delivery to the receiving socket on
the same machine) is charged to the send path, as the kernel charges it to us.

Python 3 standard library only.
"""

import argparse
import csv
import re
import sys
from collections import Counter, defaultdict

CRYPTO = "SRTP and crypto"
K_SEND = "kernel: UDP send path"
K_RECV = "kernel: receive (recvfrom/recvmsg)"
K_WAIT = "kernel: epoll / scheduling / timers"
K_OTHER = "kernel: other (page faults, interrupts, other system calls)"
STR0M = "str0m (RTP, pacing, BWE, RTCP)"
SFU = "sealroom SFU core (sealroom_sfu::)"
SERVER = "sealroom server / tokio"
ALLOC = "allocator and memcpy (malloc, free, memmove)"
OTHER = "other (std, core, unknown)"
ORDER = [CRYPTO, K_SEND, K_RECV, K_WAIT, K_OTHER, STR0M, SFU, SERVER, ALLOC, OTHER]

# Kernel frames that name the system call (or the kind of kernel work) a sample is under,
# looked for from the leaf towards the entry.
KERNEL_RULES = [
    (K_SEND, re.compile(r"^(__x64_sys_|__sys_|__se_sys_|__do_sys_)(sendto|sendmsg|sendmmsg)$")),
    (K_RECV, re.compile(r"^(__x64_sys_|__sys_|__se_sys_|__do_sys_)(recvfrom|recvmsg|recvmmsg)$")),
    (
        K_WAIT,
        re.compile(
            r"^(__x64_sys_(epoll_wait|epoll_pwait|epoll_pwait2|epoll_ctl|futex|nanosleep|"
            r"clock_nanosleep|sched_yield|poll|ppoll|select)|do_epoll_wait|eventfd_write|"
            r"eventfd_read|schedule|__schedule|schedule_hrtimeout_range.*|hrtimer_.*|"
            r"finish_task_switch.*)$"
        ),
    ),
]

CRYPTO_CRATES = {"aws_lc_rs", "aws_lc_sys", "str0m_aws_lc_rs", "str0m_rust_crypto",
                 "str0m_openssl", "ring", "sha1", "sha2", "hmac", "aes", "aes_gcm",
                 "ctr", "ghash", "polyval", "cipher", "digest"}
CRYPTO_C = re.compile(
    r"(aws_lc|aes|gcm|ghash|sha1|sha256|sha512|sha_|hmac|HMAC|EVP_|CRYPTO_|srtp|Srtp|"
    r"chacha|poly1305|x25519|ecdsa|p256)",
    re.IGNORECASE,
)
ALLOC_C = re.compile(
    r"^(__)?(malloc|free|cfree|realloc|calloc|posix_memalign|aligned_alloc|memalign|"
    r"_int_malloc|_int_free|_int_realloc|_int_memalign|malloc_consolidate|unlink_chunk|"
    r"tcache_.*|__libc_malloc|__libc_free|__libc_realloc|__libc_calloc|"
    r"mem(cpy|move|set|cmp)|__mem(cpy|move|set|cmp).*|__memmove_.*|__memcpy_.*|__memset_.*|"
    r"__memcmp_.*|__rust_alloc|__rust_dealloc|__rust_realloc|__rust_alloc_zeroed|__rdl_.*)$"
)
SERVER_CRATES = {"sealroom", "sealroom_server", "sealroom_store", "sealroom_policy",
                 "sealroom_proto", "tokio", "mio", "tracing", "tracing_core",
                 "tracing_subscriber", "axum", "hyper", "hyper_util", "tower", "sqlx",
                 "sqlx_core", "sqlx_sqlite", "libsqlite3_sys", "tokio_tungstenite",
                 "tungstenite", "futures_util", "futures_core", "parking_lot",
                 "parking_lot_core", "crossbeam_channel", "crossbeam_utils", "bytes"}
# str0m and the crates it is split into: `is` (ICE), `dimpl` (DTLS), `sctp_proto`.
STR0M_CRATES = {"str0m", "str0m_proto", "str0m_netem", "sctp_proto", "dimpl", "is"}


def first_crate(symbol):
    """The crate a demangled Rust symbol belongs to: `<str0m::x::Y as T>::f` -> str0m."""
    s = symbol.lstrip("<&*")
    s = re.sub(r"^(mut |dyn |const )", "", s)
    return s.split("::", 1)[0] if "::" in s else ""


def user_bucket(symbol, dso):
    crate = first_crate(symbol)
    if crate in CRYPTO_CRATES:
        return CRYPTO
    if crate in STR0M_CRATES:
        # str0m's SRTP and crypto-provider glue (protect/unprotect around aws-lc) is crypto.
        return CRYPTO if re.search(r"srtp|::crypto::", symbol, re.IGNORECASE) else STR0M
    if crate == "sealroom_sfu":
        return SFU
    if crate in SERVER_CRATES:
        return SERVER
    if crate == "alloc" or ALLOC_C.match(symbol):
        return ALLOC
    if not crate and CRYPTO_C.search(symbol):
        return CRYPTO
    if "libcrypto" in dso or "libssl" in dso:
        return CRYPTO
    return OTHER


# The libc wrapper that made the system call: the first user-space frame of a kernel sample
# (its address comes from the saved registers, so it is reliable without frame pointers).
# Samples in the syscall entry code itself have no kernel frame that names the call.
WRAPPER_RULES = [
    (K_SEND, re.compile(r"^(__libc_)?(send|sendto|sendmsg|sendmmsg|__send.*)$")),
    (K_RECV, re.compile(r"^(__libc_)?(recv|recvfrom|recvmsg|recvmmsg|__recv.*)$")),
    # Rust's std and tokio wait on futexes through syscall(2).
    (K_WAIT, re.compile(r"^(epoll_wait|epoll_pwait|syscall|__GI___futex.*|futex_.*|"
                        r"clock_nanosleep|__clock_nanosleep.*|nanosleep|sched_yield|poll|"
                        r"eventfd_write|__GI___clock_nanosleep)$")),
]


def kernel_bucket(frames):
    """`frames`: the whole chain, leaf first."""
    for name, dso in frames:
        if not is_kernel(dso):
            break
        for bucket, rule in KERNEL_RULES:
            if rule.match(name):
                return bucket
    user = next((name for name, dso in frames if not is_kernel(dso)), None)
    if user:
        for bucket, rule in WRAPPER_RULES:
            if rule.match(user):
                return bucket
    return K_OTHER


def is_kernel(dso):
    return dso.startswith("[kernel") or dso.endswith(".ko") or dso == "[bpf_prog]"


FRAME = re.compile(r"^\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")


def samples(lines):
    """Yield each sample's frames, leaf first, as (symbol, dso)."""
    frames = []
    for line in lines:
        if not line.strip():
            if frames:
                yield frames
            frames = []
            continue
        if line[0] in " \t":
            m = FRAME.match(line)
            if m:
                sym = re.sub(r"\+0x[0-9a-f]+$", "", m.group(1))
                # Rust legacy mangling leaves a hash: `str0m::Rtc::poll_output::h0123…`.
                sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)
                frames.append((sym, m.group(2)))
        # A header line (comm, tid) starts a sample; its frames follow.
    if frames:
        yield frames


def classify(frames):
    leaf_sym, leaf_dso = frames[0]
    if is_kernel(leaf_dso):
        return kernel_bucket(frames), leaf_sym
    return user_bucket(leaf_sym, leaf_dso), leaf_sym


def bench_row(path, scenario):
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["scenario"] == scenario and row["sfu"] == "sealroom":
                if row.get("error"):
                    sys.exit(f"the benchmark's {scenario} failed: {row['error']}")
                return row
    sys.exit(f"no sealroom row for {scenario!r} in {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--perf", required=True, help="perf script output")
    ap.add_argument("--csv", required=True, help="the benchmark's latest.csv of the same run")
    ap.add_argument("--scenario", required=True, help='the CSV scenario, e.g. "video N=8"')
    ap.add_argument("--command", required=True, help="the command that made the profile")
    ap.add_argument("--record", required=True, help="the perf record command line")
    ap.add_argument("--top", type=int, default=4, help="functions listed per bucket")
    a = ap.parse_args()

    counts = Counter()
    by_symbol = defaultdict(Counter)
    with open(a.perf, errors="replace") as f:
        for frames in samples(f):
            bucket, sym = classify(frames)
            counts[bucket] += 1
            by_symbol[bucket][sym] += 1
    total = sum(counts.values())
    if total == 0:
        sys.exit("the profile holds no samples of the SFU process")

    row = bench_row(a.csv, a.scenario)
    cpu_s = float(row["sfu_cpu_s"])
    packets = int(row["media_packets"])
    seconds = float(row["seconds"])
    if packets == 0:
        sys.exit(f"no media packets in the benchmark's {a.scenario} window")
    us_per_packet = cpu_s / packets * 1e6

    out = []
    out.append("# Where sealroom's SFU spends its time per forwarded packet\n")
    out.append(f"Command: `{a.command}`  ")
    out.append(f"Profile: `{a.record}`, attached to the `sealroom serve` process for the "
               f"benchmark's measured window; {total} samples.  ")
    out.append(f"Benchmark window ({a.scenario}, sealroom): {seconds:.1f} s, SFU CPU "
               f"{cpu_s:.2f} s ({float(row['sfu_cpu_pct']):.1f} % of one core), {packets} "
               f"egress media packets ({float(row['media_pps']):.0f}/s), loss "
               f"{float(row['loss_pct']):.2f} %: **{us_per_packet:.1f} µs of SFU CPU per "
               f"forwarded packet**.\n")
    out.append("Each sample counts for the function it was in (self time). Kernel samples go "
               "by the system call they are under (kernel call chains are reliable; user-space "
               "chains of a release build without frame pointers are not, so they are not "
               "used): softirq delivery to the receiving socket done inside our `sendto` counts "
               "as send path. µs per packet is the bucket's share of the SFU's CPU time "
               "(utime + stime from /proc over the window) divided by the egress media "
               "packets; the profile and the window overlap to within a fraction of a second, "
               "and perf's own sampling cost is in the figures.\n")
    out.append("| Where | share of samples | µs per forwarded packet |")
    out.append("|---|---:|---:|")
    for b in ORDER:
        share = counts[b] / total
        out.append(f"| {b} | {100 * share:.1f} % | {share * us_per_packet:.2f} |")
    out.append(f"| **total** | 100 % | {us_per_packet:.2f} |")
    out.append("")
    out.append("Top functions by self time in each bucket (share of all samples):\n")
    for b in ORDER:
        if not by_symbol[b]:
            continue
        tops = ", ".join(f"`{s}` {100 * n / total:.1f} %"
                         for s, n in by_symbol[b].most_common(a.top))
        out.append(f"- {b}: {tops}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
