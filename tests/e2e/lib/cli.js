// Runs the parley command for the tests: one-shot commands, long-running ones whose
// JSON lines can be awaited, profiles registered through the file SMS provider, and
// WebSocket proxies that lose one frame, or hold back and corrupt Send frames, on
// purpose.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import protobuf from 'protobufjs';
import { Parleyd, SANITIZER, tempDir, removeDir } from './parleyd.js';
import { Frame, lastCode } from './client.js';

export const HEX_ID = /^[0-9a-f]{32}$/;

const contentRoot = protobuf.parse(
  readFileSync(new URL('../../../proto/content.proto', import.meta.url), 'utf8'), { keepCase: true }).root;
export const Content = contentRoot.lookupType('parley.Content');

export function parleyBinary() {
  const p = process.env.PARLEY;
  if (!p) throw new Error('PARLEY is not set: export PARLEY=/path/to/parley (ctest sets it)');
  return p;
}

export function checkStderr(stderr, what) {
  assert.ok(!SANITIZER.test(stderr), `sanitizer report from ${what}:\n${stderr}`);
}

// Runs `parley --home home ...args` to completion; input (if any) goes to its stdin.
export function run(home, args, { ms = 60000, input } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(parleyBinary(), ['--home', home, ...args], { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (b) => { stdout += b; });
    child.stderr.on('data', (b) => { stderr += b; });
    if (input !== undefined) child.stdin.end(input);
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`parley ${args.join(' ')} did not finish: ${stderr}`)); }, ms);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      checkStderr(stderr, `parley ${args[0]}`);
      resolve({ code, signal, stdout, stderr, lines: stdout.split('\n').filter((l) => l.length) });
    });
  });
}

