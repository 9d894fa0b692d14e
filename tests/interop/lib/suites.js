// Test suites defined once and instantiated per pair of players. `A` is the
// implementation under test (parley-signal in the real suites, a reference in
// the self-check); `B` is the reference it must interoperate with. Scenarios
// that test a receiver's defences (replays, bit flips, bad bundles) put A on
// the receiving side.

import test from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import crypto from 'node:crypto';
import { b64 } from './common.js';
import { Rng } from './rng.js';
import { flipBit, parseSenderKeyMessage, parseSkdm, uuidString } from './wire.js';
import {
  must, refused, spawnAll, makeParty, addressOf, send, receive, establish, conversation,
  outOfOrderInChain, outOfOrderAcrossRatchets, droppedMessages, replays, bitFlips, prekeyTamper,
  emptyAndLarge, badBundles, exchange, assertPlaintext, plaintextArgs, restart,
} from './scenarios.js';

const TIMEOUT = { timeout: 180_000 };

// A fresh Rng per test; its seed is in the test's diagnostics.
function rngFor(t) {
  const rng = new Rng();
  t.diagnostic(`INTEROP_SEED=${rng.seed}`);
  return rng;
}

// ================================================================= 1:1

// opts: { title, makeA, makeB, aVersionByte, bVersionByte, strictVersionByte }
export function defineOneToOneTests(opts) {
  const { title, makeA, makeB } = opts;
  const strictVersionByte = opts.strictVersionByte ?? true;

  // Fresh A and B with identities.
  async function pair(t, { aDevice = 1, bDevice = 1 } = {}) {
    const [pa, pb] = await spawnAll(t, makeA, makeB);
    const a = await makeParty(pa, 'alice', { deviceId: aDevice, versionByte: opts.aVersionByte });
    const b = await makeParty(pb, 'bob', { deviceId: bDevice, versionByte: opts.bVersionByte, registrationId: 4321 });
    return { a, b };
  }

  for (const oneTime of [true, false]) {
    const what = oneTime ? 'with' : 'without';
    test(`${title}: A starts the session (processes B's bundle) ${what} a one-time prekey`, TIMEOUT, async (t) => {
      const { a, b } = await pair(t, { aDevice: 1, bDevice: 7 });
      await establish(a, b, { oneTime, rng: rngFor(t) });
      await exchange(a, b, 3);
    });
    test(`${title}: B starts the session (processes A's bundle) ${what} a one-time prekey`, TIMEOUT, async (t) => {
      const { a, b } = await pair(t, { aDevice: 5, bDevice: 1 });
      await establish(b, a, { oneTime, rng: rngFor(t) });
      await exchange(b, a, 3);
    });
  }

  test(`${title}: A's one-time prekeys are used once each, lowest id first`, TIMEOUT, async (t) => {
    const [pa, pb1, pb2, pb3] = await spawnAll(t, makeA, makeB, makeB, makeB);
    const a = await makeParty(pa, 'alice', { prekeyId: 10, prekeyCount: 2, versionByte: opts.aVersionByte });
    const b1 = await makeParty(pb1, 'bob', { versionByte: opts.bVersionByte });
    const b2 = await makeParty(pb2, 'carol', { versionByte: opts.bVersionByte });
    const b3 = await makeParty(pb3, 'dave', { versionByte: opts.bVersionByte });
    const first = await establish(b1, a, { oneTime: true });
    assert.equal(first.bundle.prekey_id, 10);
    const second = await establish(b2, a, { oneTime: true });
    assert.equal(second.bundle.prekey_id, 11, 'next bundle offers the next unused prekey');
    // With every one-time prekey used, a bundle has none (or is refused).
    const exhausted = await a.player.cmd('bundle', { prekey: true });
    if (exhausted.ok) {
      assert.equal(exhausted.bundle.prekey_id, null, 'all one-time prekeys used');
      assert.equal(exhausted.bundle.prekey, null);
    }
    // Dave got hold of the first (already used) bundle: A must refuse.
    const pb = await must(b3.player, 'process_bundle', { ...addressOf(a), bundle: first.bundle, plaintext: 'reusing prekey 10' });
    await refused(a.player, 'decrypt', { ...addressOf(b3), type: pb.type, body: pb.body }, 'one-time prekey 10 already used');
    // Sessions that did work keep working.
    await exchange(a, b1, 2);
    await exchange(a, b2, 2);
  });

  test(`${title}: long conversation started by A, 320 messages, many ratchet steps`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const { a, b } = await pair(t);
    await establish(a, b, { rng });
    const steps = await conversation(a, b, { messages: 320, rng });
    assert.ok(steps >= 30, `only ${steps} direction changes`);
  });

  test(`${title}: long conversation started by B, 320 messages, many ratchet steps`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const { a, b } = await pair(t);
    await establish(b, a, { rng, oneTime: false });
    const steps = await conversation(b, a, { messages: 320, rng, maxBurst: 6 });
    assert.ok(steps >= 50, `only ${steps} direction changes`);
  });

  test(`${title}: out-of-order delivery within a chain, both directions`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const { a, b } = await pair(t);
    await establish(a, b, { rng });
    await outOfOrderInChain(b, a, { rng, n: 30 });
    await outOfOrderInChain(a, b, { rng, n: 30 });
  });

  test(`${title}: out-of-order delivery across ratchet steps, both directions`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const { a, b } = await pair(t);
    await establish(b, a, { rng });
    await outOfOrderAcrossRatchets(b, a, { rng });
    const { a: a2, b: b2 } = await pair(t);
    await establish(a2, b2, { rng });
    await outOfOrderAcrossRatchets(a2, b2, { rng });
  });

  test(`${title}: dropped messages, later ones still decrypt, both directions`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const { a, b } = await pair(t);
    await establish(a, b, { rng });
    await droppedMessages(b, a, { rng });
    await droppedMessages(a, b, { rng });
  });

  test(`${title}: A refuses replays (PreKey and whisper) and the session survives`, TIMEOUT, async (t) => {
    const { a, b } = await pair(t);
    const { prekeyMessages } = await establish(b, a);
    await replays(b, a, { prekeyMessages });
    // And as the initiator's side.
    const { a: a2, b: b2 } = await pair(t);
    await establish(a2, b2);
    await replays(b2, a2);
  });

  test(`${title}: A refuses tampered SignalMessages and still decrypts the originals`, TIMEOUT, async (t) => {
    const { a, b } = await pair(t);
    await establish(b, a);
    await bitFlips(b, a, { strictVersionByte });
    const { a: a2, b: b2 } = await pair(t);
    await establish(a2, b2);
    await bitFlips(b2, a2, { strictVersionByte });
  });

  test(`${title}: A refuses tampered PreKey messages and then accepts the original`, TIMEOUT, async (t) => {
    const { a, b } = await pair(t);
    await prekeyTamper(b, a);
  });

  test(`${title}: A refuses bundles whose signed-prekey signature is bad`, TIMEOUT, async (t) => {
    const [pa, pb, pc] = await spawnAll(t, makeA, makeB, makeB);
    const a = await makeParty(pa, 'alice', { versionByte: opts.aVersionByte });
    const b = await makeParty(pb, 'bob', { versionByte: opts.bVersionByte });
    const c = await makeParty(pc, 'carol', { versionByte: opts.bVersionByte });
    await badBundles(a, b, c);
  });

  test(`${title}: empty and 10 KB binary plaintexts, both directions`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const { a, b } = await pair(t);
    await establish(a, b, { rng });
    await emptyAndLarge(a, b, { rng });
  });

  test(`${title}: A keeps separate sessions per peer and device`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const [pa, pb1, pb2, pc] = await spawnAll(t, makeA, makeB, makeB, makeB);
    const a = await makeParty(pa, 'alice', { prekeyCount: 5, versionByte: opts.aVersionByte });
    const bob1 = await makeParty(pb1, 'bob', { deviceId: 1, versionByte: opts.bVersionByte });
    const bob2 = await makeParty(pb2, 'bob', { deviceId: 2, versionByte: opts.bVersionByte });
    const carol = await makeParty(pc, 'carol', { deviceId: 3, versionByte: opts.bVersionByte });
    await establish(a, bob1, { rng });
    await establish(bob2, a, { rng });
    await establish(a, carol, { rng, oneTime: false, plaintextWithBundle: false });
    const peers = [bob1, bob2, carol];
    for (let i = 0; i < 60; i++) {
      const peer = rng.pick(peers);
      const [from, to] = rng.int(2) ? [a, peer] : [peer, a];
      await receive(await send(from, to, `${i} ${from.name}.${from.deviceId} -> ${to.name}.${to.deviceId}`));
    }
    // A message for bob.1 must not decrypt as if it came from bob.2.
    const m = await send(bob1, a, 'from bob device 1');
    await refused(a.player, 'decrypt', { ...addressOf(bob2), type: m.type, body: m.body }, 'wrong device');
    await receive(m);
  });
}

