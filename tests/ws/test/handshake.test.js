// The opening handshake, written by hand over TCP: the 101 answer and its
// Sec-WebSocket-Accept, header-matching rules, and each HTTP error answer
// (400, 405, 426, 431) followed by the server closing the connection.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { useServer, TEST_TIMEOUT_MS } from '../lib/server.js';
import {
  RawConn, OP, acceptFor, assertSwitching, binary, text, close, expectEcho, expectClose, handshakeRequest,
  openRaw, assertServes, randomKey,
} from '../lib/raw.js';

const srv = useServer();

// Sends `request` (string or Buffer) on a fresh connection and returns the
// parsed response head and the connection.
async function exchange(request, { split = false } = {}) {
  const c = await RawConn.connect(srv.port);
  if (split) await c.writeSplit(request);
  else await c.write(request);
  const res = await c.readHttpHead();
  return { c, res };
}

// Asserts an HTTP error answer with the exact status line, then that the
// server closes the connection and never switched protocols.
async function expectRefusal(request, statusLine, check) {
  const { c, res } = await exchange(request);
  try {
    assert.equal(res.statusLine, statusLine, `answer to ${JSON.stringify(request.slice(0, 120))}`);
    assert.equal(res.header('sec-websocket-accept'), undefined, 'no Sec-WebSocket-Accept on a refusal');
    if (check) check(res);
    const rest = await c.waitEnd();
    assert.ok(!rest.toString('latin1').includes('HTTP/1.1 101'), 'no 101 after the error');
  } finally {
    c.destroy();
  }
}

describe('101 Switching Protocols', () => {
  test('RFC 6455 example key gives s3pPLMBiTxaQ9kYGzzhZRbK+xOo= and the connection works', { timeout: TEST_TIMEOUT_MS }, async () => {
    const key = 'dGhlIHNhbXBsZSBub25jZQ==';
    const { c, res } = await exchange(handshakeRequest({ key, path: '/chat' }));
    try {
      assertSwitching(res, key);
      assert.equal(res.header('sec-websocket-accept'), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
      await c.write(text('hello'));
      await expectEcho(c, OP.TEXT, 'hello');
      await c.write(close(1000));
      await expectClose(c, 1000);
    } finally {
      c.destroy();
    }
  });

  test('accept value is right for 20 random keys', { timeout: TEST_TIMEOUT_MS }, async () => {
    for (let i = 0; i < 20; i++) {
      const key = randomKey();
      const { c, res } = await exchange(handshakeRequest({ key }));
      c.destroy();
      assert.equal(res.status, 101);
      assert.equal(res.header('sec-websocket-accept'), acceptFor(key), `key ${key}`);
    }
  });

  test('header names and Upgrade/Connection values are case-insensitive; Connection is a token list', { timeout: TEST_TIMEOUT_MS }, async () => {
    const variants = [
      (key) => [['host', 'x'], ['upgrade', 'websocket'], ['connection', 'upgrade'], ['sec-websocket-key', key], ['sec-websocket-version', '13']],
      (key) => [['HOST', 'x'], ['UPGRADE', 'WebSocket'], ['CONNECTION', 'UPGRADE'], ['SEC-WEBSOCKET-KEY', key], ['SEC-WEBSOCKET-VERSION', '13']],
      (key) => [['Sec-WebSocket-Version', '13'], ['Sec-WebSocket-Key', key], ['Connection', 'keep-alive, Upgrade'], ['Upgrade', 'websocket'], ['Host', 'x']],
      (key) => [['Host', 'x'], ['Upgrade', 'websocket'], ['Connection', 'Upgrade,keep-alive'], ['Sec-WebSocket-Key', key], ['Sec-WebSocket-Version', '13']],
      (key) => [['Host', 'x'], ['User-Agent', 'test/1.0'], ['Origin', 'http://127.0.0.1'], ['Upgrade', 'websocket'],
        ['Connection', 'keep-alive,  upgrade'], ['Cache-Control', 'no-cache'], ['Sec-WebSocket-Key', key], ['Sec-WebSocket-Version', '13']],
    ];
    for (const [i, make] of variants.entries()) {
      const key = randomKey();
      const { c, res } = await exchange(handshakeRequest({ key, headers: make(key), path: i % 2 ? '/a/b/c?x=1&y=2' : '/' }));
      try {
        assertSwitching(res, key);
        const body = crypto.randomBytes(17);
        await c.write(binary(body));
        await expectEcho(c, OP.BINARY, body);
      } finally {
        c.destroy();
      }
    }
  });

  test('offered permessage-deflate and subprotocols are declined (no such headers in the 101)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const key = randomKey();
    const { c, res } = await exchange(handshakeRequest({
      key,
      extra: [
        ['Sec-WebSocket-Extensions', 'permessage-deflate; client_max_window_bits'],
        ['Sec-WebSocket-Protocol', 'chat, superchat'],
      ],
    }));
    try {
      assertSwitching(res, key); // asserts both headers are absent
      // Frames with RSV1 (compressed) are therefore a protocol error.
      await c.write(text('plain'));
      await expectEcho(c, OP.TEXT, 'plain');
    } finally {
      c.destroy();
    }
  });

  test('a frame sent in the same write as the request is handled', { timeout: TEST_TIMEOUT_MS }, async () => {
    const key = randomKey();
    const c = await RawConn.connect(srv.port);
    try {
      await c.write(Buffer.concat([Buffer.from(handshakeRequest({ key })), text('early'), binary(Buffer.from([1, 2, 3]))]));
      assertSwitching(await c.readHttpHead(), key);
      await expectEcho(c, OP.TEXT, 'early');
      await expectEcho(c, OP.BINARY, Buffer.from([1, 2, 3]));
    } finally {
      c.destroy();
    }
  });

  test('a request head of about 8000 bytes (under 8192) is accepted', { timeout: TEST_TIMEOUT_MS }, async () => {
    const key = randomKey();
    const base = handshakeRequest({ key }).length;
    const pad = 8000 - base - 'X-Pad: \r\n'.length;
    const req = handshakeRequest({ key, extra: [['X-Pad', 'p'.repeat(pad)]] });
    assert.equal(req.length, 8000);
    const { c, res } = await exchange(req);
    c.destroy();
    assertSwitching(res, key);
  });
});

