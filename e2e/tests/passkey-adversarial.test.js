// Passkey login under attack: replayed and altered assertions, forged origins and hosts, bad
// signatures and flags from a virtual authenticator, and a cloned passkey (signature counter
// going backwards) — each refused, none leaving a session, all in the audit log.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiFetch,
  assertClean,
  cli,
  enrol,
  finishLogin,
  launchBrowser,
  log,
  login,
  newUser,
  cliLink,
  passkeyAssertion,
  rawRequest,
  startServer,
  withResources,
} from './lib.js';

// Rate limiting is not under test here; keep it out of the way of the ~25 ceremonies below.
const CONFIG = `
[rate_limits]
login_per_ip = 1000
login_per_account = 1000
`;

const b64urlDecode = (s) => Buffer.from(s, 'base64url');
const b64urlEncode = (b) => Buffer.from(b).toString('base64url');

// The runner's limit; the body is abandoned (and everything torn down) 10 s before it.
const TIMEOUT_MS = 120_000;

test('forged, replayed, tampered and cloned passkey logins are refused and audited', { timeout: TIMEOUT_MS }, async (t) => {
  await withResources(async (res) => {
    const server = await startServer(res, { config: CONFIG });
    const { origin, port, dataDir } = server;
    const browser = await launchBrowser(res);

    const A = await newUser(res, browser, 'admin');
    await enrol(A, server.firstAdminLink(), { expectName: 'Administrator' });
    const carolAdd = await cli(dataDir, ['user', 'add', 'carol', '--role', 'member', '--display-name', 'Carol']);
    // The victim context: its failing ceremonies make the browser log 4xx loads, nothing else.
    const C = await newUser(res, browser, 'carol');
    const carol = await enrol(C, cliLink(server, carolAdd.enrolment_url), { expectName: 'Carol' });

    const loggedOut = async (why) => {
      const me = await apiFetch(C.page, 'GET', '/api/me');
      assert.equal(me.status, 401, `${why}: not logged in`);
    };
    const logout = async () => {
      assert.equal((await apiFetch(C.page, 'POST', '/api/logout', {})).status, 200);
      await loggedOut('after logout');
    };
    const refused = async (why, body, code = 'login_failed') => {
      assert.ok(!body.error, `${why}: the browser produced an assertion (${body.error})`);
      const r = await finishLogin(C.page, body);
      assert.equal(r.status, 400, `${why}: HTTP ${r.status} ${r.text}`);
      assert.equal(r.json?.code, code, `${why}: ${r.text}`);
      await loggedOut(why);
      log(`refused: ${why} (${code})`);
    };
    await logout();

    // --- A genuine login through the UI works (the control for everything below).
    await login(C, origin);
    await logout();

    // --- Replay: the same finish body twice, and the old assertion with a fresh challenge.
    const first = await passkeyAssertion(C.page);
    assert.ok(!first.error, first.error);
    const ok = await finishLogin(C.page, first);
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.device_id, carol.device_id);
    await logout();
    await refused('replayed finish body', first);
    const fresh = await apiFetch(C.page, 'POST', '/api/login/passkey/start', {});
    assert.equal(fresh.status, 200);
    await refused('old assertion under a fresh challenge', { flow_id: fresh.json.flow_id, credential: first.credential });

    // --- clientDataJSON with another origin (the authenticator signed it; we alter it after).
    for (const evil of [`http://evil.example:${port}`, `http://localhost:${port + 1}`, `https://localhost:${port}`]) {
      const a = await passkeyAssertion(C.page);
      const cd = JSON.parse(b64urlDecode(a.credential.response.clientDataJSON).toString('utf8'));
      assert.equal(cd.origin, origin);
      cd.origin = evil;
      a.credential.response.clientDataJSON = b64urlEncode(JSON.stringify(cd));
      await refused(`clientDataJSON origin ${evil}`, a);
    }

    // --- Requests from outside the page: wrong or missing Origin → 403, wrong Host → 421.
    const post = (headers) =>
      rawRequest(`${origin}/api/login/passkey/start`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Host: `localhost:${port}`, ...headers },
        body: '{}',
      });
    for (const o of ['http://evil.example', `http://localhost:${port + 1}`, `https://localhost:${port}`, 'null']) {
      const r = await post({ Origin: o });
      assert.equal(r.status, 403, `Origin ${o}`);
      assert.equal(r.json?.code, 'bad_origin', `Origin ${o}`);
    }
    const noOrigin = await post({});
    assert.equal(noOrigin.status, 403, 'missing Origin');
    assert.equal(noOrigin.json?.code, 'bad_origin');
    const good = await post({ Origin: origin });
    assert.equal(good.status, 200, 'the right Origin and Host are accepted (control)');
    for (const host of ['evil.example', `evil.example:${port}`, `127.0.0.1:${port}`, `localhost:${port + 1}`]) {
      const r = await rawRequest(`${origin}/api/me`, { headers: { Host: host } });
      assert.equal(r.status, 421, `Host ${host}`);
      assert.equal(r.json?.code, 'wrong_host');
      const p = await post({ Host: host, Origin: origin });
      assert.equal(p.status, 421, `POST with Host ${host}`);
    }
    const ws = await rawRequest(`${origin}/api/ws`, {
      headers: {
        Host: `localhost:${port}`,
        Origin: 'http://evil.example',
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
      },
    });
    assert.equal(ws.status, 403, 'WebSocket upgrade from another origin');
    log('origin/host checks: 403 bad_origin, 421 wrong_host');

    // --- The authenticator misbehaves: bogus signature, UV cleared, UP cleared.
    for (const bit of ['isBogusSignature', 'isBadUV', 'isBadUP']) {
      await C.cdp.send('WebAuthn.setResponseOverrideBits', { authenticatorId: C.authenticatorId, [bit]: true });
      try {
        await refused(`virtual authenticator ${bit}`, await passkeyAssertion(C.page));
      } finally {
        await C.cdp.send('WebAuthn.setResponseOverrideBits', {
          authenticatorId: C.authenticatorId,
          isBogusSignature: false,
          isBadUV: false,
          isBadUP: false,
        });
      }
    }

    // --- A cloned passkey: log in once more (the server stores the counter), then put the
    // same credential back with a lower signature counter.
    await login(C, origin);
    await logout();
    const { credentials } = await C.cdp.send('WebAuthn.getCredentials', { authenticatorId: C.authenticatorId });
    assert.equal(credentials.length, 1);
    const cred = credentials[0];
    log(`authenticator signCount ${cred.signCount}`);
    assert.ok(cred.signCount >= 4, `signCount ${cred.signCount} is high enough to lower`);
    await C.cdp.send('WebAuthn.removeCredential', { authenticatorId: C.authenticatorId, credentialId: cred.credentialId });
    await C.cdp.send('WebAuthn.addCredential', {
      authenticatorId: C.authenticatorId,
      credential: { ...cred, signCount: 1 },
    });
    await refused('signature counter went backwards', await passkeyAssertion(C.page), 'device_revoked');
    // The device stays revoked: even a "good" counter from now on gets the same answer.
    await C.cdp.send('WebAuthn.removeCredential', { authenticatorId: C.authenticatorId, credentialId: cred.credentialId });
    await C.cdp.send('WebAuthn.addCredential', {
      authenticatorId: C.authenticatorId,
      credential: { ...cred, signCount: cred.signCount + 100 },
    });
    await refused('login from the revoked (cloned) device', await passkeyAssertion(C.page), 'device_revoked');

    // The admin's device list shows carol's device revoked.
    await A.page.goto(`${origin}/admin`);
    const dev = A.page.locator(`[data-testid=admin-user][data-user=carol] [data-testid=admin-device][data-device="${carol.device_id}"]`);
    await dev.locator('.is-revoked').waitFor();
    assert.match(await dev.locator('.is-revoked').textContent(), /revoked/);
    assert.equal(await dev.getByTestId('device-revoke').count(), 0, 'no revoke button on a revoked device');

    // --- The audit log is intact and tells the story.
    const verify = await cli(dataDir, ['audit', 'verify']);
    assert.equal(verify.ok, true, JSON.stringify(verify));
    const entries = await cli(dataDir, ['audit', 'show']);
    const failed = entries.filter((e) => e.kind === 'login.failed');
    const reasons = failed.map((e) => e.detail?.reason ?? '');
    t.diagnostic(`audit: ${verify.entries} entries, ${verify.checkpoints} checkpoints; login.failed reasons: ${JSON.stringify(reasons)}`);
    assert.ok(failed.length >= 8, `login.failed entries: ${failed.length}`);
    const audited = (re, what) => assert.ok(reasons.some((r) => re.test(r)), `${what} audited: ${JSON.stringify(reasons)}`);
    audited(/unknown, used or expired challenge/, 'replayed finish body');
    audited(/challenge differs/i, 'old assertion under a fresh challenge');
    assert.equal(reasons.filter((r) => /origin/i.test(r)).length, 3, 'each altered origin audited');
    audited(/signature/i, 'bogus signature');
    audited(/user verified/i, 'cleared UV');
    audited(/user present/i, 'cleared UP');
    audited(/revoked/, 'login from the revoked device');
    const cloneRevoked = entries.filter((e) => e.kind === 'device.revoked' && e.subject === `device:${carol.device_id}`);
    assert.equal(cloneRevoked.length, 1);
    assert.equal(cloneRevoked[0].detail.reason, 'clone_detected');
    const users = await cli(dataDir, ['user', 'list']);
    assert.equal(users.find((u) => u.name === 'carol').devices[0].revoked, true);

    assertClean(A, C);
  }, { deadlineMs: TIMEOUT_MS - 10_000 });
});