// ================================================================= XEdDSA

// The libsignal XEdDSA test vector (signalapp/libsignal rust/core/src/curve/curve25519.rs,
// test_signature; SIGNAL-NOTES section 3). sig[63] = 0x88: sign bit set.
export const XEDDSA_KAT = {
  publicKey: Buffer.from('05ab7e717d4a163b7d9a1d8071dfe9dcf8cdcd1cea3339b6356be84d887e322c64', 'hex'),
  message: Buffer.from('05edce9d9c415ca78cb7252e72c2c4a554d3eb29485a0e1d503118d1a82d99fb4a', 'hex'),
  signature: Buffer.from('5de88ca9a89b4a115da79109c67c9c7464a3e4180274f1cb8c63c2984e286dfb' +
    'ede82deb9dcd9fae0bfbb821569b3d9001bd8130cd11d486cef047bd60b86e88', 'hex'),
};

// opts: { title, makeA, makeSigner, verifiers: [{ name, verify(pub, msg, sig) }], keys, perKey }
// The sign bit stored in sig[63] is the sign of the signer's Edwards public
// key, so it is fixed per identity: covering both values takes many keys.
export function defineXeddsaTests(opts) {
  const { title, makeA, makeSigner, verifiers } = opts;
  const keys = opts.keys ?? 16;
  const perKey = opts.perKey ?? 6;

  function messagesFor(rng) {
    const list = [Buffer.alloc(0), rng.bytes(33), rng.bytes(10 * 1024)];
    while (list.length < perKey) list.push(rng.bytes(rng.between(1, 200)));
    return list;
  }

  test(`${title}: signatures by A verify with the reference (${verifiers.map((v) => v.name).join(', ')})`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const signBits = new Set();
    for (let k = 0; k < keys; k++) {
      const [pa] = await spawnAll(t, makeA);
      const a = await makeParty(pa, `signer${k}`);
      for (const message of messagesFor(rng)) {
        const s = await must(pa, 'xeddsa_sign', { message_b64: b64(message) });
        assert.equal(s.public_key, a.bundle.identity_key, 'xeddsa_sign public_key is the identity key');
        const pub = Buffer.from(s.public_key, 'base64');
        const sig = Buffer.from(s.signature, 'base64');
        assert.equal(sig.length, 64, 'signature length');
        signBits.add(sig[63] >> 7);
        for (const v of verifiers) {
          assert.equal(v.verify(pub, message, sig), true, `${v.name} rejects a signature by ${pa.label}`);
          assert.equal(v.verify(pub, message, flipBit(sig, rng.int(64), rng.int(8))), false,
            `${v.name} accepts a signature with a flipped bit`);
          assert.equal(v.verify(pub, message, flipBit(sig, 63, 7)), false, `${v.name} accepts a flipped sign bit`);
          if (message.length > 0) {
            assert.equal(v.verify(pub, flipBit(message, rng.int(message.length), rng.int(8)), sig), false,
              `${v.name} accepts a signature over a changed message`);
          }
        }
      }
      // The signed prekey signature in A's bundle verifies too.
      for (const v of verifiers) {
        assert.equal(v.verify(Buffer.from(a.bundle.identity_key, 'base64'), Buffer.from(a.bundle.signed_prekey, 'base64'),
          Buffer.from(a.bundle.signed_prekey_signature, 'base64')), true, `${v.name}: A's signed prekey signature`);
      }
      await pa.close();
    }
    assert.deepEqual([...signBits].sort(), [0, 1], `sig[63] sign bit seen only as ${[...signBits]} over ${keys} keys`);
  });

  test(`${title}: A verifies signatures by the reference`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const [pa] = await spawnAll(t, makeA);
    await makeParty(pa, 'verifier');
    const signBits = new Set();
    let previous = null;
    for (let k = 0; k < keys; k++) {
      const [signer] = await spawnAll(t, makeSigner);
      await makeParty(signer, `signer${k}`);
      for (const message of messagesFor(rng)) {
        const s = await must(signer, 'xeddsa_sign', { message_b64: b64(message) });
        const sig = Buffer.from(s.signature, 'base64');
        signBits.add(sig[63] >> 7);
        const args = { public_key: s.public_key, message_b64: b64(message), signature: s.signature };
        assert.equal((await must(pa, 'xeddsa_verify', args)).valid, true, `A rejects a signature by ${signer.label}`);
        const badSig = { ...args, signature: b64(flipBit(sig, rng.int(64), rng.int(8))) };
        assert.equal((await must(pa, 'xeddsa_verify', badSig)).valid, false, 'A accepts a flipped signature bit');
        const badSign = { ...args, signature: b64(flipBit(sig, 63, 7)) };
        assert.equal((await must(pa, 'xeddsa_verify', badSign)).valid, false, 'A accepts a flipped sign bit');
        if (message.length > 0) {
          const badMsg = { ...args, message_b64: b64(flipBit(message, rng.int(message.length), 0)) };
          assert.equal((await must(pa, 'xeddsa_verify', badMsg)).valid, false, 'A accepts a changed message');
        }
        if (previous) {
          const wrongKey = { ...args, public_key: previous };
          assert.equal((await must(pa, 'xeddsa_verify', wrongKey)).valid, false, 'A accepts the wrong key');
        }
      }
      previous = (await must(signer, 'xeddsa_sign', { message: 'x' })).public_key;
    }
    assert.deepEqual([...signBits].sort(), [0, 1], `sign bit seen only as ${[...signBits]}`);
  });

  test(`${title}: A verifies the libsignal XEdDSA test vector and rejects every single-bit change`, TIMEOUT, async (t) => {
    const [pa] = await spawnAll(t, makeA);
    await makeParty(pa, 'verifier');
    const { publicKey, message, signature } = XEDDSA_KAT;
    const args = { public_key: b64(publicKey), message_b64: b64(message), signature: b64(signature) };
    assert.equal((await must(pa, 'xeddsa_verify', args)).valid, true, 'test vector');
    for (let bit = 0; bit < 512; bit++) {
      const bad = { ...args, signature: b64(flipBit(signature, bit >> 3, bit & 7)) };
      assert.equal((await must(pa, 'xeddsa_verify', bad)).valid, false, `signature bit ${bit} flipped`);
    }
    for (let bit = 0; bit < message.length * 8; bit += 7) {
      const bad = { ...args, message_b64: b64(flipBit(message, bit >> 3, bit & 7)) };
      assert.equal((await must(pa, 'xeddsa_verify', bad)).valid, false, `message bit ${bit} flipped`);
    }
  });
}

