// Test scenarios written once and run for any pair of players (parley-signal
// or a reference wrapper). Each scenario asserts on concrete bytes and
// plaintexts with node:assert, so it fails loudly on any divergence.
//
// A "party" is a player with an identity:
//   { player, name, deviceId, registrationId, bundle, versionByte }
// where versionByte (optional) is the first byte every 1:1 body it writes
// must carry (0x33 for parley-signal and libsignal@6, 0x34 for 0.72.1).

import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { b64, textOrNull } from './common.js';
import { parseSignalMessage, parsePreKeyMessage, flipBit } from './wire.js';

// ---------------------------------------------------------------- basics

// Runs a command that must succeed; returns the answer.
export async function must(player, name, args = {}) {
  const answer = await player.cmd(name, args);
  assert.equal(answer.ok, true,
    `${player.label}: ${name} failed: ${answer.error}\nrequest: ${brief(args)}`);
  return answer;
}

// Runs a command that must be refused (ok:false); returns the answer.
export async function refused(player, name, args, why) {
  const answer = await player.cmd(name, args);
  assert.equal(answer.ok, false,
    `${player.label}: ${name} should be refused (${why}) but answered ${brief(answer)}`);
  assert.equal(typeof answer.error, 'string');
  return answer;
}

function brief(obj) {
  const text = JSON.stringify(obj);
  return text.length > 400 ? `${text.slice(0, 400)}...` : text;
}

// Starts players from factories and closes them all when the test ends; a
// failed close (sanitizer report, bad exit) fails the test.
export async function spawnAll(t, ...factories) {
  const players = [];
  t.after(async () => {
    const results = await Promise.allSettled(players.map((p) => p.close()));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  });
  for (const make of factories) players.push(await make());
  return players;
}

// Restarts a party's state if its player can (parley-signal's `reload`:
// every record through serialize -> deserialize). Replay protection, skipped
// message keys, unused one-time prekeys and sender keys must all survive it.
export async function restart(...parties) {
  for (const party of parties) {
    if (party.player.reloadable) await must(party.player, 'reload');
  }
}

export function addressOf(party) {
  return { peer: party.name, device_id: party.deviceId };
}

// Request fields for a plaintext: a string goes as `plaintext`, a Buffer as
// `plaintext_b64`.
export function plaintextArgs(plaintext) {
  return typeof plaintext === 'string' ? { plaintext } : { plaintext_b64: b64(plaintext) };
}

export function plaintextBytes(plaintext) {
  return typeof plaintext === 'string' ? Buffer.from(plaintext, 'utf8') : Buffer.from(plaintext);
}

// Checks a decrypt/group_decrypt answer against the expected bytes.
export function assertPlaintext(answer, expected, context) {
  const bytes = plaintextBytes(expected);
  assert.equal(answer.plaintext_b64, b64(bytes), `${context}: wrong plaintext bytes`);
  assert.equal(answer.plaintext, textOrNull(bytes), `${context}: wrong plaintext (text form; null unless UTF-8)`);
}

function isAscending(order) {
  return order.every((f, i) => i === 0 || order[i - 1] < f);
}

// ---------------------------------------------------------------- identities

// Generates an identity on `player` and checks the bundle it returns.
export async function makeParty(player, name, {
  deviceId = 1, prekeyId = 1, prekeyCount = 3, signedPreKeyId = 1, registrationId, versionByte,
} = {}) {
  const args = { name, device_id: deviceId, prekey_id: prekeyId, prekey_count: prekeyCount, signed_prekey_id: signedPreKeyId };
  if (registrationId !== undefined) args.registration_id = registrationId;
  const g = await must(player, 'generate', args);
  const b = g.bundle;
  assert.ok(b && typeof b === 'object', `${player.label}: generate gave no bundle`);
  assert.equal(b.device_id, deviceId, 'bundle.device_id');
  assert.equal(b.registration_id, g.registration_id, 'bundle.registration_id');
  if (registrationId !== undefined) assert.equal(g.registration_id, registrationId, 'registration_id');
  assert.ok(Number.isInteger(g.registration_id) && g.registration_id >= 0 && g.registration_id <= 0x3fff,
    `registration_id ${g.registration_id} is not 14-bit`);
  assert.equal(b.signed_prekey_id, signedPreKeyId, 'bundle.signed_prekey_id');
  assert.equal(b.prekey_id, prekeyId, 'bundle.prekey_id');
  for (const k of ['identity_key', 'signed_prekey', 'prekey']) {
    const key = Buffer.from(b[k], 'base64');
    assert.equal(key.length, 33, `bundle.${k} length`);
    assert.equal(key[0], 0x05, `bundle.${k} type byte`);
  }
  assert.equal(Buffer.from(b.signed_prekey_signature, 'base64').length, 64, 'signature length');
  return { player, name, deviceId, registrationId: g.registration_id, bundle: b, versionByte };
}

