// The receiver-transform watchdog (call/transform-watch.ts): when it replaces a transform, and
// when it must leave one alone.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MAX_RESTARTS, STUCK_AFTER_MS, TransformWatch, type ReceiverSample } from '../src/call/transform-watch';

/** Feeds one sample a second for `seconds`, each from `at(second)`; returns every verdict with its second. */
function run(watch: TransformWatch, seconds: number, at: (s: number) => ReceiverSample[]) {
  const out: { second: number; mid: string; action: string }[] = [];
  for (let s = 0; s <= seconds; s++) {
    for (const v of watch.sample(s * 1000, at(s))) out.push({ second: s, mid: v.mid, action: v.action });
  }
  return out;
}

describe('transform watch', () => {
  test('payload that never reaches the worker restarts the transform after the wait', () => {
    const verdicts = run(new TransformWatch(), 5, (s) => [{ mid: 'a', bytesReceived: 1000 * s, workerFrames: 0 }]);
    // Seen at 0 s, its payload grows at every later look: STUCK_AFTER_MS after the first look.
    assert.deepEqual(verdicts, [{ second: STUCK_AFTER_MS / 1000, mid: 'a', action: 'restart' }]);
  });

  test('frames at the worker, padding only, or silence are not stuck', () => {
    const verdicts = run(new TransformWatch(), 20, (s) => [
      { mid: 'flowing', bytesReceived: 1000 * s, workerFrames: 10 * s + 1 },
      { mid: 'padding', bytesReceived: 0, workerFrames: 0 },
      { mid: 'quiet-every-other-second', bytesReceived: 1000 * Math.floor(s / 2), workerFrames: 0 },
    ]);
    assert.deepEqual(verdicts, []);
  });

  test('a restart that mends it ends the watch; one that does not is retried, then given up once', () => {
    const mended = run(new TransformWatch(), 30, (s) => [{ mid: 'a', bytesReceived: 1000 * s, workerFrames: s > 5 ? s : 0 }]);
    assert.deepEqual(mended.map((v) => v.action), ['restart']);

    const never = run(new TransformWatch(), 60, (s) => [{ mid: 'b', bytesReceived: 1000 * s, workerFrames: 0 }]);
    const actions = never.map((v) => v.action);
    assert.deepEqual(actions, [...Array(MAX_RESTARTS).fill('restart'), 'give_up']);
  });

  test('a mid that goes away is forgotten; coming back, it is watched afresh', () => {
    const watch = new TransformWatch();
    const first = run(watch, 4, (s) => [{ mid: 'a', bytesReceived: 1000 * s, workerFrames: 0 }]);
    assert.equal(first.length, 1);
    assert.deepEqual(watch.sample(5000, []), []);
    // Back with a fresh history: a full wait again before the next restart.
    const again: string[] = [];
    for (let s = 6; s <= 6 + STUCK_AFTER_MS / 1000; s++) {
      for (const v of watch.sample(s * 1000, [{ mid: 'a', bytesReceived: 1000 * s, workerFrames: 0 }])) again.push(`${s}:${v.action}`);
    }
    assert.deepEqual(again, [`${6 + STUCK_AFTER_MS / 1000}:restart`], 'the first of its new restarts, a full wait after it came back');
  });
});
