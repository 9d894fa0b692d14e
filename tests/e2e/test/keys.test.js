// The keys directory at the protocol level (real parleyd, real WebSockets): uploads
// and their errors, bundles, one-time prekeys handed out once under concurrent
// fetches and across kill -9, the low-stock notice, the fetch rate limit; and what
// end-to-end encryption needs from Send and Receipt: plaintext refused, re-registered
// devices named stale, RETRY receipts to one device, resends to listed devices.
import test from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import curve from 'curve25519-js';
import { Parleyd, tempDir, removeDir } from '../lib/parleyd.js';
import { Client, ErrorCode, identity, register, authenticate, lastCode, uploadKeys, signedPreKey, preKeys } from '../lib/client.js';

const TIMEOUT = { timeout: 120000 };
let phoneCounter = 0;
const phone = () => `+1557${String(process.pid % 1000).padStart(3, '0')}${String(phoneCounter++).padStart(4, '0')}`;
const hex = (b) => Buffer.from(b).toString('hex');

async function withServer(t, opts = {}) {
  const dir = tempDir();
  const d = await Parleyd.start({ dataDir: path.join(dir, 'var'), sms: `file:${path.join(dir, 'sms.log')}`, ...opts });
  t.after(async () => { if (d.child.exitCode === null && d.child.signalCode === null) await d.stop(); removeDir(dir); });
  return { d, dir, smsLog: path.join(dir, 'sms.log') };
}

async function connect(url, u, opts) {
  const c = await Client.open(url);
  const a = await authenticate(c, u.account, 1, u.id.priv, opts);
  assert.ok(a.authenticated, JSON.stringify(a));
  return c;
}

async function user(d, smsLog, { receive = true, prekeys = 10, registrationId } = {}) {
  const me = phone();
  const reg = await register(d.url, me, smsLog, identity(), { prekeys, registrationId });
  return { ...reg, phone: me, c: await connect(d.url, reg, { receive }) };
}

function expectError(f, code, what) {
  assert.ok(f.error, `${what}: expected an error, got ${JSON.stringify(f)}`);
  assert.equal(f.error.code, code, `${what}: ${JSON.stringify(f.error)}`);
}

// The next envelopes delivered to c (skipping an empty Deliver that only says drained).
async function envelopes(c, ms = 5000) {
  for (;;) {
    const f = await c.next(ms);
    assert.ok(f.deliver, `expected Deliver, got ${JSON.stringify(f)}`);
    if (f.deliver.envelopes?.length) return f.deliver.envelopes;
  }
}

// Asserts that no envelope reaches c within ms.
async function noEnvelopes(c, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) return;
    let f;
    try { f = await c.next(left); } catch { return; }
    assert.ok(!f.deliver?.envelopes?.length, `unexpected ${JSON.stringify(f)}`);
  }
}

const parleyctl = process.env.PARLEYCTL ?? path.resolve('../../build/parleyctl');

function stats(d) {
  return JSON.parse(execFileSync(parleyctl, ['stats', '--data', d.dataDir], { encoding: 'utf8' }));
}