// ---------------------------------------------------------------- 1:1 messages

// Encrypts `plaintext` from one party to another; checks the answer and the
// wire bytes; returns a message record for receive().
export async function send(from, to, plaintext, { expectType } = {}) {
  const a = await must(from.player, 'encrypt', { ...addressOf(to), ...plaintextArgs(plaintext) });
  return checkedMessage(from, to, plaintext, a, expectType);
}

function checkedMessage(from, to, plaintext, a, expectType) {
  assert.ok(a.type === 'prekey' || a.type === 'whisper', `${from.player.label}: type ${a.type}`);
  assert.equal(a.type_code, a.type === 'prekey' ? 3 : 2, `${from.player.label}: type_code for ${a.type}`);
  if (expectType) assert.equal(a.type, expectType, `${from.player.label}: message type`);
  const body = Buffer.from(a.body, 'base64');
  const msg = { from, to, type: a.type, body: a.body, bytes: body, plaintext };
  checkWire(msg);
  return msg;
}

// Byte-level checks on every 1:1 body: version bytes and ascending field
// order (SIGNAL-NOTES 2.6, 2.7).
export function checkWire(msg) {
  const who = msg.from.player.label;
  if (msg.type === 'whisper') {
    const m = parseSignalMessage(msg.bytes);
    if (msg.from.versionByte !== undefined) assert.equal(m.version, msg.from.versionByte, `${who}: SignalMessage version byte`);
    assert.equal(m.version >> 4, 3, `${who}: SignalMessage message version`);
    assert.ok(isAscending(m.fieldOrder), `${who}: SignalMessage fields not ascending: ${m.fieldOrder}`);
    assert.equal(m.ratchetKey?.length, 33, `${who}: ratchet key length`);
    assert.equal(m.ratchetKey[0], 0x05, `${who}: ratchet key type`);
    assert.equal(m.ciphertext.length % 16, 0, `${who}: ciphertext is not whole AES blocks`);
    assert.ok(m.ciphertext.length >= plaintextBytes(msg.plaintext).length + 1, `${who}: ciphertext shorter than padded plaintext`);
  } else {
    const p = parsePreKeyMessage(msg.bytes);
    if (msg.from.versionByte !== undefined) assert.equal(p.version, msg.from.versionByte, `${who}: PreKeySignalMessage version byte`);
    assert.ok(isAscending(p.fieldOrder), `${who}: PreKeySignalMessage fields not ascending: ${p.fieldOrder}`);
    assert.equal(b64(p.identityKey), msg.from.bundle.identity_key, `${who}: PreKey identity_key is not the sender's`);
    assert.equal(p.registrationId, msg.from.registrationId, `${who}: PreKey registration_id`);
    assert.equal(p.baseKey?.length, 33, `${who}: base key length`);
    checkWire({ ...msg, type: 'whisper', bytes: p.message });
  }
}

