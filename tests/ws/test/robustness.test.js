// Misbehaving clients must not disturb anyone else: garbage instead of HTTP,
// garbage after the handshake, connections dropped or reset mid-head and
// mid-frame, idle and half-open connections, many connections at once. A
// well-behaved `ws` client keeps echoing throughout, and the server exits
// cleanly at the end (which also lets LeakSanitizer report leaks of the
// dropped connections in a sanitizer build).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { useServer, TEST_TIMEOUT_MS } from '../lib/server.js';
import { WsClient } from '../lib/wsclient.js';
import {
  OP, RawConn, text, binary, cont, close as closeFrame, handshakeRequest, openRaw, expectEcho, expectClose, assertServes,
  randomKey,
} from '../lib/raw.js';
import { makeRng } from '../lib/rng.js';

const srv = useServer();

// A ws client that echoes a message every few ms in the background until
// stopped; stop() resolves with the number of verified echoes and rejects
// on the first wrong or missing echo.
function backgroundEcho(c, { maxMessages = 2000, everyMs = 5 } = {}) {
  let stop = false;
  let count = 0;
  const done = (async () => {
    while (!stop && count < maxMessages) {
      const body = crypto.randomBytes(1 + (count % 300));
      await c.send(body);
      const m = await c.next();
      assert.equal(m.isBinary, true);
      assert.ok(m.data.equals(body), `background echo ${count}`);
      count++;
      await new Promise((r) => setTimeout(r, everyMs));
    }
    return count;
  })();
  return { stop: async () => { stop = true; return done; } };
}

async function checkWsEcho(c, label) {
  const body = `${label} ${crypto.randomBytes(8).toString('hex')}`;
  await c.send(body);
  const m = await c.next();
  assert.equal(m.data.toString(), body, label);
}

test('garbage clients do not disturb a concurrent well-behaved ws client', { timeout: 60000 }, async (t) => {
  const rng = makeRng();
  t.diagnostic(`seed ${rng.seed}`);
  const good = await WsClient.connect(srv.port);
  const bg = backgroundEcho(good);
  try {
    // 1a. Random bytes ending in a blank line instead of an HTTP request
    //     (a complete, malformed head under 8192 bytes): 400, then closed.
    for (let i = 0; i < 5; i++) {
      const c = await RawConn.connect(srv.port);
      const junk = rng.bytes(rng.int(1, 8000));
      junk[0] = 0x01; // never a valid method character
      await c.write(Buffer.concat([junk, Buffer.from('\r\n\r\n')]));
      const res = await c.readHttpHead();
      assert.equal(res.statusLine, 'HTTP/1.1 400 Bad Request');
      await c.waitEnd();
      c.destroy();
    }
    // 1b. 20000 random bytes, no blank line: refused (400 early or 431 at
    //     8192 bytes, never 101) and closed.
    for (let i = 0; i < 2; i++) {
      const c = await RawConn.connect(srv.port);
      await c.write(rng.bytes(20000));
      const rest = await c.waitEnd();
      assert.ok(!rest.toString('latin1').includes(' 101 '), 'garbage was not upgraded');
      c.destroy();
    }
    // 2. Garbage after a good handshake. The first byte 0x7F has RSV bits
    //    set, so the server must fail the connection with 1002.
    for (let i = 0; i < 5; i++) {
      const c = await openRaw(srv.port);
      await c.write(Buffer.concat([Buffer.from([0x7F]), rng.bytes(rng.int(1, 5000))]));
      await expectClose(c, 1002);
      c.destroy();
    }
    // 3. Fully random bytes after a good handshake: whatever the server
    //    answers, it must survive and the good client must not notice.
    for (let i = 0; i < 10; i++) {
      const c = await openRaw(srv.port);
      await c.write(rng.bytes(rng.int(1, 3000)));
      await new Promise((r) => setTimeout(r, 20));
      c.destroy();
    }
    await checkWsEcho(good, 'after garbage');
    const n = await bg.stop();
    assert.ok(n >= 1, `background echoes verified: ${n}`);
    t.diagnostic(`background echoes during the garbage: ${n}`);
  } finally {
    await bg.stop().catch(() => {});
    good.terminate();
  }
  await assertServes(srv.port);
});

