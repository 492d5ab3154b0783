// Network levels with real source addresses: the server runs in its own network namespace over
// TLS (self-signed, name-constrained CA trusted through an NSS database), each browser in a
// client namespace of its own. An `internal` meeting admits the browser from the allowed range
// and refuses the other with `network_not_allowed`.
//
// Topology (all inside 198.18.0.0/15; created and deleted by this test, needs root):
//
//   sr-a  198.18.1.2/24 ──veth── 198.18.1.1/24 ┐
//                                              sr-srv  (198.18.0.1/32 on lo: sealroom :8443)
//   sr-b  198.18.2.2/24 ──veth── 198.18.2.1/24 ┘
//
// The server namespace is the router: 198.18.0.1 is local there, each client namespace routes
// 198.18.0.0/24 through its veth peer. Chromium maps `localhost` to 198.18.0.1
// (--host-resolver-rules), so the page is https://localhost:8443 (RP id `localhost`).
//
// Chromium trusts the generated CA through an NSS database in a per-test HOME (certutil); no
// certificate-error flags are used, so WebAuthn sees a valid certificate as it would in use.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cli, log, spawnTracked, startServer, tempDir, withResources, withTimeout } from './lib.js';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'netns-child.js');
const SERVER_IP = '198.18.0.1';
const PORT = 8443;
const ORIGIN = `https://localhost:${PORT}`;
const NS = { srv: 'sr-srv', a: 'sr-a', b: 'sr-b' };
const CLIENTS = [
  { ns: NS.a, ip: '198.18.1.2', gw: '198.18.1.1', net: '198.18.1.0/24', user: 'alice' },
  { ns: NS.b, ip: '198.18.2.2', gw: '198.18.2.1', net: '198.18.2.0/24', user: 'bob' },
];

const CONFIG = `
[levels.open]
any_network = true
allow_software_devices = true

[levels.internal]
networks = ["198.18.1.0/24"]
allow_software_devices = true

[levels.restricted]
networks = ["198.18.1.0/24"]
require_approved_device = true
force_lobby = true
`;

function netnsUnavailable() {
  if (process.platform !== 'linux') return 'not Linux';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root (ip netns, veth)';
  const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return `\`ip netns\` is unavailable: ${r.error?.message ?? r.stderr.trim()}`;
  const c = spawnSync('certutil', ['-H'], { encoding: 'utf8' });
  if (c.error) return 'certutil (libnss3-tools) is not installed';
  return null;
}

