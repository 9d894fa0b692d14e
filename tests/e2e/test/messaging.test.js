// parleyd store-and-forward at the protocol level (real parleyd, real WebSockets):
// online and offline delivery in order, the delivery window, the drained marker,
// cumulative acks and delivered receipts, read receipts, de-duplication, device-list
// and account errors, the send and connection rate limits, one receiving connection
// per device, reverse lookup, durability across kill -9, and retention.
import test from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { Parleyd, tempDir, removeDir } from '../lib/parleyd.js';
import { Client, ErrorCode, register, authenticate } from '../lib/client.js';

const TIMEOUT = { timeout: 120000 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let phoneCounter = 0;
const phone = () => `+1556${String(process.pid % 1000).padStart(3, '0')}${String(phoneCounter++).padStart(4, '0')}`;

async function withServer(t, opts = {}) {
  const dir = tempDir();
  const d = await Parleyd.start({ dataDir: path.join(dir, 'var'), sms: `file:${path.join(dir, 'sms.log')}`, ...opts });
  t.after(async () => { if (d.child.exitCode === null && d.child.signalCode === null) await d.stop(); removeDir(dir); });
  return { d, dir, smsLog: path.join(dir, 'sms.log') };
}

// A registered device with an authenticated connection.
async function user(d, smsLog, { receive = true } = {}) {
  const me = phone();
  const reg = await register(d.url, me, smsLog);
  const c = await Client.open(d.url);
  const a = await authenticate(c, reg.account, 1, reg.id.priv, { receive });
  assert.ok(a.authenticated, JSON.stringify(a));
  return { ...reg, phone: me, c };
}

async function connect(d, u, opts) {
  const c = await Client.open(d.url);
  assert.ok((await authenticate(c, u.account, 1, u.id.priv, opts)).authenticated);
  return c;
}

function send(from, to, text, id = crypto.randomBytes(16)) {
  return from.c.request('send', {
    message_id: id, recipient_account: to.account,
    messages: [{ device_id: 1, type: 2, body: Buffer.from(text) }],
  });
}

// Sends texts in order, at most 32 waiting for their acks (the server refuses more
// than 64 per connection with RATE_LIMITED); returns the answers in order.
async function sendAll(from, to, texts) {
  const answers = new Array(texts.length);
  let next = 0;
  const worker = async () => {
    while (next < texts.length) {
      const i = next++;
      answers[i] = await send(from, to, texts[i]);
    }
  };
  await Promise.all(Array.from({ length: 32 }, worker));
  return answers;
}

// Collects envelopes from Deliver frames until count arrive (acking as they come if
// ack is set); returns them with the frames' drained flags.
async function receive(c, count, { ack = true, ms = 10000 } = {}) {
  const envelopes = [];
  let drained = false;
  const deadline = Date.now() + ms;
  while (envelopes.length < count) {
    const f = await c.next(Math.max(1, deadline - Date.now()));
    assert.ok(f.deliver, `expected Deliver, got ${JSON.stringify(f)}`);
    envelopes.push(...(f.deliver.envelopes ?? []));
    drained ||= !!f.deliver.drained;
    if (ack && f.deliver.envelopes?.length) c.push('deliver_ack', { up_to_seq: f.deliver.envelopes.at(-1).seq });
  }
  return { envelopes, drained };
}

// Waits until no frame arrives for ms; returns what came.
async function quiet(c, ms = 300) {
  const got = [];
  for (;;) {
    try { got.push(await c.next(ms)); } catch { return got; }
  }
}

test('online delivery, ack, delivered and read receipts to the sender', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const alice = await user(d, smsLog);
  const bob = await user(d, smsLog);
  // both start with an empty inbox: one Deliver{drained} each
  for (const u of [alice, bob]) assert.deepEqual((await u.c.next()).deliver, { drained: true });

  const id = crypto.randomBytes(16);
  const ack = await send(alice, bob, 'hello bob', id);
  assert.deepEqual(ack.send_ack.message_id, id);
  const ts = ack.send_ack.server_time_ms;
  assert.ok(Math.abs(ts - Date.now()) < 5000);
  const { envelopes } = await receive(bob.c, 1);
  const e = envelopes[0];
  assert.deepEqual(e.sender_account, alice.account);
  assert.equal(e.sender_device, 1);
  assert.deepEqual(e.message_id, id);
  assert.equal(e.server_time_ms, ts);
  assert.equal(e.body.toString(), 'hello bob');

  // bob's ack deletes it and tells alice: delivered
  const dr = (await receive(alice.c, 1)).envelopes[0];
  assert.equal(dr.receipt.status, 1);
  assert.deepEqual(dr.receipt.from_account, bob.account);
  assert.deepEqual(dr.receipt.message_ids, [id]);
  assert.deepEqual(dr.sender_account, bob.account);

  // bob reads: alice gets a read receipt, bob a ReceiptAck
  const ra = await bob.c.request('receipt', { status: 2, to_account: alice.account, message_ids: [id] });
  assert.ok(ra.receipt_ack, JSON.stringify(ra));
  const rr = (await receive(alice.c, 1)).envelopes[0];
  assert.equal(rr.receipt.status, 2);
  assert.deepEqual(rr.receipt.message_ids, [id]);
  const upTo = await bob.c.request('receipt', { status: 2, to_account: alice.account, up_to_server_ms: ts });
  assert.ok(upTo.receipt_ack);
  assert.equal((await receive(alice.c, 1)).envelopes[0].receipt.up_to_server_ms, ts);
  // receipts produce no receipts of their own, and nothing is left for bob
  assert.deepEqual(await quiet(bob.c), []);
  assert.deepEqual(await quiet(alice.c), []);

  const bad = await bob.c.request('receipt', { status: 1, to_account: alice.account, message_ids: [id] });
  assert.equal(bad.error.code, ErrorCode.MALFORMED_FRAME, 'clients do not send delivered receipts');
  const unknown = await bob.c.request('receipt', { status: 2, to_account: crypto.randomBytes(16), message_ids: [id] });
  assert.equal(unknown.error.code, ErrorCode.UNKNOWN_ACCOUNT);
});

