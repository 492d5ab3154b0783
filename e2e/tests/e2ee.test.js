// End-to-end encryption in the browser (DESIGN flow 5-8, §7 "MLS" and "SFrame profile",
// docs/E2EE.md): MLS in a worker over the server's delivery service, SFrame on every frame in the
// transform worker, keys only from worker to worker. Each test runs at most three browsers.
//
// (a) three browsers: each decodes the other two's video and audio, every frame through SFrame;
//     epoch, security code and an exporter-derived check value agree on all after each join and
//     leave; the roster is verified everywhere; tiles are labelled from the KID; prints the time
//     from admission to the first decrypted remote frame.
// (b) removal: the host removes a member; the others move to a new epoch; prints when the removed
//     page's receiver stopped decrypting, which never grows after the others' commit.
// (c) without keys: a browser whose transform worker never gets a key decodes < 5 % of the frames
//     it receives (framesDecoded / framesReceived), and says why.
// (d) chat between two browsers, as MLS application messages.
// (e) camera off and on, screen share on: every screen frame is encrypted and decrypted too.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assertClean, log, meetingState, refusal, tid, withResources } from './lib.js';
import {
  assertDecodesAll,
  decryptedTotal,
  e2eeState,
  firstDecrypted,
  inbound,
  joinCall,
  mediaDump,
  setupCall,
  streamOf,
  videoDecodeRatio,
  waitForAgreement,
  waitUntil,
} from './call-lib.js';

const TIMEOUT_MS = 90_000;
const tile = (page, id) => page.locator(`[data-testid=tile][data-participant="${id}"]`);

/** Joins and measures admission → first decrypted remote frame (and first decoded video frame). */
async function joinTimed(u, meetingUrl) {
  await u.page.goto(meetingUrl);
  const t = await firstDecrypted(u.page);
  const id = await tid(u.page, 'self-tile').getAttribute('data-participant');
  log(`${u.label}: admitted → first decrypted remote frame ${t.firstDecrypted - t.admitted} ms, → first decoded remote video frame ${t.firstDecoded - t.admitted} ms`);
  return { id, t };
}

/** Every roster row verified, one per member, ours marked; tiles labelled from the KID. */
async function assertRosterAndTiles(label, page, ids, names) {
  const st = await e2eeState(page);
  const rows = st.roster;
  assert.equal(rows.length, Object.keys(ids).length, `${label}: roster ${JSON.stringify(rows)}`);
  for (const r of rows) assert.equal(r.state, 'verified', `${label}: ${JSON.stringify(r)}`);
  assert.deepEqual(rows.map((r) => r.username).sort(), Object.keys(ids).sort());
  assert.equal(rows.filter((r) => r.self).length, 1);
  assert.equal(await tid(page, 'e2ee-warning').count(), 0, `${label}: warnings ${JSON.stringify(st.warnings)}`);
  for (const [name, id] of Object.entries(ids)) {
    if (name === label) continue;
    const ident = tile(page, id).getByTestId('tile-identity');
    await waitUntil(`${label}: ${name}'s tile labelled from its KID`, async () => (await ident.getAttribute('data-key-user')) === name && (await ident.getAttribute('data-verified')) === 'true');
    assert.match(await ident.textContent(), new RegExp(`Encrypted by ${names[name]}`));
  }
}

