// parley-signal against the official @signalapp/libsignal-client 0.103.0:
// Sender Keys (SKDM + SenderKeyMessage v3, both directions), safety numbers
// (Fingerprint) and XEdDSA (PublicKey.verify). 0.103.0 has no classic X3DH,
// so there are no 1:1 tests here. Needs PARLEY_SIGNAL; fails without it.

import test from 'node:test';
import assert from 'node:assert/strict';
import { Parley } from '../lib/parley.js';
import { Ref103, Signal103 } from '../lib/ref103.js';
import { officialVerify, safetyNumber } from '../lib/official.js';
import { spawnAll, must } from '../lib/scenarios.js';
import { defineGroupTests, defineSafetyNumberTests, defineXeddsaTests } from '../lib/suites.js';

const makeParley = () => Parley.spawn({ label: 'parley-signal' });

test('parley-signal starts and answers info', async (t) => {
  const [p] = await spawnAll(t, makeParley);
  const info = await must(p, 'info');
  assert.ok(info.versions !== undefined, 'info answers versions');
});

defineGroupTests({
  title: 'parley ↔ 0.103.0 sender keys',
  makeA: makeParley,
  makeRef: Ref103.spawn,
});

defineSafetyNumberTests({
  title: 'parley vs 0.103.0 Fingerprint',
  makeA: makeParley,
  S: Signal103,
  reference: (args) => safetyNumber(Signal103, args),
});

defineXeddsaTests({
  title: 'parley ↔ 0.103.0 XEdDSA',
  makeA: makeParley,
  makeSigner: Ref103.spawn,
  verifiers: [{ name: '0.103.0 PublicKey.verify', verify: (p, m, s) => officialVerify(Signal103, p, m, s) }],
});
