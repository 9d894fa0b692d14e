// The parley command end to end against a real parleyd: registration through the
// file SMS provider, send/recv between two profiles (end-to-end encrypted), nothing
// shown twice, delivered and read receipts in history and listen, undecryptable bodies
// recorded, acked and answered with RETRY receipts without stopping the rest, the
// outbox surviving a server outage, one receiving connection per device (close 4000),
// and errors a person can read.
import test from 'node:test';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { Parleyd, freePort } from '../lib/parleyd.js';
import { Client, register, authenticate, lastCode } from '../lib/client.js';
import { checkStderr, run, start, withServer, cliUser as registerUser, send, recv, history } from '../lib/cli.js';

const TIMEOUT = { timeout: 120000 };
let phoneCounter = 0;
const phone = () => `+1557${String(process.pid % 1000).padStart(3, '0')}${String(phoneCounter++).padStart(4, '0')}`;
const cliUser = (s, name) => registerUser(s, name, phone());

test('register and verify with the code from the file SMS provider; wrong codes and bad input explained', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const home = path.join(s.dir, 'alice');
  const me = phone();

  let r = await run(home, ['send', '+15550000000', 'too early']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /not registered yet: run parley --home .* register/);
  r = await run(home, ['verify', '123456']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /no code was requested/);
  r = await run(home, ['register', '--server', s.d.url, '--phone', '5550000']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /not a phone number/);
  r = await run(home, ['register', '--server', 'http://127.0.0.1:1', '--phone', me]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /expected ws:\/\/HOST:PORT/);

  r = await run(home, ['register', '--server', s.d.url, '--phone', me]);
  assert.equal(r.code, 0, r.stderr);
  r = await run(home, ['recv']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /not registered yet: a code was sent to \+1557\d+; run parley --home .* verify CODE/);
  const code = lastCode(s.smsLog, me);
  const wrong = code === '000000' ? '111111' : '000000';
  r = await run(home, ['verify', wrong]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /wrong code/);
  r = await run(home, ['verify', code]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`registered \\${me} \\(device 1\\)`));
  r = await run(home, ['register', '--server', s.d.url, '--phone', phone()]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /already registered as/);

  // the profile: a 0700 directory, a 0600 database
  assert.equal(statSync(home).mode & 0o777, 0o700);
  assert.equal(statSync(path.join(home, 'parley.db')).mode & 0o777, 0o600);
});

test('send and recv between two profiles: in order, escaped, each message shown once', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const alice = await cliUser(s, 'alice');
  const bob = await cliUser(s, 'bob');
  const texts = ['hello bob', 'quotes " and \\ backslash, tab\tand ünïcödé ✓', 'third'];
  const ids = [];
  for (const text of texts) ids.push(await send(alice, bob, text));
  assert.equal(new Set(ids).size, 3);

  const got = await recv(bob);
  assert.deepEqual(got.map((m) => m.id), ids);
  assert.deepEqual(got.map((m) => m.text), texts);
  for (const m of got) {
    assert.equal(m.type, 'message');
    assert.equal(m.from, alice.phone);
    assert.equal(m.from_device, 1);
    assert.ok(Math.abs(m.ts - Date.now()) < 60000, `ts ${m.ts}`);
  }
  assert.deepEqual(await recv(bob), [], 'a second recv shows nothing already shown');

  const later = await send(alice, bob, 'later');
  const again = await recv(bob);
  assert.deepEqual(again.map((m) => m.id), [later]);

  // sent -> delivered (bob acked) -> read (bob's read receipts), in alice's history
  let h = await history(alice, bob);
  assert.deepEqual(h.map((m) => m.state), ['sent', 'sent', 'sent', 'sent']);
  assert.deepEqual(await recv(alice), [], 'receipts are not messages');
  h = await history(alice, bob);
  assert.deepEqual(h.map((m) => m.id), [...ids, later]);
  assert.deepEqual(h.map((m) => m.state), ['delivered', 'delivered', 'delivered', 'delivered']);
  assert.ok(h.every((m) => m.direction === 'out' && m.from === alice.phone));

  let r = await run(bob.home, ['read', alice.phone]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.lines, ['4']);
  r = await run(bob.home, ['read', alice.phone]);
  assert.deepEqual(r.lines, ['0'], 'nothing is unread any more');
  await recv(alice);
  h = await history(alice, bob);
  assert.deepEqual(h.map((m) => m.state), ['read', 'read', 'read', 'read']);

  const hb = await history(bob, alice);
  assert.deepEqual(hb.map((m) => m.text), [...texts, 'later']);
  assert.ok(hb.every((m) => m.direction === 'in' && m.from === alice.phone && m.state === 'read'));

  r = await run(alice.home, ['history', bob.phone]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /out\s+read\s+hello bob/);
});