test('three browsers: every frame SFrame-encrypted and decoded; epoch, security code and exporter agree after each join and leave', { timeout: TIMEOUT_MS }, async (t) => {
  await withResources(
    async (res) => {
      const { users, meetingUrl } = await setupCall(res, ['bob', 'carol'], 'internal');
      const { admin: A, bob: B, carol: C } = users;
      const names = { admin: 'Administrator', bob: 'Bob Member', carol: 'Carol Member' };
      const ids = {};
      ids.admin = await joinCall(A, meetingUrl);
      const one = await waitForAgreement('admin alone', [A.page], 1);
      log(`admin alone: epoch ${one.epoch}, code ${one.code}`);

      const b = await joinTimed(B, meetingUrl);
      ids.bob = b.id;
      const two = await waitForAgreement('admin+bob', [A.page, B.page], 2, { after: one.epoch });
      log(`bob joined: epoch ${two.epoch}, code ${two.code}, check ${two.check}`);

      const c = await joinTimed(C, meetingUrl);
      ids.carol = c.id;
      const three = await waitForAgreement('all three', [A.page, B.page, C.page], 3, { after: two.epoch });
      log(`carol joined: epoch ${three.epoch}, code ${three.code}, check ${three.check}`);
      assert.notEqual(three.code, two.code, 'the security code changes with the epoch');
      assert.notEqual(three.check, two.check, 'the exporter changes with the epoch');
      t.diagnostic(`admission → first decrypted remote frame: bob ${b.t.firstDecrypted - b.t.admitted} ms, carol ${c.t.firstDecrypted - c.t.admitted} ms`);

      // The code is on screen with epoch, member count and level, and the same everywhere.
      for (const u of [A, B, C]) {
        assert.equal(await tid(u.page, 'security-code').getAttribute('data-code'), three.code);
        assert.match(await tid(u.page, 'security-facts').textContent(), new RegExp(`Epoch ${three.epoch} · 3 members · level internal`));
        assert.match(await tid(u.page, 'security-code').getAttribute('aria-label'), /^\d \d \d \d \d, /);
      }

      const pages = { admin: A.page, bob: B.page, carol: C.page };
      const othersOf = (label) => Object.fromEntries(Object.entries(ids).filter(([n]) => n !== label));
      for (const [label, page] of Object.entries(pages)) await assertDecodesAll(label, page, othersOf(label), 2000);
      for (const [label, page] of Object.entries(pages)) await assertRosterAndTiles(label, page, ids, names);

      // SFrame counters: this page encrypted microphone and camera; it decrypted both others'
      // frames (audio and video contexts from their leaves); nothing failed authentication.
      for (const [label, page] of Object.entries(pages)) {
        const st = await e2eeState(page);
        const sf = st.sframe;
        assert.ok((sf.encrypted.microphone ?? 0) > 50 && (sf.encrypted.camera ?? 0) > 20, `${label} encrypts: ${JSON.stringify(sf.encrypted)}`);
        const leaves = st.status.members.filter((m) => !m.self).map((m) => String(m.leaf));
        for (const leaf of leaves) {
          const l = sf.byLeaf[leaf];
          assert.ok(l && l.decrypted > 50, `${label} decrypts leaf ${leaf}: ${JSON.stringify(sf.byLeaf)}`);
          assert.deepEqual([...l.sources].sort(), ['camera', 'microphone'], `${label}: leaf ${leaf} sources`);
          assert.equal(l.failed.auth ?? 0, 0, `${label}: no frame of leaf ${leaf} failed authentication`);
        }
        const frames = st.sframe;
        log(`${label} SFrame: encrypted ${JSON.stringify(frames.encrypted)}, send dropped ${frames.sendDropped}; per leaf ${JSON.stringify(frames.byLeaf)}; unattributed ${JSON.stringify(frames.unattributed)}; early frames held ${frames.heldEarly}; last drops ${JSON.stringify(frames.recentDrops.slice(-4))}`);
      }

      // Carol leaves: admin and bob move to a new two-member epoch and still decode each other.
      await tid(C.page, 'leave-button').click();
      await meetingState(C.page, 'left').waitFor();
      const after = await waitForAgreement('after carol left', [A.page, B.page], 2, { after: three.epoch });
      log(`carol left: epoch ${after.epoch}, code ${after.code}`);
      assert.notEqual(after.code, three.code);
      delete ids.carol;
      await assertDecodesAll('admin (after leave)', A.page, { bob: ids.bob }, 1500);
      for (const [label, page] of [['admin', A.page], ['bob', B.page]]) await assertRosterAndTiles(label, page, ids, names);
      assertClean(A, B, C);
    },
    { deadlineMs: TIMEOUT_MS - 10_000 },
  );
});

/**
 * In-page sampler every 50 ms: the SFrame decrypt total, the MLS epoch and the epochs of the
 * frames last decrypted per mid; `stopE2eeSampler(page)` returns `[{t, decrypted, epoch, frameEpochs}]`.
 */
