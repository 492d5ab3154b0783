// A ghost in the call (DESIGN T4, §4 levels): a lying server that admits a user and adds it to
// the MLS group (an ordinary external Add) but never lists it in its `participants` messages.
// The server's debug-build test hook `SEALROOM_TEST_GHOSTS=eve` plays that server
// (crates/server/src/config.rs `test_ghosts`); the ghost is a third browser, eve.
//
// (a) `open`: every other browser's roster, drawn from its own MLS state, shows eve as a member
//     "not announced by the server", with her verified identity (user, device, device kind),
//     and warns; the call goes on (the level only shows verification).
// (b) `restricted` (verification fails closed): the two browsers were a verified two-member
//     group; when the server adds eve without announcing her, their MLS workers refuse the epoch
//     that adds her before its key reaches their transform workers, both leave the call at once
//     and say why, eve decrypts none of their frames, and her MLS group sees them go.
// The native-client version is crates/server/tests/e2ee.rs
// `a_member_the_server_does_not_announce_is_flagged_from_mls`.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assertClean, log, meetingState, tid, withResources } from './lib.js';
import { e2eeState, joinCall, setupCall, waitForAgreement, waitUntil } from './call-lib.js';

const TIMEOUT_MS = 75_000;
const GHOSTS = { SEALROOM_TEST_GHOSTS: 'eve' };
const rosterRow = (page, user) => page.locator(`[data-testid=roster-member][data-user="${user}"]`);

/** The server plays the lying server (a debug build; a release build has no such hook). */
async function setupGhostCall(res, level, opts = {}) {
  const setup = await setupCall(res, ['bob', 'eve'], level, { env: GHOSTS, ...opts });
  await waitUntil('the server runs the ghost test hook', () => /TEST MODE: these users are never announced/.test(setup.server.stderr()), { timeoutMs: 3000 }).catch(() => {
    throw new Error(`the server did not start the SEALROOM_TEST_GHOSTS hook: a release build (${process.env.SEALROOM_BIN ?? 'target/debug/sealroom'})? It exists only in debug builds.`);
  });
  return setup;
}

/** The ghost has no participant (and so no self tile): it only reaches the admitted state. */
async function joinAsGhost(u, meetingUrl) {
  await u.page.goto(meetingUrl);
  await meetingState(u.page, 'admitted').waitFor();
}

/** The participant list the server sent this page (the meeting page's list, not the MLS roster). */
const announced = (page) => page.locator('[data-testid=participant-list] [data-testid=participant]').evaluateAll((els) => els.map((e) => e.getAttribute('data-user')));

