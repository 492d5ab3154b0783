// Reconnect grace: in a three-way call of a meeting with a lobby, one browser's signaling socket
// drops the way a lost network looks to the server (closed without code 1000). Its page shows
// `reconnecting` and ends its call's media; the others see that participant as reconnecting;
// the page reconnects by itself and is admitted again WITHOUT the host admitting it from the
// lobby, with the same participant id, its microphone still muted as the user left it, and
// video decodes again both ways. Prints the time from the drop to re-admission and to the first
// new remote frame on each side.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assertClean, cli, log, meetingState, tid, withResources } from './lib.js';
import { assertDecodesAll, joinCall, setupCall, waitUntil } from './call-lib.js';

const TIMEOUT_MS = 90_000;

/** Joins a lobby meeting: waits in the lobby until `host` admits; returns the participant id. */
async function joinThroughLobby(u, host, meetingUrl) {
  await u.page.goto(meetingUrl);
  await meetingState(u.page, 'lobby').waitFor();
  await host.page.locator(`[data-testid=lobby-entry][data-user=${u.label}]`).getByTestId('admit-button').click();
  await meetingState(u.page, 'admitted').waitFor();
  await tid(u.page, 'self-tile').waitFor();
  return tid(u.page, 'self-tile').getAttribute('data-participant');
}

/**
 * Starts an in-page recorder: DOM marks `{t, what, ...}` (the meeting state and its live text;
 * whether the tile of `watchId` shows it as away; any lobby entry), and every 50 ms the video
 * frames decoded per participant `{t, gen, frames: {id: n}}`, where `gen` counts the peer
 * connections (a resumed call has a new one).
 */
async function startRecorder(page, watchId) {
  await page.evaluate((id) => {
    const rec = { marks: [], samples: [] };
    window.__reconnectRec = rec;
    const mark = (what, extra) => rec.marks.push({ t: Date.now(), what, ...extra });
    let lastState = null;
    let lastAway = null;
    let lobbySeen = false;
    const check = () => {
      const st = document.querySelector('[data-testid=meeting-state]');
      const state = st?.dataset.state ?? null;
      if (state !== lastState) {
        lastState = state;
        mark('state', { state, live: st?.closest('[aria-live]')?.textContent ?? null });
      }
      if (id) {
        const tile = document.querySelector(`[data-testid=tile][data-participant="${id}"]`);
        const away = tile ? (tile.dataset.away ?? null) : 'no tile';
        if (away !== lastAway) {
          lastAway = away;
          mark('tile', {
            away,
            presence: tile?.querySelector('[data-testid=tile-presence]:not([hidden])')?.textContent ?? null,
            quality: tile?.querySelector('[data-testid=tile-quality]')?.textContent ?? null,
            rosterBadge: document.querySelector(`[data-testid=participant][data-participant="${id}"] [data-testid=participant-away]`)?.textContent ?? null,
          });
        }
      }
      if (!lobbySeen && document.querySelector('[data-testid=lobby-entry]')) {
        lobbySeen = true;
        mark('lobby-entry', { text: document.querySelector('[data-testid=lobby-entry]').textContent });
      }
    };
    rec.observer = new MutationObserver(check);
    rec.observer.observe(document.body, { childList: true, subtree: true, attributes: true, characterData: true });
    check();
    let gen = 0;
    let lastPc = null;
    let busy = false;
    rec.timer = setInterval(async () => {
      if (busy) return;
      busy = true;
      try {
        const s = window.__sealroom;
        if (!s || s.state === 'closed') return;
        if (s.pc !== lastPc) {
          lastPc = s.pc;
          gen += 1;
        }
        const report = await s.pc.getStats();
        const byMid = new Map(s.tracks.map((t) => [t.mid, t]));
        const frames = {};
        report.forEach((r) => {
          if (r.type !== 'inbound-rtp' || r.kind !== 'video') return;
          const t = byMid.get(r.mid);
          if (!t || t.source !== 'camera') return;
          frames[t.participant_id] = (frames[t.participant_id] ?? 0) + (r.framesDecoded ?? 0);
        });
        rec.samples.push({ t: Date.now(), gen, frames });
      } catch {
        // A peer connection closing under getStats: the next sample tells.
      } finally {
        busy = false;
      }
    }, 50);
  }, watchId);
}