describe('HTTP errors', () => {
  const H = (extra = {}, omit = []) => handshakeRequest({ ...extra, omit });

  const badRequests = [
    ['plain GET without any WebSocket header', 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'],
    ['no Upgrade header', H({}, ['Upgrade'])],
    ['Upgrade: h2c', H({ headers: [['Host', 'x'], ['Upgrade', 'h2c'], ['Connection', 'Upgrade'], ['Sec-WebSocket-Key', randomKey()], ['Sec-WebSocket-Version', '13']] })],
    ['no Connection header', H({}, ['Connection'])],
    ['Connection: keep-alive only', H({ headers: [['Host', 'x'], ['Upgrade', 'websocket'], ['Connection', 'keep-alive'], ['Sec-WebSocket-Key', randomKey()], ['Sec-WebSocket-Version', '13']] })],
    ['no Sec-WebSocket-Key', H({}, ['Sec-WebSocket-Key'])],
    ['empty Sec-WebSocket-Key', H({ key: '' })],
    ['key is base64 of 15 bytes', H({ key: crypto.randomBytes(15).toString('base64') })],
    ['key is base64 of 17 bytes', H({ key: crypto.randomBytes(17).toString('base64') })],
    ['key is base64 of 32 bytes', H({ key: crypto.randomBytes(32).toString('base64') })],
    ['key is not base64', H({ key: '!!!!!!!!!!!!!!!!!!!!!!==' })],
    ['malformed request line', 'GARBAGE\r\n\r\n'],
    ['request line without HTTP version', 'GET /\r\nHost: x\r\n\r\n'],
    ['header line without a colon', H({ extra: [['Bad header line without colon', '']] }).replace('Bad header line without colon: \r\n', 'Bad header line without colon\r\n')],
    ['HTTP/1.0', H({ httpVersion: 'HTTP/1.0' })],
  ];
  for (const [name, req] of badRequests) {
    test(`400 Bad Request: ${name}`, { timeout: TEST_TIMEOUT_MS }, async () => {
      await expectRefusal(req, 'HTTP/1.1 400 Bad Request');
    });
  }

  for (const version of ['8', '12', '14', '0', 'abc']) {
    test(`426 Upgrade Required with Sec-WebSocket-Version: 13 for version ${version}`, { timeout: TEST_TIMEOUT_MS }, async () => {
      await expectRefusal(H({ version }), 'HTTP/1.1 426 Upgrade Required', (res) => {
        assert.equal(res.header('sec-websocket-version'), '13');
      });
    });
  }

  test('missing Sec-WebSocket-Version: 400 or 426 (the contract does not say which)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { c, res } = await exchange(H({}, ['Sec-WebSocket-Version']));
    c.destroy();
    assert.ok(['HTTP/1.1 400 Bad Request', 'HTTP/1.1 426 Upgrade Required'].includes(res.statusLine), res.statusLine);
    if (res.status === 426) assert.equal(res.header('sec-websocket-version'), '13');
  });

  for (const method of ['POST', 'PUT', 'DELETE']) {
    test(`405 Method Not Allowed for ${method} with WebSocket headers`, { timeout: TEST_TIMEOUT_MS }, async () => {
      await expectRefusal(H({ method }), 'HTTP/1.1 405 Method Not Allowed');
    });
  }

  test('431 for one header making the head exceed 8192 bytes', { timeout: TEST_TIMEOUT_MS }, async () => {
    await expectRefusal(H({ extra: [['X-Pad', 'p'.repeat(9000)]] }), 'HTTP/1.1 431 Request Header Fields Too Large');
  });

  test('431 for many headers adding up to more than 8192 bytes', { timeout: TEST_TIMEOUT_MS }, async () => {
    const extra = [];
    for (let i = 0; i < 200; i++) extra.push([`X-Header-${i}`, 'v'.repeat(40)]);
    await expectRefusal(H({ extra }), 'HTTP/1.1 431 Request Header Fields Too Large');
  });

  test('431 for a head that never ends (10000 bytes, no blank line)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const req = `GET / HTTP/1.1\r\nHost: x\r\nX-Long: ${'z'.repeat(10000)}`;
    await expectRefusal(req, 'HTTP/1.1 431 Request Header Fields Too Large');
  });

  test('the server still serves after all those refusals', { timeout: TEST_TIMEOUT_MS }, async () => {
    await assertServes(srv.port);
  });
});

test('the server exits 0 on SIGTERM with no sanitizer report', { timeout: TEST_TIMEOUT_MS }, async () => {
  await srv.server.stop();
});