test('uploads: signatures, lengths, ids and limits are checked; an empty upload is the status', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const me = phone();
  const id = identity();
  // registration needs a signed prekey, and a bad one costs no code attempt
  const c = await Client.open(d.url);
  await c.request('request_code', { phone: me });
  const code = lastCode(smsLog, me);
  expectError(await c.request('register', { phone: me, code, identity_key: id.pub }), ErrorCode.INVALID_PREKEY, 'no keys');
  const forged = uploadKeys(identity());
  expectError(await c.request('register', { phone: me, code, identity_key: id.pub, keys: forged }), ErrorCode.BAD_SIGNATURE, 'signed by another key');
  const reg = await c.request('register', { phone: me, code, identity_key: id.pub, registration_id: 9, keys: uploadKeys(id, { prekeys: 5 }) });
  assert.ok(reg.registered, JSON.stringify(reg));
  await c.close();
  const u = { id, account: reg.registered.account_id };
  const k = await connect(d.url, u, { receive: false });

  let r = await k.request('upload_keys', {});
  assert.deepEqual(r.keys_uploaded, { prekeys_left: 5, signed_prekey_id: 1 });
  const good = signedPreKey(id, 2).wire;
  const cases = [
    ['bad signature', { signed_prekey: { ...good, signature: crypto.randomBytes(64) } }, ErrorCode.BAD_SIGNATURE],
    ['short signature', { signed_prekey: { ...good, signature: good.signature.subarray(1) } }, ErrorCode.INVALID_PREKEY],
    ['32-byte signed prekey', { signed_prekey: { ...good, public_key: good.public_key.subarray(1) } }, ErrorCode.INVALID_PREKEY],
    ['signed prekey id 0', { signed_prekey: { ...good, id: 0 } }, ErrorCode.INVALID_PREKEY],
    ['signed prekey id over 24 bits', { signed_prekey: { ...good, id: 1 << 24 } }, ErrorCode.INVALID_PREKEY],
    ['prekey without a key', { prekeys: [{ id: 50 }] }, ErrorCode.INVALID_PREKEY],
    ['prekey of 34 bytes', { prekeys: [{ id: 50, public_key: Buffer.concat([identity().pub, Buffer.from([0])]) }] }, ErrorCode.INVALID_PREKEY],
    ['prekey not 0x05-typed', { prekeys: [{ id: 50, public_key: Buffer.concat([Buffer.from([6]), identity().pub.subarray(1)]) }] }, ErrorCode.INVALID_PREKEY],
    ['prekey id 0', { prekeys: [{ id: 0, public_key: identity().pub }] }, ErrorCode.INVALID_PREKEY],
    ['the same id twice', { prekeys: [{ id: 60, public_key: identity().pub }, { id: 60, public_key: identity().pub }] }, ErrorCode.INVALID_PREKEY],
    ['an id in use with another key', { prekeys: [{ id: 3, public_key: identity().pub }] }, ErrorCode.INVALID_PREKEY],
    ['101 in one upload', { prekeys: preKeys(1000, 101) }, ErrorCode.TOO_MANY_PREKEYS],
  ];
  for (const [what, body, code] of cases) expectError(await k.request('upload_keys', body), code, what);
  r = await k.request('upload_keys', {});
  assert.deepEqual(r.keys_uploaded, { prekeys_left: 5, signed_prekey_id: 1 }, 'nothing was stored by a refused upload');

  // the signed prekey rotates; one-time prekeys add up to 1000, not one more
  r = await k.request('upload_keys', { signed_prekey: good });
  assert.deepEqual(r.keys_uploaded, { prekeys_left: 5, signed_prekey_id: 2 });
  for (let i = 0; i < 9; i++) {
    r = await k.request('upload_keys', { prekeys: preKeys(100 + i * 100, 100) });
    assert.equal(r.keys_uploaded.prekeys_left, 5 + (i + 1) * 100);
  }
  r = await k.request('upload_keys', { prekeys: preKeys(5000, 95) });
  assert.equal(r.keys_uploaded.prekeys_left, 1000);
  const resent = preKeys(6000, 1);
  expectError(await k.request('upload_keys', { prekeys: resent }), ErrorCode.TOO_MANY_PREKEYS, 'the 1001st');
  assert.equal((await k.request('upload_keys', {})).keys_uploaded.prekeys_left, 1000);
  assert.equal(stats(d).prekeys, 1000);
  // not before authentication
  const anon = await Client.open(d.url);
  expectError(await anon.request('upload_keys', {}), ErrorCode.NOT_AUTHENTICATED, 'unauthenticated upload');
  expectError(await anon.request('fetch_bundles', { account_id: u.account }), ErrorCode.NOT_AUTHENTICATED, 'unauthenticated fetch');
  await anon.close();
  await k.close();
});

