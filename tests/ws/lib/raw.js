// A raw WebSocket client over node:net for the tests that need to put
// arbitrary bytes on the wire: the opening handshake written by hand, frames
// with any header bits (masked or not, RSV bits, reserved opcodes, lying
// lengths), and writes split anywhere (down to one byte per write). Server
// frames are read back with the small parser below (server frames must not be
// masked; the parser reports the mask bit so tests can assert it).
//
// Every wait has a timeout; a timeout or an unexpected end of the connection
// rejects with a message that includes what was buffered.

import crypto from 'node:crypto';
import net from 'node:net';
import assert from 'node:assert/strict';

export const IO_TIMEOUT_MS = Number(process.env.WS_IO_TIMEOUT_MS) || 5000;
export const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export const OP = Object.freeze({ CONT: 0x0, TEXT: 0x1, BINARY: 0x2, CLOSE: 0x8, PING: 0x9, PONG: 0xA });

export function acceptFor(key) {
  return crypto.createHash('sha1').update(key + GUID).digest('base64');
}

export function randomKey() {
  return crypto.randomBytes(16).toString('base64');
}

// ---------------------------------------------------------------- frames ---

// Encodes one frame.
//   opcode        0..15
//   payload       Buffer | string (UTF-8)
//   fin           default true
//   rsv           the three RSV bits as a number 0..7 (RSV1 = 4, RSV2 = 2, RSV3 = 1)
//   mask          default true (client frames must be masked)
//   maskKey       4-byte Buffer; default random
//   lengthBytes   0 (7-bit), 2 (16-bit) or 8 (64-bit) length field; default: the
//                 minimal encoding. A larger one gives a non-minimal encoding.
//   declaredLength  number | bigint written in the length field instead of the
//                 payload's real length (for lying / huge lengths). With it the
//                 payload bytes are still appended as given.
export function encodeFrame({
  opcode, payload = Buffer.alloc(0), fin = true, rsv = 0, mask = true, maskKey, lengthBytes, declaredLength,
}) {
  const data = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : Buffer.from(payload);
  const len = declaredLength === undefined ? BigInt(data.length) : BigInt(declaredLength);
  let lb = lengthBytes;
  if (lb === undefined) lb = len <= 125n ? 0 : len <= 0xFFFFn ? 2 : 8;
  if (lb === 0 && len > 125n) throw new RangeError('length does not fit in 7 bits');
  if (lb === 2 && len > 0xFFFFn) throw new RangeError('length does not fit in 16 bits');
  const head = Buffer.alloc(2 + lb);
  head[0] = (fin ? 0x80 : 0) | ((rsv & 7) << 4) | (opcode & 0x0F);
  head[1] = (mask ? 0x80 : 0) | (lb === 0 ? Number(len) : lb === 2 ? 126 : 127);
  if (lb === 2) head.writeUInt16BE(Number(len), 2);
  if (lb === 8) head.writeBigUInt64BE(len, 2);
  if (!mask) return Buffer.concat([head, data]);
  const key = maskKey ? Buffer.from(maskKey) : crypto.randomBytes(4);
  assert.equal(key.length, 4, 'mask key must be 4 bytes');
  const masked = Buffer.alloc(data.length);
  for (let i = 0; i < data.length; i++) masked[i] = data[i] ^ key[i & 3];
  return Buffer.concat([head, key, masked]);
}

// Shorthands for client (masked) frames.
export const text = (payload, opts = {}) => encodeFrame({ opcode: OP.TEXT, payload, ...opts });
export const binary = (payload, opts = {}) => encodeFrame({ opcode: OP.BINARY, payload, ...opts });
export const cont = (payload, opts = {}) => encodeFrame({ opcode: OP.CONT, payload, ...opts });
export const ping = (payload = Buffer.alloc(0), opts = {}) => encodeFrame({ opcode: OP.PING, payload, ...opts });
export const pong = (payload = Buffer.alloc(0), opts = {}) => encodeFrame({ opcode: OP.PONG, payload, ...opts });
export const close = (code, reason = '', opts = {}) => encodeFrame({ opcode: OP.CLOSE, payload: closePayload(code, reason), ...opts });

// Close frame payload: empty when code is undefined/null; `reason` is a
// string (UTF-8) or raw bytes.
export function closePayload(code, reason = '') {
  if (code === undefined || code === null) return Buffer.alloc(0);
  const c = Buffer.alloc(2);
  c.writeUInt16BE(code, 0);
  return Buffer.concat([c, typeof reason === 'string' ? Buffer.from(reason, 'utf8') : Buffer.from(reason)]);
}

