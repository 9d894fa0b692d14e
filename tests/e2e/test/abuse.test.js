// Abuse resistance (issue 20): one address, or one stranger, must not be able to take the
// server, a number or the disk away from everyone else. Each test is an attack that
// succeeded on the server before its fix, with an honest user checked alongside.
import test from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import WebSocket from 'ws';
import { Parleyd, tempDir, removeDir, smallVolume, unmountVolume } from '../lib/parleyd.js';
import { Client, ErrorCode, register, authenticate, identity, uploadKeys, lastCode, sign, authMessage } from '../lib/client.js';

const TIMEOUT = { timeout: 120000 };
let phoneCounter = 0;
const phone = () => `+1559${String(process.pid % 1000).padStart(3, '0')}${String(phoneCounter++).padStart(4, '0')}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function withServer(t, opts = {}) {
  const dir = tempDir();
  const smsLog = path.join(dir, 'sms.log');
  const d = await Parleyd.start({ dataDir: path.join(dir, 'var'), sms: `file:${smsLog}`, ...opts });
  t.after(async () => { if (d.child.exitCode === null && d.child.signalCode === null) await d.stop(); removeDir(dir); });
  return { d, dir, smsLog };
}

// A TCP connection from localAddress that sends nothing (a half-open handshake); records
// what the server says and when it hangs up.
function halfOpen(port, localAddress) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port, localAddress });
    const h = { s, data: '', closed: false };
    h.gone = new Promise((r) => s.on('close', () => { h.closed = true; r(); }));
    s.on('data', (b) => { h.data += b; });
    s.on('error', () => {});
    s.on('connect', () => resolve(h));
    setTimeout(() => resolve(h), 5000); // refused before connect completes: resolve anyway
  });
}

// A WebSocket from localAddress: resolves with its first frame's body (Hello), or rejects.
function openFrom(url, localAddress) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, localAddress });
    const c = new Client(ws);
    ws.on('error', reject);
    c.next().then((f) => { c.hello = f.hello; resolve(c); }, reject);
  });
}

test('connections: one address holds at most its cap, half-open handshakes included, and they time out; others get in', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t, { extra: ['--max-conns-per-address', '20', '--conn-rate', '0', '--auth-timeout', '2'] });
  const reg = await register(d.url, phone(), smsLog);
  const hostile = [];
  for (let i = 0; i < 25; i++) hostile.push(await halfOpen(d.port, '127.0.0.1'));
  await sleep(300);
  const refused = hostile.filter((h) => h.data.startsWith('HTTP/1.1 503'));
  assert.equal(refused.length, 5, `refused ${refused.length} of 25 (cap 20)`);
  assert.ok(refused.every((h) => /\r\nRetry-After: \d+\r\n/.test(h.data)), refused[0]?.data);
  assert.equal(hostile.filter((h) => !h.closed && !h.data).length, 20, 'the first 20 are held');

  // another address is not affected: its device authenticates
  const c = await openFrom(d.url, '127.0.0.2');
  assert.ok(c.hello, 'a connection from another address gets Hello');
  assert.ok((await authenticate(c, reg.account, 1, reg.id.priv)).authenticated);

  // the half-open ones are hung up on after the deadline (2 s), not held for a minute
  await Promise.race([Promise.all(hostile.map((h) => h.gone)), sleep(6000)]);
  assert.equal(hostile.filter((h) => !h.closed).length, 0, 'every half-open connection was closed');
  // and the address may connect again
  const again = await openFrom(d.url, '127.0.0.1');
  assert.ok(again.hello);
  assert.ok((await c.request('ping', { nonce: 3 })).pong, 'the authenticated connection stays');
  again.ws.terminate();
  c.ws.terminate();
});

test('a connection that upgrades but never authenticates is closed at the deadline; authenticated ones stay', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t, { extra: ['--auth-timeout', '1'] });
  const me = phone();
  const reg = await register(d.url, me, smsLog);
  const honest = await Client.open(d.url);
  assert.ok((await authenticate(honest, reg.account, 1, reg.id.priv)).authenticated);
  const idle = await Client.open(d.url);
  assert.ok(idle.hello);
  // pings keep it talking, but talk is not authentication
  const pinger = setInterval(() => idle.ws.readyState === WebSocket.OPEN && idle.ws.ping(), 200);
  const closed = await Promise.race([idle.closed, sleep(5000).then(() => null)]);
  clearInterval(pinger);
  assert.ok(closed, 'the unauthenticated connection was closed');
  assert.equal(closed.code, 1008);
  assert.match(closed.reason, /authentication timeout/);
  assert.ok((await honest.request('ping', { nonce: 1 })).pong, 'the authenticated one is still up');
  honest.ws.terminate();
});

test('descriptors: the soft limit is raised to the hard one, and past the reserve connections are refused with 503, not dropped', TIMEOUT, async (t) => {
  // soft 200, hard 700: the server raises itself to 700 and takes up to 700 - 256 = 444
  const { d } = await withServer(t, { nofile: [200, 700], extra: ['--max-conns-per-address', '0', '--conn-rate', '0', '--auth-timeout', '30'] });
  const hostile = [];
  for (let i = 0; i < 480; i++) hostile.push(await halfOpen(d.port, `127.0.0.${3 + (i % 4)}`));
  await sleep(500);
  const held = hostile.filter((h) => !h.closed && !h.data).length;
  const answered = hostile.filter((h) => h.data.startsWith('HTTP/1.1 503')).length;
  assert.equal(held, 444, `${held} held (the soft limit was 200)`);
  assert.equal(answered, 480 - 444, `${answered} answered 503; the rest must not be dropped without an answer`);
  for (const h of hostile) h.s.destroy();
  await sleep(300);
  const c = await openFrom(d.url, '127.0.0.2');
  assert.ok(c.hello, 'the server still accepts once they are gone');
  c.ws.terminate();
});

// Registration: codes one address, and the server, may cause; a bounded SMS queue.
test('codes: one address gets at most --code-rate an hour, the server --code-global-rate a minute; others still get theirs', TIMEOUT, async (t) => {
  const { d } = await withServer(t, { extra: ['--code-rate', '5', '--code-global-rate', '8'] });
  const pump = await openFrom(d.url, '127.0.0.1');
  const answers = [];
  for (let i = 0; i < 8; i++) answers.push(await pump.request('request_code', { phone: phone() }));
  assert.equal(answers.filter((a) => a.code_requested).length, 5, JSON.stringify(answers.map((a) => a.error?.reason)));
  const limited = answers.filter((a) => a.error);
  assert.ok(limited.every((a) => a.error.code === ErrorCode.RATE_LIMITED && /from this address/.test(a.error.reason)));
  assert.ok(limited[0].error.retry_after_ms > 60000, 'the wait is long (an hour\'s budget)');
  // another address still gets codes, until the server's own minute is used up (8)
  const other = await openFrom(d.url, '127.0.0.2');
  const more = [];
  for (let i = 0; i < 4; i++) more.push(await other.request('request_code', { phone: phone() }));
  assert.deepEqual(more.map((a) => Boolean(a.code_requested)), [true, true, true, false]);
  assert.match(more[3].error.reason, /server is sending too many verification codes/);
  pump.ws.terminate();
  other.ws.terminate();
});

test('codes: the SMS sends waiting for the provider are bounded; past --sms-queue the answer is "busy" at once', TIMEOUT, async (t) => {
  // a gateway that takes 1.5 s to answer
  const http = await import('node:http');
  const gateway = http.createServer((req, res) => { req.resume(); setTimeout(() => res.end('ok'), 1500); });
  await new Promise((r) => gateway.listen(0, '127.0.0.1', r));
  t.after(() => gateway.close());
  const { d } = await withServer(t, { sms: `http://127.0.0.1:${gateway.address().port}/sms`, extra: ['--sms-queue', '2', '--threads', '1'] });
  const c = await openFrom(d.url, '127.0.0.1');
  const started = Date.now();
  const pending = [];
  for (let i = 0; i < 5; i++) pending.push(c.request('request_code', { phone: phone() }).then((a) => ({ a, ms: Date.now() - started })));
  const all = await Promise.all(pending);
  const sent = all.filter((x) => x.a.code_requested), busy = all.filter((x) => x.a.error);
  assert.equal(sent.length, 2, JSON.stringify(all));
  assert.equal(busy.length, 3);
  assert.ok(busy.every((x) => /SMS provider is busy/.test(x.a.error.reason) && x.ms < 1000), JSON.stringify(busy));
  c.ws.terminate();
});