test('send to a number nobody has, and a server nobody runs: clear errors', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const alice = await cliUser(s, 'alice');
  let r = await run(alice.home, ['send', '+15559999999', 'anyone?']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /no account has the number \+15559999999/);
  assert.equal(r.stdout, '');
  const h = await run(alice.home, ['history', '+15559999999', '--json']);
  assert.deepEqual(h.lines.map((l) => JSON.parse(l).state), ['failed']);

  const port = await freePort();
  r = await run(path.join(s.dir, 'nobody'), ['register', '--server', `ws://127.0.0.1:${port}`, '--phone', phone()]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, new RegExp(`cannot reach ws://127.0.0.1:${port}: connection refused`));
});

test('the outbox survives a server outage and goes out, in order, with the next command', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const alice = await cliUser(s, 'alice');
  const bob = await cliUser(s, 'bob');
  const port = s.d.port;
  await s.d.stop();

  const r = await run(alice.home, ['send', '--timeout', '2', bob.phone, 'while the server is down']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /stays in the outbox/);
  assert.match(r.stderr, /cannot reach/);
  assert.equal(r.stdout, '');
  let h = await history(alice, bob);
  assert.deepEqual(h.map((m) => m.state), ['pending']);

  s.d = await Parleyd.start({ dataDir: s.d.dataDir, sms: `file:${s.smsLog}`, port });
  const second = await send(alice, bob, 'after the restart');
  h = await history(alice, bob);
  assert.deepEqual(h.map((m) => m.state), ['sent', 'sent'], 'both acknowledged');
  const got = await recv(bob);
  assert.deepEqual(got.map((m) => m.text), ['while the server is down', 'after the restart']);
  assert.equal(got[0].id, h[0].id, 'resent with the same id');
  assert.equal(got[1].id, second);
});