// ================================================================= safety numbers

// opts: { title, makeA, S (official module), computeReference(args) -> { digits, scannable } }
export function defineSafetyNumberTests(opts) {
  const { title, makeA, S, reference } = opts;

  const e164 = (rng) => `+${rng.between(1, 9)}${String(rng.int(1e9)).padStart(9, '0')}${rng.int(10)}`;

  test(`${title}: safety numbers equal the reference's (random keys and identifiers, versions 1 and 2)`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const [pa] = await spawnAll(t, makeA);
    const a = await makeParty(pa, 'alice');
    const ourKey = Buffer.from(a.bundle.identity_key, 'base64');
    const cases = [];
    for (let i = 0; i < 12; i++) {
      const version = [1, 2, undefined][i % 3];
      const ids = version === 1 ? [e164(rng), e164(rng)] : [crypto.randomUUID(), crypto.randomUUID()];
      cases.push({ version, localId: ids[0], remoteId: ids[1], remoteKey: Buffer.from(S.IdentityKeyPair.generate().publicKey.serialize()) });
    }
    // Odd identifiers: empty, non-ASCII, long.
    cases.push({ version: 2, localId: 'ü-中文-😀', remoteId: 'a', remoteKey: Buffer.from(S.IdentityKeyPair.generate().publicKey.serialize()) });
    cases.push({ version: 1, localId: 'x'.repeat(300), remoteId: '+1', remoteKey: Buffer.from(S.IdentityKeyPair.generate().publicKey.serialize()) });
    // Version 2 as Signal apps compute it: raw 16-byte service ids, sent as *_id_b64.
    for (let i = 0; i < 4; i++) {
      cases.push({ version: 2, raw: true, localId: crypto.randomBytes(16), remoteId: crypto.randomBytes(16),
        remoteKey: Buffer.from(S.IdentityKeyPair.generate().publicKey.serialize()) });
    }
    for (const c of cases) {
      const args = c.raw
        ? { local_id_b64: b64(c.localId), remote_id_b64: b64(c.remoteId), remote_identity_key: b64(c.remoteKey) }
        : { local_id: c.localId, remote_id: c.remoteId, remote_identity_key: b64(c.remoteKey) };
      if (c.version !== undefined) args.version = c.version;
      const got = await must(pa, 'safety_number', args);
      const want = reference({
        version: c.version ?? 2, localId: Buffer.from(c.localId), localKey: ourKey,
        remoteId: Buffer.from(c.remoteId), remoteKey: c.remoteKey,
      });
      assert.match(got.digits, /^[0-9]{60}$/, 'digits are 60 decimal digits');
      assert.equal(got.digits, want.digits, `digits for ${JSON.stringify(args)}`);
      assert.equal(got.scannable, b64(want.scannable), `scannable for ${JSON.stringify(args)}`);
      // Layout: 08 <version> 12 22 0a 20 <local 32> 1a 22 0a 20 <remote 32>.
      const scan = Buffer.from(got.scannable, 'base64');
      assert.equal(scan.length, 74);
      assert.equal(scan.subarray(0, 2).toString('hex'), `08${(c.version ?? 2).toString(16).padStart(2, '0')}`);
    }
  });

  test(`${title}: two A instances compute matching safety numbers for each other`, TIMEOUT, async (t) => {
    const [p1, p2] = await spawnAll(t, makeA, makeA);
    const x = await makeParty(p1, 'xavier');
    const y = await makeParty(p2, 'yvonne');
    for (const version of [1, 2]) {
      const ids = version === 1 ? ['+14152222222', '+14153333333'] : [crypto.randomUUID(), crypto.randomUUID()];
      const sx = await must(p1, 'safety_number', { version, local_id: ids[0], remote_id: ids[1], remote_identity_key: y.bundle.identity_key });
      const sy = await must(p2, 'safety_number', { version, local_id: ids[1], remote_id: ids[0], remote_identity_key: x.bundle.identity_key });
      assert.equal(sx.digits, sy.digits, 'both sides show the same digits');
      const bx = Buffer.from(sx.scannable, 'base64');
      const by = Buffer.from(sy.scannable, 'base64');
      assert.equal(bx.subarray(6, 38).toString('hex'), by.subarray(42, 74).toString('hex'), 'x local = y remote');
      assert.equal(bx.subarray(42, 74).toString('hex'), by.subarray(6, 38).toString('hex'), 'x remote = y local');
      assert.ok(S.ScannableFingerprint._fromBuffer(bx).compare(S.ScannableFingerprint._fromBuffer(by)), 'reference compare() accepts the pair');
      // A different remote key changes the number.
      const other = b64(S.IdentityKeyPair.generate().publicKey.serialize());
      const sz = await must(p1, 'safety_number', { version, local_id: ids[0], remote_id: ids[1], remote_identity_key: other });
      assert.notEqual(sz.digits, sx.digits);
    }
  });
}

