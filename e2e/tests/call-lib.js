// Helpers of the call tests: setting up a meeting with users in one browser, reading WebRTC
// statistics out of a page (through the `window.__sealroom` hook of web/src/call/media.ts) and
// mapping them to participants with the `media_tracks` list the page received.

import assert from 'node:assert/strict';
import { cli, cliLink, enrol, launchBrowser, log, meetingState, newUser, rawRequest, startServer, tid, withTimeout } from './lib.js';

/** The Trusted Types policy the web client creates to start its frame-transform worker. */
export const WORKER_POLICY = 'sealroom-worker';

/**
 * Every inbound RTP stream of the page's peer connection, with whose source it carries:
 * `{ at, streams: [{ mid, kind, participant, source, packetsReceived, framesDecoded,
 * totalSamplesReceived, concealedSamples, codec }], frames: transformFrames, state }`.
 */
export async function inbound(page) {
  return page.evaluate(async () => {
    const s = window.__sealroom;
    if (!s) return null;
    const report = await s.pc.getStats();
    const codecs = new Map();
    report.forEach((r) => {
      if (r.type === 'codec') codecs.set(r.id, r.mimeType);
    });
    const byMid = new Map(s.tracks.map((t) => [t.mid, t]));
    const streams = [];
    report.forEach((r) => {
      if (r.type !== 'inbound-rtp') return;
      const t = byMid.get(r.mid);
      streams.push({
        mid: r.mid,
        kind: r.kind,
        participant: t ? t.participant_id : null,
        source: t ? t.source : null,
        packetsReceived: r.packetsReceived ?? 0,
        framesDecoded: r.framesDecoded ?? 0,
        totalSamplesReceived: r.totalSamplesReceived ?? 0,
        concealedSamples: r.concealedSamples ?? 0,
        codec: codecs.get(r.codecId) ?? null,
      });
    });
    return { at: Date.now(), streams, frames: s.transformFrames, state: s.state, tracks: s.tracks };
  });
}

/** The stream of `participant`'s `source` in a stats snapshot (or undefined). */
export function streamOf(snap, participant, source) {
  return snap.streams.find((s) => s.participant === participant && s.source === source);
}

/** Everything useful when media does not flow: transceivers, every inbound stream, tracks. */
export async function mediaDump(page) {
  return page.evaluate(async () => {
    const s = window.__sealroom;
    if (!s) return null;
    const report = await s.pc.getStats();
    const inboundRtp = [];
    const payloadTypes = new Map();
    report.forEach((r) => {
      if (r.type === 'codec') payloadTypes.set(r.id, `${r.payloadType} ${r.mimeType}`);
    });
    const outboundRtp = [];
    report.forEach((r) => {
      if (r.type === 'outbound-rtp') {
        const { mid, kind, rid, ssrc, packetsSent, bytesSent, framesEncoded } = r;
        outboundRtp.push({ mid, kind, rid, ssrc, packetsSent, bytesSent, framesEncoded });
      }
      if (r.type === 'inbound-rtp') {
        const { mid, kind, ssrc, packetsReceived, packetsLost, bytesReceived, headerBytesReceived, framesReceived, framesDecoded, keyFramesDecoded, pliCount, nackCount, firCount } = r;
        // bytesReceived counts payload only: packets without it are padding.
        inboundRtp.push({ mid, kind, ssrc, codec: payloadTypes.get(r.codecId) ?? null, packetsReceived, packetsLost, bytesReceived, headerBytesReceived, framesReceived, framesDecoded, keyFramesDecoded, pliCount, nackCount, firCount });
      }
    });
    // The payload types and SSRCs each receiving m-line negotiated (what packets must carry).
    const sections = (s.pc.currentRemoteDescription?.sdp ?? '').split(/\r\n(?=m=)/).slice(1);
    const remote = sections.map((m) => ({
      mid: /a=mid:(\S+)/.exec(m)?.[1] ?? null,
      lines: m.split('\r\n').filter((l) => /^(m=|a=(rtpmap|ssrc|ssrc-group|sendonly|recvonly|sendrecv|inactive):)/.test(l) || /^a=(sendonly|recvonly|sendrecv|inactive)$/.test(l)),
    }));
    return {
      state: s.state,
      ice: s.pc.iceConnectionState,
      signaling: s.pc.signalingState,
      transceivers: s.pc.getTransceivers().map((t) => ({ mid: t.mid, direction: t.direction, current: t.currentDirection, track: t.receiver.track?.readyState })),
      tracks: s.tracks,
      inbound: inboundRtp,
      outbound: outboundRtp,
      remote,
      frames: s.transformFrames,
      events: s.events,
    };
  });
}