test('codes: a stranger asking again cannot void the owner\'s code or use up the number\'s hour alone', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const number = phone();
  const owner = await openFrom(d.url, '127.0.0.1');
  assert.ok((await owner.request('request_code', { phone: number })).code_requested);
  const ownerCode = lastCode(smsLog, number);
  const stranger = await openFrom(d.url, '127.0.0.3');
  const tries = [];
  for (let i = 0; i < 4; i++) tries.push(await stranger.request('request_code', { phone: number }));
  assert.deepEqual(tries.map((a) => Boolean(a.code_requested)), [true, true, true, false], 'the stranger gets 3 of the 5');
  assert.equal(tries[3].error.code, ErrorCode.CODE_RATE_LIMITED);
  assert.equal(lastCode(smsLog, number), ownerCode, 'asking again sends the same code');
  // the owner can still ask (its share is left) and registers with the code it got first
  assert.ok((await owner.request('request_code', { phone: number })).code_requested);
  const id = identity();
  const reg = await owner.request('register', { phone: number, code: ownerCode, identity_key: id.pub, registration_id: 7, keys: uploadKeys(id) });
  assert.ok(reg.registered, JSON.stringify(reg));
  owner.ws.terminate();
  stranger.ws.terminate();
});

test('lookups: limited per device a second and a day, so the directory cannot be walked', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t, { extra: ['--lookup-rate', '10', '--lookup-daily', '40'] });
  const reg = await register(d.url, phone(), smsLog);
  const c = await Client.open(d.url);
  assert.ok((await authenticate(c, reg.account, 1, reg.id.priv)).authenticated);
  const burst = await Promise.all(Array.from({ length: 60 }, () => c.request('lookup', { phone: phone() })));
  const answered = burst.filter((a) => !a.error || a.error.code !== ErrorCode.RATE_LIMITED).length;
  assert.ok(answered >= 15 && answered <= 25, `${answered} of 60 answered at once (rate 10, burst 20)`);
  assert.ok(burst.some((a) => a.error?.code === ErrorCode.RATE_LIMITED && /lookups from this device/.test(a.error.reason)));
  // over a few seconds the daily budget (40) runs out, and the wait says so
  let total = answered, last = null;
  for (let i = 0; i < 40 && total < 60; i++) {
    await sleep(150);
    last = await c.request('lookup', { phone: phone() });
    if (!(last.error?.code === ErrorCode.RATE_LIMITED)) total++;
    else if (/today/.test(last.error.reason)) break;
  }
  assert.ok(total <= 40, `${total} lookups answered with a daily budget of 40`);
  assert.match(last.error?.reason ?? '', /looked up too many numbers today/);
  c.ws.terminate();
});

