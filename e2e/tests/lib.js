// Shared helpers of the browser end-to-end tests: the real `sealroom` server on port 0 with a
// fresh data directory, its CLI, Debian's Chromium driven by playwright-core, and one CDP virtual
// passkey authenticator per browser context.
//
// Every test wraps its body in `withResources(async (res) => ...)`: whatever it starts (server,
// browsers, temp dirs, namespaces) is registered there and torn down in reverse order, also when
// the test fails or times out. A process-exit hook kills any child still alive as a last resort.

import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import https from 'node:https';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const E2E_DIR = path.resolve(here, '..');
export const REPO_DIR = path.resolve(E2E_DIR, '..');
export const BIN = process.env.SEALROOM_BIN || path.join(REPO_DIR, 'target/debug/sealroom');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const AXE_PATH = path.join(E2E_DIR, 'node_modules/axe-core/axe.min.js');

/** Flags from /work/shared/MACHINE.md (playwright adds --headless itself). */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
  '--allow-loopback-in-peer-connection',
  // Extra flags for every browser, space-separated (e.g. `--disable-http2` to work around a
  // server that mishandles HTTP/2); none by default.
  ...(process.env.SEALROOM_E2E_CHROMIUM_ARGS ?? '').split(' ').filter((a) => a !== ''),
];

/** Playwright's timeout for single actions and waits (a step, not a test). */
export const STEP_TIMEOUT_MS = 15_000;

const t0 = Date.now();
/** Progress line on stderr, with seconds since the file started. */
export function log(...args) {
  process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${args.join(' ')}\n`);
}

// ---------------------------------------------------------------------------------------------
// Resources and cleanup

const liveChildren = new Set();
process.on('exit', () => {
  for (const c of liveChildren) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

export class Resources {
  constructor() {
    this.cleanups = [];
    /** Called with a directory when the test failed (screenshots, server log). */
    this.onFailure = [];
  }
  /** Registers a cleanup; they run in reverse order. */
  defer(label, fn) {
    this.cleanups.push({ label, fn });
  }
  async close() {
    const errors = [];
    while (this.cleanups.length > 0) {
      const { label, fn } = this.cleanups.pop();
      try {
        await withTimeout(Promise.resolve().then(fn), 20_000, `cleanup ${label}`);
      } catch (e) {
        errors.push(`${label}: ${e.message}`);
      }
    }
    if (errors.length > 0) log('cleanup problems:', errors.join('; '));
  }
}

/**
 * Runs `body(res)` and always releases what it registered. With `deadlineMs`, a body that is
 * still running then is abandoned: the error is thrown and cleanup runs at once (closing the
 * browsers and killing the server makes whatever it awaited fail), so a hung step can never keep
 * the test process alive after the test runner's own timeout.
 */
export async function withResources(body, { deadlineMs } = {}) {
  const res = new Resources();
  try {
    const run = body(res);
    return await (deadlineMs ? withTimeout(run, deadlineMs, 'test body') : run);
  } catch (e) {
    const dir = path.join(E2E_DIR, 'test-results', `${path.basename(process.argv[1] ?? 'test')}-${Date.now()}`);
    try {
      fs.mkdirSync(dir, { recursive: true });
      for (const fn of res.onFailure) {
        await withTimeout(Promise.resolve().then(() => fn(dir)), 10_000, 'failure dump').catch(() => {});
      }
      log(`failure details in ${dir}`);
    } catch {
      /* best effort */
    }
    throw e;
  } finally {
    await res.close();
  }
}

export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result after ${ms} ms`)), ms);
    }),
  ]);
}

