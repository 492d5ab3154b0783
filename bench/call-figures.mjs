// Figures of a three-browser call through the real server (not a test: it prints numbers).
//
//   cargo build --release -p sealroom-server --bin sealroom
//   SEALROOM_BIN=target/release/sealroom node bench/call-figures.mjs [--seconds 20]
//
// Prints: server CPU per participant (kernel accounting of the server process, utime+stime,
// over a steady window), server memory per participant (private memory, the kernel's RssAnon,
// with the call up minus before anyone joined, divided by participants; RSS growth beside it,
// which also counts the binary's code pages the call touches first), and for each participant
// the time from pressing join (navigating to the meeting page) to admission and to the first
// decoded remote frame.
// Chromium needs about one core for three pages here, so run it on an otherwise idle machine.

import fs from 'node:fs';
import {
  cli,
  cliLink,
  enrol,
  launchBrowser,
  meetingState,
  newUser,
  startServer,
  tid,
  withResources,
} from '../e2e/tests/lib.js';
import { firstFrames } from '../e2e/tests/call-lib.js';

const seconds = Number(process.argv[process.argv.indexOf('--seconds') + 1]) || 20;
const CLK_TCK = 100; // Linux USER_HZ

function cpuSeconds(pid) {
  // Fields after the command name: utime is field 14, stime 15 (1-based, whole line).
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / CLK_TCK;
}

// RSS and its private part (RssAnon: what the server allocated), KiB.
function memKiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name) => {
    const m = new RegExp(`${name}:\\s+(\\d+) kB`).exec(status);
    return m ? Number(m[1]) : NaN;
  };
  return { rss: field('VmRSS'), anon: field('RssAnon') };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

await withResources(
  async (res) => {
    const server = await startServer(res);
    const pid = server.child.pid;
    const browser = await launchBrowser(res);
    const admin = await newUser(res, browser, 'admin');
    await enrol(admin, server.firstAdminLink(), { expectName: 'Administrator' });
    const people = [admin];
    const names = ['bob', 'carol'];
    for (const name of names) {
      const added = await cli(server.dataDir, ['user', 'add', name, '--role', 'member']);
      const u = await newUser(res, browser, name);
      await enrol(u, cliLink(server, added.enrolment_url), { expectName: name });
      people.push(u);
    }
    const meeting = await cli(server.dataDir, ['meeting', 'create', '--title', 'Figures', '--level', 'open', '--invite', names.join(','), '--host', 'admin']);
    const url = `${server.origin}/m/${meeting.id}`;
    await sleep(1000);
    const memBefore = memKiB(pid);

    // The first two join; the third is timed from pressing join (navigation) to admission and
    // to the first decoded frame from each of the others.
    const ids = [];
    for (const u of people.slice(0, -1)) {
      await u.page.goto(url);
      await meetingState(u.page, 'admitted').waitFor();
      ids.push(await tid(u.page, 'self-tile').getAttribute('data-participant'));
    }
    const last = people[people.length - 1];
    const pressed = Date.now();
    await last.page.goto(url);
    const f = await firstFrames(last.page, ids, 30_000);
    const timings = [{ who: last.label, admitted: f.admitted - pressed, first: f.first - pressed, all: f.all - pressed }];
    await sleep(3000); // let simulcast and bandwidth estimation settle
    const cpu0 = cpuSeconds(pid);
    const t0 = Date.now();
    await sleep(seconds * 1000);
    const cpu = cpuSeconds(pid) - cpu0;
    const wall = (Date.now() - t0) / 1000;
    const memDuring = memKiB(pid);
    const n = people.length;

    console.log(`\nthree-browser call, ${wall.toFixed(1)} s steady window, server pid ${pid}`);
    console.log(`| figure | value |`);
    console.log(`|---|---|`);
    console.log(`| server CPU, whole call | ${((100 * cpu) / wall).toFixed(1)} % of one core |`);
    console.log(`| server CPU per participant | ${((100 * cpu) / wall / n).toFixed(2)} % of one core |`);
    const mib = (k) => (k / 1024).toFixed(1);
    console.log(`| server memory per participant (private) | ${((memDuring.anon - memBefore.anon) / n).toFixed(0)} KiB (${mib(memBefore.anon)} → ${mib(memDuring.anon)} MiB) |`);
    console.log(`| server RSS growth per participant | ${((memDuring.rss - memBefore.rss) / n).toFixed(0)} KiB (${mib(memBefore.rss)} → ${mib(memDuring.rss)} MiB) |`);
    for (const t of timings) {
      console.log(`| ${t.who} (joining third): join pressed → admitted / first remote frame / frames from both others | ${t.admitted} / ${t.first} / ${t.all} ms |`);
    }
  },
  { deadlineMs: 170_000 },
);