test('open: a member the server does not announce is in every roster as "not announced by the server", with its verified identity', { timeout: TIMEOUT_MS }, async (t) => {
  await withResources(
    async (res) => {
      const { users, meetingUrl } = await setupGhostCall(res, 'open');
      const { admin: A, bob: B, eve: E } = users;
      await joinCall(A, meetingUrl);
      await joinCall(B, meetingUrl);
      const two = await waitForAgreement('admin+bob', [A.page, B.page], 2);
      await joinAsGhost(E, meetingUrl);
      const three = await waitForAgreement('admin, bob and the ghost', [A.page, B.page, E.page], 3, { after: two.epoch });
      log(`eve (ghost) in the group: epoch ${three.epoch}, code ${three.code}`);

      for (const [label, u] of [['admin', A], ['bob', B]]) {
        // The server's list: two people. The MLS group: three members.
        assert.deepEqual((await announced(u.page)).sort(), ['admin', 'bob'], `${label}: the lying server lists only admin and bob`);
        const st = await waitUntil(`${label} flags eve`, async () => {
          const s = await e2eeState(u.page);
          return s.roster.some((r) => r.username === 'eve' && r.state === 'not-announced') ? s : null;
        });
        const row = st.roster.find((r) => r.username === 'eve');
        assert.equal(row.participant, null, `${label}: eve has no participant`);
        assert.equal(row.deviceId, E.me.device_id, `${label}: eve's device from her credential`);
        assert.deepEqual(row.flags, ['not announced by the server']);
        const member = st.status.members.find((m) => m.username === 'eve');
        assert.equal(member.verified, true, `${label}: eve's credential verifies (${member.failure})`);
        assert.deepEqual([member.displayName, member.deviceId, member.deviceKind, member.userId], ['Eve Member', E.me.device_id, 'passkey', E.me.user_id]);
        assert.deepEqual(st.roster.filter((r) => r.username !== 'eve').map((r) => r.state), ['verified', 'verified']);
        assert.ok(st.warnings.some((w) => /^Eve Member \(eve\): not announced by the server$/.test(w)), `${label}: warnings ${JSON.stringify(st.warnings)}`);

        // On screen, in words.
        const dom = rosterRow(u.page, 'eve');
        assert.equal(await dom.getAttribute('data-state'), 'not-announced');
        assert.equal(await dom.getAttribute('data-device'), E.me.device_id);
        const text = await dom.textContent();
        for (const words of ['Eve Member (eve)', 'verified, but not announced by the server', "Device: Eve Member's laptop (passkey, web client)", 'Network (server\u2019s view): unknown', 'not announced by the server']) {
          assert.ok(text.includes(words), `${label}: eve's roster row says "${words}": ${text}`);
        }
        assert.ok((await tid(u.page, 'e2ee-warning').allTextContents()).some((w) => w.includes('Eve Member (eve): not announced by the server')), `${label}: the warning is shown`);

        // She holds the keys: her frames decrypt here (the ghost could listen as well as speak).
        const leaf = String(member.leaf);
        const frames = await waitUntil(`${label} decrypts eve's frames`, async () => ((await e2eeState(u.page)).sframe.byLeaf[leaf]?.decrypted ?? 0) > 20 && (await e2eeState(u.page)).sframe.byLeaf[leaf].decrypted);
        log(`${label}: eve (leaf ${leaf}, device ${member.deviceId}) flagged "not announced by the server"; ${frames} of her frames decrypted here`);
        // Open level: flagged, not fatal.
        assert.equal(await meetingState(u.page, 'admitted').count(), 1, `${label} stays in the call`);
      }
      t.diagnostic(`admin and bob flag eve (leaf ${(await e2eeState(A.page)).status.members.find((m) => m.username === 'eve').leaf}) as not announced, verified`);
      assertClean(A, B);
    },
    { deadlineMs: TIMEOUT_MS - 10_000 },
  );
});

