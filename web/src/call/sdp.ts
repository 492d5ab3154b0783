// Small, pure SDP helpers of the call: the Opus settings DESIGN.md §7 "Metadata" requires at the
// `internal` and `restricted` levels, and a one-line summary of the m-lines for the event log.

import type { Level } from '../proto';

/**
 * Constant bitrate without DTX makes the size and timing of audio packets independent of what
 * is said (DESIGN.md §7 "Metadata"). A WebRTC sender follows the Opus parameters of the *remote*
 * description, so the client writes them into every description it receives from the SFU: its
 * own microphone then sends CBR whatever the SFU asked for.
 */
export function metadataPolicy(sdp: string, level: Level): string {
  return level === 'open' ? sdp : opusCbr(sdp);
}

/** Sets `cbr=1;usedtx=0` on every Opus payload type (adding the fmtp line where missing). */
export function opusCbr(sdp: string): string {
  const eol = sdp.includes('\r\n') ? '\r\n' : '\n';
  const lines = sdp.split(/\r?\n/);
  const opus = new Set<string>();
  for (const l of lines) {
    const m = /^a=rtpmap:(\d+) opus\/48000/i.exec(l);
    if (m?.[1]) opus.add(m[1]);
  }
  if (opus.size === 0) return sdp;
  const out: string[] = [];
  for (const l of lines) {
    const f = /^a=fmtp:(\d+) (.*)$/.exec(l);
    if (f?.[1] && opus.has(f[1])) {
      const params = (f[2] ?? '').split(';').filter((p) => p !== '' && !/^\s*(cbr|usedtx)=/i.test(p));
      out.push(`a=fmtp:${f[1]} ${[...params, 'cbr=1', 'usedtx=0'].join(';')}`);
      continue;
    }
    out.push(l);
    const r = /^a=rtpmap:(\d+) opus\/48000/i.exec(l);
    if (r?.[1] && !lines.some((x) => x.startsWith(`a=fmtp:${r[1]} `))) {
      out.push(`a=fmtp:${r[1]} cbr=1;usedtx=0`);
    }
  }
  return out.join(eol);
}

/** `kind:mid:direction` of every m-line (`stopped` for port 0), for the event log. */
export function mlines(sdp: string): string {
  const out: string[] = [];
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = /\na=mid:(\S+)/.exec(section)?.[1] ?? '?';
    const dir = /\na=(sendrecv|sendonly|recvonly|inactive)/.exec(section)?.[1] ?? '?';
    const [kind = '?', port = '?'] = section.split(' ');
    out.push(`${kind}:${mid}:${port === '0' ? 'stopped' : dir}`);
  }
  return out.join(' ');
}