// Decrypts a message at its recipient and checks the plaintext. `typeAs`
// chooses how the type is sent: 'name' (prekey/whisper), 'code' (3/2) or
// 'legacy' (libsignal@6's 1 for whisper).
export async function receive(msg, { typeAs = 'name', body = msg.body } = {}) {
  let type = msg.type;
  if (typeAs === 'code') type = msg.type === 'prekey' ? 3 : 2;
  if (typeAs === 'legacy') type = msg.type === 'prekey' ? 3 : 1;
  const a = await must(msg.to.player, 'decrypt', { ...addressOf(msg.from), type, body });
  assertPlaintext(a, msg.plaintext, `${msg.to.player.label} decrypting from ${msg.from.player.label}`);
  return a;
}

// Decrypting `body` (default: the message's own) must be refused.
export async function receiveRefused(msg, why, body = msg.body) {
  return refused(msg.to.player, 'decrypt', { ...addressOf(msg.from), type: msg.type, body: Buffer.isBuffer(body) ? b64(body) : body }, why);
}

// ---------------------------------------------------------------- sessions

// The initiator fetches the responder's bundle, processes it with a first
// plaintext (or, with plaintextWithBundle false, processes it alone and then
// encrypts), sends a second PreKey message, the responder decrypts both and
// (if reply) answers; then the initiator must switch to whisper messages.
export async function establish(initiator, responder, { oneTime = true, reply = true, plaintextWithBundle = true, rng } = {}) {
  const first = rng ? rng.text(rng.between(1, 60)) : `hello from ${initiator.name}`;
  const { bundle } = await must(responder.player, 'bundle', { prekey: oneTime });
  if (oneTime) {
    assert.ok(Number.isInteger(bundle.prekey_id) && bundle.prekey_id >= 1, 'bundle offers a one-time prekey');
    assert.equal(Buffer.from(bundle.prekey, 'base64').length, 33, 'bundle.prekey length');
  } else {
    assert.equal(bundle.prekey_id, null, 'bundle without prekey: prekey_id');
    assert.equal(bundle.prekey, null, 'bundle without prekey: prekey');
  }
  assert.equal(bundle.identity_key, responder.bundle.identity_key, 'bundle identity key is stable');

  let m1;
  if (plaintextWithBundle) {
    const pb = await must(initiator.player, 'process_bundle', { ...addressOf(responder), bundle, plaintext: first });
    assert.equal(pb.one_time_prekey_used, oneTime, 'one_time_prekey_used');
    m1 = checkedMessage(initiator, responder, first, pb, 'prekey');
  } else {
    const pb = await must(initiator.player, 'process_bundle', { ...addressOf(responder), bundle });
    assert.equal(pb.one_time_prekey_used, oneTime, 'one_time_prekey_used');
    assert.equal(pb.body, undefined, 'process_bundle without plaintext encrypts nothing');
    m1 = await send(initiator, responder, first, { expectType: 'prekey' });
  }
  const p1 = parsePreKeyMessage(m1.bytes);
  assert.equal(p1.preKeyId, oneTime ? bundle.prekey_id : null, 'PreKey message pre_key_id');
  assert.equal(p1.signedPreKeyId, bundle.signed_prekey_id, 'PreKey message signed_pre_key_id');

  const m2 = await send(initiator, responder, 'second, before any reply', { expectType: 'prekey' });
  assert.equal(b64(parsePreKeyMessage(m2.bytes).baseKey), b64(p1.baseKey), 'same base key until a reply');

  await receive(m1);
  await receive(m2);
  const result = { bundle, prekeyMessages: [m1, m2] };
  if (!reply) return result;

  const r = await send(responder, initiator, `reply from ${responder.name}`, { expectType: 'whisper' });
  await receive(r);
  const m3 = await send(initiator, responder, 'after the reply', { expectType: 'whisper' });
  await receive(m3);
  return result;
}

