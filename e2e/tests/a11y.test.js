// Accessibility: axe-core on every page of the web client, in the states people actually see
// (signed out, enrolling, with data, in a meeting as host with someone waiting and admitted,
// waiting in a lobby, refused). No serious or critical violation is allowed.
//
// axe is evaluated through CDP (page.evaluate of axe.min.js) in the page as served, with its
// CSP and Trusted Types in force: no bypassCSP, so the pages are checked exactly as shipped.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  adminCreateUser,
  assertClean,
  axeCheck,
  cli,
  enrol,
  launchBrowser,
  log,
  meetingState,
  newUser,
  refusal,
  startServer,
  tid,
  withResources,
} from './lib.js';

// The runner's limit; the body is abandoned (and everything torn down) 10 s before it.
const TIMEOUT_MS = 120_000;

test('axe-core finds no serious or critical violations on login, enrol, home, new meeting, meeting, devices and admin pages', { timeout: TIMEOUT_MS }, async (t) => {
  await withResources(async (res) => {
    const server = await startServer(res);
    const { origin, dataDir } = server;
    const browser = await launchBrowser(res);
    const results = {};
    const check = async (user, label) => {
      results[label] = await axeCheck(user.page, label);
    };

    // Signed out: the login page, then the enrol page of the first admin's link.
    const A = await newUser(res, browser, 'admin');
    await A.page.goto(`${origin}/`);
    await A.page.waitForURL(`${origin}/login`);
    await tid(A.page, 'login-button').waitFor();
    await check(A, 'login');
    await A.page.goto(server.firstAdminLink());
    await tid(A.page, 'enrol-info').waitFor();
    await check(A, 'enrol');
    await enrol(A, server.firstAdminLink(), { expectName: 'Administrator' });

    // Data on the pages: a user made in the admin UI (the link panel shows), a meeting.
    await tid(A.page, 'nav-admin').click();
    const bobLink = await adminCreateUser(A.page, { name: 'bob', displayName: 'Bob Member', role: 'member' });
    await A.page.locator('[data-testid=admin-device]').first().waitFor();
    await check(A, 'admin (with enrolment link)');
    const meeting = await cli(dataDir, ['meeting', 'create', '--title', 'Accessible meeting', '--level', 'open', '--invite', 'bob', '--host', 'admin', '--lobby']);
    await tid(A.page, 'nav-meetings').click();
    await tid(A.page, 'meeting-item').waitFor();
    await check(A, 'home (my meetings)');
    await tid(A.page, 'nav-new-meeting').click();
    await tid(A.page, 'meeting-title-input').waitFor();
    await A.page.locator('fieldset.picker input[data-user=bob]').first().waitFor();
    await check(A, 'new meeting');
    await tid(A.page, 'nav-devices').click();
    await tid(A.page, 'my-device').waitFor();
    await check(A, 'devices');

    // The meeting: the host alone, then with bob waiting, then with bob admitted.
    await A.page.goto(`${origin}/m/${meeting.id}`);
    await meetingState(A.page, 'admitted').waitFor();
    await check(A, 'meeting (host, alone)');
    const B = await newUser(res, browser, 'bob');
    await enrol(B, bobLink, { expectName: 'Bob Member' });
    await B.page.goto(`${origin}/m/${meeting.id}`);
    await meetingState(B.page, 'lobby').waitFor();
    await A.page.locator('[data-testid=lobby-entry][data-user=bob]').waitFor();
    await check(A, 'meeting (host, someone in the lobby)');
    await check(B, 'meeting (waiting in the lobby)');
    await A.page.locator('[data-testid=lobby-entry][data-user=bob]').getByTestId('admit-button').click();
    await meetingState(B.page, 'admitted').waitFor();
    await A.page.locator('[data-testid=participant][data-user=bob]').waitFor();
    await check(A, 'meeting (host, two admitted)');
    await check(B, 'meeting (participant)');
    await A.page.locator('[data-testid=participant][data-user=bob]').getByTestId('remove-button').click();
    await refusal(B.page, 'removed_by_host').waitFor();
    await check(B, 'meeting (refused)');

    // Canary: the same check flags a real problem in the same page (axe works under this CSP).
    await B.page.evaluate(() => {
      const img = document.createElement('img');
      img.src = '/favicon.svg';
      const btn = document.createElement('button');
      document.querySelector('main').append(img, btn);
    });
    const canary = await axeCheck(B.page, 'canary (img without alt, empty button)');
    assert.deepEqual(canary.map((v) => v.id).sort(), ['button-name', 'image-alt']);

    const bad = Object.entries(results).filter(([, v]) => v.length > 0);
    for (const [label, v] of Object.entries(results)) {
      if (v.all.length > 0) t.diagnostic(`${label}: ${v.all.map((x) => `${x.id} (${x.impact}) ${x.nodes.join(', ')}`).join('; ')}`);
    }
    log(`axe ran on ${Object.keys(results).length} page states`);
    assert.deepEqual(
      bad.map(([label, v]) => `${label}: ${v.map((x) => `${x.id} (${x.impact}): ${x.help} — ${x.nodes.join(', ')}`).join('; ')}`),
      [],
    );
    assertClean(A, B);
  }, { deadlineMs: TIMEOUT_MS - 10_000 });
});
