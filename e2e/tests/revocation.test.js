// Revoking a device ends its meeting participation and its session at once, whether an admin
// does it in the admin page or on the command line against the running server.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiFetch,
  assertClean,
  cli,
  enrol,
  launchBrowser,
  log,
  meetingState,
  finishLogin,
  newUser,
  passkeyAssertion,
  cliLink,
  refusal,
  startServer,
  tid,
  withResources,
  withTimeout,
} from './lib.js';

const LIMIT_MS = 1000;

/** In bob's page: resolves with Date.now() of the moment the device_revoked refusal appears. */
async function armRevocationClock(page) {
  await page.evaluate(() => {
    window.__revokedAt = new Promise((resolve) => {
      const seen = () => document.querySelector('[data-testid=refusal-reason][data-reason=device_revoked]');
      if (seen()) return resolve(Date.now());
      const mo = new MutationObserver(() => {
        if (seen()) {
          mo.disconnect();
          resolve(Date.now());
        }
      });
      mo.observe(document.body, { childList: true, subtree: true, attributes: true });
    });
  });
}

const revokedAt = (page) => withTimeout(page.evaluate(() => window.__revokedAt), 10_000, 'device_revoked shown');

async function bobInMeeting(B, origin, meetingId) {
  await B.page.goto(`${origin}/m/${meetingId}`);
  await meetingState(B.page, 'admitted').waitFor();
  await B.page.locator('[data-testid=participant][data-user=bob]').waitFor();
}

// The runner's limit; the body is abandoned (and everything torn down) 10 s before it.
const TIMEOUT_MS = 120_000;

