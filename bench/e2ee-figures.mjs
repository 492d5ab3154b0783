// Figures of end-to-end encryption in a three-browser call through the real server (not a test:
// it prints numbers; structure and helpers as bench/call-figures.mjs).
//
//   cargo build -p sealroom-server --bin sealroom          # or --release and SEALROOM_BIN=...
//   node bench/e2ee-figures.mjs [--seconds 20]
//
// Prints a markdown table of
// (a) per joiner: admission → in the MLS group, → first remote frame decrypted by its transform
//     worker, → first remote video frame decoded;
// (b) the browser CPU cost of SFrame: the transform worker's own timing counters
//     (window.__sealroom.e2ee.sframe.timing, web/src/e2ee/transform-worker.ts): µs per frame for
//     encrypt and decrypt, per media kind, and as % of one core at the observed frame rates,
//     against the identity baseline timed the same way (reading the frame's bytes and copying
//     them, sampled on every 8th frame); Chromium's whole CPU over the same window for scale;
//     and, after the call, WebCrypto AES-GCM alone at the mean frame sizes seen (long runs, so
//     not subject to performance.now()'s 100 µs coarsening in pages that are not cross-origin
//     isolated, which the in-call per-frame deltas are);
// (c) the receivers' side of "every forwarded payload is SFrame": every frame that reached a
//     receive transform, and how many authenticated as SFrame (a plaintext or foreign payload
//     cannot: AES-GCM with the epoch's key), by drop reason otherwise.
// The timings are performance.now() deltas around await-ed WebCrypto calls, so they include the
// hop to WebCrypto's thread and back: an upper bound of the worker's CPU, not a CPU measurement.
// Chromium needs about one core for three pages here: run it on an otherwise idle machine.

import fs from 'node:fs';
import { cli, cliLink, enrol, launchBrowser, log, meetingState, newUser, startServer, tid, withResources } from '../e2e/tests/lib.js';
import { e2eeState, firstDecrypted, waitForAgreement } from '../e2e/tests/call-lib.js';

const seconds = Number(process.argv[process.argv.indexOf('--seconds') + 1]) || 20;
const CLK_TCK = 100; // Linux USER_HZ
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** utime+stime (s) of a process, or 0 when it is gone. */
function cpuSeconds(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/** Every process below `root` (Chromium's browser, renderers, GPU, network, audio...). */
function descendants(root) {
  const children = new Map();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(d));
    } catch {
      /* gone */
    }
  }
  const out = [];
  const walk = (p) => {
    for (const c of children.get(p) ?? []) {
      out.push(c);
      walk(c);
    }
  };
  walk(root);
  return out;
}

/** Chromium's processes: what this node process started, minus the server and its children. */
function chromiumPids(serverPid) {
  const skip = new Set([serverPid, ...descendants(serverPid)]);
  return descendants(process.pid).filter((p) => !skip.has(p));
}

const chromiumCpu = (pids) => pids.reduce((s, p) => s + cpuSeconds(p), 0);

/** CPU seconds per (process, thread name) of these processes' threads (/proc/<pid>/task). */
function threadCpu(pids) {
  const out = new Map();
  for (const pid of pids) {
    let tids = [];
    try {
      tids = fs.readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tids) {
      try {
        const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
        const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        out.set(`${pid}/${tid}`, { pid, name, cpu: (Number(rest[11]) + Number(rest[12])) / CLK_TCK });
      } catch {
        /* gone */
      }
    }
  }
  return out;
}

/**
 * Joins; times admission → MLS member → first decrypted remote frame (the transform worker's own
 * Date.now() of its first decryption per sender leaf) → first decoded remote video frame
 * (getStats, polled every 50 ms).
 */
async function joinTimed(u, url) {
  await u.page.goto(url);
  const marks = u.page.evaluate(
    () =>
      new Promise((resolve) => {
        const m = { admitted: null, member: null };
        const tick = () => {
          const now = Date.now();
          if (m.admitted === null && document.querySelector('[data-testid=meeting-state][data-state=admitted]')) m.admitted = now;
          if (m.member === null && window.__sealroom?.e2ee?.status.phase === 'member') m.member = now;
          if (m.admitted !== null && m.member !== null) return resolve(m);
          setTimeout(tick, 5);
        };
        tick();
      }),
  );
  const t = await firstDecrypted(u.page, 30_000);
  const m = await marks;
  const leaves = Object.values((await e2eeState(u.page)).sframe.byLeaf).map((l) => l.firstDecryptedAt).filter((x) => x !== null);
  return { who: u.label, admitted: m.admitted, member: m.member, firstDecrypted: Math.min(...leaves), firstDecoded: t.firstDecoded };
}