test('offline: 1000 messages kept in order, drained through a bounded window', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t, { extra: ['--window', '50', '--send-rate', '100000'] });
  const alice = await user(d, smsLog);
  const bob = await user(d, smsLog);
  await bob.c.close(); // bob is offline
  const acks = await sendAll(alice, bob, Array.from({ length: 1000 }, (_, i) => `m${i}`));
  for (const a of acks) assert.ok(a.send_ack, JSON.stringify(a));

  const c = await connect(d, bob);
  // without acks, exactly one window arrives, then nothing
  const first = await receive(c, 50, { ack: false });
  assert.equal(first.envelopes.length, 50);
  assert.equal(first.drained, false);
  assert.deepEqual(await quiet(c), [], 'no more than the window while nothing is acked');
  // acking releases the rest, in order, each once, then the drained marker
  c.push('deliver_ack', { up_to_seq: first.envelopes.at(-1).seq });
  const rest = await receive(c, 950);
  const all = [...first.envelopes, ...rest.envelopes].map((e) => e.body.toString());
  assert.deepEqual(all, Array.from({ length: 1000 }, (_, i) => `m${i}`));
  const seqs = [...first.envelopes, ...rest.envelopes].map((e) => e.seq);
  assert.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), 'seqs increase');
  let drained = rest.drained;
  if (!drained) drained = !!(await c.next()).deliver?.drained;
  assert.ok(drained, 'the drained marker follows the last envelope');
  // after a reconnect nothing comes again
  await c.close();
  const c2 = await connect(d, bob);
  assert.deepEqual((await c2.next()).deliver, { drained: true });
});

