// Valid traffic written by hand: echo framing (one unfragmented, unmasked,
// minimally encoded frame per message, same opcode), masking, non-minimal
// client length encodings, control frames, fragmentation (with pings in
// between), the close handshake, and bytes split anywhere.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { useServer, TEST_TIMEOUT_MS } from '../lib/server.js';
import {
  OP, RawConn, encodeFrame, text, binary, cont, ping, pong, close, closePayload, openRaw, readServerFrame,
  expectEcho, expectClose, handshakeRequest, assertSwitching, randomKey, describeFrame,
} from '../lib/raw.js';
import { makeRng } from '../lib/rng.js';

const srv = useServer();

async function withRaw(fn, opts) {
  const c = await openRaw(srv.port, opts);
  try {
    return await fn(c);
  } finally {
    c.destroy();
  }
}

// Reads `expected.length` frames and compares each to [opcode, payload].
async function expectFrames(c, expected, timeoutMs) {
  const deadline = Date.now() + (timeoutMs ?? 10000);
  for (const [i, [opcode, payload]] of expected.entries()) {
    const f = await readServerFrame(c, Math.max(1, deadline - Date.now()));
    const want = typeof payload === 'string' ? Buffer.from(payload) : payload;
    assert.equal(f.opcode, opcode, `frame ${i}: ${describeFrame(f)}`);
    assert.ok(f.payload.equals(want), `frame ${i} payload: ${describeFrame(f)}, want ${want.length} bytes`);
  }
}

describe('echo framing', () => {
  test('binary and text echoes at length boundaries', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      for (const size of [0, 1, 125, 126, 127, 65535, 65536, 200000]) {
        const body = crypto.randomBytes(size);
        await c.write(binary(body));
        await expectEcho(c, OP.BINARY, body);
        const s = 'ä'.repeat(size >> 1) + (size & 1 ? 'z' : '');
        await c.write(text(s));
        await expectEcho(c, OP.TEXT, s);
      }
    });
  });

  test('mask keys: all-zero, all-ones and random give the same echo', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      const body = crypto.randomBytes(300);
      for (const maskKey of [Buffer.alloc(4), Buffer.alloc(4, 0xFF), Buffer.from([1, 2, 3, 4]), crypto.randomBytes(4)]) {
        await c.write(binary(body, { maskKey }));
        await expectEcho(c, OP.BINARY, body);
      }
    });
  });

  test('non-minimal length encodings from the client are accepted', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      await c.write(binary('abcde', { lengthBytes: 2 }));
      await expectEcho(c, OP.BINARY, 'abcde');
      await c.write(text('hello', { lengthBytes: 8 }));
      await expectEcho(c, OP.TEXT, 'hello');
      const body = crypto.randomBytes(200);
      await c.write(binary(body, { lengthBytes: 8 }));
      await expectEcho(c, OP.BINARY, body);
      await c.write(binary(Buffer.alloc(0), { lengthBytes: 8 }));
      await expectEcho(c, OP.BINARY, Buffer.alloc(0));
      // A data message of several fragments, each non-minimally encoded.
      await c.write(Buffer.concat([text('ab', { fin: false, lengthBytes: 8 }), cont('cd', { lengthBytes: 2 })]));
      await expectEcho(c, OP.TEXT, 'abcd');
      // (A control frame with an extended length field is not tested: the
      // contract does not say whether that is allowed; ws refuses it.)
    });
  });
});

describe('control frames', () => {
  test('ping -> pong with the same payload (0, 1, 125 bytes, all byte values)', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      const all = Buffer.alloc(125);
      for (let i = 0; i < 125; i++) all[i] = (i * 2 + 1) & 0xFF;
      for (const payload of [Buffer.alloc(0), Buffer.from('x'), crypto.randomBytes(125), all, Buffer.from([0xFF, 0xFE, 0x00])]) {
        await c.write(ping(payload));
        await expectFrames(c, [[OP.PONG, payload]]);
      }
    });
  });

  test('several pings are answered in order', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      await c.write(Buffer.concat([ping('1'), ping('2'), ping('3')]));
      await expectFrames(c, [[OP.PONG, '1'], [OP.PONG, '2'], [OP.PONG, '3']]);
    });
  });

  test('pong from the client is ignored', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      await c.write(Buffer.concat([pong('unsolicited'), pong(), text('after')]));
      await expectFrames(c, [[OP.TEXT, 'after']]);
      assert.equal(await c.quietFor(200), true, 'nothing else arrives');
    });
  });
});

