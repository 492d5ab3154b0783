// The meeting page's state machine (meeting/state.ts): what a hello, a refusal and a dropped
// socket do to the view, and when the page asks to join.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ServerMsg } from '../src/proto';
import { CLOSE_ENDED_BY_SERVER, handleClose, handleServerMsg, initialView, type MeetingView } from '../src/meeting/state';

const meeting = { id: 'm1', title: 'Weekly', level: 'internal', locked: false, lobby: false, capacity: 50 } as const;

function admitted(): MeetingView {
  const msg: ServerMsg = { type: 'admitted', meeting, you: 'p1', host: false, participants: [] };
  return handleServerMsg(initialView(), msg).view;
}

describe('hello', () => {
  test('a live session joins', () => {
    const step = handleServerMsg(initialView(), { type: 'hello', state: 'authenticated', ended: null });
    assert.deepEqual(step.effects, [{ kind: 'send_join' }]);
    assert.equal(step.view.phase, 'connecting');
  });

  test('a reconnect stays reconnecting until the join is answered', () => {
    const dropped = handleClose(admitted(), 1006);
    assert.equal(dropped.phase, 'reconnecting');
    const step = handleServerMsg(dropped, { type: 'hello', state: 'authenticated', ended: null });
    assert.equal(step.view.phase, 'reconnecting');
    assert.deepEqual(step.effects, [{ kind: 'send_join' }]);
  });

  test('a reconnect after this device was revoked shows why and does not join', () => {
    const dropped = handleClose(admitted(), 1006);
    const message = 'This device has been revoked.';
    const step = handleServerMsg(dropped, {
      type: 'hello',
      state: 'unauthenticated',
      ended: { reason: 'device_revoked', message },
    });
    assert.deepEqual(step.effects, [], 'no join: it would be refused as not_found');
    assert.equal(step.view.phase, 'refused');
    assert.deepEqual(step.view.refusal, { reason: 'device_revoked', message });
    assert.equal(step.view.you, null);
    // The server then closes; the refusal stays on screen.
    const closed = handleClose(step.view, 1000);
    assert.equal(closed.phase, 'refused');
    assert.equal(closed.refusal?.reason, 'device_revoked');
  });

  test('an ended session on a fresh page shows session_ended', () => {
    const step = handleServerMsg(initialView(), {
      type: 'hello',
      state: 'unauthenticated',
      ended: { reason: 'session_ended', message: 'Your session has ended. Log in again.' },
    });
    assert.equal(step.view.phase, 'refused');
    assert.equal(step.view.refusal?.reason, 'session_ended');
    assert.deepEqual(step.effects, []);
  });

  test('no session at all still asks to join (and gets the one refusal for strangers)', () => {
    const step = handleServerMsg(initialView(), { type: 'hello', state: 'unauthenticated', ended: null });
    assert.deepEqual(step.effects, [{ kind: 'send_join' }]);
  });
});

describe('close', () => {
  test('a refusal by the server is not a drop', () => {
    const refused = handleServerMsg(admitted(), { type: 'refused', reason: 'device_revoked', message: 'x' }).view;
    assert.equal(handleClose(refused, CLOSE_ENDED_BY_SERVER).phase, 'refused');
  });
});