test('duplicates: a resent id gets the same ack and is delivered once', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const alice = await user(d, smsLog);
  const bob = await user(d, smsLog);
  await bob.c.close();
  const id = crypto.randomBytes(16);
  const a1 = await send(alice, bob, 'once', id);
  const a2 = await send(alice, bob, 'once', id);
  // and from a new connection, as after a lost ack
  const c = await connect(d, alice, { receive: false });
  const a3 = await c.request('send', { message_id: id, recipient_account: bob.account, messages: [{ device_id: 1, type: 2, body: Buffer.from('once') }] });
  assert.equal(a1.send_ack.server_time_ms, a2.send_ack.server_time_ms);
  assert.equal(a1.send_ack.server_time_ms, a3.send_ack.server_time_ms);
  const b = await connect(d, bob);
  const got = await receive(b, 1);
  assert.equal(got.envelopes.length, 1);
  assert.deepEqual(await quiet(b), got.drained ? [] : [{ version: 1, deliver: { drained: true } }]);
});

test('send errors: device list, unknown account, malformed, too many recipients; nothing stored', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t, { extra: ['--max-recipients', '3'] });
  const alice = await user(d, smsLog);
  const bob = await user(d, smsLog);
  await bob.c.close();
  const body = Buffer.from('x');
  const mismatch = await alice.c.request('send', { message_id: crypto.randomBytes(16), recipient_account: bob.account,
    messages: [{ device_id: 1, type: 2, body }, { device_id: 2, type: 2, body }] });
  assert.equal(mismatch.error.code, ErrorCode.DEVICE_MISMATCH);
  assert.deepEqual(mismatch.error.devices.account_id, bob.account);
  assert.deepEqual(mismatch.error.devices.device_ids, [1]);
  const own = await alice.c.request('send', { message_id: crypto.randomBytes(16), recipient_account: bob.account,
    messages: [{ device_id: 1, type: 2, body }, { account_id: alice.account, device_id: 3, type: 2, body }] });
  assert.equal(own.error.code, ErrorCode.DEVICE_MISMATCH, 'the sender has no device 3');
  assert.deepEqual(own.error.devices.account_id, alice.account);
  const unknown = await alice.c.request('send', { message_id: crypto.randomBytes(16), recipient_account: crypto.randomBytes(16),
    messages: [{ device_id: 1, type: 2, body }] });
  assert.equal(unknown.error.code, ErrorCode.UNKNOWN_ACCOUNT);
  for (const [what, m] of [
    ['short id', { message_id: Buffer.alloc(3), recipient_account: bob.account, messages: [{ device_id: 1, type: 2, body }] }],
    ['no messages', { message_id: crypto.randomBytes(16), recipient_account: bob.account }],
    ['no body', { message_id: crypto.randomBytes(16), recipient_account: bob.account, messages: [{ device_id: 1 }] }],
    ['empty account id', { message_id: crypto.randomBytes(16), recipient_account: bob.account, messages: [{ device_id: 1, type: 2, body }, { account_id: Buffer.alloc(0), device_id: 2, type: 2, body }] }],
    ['short account id', { message_id: crypto.randomBytes(16), recipient_account: bob.account, messages: [{ device_id: 1, type: 2, body }, { account_id: Buffer.alloc(5), device_id: 2, type: 2, body }] }],
    ['to itself', { message_id: crypto.randomBytes(16), recipient_account: bob.account, messages: [{ device_id: 1, type: 2, body }, { account_id: alice.account, device_id: 1, type: 2, body }] }],
    ['a stranger', { message_id: crypto.randomBytes(16), recipient_account: bob.account, messages: [{ account_id: crypto.randomBytes(16), device_id: 1, type: 2, body }] }],
    ['twice the same device', { message_id: crypto.randomBytes(16), recipient_account: bob.account, messages: [{ device_id: 1, type: 2, body }, { device_id: 1, type: 2, body }] }],
  ]) assert.equal((await alice.c.request('send', m)).error.code, ErrorCode.MALFORMED_FRAME, what);
  const many = await alice.c.request('send', { message_id: crypto.randomBytes(16), recipient_account: bob.account,
    messages: [1, 2, 3, 4].map((i) => ({ device_id: i, type: 2, body })) });
  assert.equal(many.error.code, ErrorCode.TOO_MANY_RECIPIENTS);
  // none of it reached bob
  const b = await connect(d, bob);
  assert.deepEqual((await b.next()).deliver, { drained: true });
  assert.deepEqual(await quiet(b), []);
});