test('prekeys: a stranger fetching again and again cannot drain an account\'s one-time prekeys', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t, { extra: ['--fetch-target-rate', '5', '--fetch-rate', '1000'] });
  const target = await register(d.url, phone(), smsLog, identity(), { prekeys: 50 });
  const thief = await register(d.url, phone(), smsLog);
  const c = await Client.open(d.url);
  assert.ok((await authenticate(c, thief.account, 1, thief.id.priv)).authenticated);
  const got = [];
  for (let i = 0; i < 20; i++) got.push(await c.request('fetch_bundles', { account_id: target.account }));
  assert.ok(got.every((g) => g.bundles?.bundles?.length === 1), JSON.stringify(got[0]));
  const withPrekey = got.filter((g) => g.bundles.bundles[0].prekey).length;
  assert.equal(withPrekey, 5, `${withPrekey} of 20 bundles carried a one-time prekey (limit 5 a minute)`);
  assert.ok(got.every((g) => g.bundles.bundles[0].signed_prekey), 'every bundle still lets a session start');
  // the target's prekeys are still there: 45 left
  const owner = await Client.open(d.url);
  assert.ok((await authenticate(owner, target.account, 1, target.id.priv)).authenticated);
  const status = await owner.request('upload_keys', {});
  assert.equal(status.keys_uploaded.prekeys_left, 45);
  c.ws.terminate();
  owner.ws.terminate();
});