test('connections dropped or reset anywhere do not hurt the server', { timeout: 60000 }, async () => {
  const good = await WsClient.connect(srv.port);
  try {
    const req = handshakeRequest({ key: randomKey() });
    const frame = binary(crypto.randomBytes(4000));
    const scenarios = [
      ['connect then close', async (c) => {}],
      ['half an HTTP head', async (c) => { await c.write(req.slice(0, 30)); }],
      ['the whole head but the final CRLF', async (c) => { await c.write(req.slice(0, -2)); }],
      ['half a frame header after the handshake', async (c) => {
        await c.write(req); await c.readHttpHead(); await c.write(frame.subarray(0, 1));
      }],
      ['a header and half the payload', async (c) => {
        await c.write(req); await c.readHttpHead(); await c.write(frame.subarray(0, 2000));
      }],
      ['half a fragmented message', async (c) => {
        await c.write(req); await c.readHttpHead(); await c.write(text('first', { fin: false }));
      }],
      ['a request and a frame without reading the 101', async (c) => {
        await c.write(Buffer.concat([Buffer.from(req), frame]));
      }],
    ];
    for (const [name, fn] of scenarios) {
      for (const how of ['end', 'reset']) {
        const c = await RawConn.connect(srv.port);
        await fn(c);
        if (how === 'reset') c.sock.resetAndDestroy();
        else c.sock.end();
        await new Promise((r) => setTimeout(r, 10));
        assert.equal(srv.server.alive, true, `server alive after "${name}" (${how})`);
      }
      await checkWsEcho(good, `after "${name}"`);
    }
  } finally {
    good.terminate();
  }
  await assertServes(srv.port);
});

test('idle and half-finished connections do not block others', { timeout: 30000 }, async () => {
  const idle = [];
  try {
    for (let i = 0; i < 10; i++) idle.push(await RawConn.connect(srv.port)); // never send anything
    for (let i = 0; i < 10; i++) {
      const c = await RawConn.connect(srv.port);
      await c.write('GET / HTTP/1.1\r\nHost: x\r\n'); // head never finished
      idle.push(c);
    }
    for (let i = 0; i < 10; i++) {
      const c = await openRaw(srv.port);
      await c.write(binary(crypto.randomBytes(100), { declaredLength: 1000 })); // frame never finished
      idle.push(c);
    }
    const c = await WsClient.connect(srv.port);
    try {
      for (let i = 0; i < 20; i++) await checkWsEcho(c, `while 30 connections hang, ${i}`);
    } finally {
      c.terminate();
    }
    // The hanging connections got no answer to a frame they never finished.
    for (const h of idle.slice(20)) assert.equal(h.buf.length, 0);
  } finally {
    for (const c of idle) c.destroy();
  }
});

test('200 connections at once: handshake, echo, then dropped without a close', { timeout: 60000 }, async () => {
  const conns = await Promise.all(Array.from({ length: 200 }, () => openRaw(srv.port)));
  try {
    await Promise.all(conns.map(async (c, i) => {
      const body = Buffer.from(`conn ${i}`);
      await c.write(text(body));
      await expectEcho(c, OP.TEXT, body);
    }));
  } finally {
    for (const c of conns) c.destroy();
  }
  await new Promise((r) => setTimeout(r, 100));
  await assertServes(srv.port);
});

test('a connection that keeps sending while the server closes it (close + pipelined data)', { timeout: TEST_TIMEOUT_MS }, async () => {
  const c = await openRaw(srv.port);
  try {
    // After the orphan continuation the server fails the connection; the
    // 200 KB that follow must not crash it (they may be reset or dropped).
    await c.write(Buffer.concat([cont('x'), binary(crypto.randomBytes(200000))]));
    await c.waitEnd();
  } finally {
    c.destroy();
  }
  await assertServes(srv.port);
});

// The echo is gathered for the end of the loop turn; the close answer flushes it and
// goes at once; the reset then ends the connection in that same turn. A connection
// freed while still listed for the end-of-turn write was a use-after-free.
test('a message, a close and a reset in one write (the connection ends in the turn its frames were gathered)', { timeout: TEST_TIMEOUT_MS }, async () => {
  for (let i = 0; i < 30; i++) {
    const c = await openRaw(srv.port);
    await c.write(Buffer.concat([binary(crypto.randomBytes(1 + i)), closeFrame(1000)]));
    c.sock.resetAndDestroy();
  }
  await new Promise((r) => setTimeout(r, 100));
  await assertServes(srv.port);
});

test('the server is alive, serving, and exits 0 on SIGTERM with no sanitizer report', { timeout: TEST_TIMEOUT_MS }, async () => {
  assert.equal(srv.server.alive, true);
  const c = await WsClient.connect(srv.port);
  await checkWsEcho(c, 'last');
  const { code } = await c.closeAndWait(1000);
  assert.equal(code, 1000);
  await srv.server.stop();
});