test('bundles: the device keys, a verified signed prekey, the lowest one-time prekey once, then none', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const bob = await user(d, smsLog, { prekeys: 3, registrationId: 4321 });
  const alice = await user(d, smsLog, { receive: false });
  const seen = [];
  for (let i = 0; i < 4; i++) {
    const r = await alice.c.request('fetch_bundles', { account_id: bob.account });
    assert.ok(r.bundles, JSON.stringify(r));
    assert.equal(hex(r.bundles.account_id), hex(bob.account));
    assert.equal(r.bundles.bundles.length, 1);
    const b = r.bundles.bundles[0];
    assert.equal(b.device_id, 1);
    assert.equal(b.registration_id, 4321);
    assert.equal(hex(b.identity_key), hex(bob.id.pub));
    assert.equal(b.signed_prekey.id, 1);
    assert.ok(curve.verify(bob.id.pub.subarray(1), b.signed_prekey.public_key, b.signed_prekey.signature), 'signature verifies');
    if (i < 3) seen.push(b.prekey.id);
    else assert.equal(b.prekey, undefined, 'the stock is empty');
  }
  assert.deepEqual(seen, [1, 2, 3]);
  // a resent upload (its answer was lost, say) must not revive keys handed out already
  const batch = preKeys(10, 3);
  assert.equal((await bob.c.request('upload_keys', { prekeys: batch })).keys_uploaded.prekeys_left, 3);
  const first = (await alice.c.request('fetch_bundles', { account_id: bob.account })).bundles.bundles[0].prekey;
  assert.equal(first.id, 10);
  assert.equal((await bob.c.request('upload_keys', { prekeys: batch })).keys_uploaded.prekeys_left, 2, 'id 10 stays used');
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push((await alice.c.request('fetch_bundles', { account_id: bob.account })).bundles.bundles[0].prekey?.id);
  assert.deepEqual(ids, [11, 12, undefined]);
  // a device asks only for what it names; its own bundle is never handed to it
  const own = await alice.c.request('fetch_bundles', { account_id: alice.account });
  assert.deepEqual(own.bundles.bundles ?? [], []);
  const none = await alice.c.request('fetch_bundles', { account_id: bob.account, device_ids: [2] });
  assert.deepEqual(none.bundles.bundles ?? [], []);
  expectError(await alice.c.request('fetch_bundles', { account_id: crypto.randomBytes(16) }), ErrorCode.UNKNOWN_ACCOUNT, 'unknown account');
  expectError(await alice.c.request('fetch_bundles', { account_id: Buffer.alloc(5) }), ErrorCode.MALFORMED_FRAME, 'short account id');
  expectError(await alice.c.request('fetch_bundles', { account_id: bob.account, device_ids: [0] }), ErrorCode.MALFORMED_FRAME, 'device 0');
  await alice.c.close();
  await bob.c.close();
});

test('one-time prekeys: 50 devices fetch concurrently, none handed out twice, not even across kill -9', TIMEOUT, async (t) => {
  // commits wait 30 ms, so the kill lands between work and durability: a bundle sent
  // before its commit would come back after the restart, and this test would see it
  const { d, dir, smsLog } = await withServer(t, { extra: ['--fetch-rate', '1000'], env: { PARLEYD_COMMIT_DELAY_MS: '30' } });
  const bob = await user(d, smsLog, { prekeys: 100 });
  await bob.c.close();
  const fetchers = [];
  for (let i = 0; i < 50; i++) fetchers.push(await user(d, smsLog, { receive: false, prekeys: 0 }));
  const handed = new Map(); // prekey id -> public key, for every bundle a fetcher received
  const take = (r, who) => {
    assert.ok(r.bundles, `${who}: ${JSON.stringify(r)}`);
    const pk = r.bundles.bundles[0].prekey;
    if (!pk) return;
    assert.ok(!handed.has(pk.id), `prekey ${pk.id} handed out twice (${who})`);
    handed.set(pk.id, hex(pk.public_key));
  };
  // round 1: all at once
  const round1 = await Promise.all(fetchers.map((f) => f.c.request('fetch_bundles', { account_id: bob.account })));
  round1.forEach((r, i) => take(r, `round 1, fetcher ${i}`));
  assert.equal(handed.size, 50);

  // round 2: all at once, and kill -9 as soon as the first answers are out
  let answered = 0;
  const killed = new Promise((resolve) => {
    for (const f of fetchers) {
      f.c.request('fetch_bundles', { account_id: bob.account }).then((r) => {
        if (r.bundles) { take(r, 'round 2'); answered++; }
        if (answered === 5) resolve();
      }, () => {});
    }
  });
  await killed;
  await d.kill9();
  assert.ok(handed.size >= 55 && handed.size <= 100);
  const d2 = await Parleyd.start({ dataDir: path.join(dir, 'var'), sms: `file:${smsLog}`, port: d.port, extra: ['--fetch-rate', '1000'] });
  t.after(async () => { if (d2.child.exitCode === null) await d2.stop(); });
  const left = stats(d2).prekeys;
  assert.ok(left + handed.size <= 100, `${left} left after ${handed.size} handed out`);

  // after the restart: fetch until the stock is empty; nothing comes twice
  const again = await Promise.all(fetchers.map((f) => connect(d2.url, f, { receive: false })));
  let more = 0;
  for (let round = 0; round < 3; round++) {
    const rs = await Promise.all(again.map((c) => c.request('fetch_bundles', { account_id: bob.account })));
    rs.forEach((r, i) => { if (r.bundles.bundles[0].prekey) more++; take(r, `after restart, fetcher ${i}`); });
  }
  assert.equal(more, left, 'every key still held was handed out once');
  assert.equal(stats(d2).prekeys, 0);
  for (const c of again) await c.close();
});

