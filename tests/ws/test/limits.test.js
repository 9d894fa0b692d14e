// Size limits: --max-message (sum of a message's fragments) and --max-frame
// (one frame; default = --max-message). Over a limit the server sends close
// 1009 and closes TCP. Control frames do not count towards the limits.
// (The default 1 MiB limit is exercised in ws.test.js.)

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { useServer, TEST_TIMEOUT_MS } from '../lib/server.js';
import { WsClient } from '../lib/wsclient.js';
import {
  OP, text, binary, cont, ping, openRaw, readServerFrame, expectEcho, expectClose, assertServes,
} from '../lib/raw.js';

async function rawCase(port, fn) {
  const c = await openRaw(port);
  try {
    await fn(c);
  } finally {
    c.destroy();
  }
}

describe('--max-message 4096 (max-frame defaults to 4096)', () => {
  const srv = useServer(['--max-message', '4096']);

  test('ws client: 4096-byte binary and text messages are echoed', { timeout: TEST_TIMEOUT_MS }, async () => {
    const c = await WsClient.connect(srv.port);
    try {
      const body = crypto.randomBytes(4096);
      await c.send(body);
      const m = await c.next();
      assert.equal(m.isBinary, true);
      assert.ok(m.data.equals(body));
      const s = 'ü'.repeat(2048); // 4096 bytes
      await c.send(s);
      const t = await c.next();
      assert.equal(t.isBinary, false);
      assert.equal(t.data.toString('utf8'), s);
    } finally {
      c.terminate();
    }
  });

  test('ws client: a 4097-byte message closes the connection with 1009', { timeout: TEST_TIMEOUT_MS }, async () => {
    const c = await WsClient.connect(srv.port);
    c.ws.send(crypto.randomBytes(4097));
    const { code } = await c.waitClose();
    assert.equal(code, 1009);
    assert.equal(c.queue.length, 0, 'nothing echoed');
  });

  test('ws client: a 1 MiB message still shows close 1009 to the client (5 times)', { timeout: 60000 }, async () => {
    // The server reads only part of the megabyte before it decides. If it
    // then closes the socket with unread input, the kernel resets the
    // connection and the client may never read the close frame (it sees
    // 1006). A server has to let the close frame reach the client, e.g. by
    // shutting down its sending side and draining input for a short while.
    for (let i = 0; i < 5; i++) {
      const c = await WsClient.connect(srv.port);
      c.ws.send(crypto.randomBytes(1 << 20));
      const { code } = await c.waitClose(10000);
      assert.equal(code, 1009, `attempt ${i}: close code seen by the ws client`);
      assert.equal(c.queue.length, 0);
    }
  });

  test('ws client: fragments adding up to 4095 pass, to 4097 close with 1009', { timeout: TEST_TIMEOUT_MS }, async () => {
    const c = await WsClient.connect(srv.port);
    const parts = [crypto.randomBytes(1365), crypto.randomBytes(1365), crypto.randomBytes(1365)];
    parts.forEach((p, i) => c.ws.send(p, { fin: i === 2 }));
    const m = await c.next();
    assert.ok(m.data.equals(Buffer.concat(parts)));
    c.ws.send(crypto.randomBytes(2048), { fin: false });
    c.ws.send(crypto.randomBytes(2049), { fin: true });
    const { code } = await c.waitClose();
    assert.equal(code, 1009);
    assert.equal(c.queue.length, 0);
  });

  test('raw: one 4097-byte frame -> 1009', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rawCase(srv.port, async (c) => {
      await c.write(binary(crypto.randomBytes(4097)));
      await expectClose(c, 1009);
    });
  });

  test('raw: one 4097-byte text frame -> 1009', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rawCase(srv.port, async (c) => {
      await c.write(text('a'.repeat(4097)));
      await expectClose(c, 1009);
    });
  });

  test('raw: fragments 2048 + 2049 -> 1009 (each frame is under the limit)', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rawCase(srv.port, async (c) => {
      await c.write(Buffer.concat([binary(crypto.randomBytes(2048), { fin: false }), cont(crypto.randomBytes(2049))]));
      await expectClose(c, 1009);
    });
  });

  test('raw: 5 fragments of 1000 bytes -> 1009', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rawCase(srv.port, async (c) => {
      const frames = [];
      for (let i = 0; i < 5; i++) frames.push(i === 0 ? text('x'.repeat(1000), { fin: false }) : cont('x'.repeat(1000), { fin: i === 4 }));
      await c.write(Buffer.concat(frames));
      await expectClose(c, 1009);
    });
  });

  test('raw: a declared length of 2^62 (top bit clear) -> 1009 right after the header', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rawCase(srv.port, async (c) => {
      await c.write(binary('', { declaredLength: 2n ** 62n, lengthBytes: 8 }));
      await expectClose(c, 1009);
    });
  });

  test('raw: a declared length of 1 MiB -> 1009 after at most the header', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rawCase(srv.port, async (c) => {
      // Header plus only 10 payload bytes: the server must not wait for the rest.
      await c.write(binary(crypto.randomBytes(10), { declaredLength: 1 << 20 }));
      await expectClose(c, 1009);
    });
  });

  test('raw: control frames do not count towards the message size', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rawCase(srv.port, async (c) => {
      const body = crypto.randomBytes(4096);
      await c.write(Buffer.concat([
        binary(body.subarray(0, 4000), { fin: false }), ping(Buffer.alloc(125, 7)), ping(Buffer.alloc(125, 8)), cont(body.subarray(4000)),
      ]));
      let f = await readServerFrame(c);
      assert.equal(f.opcode, OP.PONG);
      f = await readServerFrame(c);
      assert.equal(f.opcode, OP.PONG);
      await expectEcho(c, OP.BINARY, body);
    });
  });

  test('raw: the limit is per message (two 4096-byte messages in a row)', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rawCase(srv.port, async (c) => {
      const a = crypto.randomBytes(4096);
      const b = crypto.randomBytes(4096);
      await c.write(Buffer.concat([binary(a.subarray(0, 100), { fin: false }), cont(a.subarray(100)), binary(b)]));
      await expectEcho(c, OP.BINARY, a);
      await expectEcho(c, OP.BINARY, b);
    });
  });

  test('still serving after the limit errors', { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.equal(srv.server.alive, true);
    await assertServes(srv.port);
  });

  test('the server exits 0 on SIGTERM with no sanitizer report', { timeout: TEST_TIMEOUT_MS }, async () => {
    await srv.server.stop();
  });
});

