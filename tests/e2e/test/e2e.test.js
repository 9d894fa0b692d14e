// End-to-end encryption with real processes: parleyd and the parley command (Signal
// sessions in libparley), checked from outside.
//   1. 200 messages each way, with restarts of every client: no plaintext anywhere in
//      the server's data directory or its output, and every message decrypted
//   (2. concurrent prekey fetches and kill -9: keys.test.js, on the server's side)
//   3. a client restarted between every message of a 50-message exchange stays in step
//   4. deliveries out of order (a proxy holds back the first Sends) decrypt; a
//      corrupted ciphertext is recorded undecryptable, answered with a RETRY receipt
//      and a resend, and then shown under its own id; later messages decrypt
//   5. a contact's new identity key (re-registration) is reported, as an event and in
//      history, before the next message to it goes out (checked while a proxy holds the
//      Send sealed for the new key); the new install decrypts it;
//      RETRY receipts from yet another install get no old message resent
//   6. safety numbers: the same 60 digits on both sides, equal to the reference
//      implementation's (@signalapp/libsignal-client), QR payloads too; verify-safety
//   and: three RETRY receipts for one message bring two resends, each a new session;
//   22 undecryptable messages between good ones (beyond the limit of 20 failures in a
//   row) never stop a good one
import test from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import * as Signal from '@signalapp/libsignal-client';
import { Client, register, authenticate } from '../lib/client.js';
import { HEX_ID, run, start, withServer, cliUser, send, recv, history, sendTamperingProxy } from '../lib/cli.js';

const TIMEOUT = { timeout: 300000 };
let phoneCounter = 0;
const phone = () => `+1559${String(process.pid % 1000).padStart(3, '0')}${String(phoneCounter++).padStart(4, '0')}`;

async function stop(listener) {
  listener.child.kill('SIGTERM');
  const { code } = await listener.exited;
  assert.equal(code, 0, `listen exits cleanly: ${listener.stderr}`);
}

async function sendLines(from, to, texts) {
  const r = await run(from.home, ['send', to.phone, '-'], { input: texts.join('\n') + '\n' });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.lines.length, texts.length);
  assert.ok(r.lines.every((l) => HEX_ID.test(l)));
  return r.lines;
}

test('1. 200 messages each way with restarts: no plaintext reaches the server, every message decrypts', TIMEOUT, async (t) => {
  const s = await withServer(t, { extra: ['--send-rate', '1000'] });
  const alice = await cliUser(s, 'alice', phone());
  const bob = await cliUser(s, 'bob', phone());
  const tag = crypto.randomBytes(8).toString('hex');
  const marker = (dir, i) => `secret-${tag}-${dir}-${i}`;
  const sent = { a: [], b: [] };
  let listeners = [];
  t.after(() => { for (const l of listeners) l.child.kill('SIGKILL'); });
  for (let round = 0; round < 10; round++) {
    if (round % 3 === 0) { // the listening clients restart now and then, mid-conversation
      for (const l of listeners) await stop(l);
      listeners = [start(alice.home, ['listen']), start(bob.home, ['listen'])];
    }
    for (const [from, to, dir] of [[alice, bob, 'a'], [bob, alice, 'b']]) {
      const texts = Array.from({ length: 20 }, (_, i) => marker(dir, round * 20 + i));
      await sendLines(from, to, texts.slice(0, 19)); // each send is a fresh process
      await send(from, to, texts[19]);
      sent[dir].push(...texts);
    }
  }
  for (const l of listeners) await stop(l);
  listeners = [];
  await recv(alice); // anything a stopped listener left
  await recv(bob);

  const ha = await history(alice, bob), hb = await history(bob, alice);
  for (const [h, outgoing, incoming] of [[ha, sent.a, sent.b], [hb, sent.b, sent.a]]) {
    assert.ok(h.every((m) => m.type === 'message' && m.problem === undefined && typeof m.text === 'string'),
      JSON.stringify(h.filter((m) => m.problem || m.text === null)));
    assert.deepEqual(h.filter((m) => m.direction === 'out').map((m) => m.text), outgoing);
    assert.deepEqual(h.filter((m) => m.direction === 'in').map((m) => m.text).sort(), [...incoming].sort());
  }

  // nothing the users wrote is in what the server keeps or says
  await s.d.stop();
  const files = (dir) => readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(path.join(dir, e.name)) : [path.join(dir, e.name)]);
  const blobs = files(s.d.dataDir).map((f) => ({ name: path.relative(s.d.dataDir, f), bytes: readFileSync(f) }));
  assert.ok(blobs.some((b) => b.name === 'data.mdb') && blobs.some((b) => b.name.startsWith('inbox/')), blobs.map((b) => b.name).join());
  blobs.push({ name: 'parleyd stdout', bytes: Buffer.from(s.d.stdout) }, { name: 'parleyd stderr', bytes: Buffer.from(s.d.stderr) });
  for (const text of [...sent.a, ...sent.b, tag])
    for (const b of blobs) assert.equal(b.bytes.indexOf(text), -1, `"${text}" found in ${b.name}`);
});