test('the low-stock notice: once while the stock is low, again after an upload that is still short', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t, { extra: ['--fetch-rate', '1000'] });
  const bob = await user(d, smsLog, { prekeys: 22 });
  const alice = await user(d, smsLog, { receive: false });
  const fetch = () => alice.c.request('fetch_bundles', { account_id: bob.account });
  for (let i = 0; i < 2; i++) await fetch(); // 22 -> 20: not low yet
  await noEnvelopes(bob.c, 300);
  await fetch(); // 19
  const notice = (await envelopes(bob.c))[0];
  assert.equal(notice.prekeys_left, 19);
  assert.equal(notice.sender_account, undefined);
  assert.equal(notice.body, undefined);
  bob.c.push('deliver_ack', { up_to_seq: notice.seq });
  for (let i = 0; i < 19; i++) await fetch(); // down to 0, and on without one-time prekeys: no second notice
  assert.equal((await fetch()).bundles.bundles[0].prekey, undefined);
  await noEnvelopes(bob.c, 500);
  // an upload that leaves the stock short re-arms the notice
  assert.equal((await bob.c.request('upload_keys', { prekeys: preKeys(100, 5) })).keys_uploaded.prekeys_left, 5);
  await fetch();
  const again = (await envelopes(bob.c))[0];
  assert.equal(again.prekeys_left, 4);
  bob.c.push('deliver_ack', { up_to_seq: again.seq });
  // a device registered with a short stock is told at the first fetch
  const carol = await user(d, smsLog, { prekeys: 3 });
  await alice.c.request('fetch_bundles', { account_id: carol.account });
  assert.equal((await envelopes(carol.c))[0].prekeys_left, 2);
  for (const u of [alice, bob, carol]) await u.c.close();
});

test('fetches are rate limited per requesting device', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t, { extra: ['--fetch-rate', '2'] });
  const bob = await user(d, smsLog, { receive: false });
  const alice = await user(d, smsLog, { receive: false });
  const carol = await user(d, smsLog, { receive: false });
  const rs = await Promise.all(Array.from({ length: 8 }, () => alice.c.request('fetch_bundles', { account_id: bob.account })));
  const limited = rs.filter((r) => r.error);
  assert.ok(limited.length >= 3, `${limited.length} of 8 limited`);
  for (const r of limited) {
    expectError(r, ErrorCode.RATE_LIMITED, 'over the rate');
    assert.ok(r.error.retry_after_ms > 0);
  }
  assert.ok((await carol.c.request('fetch_bundles', { account_id: bob.account })).bundles, 'another device is not limited');
  for (const u of [alice, bob, carol]) await u.c.close();
});

