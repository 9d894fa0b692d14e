// parley-signal against libsignal@6.0.0 (the default 1:1 reference; writes
// 0x33): sessions both ways, long conversations, out-of-order and dropped
// messages, replays, tampering, bad bundles, empty/large plaintexts, XEdDSA
// (verified with curve25519-js). Needs PARLEY_SIGNAL; fails without it.

import test from 'node:test';
import assert from 'node:assert/strict';
import { Parley } from '../lib/parley.js';
import { Ref6, xeddsaVerify } from '../lib/ref6.js';
import { spawnAll, must } from '../lib/scenarios.js';
import { defineOneToOneTests, defineXeddsaTests } from '../lib/suites.js';

const makeParley = () => Parley.spawn({ label: 'parley-signal' });

test('parley-signal starts and answers info', async (t) => {
  const [p] = await spawnAll(t, makeParley);
  const info = await must(p, 'info');
  assert.ok(info.versions !== undefined, 'info answers versions');
  const bad = await p.cmd('no_such_command', {});
  assert.equal(bad.ok, false, 'unknown command is refused');
  assert.equal((await p.cmd('info')).ok, true, 'still answering after an error');
});

test('parley-signal refuses a \\u0000 escape instead of cutting the string, and takes the bytes as base64', async (t) => {
  const [p] = await spawnAll(t, makeParley);
  await must(p, 'generate', { name: 'nul' });
  const refused = await p.cmd('xeddsa_sign', { message: 'a\u0000b' });
  assert.equal(refused.ok, false);
  assert.match(refused.error, /NUL/);
  const signed = await must(p, 'xeddsa_sign', { message_b64: Buffer.from('a\u0000b').toString('base64') });
  const check = await must(p, 'xeddsa_verify', { public_key: signed.public_key, signature: signed.signature, message: 'a' });
  assert.equal(check.valid, false, 'a signature over "a\\0b" is not one over "a"');
  const good = await must(p, 'xeddsa_verify', { public_key: signed.public_key, signature: signed.signature, message_b64: Buffer.from('a\u0000b').toString('base64') });
  assert.equal(good.valid, true);
});

defineOneToOneTests({
  title: 'parley ↔ libsignal@6',
  makeA: makeParley,
  makeB: Ref6.spawn,
  aVersionByte: 0x33,
  bVersionByte: 0x33,
});

defineXeddsaTests({
  title: 'parley ↔ libsignal@6 XEdDSA',
  makeA: makeParley,
  makeSigner: Ref6.spawn,
  verifiers: [{ name: 'curve25519-js', verify: xeddsaVerify }],
});