test('the parley command shows what a server says without its control characters', TIMEOUT, async (t) => {
  const { WebSocketServer } = await import('ws');
  const { Frame } = await import('../lib/client.js');
  const { run } = await import('../lib/cli.js');
  const { mkdtempSync } = await import('node:fs');
  const os = await import('node:os');
  const evil = 'no\x1b]0;owned\x07\x1b[2J\rparley: all is fine\x9b';
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.on('listening', r));
  t.after(() => wss.close());
  wss.on('connection', (ws) => {
    ws.send(Frame.encode(Frame.create({ version: 1, hello: { protocol_version: 1, heartbeat_seconds: 30, max_frame_bytes: 262144 } })).finish());
    ws.on('message', (data) => {
      const f = Frame.decode(data);
      ws.send(Frame.encode(Frame.create({ version: 1, request_id: f.request_id, error: { code: 1, reason: evil } })).finish());
    });
  });
  const home = mkdtempSync(path.join(os.tmpdir(), 'parley-e2e-'));
  t.after(() => removeDir(home));
  const r = await run(home, ['register', '--server', `ws://127.0.0.1:${wss.address().port}/`, '--phone', phone()]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /refused to send a code/);
  assert.ok(!/[\x00-\x09\x0b-\x1f\x7f]/.test(r.stderr), JSON.stringify(r.stderr));
  assert.ok(!r.stderr.includes('\u009b'), 'no C1 control either');
  assert.match(r.stderr, /\\x1b\]0;owned\\x07/);
});

// ---- memory: peers that never read, and messages that never end -------------------------

// Under AddressSanitizer freed memory sits in its quarantine: the memory bounds are
// checked on release builds only (the closes are checked on both).
const SANITIZED = process.env.PARLEY_SANITIZED === '1';

function rssAnonKb(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/RssAnon:\s+(\d+) kB/.exec(status)[1]);
}

// A client frame (masked), as RFC 6455 has it.
function clientFrame(opcode, payload, fin = true) {
  const mask = crypto.randomBytes(4);
  const len = payload.length;
  const head = len < 126 ? Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | len])
    : len < 65536 ? Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | 126, len >> 8, len & 255])
      : (() => { const b = Buffer.alloc(10); b[0] = (fin ? 0x80 : 0) | opcode; b[1] = 0x80 | 127; b.writeBigUInt64BE(BigInt(len), 2); return b; })();
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i] ^= mask[i & 3];
  return Buffer.concat([head, mask, body]);
}