// Alternating bursts of random length in both directions, each message
// delivered at once. Returns the number of direction changes (each one is a
// DH ratchet step on both sides).
export async function conversation(a, b, { messages = 300, maxBurst = 12, rng }) {
  const lengths = [0, 1, 15, 16, 17, 31, 32, 33, 255, 256, 1000];
  let sent = 0;
  let forward = rng.int(2) === 0;
  let steps = 0;
  const typeModes = ['name', 'code', 'legacy'];
  while (sent < messages) {
    const burst = rng.between(1, maxBurst);
    const [from, to] = forward ? [a, b] : [b, a];
    for (let i = 0; i < burst && sent < messages; i++, sent++) {
      let plaintext;
      if (sent < lengths.length) plaintext = rng.binary(lengths[sent]);
      else plaintext = rng.int(3) === 0 ? rng.binary(rng.between(0, 300)) : rng.text(rng.between(0, 120));
      const m = await send(from, to, plaintext, { expectType: 'whisper' });
      await receive(m, { typeAs: typeModes[sent % 3] });
      if (sent % 37 === 36) await restart(a, b);
    }
    forward = !forward;
    steps++;
  }
  return steps;
}

// A sends n messages in one chain; B decrypts them in a random order.
export async function outOfOrderInChain(a, b, { n = 25, rng }) {
  const msgs = [];
  for (let i = 0; i < n; i++) msgs.push(await send(a, b, `in-chain ${i} ${rng.text(8)}`));
  const counters = msgs.map((m) => parseSignalMessage(m.bytes).counter);
  for (let i = 1; i < n; i++) assert.equal(counters[i], counters[0] + i, 'counters increase by one');
  const order = rng.shuffle(msgs);
  for (const [i, m] of order.entries()) {
    await receive(m);
    if (i === Math.floor(n / 2)) await restart(b);
  }
  await exchange(a, b, 3);
}

// Several DH ratchet steps while most of A's messages are held back; the held
// messages are then delivered newest chain first, shuffled within each chain.
export async function outOfOrderAcrossRatchets(a, b, { rounds = 4, perRound = 5, rng }) {
  const held = [];
  const ratchetKeys = new Set();
  for (let r = 0; r < rounds; r++) {
    const chain = [];
    for (let i = 0; i < perRound; i++) chain.push(await send(a, b, `round ${r} msg ${i}`, { expectType: 'whisper' }));
    ratchetKeys.add(b64(parseSignalMessage(chain[0].bytes).ratchetKey));
    // B learns A's new chain from its first message, answers, and A ratchets.
    await receive(chain[0]);
    held.push(chain.slice(1));
    await receive(await send(b, a, `ack of round ${r}`));
  }
  assert.equal(ratchetKeys.size, rounds, 'each round uses a new ratchet key');
  await restart(a, b);
  for (const chain of held.reverse()) {
    for (const m of rng.shuffle(chain)) await receive(m);
  }
  await exchange(a, b, 4);
}

// Some messages are never delivered; the later ones still decrypt, within a
// chain and across ratchet steps, in both directions.
export async function droppedMessages(a, b, { rng }) {
  const chain1 = [];
  for (let i = 0; i < 12; i++) chain1.push(await send(a, b, `c1 ${i}`));
  for (const i of [0, 3, 4, 9, 11]) await receive(chain1[i]);   // 1,2,5..8,10 dropped
  await restart(a, b);

  const fromB = [];
  for (let i = 0; i < 6; i++) fromB.push(await send(b, a, `b ${i}`));
  await receive(fromB[5]);                                      // 0..4 dropped

  const chain2 = [];
  for (let i = 0; i < 8; i++) chain2.push(await send(a, b, `c2 ${i}`));
  await receive(chain2[7]);                                     // 0..6 dropped
  await receive(chain2[2]);                                     // a skipped one, late

  // A whole chain lost: B's next burst never arrives, then B sends again after
  // A's next message.
  for (let i = 0; i < 4; i++) await send(b, a, `lost ${i}`);
  const m = await send(a, b, 'after the lost burst');
  await receive(m);
  await exchange(a, b, 6, rng);
}

// A few messages each way, each delivered at once.
export async function exchange(a, b, rounds, rng) {
  for (let i = 0; i < rounds; i++) {
    await receive(await send(a, b, rng ? rng.text(20) : `a->b ${i}`));
    await receive(await send(b, a, rng ? rng.text(20) : `b->a ${i}`));
  }
}