// Parses as many complete frames as `buf` holds. Returns { frames, used }.
// Each frame: { fin, rsv, opcode, masked, length, payload, headerLength } and,
// for close frames, closeCode (number or null) and reason (Buffer).
export function parseFrames(buf) {
  const frames = [];
  let off = 0;
  for (;;) {
    const f = parseOneFrame(buf, off);
    if (!f) break;
    frames.push(f.frame);
    off = f.next;
  }
  return { frames, used: off };
}

export function parseOneFrame(buf, off = 0) {
  if (buf.length - off < 2) return null;
  const b0 = buf[off];
  const b1 = buf[off + 1];
  let len = b1 & 0x7F;
  let p = off + 2;
  if (len === 126) {
    if (buf.length - p < 2) return null;
    len = buf.readUInt16BE(p);
    p += 2;
  } else if (len === 127) {
    if (buf.length - p < 8) return null;
    const big = buf.readBigUInt64BE(p);
    if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`server frame length ${big} is absurd`);
    len = Number(big);
    p += 8;
  }
  const masked = (b1 & 0x80) !== 0;
  let key = null;
  if (masked) {
    if (buf.length - p < 4) return null;
    key = buf.subarray(p, p + 4);
    p += 4;
  }
  if (buf.length - p < len) return null;
  let payload = Buffer.from(buf.subarray(p, p + len));
  if (masked) for (let i = 0; i < payload.length; i++) payload[i] ^= key[i & 3];
  const frame = {
    fin: (b0 & 0x80) !== 0,
    rsv: (b0 >> 4) & 7,
    opcode: b0 & 0x0F,
    masked,
    length: len,
    headerLength: p - off,
    payload,
  };
  if (frame.opcode === OP.CLOSE) {
    frame.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : null;
    frame.reason = payload.length >= 2 ? payload.subarray(2) : Buffer.alloc(0);
  }
  return { frame, next: p + len };
}

export function describeFrame(f) {
  const base = `{fin:${f.fin ? 1 : 0} rsv:${f.rsv} op:${f.opcode} masked:${f.masked ? 1 : 0} len:${f.length}`;
  if (f.opcode === OP.CLOSE) return `${base} code:${f.closeCode} reason:${JSON.stringify(f.reason.toString('utf8'))}}`;
  return `${base} head:${f.payload.subarray(0, 16).toString('hex')}}`;
}

// ------------------------------------------------------------- handshake ---

// Builds an opening-handshake request. `headers` is an ordered list of
// [name, value] pairs replacing the defaults when given; `extra` pairs are
// appended; `omit` lists header names (case-insensitive) to leave out.
export function handshakeRequest({
  path = '/', method = 'GET', httpVersion = 'HTTP/1.1', host = '127.0.0.1', key = randomKey(),
  version = '13', headers, extra = [], omit = [],
} = {}) {
  const base = headers ?? [
    ['Host', host],
    ['Upgrade', 'websocket'],
    ['Connection', 'Upgrade'],
    ['Sec-WebSocket-Key', key],
    ['Sec-WebSocket-Version', version],
  ];
  const drop = new Set(omit.map((h) => h.toLowerCase()));
  const lines = [`${method} ${path} ${httpVersion}`];
  for (const [n, v] of [...base, ...extra]) if (!drop.has(n.toLowerCase())) lines.push(`${n}: ${v}`);
  return `${lines.join('\r\n')}\r\n\r\n`;
}

// Parses an HTTP response head (without the final CRLFCRLF).
export function parseResponseHead(text) {
  const lines = text.split('\r\n');
  const statusLine = lines.shift();
  const m = /^HTTP\/(\d\.\d) (\d{3})(?: (.*))?$/.exec(statusLine);
  if (!m) throw new Error(`malformed HTTP status line: ${JSON.stringify(statusLine)}`);
  const headers = new Map(); // lower-case name -> [values]
  for (const line of lines) {
    const i = line.indexOf(':');
    if (i <= 0) throw new Error(`malformed HTTP header line: ${JSON.stringify(line)}`);
    const name = line.slice(0, i).trim().toLowerCase();
    const value = line.slice(i + 1).trim();
    if (!headers.has(name)) headers.set(name, []);
    headers.get(name).push(value);
  }
  return {
    statusLine, httpVersion: m[1], status: Number(m[2]), reason: m[3] ?? '', headers,
    header(name) { const v = headers.get(name.toLowerCase()); return v ? v.join(', ') : undefined; },
  };
}

