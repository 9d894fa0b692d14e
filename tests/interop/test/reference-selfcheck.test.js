// Reference-only self-check: runs without parley-signal. It pairs the
// reference wrappers with each other through the same suites the parley tests
// use, so the scenarios, the wrappers and the facts the C side relies on
// (version bytes, fingerprint vectors, XEdDSA vector) are checked on their own.

import test from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import crypto from 'node:crypto';
import curve25519 from 'curve25519-js';
import { Parley } from '../lib/parley.js';
import { Ref6, xeddsaVerify } from '../lib/ref6.js';
import { Ref72, Signal72 } from '../lib/ref72.js';
import { Ref103, Signal103 } from '../lib/ref103.js';
import { safetyNumber, officialVerify } from '../lib/official.js';
import { parsePreKeyMessage, parseSignalMessage } from '../lib/wire.js';
import {
  must, refused, spawnAll, makeParty, establish, send, receive, exchange, addressOf,
} from '../lib/scenarios.js';
import {
  defineOneToOneTests, defineXeddsaTests, defineSafetyNumberTests, defineGroupTests, XEDDSA_KAT,
} from '../lib/suites.js';

// ---------------------------------------------------------------- 1:1 suites, ref with itself

defineOneToOneTests({
  title: 'self-check libsignal@6 ↔ libsignal@6',
  makeA: Ref6.spawn, makeB: Ref6.spawn, aVersionByte: 0x33, bVersionByte: 0x33,
  // libsignal@6 computes its MAC over a constant 0x33, so it cannot notice a
  // changed low nibble of the version byte (SIGNAL-NOTES 2.6).
  strictVersionByte: false,
});

defineOneToOneTests({
  title: 'self-check 0.72.1 ↔ 0.72.1',
  makeA: Ref72.spawn, makeB: Ref72.spawn, aVersionByte: 0x34, bVersionByte: 0x34,
});

// ---------------------------------------------------------------- libsignal@6 ↔ 0.72.1

test('self-check: libsignal@6 starts a session with 0.72.1 (0x33 PreKey messages decrypt)', async (t) => {
  for (const oneTime of [true, false]) {
    const [p6, p72] = await spawnAll(t, Ref6.spawn, Ref72.spawn);
    const a = await makeParty(p6, 'alice', { versionByte: 0x33 });
    const b = await makeParty(p72, 'bob', { versionByte: 0x34 });
    await establish(a, b, { oneTime, reply: false });
    // 0.72.1's reply is 0x34, which libsignal@6 cannot read.
    const r = await send(b, a, 'reply in 0x34');
    assert.equal(r.bytes[0], 0x34);
    await refused(a.player, 'decrypt', { ...addressOf(b), type: r.type, body: r.body }, 'libsignal@6 rejects 0x34');
  }
});

test('self-check: libsignal@6 cannot read 0.72.1 PreKey messages (0x34)', async (t) => {
  const [p6, p72] = await spawnAll(t, Ref6.spawn, Ref72.spawn);
  const a = await makeParty(p72, 'alice', { versionByte: 0x34 });
  const b = await makeParty(p6, 'bob', { versionByte: 0x33 });
  const pb = await must(a.player, 'process_bundle', { ...addressOf(b), bundle: b.bundle, plaintext: 'hi' });
  const body = Buffer.from(pb.body, 'base64');
  assert.equal(body[0], 0x34, 'outer version byte');
  assert.equal(parsePreKeyMessage(body).message[0], 0x34, 'inner SignalMessage version byte');
  const ans = await refused(b.player, 'decrypt', { ...addressOf(a), type: pb.type, body: pb.body }, '0x34');
  assert.match(ans.error, /Incompatible version number/);
});

test('self-check: 0.72.1 reads a SignalMessage whose version byte is 0x33 only with a matching MAC', async (t) => {
  // Rust computes the MAC over the received version byte: re-labelling a 0x34
  // body as 0x33 must fail.
  const [pa, pb] = await spawnAll(t, Ref72.spawn, Ref72.spawn);
  const a = await makeParty(pa, 'alice');
  const b = await makeParty(pb, 'bob');
  await establish(a, b);
  const m = await send(a, b, 'relabel me');
  const relabelled = Buffer.from(m.bytes);
  relabelled[0] = 0x33;
  await refused(b.player, 'decrypt', { ...addressOf(a), type: 'whisper', body: relabelled.toString('base64') }, 'MAC over 0x34');
  await receive(m);
});