/**
 * WebCrypto AES-128-GCM alone, in a page with no call, for frames of `sizes` bytes: µs per
 * await-ed encrypt and decrypt (2000 in a row, after 200 to warm up), and µs per copy of the
 * same bytes. Long spans, so performance.now()'s coarsening does not matter here.
 */
async function cryptoAlone(page, sizes) {
  return page.evaluate(async (sizes) => {
    const subtle = crypto.subtle;
    const key = await subtle.importKey('raw', crypto.getRandomValues(new Uint8Array(16)), 'AES-GCM', false, ['encrypt', 'decrypt']);
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const aad = new Uint8Array(17);
    const alg = { name: 'AES-GCM', iv, additionalData: aad, tagLength: 128 };
    const N = 2000;
    const out = {};
    for (const size of sizes) {
      const pt = crypto.getRandomValues(new Uint8Array(size));
      for (let i = 0; i < 200; i++) await subtle.encrypt(alg, key, pt);
      let t0 = performance.now();
      for (let i = 0; i < N; i++) await subtle.encrypt(alg, key, pt);
      const encrypt = ((performance.now() - t0) * 1000) / N;
      const ct = await subtle.encrypt(alg, key, pt);
      t0 = performance.now();
      for (let i = 0; i < N; i++) await subtle.decrypt(alg, key, ct);
      const decrypt = ((performance.now() - t0) * 1000) / N;
      let sink = 0;
      t0 = performance.now();
      for (let i = 0; i < N * 10; i++) sink += pt.slice()[0];
      const copy = ((performance.now() - t0) * 1000) / (N * 10);
      out[size] = { encrypt, decrypt, copy, sink };
    }
    return { results: out, isolated: self.crossOriginIsolated };
  }, sizes);
}

const KINDS = ['audio', 'video'];
const OPS = ['encrypt', 'decrypt', 'copy'];

/** The worker's timing counters of a page (sums since the call started). */
async function timing(page) {
  const st = await e2eeState(page);
  return st.sframe.timing;
}

function delta(a, b) {
  const out = {};
  for (const k of KINDS) {
    out[k] = {};
    for (const op of OPS) {
      const x = a[k][op];
      const y = b[k][op];
      out[k][op] = { frames: y.frames - x.frames, totalMs: y.totalMs - x.totalMs, bytes: y.bytes - x.bytes };
    }
  }
  return out;
}

const us = (t) => (t.frames > 0 ? (1000 * t.totalMs) / t.frames : NaN);
const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '—');
const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : '—');
const f3 = (x) => (Number.isFinite(x) ? x.toFixed(3) : '—');

