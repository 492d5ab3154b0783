// The signaling WebSocket: same origin `/api/ws`, JSON text frames of ClientMsg/ServerMsg,
// a ping every 20 s while open (it also keeps the session's idle timer alive). A ping that
// nothing answers within 10 s means the connection is gone even if the browser has not
// noticed (a lost network can leave a TCP connection looking open for minutes): the socket is
// dropped, and the page reconnects as after any drop.

import { MAX_WS_MESSAGE, type ClientMsg, type ServerMsg } from '../proto';
import { testFlags } from '../e2ee/session';
import { parseServerMsg } from './state';

const PING_INTERVAL_MS = 20_000;
const PONG_TIMEOUT_MS = 10_000;

export interface SocketHandlers {
  onMessage(msg: ServerMsg): void;
  onClose(ev: CloseEvent): void;
}

export class SignalingSocket {
  private ws: WebSocket | null = null;
  private pingTimer: number | null = null;
  private pongTimer: number | null = null;
  /** When the current socket last received anything. */
  private heardAt = 0;
  private readonly handlers: SocketHandlers;

  constructor(handlers: SocketHandlers) {
    this.handlers = handlers;
  }

  static url(): string {
    return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/api/ws`;
  }

  /** Opens a new connection (closing any previous one without reporting it). */
  open(): void {
    this.shutdown();
    const ws = new WebSocket(SignalingSocket.url());
    this.ws = ws;
    ws.addEventListener('open', () => {
      if (this.ws !== ws) return;
      const flags = testFlags();
      const interval = flags.pingIntervalMs ?? PING_INTERVAL_MS;
      const timeout = flags.pongTimeoutMs ?? PONG_TIMEOUT_MS;
      this.heardAt = performance.now();
      this.pingTimer = window.setInterval(() => this.ping(ws, timeout), interval);
    });
    ws.addEventListener('message', (ev: MessageEvent) => {
      if (this.ws !== ws) return;
      this.heardAt = performance.now();
      const msg = parseServerMsg(ev.data);
      if (msg) this.handlers.onMessage(msg);
    });
    ws.addEventListener('close', (ev: CloseEvent) => {
      if (this.ws !== ws) return;
      this.stopPing();
      this.ws = null;
      this.handlers.onClose(ev);
    });
  }

  get isOpen(): boolean {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Sends one message; false if the socket is not open. */
  send(msg: ClientMsg): boolean {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    const text = JSON.stringify(msg);
    if (text.length > MAX_WS_MESSAGE) return false;
    this.ws.send(text);
    return true;
  }

  /** Sends a ping; drops the socket if nothing at all arrives within `timeout` ms. */
  private ping(ws: WebSocket, timeout: number): void {
    if (this.ws !== ws || this.pongTimer !== null) return;
    const sentAt = performance.now();
    if (!this.send({ type: 'ping' })) return;
    this.pongTimer = window.setTimeout(() => {
      this.pongTimer = null;
      if (this.ws === ws && this.heardAt < sentAt) this.abandon(ws);
    }, timeout);
  }

  /**
   * The connection is gone: forget the socket at once (on a dead connection its close event
   * can take a minute, the closing handshake's timeout) and report a drop (code 4000).
   */
  private abandon(ws: WebSocket): void {
    this.stopPing();
    this.ws = null;
    ws.close(4000, 'no answer');
    this.handlers.onClose(new CloseEvent('close', { code: 4000, reason: 'no answer' }));
  }

  /**
   * Test hook: closes abruptly, the way a lost network looks to the server (any code but 1000
   * counts as a drop there), and reports it through `onClose` like any other close.
   */
  drop(): void {
    if (this.ws && (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING)) this.ws.close(4000, 'dropped');
  }

  /** Closes without calling `onClose` (the page is going away). */
  shutdown(): void {
    this.stopPing();
    const ws = this.ws;
    this.ws = null;
    if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) ws.close(1000);
  }

  private stopPing(): void {
    if (this.pingTimer !== null) {
      window.clearInterval(this.pingTimer);
      this.pingTimer = null;
    }
    if (this.pongTimer !== null) {
      window.clearTimeout(this.pongTimer);
      this.pongTimer = null;
    }
  }
}