test('self-check: wrappers refuse bad bundles (libsignal@6 via our own check, 0.72.1 natively)', async (t) => {
  for (const make of [Ref6.spawn, Ref72.spawn]) {
    const [pa, pb] = await spawnAll(t, make, make);
    const a = await makeParty(pa, 'alice');
    const b = await makeParty(pb, 'bob');
    const sig = Buffer.from(b.bundle.signed_prekey_signature, 'base64');
    sig[10] ^= 1;
    const ans = await refused(a.player, 'process_bundle',
      { ...addressOf(b), bundle: { ...b.bundle, signed_prekey_signature: sig.toString('base64') } }, 'bad signature');
    t.diagnostic(`${a.player.label} bad bundle error: ${ans.error}`);
  }
});

test('self-check: record the errors each reference gives for replays and tampering', async (t) => {
  for (const make of [Ref6.spawn, Ref72.spawn]) {
    const [pa, pb] = await spawnAll(t, make, make);
    const a = await makeParty(pa, 'alice');
    const b = await makeParty(pb, 'bob');
    const { prekeyMessages } = await establish(a, b);
    const m = await send(a, b, 'x');
    await receive(m);
    const replay = await refused(b.player, 'decrypt', { ...addressOf(a), type: m.type, body: m.body }, 'replay');
    const preReplay = await refused(b.player, 'decrypt', { ...addressOf(a), type: 'prekey', body: prekeyMessages[0].body }, 'replay');
    const m2 = await send(a, b, 'y');
    const bad = Buffer.from(m2.bytes);
    bad[bad.length - 1] ^= 1;
    const mac = await refused(b.player, 'decrypt', { ...addressOf(a), type: m2.type, body: bad.toString('base64') }, 'MAC');
    t.diagnostic(`${pa.label}: whisper replay -> ${replay.error}`);
    t.diagnostic(`${pa.label}: PreKey replay -> ${preReplay.error}`);
    t.diagnostic(`${pa.label}: bad MAC -> ${mac.error}`);
    await receive(m2);
  }
});

// ---------------------------------------------------------------- XEdDSA

defineXeddsaTests({
  title: 'self-check XEdDSA libsignal@6 → official',
  makeA: Ref6.spawn,
  makeSigner: Ref72.spawn,
  verifiers: [
    { name: 'curve25519-js', verify: xeddsaVerify },
    { name: '0.72.1 PublicKey.verify', verify: (p, m, s) => officialVerify(Signal72, p, m, s) },
    { name: '0.103.0 PublicKey.verify', verify: (p, m, s) => officialVerify(Signal103, p, m, s) },
  ],
});

defineXeddsaTests({
  title: 'self-check XEdDSA 0.103.0 → curve25519-js',
  makeA: Ref103.spawn,
  makeSigner: Ref6.spawn,
  verifiers: [{ name: 'curve25519-js', verify: xeddsaVerify }],
  keys: 12,
});

test('self-check: the XEdDSA test vector verifies with curve25519-js and both official versions', () => {
  const { publicKey, message, signature } = XEDDSA_KAT;
  assert.equal(curve25519.verify(publicKey.subarray(1), message, signature), true);
  assert.equal(officialVerify(Signal72, publicKey, message, signature), true);
  assert.equal(officialVerify(Signal103, publicKey, message, signature), true);
  assert.equal(signature[63] & 0x80, 0x80, 'sign bit set in the vector');
});

// ---------------------------------------------------------------- safety numbers

const FP = {
  alice: Buffer.from('0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868', 'hex'),
  bob: Buffer.from('05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b', 'hex'),
  digits: '300354477692869396892869876765458257569162576843440918079131',
  aliceScannableV1: '080112220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df1a220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d',
  aliceScannableV2: '080212220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df1a220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d',
};

