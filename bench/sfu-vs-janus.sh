#!/usr/bin/env bash
# sealroom's SFU against Janus Gateway 1.1.2 (VideoRoom), same load, side by side.
#
#   bench/sfu-vs-janus.sh [sealroom-bench flags]     # e.g. --sizes 4,8,12 --seconds 10
#   bench/sfu-vs-janus.sh --scenarios audio,video,join,capacity   # everything
#   bench/sfu-vs-janus.sh --help                     # every flag
#
# Installs Janus from Debian's packages if it is missing (and checks it is 1.1.2), builds the
# release binaries, then runs target/release/sealroom-bench, which makes a network namespace
# for the run (Janus needs a non-loopback interface), pins each SFU to one core and the load to
# another, and prints the table. It writes bench/results/latest.md, latest.csv and the plots
# (efficiency.png, delay.png; capacity.png with the capacity scenarios). The default scenarios
# take about 5 minutes; `capacity` (the largest meeting within 1 % p99 stream loss and 10 ms
# p99 added delay, for audio and video, each SFU, then latency at 50 % and 90 % of it; see
# --max-n, --capacity-seconds) is opt-in and adds roughly 10-15 minutes.
# Where the time per packet goes: bench/profile.sh. Needs root and 2 cores; run it on an
# otherwise idle machine (it warns when it is not).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "run as root: the benchmark makes a network namespace and pins processes" >&2
  exit 1
fi
for tool in ip taskset; do
  command -v "$tool" >/dev/null || { echo "needs $tool (iproute2, util-linux)" >&2; exit 1; }
done
if ! command -v janus >/dev/null; then
  echo "==> installing janus from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq janus >/dev/null
fi
# `janus --version` prints the version and exits with status 1.
version=$( (janus --version 2>/dev/null || true) | sed -n 's/^Janus version: [0-9]* (\(.*\))$/\1/p')
if [ "$version" != "1.1.2" ] && [ -z "${JANUS_ANY_VERSION:-}" ]; then
  echo "Janus is ${version:-unknown}; the comparison is defined against 1.1.2" \
       "(set JANUS_ANY_VERSION=1 to run anyway)" >&2
  exit 1
fi

echo "==> building release binaries" >&2
cargo build --release -q -p sealroom-server -p sealroom-bench
exec target/release/sealroom-bench --sealroom-bin target/release/sealroom "$@"
