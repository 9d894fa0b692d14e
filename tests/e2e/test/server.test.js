// parleyd end to end over loopback: Hello, ping, every bad-input error on a live
// connection, registration with the file and http SMS providers and their limits,
// challenge-response authentication (signatures made by curve25519-js, the
// libsignal-compatible XEdDSA), lookup, re-registration, heartbeat timeouts,
// persistence across a restart and kill -9, graceful shutdown.
import test from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import crypto from 'node:crypto';
import path from 'node:path';
import WebSocket from 'ws';
import { Parleyd, tempDir, removeDir } from '../lib/parleyd.js';
import { Client, ErrorCode, Frame, identity, register, uploadKeys, authenticate, lastCode, sign, authMessage } from '../lib/client.js';

const TIMEOUT = { timeout: 60000 };
let phoneCounter = 0;
const phone = () => `+1555${String(process.pid % 1000).padStart(3, '0')}${String(phoneCounter++).padStart(4, '0')}`;

async function withServer(t, opts = {}) {
  const dir = tempDir();
  const sms = opts.sms ?? `file:${path.join(dir, 'sms.log')}`;
  const d = await Parleyd.start({ dataDir: path.join(dir, 'var'), sms, ...opts });
  t.after(async () => { if (d.child.exitCode === null && d.child.signalCode === null) await d.stop(); removeDir(dir); });
  return { d, dir, smsLog: path.join(dir, 'sms.log') };
}

function expectError(f, code, what) {
  assert.ok(f.error, `${what}: expected an Error, got ${JSON.stringify(f)}`);
  assert.equal(f.error.code, code, `${what}: code ${f.error.code} (${f.error.reason})`);
  assert.equal(typeof f.error.reason, 'string');
}

test('Hello first, then ping/pong with the request id and nonce', TIMEOUT, async (t) => {
  const { d } = await withServer(t, { heartbeat: 20 });
  const c = await Client.open(d.url);
  assert.equal(c.hello.protocol_version, 1);
  assert.equal(c.hello.heartbeat_seconds, 20);
  assert.ok(c.hello.max_frame_bytes >= 1024);
  assert.ok(Math.abs(Number(c.hello.server_time_ms) - Date.now()) < 60000);
  const p = await c.request('ping', { nonce: 12345 });
  assert.equal(Number(p.pong.nonce), 12345);
  assert.equal(p.version, 1);
  await c.close();
});

test('bad input gets its error and the connection keeps working', TIMEOUT, async (t) => {
  const { d } = await withServer(t);
  const c = await Client.open(d.url);
  c.sendRaw('hello', { binary: false });
  expectError(await c.next(), ErrorCode.TEXT_FRAME, 'text frame');
  c.sendRaw(Buffer.from([0xff, 0xff, 0xff, 0x01, 0x02]));
  expectError(await c.next(), ErrorCode.MALFORMED_FRAME, 'garbage');
  expectError(await c.request('ping', {}, { version: 9 }), ErrorCode.UNSUPPORTED_VERSION, 'version 9');
  c.sendRaw(Frame.encode(Frame.create({ version: 1, request_id: 99 })).finish());
  const empty = await c.next();
  expectError(empty, ErrorCode.MALFORMED_FRAME, 'no body');
  assert.equal(Number(empty.request_id), 99);
  expectError(await c.request('hello', { protocol_version: 1 }), ErrorCode.UNKNOWN_FRAME, 'server-only frame');
  expectError(await c.request('lookup', { phone: '+15550000000' }), ErrorCode.NOT_AUTHENTICATED, 'lookup before auth');
  expectError(await c.request('send', { message_id: crypto.randomBytes(16) }), ErrorCode.NOT_AUTHENTICATED, 'send before auth');
  expectError(await c.request('authenticate', { signature: Buffer.alloc(64) }), ErrorCode.AUTH_FAILED, 'authenticate before connect');
  assert.ok((await c.request('ping', { nonce: 1 })).pong, 'still answering');
  await c.close();
});

test('an oversized frame closes the connection with 1009; others are unaffected', TIMEOUT, async (t) => {
  const { d } = await withServer(t, { maxFrame: 4096 });
  const good = await Client.open(d.url);
  const bad = await Client.open(d.url);
  bad.sendRaw(Buffer.alloc(5000, 1));
  assert.equal((await bad.closed).code, 1009);
  assert.ok((await good.request('ping', { nonce: 2 })).pong);
  await good.close();
});

