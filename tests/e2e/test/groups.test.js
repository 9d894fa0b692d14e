// Groups at the protocol level (real parleyd, real WebSockets, raw frames; the bodies
// are opaque to the server, so these tests do not encrypt): one group message stored
// for every member device and delivered in group order, exactly once, to online and
// offline members; the events of every change; refusals (not an admin, not a member,
// stale versions, the last admin, announcement groups); a kill -9 during a burst of
// group sends; a 1,024-member group. The clients' part (Sender Keys) is in
// cli.test.js.
import test from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { Parleyd, tempDir, removeDir } from '../lib/parleyd.js';
import { Client, ErrorCode, register, authenticate } from '../lib/client.js';

const TIMEOUT = { timeout: 240000 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let phoneCounter = 0;
const phone = () => `+1557${String(process.pid % 1000).padStart(3, '0')}${String(phoneCounter++).padStart(4, '0')}`;
const hex = (b) => Buffer.from(b).toString('hex');

async function withServer(t, extra = []) {
  const dir = tempDir();
  const d = await Parleyd.start({ dataDir: path.join(dir, 'var'), sms: `file:${path.join(dir, 'sms.log')}`,
    extra: ['--max-conns-per-address', '0', '--conn-rate', '0', '--send-rate', '100000', ...extra] });
  t.after(async () => { if (d.child.exitCode === null && d.child.signalCode === null) await d.stop(); removeDir(dir); });
  return { d, dir, smsLog: path.join(dir, 'sms.log') };
}

// n registered accounts, 16 at a time.
async function people(s, n) {
  const out = new Array(n);
  let next = 0;
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < n) {
      const i = next++;
      const me = phone();
      out[i] = { ...(await register(s.d.url, me, s.smsLog)), phone: me };
    }
  }));
  return out;
}

// An authenticated connection that collects every Deliver's envelopes and acks them.
async function online(s, u) {
  const c = await Client.open(s.d.url);
  const a = await authenticate(c, u.account, 1, u.id.priv);
  assert.ok(a.authenticated, JSON.stringify(a));
  u.c = c;
  u.got ??= [];
  u.drained = false;
  let open = true;
  c.closed.then(() => { open = false; });
  (async () => {
    for (;;) {
      let f;
      // short waits: a pending long timer would keep the test's process alive after the end
      try { f = await c.next(500); } catch { if (open) continue; return; }
      if (!f.deliver) continue;
      u.drained ||= !!f.deliver.drained;
      for (const e of f.deliver.envelopes ?? []) u.got.push(e);
      if (f.deliver.envelopes?.length) c.push('deliver_ack', { up_to_seq: f.deliver.envelopes.at(-1).seq });
    }
  })();
  c.closed.then(() => { u.c = null; });
  return c;
}