test('3. a client restarted between every message of a 50-message exchange never falls out of step', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const alice = await cliUser(s, 'alice', phone());
  const bob = await cliUser(s, 'bob', phone());
  const want = [];
  for (let i = 0; i < 50; i++) {
    const [from, to] = i % 2 ? [bob, alice] : [alice, bob];
    const text = `turn ${i} from ${from === alice ? 'alice' : 'bob'}`;
    const id = await send(from, to, text);
    const got = await recv(to);
    assert.deepEqual(got.map((m) => [m.id, m.text, m.from]), [[id, text, from.phone]], `message ${i}`);
    want.push(text);
  }
  const h = await history(alice, bob);
  assert.deepEqual(h.map((m) => m.text), want, 'all 50, in order');
  assert.ok(h.every((m) => !m.problem));
});

test('4. out-of-order deliveries decrypt; a corrupted ciphertext is retried, resent and shown under its own id', TIMEOUT, async (t) => {
  const s = await withServer(t);
  // the first three Sends are acked by the proxy and reach the server after the sixth;
  // the eighth gets a byte flipped in its ciphertext
  const proxy = await sendTamperingProxy(s.d.port, { hold: 3, releaseAfter: 6, corrupt: [8] });
  t.after(() => proxy.close());
  const alice = await cliUser(s, 'alice', phone(), proxy.url);
  const bob = await cliUser(s, 'bob', phone());
  const texts = Array.from({ length: 10 }, (_, i) => `in flight ${i}`);
  const ids = await sendLines(alice, bob, texts);
  await proxy.released;
  assert.deepEqual(proxy.corrupted, [ids[7]]);

  // bob: 4-6 first (skipped keys kept), then 1-3 from those keys, then 7 and 9-10; the
  // 8th could not be decrypted: recorded, acked, and a RETRY receipt goes to alice's device
  const r = await run(bob.home, ['recv']);
  assert.equal(r.code, 0, r.stderr);
  const order = [3, 4, 5, 0, 1, 2, 6, 8, 9];
  assert.deepEqual(r.lines.map((l) => JSON.parse(l).text), order.map((i) => texts[i]));
  assert.deepEqual(r.lines.map((l) => JSON.parse(l).id), order.map((i) => ids[i]));
  assert.match(r.stderr, new RegExp(`message ${ids[7]} .* could not be read: could not be decrypted .*asked to send it again`));
  let hb = await history(bob, alice);
  assert.equal(hb.find((m) => m.id === ids[7]).text, null);

  // alice's listening client gets the RETRY receipt: a new session and a resend
  const aliceListen = start(alice.home, ['listen']);
  const bobListen = start(bob.home, ['listen']);
  t.after(() => { aliceListen.child.kill('SIGKILL'); bobListen.child.kill('SIGKILL'); });
  const shown = await bobListen.waitFor((m) => m.type === 'message' && m.id === ids[7], 30000);
  assert.equal(shown.text, texts[7], 'the message shows under its own id');
  assert.equal(shown.from, alice.phone);
  // and the conversation goes on, with the new session
  const next = await send(alice, bob, 'after the resend');
  assert.equal((await bobListen.waitFor((m) => m.type === 'message' && m.id === next)).text, 'after the resend');
  await stop(aliceListen);
  await stop(bobListen);
  assert.equal(bobListen.lines.filter((l) => JSON.parse(l).id === ids[7]).length, 1, 'shown once');

  // in the order bob learned of them; the 8th filled in where it arrived; the resend is
  // no message of its own
  hb = await history(bob, alice);
  const arrival = [3, 4, 5, 0, 1, 2, 6, 7, 8, 9];
  assert.deepEqual(hb.map((m) => m.id), [...arrival.map((i) => ids[i]), next]);
  assert.deepEqual(hb.map((m) => m.text), [...arrival.map((i) => texts[i]), 'after the resend']);
  assert.ok(hb.every((m) => !m.problem), JSON.stringify(hb.filter((m) => m.problem)));
  const ha = await history(alice, bob);
  assert.equal(ha.length, 11);
});

