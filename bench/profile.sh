#!/usr/bin/env bash
# Where sealroom's SFU spends its time per forwarded packet: SRTP and crypto, system calls,
# str0m, our own logic. Writes bench/results/profile.md.
#
#   bench/profile.sh                                  # video N=8, 10 s window, perf at 2000 Hz
#   bench/profile.sh --kind audio --n 12 --seconds 10 --freq 2000 --out /tmp/profile.md --keep
#
# Runs one sealroom scenario of sealroom-bench (release binaries, the same network namespace
# and pinning as bench/sfu-vs-janus.sh; its own results go to a temporary folder, not to
# bench/results/latest.*). When the bench opens its measured window it prints the SFU's pid;
# `perf record -g` is attached to that process for the window, run on the load's core. Then
# bench/profile_buckets.py puts every sample in a bucket (self time; kernel samples by the
# system call they are under) and divides the SFU CPU per packet of the same window among
# them. --keep leaves perf.data, perf.txt and the bench's output in the temporary folder (for
# `perf report -i`). Needs root, perf (Debian: linux-perf) and python3; an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

kind=video n=8 seconds=10 freq=2000 sfu_cpu=0 load_cpu=1 out=bench/results/profile.md keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kind) kind=$2; shift 2 ;;
    --n) n=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --freq) freq=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$kind" in audio|video) ;; *) echo "--kind is audio or video" >&2; exit 2 ;; esac

if [ "$(id -u)" != 0 ]; then
  echo "run as root: the benchmark makes a network namespace and perf reads the kernel" >&2
  exit 1
fi
for tool in perf python3 ip taskset; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done

echo "==> building release binaries" >&2
cargo build --release -q -p sealroom-server -p sealroom-bench

tmp=$(mktemp -d /tmp/sealroom-profile.XXXXXX)
bench=""
cleanup() {
  # The bench runs in its own session (setsid): stop it, the copy of it inside the network
  # namespace and the SFU together.
  if [ -n "$bench" ] && kill -- "-$bench" 2>/dev/null; then
    echo "stopped the benchmark early; \`ip netns list\` may show its namespace (sbench-*)" >&2
  fi
  if [ -n "$keep" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

echo "==> $kind N=$n, ${seconds} s window" >&2
: >"$tmp/bench.err"
setsid target/release/sealroom-bench --sealroom-bin target/release/sealroom --sfu sealroom \
  --scenarios "$kind" --sizes "$n" --seconds "$seconds" \
  --sfu-cpu "$sfu_cpu" --load-cpu "$load_cpu" --out "$tmp" \
  >"$tmp/bench.out" 2>"$tmp/bench.err" &
bench=$!
# setsid makes the bench the leader of a new session and process group with its own pid.
until [ "$(ps -o pgid= -p "$bench" 2>/dev/null | tr -d ' ')" = "$bench" ]; do
  kill -0 "$bench" 2>/dev/null || break
  sleep 0.01
done

# The bench prints "  window: <s> s, SFU pid <pid>" as its measured window opens.
pid=""
while [ -z "$pid" ]; do
  if ! kill -0 "$bench" 2>/dev/null; then
    echo "the benchmark ended before its window opened:" >&2
    cat "$tmp/bench.err" >&2
    exit 1
  fi
  pid=$(sed -n 's/^ *window: .* SFU pid \([0-9][0-9]*\)$/\1/p' "$tmp/bench.err" | head -n 1)
  [ -n "$pid" ] || sleep 0.05
done
if ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q ' serve '; then
  echo "pid $pid is not a sealroom serve process" >&2
  exit 1
fi

record="perf record -F $freq -g -p <sealroom serve> -- sleep $seconds"
echo "==> $record (pid $pid)" >&2
taskset -c "$load_cpu" perf record -q -F "$freq" -g -p "$pid" -o "$tmp/perf.data" \
  -- sleep "$seconds" 2>"$tmp/perf.err" || { cat "$tmp/perf.err" >&2; exit 1; }

if ! wait "$bench"; then
  echo "the benchmark failed:" >&2
  cat "$tmp/bench.err" >&2
  exit 1
fi
bench=""

perf script -i "$tmp/perf.data" -F comm,tid,ip,sym,dso >"$tmp/perf.txt" 2>"$tmp/perf.err" \
  || { cat "$tmp/perf.err" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
python3 bench/profile_buckets.py --perf "$tmp/perf.txt" --csv "$tmp/latest.csv" \
  --scenario "$kind N=$n" \
  --command "bench/profile.sh --kind $kind --n $n --seconds $seconds --freq $freq" \
  --record "$record" >"$tmp/profile.md"
mv "$tmp/profile.md" "$out"
cat "$out"
echo "wrote $out" >&2