async function stopRecorder(page) {
  return page.evaluate(() => {
    const rec = window.__reconnectRec;
    clearInterval(rec.timer);
    rec.observer.disconnect();
    return { marks: rec.marks, samples: rec.samples };
  });
}

/** The first sample after `since` in which `id`'s decoded video frames grew (or, on a new peer connection, are above 0). */
function firstNewFrame(samples, id, since) {
  for (let i = 1; i < samples.length; i++) {
    const [a, b] = [samples[i - 1], samples[i]];
    if (b.t <= since) continue;
    const now = b.frames[id] ?? 0;
    const before = a.gen === b.gen ? (a.frames[id] ?? 0) : 0;
    if (now > before) return b.t;
  }
  return null;
}

test('reconnect grace: a dropped signaling socket comes back admitted, past the lobby, with the same participant id, and media flows again both ways', { timeout: TIMEOUT_MS }, async (t) => {
  await withResources(
    async (res) => {
      const started = Date.now();
      const { server, users, meeting, meetingUrl } = await setupCall(res, ['bob', 'carol'], 'open', { lobby: true });
      const { admin: A, bob: B, carol: C } = users;
      const ids = { admin: await joinCall(A, meetingUrl) };
      ids.bob = await joinThroughLobby(B, A, meetingUrl);
      ids.carol = await joinThroughLobby(C, A, meetingUrl);
      await assertDecodesAll('bob', B.page, { admin: ids.admin, carol: ids.carol }, 1000);
      await assertDecodesAll('admin', A.page, { bob: ids.bob }, 1000);
      await assertDecodesAll('carol', C.page, { bob: ids.bob }, 1000);
      assert.equal(await tid(A.page, 'lobby-entry').count(), 0, 'nobody waits in the lobby before the drop');
      // Bob mutes his microphone: the resumed call must not turn it back on.
      await tid(B.page, 'mute-button').click();
      await waitUntil('bob muted', async () => (await tid(B.page, 'mute-button').getAttribute('data-muted')) === 'true');

      // --- The drop.
      await Promise.all([startRecorder(A.page, ids.bob), startRecorder(C.page, ids.bob), startRecorder(B.page, null)]);
      const dropAt = await B.page.evaluate(() => {
        const at = Date.now();
        window.__sealroom.dropSignaling();
        return at;
      });

      // --- Bob's page reconnects by itself; nobody touches the lobby.
      await waitUntil(
        'bob admitted again after reconnecting',
        async () => {
          const marks = await B.page.evaluate(() => window.__reconnectRec.marks);
          const i = marks.findIndex((m) => m.state === 'reconnecting');
          return i >= 0 && marks.slice(i + 1).some((m) => m.state === 'admitted');
        },
        { timeoutMs: 15_000, everyMs: 50 },
      );
      assert.equal(await tid(B.page, 'self-tile').getAttribute('data-participant'), ids.bob, 'bob comes back with the same participant id');
      // The new call started with the microphone still muted: nothing on the audio sender (the
      // camera's sender has its track once the devices are open), and the others are told.
      const senders = await waitUntil('bob’s resumed call opened its devices', async () =>
        B.page.evaluate(() => {
          const kinds = window.__sealroom.pc.getSenders().map((x) => x.track?.kind ?? null);
          return kinds.includes('video') ? kinds : null;
        }),
      );
      assert.ok(!senders.includes('audio'), `bob’s resumed call sends no audio track: ${JSON.stringify(senders)}`);
      assert.equal(await tid(B.page, 'mute-button').getAttribute('data-muted'), 'true', 'bob’s microphone is still muted after the reconnect');
      await A.page.locator(`[data-testid=tile][data-participant="${ids.bob}"] [data-testid=tile-state][data-audio-muted=true]`).waitFor();
      await tid(B.page, 'mute-button').click();
      await waitUntil('bob unmuted', async () => (await tid(B.page, 'mute-button').getAttribute('data-muted')) === 'false');
      await assertDecodesAll('bob (resumed)', B.page, { admin: ids.admin, carol: ids.carol }, 1500);
      await assertDecodesAll('admin (bob resumed)', A.page, { bob: ids.bob }, 1500);
      await assertDecodesAll('carol (bob resumed)', C.page, { bob: ids.bob }, 1500);
      const [recA, recB, recC] = await Promise.all([stopRecorder(A.page), stopRecorder(B.page), stopRecorder(C.page)]);

      // Bob's page: admitted → reconnecting (said in the live region) → admitted, never the lobby.
      const statesB = recB.marks.filter((m) => m.what === 'state');
      assert.deepEqual(
        statesB.map((m) => m.state),
        ['admitted', 'reconnecting', 'admitted'],
        `bob's page states after the drop: ${JSON.stringify(statesB)}`,
      );
      const reconnectingB = statesB[1];
      const readmittedAt = statesB[2].t;
      assert.match(reconnectingB.live, /reconnecting/i, 'the live status region says reconnecting');

      // The others: bob's tile and roster entry said "reconnecting" (text), then not any more.
      for (const [label, rec] of [['admin', recA], ['carol', recC]]) {
        const tiles = rec.marks.filter((m) => m.what === 'tile');
        const away = tiles.find((m) => m.away === 'true');
        assert.ok(away, `${label} saw bob's tile as away: ${JSON.stringify(tiles)}`);
        assert.match(away.presence ?? '', /reconnecting/i, `${label}: bob's tile says reconnecting`);
        assert.match(away.quality ?? '', /reconnecting/i, `${label}: bob's connection reads reconnecting, not poor`);
        assert.equal(away.rosterBadge, 'reconnecting', `${label}: the participant list marks bob as reconnecting`);
        assert.equal(tiles.at(-1).away, 'false', `${label}: bob's tile is back to normal: ${JSON.stringify(tiles)}`);
        assert.equal(rec.marks.filter((m) => m.what === 'state').length, 1, `${label} stayed admitted: ${JSON.stringify(rec.marks)}`);
        await tid(label === 'admin' ? A.page : C.page, 'self-tile').waitFor();
      }
      const awayAt = { admin: recA.marks.find((m) => m.away === 'true').t, carol: recC.marks.find((m) => m.away === 'true').t };
      assert.deepEqual(recA.marks.filter((m) => m.what === 'lobby-entry'), [], 'the host never saw bob (or anyone) in the lobby');
      assert.equal(await tid(A.page, 'lobby-entry').count(), 0);

      // The server's record: bob went away, then joined again as the same participant, resumed.
      const audit = await cli(server.dataDir, ['audit', 'show']);
      const subject = `meeting:${meeting.id}`;
      assert.ok(audit.some((e) => e.kind === 'participant.away' && e.subject === subject && e.detail?.participant === ids.bob), 'audit: participant.away for bob');
      const joins = audit.filter((e) => e.kind === 'join.admitted' && e.subject === subject && e.detail?.participant === ids.bob);
      assert.deepEqual(joins.map((e) => e.detail.resumed), [true], `audit: bob's only direct admission is the resumed one: ${JSON.stringify(joins)}`);
      const lobbyJoins = audit.filter((e) => e.kind === 'join.lobby' && e.subject === subject && e.detail?.participant === ids.bob);
      assert.equal(lobbyJoins.length, 1, 'audit: bob went through the lobby once (before the drop), not after it');

      // --- Timing.
      const firstAtB = { admin: firstNewFrame(recB.samples, ids.admin, readmittedAt), carol: firstNewFrame(recB.samples, ids.carol, readmittedAt) };
      const firstOfBob = { admin: firstNewFrame(recA.samples, ids.bob, readmittedAt), carol: firstNewFrame(recC.samples, ids.bob, readmittedAt) };
      for (const [k, v] of Object.entries({ ...firstAtB, ...Object.fromEntries(Object.entries(firstOfBob).map(([n, x]) => [`bob at ${n}`, x])) })) {
        assert.ok(v !== null, `a new frame (${k}) after re-admission`);
      }
      const ms = (x) => `${x - dropAt} ms`;
      const summary =
        `drop → bob's page reconnecting ${ms(reconnectingB.t)}, → bob shown reconnecting at admin ${ms(awayAt.admin)} / carol ${ms(awayAt.carol)}, ` +
        `→ re-admitted ${ms(readmittedAt)}; first new remote frame at bob: from admin ${ms(firstAtB.admin)}, from carol ${ms(firstAtB.carol)}; ` +
        `first new frame of bob at admin ${ms(firstOfBob.admin)}, at carol ${ms(firstOfBob.carol)}`;
      log(`reconnect: ${summary}`);
      t.diagnostic(`reconnect timing: ${summary}`);

      assertClean(A, B, C);
      log(`reconnect test body took ${Date.now() - started} ms`);
    },
    { deadlineMs: TIMEOUT_MS - 10_000 },
  );
});