describe('--max-message 4096 --max-frame 1024', () => {
  const srv = useServer(['--max-message', '4096', '--max-frame', '1024']);

  test('4 fragments of 1024 bytes (4096 total) are echoed as one frame', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rawCase(srv.port, async (c) => {
      const body = crypto.randomBytes(4096);
      const frames = [0, 1, 2, 3].map((i) => (i === 0 ? binary : cont)(body.subarray(i * 1024, (i + 1) * 1024), { fin: i === 3 }));
      await c.write(Buffer.concat(frames));
      await expectEcho(c, OP.BINARY, body);
    });
  });

  test('a single 1024-byte frame is echoed', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rawCase(srv.port, async (c) => {
      const body = crypto.randomBytes(1024);
      await c.write(binary(body));
      await expectEcho(c, OP.BINARY, body);
    });
  });

  test('a single 1025-byte frame -> 1009', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rawCase(srv.port, async (c) => {
      await c.write(binary(crypto.randomBytes(1025)));
      await expectClose(c, 1009);
    });
  });

  test('a 1025-byte continuation frame -> 1009', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rawCase(srv.port, async (c) => {
      await c.write(Buffer.concat([text('a'.repeat(10), { fin: false }), cont('b'.repeat(1025))]));
      await expectClose(c, 1009);
    });
  });

  test('5 fragments of 1000 bytes (5000 > 4096) -> 1009', { timeout: TEST_TIMEOUT_MS }, async () => {
    await rawCase(srv.port, async (c) => {
      const frames = [];
      for (let i = 0; i < 5; i++) frames.push((i === 0 ? binary : cont)(crypto.randomBytes(1000), { fin: i === 4 }));
      await c.write(Buffer.concat(frames));
      await expectClose(c, 1009);
    });
  });

  test('ws client: 4096 bytes sent in 1024-byte fragments are echoed; a 2000-byte unfragmented send -> 1009', { timeout: TEST_TIMEOUT_MS }, async () => {
    const c = await WsClient.connect(srv.port);
    const body = crypto.randomBytes(4096);
    for (let i = 0; i < 4; i++) c.ws.send(body.subarray(i * 1024, (i + 1) * 1024), { fin: i === 3 });
    const m = await c.next();
    assert.ok(m.data.equals(body));
    c.ws.send(crypto.randomBytes(2000));
    const { code } = await c.waitClose();
    assert.equal(code, 1009);
  });

  test('still serving after the limit errors', { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.equal(srv.server.alive, true);
    await assertServes(srv.port);
  });

  test('the server exits 0 on SIGTERM with no sanitizer report', { timeout: TEST_TIMEOUT_MS }, async () => {
    await srv.server.stop();
  });
});
