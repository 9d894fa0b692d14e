// The server core's acceptance tests, with real processes on loopback: parleyd and the
// parley command (plus raw protocol clients where a test needs to misbehave).
//   1. two users: online and offline delivery, order over 1,000 messages, delivered
//      and read receipts back to the sender
//   2. crash safety: 10 senders x 1,000 messages, parleyd killed -9 mid-stream and
//      restarted; every acked message delivered, each shown once
//   3. duplicates: a resend after a lost SendAck, and a redelivery after a lost
//      DeliverAck, are each shown once
//   4. bad input, each answered with its error while other clients keep working
//   5. retention: undelivered envelopes go; the data (file and log) stops growing under load
import test from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import WebSocket from 'ws';
import { Parleyd, tempDir, removeDir, smallVolume, unmountVolume } from '../lib/parleyd.js';
import { Client, ErrorCode, Frame, identity, register, uploadKeys, authenticate, lastCode, sign, authMessage } from '../lib/client.js';
import { HEX_ID, run, start, withServer, cliUser, send, recv, history, frameLosingProxy } from '../lib/cli.js';

const TIMEOUT = { timeout: 300000 };
let phoneCounter = 0;
const phone = () => `+1558${String(process.pid % 1000).padStart(3, '0')}${String(phoneCounter++).padStart(4, '0')}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const lines = (n, prefix) => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

function stats(dataDir) {
  const ctl = process.env.PARLEYCTL;
  if (!ctl) throw new Error('PARLEYCTL is not set (ctest sets it)');
  return JSON.parse(execFileSync(ctl, ['stats', '--data', dataDir], { encoding: 'utf8' }));
}

test('1. two users: online and offline delivery, 1,000 in order, delivered and read receipts', TIMEOUT, async (t) => {
  const s = await withServer(t, { extra: ['--send-rate', '5000'] });
  const alice = await cliUser(s, 'alice', phone());
  const bob = await cliUser(s, 'bob', phone());

  // online: bob follows, alice sends, bob sees it and alice learns it was delivered
  const listen = start(bob.home, ['listen']);
  t.after(() => listen.child.kill('SIGKILL'));
  const id = await send(alice, bob, 'are you there?');
  const shown = await listen.waitFor((m) => m.type === 'message' && m.id === id);
  assert.equal(shown.text, 'are you there?');
  assert.equal(shown.from, alice.phone);
  assert.equal(shown.from_device, 1);
  listen.child.kill('SIGTERM');
  assert.equal((await listen.exited).code, 0, listen.stderr);

  // offline: 1,000 messages while bob is away, then one recv shows them in order
  const texts = lines(1000, 'offline message ');
  const sent = await run(alice.home, ['send', bob.phone, '-'], { input: texts.join('\n') + '\n', ms: 180000 });
  assert.equal(sent.code, 0, sent.stderr);
  assert.equal(sent.lines.length, 1000);
  assert.ok(sent.lines.every((l) => HEX_ID.test(l)));
  const got = await recv(bob);
  assert.deepEqual(got.map((m) => m.text), texts);
  assert.deepEqual(got.map((m) => m.id), sent.lines);
  assert.ok(got.every((m, i) => i === 0 || m.ts >= got[i - 1].ts), 'server times never go back');
  assert.deepEqual(await recv(bob), [], 'nothing is shown twice');

  // receipts: bob's acks made delivered receipts, bob's read makes read receipts
  await recv(alice);
  let h = await history(alice, bob);
  assert.equal(h.length, 1001);
  assert.ok(h.every((m) => m.direction === 'out' && m.state === 'delivered'), JSON.stringify(h.find((m) => m.state !== 'delivered')));
  const read = await run(bob.home, ['read', alice.phone]);
  assert.equal(read.code, 0, read.stderr);
  const follow = start(alice.home, ['listen']);
  t.after(() => follow.child.kill('SIGKILL'));
  const receipt = await follow.waitFor((m) => m.type === 'receipt' && m.status === 'read');
  assert.equal(receipt.from, bob.phone);
  follow.child.kill('SIGTERM');
  await follow.exited;
  h = await history(alice, bob);
  assert.ok(h.every((m) => m.state === 'read'), 'every message shows read');
  const hb = await history(bob, alice);
  assert.equal(hb.length, 1001);
  assert.ok(hb.every((m) => m.direction === 'in' && m.state === 'read'));
});

test('2. crash safety: 10 senders x 1,000, kill -9 mid-stream, every acked message delivered once', TIMEOUT, async (t) => {
  const s = await withServer(t, { extra: ['--send-rate', '100000'] });
  const bob = await cliUser(s, 'bob', phone());
  const senders = [];
  for (let i = 0; i < 10; i++) senders.push(await cliUser(s, `sender${i}`, phone()));

  const procs = senders.map((u, i) => {
    const p = start(u.home, ['send', '--timeout', '120', bob.phone, '-'], { stdin: true });
    p.child.stdin.end(lines(1000, `s${i}-`).join('\n') + '\n');
    return p;
  });
  t.after(() => { for (const p of procs) p.child.kill('SIGKILL'); });
  // mid-stream: once a fifth of the messages are acked, the server dies
  const deadline = Date.now() + 120000;
  while (procs.reduce((a, p) => a + p.lines.length, 0) < 2000 && Date.now() < deadline) await sleep(20);
  const ackedBefore = procs.reduce((a, p) => a + p.lines.length, 0);
  assert.ok(ackedBefore >= 2000 && ackedBefore < 10000, `${ackedBefore} acked before the crash`);
  await s.d.kill9();
  await sleep(500);
  s.d = await Parleyd.start({ dataDir: s.d.dataDir, sms: `file:${s.smsLog}`, port: s.d.port, extra: ['--send-rate', '100000'] });

  // the senders reconnect and resend what was not acked, with the same ids
  for (const p of procs) assert.equal((await p.exited).code, 0, p.stderr);
  const acked = procs.flatMap((p) => p.lines);
  assert.equal(acked.length, 10000);
  assert.equal(new Set(acked).size, 10000);

  const got = await recv(bob);
  const ids = got.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, 'nothing shown twice');
  assert.deepEqual(new Set(ids), new Set(acked), 'every acked message delivered');
  for (let i = 0; i < 10; i++) { // and each sender's messages in its order
    const mine = got.filter((m) => m.text.startsWith(`s${i}-`)).map((m) => m.text);
    assert.deepEqual(mine, lines(1000, `s${i}-`), `sender ${i} in order`);
  }
});

test('3. duplicates: a resend after a lost SendAck and a redelivery after a lost DeliverAck show once', TIMEOUT, async (t) => {
  const s = await withServer(t);
  // alice's profile talks through a proxy that loses the first SendAck: the message is
  // stored but she does not know, so she resends it (same id) on her next connection
  const sendProxy = await frameLosingProxy(s.d.port, (f) => !!f.send_ack);
  t.after(() => sendProxy.close());
  // bob's through one that lets the first Deliver through but not his DeliverAck: the
  // server delivers it again on his next connection
  const recvProxy = await frameLosingProxy(s.d.port, (f) => !!f.deliver?.envelopes?.length, { forward: true });
  t.after(() => recvProxy.close());
  const alice = await cliUser(s, 'alice', phone(), sendProxy.url);
  const bob = await cliUser(s, 'bob', phone(), recvProxy.url);

  const id = await send(alice, bob, 'only once');
  await sendProxy.lost; // the ack really was lost, and the resend was acked
  // the Send went again byte for byte: sealed once, never encrypted again
  const mine = sendProxy.sends.filter((x) => x.id === id);
  assert.equal(mine.length, 2, JSON.stringify(sendProxy.sends));
  assert.deepEqual(mine[1].bodies, mine[0].bodies, 'the repeated Send carries the same ciphertexts');
  const got = await recv(bob);
  await recvProxy.lost;
  assert.deepEqual(got.map((m) => m.id), [id]);
  assert.equal(got[0].text, 'only once');
  assert.deepEqual(await recv(bob), []);
  // the sender's history has one message, delivered once bob's second ack went through
  await recv(alice);
  const h = await history(alice, bob);
  assert.deepEqual(h.map((m) => [m.id, m.state]), [[id, 'delivered']]);

  // the same id sent twice by a raw client: one message (its body is no ciphertext bob
  // can open: one undecryptable record, reported once)
  const raw = await Client.open(s.d.url);
  const rawUser = { phone: phone() };
  const reg = await register(s.d.url, rawUser.phone, s.smsLog);
  assert.ok((await authenticate(raw, reg.account, 1, reg.id.priv, { receive: false })).authenticated);
  const bobAccount = (await raw.request('lookup', { phone: bob.phone })).lookup_result.devices.account_id;
  const twice = crypto.randomBytes(16);
  const body = crypto.randomBytes(64);
  for (let i = 0; i < 2; i++) {
    const a = await raw.request('send', { message_id: twice, recipient_account: bobAccount, messages: [{ device_id: 1, type: 2, body }] });
    assert.ok(a.send_ack, JSON.stringify(a));
  }
  const again = await run(bob.home, ['recv']);
  assert.equal(again.code, 0, again.stderr);
  assert.deepEqual(again.lines, []);
  assert.equal((again.stderr.match(/could not be read/g) ?? []).length, 1, again.stderr);
  assert.deepEqual(await recv(bob), []);
  const hr = await history(bob, rawUser);
  assert.deepEqual(hr.map((m) => [m.id, m.text]), [[twice.toString('hex'), null]]);
});

test('4. bad input gets its error while other clients keep working', TIMEOUT, async (t) => {
  const s = await withServer(t, { extra: ['--send-rate', '10'] });
  const alice = await cliUser(s, 'alice', phone());
  const bob = await cliUser(s, 'bob', phone());
  const listen = start(alice.home, ['listen']);
  t.after(() => listen.child.kill('SIGKILL'));
  await send(bob, alice, 'before');
  await listen.waitFor((m) => m.text === 'before');

  const expectError = (f, code, what) => {
    assert.ok(f.error, `${what}: expected an Error, got ${JSON.stringify(f)}`);
    assert.equal(f.error.code, code, `${what}: ${f.error.reason}`);
  };
  // garbage bytes instead of an HTTP upgrade: 400 and closed
  const garbage = await new Promise((resolve) => {
    const sock = net.connect(s.d.port, '127.0.0.1', () => sock.write(Buffer.concat([crypto.randomBytes(300), Buffer.from('\r\n\r\n')])));
    let got = '';
    sock.on('data', (b) => { got += b; });
    sock.on('close', () => resolve(got));
    sock.on('error', () => {});
  });
  assert.match(garbage, /^HTTP\/1\.1 400/);

  const c = await Client.open(s.d.url);
  c.sendRaw(crypto.randomBytes(64));
  expectError(await c.next(), ErrorCode.MALFORMED_FRAME, 'garbage frame');
  const whole = Frame.encode(Frame.create({ version: 1, request_id: 9, lookup: { phone: '+15550001234' } })).finish();
  c.sendRaw(whole.subarray(0, whole.length - 3));
  expectError(await c.next(), ErrorCode.MALFORMED_FRAME, 'truncated frame');
  c.sendRaw('{"send":"hi"}', { binary: false });
  expectError(await c.next(), ErrorCode.TEXT_FRAME, 'text frame');
  c.sendRaw(Buffer.from([0x08, 0x01, 0x10, 0x07, 0xa2, 0x06, 0x00])); // field 100: a frame type from the future
  expectError(await c.next(), ErrorCode.UNKNOWN_FRAME, 'unknown frame type');
  expectError(await c.request('send', { message_id: crypto.randomBytes(16), recipient_account: crypto.randomBytes(16) }),
    ErrorCode.NOT_AUTHENTICATED, 'send before auth');

  // authentication: a wrong signature, then a replayed one
  const mallory = await register(s.d.url, phone(), s.smsLog);
  const ch = await c.request('connect', { account_id: mallory.account, device_id: 1 });
  const good = sign(mallory.id.priv, authMessage(ch.challenge.nonce, mallory.account, 1));
  expectError(await c.request('authenticate', { signature: sign(identity().priv, authMessage(ch.challenge.nonce, mallory.account, 1)) }),
    ErrorCode.AUTH_FAILED, 'wrong signature');
  const c2 = await Client.open(s.d.url);
  await c2.request('connect', { account_id: mallory.account, device_id: 1 });
  expectError(await c2.request('authenticate', { signature: good }), ErrorCode.AUTH_FAILED, 'replayed challenge signature');

  // codes: a wrong one, then too many attempts from this address (its tries stop
  // counting, so it cannot burn the owner's code)
  const victim = phone();
  assert.ok((await c2.request('request_code', { phone: victim })).code_requested);
  const right = lastCode(s.smsLog, victim);
  const wrong = right === '000000' ? '000001' : '000000';
  const id = identity();
  expectError(await c2.request('register', { phone: victim, code: wrong, identity_key: id.pub, keys: uploadKeys(id) }), ErrorCode.WRONG_CODE, 'wrong code');
  for (let i = 0; i < 3; i++) await c2.request('register', { phone: victim, code: wrong, identity_key: id.pub, keys: uploadKeys(id) });
  expectError(await c2.request('register', { phone: victim, code: wrong, identity_key: id.pub, keys: uploadKeys(id) }), ErrorCode.TOO_MANY_ATTEMPTS, 'fifth wrong code');
  assert.ok((await c2.request('register', { phone: victim, code: right, identity_key: id.pub, keys: uploadKeys(id) })).registered,
    'the right code still works: one address used only 2 of its 5 tries');

  // a send to a number nobody has: the command explains, the protocol says UNKNOWN_ACCOUNT
  const nobody = await run(bob.home, ['send', '+19995550100', 'hello?']);
  assert.notEqual(nobody.code, 0);
  assert.match(nobody.stderr, /no account has the number \+19995550100/);
  assert.ok((await authenticate(c2, mallory.account, 1, mallory.id.priv, { receive: false })).authenticated);
  expectError(await c2.request('lookup', { phone: '+19995550100' }), ErrorCode.UNKNOWN_ACCOUNT, 'lookup of nobody');

  // plaintext is refused: bodies must be end-to-end encrypted
  expectError(await c2.request('send', { message_id: crypto.randomBytes(16), recipient_account: (await c2.request('lookup', { phone: alice.phone })).lookup_result.devices.account_id,
    messages: [{ device_id: 1, type: 0, body: Buffer.from([0x0a, 1, 0x78]) }] }), ErrorCode.PLAINTEXT_REFUSED, 'a plaintext body');

  // a flood past the rate limit
  const aliceAccount = (await c2.request('lookup', { phone: alice.phone })).lookup_result.devices.account_id;
  const flood = await Promise.all(Array.from({ length: 40 }, () => c2.request('send', {
    message_id: crypto.randomBytes(16), recipient_account: aliceAccount, messages: [{ device_id: 1, type: 2, body: crypto.randomBytes(40) }] })));
  const limited = flood.filter((f) => f.error);
  assert.ok(limited.length >= 10, `${limited.length} of 40 limited`);
  for (const f of limited) expectError(f, ErrorCode.RATE_LIMITED, 'flood');

  // an oversized frame closes only that connection
  const big = new WebSocket(s.d.url, { perMessageDeflate: false });
  await new Promise((r) => big.on('open', r));
  big.send(Buffer.alloc(300 * 1024));
  const [code] = await new Promise((r) => big.on('close', (...a) => r(a)));
  assert.equal(code, 1009);

  // through all of it, the others kept working
  await send(bob, alice, 'after');
  await listen.waitFor((m) => m.text === 'after');
  assert.ok((await c.request('ping', { nonce: 5 })).pong, 'the connection that sent garbage still answers');
  listen.child.kill('SIGTERM');
  assert.equal((await listen.exited).code, 0, listen.stderr);
  await c.close();
  await c2.close();
});

test('5. retention: undelivered envelopes go, whole log segments are removed, the data stops growing', TIMEOUT, async (t) => {
  // on a 128 MiB tmpfs of its own the log's segments are 2 MiB (a 64th of the disk),
  // so the 24 MB this sends fill a dozen of them: the test sees them made and removed
  const dir = tempDir();
  const vol = smallVolume(dir, 128);
  if (!vol) { // CI runs as root on a machine that can mount
    removeDir(dir);
    t.skip('cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)');
    return;
  }
  const smsLog = path.join(dir, 'sms.log');
  const s = { dir, smsLog, d: await Parleyd.start({ dataDir: path.join(vol, 'var'), sms: `file:${smsLog}`, extra: ['--retention', '2s', '--send-rate', '100000'] }) };
  t.after(async () => {
    if (s.d.child.exitCode === null && s.d.child.signalCode === null) await s.d.stop();
    unmountVolume(vol);
    removeDir(dir);
  });
  const alice = await register(s.d.url, phone(), s.smsLog);
  const bobPhone = phone();
  const bob = await cliUser(s, 'bob', bobPhone);
  const c = await Client.open(s.d.url);
  assert.ok((await authenticate(c, alice.account, 1, alice.id.priv, { receive: false })).authenticated);
  const bobAccount = (await c.request('lookup', { phone: bobPhone })).lookup_result.devices.account_id;
  // what the data directory holds on disk: the data file and the log's segments
  const onDisk = () => {
    const inbox = path.join(s.d.dataDir, 'inbox');
    const segs = readdirSync(inbox).filter((f) => f.endsWith('.seg'));
    const bytes = [path.join(s.d.dataDir, 'data.mdb'), ...segs.map((f) => path.join(inbox, f))]
      .reduce((n, f) => n + (statSync(f, { throwIfNoEntry: false })?.blocks ?? 0) * 512, 0); // a segment may go meanwhile
    return { bytes, segments: segs.length, newest: Math.max(...segs.map((f) => parseInt(f, 16))) };
  };

  // 12 s of 2 KB messages to offline bob at a steady 1,000 a second (paced, so the
  // inbox reaches its steady state after the 2 s retention whatever the disk does)
  const body = Buffer.alloc(2048, 7);
  const samples = [];
  let running = true, sent = 0, next = 0;
  const t0 = Date.now();
  const sender = async () => {
    while (running) {
      const due = t0 + next++;
      if (due > Date.now()) await sleep(due - Date.now());
      const a = await c.request('send', { message_id: crypto.randomBytes(16), recipient_account: bobAccount, messages: [{ device_id: 1, type: 2, body }] });
      assert.ok(a.send_ack, JSON.stringify(a));
      sent++;
    }
  };
  const workers = Array.from({ length: 32 }, sender);
  for (let i = 0; i < 12; i++) {
    await sleep(1000);
    samples.push({ sent, ...onDisk(), ...stats(s.d.dataDir) });
  }
  running = false;
  await Promise.all(workers);
  const maxInbox = Math.max(...samples.map((x) => x.inbox_envelopes));
  // 2 s of retention plus a sweep every 0.5 s is about 2.5 s of the 12 s run; without
  // sweeps the inbox would hold everything sent
  assert.ok(maxInbox < sent * 0.4, `sent ${sent}, but the inbox held up to ${maxInbox}: old envelopes were not swept`);
  // once the retention is reached, what is swept makes room for what comes: the data
  // grows by far less than what was written meanwhile (only the de-duplication
  // records, about 100 bytes a message, stay for 7 days), because whole segments go
  const from = samples[5], to = samples[11];
  const written = (to.sent - from.sent) * body.length;
  assert.ok(written > 4 * 1024 * 1024, `only ${written} bytes written in 6 s`);
  // (one segment, 2 MiB on this volume, of slack: the spare, or one waiting for a checkpoint)
  assert.ok(to.bytes - from.bytes < written / 4 + (2 << 20),
    `the data grew by ${to.bytes - from.bytes} bytes while ${written} were written after the retention was reached: ${JSON.stringify(samples)}`);
  assert.ok(to.newest >= to.segments + 4, `segments made ${to.newest}, held ${to.segments}: none removed`);
  t.diagnostic(`segments: ${to.newest} made, ${to.segments} held at the end; data ${from.bytes} -> ${to.bytes} bytes while ${written} were written`);

  // with no load, everything goes
  let last;
  for (let i = 0; i < 50; i++) {
    last = stats(s.d.dataDir);
    if (last.inbox_envelopes === 0) break;
    await sleep(200);
  }
  assert.equal(last.inbox_envelopes, 0, JSON.stringify(last));
  assert.deepEqual(await recv(bob), [], 'bob finds nothing: it expired');
  await c.close();
});
