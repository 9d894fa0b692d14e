// A first, rough measurement until parley-bench exists (issue: parley-bench): one-to-one
// online delivery. Starts parleyd, registers 2P accounts, connects P senders (send-only)
// and P receivers (receiving), and for SECONDS each sender keeps WINDOW sends in flight
// while each receiver acks every Deliver frame. Counts every message (each must arrive
// exactly once, in order per pair) and reports delivered msgs/s, send->deliver latency
// percentiles, and parleyd's CPU time per delivered message. The load generator is one
// node process on the same 2 cores, so the figure is a floor for the server, not its limit.
//   node tools/bench/pairs.mjs BUILD_DIR [PAIRS=50] [WINDOW=32] [SECONDS=10]
// Needs `make interop-deps` (ws and protobufjs from tests/e2e, libsignal-client from
// tests/interop for signatures). Loopback only.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import crypto from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { WebSocket, S, Frame } from './deps.mjs';

const [buildDir, pairsArg = '50', windowArg = '32', secondsArg = '10'] = process.argv.slice(2);
if (!buildDir) {
  console.error('usage: node tools/bench/pairs.mjs BUILD_DIR [PAIRS] [WINDOW] [SECONDS]');
  process.exit(2);
}
const PAIRS = Number(pairsArg), WINDOW = Number(windowArg), SECONDS = Number(secondsArg);
const cpuOf = (pid) => { // utime + stime, in clock ticks (100 per second)
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
};

// A connection that answers requests by id and hands pushed frames to onPush.
function open(url, onPush) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    const pending = new Map();
    let nextId = 1;
    const c = {
      ws,
      request(body, value) {
        const id = nextId++;
        ws.send(Frame.encode(Frame.create({ version: 1, request_id: id, [body]: value })).finish());
        return new Promise((res) => pending.set(id, res));
      },
      push(body, value) { ws.send(Frame.encode(Frame.create({ version: 1, [body]: value })).finish()); },
    };
    ws.on('error', reject);
    ws.on('message', (d) => {
      const f = Frame.decode(d);
      const rid = Number(f.request_id);
      if (f.hello) resolve(c);
      else if (rid && pending.has(rid)) { const r = pending.get(rid); pending.delete(rid); r(f); }
      else if (onPush) onPush(f);
    });
  });
}

async function register(url, smsLog, phone) {
  const key = S.PrivateKey.generate();
  const c = await open(url);
  await c.request('request_code', { phone });
  const code = readFileSync(smsLog, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((l) => l.phone === phone).pop().code;
  const r = await c.request('register', { phone, code, identity_key: key.getPublicKey().serialize() });
  c.ws.close();
  if (!r.registered) throw new Error(JSON.stringify(r));
  return { key, account: Buffer.from(r.registered.account_id) };
}

async function login(url, u, receive, onPush) {
  const c = await open(url, onPush);
  const ch = await c.request('connect', { account_id: u.account, device_id: 1, receive });
  const dev = Buffer.alloc(4);
  dev.writeUInt32BE(1);
  const msg = Buffer.concat([Buffer.from('parley-auth-v1'), Buffer.from(ch.challenge.nonce), u.account, dev]);
  const a = await c.request('authenticate', { signature: u.key.sign(msg) });
  if (!a.authenticated) throw new Error(JSON.stringify(a));
  return c;
}

const dir = mkdtempSync(path.join(os.tmpdir(), 'parley-pairs-'));
const port = 20000 + Math.floor(Math.random() * 20000);
const smsLog = path.join(dir, 'sms.log');
const child = spawn(path.join(buildDir, 'parleyd'), ['--listen', `127.0.0.1:${port}`, '--data', path.join(dir, 'var'),
  '--sms', `file:${smsLog}`, '--conn-rate', '0', '--send-rate', '1000000'], { stdio: ['ignore', 'pipe', 'inherit'] });
await new Promise((r) => child.stdout.once('data', r));
const url = `ws://127.0.0.1:${port}/`;

const users = [];
for (let i = 0; i < 2 * PAIRS; i++) users.push(await register(url, smsLog, `+1555${String(1000000 + i)}`));

let running = true, delivered = 0, errors = 0;
const latencies = [];
const pairs = [];
for (let p = 0; p < PAIRS; p++) {
  const pair = { sent: 0, next: 0, inFlight: 0 };
  pair.receiver = await login(url, users[2 * p + 1], true, (f) => {
    const envs = f.deliver?.envelopes ?? [];
    for (const e of envs) {
      const body = Buffer.from(e.body);
      const n = body.readUInt32BE(0);
      if (n !== pair.next) errors++; // lost, duplicated or misordered
      pair.next = n + 1;
      latencies.push(Number(process.hrtime.bigint() - body.readBigUInt64BE(4)) / 1e6);
      delivered++;
    }
    if (envs.length) pair.receiver.push('deliver_ack', { up_to_seq: envs.at(-1).seq });
  });
  pair.sender = await login(url, users[2 * p], false);
  pairs.push(pair);
}

function pump(pair) {
  while (running && pair.inFlight < WINDOW) {
    const body = Buffer.alloc(100);
    body.writeUInt32BE(pair.sent++, 0);
    body.writeBigUInt64BE(process.hrtime.bigint(), 4);
    pair.inFlight++;
    pair.sender.request('send', { message_id: crypto.randomBytes(16), recipient_account: users[pairs.indexOf(pair) * 2 + 1].account,
      messages: [{ device_id: 1, body }] }).then((f) => {
      if (!f.send_ack) errors++;
      pair.inFlight--;
      pump(pair);
    });
  }
}

const cpu0 = cpuOf(child.pid);
const t0 = Date.now();
for (const pair of pairs) pump(pair);
await new Promise((r) => setTimeout(r, SECONDS * 1000));
running = false;
const elapsed = (Date.now() - t0) / 1000;
const cpu = cpuOf(child.pid) - cpu0;
const measured = delivered;
await new Promise((r) => setTimeout(r, 2000)); // let the last ones arrive
const sent = pairs.reduce((a, p) => a + p.sent, 0);
const lost = sent - delivered;
latencies.sort((a, b) => a - b);
const pct = (q) => Number(latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))].toFixed(2));
const result = {
  machine: { cpu: os.cpus()[0].model, cores: os.cpus().length },
  pairs: PAIRS, window: WINDOW, seconds: elapsed, payload_bytes: 100,
  delivered_per_second: Math.round(measured / elapsed),
  latency_ms: { p50: pct(0.5), p90: pct(0.9), p99: pct(0.99), p999: pct(0.999) },
  server_cpu_seconds: cpu, server_cpu_us_per_message: Number((cpu * 1e6 / measured).toFixed(1)),
  sent, delivered, lost, errors,
};
for (const p of pairs) { p.sender.ws.terminate(); p.receiver.ws.terminate(); }
child.kill('SIGTERM');
await new Promise((r) => child.on('exit', r));
rmSync(dir, { recursive: true, force: true });
console.log(JSON.stringify(result, null, 1));
process.exit(lost || errors ? 1 : 0);