// A long-running parley (listen, recv --wait, send -) whose stdout lines can be awaited.
export function start(home, args, { stdin = false } = {}) {
  const child = spawn(parleyBinary(), ['--home', home, ...args], { stdio: [stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
  const p = { child, lines: [], stderr: '', waiters: [] };
  child.stderr.on('data', (b) => { p.stderr += b; });
  readline.createInterface({ input: child.stdout }).on('line', (l) => {
    p.lines.push(l);
    for (const w of p.waiters.splice(0)) w();
  });
  p.exited = new Promise((resolve) => child.on('exit', (code, signal) => {
    for (const w of p.waiters.splice(0)) w();
    checkStderr(p.stderr, `parley ${args[0]}`);
    resolve({ code, signal });
  }));
  // Resolves with the first line (parsed as JSON unless raw) that matches, failing after ms.
  p.waitFor = (match, ms = 20000, { raw = false } = {}) => new Promise((resolve, reject) => {
    let timer;
    const finish = (fn, v) => { clearTimeout(timer); fn(v); };
    const check = () => {
      const hit = p.lines.map((l) => (raw ? l : JSON.parse(l))).find(match);
      if (hit) return finish(resolve, hit);
      if (child.exitCode !== null || child.signalCode !== null) return finish(reject, new Error(`parley exited: ${p.stderr}`));
      p.waiters.push(check);
    };
    timer = setTimeout(() => {
      p.waiters = p.waiters.filter((w) => w !== check);
      reject(new Error(`no matching line within ${ms} ms; got ${p.lines.join('\n')}; stderr ${p.stderr}`));
    }, ms);
    check();
  });
  // Resolves once n lines have been printed.
  p.waitLines = (n, ms = 60000) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${p.lines.length} of ${n} lines within ${ms} ms; stderr ${p.stderr}`)), ms);
    const check = () => {
      if (p.lines.length >= n) { clearTimeout(timer); return resolve(p.lines); }
      if (child.exitCode !== null || child.signalCode !== null) { clearTimeout(timer); return reject(new Error(`parley exited after ${p.lines.length} lines: ${p.stderr}`)); }
      p.waiters.push(check);
    };
    check();
  });
  return p;
}

// A parleyd for one test, stopped (and its directory removed) after it.
export async function withServer(t, opts = {}) {
  const dir = tempDir();
  const smsLog = path.join(dir, 'sms.log');
  const d = await Parleyd.start({ dataDir: path.join(dir, 'var'), sms: `file:${smsLog}`, ...opts });
  const s = { d, dir, smsLog };
  t.after(async () => {
    if (s.d.child.exitCode === null && s.d.child.signalCode === null) await s.d.stop();
    removeDir(dir);
  });
  return s;
}

// A profile registered with the parley command itself.
export async function cliUser(s, name, phone, url = s.d.url) {
  const home = path.join(s.dir, name);
  const r = await run(home, ['register', '--server', url, '--phone', phone]);
  assert.equal(r.code, 0, r.stderr);
  const v = await run(home, ['verify', lastCode(s.smsLog, phone)]);
  assert.equal(v.code, 0, v.stderr);
  return { home, phone };
}

export async function send(from, to, text, extra = []) {
  const r = await run(from.home, ['send', ...extra, to.phone, text]);
  assert.equal(r.code, 0, `send failed: ${r.stderr}`);
  assert.equal(r.lines.length, 1);
  assert.match(r.lines[0], HEX_ID);
  return r.lines[0];
}

export async function recv(u, extra = []) {
  const r = await run(u.home, ['recv', ...extra]);
  assert.equal(r.code, 0, `recv failed: ${r.stderr}`);
  return r.lines.map((l) => JSON.parse(l));
}

export async function history(u, peer) {
  const r = await run(u.home, ['history', peer.phone, '--json']);
  assert.equal(r.code, 0, r.stderr);
  return r.lines.map((l) => JSON.parse(l));
}

// The complete WebSocket frames at the front of buf and what is left. Client frames are
// masked (payload is given unmasked), server frames are not; raw is the frame as sent.
function splitFrames(buf) {
  const frames = [];
  for (;;) {
    if (buf.length < 2) break;
    const masked = (buf[1] & 0x80) !== 0;
    let len = buf[1] & 0x7f, off = 2;
    if (len === 126) { if (buf.length < 4) break; len = buf.readUInt16BE(2); off = 4; }
    else if (len === 127) { if (buf.length < 10) break; len = Number(buf.readBigUInt64BE(2)); off = 10; }
    const maskAt = off;
    if (masked) off += 4;
    if (buf.length < off + len) break;
    const payload = Buffer.from(buf.subarray(off, off + len));
    if (masked) for (let i = 0; i < len; i++) payload[i] ^= buf[maskAt + (i & 3)];
    frames.push({ opcode: buf[0] & 0x0f, payload, raw: buf.subarray(0, off + len) });
    buf = buf.subarray(off + len);
  }
  return { frames, rest: buf };
}

// A final binary frame carrying payload; masked (with a fresh key) from a client.
function binaryFrame(payload, masked) {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x82, len]) : len < 65536 ? Buffer.from([0x82, 126, len >> 8, len & 0xff])
    : Buffer.concat([Buffer.from([0x82, 127]), (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(len)); return b; })()]);
  if (!masked) return Buffer.concat([head, payload]);
  head[1] |= 0x80;
  const mask = crypto.randomBytes(4);
  const body = Buffer.from(payload);
  for (let i = 0; i < len; i++) body[i] ^= mask[i & 3];
  return Buffer.concat([head, mask, body]);
}

// Calls onFrame(frame) for every frame of one direction of a WebSocket connection once
// its HTTP head has gone through (passHead(bytes) gets the head).
function frameReader(passHead, onFrame) {
  let buf = Buffer.alloc(0), upgraded = false;
  return (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    if (!upgraded) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      passHead(buf.subarray(0, end + 4));
      buf = buf.subarray(end + 4);
      upgraded = true;
    }
    const { frames, rest } = splitFrames(buf);
    buf = rest;
    for (const f of frames) if (onFrame(f) === false) return;
  };
}

// A TCP proxy in front of parleyd that reads the server's WebSocket frames and, the
// first time one matches lose(frame), cuts that connection: the client gets everything
// before the frame and nothing after, as when a network dies at that moment. With
// forward, the frame itself still reaches the client but nothing the client answers
// reaches the server. Later connections pass through untouched.
// sends lists every Send clients wrote through it, as { id, bodies } (hex): a Send
// repeated after a lost ack can be compared with the first.
// Returns { url, lost (a promise), sends, close }.
export function frameLosingProxy(serverPort, lose, { forward = false } = {}) {
  let losing = true, resolveLost;
  const sends = [];
  const lost = new Promise((r) => { resolveLost = r; });
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(serverPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    const mine = losing;
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.end());
    client.pipe(upstream);
    client.on('data', frameReader(() => {}, (f) => {
      const send = f.opcode === 2 ? Frame.decode(f.payload).send : null;
      if (send) sends.push({ id: Buffer.from(send.message_id).toString('hex'),
        bodies: send.messages.map((m) => Buffer.from(m.body).toString('hex')) });
      return true;
    }));
    if (!mine) { upstream.pipe(client); return; }
    upstream.on('data', frameReader((head) => client.write(head), (f) => {
      if (losing && f.opcode === 2 && lose(Frame.decode(f.payload))) {
        losing = false;
        client.unpipe(upstream); // nothing more from the client reaches the server
        if (forward) client.write(f.raw);
        client.end(); // what came before is delivered, then FIN
        upstream.destroy();
        resolveLost();
        return false;
      }
      client.write(f.raw);
      return true;
    }));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `ws://127.0.0.1:${server.address().port}/`,
    lost,
    sends,
    close: () => { for (const s of sockets) s.destroy(); return new Promise((r) => server.close(r)); },
  })));
}