async function startE2eeSampler(page) {
  await page.evaluate(() => {
    const samples = [];
    window.__e2eeSamples = samples;
    window.__e2eeSampler = setInterval(() => {
      const e = window.__sealroom?.e2ee;
      if (!e) return;
      const sf = e.sframe;
      samples.push({
        t: Date.now(),
        decrypted: Object.values(sf.byLeaf).reduce((n, l) => n + l.decrypted, 0),
        epoch: e.epoch,
        frameEpochs: Object.values(sf.byMid).map((m) => m.epoch).filter((x) => x !== null),
      });
    }, 50);
  });
}

async function stopE2eeSampler(page) {
  return page.evaluate(() => {
    clearInterval(window.__e2eeSampler);
    return window.__e2eeSamples;
  });
}

test('removal: the others move to a new epoch; the removed page never decrypts anything after their commit', { timeout: TIMEOUT_MS }, async (t) => {
  await withResources(
    async (res) => {
      const { users, meetingUrl } = await setupCall(res, ['bob', 'carol']);
      const { admin: A, bob: B, carol: C } = users;
      const ids = { admin: await joinCall(A, meetingUrl), bob: await joinCall(B, meetingUrl), carol: await joinCall(C, meetingUrl) };
      const before = await waitForAgreement('all three', [A.page, B.page, C.page], 3);
      await waitUntil('carol decrypts both others', async () => {
        const st = await e2eeState(C.page);
        return Object.values(st.sframe.byMid).filter((m) => m.decrypted > 20).length >= 4;
      });

      // Carol's page plays a client that ignores its removal and keeps its old keys: its peer
      // connection, its workers and their keys stay (nothing of the page's own teardown runs).
      await C.page.evaluate(() => {
        window.__sealroom.pc.close = () => {};
        Worker.prototype.terminate = function () {};
        const post = Worker.prototype.postMessage;
        Worker.prototype.postMessage = function (m, ...rest) {
          if (m && m.type === 'stop') return undefined;
          return post.call(this, m, ...rest);
        };
      });
      for (const p of [A.page, B.page, C.page]) await startE2eeSampler(p);
      await new Promise((r) => setTimeout(r, 600));
      const removeButton = A.page.locator(`[data-testid=participant][data-participant="${ids.carol}"]`).getByTestId('remove-button');
      await removeButton.evaluate((btn) => btn.addEventListener('click', () => (window.__removeClickedAt = Date.now()), { capture: true, once: true }));
      await removeButton.click();
      const clickedAt = await A.page.evaluate(() => window.__removeClickedAt);
      await refusal(C.page, 'removed_by_host').waitFor();
      const after = await waitForAgreement('admin and bob after the removal', [A.page, B.page], 2, { after: before.epoch });
      assert.notEqual(after.code, before.code);
      // Admin and bob decrypt each other's frames of the new epoch.
      await waitUntil('new-epoch frames decrypt', async () => {
        const [a, b] = await Promise.all([e2eeState(A.page), e2eeState(B.page)]);
        return [a, b].every((s) => Object.values(s.sframe.byMid).some((m) => m.epoch === after.epoch));
      });
      await new Promise((r) => setTimeout(r, 2000));
      const [sa, sb, sc] = await Promise.all([stopE2eeSampler(A.page), stopE2eeSampler(B.page), stopE2eeSampler(C.page)]);

      // When admin and bob processed the removal commit (their MLS epoch moved).
      const commitAt = (samples) => samples.find((s) => s.epoch !== null && s.epoch > before.epoch)?.t ?? null;
      const firstNewFrame = (samples) => samples.find((s) => s.frameEpochs.includes(after.epoch))?.t ?? null;
      const cA = commitAt(sa);
      const cB = commitAt(sb);
      assert.ok(cA !== null && cB !== null, 'admin and bob moved to the new epoch');
      const firstCommit = Math.min(cA, cB);
      // Carol: when her decrypt counter last grew, and that it never grows after the commit.
      let lastGrowth = null;
      for (let i = 1; i < sc.length; i++) if (sc[i].decrypted > sc[i - 1].decrypted) lastGrowth = sc[i].t;
      const grewBefore = sc.filter((s) => s.t <= clickedAt);
      assert.ok(grewBefore.length > 5 && grewBefore[grewBefore.length - 1].decrypted > grewBefore[0].decrypted, 'carol was decrypting right before the removal');
      assert.ok(lastGrowth !== null);
      // The worker reports its counts every 250 ms: a frame decrypted before the commit can show up that much later.
      const REPORT_LAG_MS = 300;
      assert.ok(lastGrowth <= firstCommit + REPORT_LAG_MS, `carol's decrypt counter grew ${lastGrowth - firstCommit} ms after the others' commit`);
      const carolEpochs = new Set(sc.flatMap((s) => s.frameEpochs));
      assert.ok(!carolEpochs.has(after.epoch), `carol never decrypted a frame of epoch ${after.epoch} (saw ${[...carolEpochs]})`);
      const finalC = await e2eeState(C.page);
      assert.ok(finalC.epoch === null || finalC.epoch < after.epoch, `carol's MLS state never reached the new epoch (${finalC.epoch})`);
      log(
        `removal: click → carol's receiver stopped decrypting ${lastGrowth - clickedAt} ms; click → commit processed by admin ${cA - clickedAt} ms, bob ${cB - clickedAt} ms; ` +
          `click → first new-epoch frame decrypted at admin ${firstNewFrame(sa) - clickedAt} ms, bob ${firstNewFrame(sb) - clickedAt} ms; carol's decrypt counter after the commit: ${sc[sc.length - 1].decrypted - (sc.find((s) => s.t >= firstCommit + REPORT_LAG_MS)?.decrypted ?? NaN)} more frames`,
      );
      t.diagnostic(`removal: click → removed page stops decrypting ${lastGrowth - clickedAt} ms; click → others' commit ${firstCommit - clickedAt} ms`);
      await assertDecodesAll('admin (after removal)', A.page, { bob: ids.bob }, 1500);
      await assertDecodesAll('bob (after removal)', B.page, { admin: ids.admin }, 1500);
      assertClean(A, B);
    },
    { deadlineMs: TIMEOUT_MS - 10_000 },
  );
});

