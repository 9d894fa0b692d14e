// Thin wrapper around the npm `ws` client with bounded waits:
//
//   const c = await WsClient.connect(port);
//   c.ws.send(buf);
//   const m = await c.next();          // { data: Buffer, isBinary }
//   const { code, reason } = await c.closeAndWait(1000, 'bye');

import WebSocket from 'ws';
import { IO_TIMEOUT_MS } from './raw.js';

export class WsClient {
  static connect(port, { path = '/', timeoutMs = IO_TIMEOUT_MS, options = {} } = {}) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`, { handshakeTimeout: timeoutMs, ...options });
      const c = new WsClient(ws);
      const timer = setTimeout(() => { ws.terminate(); reject(new Error(`ws connect timed out after ${timeoutMs} ms`)); }, timeoutMs);
      ws.once('open', () => { clearTimeout(timer); resolve(c); });
      ws.once('error', (err) => { clearTimeout(timer); reject(new Error(`ws connect: ${err.message}`)); });
    });
  }

  constructor(ws) {
    this.ws = ws;
    this.queue = [];
    this.waiters = [];
    this.pongs = [];
    this.errors = [];
    this.closeInfo = null;
    ws.on('message', (data, isBinary) => { this.queue.push({ data, isBinary }); this.wake(); });
    ws.on('pong', (data) => { this.pongs.push(data); this.wake(); });
    ws.on('error', (err) => { this.errors.push(err); this.wake(); });
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString('utf8') };
        this.wake();
        resolve(this.closeInfo);
      });
    });
  }

  wake() {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }

  async waitFor(what, check, timeoutMs = IO_TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = check();
      if (v !== undefined) return v;
      if (this.closeInfo) {
        throw new Error(`connection closed (code ${this.closeInfo.code}, reason ${JSON.stringify(this.closeInfo.reason)}) ` +
          `while waiting for ${what}${this.errors.length ? `; error: ${this.errors[0].message}` : ''}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
  }

  next(timeoutMs = IO_TIMEOUT_MS) {
    return this.waitFor('a message', () => (this.queue.length ? this.queue.shift() : undefined), timeoutMs);
  }

  nextPong(timeoutMs = IO_TIMEOUT_MS) {
    return this.waitFor('a pong', () => (this.pongs.length ? this.pongs.shift() : undefined), timeoutMs);
  }

  send(data, opts = {}) {
    return new Promise((resolve, reject) => {
      this.ws.send(data, opts, (err) => (err ? reject(err) : resolve()));
    });
  }

  // Waits for the close event; rejects after the timeout.
  async waitClose(timeoutMs = IO_TIMEOUT_MS) {
    let t;
    const timeout = new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`no close within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      return await Promise.race([this.closed, timeout]);
    } finally {
      clearTimeout(t);
    }
  }

  async closeAndWait(code, reason, timeoutMs = IO_TIMEOUT_MS) {
    this.ws.close(code, reason);
    return this.waitClose(timeoutMs);
  }

  terminate() {
    this.ws.terminate();
  }
}
