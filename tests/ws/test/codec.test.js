// Self-test of the suite's own raw frame encoder/parser (lib/raw.js) against
// the examples of RFC 6455 section 5.7 and 1.3. Needs no server: if these
// fail, the raw tests' verdicts cannot be trusted.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  OP, acceptFor, encodeFrame, parseFrames, parseOneFrame, closePayload, handshakeRequest, parseResponseHead,
} from '../lib/raw.js';

const hex = (s) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

test('accept value of the RFC 6455 example key', () => {
  assert.equal(acceptFor('dGhlIHNhbXBsZSBub25jZQ=='), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
});

test('RFC 6455 5.7 examples encode byte for byte', () => {
  // A single-frame unmasked text message "Hello".
  assert.deepEqual(encodeFrame({ opcode: OP.TEXT, payload: 'Hello', mask: false }), hex('81 05 48 65 6c 6c 6f'));
  // A single-frame masked text message "Hello".
  assert.deepEqual(encodeFrame({ opcode: OP.TEXT, payload: 'Hello', maskKey: hex('37fa213d') }),
    hex('81 85 37 fa 21 3d 7f 9f 4d 51 58'));
  // A fragmented unmasked text message "Hel" + "lo".
  assert.deepEqual(encodeFrame({ opcode: OP.TEXT, payload: 'Hel', fin: false, mask: false }), hex('01 03 48 65 6c'));
  assert.deepEqual(encodeFrame({ opcode: OP.CONT, payload: 'lo', mask: false }), hex('80 02 6c 6f'));
  // Unmasked ping "Hello".
  assert.deepEqual(encodeFrame({ opcode: OP.PING, payload: 'Hello', mask: false }), hex('89 05 48 65 6c 6c 6f'));
  // Masked pong "Hello".
  assert.deepEqual(encodeFrame({ opcode: OP.PONG, payload: 'Hello', maskKey: hex('37fa213d') }),
    hex('8a 85 37 fa 21 3d 7f 9f 4d 51 58'));
  // 256 bytes binary in a single unmasked frame.
  assert.deepEqual(encodeFrame({ opcode: OP.BINARY, payload: Buffer.alloc(256), mask: false }).subarray(0, 4),
    hex('82 7e 01 00'));
  // 64 KiB binary in a single unmasked frame.
  assert.deepEqual(encodeFrame({ opcode: OP.BINARY, payload: Buffer.alloc(65536), mask: false }).subarray(0, 10),
    hex('82 7f 00 00 00 00 00 01 00 00'));
});

test('header bits, length forms and lying lengths', () => {
  const f = encodeFrame({ opcode: 0x3, payload: 'x', rsv: 4, fin: false, mask: false });
  assert.deepEqual(f, hex('43 01 78'));
  assert.deepEqual(encodeFrame({ opcode: OP.BINARY, payload: 'abc', mask: false, lengthBytes: 2 }), hex('82 7e 00 03 61 62 63'));
  assert.deepEqual(encodeFrame({ opcode: OP.BINARY, payload: 'abc', mask: false, lengthBytes: 8 }),
    hex('82 7f 00 00 00 00 00 00 00 03 61 62 63'));
  assert.deepEqual(encodeFrame({ opcode: OP.BINARY, mask: false, declaredLength: 0x8000000000000000n }),
    hex('82 7f 80 00 00 00 00 00 00 00'));
  assert.deepEqual(closePayload(1000, 'ok'), hex('03 e8 6f 6b'));
  assert.deepEqual(closePayload(), Buffer.alloc(0));
});

test('parser: masked and unmasked, partial input, several frames', () => {
  const a = encodeFrame({ opcode: OP.TEXT, payload: 'Hello', maskKey: hex('37fa213d') });
  const b = encodeFrame({ opcode: OP.BINARY, payload: Buffer.alloc(70000, 7), mask: false });
  const c = encodeFrame({ opcode: OP.CLOSE, payload: closePayload(1001, 'bye'), mask: false });
  const all = Buffer.concat([a, b, c]);
  for (let cut = 0; cut < all.length; cut += 997) {
    const { frames, used } = parseFrames(all.subarray(0, cut));
    assert.ok(used <= cut);
    assert.ok(frames.length <= 3);
  }
  const { frames, used } = parseFrames(all);
  assert.equal(used, all.length);
  assert.equal(frames.length, 3);
  assert.equal(frames[0].masked, true);
  assert.equal(frames[0].payload.toString(), 'Hello');
  assert.equal(frames[1].masked, false);
  assert.equal(frames[1].length, 70000);
  assert.equal(frames[1].headerLength, 10);
  assert.equal(frames[2].closeCode, 1001);
  assert.equal(frames[2].reason.toString(), 'bye');
  assert.equal(parseOneFrame(all.subarray(0, 1)), null);
});

test('handshake request and response head helpers', () => {
  const req = handshakeRequest({ key: 'dGhlIHNhbXBsZSBub25jZQ==', path: '/chat' });
  assert.equal(req, 'GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
  const r = parseResponseHead('HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nX-A: 1\r\nx-a: 2');
  assert.equal(r.status, 426);
  assert.equal(r.reason, 'Upgrade Required');
  assert.equal(r.header('SEC-WEBSOCKET-VERSION'), '13');
  assert.equal(r.header('x-a'), '1, 2');
});
