// Runs the parley command for the tests: one-shot commands, long-running ones whose
// JSON lines can be awaited, profiles registered through the file SMS provider, and a
// WebSocket proxy that can lose one frame on purpose.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import protobuf from 'protobufjs';
import { Parleyd, tempDir, removeDir } from './parleyd.js';
import { Frame, lastCode } from './client.js';

export const SANITIZER = /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:/;
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

// A TCP proxy in front of parleyd that reads the server's WebSocket frames and, the
// first time one matches lose(frame), cuts that connection: the client gets everything
// before the frame and nothing after, as when a network dies at that moment. With
// forward, the frame itself still reaches the client but nothing the client answers
// reaches the server. Later connections pass through untouched.
// Returns { url, lost (a promise), close }.
export function frameLosingProxy(serverPort, lose, { forward = false } = {}) {
  let losing = true, resolveLost;
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
    if (!mine) { upstream.pipe(client); return; }
    let buf = Buffer.alloc(0), upgraded = false;
    upstream.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        client.write(buf.subarray(0, end + 4));
        buf = buf.subarray(end + 4);
        upgraded = true;
      }
      for (;;) { // server frames are unmasked: 2-byte header, then 0, 2 or 8 length bytes
        if (buf.length < 2) return;
        let len = buf[1] & 0x7f, off = 2;
        if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
        else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
        if (buf.length < off + len) return;
        const frame = buf.subarray(0, off + len);
        buf = buf.subarray(off + len);
        if (losing && (frame[0] & 0x0f) === 2 && lose(Frame.decode(frame.subarray(off)))) {
          losing = false;
          client.unpipe(upstream); // nothing more from the client reaches the server
          if (forward) client.write(frame);
          client.end(); // what came before is delivered, then FIN
          upstream.destroy();
          resolveLost();
          return;
        }
        client.write(frame);
      }
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `ws://127.0.0.1:${server.address().port}/`,
    lost,
    close: () => { for (const s of sockets) s.destroy(); return new Promise((r) => server.close(r)); },
  })));
}
