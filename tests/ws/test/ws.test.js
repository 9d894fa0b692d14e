// ws-echo-server driven by the npm `ws` client (a real, independent
// RFC 6455 implementation): echo of binary and text messages of many sizes,
// ordering, ping/pong, close handshake, fragmented sends, concurrency.
// One server with the default limits (--max-message 1 MiB) for the file.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { useServer, TEST_TIMEOUT_MS } from '../lib/server.js';
import { WsClient } from '../lib/wsclient.js';
import { makeRng } from '../lib/rng.js';

const MiB = 1024 * 1024;
const srv = useServer();

async function withClient(fn, opts) {
  const c = await WsClient.connect(srv.port, opts);
  try {
    return await fn(c);
  } finally {
    c.terminate();
  }
}

function assertSameBytes(got, want, what) {
  assert.equal(got.length, want.length, `${what}: length`);
  if (!got.equals(want)) {
    let i = 0;
    while (i < got.length && got[i] === want[i]) i++;
    assert.fail(`${what}: bytes differ first at offset ${i}`);
  }
}

test('handshake with ws: permessage-deflate offered by ws is declined, no subprotocol', { timeout: TEST_TIMEOUT_MS }, async () => {
  await withClient(async (c) => {
    assert.equal(c.ws.extensions, '', 'no extension negotiated');
    assert.equal(c.ws.protocol, '', 'no subprotocol negotiated');
    assert.equal(c.ws.readyState, 1);
  }, { options: { perMessageDeflate: true } });
});

test('binary echo at the length-encoding boundaries and the default limit', { timeout: 60000 }, async () => {
  await withClient(async (c) => {
    for (const size of [0, 1, 2, 124, 125, 126, 127, 65535, 65536, 65537, MiB - 1, MiB]) {
      const body = crypto.randomBytes(size);
      await c.send(body, { binary: true });
      const m = await c.next(15000);
      assert.equal(m.isBinary, true, `size ${size}: binary opcode`);
      assertSameBytes(m.data, body, `size ${size}`);
    }
  });
});

test('binary echo of random sizes (seeded)', { timeout: 60000 }, async (t) => {
  const rng = makeRng();
  t.diagnostic(`seed ${rng.seed} (WS_TEST_SEED to repeat)`);
  await withClient(async (c) => {
    for (let i = 0; i < 40; i++) {
      const size = i % 4 === 0 ? rng.int(0, 300000) : rng.int(0, 2000);
      const body = rng.bytes(size);
      await c.send(body, { binary: true });
      const m = await c.next(15000);
      assert.equal(m.isBinary, true);
      assertSameBytes(m.data, body, `message ${i} size ${size}`);
    }
  });
});

test('text echo including multi-byte UTF-8', { timeout: 30000 }, async () => {
  const samples = [
    '',
    'a',
    'Hello, world',
    'héllo wörld — ünïcödé',
    '日本語のテキスト',
    'emoji 😀🎉👩‍👩‍👧‍👦 and astral 𝄞',
    '\u0000 NUL inside',
    '\uFFFD replacement char, \u07FF \u0800 \uFFFF edges',
    'é'.repeat(62) + 'x',         // 125 bytes
    '€'.repeat(42),               // 126 bytes
    '😀'.repeat(20000),          // 80000 bytes, 64-bit length
    'ω'.repeat(40000),            // 80000 bytes
  ];
  await withClient(async (c) => {
    for (const s of samples) {
      await c.send(s);
      const m = await c.next();
      assert.equal(m.isBinary, false, `text opcode for ${JSON.stringify(s.slice(0, 20))}`);
      assert.equal(m.data.toString('utf8'), s);
      assert.equal(m.data.length, Buffer.byteLength(s));
    }
  });
});

test('500 pipelined messages come back in order', { timeout: 30000 }, async () => {
  await withClient(async (c) => {
    const sent = [];
    for (let i = 0; i < 500; i++) {
      const isText = i % 3 === 0;
      const body = isText ? `msg ${i} ${'∑'.repeat(i % 50)}` : Buffer.concat([Buffer.from(`bin ${i}:`), crypto.randomBytes(i % 700)]);
      sent.push({ isText, body });
      c.ws.send(body, { binary: !isText });
    }
    for (let i = 0; i < 500; i++) {
      const m = await c.next(10000);
      const want = sent[i];
      assert.equal(m.isBinary, !want.isText, `message ${i}: opcode`);
      if (want.isText) assert.equal(m.data.toString('utf8'), want.body, `message ${i}`);
      else assertSameBytes(m.data, want.body, `message ${i}`);
    }
    assert.equal(c.queue.length, 0, 'no extra messages');
  });
});

test('ping gets a pong with the same payload', { timeout: TEST_TIMEOUT_MS }, async () => {
  await withClient(async (c) => {
    for (const payload of [Buffer.alloc(0), Buffer.from('hello'), crypto.randomBytes(125)]) {
      c.ws.ping(payload);
      const p = await c.nextPong();
      assertSameBytes(p, payload, `pong payload (${payload.length} bytes)`);
    }
    // An unsolicited pong is ignored: no answer, and echo still works.
    c.ws.pong(Buffer.from('unsolicited'));
    await c.send('after pong');
    const m = await c.next();
    assert.equal(m.data.toString(), 'after pong');
    assert.equal(c.pongs.length, 0);
  });
});

test('clean close handshake started by the client', { timeout: TEST_TIMEOUT_MS }, async () => {
  const c = await WsClient.connect(srv.port);
  await c.send('before close');
  assert.equal((await c.next()).data.toString(), 'before close');
  const { code, reason } = await c.closeAndWait(1000, 'bye');
  assert.equal(code, 1000, 'the server echoes the status code');
  // The contract says the server echoes the status code; whether it also
  // echoes the reason is not fixed, so either '' or the sent reason.
  assert.ok(reason === '' || reason === 'bye', `reason seen by the client: ${JSON.stringify(reason)}`);
  assert.equal(c.errors.length, 0, `no error: ${c.errors.map((e) => e.message)}`);
});