async function until(what, cond, ms = 20000) {
  for (let waited = 0; !cond(); waited += 20) {
    if (waited > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

// The group envelopes a device got, one per seq (a redelivery of a seq is not a copy).
function groupView(u, gid) {
  const bySeq = new Map();
  for (const e of u.got) if (e.group_id && hex(e.group_id) === gid && e.group_seq) bySeq.set(Number(e.seq), e);
  return [...bySeq.values()].sort((a, b) => a.group_seq - b.group_seq);
}

function groupSend(u, g, version, id = crypto.randomBytes(16), body = crypto.randomBytes(40)) {
  return u.c.request('send', { message_id: id, group_id: g, group_version: version, group_message: body });
}

test('a group message goes once to every member device, in one order, online or offline', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const us = await people(s, 12);
  const gid = crypto.randomBytes(16);
  for (const u of us.slice(0, 8)) await online(s, u); // 8..11 offline
  const created = await us[0].c.request('group_create', { group_id: gid, subject: 'Alpine club', members: us.slice(1).map((u) => u.account) });
  assert.ok(created.group_info, JSON.stringify(created));
  const info = created.group_info;
  assert.equal(info.version, 1);
  assert.equal(info.members.length, 12);
  assert.ok(info.members[0].admin && hex(info.members[0].account_id) === hex(us[0].account));
  assert.equal(info.settings.add, 1); // admins add
  // three senders, 20 each, 4 in flight each
  const sent = [];
  await Promise.all(us.slice(0, 3).map(async (u) => {
    for (let i = 0; i < 20; i += 4) {
      const ids = [0, 1, 2, 3].map(() => crypto.randomBytes(16));
      const acks = await Promise.all(ids.map((id) => groupSend(u, gid, 1, id)));
      for (let k = 0; k < 4; k++) {
        assert.ok(acks[k].send_ack, JSON.stringify(acks[k]));
        assert.ok(acks[k].send_ack.group_seq >= 2);
        sent.push({ id: hex(ids[k]), seq: acks[k].send_ack.group_seq });
      }
    }
  }));
  assert.equal(new Set(sent.map((x) => x.seq)).size, 60, 'every message its own group seq');
  for (const u of us.slice(8)) await online(s, u);
  for (const u of us) await until(`${u.phone}'s 61 group envelopes`, () => groupView(u, hex(gid)).length >= 61);
  await sleep(300); // nothing more may come
  const order = groupView(us[0], hex(gid)).map((e) => e.group_seq);
  assert.deepEqual(order, Array.from({ length: 61 }, (_, i) => i + 1), 'seqs 1..61, none missing');
  const first = groupView(us[0], hex(gid));
  assert.equal(first[0].group_event.op, 1); // GROUP_CREATED, with the member list
  assert.equal(first[0].group_event.group.members.length, 12);
  for (const u of us) {
    const v = groupView(u, hex(gid));
    assert.equal(v.length, 61, `${u.phone} got ${v.length}`);
    assert.deepEqual(v.map((e) => e.group_seq), order);
    assert.deepEqual(v.slice(1).map((e) => hex(e.message_id)), first.slice(1).map((e) => hex(e.message_id)), 'the same order everywhere');
    for (const e of v.slice(1)) assert.equal(e.type, 7);
  }
  const bySeq = new Map(sent.map((x) => [x.seq, x.id]));
  for (const e of first.slice(1)) assert.equal(hex(e.message_id), bySeq.get(e.group_seq), 'the ack said this seq');
});

test('changes, events and refusals', TIMEOUT, async (t) => {
  const s = await withServer(t, ['--group-creates', '2']);
  const [alice, bob, carol, dave, erin] = await people(s, 5);
  for (const u of [alice, bob, carol, dave, erin]) await online(s, u);
  const gid = crypto.randomBytes(16);
  const g = (await alice.c.request('group_create', { group_id: gid, subject: 'Rope team', members: [bob.account, carol.account] })).group_info;
  // the same create again is answered as the first; another creator's is refused
  assert.equal((await alice.c.request('group_create', { group_id: gid, subject: 'Rope team', members: [bob.account] })).group_info.version, 1);
  assert.equal((await bob.c.request('group_create', { group_id: gid, subject: 'x', members: [] })).error.code, ErrorCode.MALFORMED_FRAME);
  // not an admin: no add, no remove; not a member: no change, no info, no send
  assert.equal((await bob.c.request('group_change', { group_id: gid, op: 2, accounts: [dave.account] })).error.code, ErrorCode.NOT_GROUP_ADMIN);
  assert.equal((await bob.c.request('group_change', { group_id: gid, op: 3, accounts: [carol.account] })).error.code, ErrorCode.NOT_GROUP_ADMIN);
  assert.equal((await dave.c.request('group_change', { group_id: gid, op: 7, subject: 'mine' })).error.code, ErrorCode.NOT_GROUP_MEMBER);
  assert.equal((await dave.c.request('group_get', { group_id: gid })).error.code, ErrorCode.NOT_GROUP_MEMBER);
  assert.equal((await dave.c.request('send', { message_id: crypto.randomBytes(16), group_id: gid, group_version: 1, group_message: Buffer.from('x') })).error.code, ErrorCode.NOT_GROUP_MEMBER);
  assert.equal((await alice.c.request('group_get', { group_id: crypto.randomBytes(16) })).error.code, ErrorCode.UNKNOWN_GROUP);
  assert.equal((await alice.c.request('group_change', { group_id: gid, op: 2, accounts: [crypto.randomBytes(16)] })).error.code, ErrorCode.UNKNOWN_ACCOUNT);
  // alice adds dave: version 2, an "added" event to all four, dave's first
  const added = (await alice.c.request('group_change', { group_id: gid, op: 2, accounts: [dave.account] })).group_info;
  assert.equal(added.version, 2);
  await until('dave sees he was added', () => groupView(dave, hex(gid)).length === 1);
  const ev = groupView(dave, hex(gid))[0];
  assert.equal(ev.group_event.op, 2);
  assert.equal(hex(ev.group_event.accounts[0]), hex(dave.account));
  assert.equal(ev.group_event.group.members.length, 4);
  assert.equal(ev.group_seq, 2);
  // a send for version 1 is stale: the error carries the group now, nothing is stored
  const id = crypto.randomBytes(16);
  const stale = await groupSend(bob, gid, 1, id);
  assert.equal(stale.error.code, ErrorCode.GROUP_STALE);
  assert.equal(stale.error.group.version, 2);
  assert.equal(stale.error.group.members.length, 4);
  // sent again for version 2 under the same id, twice: one copy everywhere
  const ok = await groupSend(bob, gid, 2, id);
  assert.ok(ok.send_ack, JSON.stringify(ok));
  const again = await groupSend(bob, gid, 2, id);
  assert.equal(again.send_ack.server_time_ms, ok.send_ack.server_time_ms);
  // a key distribution must go to a member's device
  const wrong = await bob.c.request('send', { message_id: crypto.randomBytes(16), group_id: gid, group_version: 2, group_message: Buffer.from('m'),
    messages: [{ account_id: erin.account, device_id: 1, type: 2, body: Buffer.from('skdm') }] });
  assert.equal(wrong.error.code, ErrorCode.GROUP_STALE);
  const wrongDevice = await bob.c.request('send', { message_id: crypto.randomBytes(16), group_id: gid, group_version: 2, group_message: Buffer.from('m'),
    messages: [{ account_id: carol.account, device_id: 9, type: 2, body: Buffer.from('skdm') }] });
  assert.equal(wrongDevice.error.code, ErrorCode.DEVICE_MISMATCH);
  // with a distribution for carol: it comes before the message in her inbox
  const withKey = await bob.c.request('send', { message_id: crypto.randomBytes(16), group_id: gid, group_version: 2, group_message: Buffer.from('m2'),
    messages: [{ account_id: carol.account, device_id: 1, type: 3, body: Buffer.from('skdm-for-carol') }] });
  assert.ok(withKey.send_ack);
  await until('carol gets the distribution and the message', () => carol.got.some((e) => e.body && e.body.toString() === 'm2'));
  const ci = carol.got.findIndex((e) => e.body && e.body.toString() === 'skdm-for-carol');
  const mi = carol.got.findIndex((e) => e.body && e.body.toString() === 'm2');
  assert.ok(ci >= 0 && ci < mi && !carol.got[ci].group_seq && hex(carol.got[ci].group_id) === hex(gid));
  assert.ok(!alice.got.some((e) => e.body && e.body.toString() === 'skdm-for-carol'), 'a distribution goes to its device only');

  // alice removes carol: carol gets the event, then nothing more, and may not look
  assert.equal((await alice.c.request('group_change', { group_id: gid, op: 3, accounts: [carol.account] })).group_info.version, 3);
  await until('carol sees she was removed', () => groupView(carol, hex(gid)).some((e) => e.group_event?.op === 3));
  const later = await groupSend(dave, gid, 3);
  assert.ok(later.send_ack);
  await until('alice gets dave\'s message', () => groupView(alice, hex(gid)).some((e) => e.group_seq === later.send_ack.group_seq));
  await sleep(200);
  assert.ok(!groupView(carol, hex(gid)).some((e) => e.group_seq >= later.send_ack.group_seq), 'carol got a message after her removal');
  assert.equal((await carol.c.request('group_get', { group_id: gid })).error.code, ErrorCode.NOT_GROUP_MEMBER);
  assert.equal((await groupSend(carol, gid, 3)).error.code, ErrorCode.NOT_GROUP_MEMBER);

  // an announcement group: only admins send; settings are the admins'
  assert.equal((await bob.c.request('group_change', { group_id: gid, op: 8, settings: { send: 1 } })).error.code, ErrorCode.NOT_GROUP_ADMIN);
  const ann = (await alice.c.request('group_change', { group_id: gid, op: 8, settings: { send: 1, edit_subject: 1 } })).group_info;
  assert.equal(ann.settings.send, 1);
  assert.equal((await groupSend(bob, gid, ann.version)).error.code, ErrorCode.NOT_GROUP_ADMIN);
  assert.ok((await groupSend(alice, gid, ann.version)).send_ack);
  assert.equal((await bob.c.request('group_change', { group_id: gid, op: 7, subject: 'Bob\'s' })).error.code, ErrorCode.NOT_GROUP_ADMIN);
  // promote bob; the last admin leaves only naming another
  assert.equal((await alice.c.request('group_change', { group_id: gid, op: 5, accounts: [bob.account] })).group_info.members.find((m) => hex(m.account_id) === hex(bob.account)).admin, true);
  assert.equal((await bob.c.request('group_change', { group_id: gid, op: 6, accounts: [alice.account] })).group_info.version, ann.version + 2);
  assert.equal((await bob.c.request('group_change', { group_id: gid, op: 4 })).error.code, ErrorCode.LAST_ADMIN);
  const left = (await bob.c.request('group_change', { group_id: gid, op: 4, accounts: [dave.account] })).group_info;
  assert.ok(left.members.find((m) => hex(m.account_id) === hex(dave.account)).admin);
  assert.ok(!left.members.some((m) => hex(m.account_id) === hex(bob.account)));
  // lists: alice and dave have the group, carol and bob not
  const list = (u) => u.c.request('group_list', {}).then((f) => f.groups.groups ?? []);
  assert.deepEqual((await list(alice)).map((x) => [hex(x.group_id), x.member_count, x.subject]), [[hex(gid), 2, 'Rope team']]);
  assert.equal((await list(carol)).length, 0);
  assert.equal((await list(bob)).length, 0);
  // every member device saw the same events in the same order, each seq once
  const seqs = (u) => groupView(u, hex(gid)).map((e) => e.group_seq);
  await until('alice has every seq', () => seqs(alice).length === seqs(alice).at(-1));
  assert.deepEqual(seqs(alice), Array.from({ length: seqs(alice).length }, (_, i) => i + 1));
  // the day's creates: --group-creates 2
  assert.ok((await alice.c.request('group_create', { group_id: crypto.randomBytes(16), subject: 'two', members: [] })).group_info);
  const third = await alice.c.request('group_create', { group_id: crypto.randomBytes(16), subject: 'three', members: [] });
  assert.equal(third.error.code, ErrorCode.GROUP_QUOTA);
  assert.ok(third.error.retry_after_ms > 0);
  // malformed changes
  assert.equal((await alice.c.request('group_change', { group_id: gid, op: 1 })).error.code, ErrorCode.MALFORMED_FRAME);
  assert.equal((await alice.c.request('group_create', { group_id: crypto.randomBytes(16), subject: 'x'.repeat(101) })).error.code, ErrorCode.MALFORMED_FRAME);
  assert.equal((await alice.c.request('send', { message_id: crypto.randomBytes(16), group_id: gid, group_version: 1 })).error.code, ErrorCode.MALFORMED_FRAME);
  void g;
});

test('kill -9 during a burst of group sends: every acked message reaches every member once', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const us = await people(s, 6);
  for (const u of us) await online(s, u);
  const gid = crypto.randomBytes(16);
  assert.ok((await us[0].c.request('group_create', { group_id: gid, subject: 'burst', members: us.slice(1).map((u) => u.account) })).group_info);
  const senders = us.slice(0, 3);
  const acked = new Map(); // id -> seq
  const todo = senders.map(() => Array.from({ length: 150 }, () => crypto.randomBytes(16)));
  let killed = false;
  const burst = async (k) => {
    const u = senders[k];
    while (todo[k].length) {
      const batch = todo[k].slice(0, 8);
      const answers = await Promise.all(batch.map((id) => (u.c ? groupSend(u, gid, 1, id).catch(() => null) : null)));
      // a resend of one stored before the kill is acked again, without its seq
      answers.forEach((a, i) => { if (a?.send_ack) acked.set(hex(batch[i]), a.send_ack.group_seq ?? null); });
      todo[k] = todo[k].filter((id) => !acked.has(hex(id)));
      if (!u.c) await sleep(50);
    }
  };
  const running = senders.map((_, k) => burst(k));
  await until('some acks', () => acked.size >= 100);
  s.d.child.kill('SIGKILL');
  killed = true;
  await new Promise((r) => s.d.child.once('exit', r));
  await until('every connection closed', () => us.every((u) => !u.c));
  const { port } = new URL(s.d.url);
  const d2 = await Parleyd.start({ dataDir: s.d.dataDir, sms: `file:${s.smsLog}`, port: Number(port),
    extra: ['--max-conns-per-address', '0', '--conn-rate', '0', '--send-rate', '100000'] });
  t.after(async () => { if (d2.child.exitCode === null) await d2.stop(); });
  s.d = d2;
  for (const u of us) await online(s, u);
  await Promise.all(running);
  assert.ok(killed && acked.size === 450);
  for (const u of us) await until(`${u.phone} has every message`, () => new Set(groupView(u, hex(gid)).map((e) => e.group_seq)).size >= 451, 30000);
  for (const u of us) {
    const v = groupView(u, hex(gid));
    const ids = v.slice(1).map((e) => hex(e.message_id));
    assert.equal(new Set(ids).size, ids.length, `${u.phone}: a message twice under two seqs`);
    for (const [id, seq] of acked) {
      const e = v.find((x) => (seq ? x.group_seq === seq : hex(x.message_id ?? '') === id));
      assert.equal(hex(e?.message_id ?? ''), id, `${u.phone} lacks acked ${id} (seq ${seq})`);
    }
    assert.deepEqual(v.map((e) => e.group_seq), Array.from({ length: v.length }, (_, i) => i + 1));
  }
});

test('a 1,024-member group receives a message', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const all = await people(s, 1025);
  const us = all.slice(0, 1024);
  const gid = crypto.randomBytes(16);
  await online(s, us[0]);
  const created = await us[0].c.request('group_create', { group_id: gid, subject: 'everyone', members: us.slice(1).map((u) => u.account) });
  assert.equal(created.group_info.members.length, 1024);
  const full = await us[0].c.request('group_change', { group_id: gid, op: 2, accounts: [all[1024].account] });
  assert.equal(full.error.code, ErrorCode.GROUP_FULL);
  const ack = await groupSend(us[0], gid, 1, crypto.randomBytes(16), Buffer.from('to all of you'));
  assert.ok(ack.send_ack, JSON.stringify(ack));
  for (let i = 1; i < 1024; i += 64) await Promise.all(us.slice(i, i + 64).map((u) => online(s, u)));
  for (const u of us) await until(`${u.phone}'s message`, () => groupView(u, hex(gid)).length >= 2, 30000);
  for (const u of us) {
    const v = groupView(u, hex(gid));
    assert.deepEqual(v.map((e) => e.group_seq), [1, 2]);
    assert.equal(v[1].body.toString(), 'to all of you');
  }
});
