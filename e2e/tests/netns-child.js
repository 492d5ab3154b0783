// One browser participant of network.test.js, run inside a client network namespace
// (`ip netns exec sr-a node netns-child.js`). It enrols from a link, opens the meeting and
// prints one line `RESULT {json}` on stdout with what the page showed. Input: env CHILD_JOB
// (JSON: label, origin, link, meetingId, resolveTo, chromiumArgs, home).

import {
  apiFetch,
  enrol,
  launchBrowser,
  log,
  newUser,
  tid,
  withResources,
  withTimeout,
} from './lib.js';

const job = JSON.parse(process.env.CHILD_JOB);

async function run() {
  return withResources(async (res) => {
    const browser = await launchBrowser(res, {
      args: [`--host-resolver-rules=MAP localhost ${job.resolveTo}`, ...(job.chromiumArgs ?? [])],
      // Chromium on Linux reads trusted roots from $HOME/.pki/nssdb.
      env: { ...process.env, HOME: job.home },
    });
    const user = await newUser(res, browser, job.label);
    // Let the browser see a settled network first: a change notification racing the first
    // load aborts it with net::ERR_NETWORK_CHANGED (a property of fresh namespaces, not of
    // the server). Retry that one error a few times.
    for (let i = 0; ; i++) {
      try {
        await user.page.goto(`${job.origin}/login`);
        break;
      } catch (e) {
        if (i >= 4 || !/ERR_NETWORK_CHANGED/.test(String(e))) throw e;
        log(`${job.label}: network changed during the first load; retrying`);
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    const me = await enrol(user, job.link, { deviceName: `${job.label} in ${job.ns}` });
    log(`${job.label}: enrolled as ${me.name} on ${user.page.url()}`);
    const page = user.page;
    const security = await page.evaluate(() => ({ secure: window.isSecureContext, origin: location.origin }));
    await page.goto(`${job.origin}/m/${job.meetingId}`);
    const state = page.locator('[data-testid=meeting-state][data-state=admitted], [data-testid=meeting-state][data-state=refused]');
    await state.waitFor();
    const phase = await tid(page, 'meeting-state').getAttribute('data-state');
    const out = { label: job.label, me, security, phase };
    if (phase === 'refused') {
      out.reason = await tid(page, 'refusal-reason').getAttribute('data-reason');
      out.message = await tid(page, 'refusal-reason').textContent();
    } else {
      await page.locator(`[data-testid=participant][data-user=${me.name}]`).waitFor();
      out.participants = await page.$$eval('[data-testid=participant]', (els) =>
        els.map((e) => ({ user: e.dataset.user, text: e.textContent })),
      );
    }
    out.apiMe = (await apiFetch(page, 'GET', '/api/me')).status;
    out.problems = user.problems;
    return out;
  });
}

try {
  const out = await withTimeout(run(), 75_000, `${job.label} child`);
  process.stdout.write(`RESULT ${JSON.stringify(out)}\n`);
  process.exit(0);
} catch (e) {
  process.stdout.write(`RESULT ${JSON.stringify({ label: job.label, error: String(e?.stack ?? e) })}\n`);
  process.exit(1);
}