test('without keys: a browser whose transform worker gets no key decodes < 5 % of what it receives and warns', { timeout: TIMEOUT_MS }, async () => {
  await withResources(
    async (res) => {
      const { users, meetingUrl } = await setupCall(res, ['bob']);
      const { admin: A, bob: B } = users;
      // The test switch: bob's MLS worker joins the group but never gives his transform worker a key.
      await B.page.addInitScript(() => {
        window.__sealroomTestFlags = { withholdKeys: true };
      });
      const ids = { admin: await joinCall(A, meetingUrl), bob: await joinCall(B, meetingUrl) };
      await waitForAgreement('admin and bob', [A.page, B.page], 2);
      assert.equal((await e2eeState(B.page)).status.keysWithheld, true);
      await waitUntil('admin video arrives at bob', async () => (await videoDecodeRatio(B.page)).packets > 200, { timeoutMs: 15_000 });
      // Video frames that reached bob's transform worker (what the depacketiser assembled): in
      // Chromium 156 getStats' framesReceived counts only frames the transform passed on, so the
      // worker's count is the denominator when framesReceived stays 0.
      const videoMids = new Set((await inbound(B.page)).streams.filter((x) => x.kind === 'video').map((x) => x.mid));
      const atTransform = (s) => Object.entries(s.sframe.byMid).filter(([mid]) => videoMids.has(mid)).reduce((n, [, m]) => n + m.received, 0);
      const r0 = await videoDecodeRatio(B.page);
      const arrived0 = atTransform(await e2eeState(B.page));
      await new Promise((r) => setTimeout(r, 4000));
      const r1 = await videoDecodeRatio(B.page);
      const received = r1.received - r0.received;
      const decoded = r1.decoded - r0.decoded;
      const packets = r1.packets - r0.packets;
      const st = await e2eeState(B.page);
      const failed = Object.values(st.sframe.byLeaf).reduce((n, l) => n + Object.values(l.failed).reduce((a, b) => a + b, 0), 0);
      const arrived = atTransform(st);
      const denominator = Math.max(r1.received, arrived);
      const ratio = r1.decoded / Math.max(denominator, 1);
      log(
        `without keys: bob decodes ${r1.decoded} of ${denominator} video frames (${(100 * ratio).toFixed(2)} %; getStats framesReceived ${r1.received}, frames at the transform ${arrived}); ` +
          `in the last 4 s: ${packets} video packets, ${arrived - arrived0} frames at the transform, framesReceived +${received}, framesDecoded +${decoded}; SFrame dropped ${failed} frames ${JSON.stringify(st.sframe.byLeaf)}; PLI sent ${r1.pli}`,
      );
      // Video keeps flowing through the window (so the ratio below is about frames that came):
      // at least 10 packets and 5 frames a second. Not a throughput check: the sender's rate
      // follows its estimate, which on a loaded CI machine falls (93 packets in 4 s once).
      assert.ok(packets > 40, `video keeps arriving at bob (${packets} packets in 4 s)`);
      assert.ok(arrived - arrived0 > 20, `video frames keep reaching bob's transform worker (${arrived - arrived0} in 4 s)`);
      assert.ok(arrived > 50, `video frames reach bob's transform worker (${arrived})`);
      assert.equal(decryptedTotal(st), 0, 'nothing decrypts without a key');
      assert.ok(failed > 50, 'every frame is dropped and counted');
      assert.ok(ratio < 0.05, `decoded/received ${r1.decoded}/${denominator} (limit 5 %)`);
      // The security warning: admin sends, nothing decrypts for 2 s.
      await waitUntil('bob warns that admin\'s media does not decrypt', async () => (await tid(B.page, 'e2ee-warning').allTextContents()).some((w) => /Administrator \(admin.*\) sends, but nothing has decrypted for 2 seconds/.test(w)));
      assert.equal(await tile(B.page, ids.admin).getByTestId('tile-identity').getAttribute('data-stalled'), 'true');
      // And bob sends nothing: admin receives none of his frames.
      const a = await e2eeState(A.page);
      const bobLeaf = a.status.members.find((m) => !m.self).leaf;
      assert.equal(a.sframe.byLeaf[String(bobLeaf)]?.decrypted ?? 0, 0, 'nothing of bob decrypts at admin');
      assert.ok(st.sframe.sendDropped > 50, `bob's sender drops its frames (${st.sframe.sendDropped})`);
      const snap = await inbound(A.page);
      log(`admin's view of bob: camera ${JSON.stringify(streamOf(snap, ids.bob, 'camera') ?? null)}`);
      assertClean(A, B);
    },
    { deadlineMs: TIMEOUT_MS - 10_000 },
  );
});