test('undecryptable bodies are recorded, acked and answered with RETRY receipts, without stopping the messages after them', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const bob = await cliUser(s, 'bob');
  const alice = await cliUser(s, 'alice');
  // a raw protocol client plays a broken or hostile sender: bodies that look encrypted
  const mallory = { phone: phone() };
  Object.assign(mallory, await register(s.d.url, mallory.phone, s.smsLog));
  const c = await Client.open(s.d.url);
  assert.ok((await authenticate(c, mallory.account, 1, mallory.id.priv, { receive: false })).authenticated);
  const lookup = await c.request('lookup', { phone: bob.phone });
  const bobAccount = lookup.lookup_result.devices.account_id;
  const bodies = [
    { type: 2, body: crypto.randomBytes(80) },                                   // a SignalMessage of noise
    { type: 2, body: Buffer.concat([Buffer.from([0x33]), crypto.randomBytes(60)]) }, // right version byte, no session
    { type: 3, body: Buffer.concat([Buffer.from([0x33]), crypto.randomBytes(90)]) }, // a PreKey message of noise
  ];
  const ids = [];
  for (const m of bodies) {
    const id = crypto.randomBytes(16);
    ids.push(id.toString('hex'));
    const a = await c.request('send', { message_id: id, recipient_account: bobAccount, messages: [{ device_id: 1, ...m }] });
    assert.ok(a.send_ack, JSON.stringify(a));
  }
  await c.close();
  const fine = await send(alice, bob, 'fine'); // a real message behind them in bob's inbox

  const r = await run(bob.home, ['recv']);
  assert.equal(r.code, 0, r.stderr);
  const got = r.lines.map((l) => JSON.parse(l));
  assert.deepEqual(got.map((m) => [m.id, m.text]), [[fine, 'fine']]);
  assert.equal(got[0].from, alice.phone, 'the sender named by reverse lookup');
  assert.equal((r.stderr.match(/could not be read/g) ?? []).length, 3, r.stderr);
  assert.ok(r.stderr.includes(`from ${mallory.phone} (device 1) could not be read: could not be decrypted`), r.stderr);
  // all three were acked (the server turned bob's DeliverAck into delivered receipts) and
  // each got one RETRY receipt asking mallory's device to send it again
  const rc = await Client.open(s.d.url);
  assert.ok((await authenticate(rc, mallory.account, 1, mallory.id.priv)).authenticated);
  const delivered = new Set(), retry = new Set();
  while (delivered.size < ids.length || retry.size < ids.length) {
    const f = await rc.next(10000);
    assert.ok(f.deliver, JSON.stringify(f));
    for (const e of f.deliver.envelopes ?? []) {
      assert.ok(e.receipt?.status === 1 || e.receipt?.status === 3, JSON.stringify(e));
      assert.deepEqual(e.receipt.from_account, bobAccount);
      for (const mid of e.receipt.message_ids) (e.receipt.status === 1 ? delivered : retry).add(Buffer.from(mid).toString('hex'));
    }
    if (f.deliver.envelopes?.length) rc.push('deliver_ack', { up_to_seq: f.deliver.envelopes.at(-1).seq });
  }
  assert.deepEqual([...delivered].sort(), [...ids].sort());
  assert.deepEqual([...retry].sort(), [...ids].sort());
  await rc.close();
  assert.deepEqual(await recv(bob), [], 'nothing shown twice');
  const h = await history(bob, mallory);
  assert.deepEqual(h.map((m) => m.id), ids);
  assert.deepEqual(h.map((m) => m.text), [null, null, null]);
  assert.ok(h.every((m) => /could not be decrypted/.test(m.problem)), JSON.stringify(h));
  assert.deepEqual((await history(bob, alice)).map((m) => m.text), ['fine']);
});

test('listen follows messages and receipts; a newer receiving connection takes over (4000)', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const alice = await cliUser(s, 'alice');
  const bob = await cliUser(s, 'bob');
  const bobListen = start(bob.home, ['listen']);
  const aliceListen = start(alice.home, ['listen']);
  t.after(() => { bobListen.child.kill('SIGKILL'); aliceListen.child.kill('SIGKILL'); });

  const id = await send(alice, bob, 'are you there?');
  const m = await bobListen.waitFor((l) => l.type === 'message' && l.id === id);
  assert.equal(m.text, 'are you there?');
  assert.equal(m.from, alice.phone);
  const delivered = await aliceListen.waitFor((l) => l.type === 'receipt' && l.status === 'delivered');
  assert.deepEqual(delivered.ids, [id]);
  assert.equal(delivered.from, bob.phone);

  const r = await run(bob.home, ['read', alice.phone]);
  assert.deepEqual(r.lines, ['1']);
  const read = await aliceListen.waitFor((l) => l.type === 'receipt' && l.status === 'read');
  assert.deepEqual(read.ids, [id]);

  // send and read use send-only connections: bob's listen stays the receiving one
  const yes = await send(bob, alice, 'yes');
  assert.equal((await aliceListen.waitFor((l) => l.type === 'message' && l.id === yes)).from, bob.phone);
  const good = await send(alice, bob, 'good');
  await bobListen.waitFor((l) => l.type === 'message' && l.id === good);
  assert.equal(bobListen.child.exitCode, null);

  // bob's recv is a newer receiving connection: the listen is told and stops
  const rb = await recv(bob);
  assert.deepEqual(rb, [], 'nothing new for the recv either');
  const { code } = await bobListen.exited;
  assert.equal(code, 1);
  assert.match(bobListen.stderr, /another client took over this device/);
  checkStderr(bobListen.stderr, 'bob listen');

  aliceListen.child.kill('SIGTERM');
  const a = await aliceListen.exited;
  assert.equal(a.code, 0, `listen exits cleanly on SIGTERM: ${aliceListen.stderr}`);
  checkStderr(aliceListen.stderr, 'alice listen');
});