export function tempDir(res, prefix = 'sealroom-e2e-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  res.defer(`rm ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Spawns a child that is killed at cleanup (SIGTERM, then SIGKILL after 3 s). */
export function spawnTracked(res, cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  liveChildren.add(child);
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      liveChildren.delete(child);
      resolve({ code, signal });
    });
    child.once('error', (err) => {
      liveChildren.delete(child);
      resolve({ code: null, signal: null, error: err });
    });
  });
  child.exited = exited;
  res.defer(`kill ${cmd} ${child.pid}`, async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const done = await Promise.race([exited, new Promise((r) => setTimeout(() => r(null), 3000))]);
    if (done === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  return child;
}

// ---------------------------------------------------------------------------------------------
// Server and CLI

/**
 * Starts `sealroom serve` on a fresh data dir (or `opts.dataDir`), port 0 on loopback unless
 * `opts.args` says otherwise. `opts.config` is written as `sealroom.toml`. `opts.wrap` prefixes
 * the command (e.g. `['ip', 'netns', 'exec', 'sr-srv']`). `opts.env` adds environment variables
 * (e.g. the debug-build test hook `SEALROOM_TEST_GHOSTS`).
 */
export async function startServer(res, opts = {}) {
  if (!fs.existsSync(BIN)) throw new Error(`no server binary at ${BIN}: cargo build -p sealroom-server --bin sealroom`);
  const dataDir = opts.dataDir ?? tempDir(res);
  if (opts.config) fs.writeFileSync(path.join(dataDir, 'sealroom.toml'), opts.config);
  const args = ['serve', '--data-dir', dataDir, ...(opts.args ?? ['--listen', '127.0.0.1:0'])];
  const [cmd, ...pre] = opts.wrap ? [...opts.wrap, BIN] : [BIN];
  const child = spawnTracked(res, cmd, [...pre, ...args], {
    env: { ...process.env, SEALROOM_LOG: process.env.SEALROOM_LOG ?? 'sealroom=info,warn', ...(opts.env ?? {}) },
  });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
    if (process.env.E2E_SERVER_LOG) process.stderr.write(`[server] ${d}`);
  });
  const listening = new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      stdout += d;
      const m = /sealroom listening on (\S+) — open (\S+)/.exec(stdout);
      if (m) resolve({ addr: m[1], origin: m[2] });
    });
    child.exited.then(({ code, signal }) =>
      reject(new Error(`server exited (${code ?? signal}) before listening:\n${stdout}\n${stderr}`)),
    );
  });
  const { addr, origin } = await withTimeout(listening, 20_000, 'server start');
  const port = Number(addr.split(':').pop());
  res.onFailure.push((dir) => fs.writeFileSync(path.join(dir, 'server.log'), `${stdout}\n--- stderr ---\n${stderr}`));
  log(`server ${addr} ${origin} data ${dataDir}`);
  return {
    addr,
    origin,
    port,
    dataDir,
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    firstAdminLink: () => fs.readFileSync(path.join(dataDir, 'first-admin-link.txt'), 'utf8').trim(),
  };
}

/** Runs the CLI against a data dir; returns its parsed JSON (`audit show`: an array of entries). */
export function cli(dataDir, args, { json = true, allowFail = false } = {}) {
  const full = ['--data-dir', dataDir, ...(json ? ['--json'] : []), ...args];
  return new Promise((resolve, reject) => {
    execFile(BIN, full, { timeout: 30_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err && !allowFail) {
        reject(new Error(`sealroom ${full.join(' ')} failed (${err.code}): ${stderr}`));
        return;
      }
      const text = stdout.trim();
      let value = text;
      if (json && args[0] === 'audit' && args[1] === 'show') {
        // One JSON object per line.
        value = text === '' ? [] : text.split('\n').map((l) => JSON.parse(l));
      } else if (json && text !== '') {
        value = JSON.parse(text);
      }
      resolve(allowFail ? { code: err ? err.code : 0, value, stderr } : value);
    });
  });
}

/** A link the CLI printed: it must point at the running server (the CLI learns its origin from it). */
export function cliLink(server, url) {
  assert.equal(new URL(url).origin, server.origin, `the CLI printed ${url} for the server at ${server.origin}`);
  return url;
}