/** Outbound RTP (what the page sends): rid, frames encoded, resolution, packets. */
export async function outbound(page) {
  return page.evaluate(async () => {
    const report = await window.__sealroom.pc.getStats();
    const out = [];
    report.forEach((r) => {
      if (r.type === 'outbound-rtp') {
        out.push({ kind: r.kind, mid: r.mid, rid: r.rid ?? null, packetsSent: r.packetsSent ?? 0, bytesSent: r.bytesSent ?? 0, framesEncoded: r.framesEncoded ?? 0, width: r.frameWidth ?? null, height: r.frameHeight ?? null, active: r.active });
      }
    });
    return out;
  });
}

/**
 * Server, one browser, the admin (first admin, enrolled from the printed link) and `others`
 * (users added and enrolled from CLI links), and a meeting of `level` hosted by admin that
 * invites them (with a lobby when `lobby`). Checks first that the server's CSP lets the client
 * start its transform worker. `config` is the server's TOML configuration, `env` extra server
 * environment; with `approve`, every enrolled device (admin's too) is approved for `restricted`
 * meetings (`sealroom device approve`; the virtual authenticator's passkeys are device-bound).
 */
export async function setupCall(res, others, level = 'open', { lobby = false, config, env, approve = false } = {}) {
  const server = await startServer(res, { config, env });
  const { origin, dataDir } = server;

  // The client starts its frame-transform worker through a Trusted Types policy; the CSP must
  // allow it or no call can start.
  const page = await rawRequest(`${origin}/`, { headers: { Host: new URL(origin).host } });
  assert.equal(page.status, 200, `GET / → ${page.status} ${page.text}`);
  const csp = page.headers['content-security-policy'] ?? '';
  const policyAllowed = new RegExp(`trusted-types[^;]*\\b${WORKER_POLICY}\\b`).test(csp);
  const patchCsp = !policyAllowed && process.env.E2E_PATCH_CSP === '1';
  assert.ok(policyAllowed || patchCsp, `the server's CSP must name the Trusted Types policy '${WORKER_POLICY}' (new Worker needs a TrustedScriptURL); it is: ${csp}`);
  if (patchCsp) log(`WARNING: E2E_PATCH_CSP=1: the server's CSP lacks 'trusted-types ${WORKER_POLICY}'; running with the CSP bypassed`);

  const browser = await launchBrowser(res);
  // Development only: without the server fix, turn the page's CSP off altogether (rewriting the
  // header does not work: intercepted documents fail Chromium's local-network checks).
  const newCallUser = (label) => newUser(res, browser, label, { contextOptions: patchCsp ? { bypassCSP: true } : {} });

  const users = { admin: await newCallUser('admin') };
  await enrol(users.admin, server.firstAdminLink(), { expectName: 'Administrator' });
  for (const name of others) {
    const display = `${name[0].toUpperCase()}${name.slice(1)} Member`;
    const added = await cli(dataDir, ['user', 'add', name, '--role', 'member', '--display-name', display]);
    users[name] = await newCallUser(name);
    await enrol(users[name], cliLink(server, added.enrolment_url), { expectName: display, deviceName: `${display}'s laptop` });
  }
  if (approve) {
    for (const u of Object.values(users)) await cli(dataDir, ['device', 'approve', u.me.device_id]);
  }
  const meeting = await cli(dataDir, ['meeting', 'create', '--title', 'Design review', '--level', level, '--invite', others.join(','), '--host', 'admin', ...(lobby ? ['--lobby'] : [])]);
  return { server, users, meeting, meetingUrl: `${origin}/m/${meeting.id}` };
}

