// A first, rough measurement until parley-bench exists (issue: parley-bench):
// server memory per idle *authenticated* connection. Starts parleyd, registers one
// account, opens N send-only connections (Connect.receive = false: a device has one
// receiving connection) that each authenticate as its device, waits, and
// reads parleyd's RSS (baseline subtracted) and the kernel's TCP memory.
//   node tools/bench/idle-connections.mjs BUILD_DIR N [N ...]
// Needs `make interop-deps` (ws and protobufjs from tests/e2e, libsignal-client from
// tests/interop for fast signatures). Loopback only; one process holds <= 20k sockets.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WebSocket, S, Frame } from './deps.mjs';

const [buildDir, ...counts] = process.argv.slice(2);
if (!buildDir || !counts.length) {
  console.error('usage: node tools/bench/idle-connections.mjs BUILD_DIR N [N ...]');
  process.exit(2);
}
const rssOf = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
const tcpMem = () => Number(/^TCP:.* mem (\d+)/m.exec(readFileSync('/proc/net/sockstat', 'utf8'))[1]) * 4096;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function connect(url, onFrame) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.on('error', reject);
    ws.on('message', (d) => onFrame(ws, Frame.decode(d)));
    ws.on('open', () => resolve(ws));
  });
}

function send(ws, body, value, id = 1) {
  ws.send(Frame.encode(Frame.create({ version: 1, request_id: id, [body]: value })).finish());
}

async function measure(n) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'parley-idle-'));
  const port = 20000 + Math.floor(Math.random() * 20000);
  const smsLog = path.join(dir, 'sms.log');
  const child = spawn(path.join(buildDir, 'parleyd'), ['--listen', `127.0.0.1:${port}`, '--data', path.join(dir, 'var'),
    '--sms', `file:${smsLog}`, '--heartbeat', '3600', '--conn-rate', '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((r) => child.stdout.once('data', r));
  const url = `ws://127.0.0.1:${port}/`;
  const key = S.PrivateKey.generate();
  const phone = '+15550009999';

  // register one account
  let account;
  await new Promise((resolve, reject) => {
    connect(url, (ws, f) => {
      if (f.code_requested) {
        const code = JSON.parse(readFileSync(smsLog, 'utf8').trim().split('\n').pop()).code;
        send(ws, 'register', { phone, code, identity_key: key.getPublicKey().serialize() });
      } else if (f.registered) {
        account = Buffer.from(f.registered.account_id);
        ws.close();
        resolve();
      } else if (f.error) reject(new Error(f.error.reason));
    }).then((ws) => send(ws, 'request_code', { phone }), reject);
  });
  await sleep(500);
  const base = rssOf(child.pid);
  const tcpBase = tcpMem();

  const socks = [];
  let authed = 0;
  const dev = Buffer.alloc(4);
  dev.writeUInt32BE(1);
  await new Promise((resolve, reject) => {
    let started = 0;
    const more = () => {
      while (started < n && started - authed < 256) {
        started++;
        connect(url, (ws, f) => {
          if (f.hello) send(ws, 'connect', { account_id: account, device_id: 1, receive: false });
          else if (f.challenge) {
            const msg = Buffer.concat([Buffer.from('parley-auth-v1'), Buffer.from(f.challenge.nonce), account, dev]);
            send(ws, 'authenticate', { signature: key.sign(msg) });
          } else if (f.authenticated) {
            if (++authed === n) resolve();
            more();
          } else if (f.error) reject(new Error(f.error.reason));
        }).then((ws) => socks.push(ws), reject);
      }
    };
    more();
    setTimeout(() => reject(new Error(`only ${authed}/${n} authenticated in time`)), 300000);
  });
  await sleep(2000);
  const after = rssOf(child.pid);
  const result = {
    connections: n, server_rss_before: base, server_rss_after: after,
    server_bytes_per_connection: Math.round((after - base) / n),
    // all TCP sockets of the machine, both ends of every loopback connection: idle
    // sockets hold almost no buffers, so this is small and noisy
    kernel_tcp_mem_bytes_before: tcpBase, kernel_tcp_mem_bytes_after: tcpMem(),
  };
  for (const ws of socks) ws.terminate();
  child.kill('SIGTERM');
  await new Promise((r) => child.on('exit', r));
  rmSync(dir, { recursive: true, force: true });
  return result;
}

const results = [];
for (const n of counts) results.push(await measure(Number(n)));
console.log(JSON.stringify({ machine: { cpu: os.cpus()[0].model, cores: os.cpus().length }, results }, null, 1));
