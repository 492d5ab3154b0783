// Browsers and a native client in one call: the native client (str0m, software device,
// synthetic Opus + VP8) receives both browsers, and both browsers decode the native client's
// video and audio. Same admission path, same SFU, one MLS group: ts-mls in the browsers and
// openmls in the native client agree on epoch, security code and exporter.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { BIN, cli, cliLink, enrol, launchBrowser, log, meetingState, newUser, spawnTracked, startServer, tempDir, tid, withResources } from './lib.js';
import { assertDecodesAll, waitForAgreement, waitUntil } from './call-lib.js';

const TIMEOUT_MS = 180_000;

test('a native client and two browsers each receive the others', { timeout: TIMEOUT_MS }, async () => {
  await withResources(
    async (res) => {
      const server = await startServer(res);
      const { origin, dataDir } = server;
      const browser = await launchBrowser(res);
      const A = await newUser(res, browser, 'admin');
      await enrol(A, server.firstAdminLink(), { expectName: 'Administrator' });
      const bobAdd = await cli(dataDir, ['user', 'add', 'bob', '--role', 'member', '--display-name', 'Bob Member']);
      const botAdd = await cli(dataDir, ['user', 'add', 'bot', '--role', 'member', '--display-name', 'Native Bot']);
      const meeting = await cli(dataDir, ['meeting', 'create', '--title', 'Mixed call', '--level', 'open', '--invite', 'bob,bot', '--host', 'admin']);
      const B = await newUser(res, browser, 'bob');
      await enrol(B, cliLink(server, bobAdd.enrolment_url), { expectName: 'Bob Member', deviceName: 'Bob laptop' });

      // The native client enrols a software device from its link.
      const idFile = path.join(tempDir(res), 'bot.json');
      const enrolled = await cli(dataDir, ['client', 'enrol', cliLink(server, botAdd.enrolment_url), '--name', 'bot-1', '--identity', idFile]);
      assert.equal(enrolled.user, 'bot');

      const url = `${origin}/m/${meeting.id}`;
      const ids = {};
      for (const [label, u] of [['admin', A], ['bob', B]]) {
        await u.page.goto(url);
        await meetingState(u.page, 'admitted').waitFor();
        ids[label] = await tid(u.page, 'self-tile').getAttribute('data-participant');
      }

      // The native client joins with media and stays 12 s, then prints what it received.
      const child = spawnTracked(res, BIN, ['--json', 'client', 'join', url, '--identity', idFile, '--media', '--stay', '12']);
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      const admittedLine = await waitUntil('native client admitted', async () => out.split('\n').find((l) => l.includes('"outcome"')) ?? null, { timeoutMs: 20_000 });
      const admitted = JSON.parse(admittedLine);
      assert.equal(admitted.outcome, 'admitted', admittedLine);
      const botTile = A.page.locator('[data-testid=tile][data-user=bot]');
      await botTile.waitFor({ timeout: 15_000 });
      ids.bot = await botTile.getAttribute('data-participant');
      assert.match(await botTile.textContent(), /software device, native client/);
      // Members on the web client run code the server delivers (T9): every list says which is which.
      const clientOf = (user) => A.page.locator(`[data-testid=participant][data-user=${user}] [data-testid=client-kind]`).getAttribute('data-client');
      assert.equal(await clientOf('bot'), 'native');
      assert.equal(await clientOf('bob'), 'web');
      assert.match(await A.page.locator(`[data-testid=tile][data-participant="${ids.bob}"]`).textContent(), /passkey, web client/);

      // Both browsers decode the native client (and each other).
      await waitUntil('bob receives the bot', async () => (await B.page.locator(`[data-testid=tile][data-participant="${ids.bot}"] video[data-source=camera]`).count()) === 1);
      await new Promise((r) => setTimeout(r, 2000));
      await assertDecodesAll('admin', A.page, { bob: ids.bob, bot: ids.bot });
      await assertDecodesAll('bob', B.page, { admin: ids.admin, bot: ids.bot });
      // One three-member group: both browsers agree; the native client's record of the same
      // epoch (in its report) must carry the same security code and exporter value.
      const agreed = await waitForAgreement('browsers with the bot', [A.page, B.page], 3);
      log(`browsers: epoch ${agreed.epoch}, code ${agreed.code}, exporter check ${agreed.check}`);

      // The native client's report: frames from both browsers, per source.
      const { code } = await child.exited;
      assert.equal(code, 0, `native client exit ${code}: ${out}`);
      const reportLine = out.split('\n').find((l) => l.startsWith('{"media"'));
      assert.ok(reportLine, `no media report in: ${out}`);
      const report = JSON.parse(reportLine).media;
      log(`native client report: ${JSON.stringify(report).slice(0, 600)}`);
      const native = report.e2ee.epochs.find((e) => e.epoch === agreed.epoch);
      assert.ok(native, `the native client never reached epoch ${agreed.epoch}: ${JSON.stringify(report.e2ee.epochs)}`);
      assert.equal(native.security_code, agreed.code, 'openmls and ts-mls security codes differ');
      assert.equal(native.check_value, agreed.check, 'openmls and ts-mls exporters differ');
      assert.ok(report.e2ee.members.every((m) => m.verified), `unverified member: ${JSON.stringify(report.e2ee.members)}`);
      assert.equal(report.e2ee.dropped.auth_failed, 0);
      for (const [name, id] of [['admin', ids.admin], ['bob', ids.bob]]) {
        const r = report.remote.find((x) => x.participant_id === id);
        assert.ok(r, `native client received nothing from ${name}: ${reportLine}`);
        for (const source of ['camera', 'microphone']) {
          const s = r.sources.find((x) => x.source === source);
          assert.ok(s && s.frames > 10, `native client got ${s?.frames ?? 0} ${source} frames from ${name}`);
        }
      }
      fs.writeFileSync(path.join(tempDir(res), 'report.json'), reportLine);
    },
    { deadlineMs: TIMEOUT_MS - 10_000 },
  );
});