test('restricted: when the server adds a member it does not announce, the browsers leave the call at once and say why', { timeout: TIMEOUT_MS }, async (t) => {
  await withResources(
    async (res) => {
      // Approved, device-bound passkeys (the virtual authenticator's are: backup-eligible flag 0);
      // the harness runs in local mode, where loopback satisfies the level's networks.
      const { users, meetingUrl } = await setupGhostCall(res, 'restricted', { approve: true });
      const { admin: A, bob: B, eve: E } = users;
      const admit = async (who) => {
        const entry = A.page.locator(`[data-testid=lobby-entry][data-user="${who}"]`);
        await entry.waitFor();
        await entry.getByTestId('admit-button').click();
      };
      await joinCall(A, meetingUrl);
      await B.page.goto(meetingUrl);
      await meetingState(B.page, 'lobby').waitFor();
      await admit('bob');
      await meetingState(B.page, 'admitted').waitFor();
      const two = await waitForAgreement('admin+bob', [A.page, B.page], 2);
      // No false alarm: a verified, announced two-member group.
      for (const u of [A, B]) {
        const st = await e2eeState(u.page);
        assert.deepEqual(st.roster.map((r) => r.state), ['verified', 'verified']);
        assert.deepEqual(st.warnings, []);
      }

      // In each page: when its MLS worker refused the epoch that adds eve, and when it left.
      for (const u of [A, B]) {
        await u.page.evaluate(() => {
          const marks = (window.__ghostMarks = { failed: null, left: null });
          const tick = () => {
            const now = Date.now();
            if (marks.failed === null && window.__sealroom?.e2ee?.status.phase === 'failed') marks.failed = now;
            if (marks.left === null && document.querySelector('[data-testid=meeting-state][data-state=left]')) marks.left = now;
            if (marks.left === null) setTimeout(tick, 5);
          };
          tick();
        });
      }
      await E.page.goto(meetingUrl);
      await meetingState(E.page, 'lobby').waitFor();
      const admittedAt = Date.now();
      await admit('eve');
      await meetingState(E.page, 'admitted').waitFor();
      const left = await Promise.all(
        [A, B].map(async (u) => {
          await meetingState(u.page, 'left').waitFor({ timeout: 15_000 });
          return Date.now() - admittedAt;
        }),
      );
      const marks = await Promise.all([A, B].map((u) => u.page.evaluate(() => window.__ghostMarks)));
      const refused = marks.map((m) => m.failed - admittedAt);
      const gone = marks.map((m) => m.left - m.failed);
      log(`admit eve → MLS worker refuses the epoch with eve: admin ${refused[0]} ms, bob ${refused[1]} ms; → left the call (server confirmed) ${gone[0]} ms, ${gone[1]} ms later (5 ms polls)`);
      for (const [i, label] of ['admin', 'bob'].entries()) assert.ok(marks[i].failed !== null && gone[i] >= 0 && gone[i] < 1000, `${label} left ${gone[i]} ms after refusing eve's epoch`);

      for (const [label, u] of [['admin', A], ['bob', B]]) {
        const exit = tid(u.page, 'security-exit');
        await exit.waitFor();
        const text = await exit.textContent();
        assert.match(text, /You left the call for your security/, `${label}: ${text}`);
        assert.match(text, /Eve Member \(eve\) on Eve Member's laptop \(leaf \d+\) holds the call's keys, but the server never announced it as a participant/, `${label}: ${text}`);
        const st = await e2eeState(u.page);
        assert.equal(st?.status.phase, 'failed', `${label}: MLS phase`);
        assert.equal(st.status.failure?.reason, 'unannounced-member');
        // The worker refused the epoch that added eve before handing out its key: the last
        // epoch this page had keys for is the two-member one.
        assert.equal(st.status.epoch, two.epoch, `${label}: no epoch with eve was taken in`);
        // Nothing is sent any more: the media connection is closed.
        await waitUntil(`${label}'s media connection closes`, () => u.page.evaluate(() => window.__sealroom?.pc.connectionState === 'closed' || window.__sealroom?.state === 'closed'));
      }
      // Eve's own MLS group loses both (their leave makes the server propose their removal).
      await waitUntil('eve is alone in her group', async () => {
        const st = await e2eeState(E.page);
        return st?.status.phase === 'member' && st.status.members.length === 1 && !st.status.commitPending && st.status.pendingProposals === 0;
      });
      // The ghost got nothing: no frame of admin or bob decrypted at eve (none was ever
      // encrypted under a key she holds).
      const es = await e2eeState(E.page);
      const got = Object.values(es.sframe.byLeaf).reduce((n, l) => n + l.decrypted, 0);
      log(`eve's transform worker: ${JSON.stringify(es.sframe.byLeaf)}`);
      assert.equal(got, 0, 'the ghost decrypted none of their frames');
      t.diagnostic(`admit eve → refused: admin ${refused[0]} ms, bob ${refused[1]} ms; → left ${gone[0]} / ${gone[1]} ms later; frames the ghost decrypted: 0`);
      assertClean(A, B);
    },
    { deadlineMs: TIMEOUT_MS - 10_000 },
  );
});