const ip = (...args) => execFileSync('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();

/** Creates the namespaces; registers their deletion first, so a half-built setup is removed too. */
function buildNetwork(res) {
  const runNetnsExisted = fs.existsSync('/run/netns');
  res.defer('network namespaces', () => {
    for (const ns of Object.values(NS)) spawnSync('ip', ['netns', 'del', ns]);
    // `ip netns add` bind-mounts /run/netns on first use; undo that if it was us.
    if (!runNetnsExisted && fs.existsSync('/run/netns') && fs.readdirSync('/run/netns').length === 0) {
      spawnSync('umount', ['/run/netns']);
      try {
        fs.rmdirSync('/run/netns');
      } catch {
        /* still mounted elsewhere: leave it */
      }
    }
  });
  // Leftovers of an interrupted run.
  for (const ns of Object.values(NS)) spawnSync('ip', ['netns', 'del', ns]);

  for (const ns of Object.values(NS)) {
    ip('netns', 'add', ns);
    // IPv4 only: IPv6 duplicate-address detection finishing after Chromium started shows up
    // in the browser as a network change (net::ERR_NETWORK_CHANGED) in the middle of a load.
    spawnSync('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
    ip('-n', ns, 'link', 'set', 'lo', 'up');
  }
  ip('-n', NS.srv, 'addr', 'add', `${SERVER_IP}/32`, 'dev', 'lo');
  for (const c of CLIENTS) {
    const outer = `${c.ns}-srv`; // end in the server namespace
    const inner = `${c.ns}-eth`;
    ip('link', 'add', outer, 'type', 'veth', 'peer', 'name', inner);
    ip('link', 'set', outer, 'netns', NS.srv);
    ip('link', 'set', inner, 'netns', c.ns);
    ip('-n', NS.srv, 'addr', 'add', `${c.gw}/24`, 'dev', outer);
    ip('-n', c.ns, 'addr', 'add', `${c.ip}/24`, 'dev', inner);
    ip('-n', NS.srv, 'link', 'set', outer, 'up');
    ip('-n', c.ns, 'link', 'set', inner, 'up');
    ip('-n', c.ns, 'route', 'add', '198.18.0.0/24', 'via', c.gw);
  }
}

/** A HOME whose NSS database trusts the server's generated CA. */
function trustingHome(res, caPem) {
  const home = tempDir(res, 'sealroom-e2e-home-');
  const db = path.join(home, '.pki', 'nssdb');
  fs.mkdirSync(db, { recursive: true });
  execFileSync('certutil', ['-d', `sql:${db}`, '-N', '--empty-password']);
  execFileSync('certutil', ['-d', `sql:${db}`, '-A', '-t', 'C,,', '-n', 'sealroom', '-i', caPem]);
  const listed = execFileSync('certutil', ['-d', `sql:${db}`, '-L']).toString();
  assert.match(listed, /sealroom\s+C,,/);
  return home;
}

/**
 * One request from inside a client namespace with Node's own TLS stack (trusting only the
 * generated CA), over HTTP/1.1 or HTTP/2: `{status, body, alpn}`.
 */
function probe(ns, caPem, version, urlPath) {
  const script = `
    const fs = require('node:fs');
    const ca = fs.readFileSync(${JSON.stringify(caPem)});
    const done = (o) => { process.stdout.write(JSON.stringify(o)); process.exit(0); };
    if (${JSON.stringify(version)} === 'h2') {
      const http2 = require('node:http2');
      const tls = require('node:tls');
      const s = http2.connect('https://localhost:${PORT}', {
        createConnection: () => tls.connect({ host: '${SERVER_IP}', port: ${PORT}, servername: 'localhost', ca, ALPNProtocols: ['h2'] }),
      });
      s.on('error', (e) => done({ error: String(e) }));
      const r = s.request({ ':path': ${JSON.stringify(urlPath)} });
      r.on('error', (e) => done({ error: String(e) }));
      let body = '', status;
      r.on('response', (h) => (status = h[':status']));
      r.on('data', (d) => (body += d));
      r.on('end', () => { s.close(); done({ status, body, alpn: s.alpnProtocol }); });
    } else {
      const https = require('node:https');
      https.get({ host: '${SERVER_IP}', servername: 'localhost', port: ${PORT}, path: ${JSON.stringify(urlPath)}, ca, ALPNProtocols: ['http/1.1'], headers: { Host: 'localhost:${PORT}' } }, (r) => {
        let body = '';
        const alpn = r.socket.alpnProtocol;
        r.on('data', (d) => (body += d));
        r.on('end', () => done({ status: r.statusCode, body, alpn }));
      }).on('error', (e) => done({ error: String(e) }));
    }`;
  const out = execFileSync('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { timeout: 15_000 }).toString();
  return JSON.parse(out);
}

/** Runs one browser in its namespace; resolves with its RESULT. */
function runChild(res, job) {
  const child = spawnTracked(res, 'ip', ['netns', 'exec', job.ns, process.execPath, CHILD], {
    env: { ...process.env, CHILD_JOB: JSON.stringify(job) },
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => process.stderr.write(`[${job.label}] ${d}`));
  return withTimeout(
    child.exited.then(({ code }) => {
      const line = out.split('\n').find((l) => l.startsWith('RESULT '));
      if (!line) throw new Error(`${job.label}: no result (exit ${code}); stdout: ${out}`);
      const r = JSON.parse(line.slice('RESULT '.length));
      if (r.error) throw new Error(`${job.label} failed in ${job.ns}: ${r.error}`);
      return r;
    }),
    80_000,
    `${job.label} in ${job.ns}`,
  );
}

// In CI the namespaces must work: a skip there would hide a lost security test.
const skip = process.env.CI ? null : netnsUnavailable();

// The runner's limit; the body is abandoned (and everything torn down) 10 s before it.
const TIMEOUT_MS = 110_000;

test('TLS over network namespaces: HTTP/1.1 and HTTP/2 both reach the app; an internal meeting admits the allowed range and refuses another (network_not_allowed)', { timeout: TIMEOUT_MS, skip: skip ? `skipped: ${skip}` : false }, async (t) => {
  await withResources(async (res) => {
    buildNetwork(res);
    const dataDir = tempDir(res);
    const server = await startServer(res, {
      dataDir,
      config: CONFIG,
      wrap: ['ip', 'netns', 'exec', NS.srv],
      args: ['--listen', `${SERVER_IP}:${PORT}`, '--tls-self-signed', '--public-url', ORIGIN],
    });
    assert.equal(server.origin, ORIGIN);
    assert.match(server.stdout(), /CA SHA-256 fingerprint: [0-9A-F:]{95}/);
    const caPem = path.join(dataDir, 'tls', 'ca.pem');
    const home = trustingHome(res, caPem);

    // The TLS listener, seen from a client namespace that trusts only the generated CA: both
    // HTTP versions must reach the app. Browsers negotiate h2 by ALPN, and an h2 request
    // carries `:authority` instead of a Host header.
    let h2Broken = false;
    await t.test('the TLS listener answers HTTP/1.1 and HTTP/2 requests for the public host', () => {
      for (const version of ['http/1.1', 'h2']) {
        const r = probe(NS.a, caPem, version, '/api/me');
        log(`probe ${version}: ${JSON.stringify(r)}`);
        assert.equal(r.error, undefined, `${version}: ${r.error}`);
        assert.equal(r.alpn, version);
        if (version === 'h2' && r.status === 421) h2Broken = true;
        assert.equal(r.status, 401, `GET /api/me over ${version} from ${CLIENTS[0].ip}: ${r.status} ${r.body}`);
      }
    });

    await t.test('an internal meeting admits a browser from 198.18.1.0/24 and refuses one from 198.18.2.0/24', async (t2) => {
      // So that the network policy is still checked while HTTP/2 is broken (the subtest above
      // fails and says why), the browsers then speak HTTP/1.1.
      const chromiumArgs = h2Broken ? ['--disable-http2'] : [];
      if (h2Broken) t2.diagnostic('HTTP/2 is answered 421: browsers run with --disable-http2 for this part');

      // People and the meeting, from the CLI (alice and bob invited; hank hosts and stays away).
      const links = {};
      for (const u of ['alice', 'bob']) {
        const r = await cli(dataDir, ['user', 'add', u, '--role', 'member']);
        assert.ok(r.enrolment_url.startsWith(`${ORIGIN}/enrol#`), r.enrolment_url);
        links[u] = r.enrolment_url;
      }
      await cli(dataDir, ['user', 'add', 'hank', '--role', 'organiser']);
      const meeting = await cli(dataDir, ['meeting', 'create', '--title', 'Internal sync', '--level', 'internal', '--invite', 'alice,bob', '--host', 'hank']);

      // Both browsers at once, each in its own namespace.
      const started = Date.now();
      const [alice, bob] = await Promise.all(
        CLIENTS.map((c) =>
          runChild(res, {
            label: c.user,
            ns: c.ns,
            origin: ORIGIN,
            link: links[c.user],
            meetingId: meeting.id,
            resolveTo: SERVER_IP,
            home,
            chromiumArgs,
          }),
        ),
      );
      log(`browsers done in ${Date.now() - started} ms`);
      t2.diagnostic(`alice: ${JSON.stringify({ phase: alice.phase, participants: alice.participants })}`);
      t2.diagnostic(`bob: ${JSON.stringify({ phase: bob.phase, reason: bob.reason })}`);

      // A trusted https://localhost page: passkeys worked (both enrolled) over TLS.
      for (const r of [alice, bob]) {
        assert.deepEqual(r.security, { secure: true, origin: ORIGIN });
        assert.deepEqual(r.problems, []);
        assert.equal(r.apiMe, 200);
      }
      assert.equal(alice.phase, 'admitted', 'alice (198.18.1.2) is admitted');
      const self = alice.participants.find((p) => p.user === 'alice');
      assert.match(self.text, /Network: 198\.18\.1\.0\/24/, 'the roster names the allowed zone');
      assert.equal(bob.phase, 'refused', 'bob (198.18.2.2) is refused');
      assert.equal(bob.reason, 'network_not_allowed');
      assert.match(bob.message, /network this meeting's level does not allow/);

      // The audit log saw the namespace addresses, not loopback.
      const entries = await cli(dataDir, ['audit', 'show']);
      const admitted = entries.find((e) => e.kind === 'join.admitted' && e.subject === `meeting:${meeting.id}`);
      assert.equal(admitted?.source, '198.18.1.2');
      assert.equal(admitted.detail.network, '198.18.1.0/24');
      const refusedEntry = entries.find((e) => e.kind === 'join.refused' && e.detail?.reason === 'network_not_allowed');
      assert.equal(refusedEntry?.source, '198.18.2.2');
      assert.equal((await cli(dataDir, ['audit', 'verify'])).ok, true);
    });
  }, { deadlineMs: TIMEOUT_MS - 10_000 });
});