test('recv --wait keeps listening after the inbox is drained', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const alice = await cliUser(s, 'alice');
  const bob = await cliUser(s, 'bob');
  const first = await send(alice, bob, 'before');
  const waiting = start(bob.home, ['recv', '--wait', '30']);
  t.after(() => waiting.child.kill('SIGKILL'));
  await waiting.waitFor((l) => l.id === first);
  const second = await send(alice, bob, 'during the wait');
  const m = await waiting.waitFor((l) => l.id === second);
  assert.equal(m.text, 'during the wait');
  waiting.child.kill('SIGINT');
  const { code } = await waiting.exited;
  assert.equal(code, 0, waiting.stderr);
  checkStderr(waiting.stderr, 'recv --wait');
  assert.deepEqual(await recv(bob), []);
});

test('a flood past the send rate limit is paced (RATE_LIMITED, same ids) and arrives whole and in order', TIMEOUT, async (t) => {
  const s = await withServer(t, { extra: ['--send-rate', '5'] });
  const alice = await cliUser(s, 'alice');
  const bob = await cliUser(s, 'bob');
  const port = s.d.port;
  await s.d.stop();
  const texts = [];
  for (let i = 0; i < 30; i++) { // queued in the outbox while the server is away
    texts.push(`flood ${i}`);
    const r = await run(alice.home, ['send', '--timeout', '0', bob.phone, texts.at(-1)]);
    assert.equal(r.code, 1);
  }
  s.d = await Parleyd.start({ dataDir: s.d.dataDir, sms: `file:${s.smsLog}`, port, extra: ['--send-rate', '5'] });
  texts.push('the last');
  await send(alice, bob, texts.at(-1));
  const got = await recv(bob);
  assert.deepEqual(got.map((m) => m.text), texts);
  const h = await history(alice, bob);
  assert.ok(h.every((m) => m.state === 'sent'), JSON.stringify(h.map((m) => m.state)));
});

test('messages from many unknown senders are named by reverse lookup, in inbox order', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const bob = await cliUser(s, 'bob');
  const want = [];
  for (let i = 0; i < 20; i++) { // more senders than lookups the client keeps in flight
    const u = await cliUser(s, `sender${i}`);
    const texts = [0, 1].map((k) => `from sender ${i}, #${k}`);
    const r = await run(u.home, ['send', bob.phone, '-'], { input: texts.join('\n') + '\n' });
    assert.equal(r.code, 0, r.stderr);
    for (const text of texts) want.push({ from: u.phone, text });
  }
  const got = await recv(bob);
  assert.deepEqual(got.map((m) => ({ from: m.from, text: m.text })), want);
  assert.deepEqual(await recv(bob), []);
});

test('a message stored but not printed (output failed) is printed by the next recv, once', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const alice = await cliUser(s, 'alice');
  const bob = await cliUser(s, 'bob');
  const id = await send(alice, bob, 'keep me');
  // bob's first recv stores and acks the message but cannot print it: its stdout is a
  // pipe whose reader went away
  const { spawn } = await import('node:child_process');
  const child = spawn(process.env.PARLEY, ['--home', bob.home, 'recv'], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.destroy();
  let stderr = '';
  child.stderr.on('data', (b) => { stderr += b; });
  const code = await new Promise((resolve) => child.on('exit', (c) => resolve(c)));
  assert.notEqual(code, 0, `a recv that cannot print fails: ${stderr}`);
  assert.match(stderr, /cannot write the messages out/);
  // the server has nothing more for bob, yet the next recv prints the message, and only once
  const got = await recv(bob);
  assert.deepEqual(got.map((m) => [m.id, m.text]), [[id, 'keep me']]);
  assert.deepEqual(await recv(bob), []);
});
