#!/usr/bin/env node
// Reference benchmark: what the npm references cost per message and per
// session setup, as a baseline for parley-signal. Prints one JSON object.
//
//   node bench.js              (about 15-25 s)
//   BENCH_SECONDS=0.5 node bench.js   (shorter; time per measurement)
//
// Measured through the wrappers in lib/ (in-memory stores that keep records
// serialized, as a real client's store would), on one Node thread:
//   encrypt_decrypt_us          one direction, same sending chain (the main
//                               figure): A encrypts, B decrypts, repeat.
//   encrypt_decrypt_alternating_us  the direction flips every 10 messages, so
//                               both sides take a DH ratchet step each time.
//   x3dh_setup_us               process_bundle + first encrypt (initiator)
//                               + decrypt of that PreKey message (responder),
//                               including the signed-prekey signature check
//                               (libsignal@6: the wrapper's curve25519-js check;
//                               x3dh_setup_without_signature_check_us is the
//                               library alone, which checks nothing).

import { Buffer } from 'node:buffer';
import crypto from 'node:crypto';
import os from 'node:os';
import { Ref6 } from './lib/ref6.js';
import { Ref72 } from './lib/ref72.js';

const SECONDS = Number(process.env.BENCH_SECONDS) || 1.0;
const SIZES = [100, 10 * 1024];
const MAX_ITERATIONS = 20000;
const ALTERNATING_PAIRS = 1000; // 100 direction changes = 100 DH ratchet steps per side

function must(answer) {
  if (!answer.ok) throw new Error(`${answer.cmd}: ${answer.error}`);
  return answer;
}

// Two parties with an established session (the initiator has seen a reply,
// so both send whisper messages).
async function makePair(Impl) {
  const a = new Impl();
  const b = new Impl();
  must(await a.cmd('generate', { name: 'alice' }));
  const g = must(await b.cmd('generate', { name: 'bob' }));
  const first = must(await a.cmd('process_bundle', { peer: 'bob', bundle: g.bundle, plaintext: 'hi' }));
  must(await b.cmd('decrypt', { peer: 'alice', type: first.type, body: first.body }));
  const reply = must(await b.cmd('encrypt', { peer: 'alice', plaintext: 'hi' }));
  must(await a.cmd('decrypt', { peer: 'bob', type: reply.type, body: reply.body }));
  return { a, b };
}

// Address objects for the raw encryptBytes/decryptBytes of each wrapper.
function addresses(pair) {
  return { toB: pair.a.peerAddress({ peer: 'bob' }), toA: pair.b.peerAddress({ peer: 'alice' }) };
}

// Runs `step` (async, one unit of work) for about SECONDS, or exactly `count`
// times if given; returns µs per unit.
async function timeIt(step, { warmup = 20, count = 0 } = {}) {
  for (let i = 0; i < warmup; i++) await step(i);
  let n = 0;
  const start = process.hrtime.bigint();
  const limit = count ? Infinity : start + BigInt(Math.round(SECONDS * 1e9));
  const most = count || MAX_ITERATIONS;
  let now = start;
  while (now < limit && n < most) {
    await step(warmup + n);
    n++;
    if (n % 8 === 0) now = process.hrtime.bigint();
  }
  now = process.hrtime.bigint();
  return { us: Number(now - start) / 1000 / n, iterations: n };
}

// alternateEvery = 0: one direction only, timed for SECONDS. Otherwise a fixed
// ALTERNATING_PAIRS pairs, because libsignal@6 keeps every old chain in its
// session record (no limit), so its cost per pair grows as a session ages.
async function encryptDecrypt(Impl, size, alternateEvery) {
  const pair = await makePair(Impl);
  const { toB, toA } = addresses(pair);
  const plaintext = crypto.randomBytes(size);
  return timeIt(async (i) => {
    const forward = alternateEvery === 0 || Math.floor(i / alternateEvery) % 2 === 0;
    const [sender, receiver, to, from] = forward ? [pair.a, pair.b, toB, toA] : [pair.b, pair.a, toA, toB];
    const m = await sender.encryptBytes(to, plaintext);
    const out = await receiver.decryptBytes(from, m.type, m.body);
    if (out.length !== size) throw new Error('bad round trip');
  }, { count: alternateEvery ? ALTERNATING_PAIRS : 0, warmup: alternateEvery ? 0 : 20 });
}

// checkSignature=false only matters for libsignal@6: its wrapper then skips
// the curve25519-js signed-prekey check (pure JS, about 20 ms), measuring the
// library alone. 0.72.1 always checks, natively.
async function x3dhSetup(Impl, { checkSignature = true } = {}) {
  const responder = new Impl();
  const initiator = new Impl({ checkSignedPreKey: checkSignature });
  const count = Math.min(MAX_ITERATIONS, 4000);
  must(await responder.cmd('generate', { name: 'bob', prekey_count: count }));
  must(await initiator.cmd('generate', { name: 'alice' }));
  const plaintext = Buffer.alloc(100, 0x61).toString('utf8');
  // Each setup uses a fresh peer name on both sides and the next one-time prekey.
  let used = 0;
  const result = await timeIt(async (i) => {
    if (++used > count) throw new Error('out of one-time prekeys');
    const { bundle } = must(await responder.cmd('bundle', { prekey: true }));
    const first = must(await initiator.cmd('process_bundle', { peer: `bob${i}`, bundle, plaintext }));
    const from = responder.peerAddress({ peer: `alice${i}` });
    await responder.decryptBytes(from, 'prekey', Buffer.from(first.body, 'base64'));
  }, { warmup: 5 });
  return result;
}

async function benchOne(Impl) {
  const out = { encrypt_decrypt_us: {}, encrypt_decrypt_alternating_us: {}, iterations: {} };
  for (const size of SIZES) {
    const one = await encryptDecrypt(Impl, size, 0);
    const alt = await encryptDecrypt(Impl, size, 10);
    out.encrypt_decrypt_us[size] = Math.round(one.us * 10) / 10;
    out.encrypt_decrypt_alternating_us[size] = Math.round(alt.us * 10) / 10;
    out.iterations[`encrypt_decrypt_${size}`] = one.iterations;
    out.iterations[`alternating_${size}`] = alt.iterations;
  }
  const setup = await x3dhSetup(Impl);
  out.x3dh_setup_us = Math.round(setup.us * 10) / 10;
  out.iterations.x3dh_setup = setup.iterations;
  if (Impl === Ref6) {
    const bare = await x3dhSetup(Impl, { checkSignature: false });
    out.x3dh_setup_without_signature_check_us = Math.round(bare.us * 10) / 10;
    out.iterations.x3dh_setup_without_signature_check = bare.iterations;
  }
  return out;
}

const started = Date.now();
const result = {
  node: process.version,
  cpu: os.cpus()[0]?.model ?? 'unknown',
  seconds_per_measurement: SECONDS,
  units: 'microseconds per encrypt+decrypt pair / per session setup',
  'libsignal@6.0.0': await benchOne(Ref6),
  '@signalapp/libsignal-client@0.72.1': await benchOne(Ref72),
};
result.total_seconds = Math.round((Date.now() - started) / 100) / 10;
console.log(JSON.stringify(result, null, 2));