test('sends: plaintext refused; a re-registered device is stale; registration id absent is not checked', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const alice = await user(d, smsLog, { receive: false });
  const bob = await user(d, smsLog, { registrationId: 1111 });
  const body = crypto.randomBytes(40);
  const send = (dm, extra = {}) => alice.c.request('send', { message_id: crypto.randomBytes(16), recipient_account: bob.account, messages: [{ device_id: 1, body, ...dm }], ...extra });
  expectError(await send({ type: 0 }), ErrorCode.PLAINTEXT_REFUSED, 'type 0');
  expectError(await send({}), ErrorCode.PLAINTEXT_REFUSED, 'no type');
  expectError(await send({ type: 5 }), ErrorCode.PLAINTEXT_REFUSED, 'type 5');
  for (const type of [2, 3, 7]) assert.ok((await send({ type, registration_id: 1111 })).send_ack, `type ${type}`);
  // bob's number registers again: a new install, new keys, a new registration id
  const fresh = identity();
  const c = await Client.open(d.url);
  await c.request('request_code', { phone: bob.phone });
  const code = lastCode(smsLog, bob.phone);
  assert.ok((await c.request('register', { phone: bob.phone, code, identity_key: fresh.pub, registration_id: 2222, keys: uploadKeys(fresh) })).registered);
  await c.close();
  expectError(await alice.c.request('send', { message_id: crypto.randomBytes(16), recipient_account: bob.account, resend: true, messages: [{ account_id: alice.account, device_id: 2, type: 2, body }] }), ErrorCode.MALFORMED_FRAME, 'a resend to none of the recipient\'s devices');
  const r = await send({ type: 2, registration_id: 1111 });
  expectError(r, ErrorCode.DEVICE_MISMATCH, 'encrypted for the old install');
  assert.deepEqual(r.error.devices.device_ids, [1]);
  assert.deepEqual(r.error.stale.device_ids, [1]);
  assert.equal(hex(r.error.stale.account_id), hex(bob.account));
  assert.ok((await send({ type: 2, registration_id: 2222 })).send_ack, 'encrypted for the new install');
  assert.ok((await send({ type: 2 })).send_ack, 'not checked');
  const newBob = await connect(d.url, { id: fresh, account: bob.account });
  const got = await envelopes(newBob);
  assert.equal(got.length, 2, 'the stale send stored nothing');
  await newBob.close();
  await alice.c.close();
});

test('RETRY receipts go to the one sending device; resends go to the listed devices only', TIMEOUT, async (t) => {
  const { d, smsLog } = await withServer(t);
  const alice = await user(d, smsLog);
  const bob = await user(d, smsLog);
  const id = crypto.randomBytes(16);
  assert.ok((await alice.c.request('send', { message_id: id, recipient_account: bob.account, messages: [{ device_id: 1, type: 2, body: Buffer.from('garbled') }] })).send_ack);
  const m = (await envelopes(bob.c))[0];
  bob.c.push('deliver_ack', { up_to_seq: m.seq });
  const delivered = (await envelopes(alice.c))[0];
  assert.equal(delivered.receipt.status, 1);
  alice.c.push('deliver_ack', { up_to_seq: delivered.seq });

  const bad = [
    ['RETRY without a device', { status: 3, to_account: alice.account, message_ids: [id] }, ErrorCode.MALFORMED_FRAME],
    ['RETRY without ids', { status: 3, to_account: alice.account, to_device: 1, up_to_server_ms: Date.now() }, ErrorCode.MALFORMED_FRAME],
    ['READ with a device', { status: 2, to_account: alice.account, to_device: 1, message_ids: [id] }, ErrorCode.MALFORMED_FRAME],
    ['RETRY to a device that does not exist', { status: 3, to_account: alice.account, to_device: 4, message_ids: [id] }, ErrorCode.UNKNOWN_ACCOUNT],
  ];
  for (const [what, body, code] of bad) expectError(await bob.c.request('receipt', body), code, what);
  assert.ok((await bob.c.request('receipt', { status: 3, to_account: alice.account, to_device: 1, message_ids: [id] })).receipt_ack);
  const retry = (await envelopes(alice.c))[0];
  assert.equal(retry.receipt.status, 3);
  assert.equal(hex(retry.receipt.from_account), hex(bob.account));
  assert.equal(retry.receipt.from_device, 1);
  assert.deepEqual(retry.receipt.message_ids.map(hex), [hex(id)]);
  alice.c.push('deliver_ack', { up_to_seq: retry.seq });

  // the resend: a new id, to device 1 only; a device that does not exist is a mismatch
  const resend = (devices) => alice.c.request('send', { message_id: crypto.randomBytes(16), recipient_account: bob.account, resend: true, messages: devices.map((device_id) => ({ device_id, type: 3, body: Buffer.from('again') })) });
  const miss = await resend([2]);
  expectError(miss, ErrorCode.DEVICE_MISMATCH, 'resend to a missing device');
  assert.deepEqual(miss.error.devices.device_ids, [1]);
  assert.ok((await resend([1])).send_ack);
  const again = (await envelopes(bob.c))[0];
  assert.equal(again.body.toString(), 'again');
  await alice.c.close();
  await bob.c.close();
});

