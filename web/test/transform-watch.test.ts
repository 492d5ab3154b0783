// The frame-transform watchdog (call/transform-watch.ts): when it restarts a transform, and when
// it must leave one alone.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MAX_RESTARTS, STUCK_AFTER_MS, TransformWatch, type TransformSample } from '../src/call/transform-watch';

/** Feeds one sample a second for `seconds`, each from `at(second)`; returns every verdict with its second. */
function run(watch: TransformWatch, seconds: number, at: (s: number) => TransformSample[]) {
  const out: { second: number; key: string; action: string }[] = [];
  for (let s = 0; s <= seconds; s++) {
    for (const v of watch.sample(s * 1000, at(s))) out.push({ second: s, key: v.key, action: v.action });
  }
  return out;
}

describe('transform watch', () => {
  test('payload that never reaches the worker restarts the transform after the wait', () => {
    const verdicts = run(new TransformWatch(), 5, (s) => [{ key: 'a', input: 1000 * s, workerFrames: 0 }]);
    // Seen at 0 s, its payload grows at every later look: STUCK_AFTER_MS after the first look.
    assert.deepEqual(verdicts, [{ second: STUCK_AFTER_MS / 1000, key: 'a', action: 'restart' }]);
  });

  test('frames at the worker, padding only, or silence are not stuck', () => {
    const verdicts = run(new TransformWatch(), 20, (s) => [
      { key: 'flowing', input: 1000 * s, workerFrames: 10 * s + 1 },
      { key: 'padding', input: 0, workerFrames: 0 },
      { key: 'quiet-every-other-second', input: 1000 * Math.floor(s / 2), workerFrames: 0 },
    ]);
    assert.deepEqual(verdicts, []);
  });

  test('frames that stop reaching the worker while input goes on are stuck, whatever came before', () => {
    // A screen sender that worked in an earlier share: its count stays at 500, its encoder runs.
    const verdicts = run(new TransformWatch(), 9, (s) => [{ key: 'send:screen', input: 15 * s, workerFrames: s < 4 ? 100 * s + 100 : 500 }]);
    // Flowing until 4 s (the count changed between 3 and 4 s), stuck from there on.
    assert.deepEqual(verdicts, [{ second: 4 + STUCK_AFTER_MS / 1000, key: 'send:screen', action: 'restart' }]);
  });

  test('a renewed sender starts its input from zero: not fed until it grows again, and its restarts count on', () => {
    const watch = new TransformWatch();
    const verdicts = run(watch, 60, (s) => {
      // Renewed after every restart: the new encoder's count restarts at 0 (its mid unknown for a second).
      const sinceRenewal = s % (STUCK_AFTER_MS / 1000 + 2);
      return [{ key: 'send:screen', input: sinceRenewal === 0 ? 0 : 15 * sinceRenewal, workerFrames: 0 }];
    });
    assert.deepEqual(
      verdicts.map((v) => v.action),
      [...Array(MAX_RESTARTS).fill('restart'), 'give_up'],
    );
  });

  test('a restart that mends it ends the watch; one that does not is retried, then given up once', () => {
    const mended = run(new TransformWatch(), 30, (s) => [{ key: 'a', input: 1000 * s, workerFrames: s > 5 ? s : 0 }]);
    assert.deepEqual(mended.map((v) => v.action), ['restart']);

    const never = run(new TransformWatch(), 60, (s) => [{ key: 'b', input: 1000 * s, workerFrames: 0 }]);
    const actions = never.map((v) => v.action);
    assert.deepEqual(actions, [...Array(MAX_RESTARTS).fill('restart'), 'give_up']);
  });

  test('a key that goes away is forgotten; coming back, it is watched afresh', () => {
    const watch = new TransformWatch();
    const first = run(watch, 4, (s) => [{ key: 'a', input: 1000 * s, workerFrames: 0 }]);
    assert.equal(first.length, 1);
    assert.deepEqual(watch.sample(5000, []), []);
    // Back with a fresh history: a full wait again before the next restart.
    const again: string[] = [];
    for (let s = 6; s <= 6 + STUCK_AFTER_MS / 1000; s++) {
      for (const v of watch.sample(s * 1000, [{ key: 'a', input: 1000 * s, workerFrames: 0 }])) again.push(`${s}:${v.action}`);
    }
    assert.deepEqual(again, [`${6 + STUCK_AFTER_MS / 1000}:restart`], 'the first of its new restarts, a full wait after it came back');
  });
});