await withResources(
  async (res) => {
    const server = await startServer(res);
    const browser = await launchBrowser(res);
    const admin = await newUser(res, browser, 'admin');
    await enrol(admin, server.firstAdminLink(), { expectName: 'Administrator' });
    const people = [admin];
    const names = ['bob', 'carol'];
    for (const name of names) {
      const added = await cli(server.dataDir, ['user', 'add', name, '--role', 'member']);
      const u = await newUser(res, browser, name);
      await enrol(u, cliLink(server, added.enrolment_url), { expectName: name });
      people.push(u);
    }
    const meeting = await cli(server.dataDir, ['meeting', 'create', '--title', 'E2EE figures', '--level', 'open', '--invite', names.join(','), '--host', 'admin']);
    const url = `${server.origin}/m/${meeting.id}`;

    // (a) The first one alone (nothing to decrypt yet), then each joiner timed.
    await admin.page.goto(url);
    await meetingState(admin.page, 'admitted').waitFor();
    await tid(admin.page, 'self-tile').waitFor();
    await waitForAgreement('admin alone', [admin.page], 1);
    const joins = [];
    for (const u of people.slice(1)) {
      joins.push(await joinTimed(u, url));
      log(`${u.label} joined`);
    }
    await waitForAgreement('all three', people.map((p) => p.page), 3);

    // (b), (c) A steady window.
    await sleep(3000);
    const pids = chromiumPids(server.child.pid);
    const before = await Promise.all(people.map((p) => timing(p.page)));
    const cpu0 = chromiumCpu(pids);
    const threads0 = threadCpu(pids);
    const t0 = Date.now();
    await sleep(seconds * 1000);
    const after = await Promise.all(people.map((p) => timing(p.page)));
    const cpu1 = chromiumCpu(pids);
    const threads1 = threadCpu(pids);
    const wall = (Date.now() - t0) / 1000;
    const states = await Promise.all(people.map((p) => e2eeState(p.page)));
    const isolated = await people[0].page.evaluate(() => self.crossOriginIsolated);

    console.log(`\nthree-browser encrypted call (Chromium, ${process.env.SEALROOM_BIN ? 'server ' + process.env.SEALROOM_BIN : 'debug server'}), ${wall.toFixed(1)} s steady window\n`);
    console.log('(a) admission → MLS member → first remote frame decrypted → first remote video frame decoded\n');
    console.log('| joiner | → MLS member | → first decrypted frame | → first decoded video frame |');
    console.log('|---|---|---|---|');
    for (const j of joins) console.log(`| ${j.who} | ${j.member - j.admitted} ms | ${j.firstDecrypted - j.admitted} ms | ${j.firstDecoded - j.admitted} ms |`);

    console.log(`\n(b) SFrame in the transform worker (wall time per frame around the await-ed WebCrypto call: an upper bound of CPU; performance.now() ${isolated ? 'at full resolution' : 'coarsened to 100 µs with jitter (page not cross-origin isolated), so per-frame values are averages of coarse deltas'}; video counts every simulcast layer)\n`);
    console.log('| page | kind | encrypted frames/s | encrypt µs/frame | decrypted frames/s | decrypt µs/frame | mean bytes (enc/dec) | identity copy µs/frame | SFrame % of one core | identity % of one core |');
    console.log('|---|---|---|---|---|---|---|---|---|---|');
    let sframeMs = 0;
    let identityMs = 0;
    const all = { audio: {}, video: {} };
    people.forEach((p, i) => {
      const d = delta(before[i], after[i]);
      for (const k of KINDS) {
        const { encrypt: e, decrypt: dd, copy: c } = d[k];
        const ms = e.totalMs + dd.totalMs;
        const idMs = (us(c) / 1000) * (e.frames + dd.frames);
        sframeMs += ms;
        identityMs += Number.isFinite(idMs) ? idMs : 0;
        for (const op of OPS) {
          const a = (all[k][op] ??= { frames: 0, totalMs: 0, bytes: 0 });
          a.frames += d[k][op].frames;
          a.totalMs += d[k][op].totalMs;
          a.bytes += d[k][op].bytes;
        }
        console.log(
          `| ${p.label} | ${k} | ${f1(e.frames / wall)} | ${f1(us(e))} | ${f1(dd.frames / wall)} | ${f1(us(dd))} | ${e.frames ? Math.round(e.bytes / e.frames) : '—'} / ${dd.frames ? Math.round(dd.bytes / dd.frames) : '—'} | ${f2(us(c))} | ${f2((100 * ms) / 1000 / wall)} % | ${f3((100 * idMs) / 1000 / wall)} % |`,
        );
      }
    });
    for (const k of KINDS) {
      const { encrypt: e, decrypt: dd, copy: c } = all[k];
      console.log(`| all three | ${k} | ${f1(e.frames / wall)} | ${f1(us(e))} | ${f1(dd.frames / wall)} | ${f1(us(dd))} | ${e.frames ? Math.round(e.bytes / e.frames) : '—'} / ${dd.frames ? Math.round(dd.bytes / dd.frames) : '—'} | ${f2(us(c))} | ${f2((100 * (e.totalMs + dd.totalMs)) / 1000 / wall)} % | ${f3((100 * (us(c) / 1000) * (e.frames + dd.frames)) / 1000 / wall)} % |`);
    }
    const chromium = (100 * (cpu1 - cpu0)) / wall;

    // Chromium's own accounting per thread: where the call's CPU went (the transform worker and
    // the MLS worker are "DedicatedWorker" threads of each page's renderer; the MLS one is idle
    // in a steady call).
    const byName = new Map();
    for (const [k, a] of threads1) {
      const d = a.cpu - (threads0.get(k)?.cpu ?? 0);
      if (d <= 0) continue;
      const e = byName.get(a.name) ?? { cpu: 0, threads: 0 };
      e.cpu += d;
      e.threads += 1;
      byName.set(a.name, e);
    }

    // WebCrypto alone, after the call (every page left it), at the mean frame sizes seen.
    const sizes = KINDS.map((k) => Math.round(all[k].encrypt.bytes / Math.max(all[k].encrypt.frames, 1)));
    for (const p of people) await p.page.goto('about:blank');
    await people[0].page.goto(`${server.origin}/`);
    await sleep(1000);
    const alone = await cryptoAlone(people[0].page, sizes);

    const frames = KINDS.reduce((n, k) => n + all[k].encrypt.frames + all[k].decrypt.frames, 0);
    const fps = frames / wall;
    const workers = byName.get('DedicatedWorker') ?? { cpu: 0, threads: 0 };
    const aesUs = KINDS.reduce((n, k, i) => n + all[k].encrypt.frames * alone.results[sizes[i]].encrypt + all[k].decrypt.frames * alone.results[sizes[i]].decrypt, 0) / Math.max(frames, 1);
    const row = (what, pct, note) => console.log(`| ${what} | ${f2(pct)} % | ${f2(pct / people.length)} % | ${f1((1e4 * pct) / fps)} µs | ${note} |`);
    console.log(`\nSummary: ${f1(fps)} frames/s through the transform workers of the three pages (encrypt + decrypt, audio + every video layer)\n`);
    console.log('| measure | % of one core, three pages | per page | per frame | how |');
    console.log('|---|---|---|---|---|');
    row('transform worker threads, CPU', (100 * workers.cpu) / wall, `kernel accounting of the ${workers.threads} DedicatedWorker threads that ran (MLS workers idle in a steady call): SFrame plus the transform-stream machinery`);
    row('SFrame encrypt + decrypt, wall time', (100 * sframeMs) / 1000 / wall, 'performance.now() around protect/unprotect: includes waiting for WebCrypto and for a CPU');
    row('identity copy, wall time', (100 * identityMs) / 1000 / wall, 'the same clock around reading and copying the frame (every 8th frame)');
    row('AES-128-GCM alone', (aesUs * fps) / 1e4, 'WebCrypto with no call running, at the mean sizes, times the observed frame rates');
    row('Chromium, all processes', chromium, `kernel accounting, ${pids.length} processes`);

    console.log('\nChromium threads by CPU over the window (kernel accounting, 10 ms ticks; top 12):\n');
    console.log('| thread name | threads | % of one core |');
    console.log('|---|---|---|');
    for (const [name, e] of [...byName].sort((a, b) => b[1].cpu - a[1].cpu).slice(0, 12)) console.log(`| ${name} | ${e.threads} | ${f2((100 * e.cpu) / wall)} % |`);

    console.log(`\nWebCrypto AES-128-GCM alone (page main thread, no call running; performance.now() ${alone.isolated ? 'at full resolution' : 'coarsened to 100 µs in these pages (not cross-origin isolated), so the in-call per-frame figures above are averages of coarse deltas'}):\n`);
    console.log('| frame bytes | encrypt µs (await-ed, one at a time) | decrypt µs | copy µs |');
    console.log('|---|---|---|---|');
    for (const [size, r] of Object.entries(alone.results)) console.log(`| ${size} | ${f1(r.encrypt)} | ${f1(r.decrypt)} | ${f3(r.copy)} |`);

    console.log('\n(c) what reached the receive transforms (every payload the SFU forwarded to a page)\n');
    console.log('| page | frames at receive transforms | authenticated as SFrame | dropped (by reason) | unattributed drops |');
    console.log('|---|---|---|---|---|');
    people.forEach((p, i) => {
      const sf = states[i].sframe;
      const received = Object.values(sf.byMid).reduce((n, m) => n + m.received, 0);
      const decrypted = Object.values(sf.byLeaf).reduce((n, l) => n + l.decrypted, 0);
      const failed = {};
      for (const l of Object.values(sf.byLeaf)) for (const [r, n] of Object.entries(l.failed)) failed[r] = (failed[r] ?? 0) + n;
      console.log(`| ${p.label} | ${received} | ${decrypted} (${f2((100 * decrypted) / Math.max(received, 1))} %) | ${JSON.stringify(failed)} | ${JSON.stringify(sf.unattributed)} |`);
    });
  },
  { deadlineMs: 240_000 },
);