// Replays at `b` (the receiver under test) are refused and do not harm the
// session. `prekeyMessages` are the initiator's first messages, if a is the
// initiator and b the responder.
export async function replays(a, b, { prekeyMessages = [] } = {}) {
  for (const m of prekeyMessages) await receiveRefused(m, 'replayed PreKey message');
  await exchange(a, b, 2);

  const m1 = await send(a, b, 'replay me 1');
  const m2 = await send(a, b, 'replay me 2');
  await receive(m2);
  await receive(m1);
  await receiveRefused(m1, 'replayed skipped-key message');
  await receiveRefused(m2, 'replayed in-order message');
  await receiveRefused(m2, 'replayed twice');
  await restart(b);
  await receiveRefused(m1, 'replay after a restart');
  for (const m of prekeyMessages) await receiveRefused(m, 'replayed PreKey message after a restart');

  // Replay of an old chain's message after ratchet steps.
  await exchange(a, b, 2);
  await receiveRefused(m1, 'replay from an old chain');
  await exchange(a, b, 3);
}

// Tampered copies of messages from `a` are refused by `b`, and the untampered
// body still decrypts afterwards. Covers a message on the current chain and
// the first message of a new chain (where a failed decrypt must not leave a
// half-done ratchet step behind). `strictVersionByte`: also flip the low
// nibble of the version byte (libsignal@6 cannot detect that: its MAC uses a
// constant 0x33).
export async function bitFlips(a, b, { strictVersionByte = true } = {}) {
  const tryAll = async (m, label) => {
    const s = parseSignalMessage(m.bytes);
    const o = s.offsets;
    const variants = [
      ['version high nibble', flipBit(m.bytes, 0, 4)],
      ['ratchet key type byte', flipBit(m.bytes, o.ratchetKey, 0)],
      ['ratchet key middle byte', flipBit(m.bytes, o.ratchetKey + 16, 3)],
      ['ratchet key top bit', flipBit(m.bytes, o.ratchetKey + 32, 7)],
      ['counter', flipBit(m.bytes, o.counter, 0)],
      ['ciphertext first byte', flipBit(m.bytes, o.ciphertext, 0)],
      ['ciphertext last byte', flipBit(m.bytes, o.ciphertextEnd - 1, 6)],
      ['MAC first byte', flipBit(m.bytes, o.mac, 7)],
      ['MAC last byte', flipBit(m.bytes, m.bytes.length - 1, 0)],
      ['truncated by one byte', m.bytes.subarray(0, m.bytes.length - 1)],
      ['one byte appended', Buffer.concat([m.bytes, Buffer.from([0])])],
    ];
    if (strictVersionByte) variants.push(['version low nibble', flipBit(m.bytes, 0, 0)]);
    for (const [what, body] of variants) await receiveRefused(m, `${label}: ${what}`, body);
    await restart(b);
    await receive(m);
  };

  await exchange(a, b, 1);
  await tryAll(await send(a, b, 'same chain, tamper me'), 'current chain');
  const next = await send(a, b, 'same chain, next');
  await receive(next);

  // B answers, so A's next message opens a new chain at B.
  await receive(await send(b, a, 'make A ratchet'));
  await tryAll(await send(a, b, 'new chain, tamper me'), 'new chain');
  await exchange(a, b, 3);
}