/** A raw HTTP(S) request from Node (no browser): full control over Host and Origin. */
export function rawRequest(urlString, { method = 'GET', headers = {}, body, ca } = {}) {
  const url = new URL(urlString);
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(
      {
        host: url.hostname === 'localhost' ? '127.0.0.1' : url.hostname,
        port: url.port,
        path: url.pathname + url.search,
        method,
        headers,
        ca,
        servername: url.hostname,
        setHost: !('Host' in headers || 'host' in headers),
      },
      (resp) => {
        let data = '';
        resp.setEncoding('utf8');
        resp.on('data', (d) => (data += d));
        resp.on('end', () => {
          let json;
          try {
            json = JSON.parse(data);
          } catch {
            json = undefined;
          }
          resolve({ status: resp.statusCode, headers: resp.headers, text: data, json });
        });
      },
    );
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error('request timed out')));
    if (body !== undefined) req.write(body);
    req.end();
  });
}

// ---------------------------------------------------------------------------------------------
// Browsers, contexts, passkeys

export async function launchBrowser(res, { args = [], env } = {}) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, ...args],
    env,
    timeout: 30_000,
  });
  res.defer('browser', () => browser.close());
  return browser;
}

/**
 * A browser context with one page and its own CDP virtual authenticator (ctap2, internal,
 * resident keys, user verification). Page errors and unexpected console errors are collected
 * in `user.problems`; `assertClean(...)` fails on them.
 */