test('registration: code by file, wrong code, one use, attempts and hourly limits', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const c = await Client.open(d.url);
  const id = identity();
  expectError(await c.request('request_code', { phone: '5550000' }), ErrorCode.INVALID_PHONE, 'not E.164');
  expectError(await c.request('request_code', { phone: '+1555abc0000' }), ErrorCode.INVALID_PHONE, 'letters');
  const me = phone();
  const r = await c.request('request_code', { phone: me });
  assert.equal(r.code_requested.expires_in_seconds, 600);
  const code = lastCode(smsLog, me);
  assert.match(code, /^[0-9]{6}$/);
  const wrong = code === '000000' ? '000001' : '000000';
  expectError(await c.request('register', { phone: me, code: wrong, identity_key: id.pub, keys: uploadKeys(id) }), ErrorCode.WRONG_CODE, 'wrong code');
  expectError(await c.request('register', { phone: me, code, identity_key: id.pub.subarray(1), keys: uploadKeys(id) }), ErrorCode.INVALID_KEY, '32-byte key');
  const reg = await c.request('register', { phone: me, code, identity_key: id.pub, keys: uploadKeys(id), registration_id: 5 });
  assert.equal(reg.registered.account_id.length, 16);
  assert.equal(reg.registered.device_id, 1);
  expectError(await c.request('register', { phone: me, code, identity_key: id.pub, keys: uploadKeys(id) }), ErrorCode.WRONG_CODE, 'code used twice');

  // five wrong tries burn a code; one address may make only two of them
  const other = phone();
  await c.request('request_code', { phone: other });
  const good = lastCode(smsLog, other);
  const bad = good === '111111' ? '222222' : '111111';
  const from = await Promise.all(['127.0.0.2', '127.0.0.3', '127.0.0.4'].map((a) => Client.open(d.url, { localAddress: a })));
  const tryBad = (conn) => conn.request('register', { phone: other, code: bad, identity_key: id.pub, keys: uploadKeys(id) });
  for (let i = 0; i < 2; i++) expectError(await tryBad(c), ErrorCode.WRONG_CODE, `wrong try ${i}`);
  expectError(await tryBad(c), ErrorCode.TOO_MANY_ATTEMPTS, 'a third wrong try from one address');
  for (let i = 0; i < 2; i++) expectError(await tryBad(from[0]), ErrorCode.WRONG_CODE, `wrong try ${i} from another address`);
  expectError(await tryBad(from[1]), ErrorCode.TOO_MANY_ATTEMPTS, 'fifth wrong try');
  expectError(await c.request('register', { phone: other, code: good, identity_key: id.pub, keys: uploadKeys(id) }), ErrorCode.TOO_MANY_ATTEMPTS, 'burnt code');

  // at most 5 codes per number per hour, 3 of them asked for from one address
  const busy = phone();
  for (let i = 0; i < 3; i++) assert.ok((await c.request('request_code', { phone: busy })).code_requested, `code ${i}`);
  expectError(await c.request('request_code', { phone: busy }), ErrorCode.CODE_RATE_LIMITED, 'fourth from one address');
  for (let i = 3; i < 5; i++) assert.ok((await from[2].request('request_code', { phone: busy })).code_requested, `code ${i}`);
  expectError(await from[2].request('request_code', { phone: busy }), ErrorCode.CODE_RATE_LIMITED, 'sixth code in the hour');
  for (const f of from) f.ws.terminate();
  await c.close();
});

test('authentication: a valid signature, a wrong one, a replayed one, an unknown device', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const me = phone();
  const { id, account } = await register(d.url, me, smsLog);

  const c = await Client.open(d.url);
  const ch = await c.request('connect', { account_id: account, device_id: 1 });
  assert.equal(ch.challenge.nonce.length, 32);
  const sig = sign(id.priv, authMessage(ch.challenge.nonce, account, 1));
  const ok = await c.request('authenticate', { signature: sig });
  assert.ok(ok.authenticated, JSON.stringify(ok));
  const look = await c.request('lookup', { phone: me });
  assert.deepEqual(look.lookup_result.devices.account_id, account);
  assert.deepEqual(look.lookup_result.devices.device_ids, [1]);
  expectError(await c.request('lookup', { phone: '+19995550000' }), ErrorCode.UNKNOWN_ACCOUNT, 'unknown number');

  // the same signature on another connection (another nonce) fails
  const c2 = await Client.open(d.url);
  await c2.request('connect', { account_id: account, device_id: 1 });
  expectError(await c2.request('authenticate', { signature: sig }), ErrorCode.AUTH_FAILED, 'replayed signature');
  expectError(await c2.request('lookup', { phone: me }), ErrorCode.NOT_AUTHENTICATED, 'still not authenticated');
  // a signature by another key fails; so does an unknown device
  expectError(await authenticate(c2, account, 1, identity().priv), ErrorCode.AUTH_FAILED, 'wrong key');
  expectError(await authenticate(c2, account, 2, id.priv), ErrorCode.AUTH_FAILED, 'unknown device');
  expectError(await authenticate(c2, crypto.randomBytes(16), 1, id.priv), ErrorCode.AUTH_FAILED, 'unknown account');
  assert.ok((await authenticate(c2, account, 1, id.priv)).authenticated, 'then the right key works');
  await c.close();
  await c2.close();
});

