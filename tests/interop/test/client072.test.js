// parley-signal against the official @signalapp/libsignal-client 0.72.1, the
// last official release with classic X3DH. It writes v3 bodies with version
// byte 0x34; parley writes 0x33 and must read both. Also XEdDSA (official
// PublicKey.verify) and safety numbers (official Fingerprint). Needs
// PARLEY_SIGNAL; fails without it.

import test from 'node:test';
import assert from 'node:assert/strict';
import { Parley } from '../lib/parley.js';
import { Ref6, xeddsaVerify } from '../lib/ref6.js';
import { Ref72, Signal72 } from '../lib/ref72.js';
import { officialVerify, safetyNumber } from '../lib/official.js';
import { parsePreKeyMessage } from '../lib/wire.js';
import { spawnAll, must, makeParty, establish, send, receive, exchange } from '../lib/scenarios.js';
import { defineOneToOneTests, defineXeddsaTests, defineSafetyNumberTests } from '../lib/suites.js';

const makeParley = () => Parley.spawn({ label: 'parley-signal' });

test('parley-signal starts and answers info', async (t) => {
  const [p] = await spawnAll(t, makeParley);
  const info = await must(p, 'info');
  assert.ok(info.versions !== undefined, 'info answers versions');
});

defineOneToOneTests({
  title: 'parley ↔ 0.72.1',
  makeA: makeParley,
  makeB: Ref72.spawn,
  aVersionByte: 0x33,
  bVersionByte: 0x34,
});

test('version bytes: 0.72.1 writes 0x34 and parley reads it; parley writes 0x33 and both 0.72.1 and libsignal@6 read it', async (t) => {
  const [pp, p72, p6] = await spawnAll(t, makeParley, Ref72.spawn, Ref6.spawn);
  const parley = await makeParty(pp, 'parley', { versionByte: 0x33 });
  const official = await makeParty(p72, 'official', { versionByte: 0x34 });
  const classic = await makeParty(p6, 'classic', { versionByte: 0x33 });

  // 0.72.1 starts: its PreKey message is 0x34 outside and inside.
  const { prekeyMessages } = await establish(official, parley);
  for (const m of prekeyMessages) {
    assert.equal(m.bytes[0], 0x34, '0.72.1 PreKeySignalMessage version byte');
    assert.equal(parsePreKeyMessage(m.bytes).message[0], 0x34, '0.72.1 inner SignalMessage version byte');
  }
  // parley starts with libsignal@6 in the same process.
  const { prekeyMessages: ours } = await establish(parley, classic);
  for (const m of ours) {
    assert.equal(m.bytes[0], 0x33, 'parley PreKeySignalMessage version byte');
    assert.equal(parsePreKeyMessage(m.bytes).message[0], 0x33, 'parley inner SignalMessage version byte');
  }
  // Interleave both peers; every body's first byte is checked by send().
  for (let i = 0; i < 20; i++) {
    const m1 = await send(official, parley, `0x34 #${i}`);
    assert.equal(m1.bytes[0], 0x34);
    await receive(m1);
    const m2 = await send(parley, official, `0x33 to 0.72.1 #${i}`);
    assert.equal(m2.bytes[0], 0x33);
    await receive(m2);
    const m3 = await send(parley, classic, `0x33 to libsignal@6 #${i}`);
    assert.equal(m3.bytes[0], 0x33);
    await receive(m3);
    await receive(await send(classic, parley, `from libsignal@6 #${i}`));
  }
  await exchange(parley, official, 2);
});

defineXeddsaTests({
  title: 'parley ↔ 0.72.1 XEdDSA',
  makeA: makeParley,
  makeSigner: Ref72.spawn,
  verifiers: [
    { name: '0.72.1 PublicKey.verify', verify: (p, m, s) => officialVerify(Signal72, p, m, s) },
    { name: 'curve25519-js', verify: xeddsaVerify },
  ],
  keys: 12,
});

defineSafetyNumberTests({
  title: 'parley vs 0.72.1 Fingerprint',
  makeA: makeParley,
  S: Signal72,
  reference: (args) => safetyNumber(Signal72, args),
});