// A raw upgraded connection that does not read what the server sends (after the 101).
function rawUpgrade(port, localAddress) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, localAddress });
    const h = { s, closed: false, got: Buffer.alloc(0) };
    h.gone = new Promise((r) => s.on('close', () => { h.closed = true; r(); }));
    s.on('error', () => {});
    s.on('connect', () => {
      s.write(`GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    });
    const onData = (b) => {
      h.got = Buffer.concat([h.got, b]);
      if (h.got.includes('\r\n\r\n')) {
        s.off('data', onData);
        s.pause(); // from now on nothing is read: the server's answers pile up
        if (!h.got.toString().startsWith('HTTP/1.1 101')) reject(new Error(h.got.toString()));
        else resolve(h);
      }
    };
    s.on('data', onData);
  });
}

test('memory: unauthenticated peers that never read and keep sending bad frames are cut off, not queued for', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t, { extra: ['--conn-rate', '0', '--auth-timeout', '30'] });
  const reg = await register(d.url, phone(), smsLog);
  const honest = await Client.open(d.url);
  assert.ok((await authenticate(honest, reg.account, 1, reg.id.priv)).authenticated);
  const before = rssAnonKb(d.child.pid);
  const hostile = [];
  for (let i = 0; i < 100; i++) hostile.push(await rawUpgrade(d.port, `127.0.0.${10 + (i % 8)}`));
  const empty = clientFrame(1, Buffer.alloc(0)); // an empty text frame: each one answered with an Error
  const burst = Buffer.concat(Array.from({ length: 500 }, () => empty));
  let peak = before;
  for (let round = 0; round < 20; round++) {
    for (const h of hostile) if (!h.closed) h.s.write(burst);
    await sleep(50);
    peak = Math.max(peak, rssAnonKb(d.child.pid));
  }
  for (const h of hostile) { h.s.on('data', () => {}); h.s.resume(); } // read again, to see the hang-up
  await Promise.race([Promise.all(hostile.map((h) => h.gone)), sleep(5000)]);
  assert.equal(hostile.filter((h) => !h.closed).length, 0, 'every one of them was closed');
  assert.ok(SANITIZED || peak - before < 32 * 1024, `server memory grew by ${peak - before} kB under 100 hostile connections`);
  assert.ok((await honest.request('ping', { nonce: 9 })).pong, 'the honest connection is served throughout');
  honest.ws.terminate();
  await sleep(2000); // parleyd gives memory back a second after closes stop
  const closed = rssAnonKb(d.child.pid);
  assert.ok(SANITIZED || closed - before < 8 * 1024, `server memory ${closed - before} kB above where it started once they closed`);
  t.diagnostic(`peak RssAnon growth ${peak - before} kB, ${closed - before} kB once they closed`);
});

test('memory: messages that never end are bounded before authentication, and go with their connection', TIMEOUT, async (t) => {
  const { d } = await withServer(t, { extra: ['--conn-rate', '0', '--auth-timeout', '30'] });
  const before = rssAnonKb(d.child.pid);
  const hostile = [];
  for (let i = 0; i < 300; i++) hostile.push(await rawUpgrade(d.port, `127.0.0.${20 + (i % 8)}`));
  const first = clientFrame(2, crypto.randomBytes(8192), false); // binary, FIN not set
  const more = clientFrame(0, crypto.randomBytes(8192), false);   // continuation, FIN not set
  const ping = clientFrame(9, Buffer.from('hi'));
  for (const h of hostile) h.s.write(first);
  for (let k = 0; k < 31; k++) { // 256 KiB in fragments each, with pings between
    for (const h of hostile) if (!h.closed) h.s.write(Buffer.concat([more, ping]));
    await sleep(10);
  }
  const after = rssAnonKb(d.child.pid);
  for (const h of hostile) { h.s.on('data', () => {}); h.s.resume(); }
  await Promise.race([Promise.all(hostile.map((h) => h.gone)), sleep(5000)]);
  assert.equal(hostile.filter((h) => !h.closed).length, 0, 'each was closed (message too big before authentication)');
  // at most 64 KiB each before authentication (300 x 64 KiB = 18.75 MiB), and most are gone by now
  assert.ok(SANITIZED || after - before < 24 * 1024, `server memory ${after - before} kB above where it started`);
  await sleep(2000); // parleyd gives memory back a second after closes stop
  const closed = rssAnonKb(d.child.pid);
  assert.ok(SANITIZED || closed - before < 8 * 1024, `server memory ${closed - before} kB above where it started once they closed`);
  t.diagnostic(`RssAnon growth ${after - before} kB after 300 unfinished 256 KiB messages, ${closed - before} kB once they closed`);
});

test('re-registration: a connection that authenticated with the old key just before never receives for the new install', TIMEOUT, async (t) => {
  // commits held 30 ms: the old connection's barrier and the registration share a batch
  const { d, smsLog } = await withServer(t, { env: { PARLEYD_COMMIT_DELAY_MS: '30' } });
  const sender = await register(d.url, phone(), smsLog);
  const s = await Client.open(d.url);
  assert.ok((await authenticate(s, sender.account, 1, sender.id.priv, { receive: false })).authenticated);
  let leaks = 0, raced = 0, closedRight = 0;
  for (let attempt = 0; attempt < 20; attempt++) {
    const number = phone();
    const old = await register(d.url, number, smsLog);
    // the old install's receiving connection is half way through authenticating ...
    const c = await Client.open(d.url);
    const ch = await c.request('connect', { account_id: old.account, device_id: 1, receive: true });
    const sig = sign(old.id.priv, authMessage(ch.challenge.nonce, old.account, 1));
    // ... while the number is registered again elsewhere
    const r = await Client.open(d.url);
    assert.ok((await r.request('request_code', { phone: number })).code_requested);
    const fresh = identity();
    const code = lastCode(smsLog, number);
    // the registration goes first; the old key's proof arrives 5 ms later, while the
    // registration waits for its commit (so the proof still checks out)
    const registered = r.request('register', { phone: number, code, identity_key: fresh.pub, registration_id: 77, keys: uploadKeys(fresh) });
    await sleep(5);
    const [auth, reg] = await Promise.all([c.request('authenticate', { signature: sig }), registered]);
    assert.ok(reg.registered, JSON.stringify(reg));
    if (auth.authenticated) raced++;
    // a message for the new install
    const id = crypto.randomBytes(16);
    const ack = await s.request('send', { message_id: id, recipient_account: reg.registered.account_id,
      messages: [{ device_id: 1, registration_id: 77, type: 2, body: Buffer.from(`for the new install ${attempt}`) }] });
    assert.ok(ack.send_ack, JSON.stringify(ack));
    // the old connection must be closed (4000), never handed it
    const end = Date.now() + 1500;
    for (;;) {
      const f = await c.next(Math.max(1, end - Date.now())).catch(() => null);
      if (!f) break;
      if (f.deliver?.envelopes?.some((e) => Buffer.from(e.message_id).equals(id))) leaks++;
    }
    const closed = await Promise.race([c.closed, sleep(500).then(() => null)]);
    if (auth.authenticated) closedRight += closed?.code === 4000 ? 1 : 0;
    c.ws.terminate();
    r.ws.terminate();
  }
  assert.equal(closedRight, raced, `${raced - closedRight} old connections were left open`);
  assert.equal(leaks, 0, `${leaks} of 20 attempts handed the new install's envelope to the old connection (${raced} authenticated)`);
  t.diagnostic(`${raced} of 20 old connections authenticated in the race; none received`);
  s.ws.terminate();
});

// ---- storage quotas: one account cannot take the disk ------------------------------------

// A connection of a registered account (receive: whether it is the device's receiving one).
async function connected(d, reg, receive = false) {
  const c = await Client.open(d.url);
  assert.ok((await authenticate(c, reg.account, 1, reg.id.priv, { receive })).authenticated);
  return c;
}

function sendTo(c, to, bytes) {
  return c.request('send', { message_id: crypto.randomBytes(16), recipient_account: to.account,
    messages: [{ device_id: 1, type: 2, body: crypto.randomBytes(bytes) }] });
}

// Sends until the first refusal: how many were acknowledged, and the refusal.
async function sendUntilRefused(c, to, bytes, max) {
  for (let n = 0; n < max; n++) {
    const a = await sendTo(c, to, bytes);
    if (!a.send_ack) return { accepted: n, error: a.error };
  }
  return { accepted: max, error: null };
}

// Takes everything waiting in the device's inbox (its receiving connection acks it all);
// then a new receiving connection, whose delivery starts only after the acks' commit,
// finds it empty.
async function drain(d, reg) {
  const c = await connected(d, reg, true);
  let taken = 0;
  for (;;) {
    const f = await c.next();
    if (!f.deliver) continue;
    const envs = f.deliver.envelopes ?? [];
    taken += envs.length;
    if (envs.length) c.push('deliver_ack', { up_to_seq: envs.at(-1).seq });
    if (f.deliver.drained) break;
  }
  const again = await connected(d, reg, true);
  for (;;) {
    const f = await again.next();
    if (!f.deliver) continue;
    assert.equal(f.deliver.envelopes?.length ?? 0, 0, 'the inbox is empty once acked');
    if (f.deliver.drained) break;
  }
  c.ws.terminate();
  again.ws.terminate();
  return taken;
}

// The day quota's tests must not run across midnight UTC.
async function notNearMidnight() {
  const left = 86400000 - (Date.now() % 86400000);
  if (left < 120000) await sleep(left + 1000);
}

test('quotas: an inbox holds its count and bytes, an account its day\'s sends; each refusal says so, others go on; an inbox\'s count survives a restart', TIMEOUT, async (t) => {
  await notNearMidnight();
  const { d, smsLog } = await withServer(t, { extra: ['--inbox-max-messages', '20', '--inbox-max-bytes', '64K', '--daily-sends', '40'] });
  const flooder = await register(d.url, phone(), smsLog);
  const victim = await register(d.url, phone(), smsLog);
  const alice = await register(d.url, phone(), smsLog);
  const bob = await register(d.url, phone(), smsLog);
  const f = await connected(d, flooder);
  const a = await connected(d, alice);

  // the inbox's count: 20 small messages, then INBOX_FULL; another account's sends go on
  let r = await sendUntilRefused(f, victim, 100, 30);
  assert.equal(r.accepted, 20);
  assert.equal(r.error?.code, ErrorCode.INBOX_FULL, JSON.stringify(r.error));
  assert.match(r.error.reason, /inbox on the server is full/);
  assert.deepEqual(r.error.devices?.device_ids, [1], 'the full device is named');
  assert.ok(Buffer.from(r.error.devices.account_id).equals(Buffer.from(victim.account)));
  assert.ok((await sendTo(a, bob, 100)).send_ack, 'an honest pair is not held up');
  // the victim comes online and takes them: its inbox has room again
  assert.equal(await drain(d, victim), 20);
  // the inbox's bytes: 7 envelopes of 8 KiB fit in 64 KiB, the 8th does not
  r = await sendUntilRefused(f, victim, 8192, 30);
  assert.equal(r.accepted, 7);
  assert.equal(r.error?.code, ErrorCode.INBOX_FULL);
  assert.equal(await drain(d, victim), 7);
  // the day: 27 sends so far, 13 more, then DAILY_QUOTA until the next UTC day
  r = await sendUntilRefused(f, victim, 100, 30);
  assert.equal(r.accepted, 13);
  assert.equal(r.error?.code, ErrorCode.DAILY_QUOTA, JSON.stringify(r.error));
  const untilMidnight = 86400000 - (Date.now() % 86400000);
  assert.ok(r.error.retry_after_ms > 0 && Math.abs(r.error.retry_after_ms - untilMidnight) < 60000, `retry after ${r.error.retry_after_ms} ms`);
  assert.ok((await sendTo(a, bob, 100)).send_ack, 'another account still sends');
  // a read receipt is a write too
  const rc = await f.request('receipt', { status: 2, to_account: bob.account, message_ids: [crypto.randomBytes(16)] });
  assert.equal(rc.error?.code, ErrorCode.DAILY_QUOTA, JSON.stringify(rc));
  f.ws.terminate();
  a.ws.terminate();

  // what an inbox holds is kept in the data file: after a restart the victim's 13 count
  await d.stop();
  const d2 = await Parleyd.start({ dataDir: d.dataDir, sms: `file:${smsLog}`, extra: ['--inbox-max-messages', '14'] });
  try {
    const a2 = await connected(d2, alice);
    assert.ok((await sendTo(a2, victim, 100)).send_ack, 'the 14th fits');
    assert.equal((await sendTo(a2, victim, 100)).error?.code, ErrorCode.INBOX_FULL, 'the 15th does not');
    a2.ws.terminate();
  } finally {
    await d2.stop();
  }
});

test('quotas: an account\'s bytes a day; a first write larger than a quota still goes', TIMEOUT, async (t) => {
  await notNearMidnight();
  const { d, smsLog } = await withServer(t, { extra: ['--daily-bytes', '64K'] });
  const sender = await register(d.url, phone(), smsLog);
  const to = await register(d.url, phone(), smsLog);
  const s = await connected(d, sender);
  const r = await sendUntilRefused(s, to, 8192, 30);
  assert.equal(r.accepted, 7);
  assert.equal(r.error?.code, ErrorCode.DAILY_QUOTA, JSON.stringify(r.error));
  assert.ok((await sendTo(s, to, 100)).send_ack, 'a small one still fits the day');
  // an account's first write of the day, and an empty inbox, take one larger than the quota
  const { d: d2, smsLog: log2 } = await withServer(t, { extra: ['--daily-bytes', '64K', '--inbox-max-bytes', '64K'] });
  const big = await register(d2.url, phone(), log2);
  const other = await register(d2.url, phone(), log2);
  const b = await connected(d2, big);
  const third = await register(d2.url, phone(), log2);
  assert.ok((await sendTo(b, other, 100 * 1024)).send_ack, 'the first write of the day, to an empty inbox');
  assert.equal((await sendTo(b, other, 100)).error?.code, ErrorCode.INBOX_FULL, 'then that inbox is full');
  assert.equal((await sendTo(b, third, 100)).error?.code, ErrorCode.DAILY_QUOTA, 'and the day is used up');
  s.ws.terminate();
  b.ws.terminate();
});

test('a full disk is answered STORAGE_FULL, never INTERNAL; nothing acked is lost and sends resume once acks free room', TIMEOUT, async (t) => {
  const dir = tempDir();
  const vol = smallVolume(dir, 24);
  if (!vol) { // CI runs as root on a machine that can mount; a container without CAP_SYS_ADMIN cannot
    removeDir(dir);
    t.skip('cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)');
    return;
  }
  let d = null;
  t.after(async () => { // in this order: the server, the volume, the directory
    if (d && d.child.exitCode === null && d.child.signalCode === null) await d.stop();
    unmountVolume(vol);
    removeDir(dir);
  });
  const smsLog = path.join(dir, 'sms.log');
  const big = ['--inbox-max-bytes', '4095M', '--daily-bytes', '4095M', '--send-rate', '100000'];
  d = await Parleyd.start({ dataDir: path.join(vol, 'var'), sms: `file:${smsLog}`, extra: big });
  const sender = await register(d.url, phone(), smsLog);
  const to = await register(d.url, phone(), smsLog);
  const s = await connected(d, sender);
  const codes = {};
  let acked = 0;
  for (let round = 0; round < 3; round++) {
    // fill it: 200 KiB bodies until the store says no, then a few more tries
    let refused = 0;
    for (let i = 0; i < 400 && refused < 8; i++) {
      const a = await sendTo(s, to, 200 * 1024);
      if (a.send_ack) { acked++; continue; }
      refused++;
      const name = Object.keys(ErrorCode).find((k) => ErrorCode[k] === a.error?.code) ?? JSON.stringify(a);
      codes[name] = (codes[name] ?? 0) + 1;
    }
    assert.ok(refused > 0, `round ${round}: the 24 MiB volume never filled`);
    // everything acknowledged is there, once; taking it frees the room for more
    assert.equal(await drain(d, to), acked, `round ${round}: every acknowledged message delivered`);
    acked = 0;
    // the log gives the room back once the taken segments go (after the next commits),
    // as a client retrying STORAGE_FULL with its back-off sees
    let resumed = null;
    for (let i = 0; i < 50 && !resumed?.send_ack; i++) {
      resumed = await sendTo(s, to, 1000);
      if (!resumed.send_ack) await sleep(100);
    }
    assert.ok(resumed.send_ack, `round ${round}: sends resume after the acks: ${JSON.stringify(resumed)}`);
    acked = 1;
  }
  t.diagnostic(`refusals on a full 24 MiB tmpfs: ${JSON.stringify(codes)}`);
  assert.deepEqual(Object.keys(codes), ['STORAGE_FULL'], JSON.stringify(codes));
  s.ws.terminate();
});

test('the development SMS log is bounded: past --sms-log-max it starts again, the last one kept as .1', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t, { extra: ['--sms-log-max', '4K'] });
  const c = await Client.open(d.url);
  const numbers = Array.from({ length: 250 }, () => phone());
  for (const number of numbers) assert.ok((await c.request('request_code', { phone: number })).code_requested);
  const line = `{"phone":"${numbers[0]}","code":"123456"}\n`.length;
  const now = statSync(smsLog).size, before = statSync(`${smsLog}.1`).size;
  assert.ok(now <= 4096 + line && before <= 4096 + line, `sms.log ${now} B, sms.log.1 ${before} B`);
  const kept = (readFileSync(`${smsLog}.1`, 'utf8') + readFileSync(smsLog, 'utf8')).trim().split('\n').map((l) => JSON.parse(l).phone);
  assert.ok(kept.length < 250 && !kept.includes(numbers[0]), `${kept.length} of 250 codes kept`);
  assert.equal(kept.at(-1), numbers.at(-1), 'the newest code is in the log');
  assert.match(lastCode(smsLog, numbers.at(-1)), /^\d{6}$/);
  c.ws.terminate();
});
