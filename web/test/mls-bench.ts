// Times add and remove commits (creation by the committer, processing by another member, and the
// newcomer's join) at 10, 50 and 100 members, in Node. Not part of `npm test`:
//
//   npm --prefix web run bench:mls            (MLS_BENCH_SIZES=10,50,100 MLS_BENCH_ROUNDS=5)

import { Member } from '../src/e2ee/mls';
import { TestServer } from './server';

const sizes = (process.env['MLS_BENCH_SIZES'] ?? '10,50,100').split(',').map(Number);
const rounds = Number(process.env['MLS_BENCH_ROUNDS'] ?? '5');

async function newMember(server: TestServer, n: number): Promise<{ m: Member; kp: Uint8Array }> {
  const m = await Member.create({ serverId: server.serverId, meetingId: server.meetingId, serverKey: server.publicKey, requireVerified: true });
  const id = await server.bind(m.signaturePublicKey, { user_id: `u-${n}`, device_id: `d-${n}` });
  return { m, kp: await m.keyPackage(id, Date.now() / 1000) };
}

async function time<T>(f: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await f();
  return [r, performance.now() - t0];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

const fmt = (ms: number): string => `${ms.toFixed(1).padStart(7)} ms`;

async function bench(n: number): Promise<void> {
  const server = await TestServer.create();
  const a = await newMember(server, 0);
  const b = await newMember(server, 1);
  await a.m.createGroup('internal', 1);
  // Fill the group: one commit adds everyone; only b joins for real (the others stay silent).
  let next = 2;
  const props: Uint8Array[] = [await server.proposeAdd({ groupId: a.m.groupId, epoch: a.m.epoch }, b.kp)];
  for (; next < n; next++) props.push(await server.proposeAdd({ groupId: a.m.groupId, epoch: a.m.epoch }, (await newMember(server, next)).kp));
  for (const p of props) await a.m.handleHandshake(p);
  const fill = await a.m.commitPending();
  await a.m.handleHandshake(fill.commit);
  await b.m.joinFromWelcome(fill.welcome as Uint8Array, { level: 'internal' });

  const t = { addCreate: [] as number[], addProcess: [] as number[], join: [] as number[], removeCreate: [] as number[], removeProcess: [] as number[] };
  for (let r = 0; r < rounds; r++) {
    // Add one member (group grows to n + 1) ...
    const c = await newMember(server, next++);
    const prop = await server.proposeAdd({ groupId: a.m.groupId, epoch: a.m.epoch }, c.kp);
    await a.m.handleHandshake(prop);
    await b.m.handleHandshake(prop);
    const [add, tAdd] = await time(() => a.m.commitPending());
    t.addCreate.push(tAdd);
    t.addProcess.push((await time(() => b.m.handleHandshake(add.commit)))[1]);
    await a.m.handleHandshake(add.commit);
    t.join.push((await time(() => c.m.joinFromWelcome(add.welcome as Uint8Array, { level: 'internal' })))[1]);
    // ... and remove it again (back to n).
    const rprop = await server.proposeRemove({ groupId: a.m.groupId, epoch: a.m.epoch }, c.m.ownLeafIndex);
    await a.m.handleHandshake(rprop);
    await b.m.handleHandshake(rprop);
    const [rem, tRem] = await time(() => a.m.commitPending());
    t.removeCreate.push(tRem);
    t.removeProcess.push((await time(() => b.m.handleHandshake(rem.commit)))[1]);
    await a.m.handleHandshake(rem.commit);
  }
  console.log(
    `n=${String(n).padStart(3)}  add: create ${fmt(median(t.addCreate))}  process ${fmt(median(t.addProcess))}  join ${fmt(median(t.join))}` +
      `   remove: create ${fmt(median(t.removeCreate))}  process ${fmt(median(t.removeProcess))}   (median of ${rounds})`,
  );
}

console.log(`ts-mls 1.6.4, MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, Node ${process.version}, our checks included`);
for (const n of sizes) await bench(n);