// A signaling connection that dies silently (nothing arrives any more and nothing closes it, as
// when a network goes away) is noticed by the page from its unanswered pings, which then
// reconnects and is admitted again as the same participant. Playwright sits between the page
// and the server and stops passing the server's messages on; the test shortens the page's ping
// interval and pong timeout (20 s and 10 s otherwise) with its test flags.
test('a silent signaling connection is noticed from unanswered pings: the page reconnects and is admitted again', { timeout: TIMEOUT_MS }, async (t) => {
  await withResources(
    async (res) => {
      const { users, meetingUrl } = await setupCall(res, ['bob']);
      const { admin, bob } = users;
      await bob.page.addInitScript(() => {
        window.__sealroomTestFlags = { pingIntervalMs: 500, pongTimeoutMs: 1000 };
      });
      // Each routed socket is a link; a dead link passes nothing either way, not even the
      // page's close (the server still has the socket open, as with a lost network).
      const links = [];
      await bob.page.routeWebSocket(/\/api\/ws$/, (ws) => {
        const link = { dead: false };
        links.push(link);
        const server = ws.connectToServer();
        server.onMessage((m) => {
          if (!link.dead) ws.send(m);
        });
        ws.onMessage((m) => {
          if (!link.dead) server.send(m);
        });
        ws.onClose((code, reason) => {
          if (!link.dead) server.close({ code, reason });
        });
      });
      await joinCall(admin, meetingUrl);
      const bobId = await joinCall(bob, meetingUrl);
      await admin.page.locator('[data-testid=participant][data-user=bob]').waitFor();
      assert.equal(links.length, 1);

      links[0].dead = true;
      const t0 = Date.now();
      await meetingState(bob.page, 'reconnecting').waitFor();
      const noticed = Date.now() - t0;
      await meetingState(bob.page, 'admitted').waitFor();
      const readmitted = Date.now() - t0;
      assert.ok(links.length >= 2, 'the page opened a new socket');
      // The new socket took the place of the one the server still had: bob is listed once.
      await admin.page.locator('[data-testid=participant][data-user=bob]').waitFor();
      assert.equal(await admin.page.locator('[data-testid=participant][data-user=bob]').count(), 1);
      assert.equal(await tid(bob.page, 'self-tile').getAttribute('data-participant'), bobId, 'the same participant');
      // Without the pong timeout the page never notices here (the connection stays open).
      const summary = `silence → bob's page reconnecting ${noticed} ms, → re-admitted ${readmitted} ms`;
      log(summary);
      t.diagnostic(summary);
      assertClean(admin, bob);
    },
    { deadlineMs: TIMEOUT_MS - 10_000 },
  );
});
