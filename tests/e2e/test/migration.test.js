// Issue 12, test 5: a data directory written by parleyd from before the inbox log
// (fixtures/pre-log.tar.gz, made by fixtures/make-pre-log.js with the binaries of
// cd3e0ac: every inbox in LMDB) opens with today's parleyd with every envelope, account
// and key: the inboxes move to the log at the first start, each recipient receives
// exactly what was left for it, in order and byte for byte (bob's 50 acked ones never
// again); phone numbers still find their accounts, the devices still authenticate with
// their keys, bundles still carry the uploaded prekeys, and a message accepted before
// the upgrade and sent again after it is still recognised (no second copy). A second
// start finds nothing twice; parleyctl check passes.
import test from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Parleyd, tempDir, removeDir } from '../lib/parleyd.js';
import { Client, authenticate } from '../lib/client.js';

const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'pre-log.tar.gz');
const hex = (b) => Buffer.from(b).toString('hex');
const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');

async function connect(d, u, receive) {
  const c = await Client.open(d.url);
  const a = await authenticate(c, Buffer.from(u.account, 'hex'), u.device, Buffer.from(u.priv, 'hex'), { receive });
  assert.ok(a.authenticated, JSON.stringify(a));
  return c;
}

// Every envelope until the server says the inbox is drained, acked as they come.
async function drain(c) {
  const got = [];
  for (;;) {
    const f = await c.next(10000);
    assert.ok(f.deliver, JSON.stringify(f));
    const es = f.deliver.envelopes ?? [];
    got.push(...es);
    if (es.length) c.push('deliver_ack', { up_to_seq: es.at(-1).seq });
    if (f.deliver.drained) return got; // nothing more follows until new ones come
  }
}

test('a data directory from before the inbox log: every envelope, account and key', { timeout: 120000 }, async (t) => {
  const dir = tempDir();
  t.after(() => removeDir(dir));
  execFileSync('tar', ['-xzf', fixture, '-C', dir]);
  const m = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  const dataDir = path.join(dir, 'var');
  const ctl = process.env.PARLEYCTL;
  assert.ok(ctl, 'PARLEYCTL is set (ctest sets it)');
  let d = await Parleyd.start({ dataDir });
  t.after(async () => { if (d.child.exitCode === null && d.child.signalCode === null) await d.stop(); });
  // 550 messages and alice's delivered receipt for bob's 50
  assert.match(d.stderr, /moved 551 undelivered envelopes from the data file to the inbox log/);

  // accounts by phone, and keys: alice looks bob up and fetches his bundle
  const alice = await connect(d, m.accounts.alice, false);
  const look = await alice.request('lookup', { phone: m.accounts.bob.phone });
  assert.equal(hex(look.lookup_result.devices.account_id), m.accounts.bob.account);
  const bundles = await alice.request('fetch_bundles', { account_id: Buffer.from(m.accounts.bob.account, 'hex') });
  const b = bundles.bundles.bundles[0];
  assert.equal(hex(b.identity_key), m.accounts.bob.pub);
  assert.equal(b.registration_id, 77);
  assert.equal(b.signed_prekey.id, 1);
  assert.equal(b.prekey.id, 1, 'the lowest of the 10 one-time prekeys uploaded before');

  // a message accepted before the upgrade, sent again: acknowledged, not stored twice
  const first = m.expected.dave[0];
  const again = await alice.request('send', { message_id: Buffer.from(first.message_id, 'hex'),
    recipient_account: Buffer.from(m.accounts.dave.account, 'hex'), messages: [{ device_id: 1, type: 2, body: Buffer.from('resent') }] });
  assert.ok(again.send_ack, JSON.stringify(again));

  // each recipient gets exactly what was left, in order, byte for byte
  for (const name of ['bob', 'dave']) {
    const c = await connect(d, m.accounts[name], true);
    const all = await drain(c);
    const got = all.filter((e) => e.message_id);
    const want = m.expected[name];
    // bob also has the low-stock notice of alice's fetch (9 prekeys left), after them
    assert.deepEqual(all.filter((e) => !e.message_id).map((e) => e.prekeys_left), name === 'bob' ? [9] : []);
    assert.equal(got.length, want.length, `${name}: ${got.length} envelopes, ${want.length} expected`);
    for (let i = 0; i < want.length; i++) {
      assert.equal(hex(got[i].message_id), want[i].message_id, `${name} #${i}`);
      assert.equal(hex(got[i].sender_account), m.accounts[want[i].from].account);
      assert.equal(sha(got[i].body), want[i].body_sha256, `${name} #${i} body`);
    }
    if (name === 'bob') assert.ok(got[0].seq > m.bob_acked_up_to, 'the acked ones stay gone, seqs go on');
    await new Promise((r) => setTimeout(r, 300)); // the acks reach the writer
    await c.close();
  }
  await alice.close();
  await d.stop();

  // a second start: nothing moved again, nothing left, the log verifies
  d = await Parleyd.start({ dataDir });
  await new Promise((r) => setTimeout(r, 200));
  assert.doesNotMatch(d.stderr, /moved/);
  await d.stop();
  const stats = JSON.parse(execFileSync(ctl, ['stats', '--data', dataDir], { encoding: 'utf8' }));
  assert.ok(stats.inbox_envelopes <= 550, JSON.stringify(stats)); // the senders' delivered receipts
  assert.equal(stats.accounts, 4);
  execFileSync(ctl, ['check', '--data', dataDir]);
});