/** Opens the meeting page and waits for the call screen; returns the participant id. */
export async function joinCall(u, meetingUrl) {
  await u.page.goto(meetingUrl);
  await meetingState(u.page, 'admitted').waitFor();
  await tid(u.page, 'self-tile').waitFor();
  return tid(u.page, 'self-tile').getAttribute('data-participant');
}

/** Polls `check()` every `everyMs` until it returns a truthy value; that value is returned. */
export async function waitUntil(what, check, { timeoutMs = 15_000, everyMs = 200 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Asserts that `page` decodes video and audio of every participant in `others` over `ms`:
 * framesDecoded and totalSamplesReceived grow, and less than half of the audio in the
 * interval was concealment. Returns the deltas.
 */
export async function assertDecodesAll(label, page, others, ms = 3000) {
  // Start once every stream has arrived at all (a newcomer's tracks take one renegotiation).
  await waitUntil(`${label} receives ${Object.keys(others).join(', ')}`, async () => {
    const snap = await inbound(page);
    return Object.values(others).every((id) => (streamOf(snap, id, 'camera')?.framesDecoded ?? 0) > 0 && (streamOf(snap, id, 'microphone')?.totalSamplesReceived ?? 0) > 0);
  });
  const a = await inbound(page);
  await new Promise((r) => setTimeout(r, ms));
  const b = await inbound(page);
  const out = {};
  for (const [name, id] of Object.entries(others)) {
    for (const source of ['camera', 'microphone']) {
      const s0 = streamOf(a, id, source);
      const s1 = streamOf(b, id, source);
      assert.ok(s0 && s1, `${label} receives ${name}'s ${source} (tracks: ${JSON.stringify(b.tracks)})`);
    }
    const v0 = streamOf(a, id, 'camera');
    const v1 = streamOf(b, id, 'camera');
    const frames = v1.framesDecoded - v0.framesDecoded;
    if (!(frames > 0)) log(`${label} media: ${JSON.stringify(await mediaDump(page))}`);
    assert.ok(frames > 0, `${label} decodes ${name}'s video: framesDecoded ${v0.framesDecoded} → ${v1.framesDecoded}, packetsReceived ${v0.packetsReceived} → ${v1.packetsReceived} in ${ms} ms (mid ${v1.mid})`);
    assert.match(v1.codec ?? '', /^video\/VP8$/i, `${label}: ${name}'s video is VP8`);
    const m0 = streamOf(a, id, 'microphone');
    const m1 = streamOf(b, id, 'microphone');
    const samples = m1.totalSamplesReceived - m0.totalSamplesReceived;
    const concealed = m1.concealedSamples - m0.concealedSamples;
    assert.ok(samples > 0, `${label} decodes ${name}'s audio: totalSamplesReceived ${m0.totalSamplesReceived} → ${m1.totalSamplesReceived}`);
    const ratio = concealed / samples;
    assert.ok(ratio < 0.5, `${label}: ${name}'s audio concealed ${(100 * ratio).toFixed(1)} % of ${samples} samples (limit 50 %)`);
    assert.match(m1.codec ?? '', /^audio\/opus$/i, `${label}: ${name}'s audio is Opus`);
    out[name] = { fps: (1000 * frames) / (b.at - a.at), concealedPct: 100 * ratio };
  }
  log(`${label} decodes ${Object.entries(out).map(([n, v]) => `${n}: ${v.fps.toFixed(1)} fps, ${v.concealedPct.toFixed(1)} % concealed`).join('; ')}`);
  return out;
}

/**
 * Starts an in-page sampler (every `everyMs`) of the sums of inbound packetsReceived and
 * framesDecoded; `stopSampler(page)` returns the samples `[{t, packets, frames}]`.
 */
export async function startSampler(page, everyMs = 50) {
  await page.evaluate((every) => {
    const pc = window.__sealroom.pc;
    const samples = [];
    window.__callSamples = samples;
    let busy = false;
    window.__callSampler = setInterval(async () => {
      if (busy) return;
      busy = true;
      try {
        const t = Date.now();
        const r = await pc.getStats();
        let packets = 0;
        let frames = 0;
        r.forEach((s) => {
          if (s.type !== 'inbound-rtp') return;
          packets += s.packetsReceived ?? 0;
          frames += s.framesDecoded ?? 0;
        });
        samples.push({ t, packets, frames });
      } catch (e) {
        samples.push({ t: Date.now(), error: String(e) });
      } finally {
        busy = false;
      }
    }, every);
  }, everyMs);
}

export async function stopSampler(page) {
  return page.evaluate(() => {
    clearInterval(window.__callSampler);
    return window.__callSamples;
  });
}

/**
 * From samples: `stoppedAt`, the time of the first sample that no longer grew and after which
 * `key` never grows again (the moment the stop was observed: an upper bound on when the flow
 * stopped, at most one sampling interval late), and whether it was still growing in the half
 * second before `since`.
 */
export function stopTime(samples, key, since) {
  const ok = samples.filter((s) => s.error === undefined);
  let lastGrowth = -1;
  for (let i = 1; i < ok.length; i++) {
    if (ok[i][key] > ok[i - 1][key]) lastGrowth = i;
  }
  const before = ok.filter((s) => s.t <= since);
  const grewBefore = before.length >= 2 && before[before.length - 1][key] > before[Math.max(0, before.length - 11)][key];
  const stoppedAt = lastGrowth >= 0 && lastGrowth + 1 < ok.length ? ok[lastGrowth + 1].t : null;
  return { stoppedAt, grewBefore, last: ok[ok.length - 1]?.[key], samples: ok.length };
}

/** Resolves (in the page) with Date.now() when the selector matches nothing; returns it. */
export async function goneAt(page, selector, timeoutMs = 10_000) {
  return withTimeout(
    page.evaluate(
      (sel) =>
        new Promise((resolve) => {
          if (!document.querySelector(sel)) return resolve(Date.now());
          const mo = new MutationObserver(() => {
            if (!document.querySelector(sel)) {
              mo.disconnect();
              resolve(Date.now());
            }
          });
          mo.observe(document.body, { childList: true, subtree: true, attributes: true });
        }),
      selector,
    ),
    timeoutMs,
    `${selector} gone`,
  );
}

/**
 * In the page: polls getStats every 50 ms from now until some inbound video stream of each of
 * `participants` decoded a frame; returns `{admitted, first, all}` (Date.now() values; `admitted`
 * is when the page first showed the admitted state, to 50 ms).
 */
export async function firstFrames(page, participants, timeoutMs = 20_000) {
  try {
    return await firstFramesInner(page, participants, timeoutMs);
  } catch (e) {
    log(`no first frames: ${JSON.stringify(await mediaDump(page).catch((x) => String(x)))}`);
    throw e;
  }
}

function firstFramesInner(page, participants, timeoutMs) {
  return withTimeout(
    page.evaluate(
      ({ ids, limit }) =>
        new Promise((resolve, reject) => {
          const started = Date.now();
          let first = null;
          let admitted = null;
          const tick = async () => {
            if (admitted === null && document.querySelector('[data-testid=meeting-state][data-state=admitted]')) admitted = Date.now();
            const s = window.__sealroom;
            if (s && s.state !== 'closed') {
              const r = await s.pc.getStats();
              const byMid = new Map(s.tracks.map((t) => [t.mid, t.participant_id]));
              const seen = new Set();
              r.forEach((x) => {
                if (x.type === 'inbound-rtp' && x.kind === 'video' && (x.framesDecoded ?? 0) > 0) seen.add(byMid.get(x.mid));
              });
              const got = ids.filter((id) => seen.has(id));
              if (got.length > 0 && first === null) first = Date.now();
              if (got.length === ids.length) return resolve({ admitted, first, all: Date.now() });
            }
            if (Date.now() - started > limit) return reject(new Error(`no frames from ${ids.join(', ')}`));
            setTimeout(tick, 50);
          };
          tick();
        }),
      { ids: participants, limit: timeoutMs },
    ),
    timeoutMs + 2000,
    'first remote frames',
  );
}

// ---------------------------------------------------------------------------------------------
// End-to-end encryption (window.__sealroom.e2ee of web/src/call/view.ts; never a key)

/** The page's E2EE view: MLS status (epoch, code, check value, members), roster rows, SFrame counters, warnings. */
export async function e2eeState(page) {
  return page.evaluate(() => {
    const e = window.__sealroom?.e2ee;
    if (!e) return null;
    return { status: e.status, epoch: e.epoch, securityCode: e.securityCode, checkValue: e.checkValue, roster: e.roster, sframe: e.sframe, warnings: e.warnings, chat: e.chat };
  });
}

/**
 * Waits until every page is an MLS member of the same epoch with `members` members, and they
 * agree on epoch, security code and exporter check value; returns `{epoch, code, check}`.
 */
export async function waitForAgreement(label, pages, members, { timeoutMs = 15_000, after = -1 } = {}) {
  let states = [];
  try {
    return await waitUntil(
      `${label}: ${pages.length} pages agree on a ${members}-member epoch`,
      async () => {
        states = await Promise.all(pages.map((p) => e2eeState(p)));
        if (!states.every((s) => s && s.status.phase === 'member' && s.status.members.length === members && s.epoch > after && !s.status.commitPending && s.status.pendingProposals === 0)) return null;
        const [first] = states;
        const same = states.every((s) => s.epoch === first.epoch && s.securityCode === first.securityCode && s.checkValue === first.checkValue);
        return same ? { epoch: first.epoch, code: first.securityCode, check: first.checkValue } : null;
      },
      { timeoutMs, everyMs: 100 },
    );
  } catch (e) {
    log(`${label}: ${JSON.stringify(states.map((s) => s && { phase: s.status.phase, epoch: s.epoch, code: s.securityCode, check: s.checkValue, members: s.status.members.length, pending: s.status.pendingProposals, commitPending: s.status.commitPending, failure: s.status.failure, commits: s.status.commits }))}`);
    throw e;
  }
}

/** Sum of frames decrypted by the page's transform worker (every sender leaf). */
export function decryptedTotal(state) {
  return Object.values(state?.sframe?.byLeaf ?? {}).reduce((n, l) => n + l.decrypted, 0);
}

/**
 * In the page, from now: polls every 50 ms for the admitted state and for the first frame the
 * transform worker decrypted (`window.__sealroom.e2ee.sframe`) and the first decoded remote
 * video frame; returns `{admitted, firstDecrypted, firstDecoded}` (Date.now() values).
 */
export async function firstDecrypted(page, timeoutMs = 20_000) {
  return withTimeout(
    page.evaluate(
      (limit) =>
        new Promise((resolve, reject) => {
          const started = Date.now();
          let admitted = null;
          let firstDecrypted = null;
          let firstDecoded = null;
          const tick = async () => {
            if (admitted === null && document.querySelector('[data-testid=meeting-state][data-state=admitted]')) admitted = Date.now();
            const s = window.__sealroom;
            if (s && s.e2ee && s.state !== 'closed') {
              const n = Object.values(s.e2ee.sframe.byLeaf).reduce((a, l) => a + l.decrypted, 0);
              if (n > 0 && firstDecrypted === null) firstDecrypted = Date.now();
              if (firstDecoded === null) {
                const r = await s.pc.getStats();
                r.forEach((x) => {
                  if (x.type === 'inbound-rtp' && x.kind === 'video' && (x.framesDecoded ?? 0) > 0 && firstDecoded === null) firstDecoded = Date.now();
                });
              }
              if (firstDecrypted !== null && firstDecoded !== null) return resolve({ admitted, firstDecrypted, firstDecoded });
            }
            if (Date.now() - started > limit) return reject(new Error(`nothing decrypted within ${limit} ms`));
            setTimeout(tick, 50);
          };
          tick();
        }),
      timeoutMs,
    ),
    timeoutMs + 2000,
    'first decrypted frame',
  );
}

/** framesDecoded / framesReceived (and packets) summed over the page's inbound video streams. */
export async function videoDecodeRatio(page) {
  return page.evaluate(async () => {
    const r = await window.__sealroom.pc.getStats();
    let received = 0;
    let decoded = 0;
    let packets = 0;
    let pli = 0;
    r.forEach((x) => {
      if (x.type !== 'inbound-rtp' || x.kind !== 'video') return;
      received += x.framesReceived ?? 0;
      decoded += x.framesDecoded ?? 0;
      packets += x.packetsReceived ?? 0;
      pli += x.pliCount ?? 0;
    });
    return { received, decoded, packets, pli };
  });
}
