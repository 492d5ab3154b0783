// Admission through the real UI: enrolment from links, meeting creation, lobby, admit, refuse,
// remove, and the single `not_found` answer for someone who is not invited.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  REPO_DIR,
  adminCreateUser,
  assertClean,
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

const SCREENSHOT = path.join(REPO_DIR, 'docs/screenshots/meeting.png');

// The runner's limit; the body is abandoned (and everything torn down) 10 s before it.
const TIMEOUT_MS = 150_000;

test('lobby admission: only invitees get in, hosts admit, refuse and remove; the page says why', { timeout: TIMEOUT_MS }, async () => {
  await withResources(async (res) => {
    const server = await startServer(res);
    const { origin } = server;
    const browser = await launchBrowser(res);

    // --- The first admin enrols from the link the server wrote, then creates users in the UI.
    const A = await newUser(res, browser, 'admin');
    await A.page.goto(`${origin}/`);
    await A.page.waitForURL(`${origin}/login`);
    const adminMe = await enrol(A, server.firstAdminLink(), { expectName: 'Administrator' });
    assert.equal(adminMe.role, 'admin');
    assert.match(await tid(A.page, 'whoami').textContent(), /Administrator.*admin.*passkey/);

    await tid(A.page, 'nav-admin').click();
    const olgaLink = await adminCreateUser(A.page, { name: 'olga', displayName: 'Olga Organiser', role: 'organiser' });
    const bobLink = await adminCreateUser(A.page, { name: 'bob', displayName: 'Bob Member', role: 'member' });
    const eveLink = await adminCreateUser(A.page, { name: 'eve', displayName: 'Eve Member', role: 'member' });
    for (const l of [olgaLink, bobLink, eveLink]) assert.ok(l.startsWith(`${origin}/enrol#`), l);
    assert.equal(new Set([olgaLink, bobLink, eveLink]).size, 3);
    // Three pending links (the first admin's is used).
    assert.equal(await A.page.locator('[data-testid=admin-enrolment][data-state=pending]').count(), 3);
    log('admin created olga, bob, eve');

    // --- bob enrols in a second context from the link the admin page showed; olga in a third.
    const B = await newUser(res, browser, 'bob');
    const bobMe = await enrol(B, bobLink, { expectName: 'Bob Member', deviceName: 'Bob laptop' });
    assert.equal(bobMe.name, 'bob');
    assert.equal(bobMe.role, 'member');
    assert.equal(await tid(B.page, 'nav-admin').count(), 0, 'members have no admin link');
    assert.equal(await tid(B.page, 'nav-new-meeting').count(), 0, 'members cannot create meetings');
    const O = await newUser(res, browser, 'olga');
    await enrol(O, olgaLink, { expectName: 'Olga Organiser', deviceName: 'Olga desktop' });
    // The admin page shows the three links used (first admin, bob, olga).
    await A.page.reload();
    await A.page.locator('[data-testid=admin-enrolment][data-state=used]').nth(2).waitFor();
    assert.equal(await A.page.locator('[data-testid=admin-enrolment][data-state=used]').count(), 3);
    log('bob and olga enrolled');

    // --- olga creates a meeting in the UI: bob invited, lobby on.
    await tid(O.page, 'nav-new-meeting').click();
    await tid(O.page, 'meeting-title-input').fill('Quarterly review');
    await tid(O.page, 'meeting-level-select').selectOption('open');
    await O.page.locator('fieldset.picker').first().locator('input[data-user=bob]').check();
    await tid(O.page, 'meeting-lobby-checkbox').check();
    await tid(O.page, 'meeting-create-button').click();
    const created = tid(O.page, 'meeting-created-link');
    await created.waitFor();
    const meetingUrl = await created.getAttribute('href');
    const meetingId = new URL(meetingUrl).pathname.split('/').pop();
    assert.match(meetingId, /^[A-Za-z0-9_-]{22,}$/, 'meeting id is long and url-safe');
    await created.click();
    await meetingState(O.page, 'admitted').waitFor();
    assert.equal(await tid(O.page, 'meeting-title').textContent(), 'Quarterly review');
    assert.equal(await tid(O.page, 'participant').count(), 1);
    await O.page.locator('[data-testid=participant][data-user=olga] .badge-host').waitFor();
    assert.equal(await tid(O.page, 'lock-toggle').count(), 1, 'the host has host controls');
    log('olga admitted as host of', meetingId);

    // --- bob opens the meeting from his list → lobby; olga sees who waits and admits.
    await B.page.goto(`${origin}/`);
    await B.page.locator(`[data-testid=meeting-item][data-meeting="${meetingId}"] a`).click();
    await meetingState(B.page, 'lobby').waitFor();
    const entry = O.page.locator('[data-testid=lobby-entry][data-user=bob]');
    await entry.waitFor();
    const entryText = await entry.textContent();
    assert.match(entryText, /Bob Member/, 'lobby shows the name');
    assert.match(entryText, /\(bob\)/, 'lobby shows the user name');
    assert.match(entryText, /Device: Bob laptop/, 'lobby shows the device');
    assert.match(entryText, /passkey/, 'lobby shows the device kind');
    assert.match(entryText, /Network: 127\.0\.0\.1 \(loopback\)/, 'lobby shows the source network');
    assert.equal(await tid(B.page, 'participant').count(), 0, 'nobody in the lobby sees the roster');
    await entry.getByTestId('admit-button').click();
    await meetingState(B.page, 'admitted').waitFor();
    for (const P of [O, B]) {
      await P.page.locator('[data-testid=participant][data-user=bob]').waitFor();
      await P.page.locator('[data-testid=participant][data-user=olga]').waitFor();
      assert.equal(await tid(P.page, 'participant').count(), 2, `${P.label} sees both`);
    }
    assert.equal(await tid(O.page, 'lobby-entry').count(), 0, 'the lobby is empty after admission');
    assert.equal(await tid(B.page, 'lock-toggle').count(), 0, 'bob has no host controls');
    assert.equal(await tid(B.page, 'remove-button').count(), 0, 'bob cannot remove anyone');
    const bobRow = await O.page.locator('[data-testid=participant][data-user=bob]').textContent();
    assert.match(bobRow, /Bob laptop/);
    assert.match(bobRow, /Network: loopback/);
    log('bob admitted; both rosters show olga and bob');

    // --- The screenshot the README links: the host's view with two participants admitted.
    fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await O.page.setViewportSize({ width: 1100, height: 900 });
    await O.page.screenshot({ path: SCREENSHOT, fullPage: true });
    assert.ok(fs.statSync(SCREENSHOT).size > 10_000, 'screenshot written');
    log('screenshot', SCREENSHOT);

    // --- eve (enrolled, not invited) gets the same answer as for a meeting that does not exist.
    // The admin context is reused for eve: sign out, drop the admin's passkey, enrol eve.
    await tid(A.page, 'logout').click();
    await A.page.waitForURL(`${origin}/login`);
    await A.cdp.send('WebAuthn.clearCredentials', { authenticatorId: A.authenticatorId });
    const E = A;
    // bob's link was used: it enrols nobody a second time.
    await E.page.goto(bobLink);
    await E.page.getByText('This enrolment link cannot be used').waitFor();
    assert.equal(await tid(E.page, 'enrol-button').count(), 0);
    await enrol(E, eveLink, { expectName: 'Eve Member' });
    await E.page.goto(meetingUrl);
    await refusal(E.page, 'not_found').waitFor();
    const notInvited = await tid(E.page, 'refusal-reason').textContent();
    assert.equal(await tid(E.page, 'participant').count(), 0);
    assert.doesNotMatch(await E.page.locator('main').textContent(), /Quarterly review/, 'no title leaks');
    await E.page.goto(`${origin}/m/AAAAAAAAAAAAAAAAAAAAAA`);
    await refusal(E.page, 'not_found').waitFor();
    assert.equal(await tid(E.page, 'refusal-reason').textContent(), notInvited, 'not invited = does not exist');
    // bob and olga did not see eve.
    assert.equal(await tid(O.page, 'lobby-entry').count(), 0);
    assert.equal(await tid(O.page, 'participant').count(), 2);
    log('eve refused with not_found');

    // --- bob leaves and asks again; olga refuses this second lobby attempt.
    await tid(B.page, 'leave-button').click();
    await meetingState(B.page, 'left').waitFor();
    await O.page.locator('[data-testid=participant][data-user=bob]').waitFor({ state: 'detached' });
    await tid(B.page, 'retry-join').click();
    await meetingState(B.page, 'lobby').waitFor();
    await O.page.locator('[data-testid=lobby-entry][data-user=bob]').getByTestId('refuse-button').click();
    await refusal(B.page, 'refused_by_host').waitFor();
    assert.equal(await tid(B.page, 'meeting-state').getAttribute('data-state'), 'refused');
    await O.page.locator('[data-testid=lobby-entry][data-user=bob]').waitFor({ state: 'detached' });
    assert.equal(await tid(O.page, 'participant').count(), 1);
    log('second lobby attempt refused_by_host');

    // --- bob tries again, is admitted, and olga removes him.
    await tid(B.page, 'retry-join').click();
    await meetingState(B.page, 'lobby').waitFor();
    await O.page.locator('[data-testid=lobby-entry][data-user=bob]').getByTestId('admit-button').click();
    await meetingState(B.page, 'admitted').waitFor();
    await O.page.locator('[data-testid=participant][data-user=bob]').getByTestId('remove-button').click();
    await refusal(B.page, 'removed_by_host').waitFor();
    assert.equal(await tid(B.page, 'meeting-state').getAttribute('data-state'), 'refused');
    assert.equal(await tid(B.page, 'participant').count(), 0, 'a removed member sees no roster');
    await O.page.locator('[data-testid=participant][data-user=bob]').waitFor({ state: 'detached' });
    assert.equal(await tid(O.page, 'participant').count(), 1);
    log('bob removed_by_host');

    assertClean(A, B, O);
  }, { deadlineMs: TIMEOUT_MS - 10_000 });
});