test('parleyctl provision: devices that authenticate, send, receive and hand out bundles like registered ones', TIMEOUT, async (t) => {
  const dir = tempDir();
  t.after(() => removeDir(dir));
  const data = path.join(dir, 'var'), keys = path.join(dir, 'keys.txt');
  const bad = spawnSync(parleyctl, ['provision', '--data', data, '--count', '5', '--keys', keys, '--first-phone', '+99999999'], { encoding: 'utf8' });
  assert.equal(bad.status, 2, 'no room for 5 more numbers');
  assert.equal(spawnSync(parleyctl, ['provision', '--data', data, '--keys', keys], { encoding: 'utf8' }).status, 2, 'no count');
  const out = execFileSync(parleyctl, ['provision', '--data', data, '--count', '300', '--keys', keys, '--first-phone', '+15580000000'], { encoding: 'utf8' });
  assert.deepEqual(JSON.parse(out), { provisioned: 300, keys });
  assert.equal(statSync(keys).mode & 0o777, 0o600, 'private keys are for the owner only');
  const lines = readFileSync(keys, 'utf8').trim().split('\n').map((l) => l.split(' '));
  assert.equal(lines.length, 300);
  assert.equal(new Set(lines.map((l) => l[1])).size, 300, 'distinct accounts');
  const device = ([phone, account, dev, priv, regid]) => {
    const kp = curve.generateKeyPair(Buffer.from(priv, 'hex')); // the public key from the private one
    return { phone, account: Buffer.from(account, 'hex'), device: Number(dev), registrationId: Number(regid),
      id: { priv: Buffer.from(priv, 'hex'), pub: Buffer.concat([Buffer.from([5]), Buffer.from(kp.public)]) } };
  };
  const [a, b] = [device(lines[0]), device(lines[299])];
  assert.equal(a.phone, '+15580000000');
  assert.equal(b.phone, '+15580000299');

  const d = await Parleyd.start({ dataDir: data, sms: `file:${path.join(dir, 'sms.log')}` });
  t.after(async () => { if (d.child.exitCode === null && d.child.signalCode === null) await d.stop(); });
  assert.equal(stats(d).devices, 300);
  const ca = await connect(d.url, a, { receive: false });
  const cb = await connect(d.url, b);
  const found = await ca.request('lookup', { phone: b.phone });
  assert.equal(hex(found.lookup_result.devices.account_id), hex(b.account));
  const bundle = (await ca.request('fetch_bundles', { account_id: b.account })).bundles.bundles[0];
  assert.equal(hex(bundle.identity_key), hex(b.id.pub));
  assert.equal(bundle.registration_id, b.registrationId);
  assert.ok(curve.verify(b.id.pub.subarray(1), bundle.signed_prekey.public_key, bundle.signed_prekey.signature));
  const ack = await ca.request('send', { message_id: crypto.randomBytes(16), recipient_account: b.account,
    messages: [{ device_id: 1, type: 2, registration_id: b.registrationId, body: Buffer.from('to a provisioned device') }] });
  assert.ok(ack.send_ack, JSON.stringify(ack));
  assert.equal(bundle.prekey, undefined, 'provisioned devices have no one-time prekeys');
  const got = await envelopes(cb); // so the fetch told b to upload some, before the message
  if (got.length < 2) got.push(...await envelopes(cb));
  assert.equal(got[0].prekeys_left, 0);
  assert.equal(got[1].body.toString(), 'to a provisioned device');
  await ca.close();
  await cb.close();
});