test('self-check: libsignal fingerprint test vectors (rust/protocol/src/fingerprint.rs) with 0.72.1 and 0.103.0', () => {
  for (const S of [Signal72, Signal103]) {
    for (const [version, scannable] of [[1, FP.aliceScannableV1], [2, FP.aliceScannableV2]]) {
      const got = safetyNumber(S, {
        version, localId: Buffer.from('+14152222222'), localKey: FP.alice,
        remoteId: Buffer.from('+14153333333'), remoteKey: FP.bob,
      });
      assert.equal(got.digits, FP.digits);
      assert.equal(got.scannable.toString('hex'), scannable);
    }
  }
});

test('self-check: 0.72.1 and 0.103.0 compute identical safety numbers; version only changes byte 1 of the scannable', () => {
  for (let i = 0; i < 5; i++) {
    const args = {
      localId: Buffer.from(crypto.randomUUID()), localKey: Buffer.from(Signal72.IdentityKeyPair.generate().publicKey.serialize()),
      remoteId: Buffer.from(crypto.randomUUID()), remoteKey: Buffer.from(Signal72.IdentityKeyPair.generate().publicKey.serialize()),
    };
    const v1 = safetyNumber(Signal72, { ...args, version: 1 });
    const v2 = safetyNumber(Signal103, { ...args, version: 2 });
    const v0 = safetyNumber(Signal103, { ...args, version: 0 });
    assert.equal(v1.digits, v2.digits);
    assert.equal(v0.digits, v2.digits);
    assert.equal(v1.scannable.subarray(2).toString('hex'), v2.scannable.subarray(2).toString('hex'));
    assert.equal(v1.scannable[1], 1);
    assert.equal(v2.scannable[1], 2);
    assert.equal(v0.scannable.subarray(0, 2).toString('hex'), '0800', 'version 0 is still written');
    // Different versions do not compare equal.
    assert.throws(() => Signal103.ScannableFingerprint._fromBuffer(v1.scannable).compare(
      Signal103.ScannableFingerprint._fromBuffer(safetyNumber(Signal103, {
        version: 2, localId: args.remoteId, localKey: args.remoteKey, remoteId: args.localId, remoteKey: args.localKey,
      }).scannable)));
  }
});

// The algorithm as the C side implements it, with node:crypto only
// (signalapp/libsignal rust/protocol/src/fingerprint.rs), checked against the
// reference so the README's description is known to be right.
function fingerprintHalf(iterations, id, key) {
  let h = crypto.createHash('sha512').update(Buffer.from([0, 0])).update(key).update(id).update(key).digest();
  for (let i = 1; i < iterations; i++) h = crypto.createHash('sha512').update(h).update(key).digest();
  return h;
}
function digitsOf(h) {
  let s = '';
  for (let i = 0; i < 30; i += 5) s += String(h.readUIntBE(i, 5) % 100000).padStart(5, '0');
  return s;
}

test('self-check: safety numbers re-derived with node:crypto equal the reference', () => {
  for (let i = 0; i < 6; i++) {
    const localKey = Buffer.from(Signal103.IdentityKeyPair.generate().publicKey.serialize());
    const remoteKey = Buffer.from(Signal103.IdentityKeyPair.generate().publicKey.serialize());
    const localId = Buffer.from(i % 2 ? crypto.randomUUID() : `+1415555${String(i).padStart(4, '0')}`);
    const remoteId = crypto.randomBytes(16); // raw ACI bytes, as Signal uses for version 2
    const version = 1 + (i % 2);
    const want = safetyNumber(Signal103, { version, localId, localKey, remoteId, remoteKey });
    const l = fingerprintHalf(5200, localId, localKey);
    const r = fingerprintHalf(5200, remoteId, remoteKey);
    const [dl, dr] = [digitsOf(l), digitsOf(r)];
    assert.equal(dl < dr ? dl + dr : dr + dl, want.digits);
    const scannable = Buffer.concat([Buffer.from([0x08, version, 0x12, 0x22, 0x0a, 0x20]), l.subarray(0, 32),
      Buffer.from([0x1a, 0x22, 0x0a, 0x20]), r.subarray(0, 32)]);
    assert.equal(scannable.toString('hex'), want.scannable.toString('hex'));
  }
});

defineSafetyNumberTests({
  title: 'self-check safety numbers 0.72.1 vs 0.103.0',
  makeA: Ref72.spawn,
  S: Signal103,
  reference: (args) => safetyNumber(Signal103, args),
});