export async function newUser(res, browser, label, { contextOptions = {}, ignoreConsole = [] } = {}) {
  const ctx = await browser.newContext(contextOptions);
  ctx.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = await ctx.newPage();
  const problems = [];
  res.onFailure.push(async (dir) => {
    fs.writeFileSync(path.join(dir, `${label}.txt`), `${page.url()}\n${problems.join('\n')}\n`);
    await page.screenshot({ path: path.join(dir, `${label}.png`), fullPage: true, timeout: 5000 });
  });
  page.on('pageerror', (e) => problems.push(`${label} pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = m.text();
    // Expected refusals (401 on /api/me when signed out, 4xx from refused ceremonies).
    if (/Failed to load resource: the server responded with a status of 4\d\d/.test(text)) return;
    if (ignoreConsole.some((re) => re.test(text))) return;
    problems.push(`${label} console error: ${text}`);
  });
  const cdp = await ctx.newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return { label, ctx, page, cdp, authenticatorId, problems };
}

/** Fails if any page of these users threw or logged an unexpected console error. */
export function assertClean(...users) {
  const all = users.flatMap((u) => u.problems);
  assert.deepEqual(all, [], `page errors:\n${all.join('\n')}`);
}

export const tid = (page, id) => page.getByTestId(id);

/** Enrols this context's passkey from an enrolment link through the enrol page. */
export async function enrol(user, link, { expectName, deviceName } = {}) {
  const { page } = user;
  if (page.url() !== link) {
    let resp = await page.goto(link);
    // Only the fragment changed (same document): load the page afresh with the new token.
    if (resp === null) resp = await page.reload();
    assert.equal(resp.status(), 200, `GET ${new URL(link).pathname}: HTTP ${resp.status()} ${await resp.text().catch(() => '')}`);
  }
  const info = tid(page, 'enrol-info');
  await info.waitFor();
  if (expectName) assert.ok((await info.textContent()).includes(expectName), `enrol page names ${expectName}`);
  await tid(page, 'device-name').fill(deviceName ?? `${user.label}'s laptop`);
  await tid(page, 'enrol-button').click();
  await page.waitForURL((u) => u.pathname === '/' && u.hash === '');
  await tid(page, 'whoami').waitFor();
  const me = await apiFetch(page, 'GET', '/api/me');
  assert.equal(me.status, 200, `enrolled ${user.label} has a session`);
  user.me = me.json;
  return me.json;
}

/** Signs in with the context's passkey through the login page. */
export async function login(user, origin) {
  const { page } = user;
  await page.goto(`${origin}/login`);
  await tid(page, 'login-button').click();
  await page.waitForURL((u) => u.pathname === '/');
  await tid(page, 'whoami').waitFor();
  const me = await apiFetch(page, 'GET', '/api/me');
  assert.equal(me.status, 200);
  user.me = me.json;
  return me.json;
}

/** Same-origin fetch from inside the page (real Origin header and cookies). */
export async function apiFetch(page, method, p, body) {
  return page.evaluate(
    async ({ method, p, body }) => {
      const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
      if (method !== 'GET') {
        init.headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(body ?? {});
      }
      const r = await fetch(p, init);
      const text = await r.text();
      let json;
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
      return { status: r.status, json, text };
    },
    { method, p, body },
  );
}

/** Admin UI: creates a user and returns the enrolment URL the page shows. */
export async function adminCreateUser(page, { name, displayName, role }) {
  await tid(page, 'admin-user-name').fill(name);
  await tid(page, 'admin-display-name').fill(displayName);
  await tid(page, 'admin-role').selectOption(role);
  await tid(page, 'admin-create-user').click();
  await page.locator(`[data-testid=admin-user][data-user="${name}"]`).waitFor();
  await page.waitForFunction(
    (n) => {
      const f = document.querySelector('[data-testid=enrolment-url]');
      const forWho = document.querySelector('.link-for');
      return f && f.value.includes('/enrol#') && forWho && forWho.textContent.includes(`For ${n};`);
    },
    name,
  );
  return tid(page, 'enrolment-url').inputValue();
}

/** Locator of the meeting page's state word in a given state. */
export const meetingState = (page, state) => page.locator(`[data-testid=meeting-state][data-state=${state}]`);
export const refusal = (page, reason) => page.locator(`[data-testid=refusal-reason][data-reason=${reason}]`);

/** Runs axe-core in the page and returns serious/critical violations (all of them in `.all`). */
export async function axeCheck(page, label) {
  const src = fs.readFileSync(AXE_PATH, 'utf8');
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(src);
  const { violations, passes } = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return { passes: r.passes.length, violations: r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5),
    })) };
  });
  assert.ok(passes > 5, `axe ran its rules on ${label} (${passes} passed)`);
  const bad = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  log(`axe ${label}: ${passes} rules passed, ${violations.length} violation(s), ${bad.length} serious/critical`, violations.map((v) => `${v.id}(${v.impact})`).join(' '));
  return Object.assign(bad, { all: violations });
}

/**
 * Performs a login ceremony inside the page (start → navigator.credentials.get) and returns the
 * body for `/api/login/passkey/finish` without sending it, so tests can send, alter or replay it.
 * Returns `{error}` when the browser itself rejected the ceremony.
 */
export async function passkeyAssertion(page) {
  return page.evaluate(async () => {
    const strip = (v) =>
      Array.isArray(v)
        ? v.map(strip)
        : v && typeof v === 'object'
          ? Object.fromEntries(Object.entries(v).filter(([, x]) => x !== null).map(([k, x]) => [k, strip(x)]))
          : v;
    const r = await fetch('/api/login/passkey/start', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: '{}',
    });
    if (!r.ok) return { error: `start: HTTP ${r.status} ${await r.text()}` };
    const s = await r.json();
    try {
      const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(strip(s.options.publicKey));
      const cred = await navigator.credentials.get({ publicKey });
      return { flow_id: s.flow_id, credential: cred.toJSON() };
    } catch (e) {
      return { error: `${e.name}: ${e.message}` };
    }
  });
}

/** POSTs a finish body from the page; `{status, json}`. */
export const finishLogin = (page, body) => apiFetch(page, 'POST', '/api/login/passkey/finish', body);