test('rate limits: sends per device, connections per address; others keep working', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t, { extra: ['--send-rate', '5', '--conn-rate', '20'] });
  const alice = await user(d, smsLog);
  const bob = await user(d, smsLog);
  const results = await Promise.all(Array.from({ length: 30 }, (_, i) => send(alice, bob, `f${i}`)));
  const limited = results.filter((r) => r.error);
  assert.ok(limited.length >= 15, `${limited.length} of 30 limited`);
  for (const r of limited) {
    assert.equal(r.error.code, ErrorCode.RATE_LIMITED);
    assert.ok(r.error.retry_after_ms > 0 && r.error.retry_after_ms <= 1000, `retry after ${r.error.retry_after_ms}`);
  }
  assert.ok(results.filter((r) => r.send_ack).length >= 10, 'the burst went through');
  // bob is not limited by alice's flood
  assert.ok((await send(bob, alice, 'fine')).send_ack);
  // after the advertised wait alice may send again
  await new Promise((r) => setTimeout(r, limited[0].error.retry_after_ms + 50));
  assert.ok((await send(alice, bob, 'later')).send_ack);

  // connections: a burst past the per-address rate is refused at accept, before the
  // upgrade (so half-open handshakes count too): 503 with Retry-After
  let refused = null;
  const opened = [];
  for (let i = 0; i < 40 && !refused; i++) {
    try {
      opened.push(await Client.open(d.url));
    } catch (e) {
      refused = e;
    }
  }
  assert.ok(refused, 'some connection was refused');
  assert.ok(opened.length > 5, `${opened.length} connections before the limit`);
  assert.match(String(refused.message), /Unexpected server response: 503/);
  for (const c of opened) c.ws.terminate();
  assert.ok((await alice.c.request('ping', { nonce: 1 })).pong, 'existing connections are unaffected');
});

test('one receiving connection per device; send-only connections do not replace it', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const alice = await user(d, smsLog);
  const bob = await user(d, smsLog);
  await bob.c.next(); // drained
  const sender = await connect(d, bob, { receive: false });
  assert.ok((await sender.request('ping', { nonce: 2 })).pong);
  assert.ok((await send(alice, bob, 'to the receiving one')).send_ack);
  assert.equal((await receive(bob.c, 1)).envelopes[0].body.toString(), 'to the receiving one');
  assert.deepEqual(await quiet(sender), [], 'a send-only connection gets no deliveries');

  const newer = await connect(d, bob);
  const closed = await bob.c.closed;
  assert.equal(closed.code, 4000);
  assert.match(closed.reason, /replaced/);
  await newer.next(); // drained
  assert.ok((await send(alice, bob, 'to the newer one')).send_ack);
  assert.equal((await receive(newer, 1)).envelopes[0].body.toString(), 'to the newer one');
});

test('reverse lookup names a sender by account id', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const alice = await user(d, smsLog);
  const bob = await user(d, smsLog);
  const r = await bob.c.request('lookup', { account_id: alice.account });
  assert.equal(r.lookup_result.phone, alice.phone);
  assert.deepEqual(r.lookup_result.devices.device_ids, [1]);
  assert.equal((await bob.c.request('lookup', { account_id: crypto.randomBytes(16) })).error.code, ErrorCode.UNKNOWN_ACCOUNT);
  assert.equal((await bob.c.request('lookup', { account_id: Buffer.alloc(5) })).error.code, ErrorCode.MALFORMED_FRAME);
});