// ---------------------------------------------------------------- groups

defineGroupTests({ title: 'self-check groups 0.103.0 ↔ 0.103.0', makeA: Ref103.spawn, makeRef: Ref103.spawn });

// ---------------------------------------------------------------- the parley-signal driver

// A throwaway player for the driver's own mechanics: answers every request with
// ok:true (ok:false for 'fail'), or never answers the command named in HANG_ON.
const ECHO = `
  const rl = require('readline').createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const req = JSON.parse(line);
    if (req.cmd === process.env.HANG_ON) return;
    const ok = req.cmd !== 'fail';
    console.log(JSON.stringify(ok ? { id: req.id, cmd: req.cmd, ok } : { id: req.id, cmd: req.cmd, ok, error: 'asked to fail' }));
    if (req.cmd === 'quit') process.exit(0);
  });`;
const echo = (env = {}, timeoutMs) => Parley.spawn({
  path: process.execPath, args: ['-e', ECHO], env: { ...process.env, ...env }, timeoutMs, label: 'echo',
});

test('driver: answers, ok:false answers and in-order pipelining', async (t) => {
  const p = await echo();
  t.after(() => p.close());
  const [info, bad, gen] = await Promise.all([p.cmd('info'), p.cmd('fail', {}), p.cmd('generate', { name: 'm' })]);
  assert.equal(info.ok, true);
  assert.equal(info.cmd, 'info');
  assert.equal(bad.ok, false);
  assert.equal(typeof bad.error, 'string');
  assert.equal(gen.ok, true);
  assert.equal(gen.cmd, 'generate');
});

test('driver: a hung child fails the request after the timeout and is killed', async () => {
  const p = await echo({ HANG_ON: 'encrypt' }, 500);
  assert.equal((await p.cmd('info')).ok, true);
  await assert.rejects(p.cmd('encrypt', { peer: 'x', plaintext: 'y' }), /no answer to encrypt .* within 500 ms/);
  await assert.rejects(p.cmd('info'), /no answer to encrypt/, 'later requests fail too');
  await p.exitPromise;
  assert.equal(p.exited, true, 'child was killed');
});

test('driver: a missing program and a mismatched answer id are errors, not answers', async (t) => {
  await assert.rejects(Parley.spawn({ path: '/nonexistent/parley-signal' }), /cannot run/);
  const liar = 'process.stdin.on("data", () => console.log(JSON.stringify({ id: 999, cmd: "info", ok: true })));';
  const p = await Parley.spawn({ path: process.execPath, args: ['-e', liar], label: 'liar' });
  t.after(() => p.close());
  await assert.rejects(p.cmd('info'), /does not match request/);
});

test('driver: close() ends a healthy child with quit', async () => {
  const p = await echo();
  assert.equal((await p.cmd('info')).ok, true);
  await p.close();
  assert.equal(p.exited, true);
  assert.equal((await p.exitPromise).code, 0);
});

test('driver: close() fails on a sanitizer report or a bad exit after quit', async () => {
  // A tiny child that answers every request and, on quit, reports a memory error.
  const script = `
    const rl = require('readline').createInterface({ input: process.stdin });
    rl.on('line', (line) => {
      const req = JSON.parse(line);
      console.log(JSON.stringify({ id: req.id, cmd: req.cmd, ok: true }));
      if (req.cmd === 'quit') {
        process.stderr.write('==42==ERROR: AddressSanitizer: heap-use-after-free on address 0x1\\n');
        process.exit(Number(process.env.EXIT_CODE));
      }
    });`;
  for (const code of ['0', '1']) {
    const p = await Parley.spawn({ path: process.execPath, args: ['-e', script], env: { ...process.env, EXIT_CODE: code }, label: 'asan' });
    assert.equal((await p.cmd('info')).ok, true);
    await assert.rejects(p.close(), /sanitizer report in stderr: ERROR: AddressSanitizer: heap-use-after-free/);
  }
  const clean = script.replace("process.stderr.write", "void");
  const p = await Parley.spawn({ path: process.execPath, args: ['-e', clean], env: { ...process.env, EXIT_CODE: '3' }, label: 'bad-exit' });
  await assert.rejects(p.close(), /exit after quit with code 3/);
});