// ================================================================= groups

// opts: { title, makeA, makeRef } where makeRef gives a Ref103 (0.103.0).
export function defineGroupTests(opts) {
  const { title, makeA, makeRef } = opts;

  async function sendGroup(sender, distributionId, plaintext) {
    const a = await must(sender.player, 'group_encrypt', { distribution_id: distributionId, ...plaintextArgs(plaintext) });
    assert.equal(a.type, 'senderkey');
    assert.equal(a.type_code, 7);
    return { sender, distributionId, body: a.body, bytes: Buffer.from(a.body, 'base64'), plaintext };
  }

  async function receiveGroup(receiver, m, body = m.body) {
    const a = await must(receiver.player, 'group_decrypt', { sender: m.sender.name, device_id: m.sender.deviceId, body });
    assertPlaintext(a, m.plaintext, `${receiver.player.label} group_decrypt from ${m.sender.player.label}`);
  }

  async function receiveGroupRefused(receiver, m, body, why) {
    return refused(receiver.player, 'group_decrypt',
      { sender: m.sender.name, device_id: m.sender.deviceId, body: Buffer.isBuffer(body) ? b64(body) : body }, why);
  }

  function checkSenderKeyMessage(m, { chainId, iteration }) {
    const s = parseSenderKeyMessage(m.bytes);
    assert.equal(s.version, 0x33, 'SenderKeyMessage version byte');
    assert.deepEqual(s.fieldOrder, [1, 2, 3, 4], 'SenderKeyMessage fields');
    assert.equal(uuidString(s.distributionUuid), m.distributionId.toLowerCase(), 'distribution_uuid');
    assert.equal(s.chainId, chainId, 'chain_id');
    assert.equal(s.iteration, iteration, 'iteration');
    assert.equal(s.ciphertext.length % 16, 0, 'ciphertext in AES blocks');
    return s;
  }

  function tamperedVariants(m) {
    const s = parseSenderKeyMessage(m.bytes);
    return [
      ['version high nibble', flipBit(m.bytes, 0, 4)],
      ['distribution uuid', flipBit(m.bytes, 3, 0)],
      ['ciphertext first byte', flipBit(m.bytes, s.offsets.ciphertext, 0)],
      ['ciphertext last byte', flipBit(m.bytes, s.offsets.signature - 1, 7)],
      ['signature R', flipBit(m.bytes, s.offsets.signature + 5, 2)],
      ['signature s', flipBit(m.bytes, s.offsets.signature + 40, 0)],
      ['signature sign bit', flipBit(m.bytes, m.bytes.length - 1, 7)],
      ['truncated', m.bytes.subarray(0, m.bytes.length - 1)],
    ];
  }

  async function members(t) {
    const [pa, pr] = await spawnAll(t, makeA, makeRef);
    const a = await makeParty(pa, 'alice', { deviceId: 2 });
    const r = await makeParty(pr, 'rita', { deviceId: 3 });
    return { a, r };
  }

  test(`${title}: A processes the reference's SKDM and decrypts its group messages`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const { a, r } = await members(t);
    const distributionId = crypto.randomUUID();
    const created = await must(r.player, 'group_create', { distribution_id: distributionId });
    const processed = await must(a.player, 'group_process', { sender: r.name, device_id: r.deviceId, skdm: created.skdm });
    assert.equal(processed.distribution_id.toLowerCase(), distributionId);
    assert.equal(processed.chain_id, created.chain_id);
    assert.equal(processed.iteration, 0);
    for (let i = 0; i < 60; i++) {
      const m = await sendGroup(r, distributionId, i % 5 === 0 ? rng.binary(rng.between(0, 400)) : rng.text(rng.between(0, 100)));
      checkSenderKeyMessage(m, { chainId: created.chain_id, iteration: i });
      await receiveGroup(a, m);
    }
    const empty = await sendGroup(r, distributionId, '');
    await receiveGroup(a, empty);
    await receiveGroup(a, await sendGroup(r, distributionId, rng.binary(10 * 1024)));
  });

  test(`${title}: the reference processes A's SKDM and decrypts A's group messages`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const { a, r } = await members(t);
    const distributionId = crypto.randomUUID();
    const created = await must(a.player, 'group_create', { distribution_id: distributionId });
    assert.equal(created.distribution_id.toLowerCase(), distributionId);
    assert.equal(created.iteration, 0);
    assert.ok(Number.isInteger(created.chain_id) && created.chain_id >= 0 && created.chain_id < 2 ** 31, 'chain_id is 31-bit');
    const skdm = parseSkdm(Buffer.from(created.skdm, 'base64'));
    assert.equal(skdm.version, 0x33, 'SKDM version byte');
    assert.deepEqual(skdm.fieldOrder, [1, 2, 3, 4, 5], 'SKDM fields in ascending order');
    assert.equal(uuidString(skdm.distributionUuid), distributionId);
    assert.equal(skdm.chainId, created.chain_id);
    assert.equal(skdm.iteration, 0);
    assert.equal(skdm.chainKey.length, 32);
    assert.equal(skdm.signingKey.length, 33);
    assert.equal(skdm.signingKey[0], 0x05);
    const processed = await must(r.player, 'group_process', { sender: a.name, device_id: a.deviceId, skdm: created.skdm });
    assert.equal(processed.chain_id, created.chain_id);
    assert.equal(processed.distribution_id.toLowerCase(), distributionId);

    const msgs = [];
    for (let i = 0; i < 60; i++) {
      const m = await sendGroup(a, distributionId, rng.text(rng.between(0, 100)));
      const s = checkSenderKeyMessage(m, { chainId: created.chain_id, iteration: i });
      // The signature is XEdDSA by the SKDM's signing key over version || protobuf.
      const signed = m.bytes.subarray(0, m.bytes.length - 64);
      assert.ok(r.player.S.PublicKey.deserialize(skdm.signingKey).verify(signed, s.signature), 'SenderKeyMessage signature');
      msgs.push(m);
    }
    for (const m of msgs.slice(0, 40)) await receiveGroup(r, m);
    await restart(a); // A's own sending key must survive too
    msgs.push(await sendGroup(a, distributionId, 'after a restart'));
    checkSenderKeyMessage(msgs[60], { chainId: created.chain_id, iteration: 60 });
    for (const m of rng.shuffle(msgs.slice(40))) await receiveGroup(r, m);
    await receiveGroup(r, await sendGroup(a, distributionId, ''));
    await receiveGroup(r, await sendGroup(a, distributionId, rng.binary(10 * 1024)));
    await receiveGroup(r, await sendGroup(a, distributionId, Buffer.from('nul\u0000inside')));
  });

  test(`${title}: A group_create without distribution_id picks a random UUID`, TIMEOUT, async (t) => {
    const { a, r } = await members(t);
    const c1 = await must(a.player, 'group_create', {});
    const c2 = await must(a.player, 'group_create', {});
    assert.match(c1.distribution_id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i);
    assert.notEqual(c1.distribution_id, c2.distribution_id);
    await must(r.player, 'group_process', { sender: a.name, device_id: a.deviceId, skdm: c2.skdm });
    await receiveGroup(r, await sendGroup(a, c2.distribution_id, 'default id'));
  });

  test(`${title}: out-of-order, dropped and replayed group messages at A`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const { a, r } = await members(t);
    const distributionId = crypto.randomUUID();
    const created = await must(r.player, 'group_create', { distribution_id: distributionId });
    await must(a.player, 'group_process', { sender: r.name, device_id: r.deviceId, skdm: created.skdm });
    const msgs = [];
    for (let i = 0; i < 80; i++) msgs.push(await sendGroup(r, distributionId, `group ${i} ${rng.text(10)}`));
    const delivered = rng.shuffle(msgs.slice(0, 70)).filter((_, i) => i % 7 !== 3); // some dropped
    for (const m of delivered) await receiveGroup(a, m);
    await restart(a);
    await receiveGroup(a, msgs[79]);
    for (const m of rng.shuffle(msgs.slice(70, 79))) await receiveGroup(a, m);
    await receiveGroupRefused(a, msgs[79], msgs[79].body, 'replayed newest message');
    await receiveGroupRefused(a, delivered[0], delivered[0].body, 'replayed early message');
    await receiveGroupRefused(a, msgs[75], msgs[75].body, 'replayed skipped-then-delivered message');
    await restart(a);
    await receiveGroupRefused(a, msgs[79], msgs[79].body, 'replay after a restart');
    await receiveGroup(a, await sendGroup(r, distributionId, 'still working'));
  });

  test(`${title}: A refuses tampered group messages and then decrypts the original`, TIMEOUT, async (t) => {
    const { a, r } = await members(t);
    const distributionId = crypto.randomUUID();
    const created = await must(r.player, 'group_create', { distribution_id: distributionId });
    await must(a.player, 'group_process', { sender: r.name, device_id: r.deviceId, skdm: created.skdm });
    await receiveGroup(a, await sendGroup(r, distributionId, 'before'));
    const m = await sendGroup(r, distributionId, 'tamper me');
    for (const [what, body] of tamperedVariants(m)) await receiveGroupRefused(a, m, body, `tampered group message: ${what}`);
    await receiveGroup(a, m);
    // A message from an unknown sender / distribution is refused too.
    await refused(a.player, 'group_decrypt', { sender: 'nobody', device_id: 1, body: m.body }, 'unknown sender');
    await receiveGroup(a, await sendGroup(r, distributionId, 'after'));
  });

  test(`${title}: A joins late (SKDM at iteration > 0) and keeps senders and distributions apart`, TIMEOUT, async (t) => {
    const rng = rngFor(t);
    const [pa, pr1, pr2] = await spawnAll(t, makeA, makeRef, makeRef);
    const a = await makeParty(pa, 'alice');
    const r1 = await makeParty(pr1, 'rita', { deviceId: 1 });
    const r2 = await makeParty(pr2, 'rita', { deviceId: 2 });
    const g1 = crypto.randomUUID();
    const g2 = crypto.randomUUID();
    await must(r1.player, 'group_create', { distribution_id: g1 });
    for (let i = 0; i < 10; i++) await sendGroup(r1, g1, `before alice joined ${i}`);
    const late = await must(r1.player, 'group_create', { distribution_id: g1 });
    assert.equal(late.iteration, 10, 'reference SKDM carries the current iteration');
    const p = await must(a.player, 'group_process', { sender: r1.name, device_id: r1.deviceId, skdm: late.skdm });
    assert.equal(p.iteration, 10);
    const c2 = await must(r1.player, 'group_create', { distribution_id: g2 });
    await must(a.player, 'group_process', { sender: r1.name, device_id: r1.deviceId, skdm: c2.skdm });
    const c3 = await must(r2.player, 'group_create', { distribution_id: g1 });
    await must(a.player, 'group_process', { sender: r2.name, device_id: r2.deviceId, skdm: c3.skdm });
    const sources = [[r1, g1], [r1, g2], [r2, g1]];
    for (let i = 0; i < 45; i++) {
      const [sender, dist] = rng.pick(sources);
      await receiveGroup(a, await sendGroup(sender, dist, `${i} from ${sender.name}.${sender.deviceId} in ${dist}`));
    }
    // Rita.1's message presented as Rita.2's must be refused (wrong chain/signing key).
    const m = await sendGroup(r1, g1, 'from device 1');
    await refused(a.player, 'group_decrypt', { sender: r2.name, device_id: r2.deviceId, body: m.body }, 'wrong sender device');
    await receiveGroup(a, m);
  });
}