test('5. a contact\'s new identity key is reported before the next message to it; the new install decrypts it', TIMEOUT, async (t) => {
  const s = await withServer(t);
  // alice's Sends go through a proxy that, once armed, holds the first PreKey Send (the
  // one sealed for the new key) while the test reads alice's history: the notice must be
  // on disk before that Send was sealed and written, not merely before the server took it
  let armed = false, resolveHeld;
  const held = new Promise((r) => { resolveHeld = r; });
  const proxy = await sendTamperingProxy(s.d.port, {
    inspect: async (frame) => {
      if (!armed || frame.send.messages?.[0]?.type !== 3) return;
      armed = false;
      resolveHeld({ id: Buffer.from(frame.send.message_id).toString('hex'), history: await history(alice, bob) });
    },
  });
  t.after(() => proxy.close());
  const alice = await cliUser(s, 'alice', phone(), proxy.url);
  const bob = await cliUser(s, 'bob', phone());
  await send(alice, bob, 'before');
  await recv(bob);
  await send(bob, alice, 'answer');
  await recv(alice);
  const safety = await run(alice.home, ['safety', '--json', bob.phone]);
  assert.equal(safety.code, 0, safety.stderr);
  const verify = await run(alice.home, ['verify-safety', bob.phone, JSON.parse(safety.lines[0]).safety_number]);
  assert.equal(verify.code, 0, verify.stderr);

  // bob's new install: the same number, a new profile, new keys
  const bob2 = await cliUser(s, 'bob2', bob.phone);
  // alice's next message is queued, then her listening client sends it: the server
  // refuses the old session (stale), the new bundle shows the new key
  const queued = await run(alice.home, ['send', '--timeout', '0', bob.phone, 'to your new phone']);
  assert.equal(queued.code, 1, 'queued only');
  armed = true;
  const listen = start(alice.home, ['listen', '--json']);
  t.after(() => listen.child.kill('SIGKILL'));
  const atSend = await held;
  const sealedFor = atSend.history.find((m) => m.id === atSend.id);
  assert.equal(sealedFor?.text, 'to your new phone', JSON.stringify(atSend.history));
  assert.ok(atSend.history.some((m) => m.type === 'identity_changed' && m.verified === true),
    `the change is recorded before the Send sealed for the new key goes out: ${JSON.stringify(atSend.history)}`);
  const changed = await listen.waitFor((l) => l.type === 'identity_changed');
  assert.deepEqual([changed.peer, changed.device, changed.verified], [bob.phone, 1, true]);
  let h;
  for (let i = 0; i < 100; i++) {
    h = await history(alice, bob);
    if (h.find((m) => m.text === 'to your new phone')?.state === 'sent') break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await stop(listen);
  const notice = h.find((m) => m.type === 'identity_changed');
  const message = h.find((m) => m.text === 'to your new phone');
  assert.ok(notice && message, JSON.stringify(h));
  assert.equal(message.state, 'sent');
  assert.match(notice.text, new RegExp(`security code with \\${bob.phone} changed; it was verified`));
  assert.equal(notice.verified, true);
  assert.ok(notice.ts <= message.ts, `the change (${notice.ts}) was recorded before the server took the message (${message.ts})`);
  assert.ok(changed.ts <= message.ts);
  const text = await run(alice.home, ['history', bob.phone]);
  assert.match(text.stdout, /notice\s+security code with .* changed; it was verified/);
  const after = await run(alice.home, ['safety', '--json', bob.phone]);
  assert.equal(JSON.parse(after.lines[0]).verified, false, 'the verified mark is gone');
  assert.notEqual(JSON.parse(after.lines[0]).safety_number, JSON.parse(safety.lines[0]).safety_number);

  const got = await recv(bob2);
  assert.deepEqual(got.map((m) => [m.text, m.from]), [['to your new phone', alice.phone]]);
  await send(bob2, alice, 'hello from the new phone');
  const back = await recv(alice);
  assert.deepEqual(back.map((m) => m.text), ['hello from the new phone']);

  // a third install of the number (a raw client: whoever gets the code) asks for the old
  // messages again with RETRY receipts: they were sealed for other keys, so alice's
  // client does not resend them; only what she writes from now on reaches it
  const bob3 = await register(s.d.url, bob.phone, s.smsLog);
  const c = await Client.open(s.d.url);
  t.after(() => c.close());
  assert.ok((await authenticate(c, bob3.account, 1, bob3.id.priv)).authenticated);
  const aliceAccount = (await c.request('lookup', { phone: alice.phone })).lookup_result.devices.account_id;
  const old = h.filter((m) => m.direction === 'out').map((m) => Buffer.from(m.id, 'hex'));
  assert.equal(old.length, 2);
  const ack = await c.request('receipt', { status: 3, to_account: aliceAccount, to_device: 1, message_ids: old });
  assert.ok(ack.receipt_ack, JSON.stringify(ack));
  await recv(alice); // takes the RETRY receipts in
  const latest = await send(alice, bob, 'for whoever has the number now'); // flushes the outbox first
  const seen = [];
  for (;;) {
    const f = await c.next(5000);
    for (const e of f.deliver?.envelopes ?? []) {
      if (e.message_id) seen.push(Buffer.from(e.message_id).toString('hex'));
      c.push('deliver_ack', { up_to_seq: e.seq });
    }
    if (seen.includes(latest)) break;
  }
  assert.deepEqual(seen, [latest], 'no resend of an old message to a new identity');
  const h3 = await history(alice, bob);
  assert.equal(h3.filter((m) => m.type === 'identity_changed').length, 2, 'the second change is recorded too');
});

test('RETRY receipts are bounded: three for one message bring two resends, each in a new session', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const alice = await cliUser(s, 'alice', phone());
  // bob is a raw client with real keys in the directory: alice's client seals for him
  const bobPhone = phone();
  const bob = await register(s.d.url, bobPhone, s.smsLog);
  const c = await Client.open(s.d.url);
  t.after(() => c.close());
  assert.ok((await authenticate(c, bob.account, 1, bob.id.priv)).authenticated);
  const aliceAccount = (await c.request('lookup', { phone: alice.phone })).lookup_result.devices.account_id;
  const take = async (until) => { // envelopes from alice, acked, until one with id `until`
    const got = [];
    for (;;) {
      const f = await c.next(10000);
      for (const e of f.deliver?.envelopes ?? []) {
        if (e.message_id) got.push({ id: Buffer.from(e.message_id).toString('hex'), type: e.type });
        c.push('deliver_ack', { up_to_seq: e.seq });
      }
      if (got.some((e) => e.id === until)) return got;
    }
  };
  const first = await send(alice, { phone: bobPhone }, 'please read me');
  assert.deepEqual(await take(first), [{ id: first, type: 3 }]);
  for (let i = 0; i < 3; i++)
    assert.ok((await c.request('receipt', { status: 3, to_account: aliceAccount, to_device: 1, message_ids: [Buffer.from(first, 'hex')] })).receipt_ack);
  await recv(alice); // takes the three RETRY receipts in
  const marker = await send(alice, { phone: bobPhone }, 'and this one'); // flushes the outbox first
  const got = await take(marker);
  assert.equal(got.at(-1).id, marker);
  const resends = got.slice(0, -1);
  assert.equal(resends.length, 2, `two resends for three RETRY receipts: ${JSON.stringify(got)}`);
  assert.ok(resends.every((e) => e.id !== first && e.type === 3), 'new ids, each a PreKey message (a new session)');
  assert.notEqual(resends[0].id, resends[1].id);
});