test('chat: MLS application messages between two browsers, shown as text', { timeout: TIMEOUT_MS }, async () => {
  await withResources(
    async (res) => {
      const { users, meetingUrl } = await setupCall(res, ['bob']);
      const { admin: A, bob: B } = users;
      await joinCall(A, meetingUrl);
      await joinCall(B, meetingUrl);
      await waitForAgreement('admin and bob', [A.page, B.page], 2);
      const markup = 'Hello <b>Bob</b> & <img src=x onerror=alert(1)> — ünïcödé ✓';
      await tid(A.page, 'chat-input').fill(markup);
      await tid(A.page, 'chat-send').click();
      const fromAdmin = B.page.locator('[data-testid=chat-message][data-self=false]');
      await fromAdmin.first().waitFor();
      assert.equal(await fromAdmin.first().getByTestId('chat-text').textContent(), markup, 'the text arrives exactly, as text');
      assert.equal(await B.page.locator('[data-testid=chat-log] b, [data-testid=chat-log] img').count(), 0, 'no markup reached the DOM');
      assert.match(await fromAdmin.first().textContent(), /^Administrator: /, 'the sender is named from its credential');
      await A.page.locator('[data-testid=chat-message][data-self=true][data-state=sent]').waitFor();

      // Bob answers with the longest message allowed (4000 characters, Enter sends).
      const long = `${'x'.repeat(3990)}-end-12345`.slice(0, 4000);
      await tid(B.page, 'chat-input').fill(long);
      await tid(B.page, 'chat-input').press('Enter');
      const fromBob = A.page.locator('[data-testid=chat-message][data-self=false]');
      await fromBob.first().waitFor();
      assert.equal((await fromBob.first().getByTestId('chat-text').textContent()).length, 4000);
      // More than 4000 characters cannot be typed (maxlength) nor sent.
      assert.equal(await tid(B.page, 'chat-input').getAttribute('maxlength'), '4000');
      const refused = await B.page.evaluate(() => window.__sealroom.e2ee.chat.length);
      assert.equal(refused, 2);
      const sa = await e2eeState(A.page);
      log(`chat: admin's log ${JSON.stringify(sa.chat.map((c) => ({ self: c.self, state: c.state, epoch: c.epoch, len: c.text.length })))}`);
      assertClean(A, B);
    },
    { deadlineMs: TIMEOUT_MS - 10_000 },
  );
});

