// The MLS worker: one MlsSession (e2ee/mls-session.ts) per call. The page relays the delivery
// service's mls_* messages in and our messages out; the SFrame base key of each epoch goes
// straight to the transform worker over the MessagePort the page handed over at `start`, so no
// key ever reaches the page's main thread (STYLE.md "Web client": crypto runs in workers).

import { MlsSession } from './mls-session';
import type { KeyMessage, MlsCommand, MlsReport } from './protocol';

interface WorkerScope {
  addEventListener(type: 'message', listener: (ev: MessageEvent<MlsCommand>) => void): void;
  postMessage(message: MlsReport): void;
}
const scope = self as unknown as WorkerScope;

let session: MlsSession | null = null;
let keys: MessagePort | null = null;

scope.addEventListener('message', (ev) => {
  const cmd = ev.data;
  switch (cmd.type) {
    case 'start': {
      if (session !== null) return;
      keys = cmd.keys;
      const port = keys;
      session = new MlsSession(
        { meetingId: cmd.meetingId, level: cmd.level, origin: cmd.origin, withholdKeys: cmd.withholdKeys },
        {
          report: (r) => scope.postMessage(r),
          // The base key is copied into the message; our copy is the member's business.
          keys: (k: KeyMessage) => port.postMessage(k),
          setTimer: (ms, fn) => {
            const t = setTimeout(fn, ms);
            return () => clearTimeout(t);
          },
          random: () => Math.random(),
          nowSeconds: () => Date.now() / 1000,
        },
      );
      void session.start();
      return;
    }
    case 'server':
      void session?.handleServer(cmd.msg);
      return;
    case 'participants':
      void session?.participants(cmd.devices);
      return;
    case 'chat':
      void session?.chat(cmd.id, cmd.text);
      return;
    case 'stop':
      session?.stop();
      keys?.close();
      return;
  }
});