test('acked sends survive kill -9; unacked deliveries come again', TIMEOUT, async (t) => {
  const { d, dir, smsLog } = await withServer(t, { extra: ['--send-rate', '100000'] });
  const alice = await user(d, smsLog);
  const bob = await user(d, smsLog);
  await bob.c.close();
  const acked = await sendAll(alice, bob, Array.from({ length: 200 }, (_, i) => `k${i}`));
  assert.ok(acked.every((a) => a.send_ack));
  await d.kill9();
  const d2 = await Parleyd.start({ dataDir: path.join(dir, 'var'), sms: `file:${smsLog}`, port: d.port });
  t.after(async () => { if (d2.child.exitCode === null) await d2.stop(); });
  const c = await connect(d2, bob);
  const got = await receive(c, 200);
  assert.deepEqual(got.envelopes.map((e) => e.body.toString()), Array.from({ length: 200 }, (_, i) => `k${i}`));
});

test('retention: undelivered envelopes go after --retention', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t, { extra: ['--retention', '2s'] });
  const alice = await user(d, smsLog);
  const bob = await user(d, smsLog);
  await bob.c.close();
  assert.ok((await send(alice, bob, 'too late')).send_ack);
  await new Promise((r) => setTimeout(r, 3500));
  const c = await connect(d, bob);
  assert.deepEqual((await c.next()).deliver, { drained: true }, 'the envelope was swept');
  assert.match(d.stderr, /retention sweep removed 1 undelivered/);
});

test('a backlog of large messages drains to a reader that pauses (no 16 MiB cut-off)', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const alice = await user(d, smsLog);
  const bob = await user(d, smsLog);
  await bob.c.close();
  const big = (i) => Buffer.alloc(250 * 1024, i);
  for (let i = 0; i < 100; i += 10) { // 25 MB waiting for bob
    const acks = await Promise.all(Array.from({ length: 10 }, (_, k) => alice.c.request('send', {
      message_id: crypto.randomBytes(16), recipient_account: bob.account, messages: [{ device_id: 1, type: 2, body: big(i + k) }] })));
    assert.ok(acks.every((a) => a.send_ack), JSON.stringify(acks.find((a) => !a.send_ack)));
  }
  const c = await connect(d, bob);
  let closed = null;
  c.closed.then((x) => { closed = x; });
  const got = [];
  while (got.length < 100) {
    c.ws._socket.pause(); // a slow link: nothing read for a while
    await sleep(300);
    c.ws._socket.resume();
    const { envelopes } = await receive(c, 1, { ms: 20000 });
    got.push(...envelopes);
    while (c.queue.length) { // whatever else arrived meanwhile
      const f = c.queue.shift();
      got.push(...(f.deliver?.envelopes ?? []));
      if (f.deliver?.envelopes?.length) c.push('deliver_ack', { up_to_seq: f.deliver.envelopes.at(-1).seq });
    }
    assert.equal(closed, null, 'the connection stays up');
  }
  assert.deepEqual(got.map((e) => e.body[0]), Array.from({ length: 100 }, (_, i) => i & 0xff));
});

test('a re-registered number: the old device is cut off, its key no longer sends or acks', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const alice = await user(d, smsLog);
  const old = await user(d, smsLog); // the old install, still connected (receiving)
  await old.c.next();
  const oldSender = await connect(d, old, { receive: false });
  // the number moves to a new install
  const fresh = await register(d.url, old.phone, smsLog);
  assert.deepEqual(fresh.account, old.account, 'the account stays');
  const kicked = await old.c.closed;
  assert.equal(kicked.code, 4000);
  assert.match(kicked.reason, /replaced by a new registration/);
  const refused = await send({ c: oldSender }, alice, 'from the old key');
  assert.equal(refused.error.code, ErrorCode.AUTH_FAILED);
  assert.equal((await oldSender.closed).code, 4000);
  // the new install gets what is sent from now on
  assert.ok((await send(alice, old, 'for the new install')).send_ack);
  const c = await Client.open(d.url);
  assert.ok((await authenticate(c, fresh.account, 1, fresh.id.priv)).authenticated);
  assert.equal((await receive(c, 1)).envelopes[0].body.toString(), 'for the new install');
});