// A TCP proxy in front of parleyd that rewrites the Send frames clients write (counted
// 1, 2, ... over all connections): the first `hold` are answered at once with a SendAck
// of the proxy's own and kept back, then written to the server (on their connection,
// in their order) right after Send number `releaseAfter` went through, so the server
// stores later messages first; those numbered in `corrupt` get one byte of their first
// body flipped. Everything else passes untouched.
// With inspect(frame), every Send (decoded) waits for the promise inspect returns (if
// any) before the proxy does anything with it, frames after it on its connection behind
// it: a test can look at the client's state while a Send is on the wire.
// Returns { url, corrupted (message ids, hex), released (a promise), close }.
export function sendTamperingProxy(serverPort, { hold = 0, releaseAfter = 0, corrupt = [], inspect } = {}) {
  let sends = 0, resolveReleased;
  const held = [], corrupted = [], sockets = new Set();
  const released = new Promise((r) => { resolveReleased = r; });
  const server = net.createServer((client) => {
    const upstream = net.connect(serverPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.end());
    upstream.on('close', () => client.end());
    // whole frames only, so that the proxy's own SendAcks go in between them
    upstream.on('data', frameReader((head) => client.write(head), (f) => client.write(f.raw)));
    let chain = Promise.resolve(); // frames in order behind an inspected Send
    client.on('data', frameReader((head) => upstream.write(head), (f) => {
      const frame = f.opcode === 2 ? Frame.decode(f.payload) : null;
      if (inspect) {
        chain = chain.then(async () => {
          if (frame?.send) await inspect(frame);
          handle(f, frame);
        });
        return true;
      }
      return handle(f, frame);
    }));
    const handle = (f, frame) => {
      if (!frame?.send) { upstream.write(f.raw); return true; }
      const n = ++sends;
      if (n <= hold) {
        held.push({ upstream, raw: f.raw });
        const ack = Frame.encode(Frame.create({ version: 1, request_id: frame.request_id,
          send_ack: { message_id: frame.send.message_id, server_time_ms: Date.now() } })).finish();
        client.write(binaryFrame(Buffer.from(ack), false));
        return true;
      }
      if (corrupt.includes(n)) {
        const body = Buffer.from(frame.send.messages[0].body);
        body[body.length >> 1] ^= 0x20;
        frame.send.messages[0].body = body;
        corrupted.push(Buffer.from(frame.send.message_id).toString('hex'));
        upstream.write(binaryFrame(Buffer.from(Frame.encode(frame).finish()), true));
      } else {
        upstream.write(f.raw);
      }
      if (n === releaseAfter) {
        for (const h of held.splice(0)) h.upstream.write(h.raw);
        resolveReleased();
      }
      return true;
    };
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `ws://127.0.0.1:${server.address().port}/`,
    corrupted,
    released,
    close: () => { for (const s of sockets) s.destroy(); return new Promise((r) => server.close(r)); },
  })));
}
