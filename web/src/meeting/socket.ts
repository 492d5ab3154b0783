// The signaling WebSocket: same origin `/api/ws`, JSON text frames of ClientMsg/ServerMsg,
// a ping every 20 s while open (it also keeps the session's idle timer alive).

import { MAX_WS_MESSAGE, type ClientMsg, type ServerMsg } from '../proto';
import { parseServerMsg } from './state';

const PING_INTERVAL_MS = 20_000;

export interface SocketHandlers {
  onMessage(msg: ServerMsg): void;
  onClose(ev: CloseEvent): void;
}

export class SignalingSocket {
  private ws: WebSocket | null = null;
  private pingTimer: number | null = null;
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
      this.pingTimer = window.setInterval(() => this.send({ type: 'ping' }), PING_INTERVAL_MS);
    });
    ws.addEventListener('message', (ev: MessageEvent) => {
      if (this.ws !== ws) return;
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
  }
}