test('close with an application code (4000) is echoed', { timeout: TEST_TIMEOUT_MS }, async () => {
  const c = await WsClient.connect(srv.port);
  const { code } = await c.closeAndWait(4000, 'app says bye');
  assert.equal(code, 4000);
  assert.equal(c.errors.length, 0);
});

test('close without a status code gets an empty close (ws reports 1005)', { timeout: TEST_TIMEOUT_MS }, async () => {
  const c = await WsClient.connect(srv.port);
  const { code, reason } = await c.closeAndWait();
  assert.equal(code, 1005, 'an empty close frame is reported as 1005 by ws');
  assert.equal(reason, '');
});

test('fragmented sends are reassembled and echoed as one message', { timeout: 30000 }, async () => {
  await withClient(async (c) => {
    // binary: 3 fragments
    const parts = [crypto.randomBytes(10), crypto.randomBytes(70000), crypto.randomBytes(1)];
    c.ws.send(parts[0], { binary: true, fin: false });
    c.ws.send(parts[1], { binary: true, fin: false });
    await c.send(parts[2], { binary: true, fin: true });
    let m = await c.next();
    assert.equal(m.isBinary, true);
    assertSameBytes(m.data, Buffer.concat(parts), 'reassembled binary');

    // text split inside a multi-byte character: only the whole message is UTF-8
    const whole = Buffer.from('a😀b€c', 'utf8');
    c.ws.send(whole.subarray(0, 2), { binary: false, fin: false }); // 'a' + first byte of 😀
    c.ws.send(whole.subarray(2, 4), { binary: false, fin: false });
    c.ws.send(whole.subarray(4, 7), { binary: false, fin: false }); // rest of 😀, 'b', first byte of €
    await c.send(whole.subarray(7), { binary: false, fin: true });
    m = await c.next();
    assert.equal(m.isBinary, false);
    assert.equal(m.data.toString('utf8'), 'a😀b€c');

    // empty fragments
    c.ws.send(Buffer.alloc(0), { binary: true, fin: false });
    c.ws.send(Buffer.from('x'), { binary: true, fin: false });
    await c.send(Buffer.alloc(0), { binary: true, fin: true });
    m = await c.next();
    assertSameBytes(m.data, Buffer.from('x'), 'empty fragments');

    // a ping between fragments is answered, the message still arrives whole
    c.ws.send('first half, ', { fin: false });
    c.ws.ping('between');
    await c.send('second half', { fin: true });
    assert.equal((await c.nextPong()).toString(), 'between');
    m = await c.next();
    assert.equal(m.data.toString(), 'first half, second half');
    assert.equal(c.queue.length, 0);
  });
});

test('a message of exactly 1 MiB (the default limit) in 16 fragments is echoed', { timeout: 60000 }, async () => {
  await withClient(async (c) => {
    const body = crypto.randomBytes(MiB);
    for (let i = 0; i < 16; i++) c.ws.send(body.subarray(i * 65536, (i + 1) * 65536), { binary: true, fin: i === 15 });
    const m = await c.next(15000);
    assertSameBytes(m.data, body, '1 MiB in fragments');
  });
});

test('a message of 1 MiB + 1 (over the default limit) closes with 1009', { timeout: 60000 }, async () => {
  // See limits.test.js: the client must get to read the close frame even
  // though the server stops reading the megabyte it was sent.
  const c = await WsClient.connect(srv.port);
  c.ws.send(crypto.randomBytes(MiB + 1));
  const { code } = await c.waitClose(15000);
  assert.equal(code, 1009, 'message over the default 1 MiB limit');
  assert.equal(c.queue.length, 0, 'nothing was echoed');
});

test('50 concurrent clients each echo 100 messages', { timeout: 120000 }, async (t) => {
  const rng = makeRng();
  t.diagnostic(`seed ${rng.seed}`);
  const plans = [];
  for (let k = 0; k < 50; k++) {
    const msgs = [];
    for (let i = 0; i < 100; i++) {
      const size = rng.int(0, i % 10 === 0 ? 20000 : 300);
      msgs.push(i % 2 ? rng.bytes(size) : `c${k} m${i} ${'ü'.repeat(size % 64)}`);
    }
    plans.push(msgs);
  }
  const clients = await Promise.all(plans.map(() => WsClient.connect(srv.port, { timeoutMs: 15000 })));
  try {
    await Promise.all(clients.map(async (c, k) => {
      // Half the clients pipeline everything, half go one message at a time.
      if (k % 2 === 0) for (const m of plans[k]) c.ws.send(m);
      for (let i = 0; i < 100; i++) {
        const want = plans[k][i];
        if (k % 2 === 1) c.ws.send(want);
        const got = await c.next(30000);
        if (typeof want === 'string') {
          assert.equal(got.isBinary, false, `client ${k} message ${i}`);
          assert.equal(got.data.toString('utf8'), want, `client ${k} message ${i}`);
        } else {
          assert.equal(got.isBinary, true, `client ${k} message ${i}`);
          assertSameBytes(got.data, want, `client ${k} message ${i}`);
        }
      }
    }));
    const closes = await Promise.all(clients.map((c) => c.closeAndWait(1000, '', 15000)));
    assert.deepEqual(closes.map((x) => x.code), Array(50).fill(1000));
  } finally {
    for (const c of clients) c.terminate();
  }
});

test('the server exits 0 on SIGTERM with no sanitizer report', { timeout: TEST_TIMEOUT_MS }, async () => {
  await srv.server.stop();
});
