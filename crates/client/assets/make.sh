#!/bin/sh
# Regenerates the synthetic media the native client publishes (not run by the build; the
# outputs are committed). Needs Debian's vpx-tools (vpxenc) and libopus0, and python3.
#   camera.ivf        VP8, 320x240, 30 fps, 60 frames (2 s), keyframes at frames 0 and 30,
#                     no alt-ref (every frame is shown): a white square moving on a ramp.
#   microphone.opus   50 Opus packets (1 s of a 440 Hz tone, 48 kHz mono, 20 ms each), each
#                     prefixed with its length as a big-endian u16.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/in.y4m" <<'PY'
import sys
w, h, n = 320, 240, 60
with open(sys.argv[1], "wb") as f:
    f.write(b"YUV4MPEG2 W%d H%d F30:1 Ip A1:1 C420jpeg\n" % (w, h))
    for i in range(n):
        y = bytearray((x // 2 + 16) & 0xff for x in range(w)) * h
        sx, sy = (i * 8) % (w - 64), 88
        for r in range(sy, sy + 64):
            y[r * w + sx:r * w + sx + 64] = b"\xeb" * 64
        f.write(b"FRAME\n" + bytes(y) + bytes([96 + i]) * (w * h // 4) + b"\x80" * (w * h // 4))
PY
vpxenc --codec=vp8 --ivf --good --cpu-used=4 --end-usage=cbr --target-bitrate=250 \
  --kf-min-dist=30 --kf-max-dist=30 --lag-in-frames=0 --auto-alt-ref=0 --error-resilient=1 \
  --quiet -o camera.ivf "$tmp/in.y4m"
vpxdec --md5 camera.ivf
python3 - microphone.opus <<'PY'
import ctypes, math, struct, sys
lib = ctypes.CDLL("libopus.so.0")
lib.opus_encoder_create.restype = ctypes.c_void_p
err = ctypes.c_int()
enc = ctypes.c_void_p(lib.opus_encoder_create(48000, 1, 2049, ctypes.byref(err)))  # AUDIO
assert err.value == 0
lib.opus_encoder_ctl(enc, 4002, ctypes.c_int(32000))  # OPUS_SET_BITRATE
out = bytearray()
for k in range(50):
    pcm = (ctypes.c_int16 * 960)(*[int(8000 * math.sin(2 * math.pi * 440 * (k * 960 + i) / 48000)) for i in range(960)])
    buf = (ctypes.c_ubyte * 1500)()
    n = lib.opus_encode(enc, pcm, 960, buf, 1500)
    assert n > 0
    out += struct.pack(">H", n) + bytes(buf[:n])
open(sys.argv[1], "wb").write(out)
PY