// ------------------------------------------------------------ connection ---

export class RawConn {
  static connect(port, { host = '127.0.0.1', timeoutMs = IO_TIMEOUT_MS } = {}) {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ port, host });
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error(`connect to ${host}:${port} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      sock.once('error', (err) => { clearTimeout(timer); reject(new Error(`connect to ${host}:${port}: ${err.message}`)); });
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.removeAllListeners('error');
        resolve(new RawConn(sock));
      });
    });
  }

  constructor(sock) {
    this.sock = sock;
    sock.setNoDelay(true);
    this.buf = Buffer.alloc(0);
    this.ended = false;     // the server closed (FIN) or the socket is gone
    this.closed = false;    // the socket is fully closed
    this.error = null;      // e.g. ECONNRESET
    this.waiters = new Set();
    sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.wake(); });
    sock.on('end', () => { this.ended = true; this.wake(); });
    sock.on('error', (err) => { this.error = err; this.ended = true; this.wake(); });
    sock.on('close', () => { this.closed = true; this.ended = true; this.wake(); });
  }

  wake() {
    const ws = [...this.waiters];
    this.waiters.clear();
    for (const w of ws) w();
  }

  sleepUntilEvent(ms) {
    return new Promise((resolve) => {
      const w = () => { clearTimeout(t); resolve(); };
      const t = setTimeout(() => { this.waiters.delete(w); resolve(); }, ms);
      this.waiters.add(w);
    });
  }

  // Waits until check() returns a non-undefined value (it may consume from
  // this.buf), the connection ends, or the timeout expires.
  async waitFor(what, check, timeoutMs = IO_TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = check();
      if (v !== undefined) return v;
      if (this.ended) {
        throw new Error(`connection ended while waiting for ${what}` +
          `${this.error ? ` (${this.error.code || this.error.message})` : ''}; buffered ${this.bufferedHex()}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; buffered ${this.bufferedHex()}`);
      await this.sleepUntilEvent(left);
    }
  }

  bufferedHex(n = 64) {
    return `${this.buf.length} bytes${this.buf.length ? `: ${this.buf.subarray(0, n).toString('hex')}${this.buf.length > n ? '...' : ''}` : ''}`;
  }

  // Resolves once the bytes were handed to the kernel. A write error (the
  // server reset the connection) resolves too: tests assert on what they read.
  write(data) {
    const b = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
    return new Promise((resolve) => {
      if (this.sock.destroyed || !this.sock.writable) { resolve(false); return; }
      this.sock.write(b, (err) => resolve(!err));
    });
  }

  // One write per `chunk` bytes (default 1), each awaited, with an optional
  // pause between writes, so the server sees the bytes in separate reads.
  async writeSplit(data, { chunk = 1, delayMs = 0 } = {}) {
    const b = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
    for (let i = 0; i < b.length; i += chunk) {
      if (!(await this.write(b.subarray(i, i + chunk)))) return false;
      if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
    }
    return true;
  }

  // Reads an HTTP response head; the bytes after it stay buffered.
  readHttpHead(timeoutMs = IO_TIMEOUT_MS) {
    return this.waitFor('an HTTP response head', () => {
      const i = this.buf.indexOf('\r\n\r\n');
      if (i < 0) return undefined;
      const head = this.buf.subarray(0, i).toString('latin1');
      this.buf = this.buf.subarray(i + 4);
      return parseResponseHead(head);
    }, timeoutMs);
  }

  readFrame(timeoutMs = IO_TIMEOUT_MS) {
    return this.waitFor('a frame', () => {
      const r = parseOneFrame(this.buf, 0);
      if (!r) return undefined;
      this.buf = this.buf.subarray(r.next);
      return r.frame;
    }, timeoutMs);
  }

  async readFrames(n, timeoutMs = IO_TIMEOUT_MS) {
    const out = [];
    const deadline = Date.now() + timeoutMs;
    for (let i = 0; i < n; i++) out.push(await this.readFrame(Math.max(1, deadline - Date.now())));
    return out;
  }

  // Waits for the server to close the connection; returns the bytes that
  // arrived before the end and were not consumed.
  async waitEnd(timeoutMs = IO_TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`the server did not close the connection within ${timeoutMs} ms; buffered ${this.bufferedHex()}`);
      await this.sleepUntilEvent(left);
    }
    const rest = this.buf;
    this.buf = Buffer.alloc(0);
    return rest;
  }

  // True if nothing arrives and the connection stays open for `ms`.
  async quietFor(ms) {
    const before = this.buf.length;
    await new Promise((r) => setTimeout(r, ms));
    return this.buf.length === before && !this.ended;
  }

  destroy() {
    this.sock.destroy();
  }
}

// Connects and performs the opening handshake, asserting a correct 101.
// `request` options go to handshakeRequest(). Returns the open RawConn.
export async function openRaw(port, { split = false, ...request } = {}) {
  const key = request.key ?? randomKey();
  const conn = await RawConn.connect(port);
  const req = handshakeRequest({ ...request, key });
  if (split) await conn.writeSplit(req);
  else await conn.write(req);
  const res = await conn.readHttpHead();
  assertSwitching(res, key);
  return conn;
}

export function assertSwitching(res, key) {
  assert.equal(res.statusLine, 'HTTP/1.1 101 Switching Protocols', 'status line of the 101 answer');
  assert.equal(res.header('upgrade')?.toLowerCase(), 'websocket', 'Upgrade header');
  assert.ok((res.header('connection') ?? '').toLowerCase().split(',').map((s) => s.trim()).includes('upgrade'),
    `Connection header has the token upgrade (got ${res.header('connection')})`);
  assert.equal(res.header('sec-websocket-accept'), acceptFor(key), 'Sec-WebSocket-Accept');
  assert.equal(res.header('sec-websocket-extensions'), undefined, 'no extension is negotiated');
  assert.equal(res.header('sec-websocket-protocol'), undefined, 'no subprotocol is negotiated');
}

// Reads one server frame and asserts the properties every server frame must
// have (FIN set for echoes and control frames, RSV 0, not masked).
export async function readServerFrame(conn, timeoutMs = IO_TIMEOUT_MS) {
  const f = await conn.readFrame(timeoutMs);
  assert.equal(f.masked, false, `server frame must not be masked: ${describeFrame(f)}`);
  assert.equal(f.rsv, 0, `server frame RSV bits must be 0: ${describeFrame(f)}`);
  assert.equal(f.fin, true, `server frames are unfragmented: ${describeFrame(f)}`);
  // RFC 6455 5.2: the minimal number of bytes MUST be used for the length.
  const minimal = 2 + (f.length <= 125 ? 0 : f.length <= 0xFFFF ? 2 : 8);
  assert.equal(f.headerLength, minimal, `server frame length is minimally encoded: ${describeFrame(f)}`);
  return f;
}

// Reads the echo of one message and asserts opcode and payload.
export async function expectEcho(conn, opcode, payload, timeoutMs = IO_TIMEOUT_MS) {
  const f = await readServerFrame(conn, timeoutMs);
  const want = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : Buffer.from(payload);
  assert.equal(f.opcode, opcode, `echo opcode: ${describeFrame(f)}`);
  assert.equal(f.length, want.length, `echo length: ${describeFrame(f)}`);
  assert.ok(f.payload.equals(want), `echo payload differs: ${describeFrame(f)}`);
  return f;
}

// Reads a close frame with the given status code, then asserts that the
// server closes the TCP connection (without waiting for our close) and sent
// nothing after the close frame.
export async function expectClose(conn, code, timeoutMs = IO_TIMEOUT_MS) {
  const f = await readServerFrame(conn, timeoutMs);
  assert.equal(f.opcode, OP.CLOSE, `expected a close frame with code ${code}, got ${describeFrame(f)}`);
  assert.equal(f.closeCode, code, `close code: ${describeFrame(f)}`);
  assertValidCloseReason(f);
  const rest = await conn.waitEnd(timeoutMs);
  assert.equal(rest.length, 0, `bytes after the close frame: ${rest.subarray(0, 32).toString('hex')}`);
  return f;
}

export function assertValidCloseReason(f) {
  assert.ok(f.length <= 125, 'control frame payload <= 125');
  assert.notEqual(f.length, 1, 'close payload is never 1 byte');
  if (f.reason.length) {
    assert.doesNotThrow(() => new TextDecoder('utf-8', { fatal: true }).decode(f.reason),
      'close reason from the server is valid UTF-8');
  }
}

// Opens a fresh connection and checks a small echo: the server still serves.
export async function assertServes(port) {
  const c = await openRaw(port);
  try {
    const body = crypto.randomBytes(33);
    await c.write(binary(body));
    await expectEcho(c, OP.BINARY, body);
    await c.write(close(1000));
    const f = await readServerFrame(c);
    assert.equal(f.opcode, OP.CLOSE);
    assert.equal(f.closeCode, 1000);
  } finally {
    c.destroy();
  }
}