test('camera off and on, and screen share: every source stays encrypted and decodes', { timeout: TIMEOUT_MS }, async () => {
  await withResources(
    async (res) => {
      const { users, meetingUrl } = await setupCall(res, ['bob']);
      const { admin: A, bob: B } = users;
      const ids = { admin: await joinCall(A, meetingUrl), bob: await joinCall(B, meetingUrl) };
      await waitForAgreement('admin and bob', [A.page, B.page], 2);
      await assertDecodesAll('admin', A.page, { bob: ids.bob }, 1000);

      // Bob's camera off, then on again: admin decodes it again (the same KID context, counters go on).
      await tid(B.page, 'camera-button').click();
      await tile(A.page, ids.bob).locator('[data-testid=tile-state][data-video-muted=true]').waitFor();
      await new Promise((r) => setTimeout(r, 1000));
      const v0 = streamOf(await inbound(A.page), ids.bob, 'camera').framesDecoded;
      await tid(B.page, 'camera-button').click();
      await tile(A.page, ids.bob).locator('[data-testid=tile-state][data-video-muted=false]').waitFor();
      await waitUntil('bob video decodes at admin again', async () => streamOf(await inbound(A.page), ids.bob, 'camera').framesDecoded > v0 + 20);

      // Admin shares the screen: bob decodes it, and its frames carry the screen context (2).
      await tid(A.page, 'screen-button').click();
      await waitUntil('share started', async () => (await tid(A.page, 'screen-button').getAttribute('data-sharing')) === 'true');
      const scr = await waitUntil('bob decodes admin\'s screen', async () => {
        const st = streamOf(await inbound(B.page), ids.admin, 'screen');
        return st && st.framesDecoded > 10 ? st : null;
      });
      // (The workers report their counts every 250 ms: read them after that.)
      await new Promise((r) => setTimeout(r, 400));
      const [sa, sb] = await Promise.all([e2eeState(A.page), e2eeState(B.page)]);
      const adminLeaf = sb.status.members.find((m) => !m.self).leaf;
      assert.ok((sa.sframe.encrypted.screen ?? 0) >= scr.framesDecoded, `admin encrypted the screen frames bob decoded: ${JSON.stringify(sa.sframe.encrypted)}, ${scr.framesDecoded} decoded`);
      assert.ok(sb.sframe.byLeaf[String(adminLeaf)].sources.includes('screen'), `bob decrypts admin's screen context: ${JSON.stringify(sb.sframe.byLeaf)}`);
      const screenMid = scr.mid;
      assert.equal(sb.sframe.byMid[screenMid].source, 'screen', 'the screen tile is labelled from the KID');
      assert.ok(sb.sframe.byMid[screenMid].decrypted >= scr.framesDecoded, `every decoded screen frame was decrypted (${sb.sframe.byMid[screenMid].decrypted} ≥ ${scr.framesDecoded})`);
      log(`screen: admin encrypted ${JSON.stringify(sa.sframe.encrypted)}; bob decrypted per mid ${JSON.stringify(sb.sframe.byMid)}`);
      await assertDecodesAll('bob (while admin shares)', B.page, { admin: ids.admin }, 1500);
      await tid(A.page, 'screen-button').click();
      await tile(B.page, ids.admin).locator('[data-testid=tile-state][data-screen=false]').waitFor();
      if (process.env.E2E_CALL_DEBUG) log(JSON.stringify(await mediaDump(B.page)));
      assertClean(A, B);
    },
    { deadlineMs: TIMEOUT_MS - 10_000 },
  );
});