test('a revoked device is thrown out of its meeting within 1 s and loses its session (admin page and CLI)', { timeout: TIMEOUT_MS }, async (t) => {
  await withResources(async (res) => {
    const server = await startServer(res);
    const { origin, dataDir } = server;
    const browser = await launchBrowser(res);

    const A = await newUser(res, browser, 'admin');
    await enrol(A, server.firstAdminLink(), { expectName: 'Administrator' });
    const bobAdd = await cli(dataDir, ['user', 'add', 'bob', '--role', 'member', '--display-name', 'Bob Member']);
    const meeting = await cli(dataDir, ['meeting', 'create', '--title', 'Standup', '--level', 'open', '--invite', 'bob', '--host', 'admin']);
    cliLink(server, meeting.url);
    const B = await newUser(res, browser, 'bob');
    const bobMe = await enrol(B, cliLink(server, bobAdd.enrolment_url), { expectName: 'Bob Member', deviceName: 'Bob first laptop' });

    // bob is in the meeting the admin hosts.
    await A.page.goto(`${origin}/m/${meeting.id}`);
    await meetingState(A.page, 'admitted').waitFor();
    await bobInMeeting(B, origin, meeting.id);
    await A.page.locator('[data-testid=participant][data-user=bob]').waitFor();

    // --- 1. The admin page revokes bob's device while bob is in the meeting.
    await A.page.goto(`${origin}/admin`);
    const bobDevice = A.page.locator(`[data-testid=admin-user][data-user=bob] [data-testid=admin-device][data-device="${bobMe.device_id}"]`);
    await bobDevice.waitFor();
    await armRevocationClock(B.page);
    const revokeButton = bobDevice.getByTestId('device-revoke');
    await revokeButton.evaluate((btn) => btn.addEventListener('click', () => (window.__clickedAt = Date.now()), { capture: true, once: true }));
    await revokeButton.click();
    const t1 = await revokedAt(B.page);
    const clickedAt = await A.page.evaluate(() => window.__clickedAt);
    const uiLatency = t1 - clickedAt;
    log(`admin page revoke → device_revoked shown after ${uiLatency} ms`);
    t.diagnostic(`revocation latency (admin page click → device_revoked shown): ${uiLatency} ms`);
    assert.ok(uiLatency >= 0 && uiLatency <= LIMIT_MS, `device_revoked shown ${uiLatency} ms after the click (limit ${LIMIT_MS})`);
    assert.equal(await tid(B.page, 'meeting-state').getAttribute('data-state'), 'refused');
    assert.equal(await tid(B.page, 'participant').count(), 0);
    await tid(B.page, 'connection-closed').waitFor();
    const me1 = await apiFetch(B.page, 'GET', '/api/me');
    assert.equal(me1.status, 401, '/api/me from the revoked device');
    // The admin page shows the device revoked; retrying from bob's page does not get back in.
    await bobDevice.locator('.is-revoked').waitFor();
    assert.equal(await bobDevice.getByTestId('device-revoke').count(), 0);
    // Trying again cannot help: the page offers to sign in instead.
    assert.equal(await B.page.getByTestId('retry-join').count(), 0);
    // Logging in again with the revoked passkey is refused.
    const relog = await finishLogin(B.page, await passkeyAssertion(B.page));
    assert.equal(relog.status, 400);
    assert.equal(relog.json.code, 'device_revoked');
    log('admin-page revocation: refused, 401, relogin refused');

    // --- 2. The same through the CLI against the running server (DB + admin socket).
    // bob enrols a second device (a fresh passkey in the same context) and rejoins.
    const again = await cli(dataDir, ['user', 'enrol', 'bob']);
    await B.cdp.send('WebAuthn.clearCredentials', { authenticatorId: B.authenticatorId });
    const bobMe2 = await enrol(B, cliLink(server, again.enrolment_url), { expectName: 'Bob Member', deviceName: 'Bob second laptop' });
    assert.notEqual(bobMe2.device_id, bobMe.device_id);
    await A.page.goto(`${origin}/m/${meeting.id}`);
    await meetingState(A.page, 'admitted').waitFor();
    await bobInMeeting(B, origin, meeting.id);
    await A.page.locator('[data-testid=participant][data-user=bob]').waitFor();
    await armRevocationClock(B.page);
    const cliStart = Date.now();
    // `--`: ids are base64url and one in 64 starts with '-', which clap takes for a flag
    // (reported: `sealroom device revoke -xyz…` fails with "unexpected argument").
    const out = await cli(dataDir, ['device', 'revoke', '--', bobMe2.device_id]);
    const cliEnd = Date.now();
    assert.equal(out.revoked, true);
    assert.equal(out.changed, true);
    assert.equal(out.server_notified, true, 'the CLI told the running server');
    const t2 = await revokedAt(B.page);
    log(`CLI revoke: process ran ${cliEnd - cliStart} ms; device_revoked shown ${t2 - cliStart} ms after start, ${t2 - cliEnd} ms after exit`);
    t.diagnostic(`revocation latency (CLI start → device_revoked shown): ${t2 - cliStart} ms (the CLI process itself ran ${cliEnd - cliStart} ms)`);
    assert.ok(t2 - cliStart <= LIMIT_MS, `device_revoked shown ${t2 - cliStart} ms after the CLI started (limit ${LIMIT_MS})`);
    assert.equal(await tid(B.page, 'meeting-state').getAttribute('data-state'), 'refused');
    await tid(B.page, 'connection-closed').waitFor();
    const me2 = await apiFetch(B.page, 'GET', '/api/me');
    assert.equal(me2.status, 401, '/api/me after CLI revocation');
    // The host's roster drops bob.
    await A.page.locator('[data-testid=participant][data-user=bob]').waitFor({ state: 'detached' });
    assert.equal(await tid(A.page, 'participant').count(), 1);
    log('CLI revocation: refused, 401');

    // --- 3. A page whose signaling was down when its device was revoked (it missed the
    // refusal) learns why on its next connection instead of joining as nobody.
    const third = await cli(dataDir, ['user', 'enrol', 'bob']);
    await B.cdp.send('WebAuthn.clearCredentials', { authenticatorId: B.authenticatorId });
    const bobMe3 = await enrol(B, cliLink(server, third.enrolment_url), { expectName: 'Bob Member', deviceName: 'Bob phone' });
    await bobInMeeting(B, origin, meeting.id);
    await B.page.waitForFunction(() => typeof window.__sealroom?.dropSignaling === 'function');
    // bob's new signaling sockets are turned away until the revocation is in (the live one is
    // not routed); then they reach the server again.
    let holdSockets = true;
    await B.page.routeWebSocket(/\/api\/ws$/, (ws) => {
      if (holdSockets) ws.close({ code: 1013, reason: 'held by the test' });
      else ws.connectToServer();
    });
    await B.page.evaluate(() => window.__sealroom.dropSignaling());
    await meetingState(B.page, 'reconnecting').waitFor();
    const out3 = await cli(dataDir, ['device', 'revoke', '--', bobMe3.device_id]);
    assert.equal(out3.revoked, true);
    await armRevocationClock(B.page);
    holdSockets = false;
    await revokedAt(B.page);
    assert.equal(await tid(B.page, 'meeting-state').getAttribute('data-state'), 'refused');
    assert.equal(await B.page.getByTestId('retry-join').count(), 0, 'no retry: sign in again');
    const users = await cli(dataDir, ['user', 'list']);
    const bobDevices = users.find((u) => u.name === 'bob').devices;
    assert.deepEqual(bobDevices.map((d) => d.revoked), [true, true, true]);
    const log3 = await cli(dataDir, ['audit', 'show']);
    assert.ok(
      log3.some((e) => e.kind === 'session.refused' && e.actor.endsWith(`device:${bobMe3.device_id}`) && e.detail?.reason === 'device_revoked'),
      'the return of the revoked session is audited',
    );
    log('reconnect after revocation: device_revoked shown, audited');

    assertClean(A, B);
  }, { deadlineMs: TIMEOUT_MS - 10_000 });
});