test('re-registering a number keeps the account and replaces the device key', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const me = phone();
  const first = await register(d.url, me, smsLog);
  const second = await register(d.url, me, smsLog);
  assert.deepEqual(second.account, first.account);
  const c = await Client.open(d.url);
  expectError(await authenticate(c, first.account, 1, first.id.priv), ErrorCode.AUTH_FAILED, 'old key');
  assert.ok((await authenticate(c, first.account, 1, second.id.priv)).authenticated, 'new key');
  await c.close();
});

test('the http SMS provider POSTs the code as JSON; a failing gateway is an error', TIMEOUT, async (t) => {
  const posts = [];
  let status = 200;
  const gw = http.createServer((req, res) => {
    let body = '';
    req.on('data', (b) => { body += b; });
    req.on('end', () => {
      posts.push({ method: req.method, url: req.url, type: req.headers['content-type'], body: JSON.parse(body) });
      res.writeHead(status).end('ok');
    });
  });
  await new Promise((r) => gw.listen(0, '127.0.0.1', r));
  t.after(() => gw.close());
  const { d } = await withServer(t, { sms: `http:http://127.0.0.1:${gw.address().port}/sms` });
  const c = await Client.open(d.url);
  const me = phone();
  assert.ok((await c.request('request_code', { phone: me })).code_requested);
  assert.equal(posts.length, 1);
  assert.equal(posts[0].method, 'POST');
  assert.equal(posts[0].url, '/sms');
  assert.equal(posts[0].type, 'application/json');
  assert.equal(posts[0].body.phone, me);
  const id = identity();
  const reg = await c.request('register', { phone: me, code: posts[0].body.code, identity_key: id.pub, keys: uploadKeys(id) });
  assert.ok(reg.registered, 'the posted code registers');
  status = 500;
  expectError(await c.request('request_code', { phone: phone() }), ErrorCode.INTERNAL, 'gateway said 500');
  await c.close();
});

test('heartbeat: a silent connection is closed after twice the interval, a pinging one is not', TIMEOUT, async (t) => {
  const { d } = await withServer(t, { heartbeat: 1 });
  const silent = await Client.open(d.url);
  const alive = await Client.open(d.url);
  const pinger = setInterval(() => alive.request('ping', { nonce: 3 }).catch(() => {}), 400);
  const started = Date.now();
  const closed = await silent.closed;
  clearInterval(pinger);
  assert.equal(closed.code, 1001);
  const waited = Date.now() - started;
  assert.ok(waited >= 1500 && waited < 6000, `closed after ${waited} ms`);
  assert.equal(alive.ws.readyState, WebSocket.OPEN);
  await alive.close();
});

test('accounts survive a restart and kill -9; SIGTERM closes clients with 1001 and exits 0', TIMEOUT, async (t) => {
  const dir = tempDir();
  t.after(() => removeDir(dir));
  const smsLog = path.join(dir, 'sms.log');
  const opts = { dataDir: path.join(dir, 'var'), sms: `file:${smsLog}` };
  let d = await Parleyd.start(opts);
  const me = phone();
  const { id, account } = await register(d.url, me, smsLog);
  const c = await Client.open(d.url);
  await d.stop();
  assert.equal((await c.closed).code, 1001, 'going away on shutdown');

  d = await Parleyd.start(opts);
  let c2 = await Client.open(d.url);
  assert.ok((await authenticate(c2, account, 1, id.priv)).authenticated, 'after a clean restart');
  const other = phone();
  const second = await register(d.url, other, smsLog); // acknowledged, then the server dies
  await d.kill9();

  d = await Parleyd.start(opts);
  c2 = await Client.open(d.url);
  assert.ok((await authenticate(c2, second.account, 1, second.id.priv)).authenticated, 'after kill -9');
  await c2.close();
  await d.stop();
});