test('undecryptable messages between good ones never stop the good ones, however many', TIMEOUT, async (t) => {
  const s = await withServer(t, { extra: ['--send-rate', '1000'] });
  // Send 1 sets the session up; of Sends 2-45, the even ones get a byte flipped: 22
  // failures in all, more than the client's limit of 20 in a row, never more than one
  // in a row
  const corrupt = Array.from({ length: 22 }, (_, i) => 2 + 2 * i);
  const proxy = await sendTamperingProxy(s.d.port, { corrupt });
  t.after(() => proxy.close());
  const alice = await cliUser(s, 'alice', phone(), proxy.url);
  const bob = await cliUser(s, 'bob', phone());
  await send(alice, bob, 'hello');
  await recv(bob);
  await send(bob, alice, 'hello back'); // alice's session is answered: SignalMessages from now on
  await recv(alice);
  const texts = Array.from({ length: 44 }, (_, i) => `turn ${i}`);
  const ids = await sendLines(alice, bob, texts);
  assert.equal(proxy.corrupted.length, 22);
  const r = await run(bob.home, ['recv']);
  assert.equal(r.code, 0, r.stderr);
  const good = texts.filter((_, i) => !corrupt.includes(i + 2));
  assert.deepEqual(r.lines.map((l) => JSON.parse(l).text), good, 'every good message decrypts');
  const hb = await history(bob, alice);
  const bad = hb.filter((m) => m.problem);
  assert.deepEqual(bad.map((m) => m.id).sort(), [...proxy.corrupted].sort());
  assert.ok(bad.every((m) => /could not be decrypted/.test(m.problem)), JSON.stringify(bad.map((m) => m.problem)));
  assert.equal(ids.length, 44);
});