describe('fragmentation', () => {
  test('text and binary messages in fragments are echoed as one frame', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      await c.write(Buffer.concat([text('Hel', { fin: false }), cont('lo')]));
      await expectEcho(c, OP.TEXT, 'Hello');
      const body = crypto.randomBytes(5000);
      const frames = [];
      for (let i = 0; i < 50; i++) {
        const part = body.subarray(i * 100, (i + 1) * 100);
        frames.push(i === 0 ? binary(part, { fin: false }) : cont(part, { fin: i === 49 }));
      }
      await c.write(Buffer.concat(frames));
      await expectEcho(c, OP.BINARY, body);
    });
  });

  test('empty first, middle and last fragments', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      await c.write(Buffer.concat([binary('', { fin: false }), cont('ab', { fin: false }), cont('', { fin: false }), cont('c', { fin: false }), cont('')]));
      await expectEcho(c, OP.BINARY, 'abc');
      await c.write(Buffer.concat([text('', { fin: false }), cont('')]));
      await expectEcho(c, OP.TEXT, '');
    });
  });

  test('UTF-8 is checked on the whole message: characters split across fragments are fine', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      const whole = Buffer.from('x😀€ä', 'utf8'); // 1 + 4 + 3 + 2 bytes
      // one byte per fragment
      const frames = [...whole].map((b, i) => (i === 0 ? text(Buffer.from([b]), { fin: false }) : cont(Buffer.from([b]), { fin: i === whole.length - 1 })));
      await c.write(Buffer.concat(frames));
      await expectEcho(c, OP.TEXT, whole);
    });
  });

  test('a ping between two fragments is answered before the message', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      await c.write(Buffer.concat([text('Hel', { fin: false }), ping('between'), cont('lo')]));
      await expectFrames(c, [[OP.PONG, 'between'], [OP.TEXT, 'Hello']]);
      // with pongs and several pings between many fragments, in separate writes
      const body = crypto.randomBytes(30);
      await c.write(binary(body.subarray(0, 10), { fin: false }));
      await c.write(ping('a'));
      await expectFrames(c, [[OP.PONG, 'a']]); // answered while the message is still open
      await c.write(pong('ignored'));
      await c.write(cont(body.subarray(10, 20), { fin: false }));
      await c.write(Buffer.concat([ping('b'), ping('')]));
      await c.write(cont(body.subarray(20)));
      await expectFrames(c, [[OP.PONG, 'b'], [OP.PONG, ''], [OP.BINARY, body]]);
    });
  });
});

describe('close handshake', () => {
  test('close 1000 with a reason: the server answers close 1000, then closes TCP', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      await c.write(close(1000, 'normal closure'));
      await expectClose(c, 1000);
    });
  });

  test('empty close: the server answers an empty close, then closes TCP', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      await c.write(close());
      const f = await readServerFrame(c);
      assert.equal(f.opcode, OP.CLOSE);
      assert.equal(f.length, 0, `empty close answered with an empty close: ${describeFrame(f)}`);
      assert.equal((await c.waitEnd()).length, 0);
    });
  });

  for (const code of [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]) {
    test(`valid close code ${code} is echoed`, { timeout: TEST_TIMEOUT_MS }, async () => {
      await withRaw(async (c) => {
        await c.write(close(code, `code ${code}`));
        await expectClose(c, code);
      });
    });
  }

  test('close with a 123-byte UTF-8 reason (the maximum) is echoed', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      const reason = `${'é'.repeat(61)}x`; // 123 bytes
      assert.equal(closePayload(1000, reason).length, 125);
      await c.write(close(1000, reason));
      await expectClose(c, 1000);
    });
  });

  test('close in the middle of a fragmented message is answered', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      await c.write(Buffer.concat([text('part', { fin: false }), close(1000)]));
      await expectClose(c, 1000);
    });
  });
});