// The responder `b` refuses tampered copies of the initiator's first PreKey
// message, then accepts the original (its one-time prekey still there).
export async function prekeyTamper(a, b) {
  const { bundle } = await must(b.player, 'bundle', { prekey: true });
  const pb = await must(a.player, 'process_bundle', { ...addressOf(b), bundle, plaintext: 'first, tamper me' });
  const m = checkedMessage(a, b, 'first, tamper me', pb, 'prekey');
  const p = parsePreKeyMessage(m.bytes);
  const o = p.offsets;
  const inner = parseSignalMessage(p.message);
  const variants = [
    ['outer version high nibble', flipBit(m.bytes, 0, 4)],
    ['base key middle byte', flipBit(m.bytes, o.baseKey + 10, 0)],
    ['base key type byte', flipBit(m.bytes, o.baseKey, 1)],
    ['identity key middle byte', flipBit(m.bytes, o.identityKey + 20, 2)],
    ['signed prekey id', flipBit(m.bytes, o.signedPreKeyId, 1)],
    ['inner version high nibble', flipBit(m.bytes, o.message, 4)],
    ['inner ciphertext', flipBit(m.bytes, o.message + inner.offsets.ciphertext, 5)],
    ['inner MAC', flipBit(m.bytes, o.message + inner.offsets.mac + 3, 0)],
    ['truncated', m.bytes.subarray(0, m.bytes.length - 1)],
  ];
  for (const [what, body] of variants) await receiveRefused(m, `PreKey message: ${what}`, body);
  await restart(b); // the one-time prekey must still be there
  await receive(m);
  await receive(await send(b, a, 'reply after tampering'));
  await exchange(a, b, 2);
}

// Empty plaintext and a 10 KB binary plaintext, both directions.
export async function emptyAndLarge(a, b, { rng }) {
  for (const [x, y] of [[a, b], [b, a]]) {
    const empty = await send(x, y, '');
    assert.equal(parseSignalMessage(empty.type === 'whisper' ? empty.bytes : parsePreKeyMessage(empty.bytes).message)
      .ciphertext.length, 16, 'empty plaintext gives one AES block');
    const ans = await receive(empty);
    assert.equal(ans.plaintext, '');
    assert.equal(ans.plaintext_b64, '');
    const big = rng.binary(10 * 1024);
    const ansBig = await receive(await send(x, y, big));
    assert.equal(ansBig.plaintext, null, 'binary plaintext: plaintext must be null');
    const text = rng.text(3000);
    await receive(await send(x, y, text));
    // Valid UTF-8 with a NUL byte is still text, NUL and all.
    const ansNul = await receive(await send(x, y, Buffer.from('nul\u0000inside', 'utf8')));
    assert.equal(ansNul.plaintext, 'nul\u0000inside', 'plaintext with a NUL byte keeps its text form');
  }
}

// `a` must refuse a bundle of `b` whose signed prekey signature does not
// verify, keep no session from it, and accept the genuine bundle afterwards.
export async function badBundles(a, b, other) {
  const { bundle } = await must(b.player, 'bundle', { prekey: true });
  const sig = Buffer.from(bundle.signed_prekey_signature, 'base64');
  const spk = Buffer.from(bundle.signed_prekey, 'base64');
  const flipped = (buf, i, bit) => b64(flipBit(buf, i, bit));
  const bad = [
    ['signature first byte', { ...bundle, signed_prekey_signature: flipped(sig, 0, 0) }],
    ['signature middle byte', { ...bundle, signed_prekey_signature: flipped(sig, 40, 5) }],
    ['signature sign bit (sig[63] bit 7)', { ...bundle, signed_prekey_signature: flipped(sig, 63, 7) }],
    ['signed prekey changed', { ...bundle, signed_prekey: flipped(spk, 17, 2) }],
    ['all-zero signature', { ...bundle, signed_prekey_signature: b64(Buffer.alloc(64)) }],
  ];
  if (other) {
    // A valid signature, but by someone else's identity key.
    bad.push(['signature by another identity', {
      ...bundle,
      signed_prekey: other.bundle.signed_prekey,
      signed_prekey_signature: other.bundle.signed_prekey_signature,
    }]);
  }
  for (const [what, badBundle] of bad) {
    await refused(a.player, 'process_bundle', { ...addressOf(b), bundle: badBundle, plaintext: 'must not be sent' },
      `bundle with bad signed prekey signature: ${what}`);
  }
  await refused(a.player, 'encrypt', { ...addressOf(b), plaintext: 'no session yet' }, 'no session after refused bundles');
  const pb = await must(a.player, 'process_bundle', { ...addressOf(b), bundle, plaintext: 'genuine bundle' });
  await receive(checkedMessage(a, b, 'genuine bundle', pb, 'prekey'));
}