test('6. safety numbers match on both sides and match the reference implementation; verify-safety', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const alice = await cliUser(s, 'alice', phone());
  const bob = await cliUser(s, 'bob', phone());
  const who = async (u) => {
    const r = await run(u.home, ['whoami', '--json']);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.lines[0]);
  };
  const [wa, wb] = [await who(alice), await who(bob)];
  assert.equal(wa.phone, alice.phone);
  assert.match(wa.identity_key, /^05[0-9a-f]{64}$/);
  assert.match(wa.account, HEX_ID);

  // alice has never talked to bob: her client fetches his keys (and keeps the session)
  const ra = await run(alice.home, ['safety', '--json', bob.phone]);
  assert.equal(ra.code, 0, ra.stderr);
  const rb = await run(bob.home, ['safety', '--json', alice.phone]);
  assert.equal(rb.code, 0, rb.stderr);
  const [sa, sb] = [JSON.parse(ra.lines[0]), JSON.parse(rb.lines[0])];
  assert.match(sa.safety_number, /^\d{60}$/);
  assert.equal(sa.safety_number, sb.safety_number, 'the same 60 digits on both phones');
  assert.equal(sa.grouped, sa.safety_number.match(/.{5}/g).join(' '));
  assert.equal(sa.verified, false);

  const reference = (me, them) => Signal.Fingerprint.new(5200, 1,
    Buffer.from(me.phone), Signal.PublicKey.deserialize(Buffer.from(me.identity_key, 'hex')),
    Buffer.from(them.phone), Signal.PublicKey.deserialize(Buffer.from(them.identity_key, 'hex')));
  const fa = reference(wa, wb), fb = reference(wb, wa);
  assert.equal(sa.safety_number, fa.displayableFingerprint().toString());
  assert.equal(sb.safety_number, fb.displayableFingerprint().toString());
  assert.equal(sa.qr, Buffer.from(fa.scannableFingerprint().toBuffer()).toString('hex'), 'alice\'s QR payload');
  assert.equal(sb.qr, Buffer.from(fb.scannableFingerprint().toBuffer()).toString('hex'), 'bob\'s QR payload');
  // each side's QR code is what the other side's reference scanner accepts
  assert.ok(fb.scannableFingerprint().compare(Signal.ScannableFingerprint._fromBuffer(Buffer.from(sa.qr, 'hex'))));
  assert.ok(fa.scannableFingerprint().compare(Signal.ScannableFingerprint._fromBuffer(Buffer.from(sb.qr, 'hex'))));

  // the text form: 12 groups and the payload
  const plain = await run(alice.home, ['safety', bob.phone]);
  assert.equal(plain.code, 0, plain.stderr);
  assert.ok(plain.stdout.includes(sa.grouped) && plain.stdout.includes(sa.qr), plain.stdout);

  // verify-safety: a wrong number is refused and marks nothing; the right one (spaces
  // and all) marks the contact verified
  const wrong = sa.safety_number.slice(0, 59) + String((Number(sa.safety_number[59]) + 1) % 10);
  let r = await run(alice.home, ['verify-safety', bob.phone, wrong]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /does not match/);
  r = await run(alice.home, ['verify-safety', bob.phone, sa.safety_number.slice(0, 30)]);
  assert.equal(r.code, 1, 'half a number is no match');
  assert.equal(JSON.parse((await run(alice.home, ['safety', '--json', bob.phone])).lines[0]).verified, false);
  r = await run(alice.home, ['verify-safety', bob.phone, sa.grouped]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse((await run(alice.home, ['safety', '--json', bob.phone])).lines[0]).verified, true);

  // the session made while fetching bob's keys carries alice's first message
  const id = await send(alice, bob, 'hello, verified');
  assert.deepEqual((await recv(bob)).map((m) => [m.id, m.text]), [[id, 'hello, verified']]);
  r = await run(alice.home, ['safety', '+15550009999']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /no account has the number/);
});