describe('bytes split anywhere', () => {
  test('handshake and frames written one byte per write', { timeout: 60000 }, async () => {
    const key = randomKey();
    const c = await RawConn.connect(srv.port);
    try {
      await c.writeSplit(handshakeRequest({ key }), { delayMs: 1 });
      assertSwitching(await c.readHttpHead(), key);
      const body = crypto.randomBytes(300); // 16-bit length
      const stream = Buffer.concat([
        text('héllo'),
        binary(body),
        text('frag', { fin: false }), ping('pp'), cont('mented'),
        binary(crypto.randomBytes(0)),
        close(1000, 'done'),
      ]);
      await c.writeSplit(stream, { delayMs: 1 });
      await expectFrames(c, [[OP.TEXT, 'héllo'], [OP.BINARY, body], [OP.PONG, 'pp'], [OP.TEXT, 'fragmented'], [OP.BINARY, Buffer.alloc(0)]]);
      await expectClose(c, 1000);
    } finally {
      c.destroy();
    }
  });

  test('header split from payload, mask key split, 64-bit length split', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      const body = crypto.randomBytes(70000);
      const f = binary(body); // 2 + 8 + 4 header bytes
      const pause = () => new Promise((r) => setTimeout(r, 20));
      await c.write(f.subarray(0, 2)); await pause();
      await c.write(f.subarray(2, 6)); await pause();   // half of the 64-bit length
      await c.write(f.subarray(6, 12)); await pause();  // rest of the length + half the mask key
      await c.write(f.subarray(12, 14)); await pause(); // rest of the mask key
      await c.write(f.subarray(14, 30000)); await pause();
      await c.write(f.subarray(30000));
      await expectEcho(c, OP.BINARY, body);
      const g = text('split after the header');
      await c.write(g.subarray(0, 6)); await pause();
      await c.write(g.subarray(6));
      await expectEcho(c, OP.TEXT, 'split after the header');
    });
  });

  test('300 frames in one write (messages, fragments, pings, pongs)', { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRaw(async (c) => {
      const out = [];
      const want = [];
      for (let i = 0; i < 100; i++) {
        const body = crypto.randomBytes(i * 7);
        if (i % 4 === 0) {
          out.push(binary(body.subarray(0, 3), { fin: false }), ping(`p${i}`), cont(body.subarray(3)));
          want.push([OP.PONG, `p${i}`], [OP.BINARY, body]);
        } else if (i % 4 === 1) {
          out.push(text(`t${i}`), pong('x'), ping(''));
          want.push([OP.TEXT, `t${i}`], [OP.PONG, '']);
        } else {
          out.push(binary(body), text(`n${i}`, { fin: false }), cont('!'));
          want.push([OP.BINARY, body], [OP.TEXT, `n${i}!`]);
        }
      }
      assert.equal(out.length, 300);
      await c.write(Buffer.concat(out));
      await expectFrames(c, want, 20000);
      assert.equal(await c.quietFor(100), true, 'no extra frames');
    });
  });

  test('random split points over a stream of frames (seeded, 20 rounds)', { timeout: 60000 }, async (t) => {
    const rng = makeRng();
    t.diagnostic(`seed ${rng.seed}`);
    await withRaw(async (c) => {
      for (let round = 0; round < 20; round++) {
        const out = [];
        const want = [];
        for (let i = 0; i < 10; i++) {
          const body = rng.bytes(rng.int(0, round % 5 === 0 ? 70000 : 400));
          const nfrag = rng.int(1, 4);
          const cut = [0];
          for (let k = 1; k < nfrag; k++) cut.push(rng.int(0, body.length));
          cut.sort((a, b) => a - b);
          cut.push(body.length);
          for (let k = 0; k < nfrag; k++) {
            const part = body.subarray(cut[k], cut[k + 1]);
            const fin = k === nfrag - 1;
            out.push(k === 0 ? binary(part, { fin }) : cont(part, { fin }));
            if (!fin && rng.int(0, 2) === 0) {
              const pp = rng.bytes(rng.int(0, 125));
              out.push(ping(pp));
              want.push([OP.PONG, pp]);
            }
          }
          want.push([OP.BINARY, body]);
        }
        const stream = Buffer.concat(out);
        let off = 0;
        let writes = 0;
        while (off < stream.length && writes < 2000) {
          const n = Math.min(stream.length - off, rng.int(1, rng.int(0, 1) ? 16 : 9000));
          await c.write(stream.subarray(off, off + n));
          off += n;
          writes++;
        }
        if (off < stream.length) await c.write(stream.subarray(off));
        await expectFrames(c, want, 20000);
      }
    });
  });
});

test('the server exits 0 on SIGTERM with no sanitizer report', { timeout: TEST_TIMEOUT_MS }, async () => {
  await srv.server.stop();
});
