// Protocol errors, one fresh connection each: the server must answer with a
// close frame carrying the contract's status code (1002 protocol error,
// 1007 invalid UTF-8), then close the TCP connection itself (without waiting
// for our close), and keep serving other connections.
// Size-limit errors (1009) are in limits.test.js.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { useServer, TEST_TIMEOUT_MS } from '../lib/server.js';
import {
  OP, encodeFrame, text, binary, cont, ping, pong, close, closePayload, openRaw, expectEcho, expectClose, assertServes,
} from '../lib/raw.js';

const srv = useServer();

// Each case: [name, frames to send (Buffer or array of Buffers, written in
// ONE write), expected close code]. A good message is echoed first so the
// error happens on a connection that already worked.
const B = (...bytes) => Buffer.from(bytes);
const cases = [];
// An optional 4th element lists the echoes ([opcode, payload]) expected before the close.
const add = (code, name, bytes, echoes = []) => cases.push([name, Array.isArray(bytes) ? Buffer.concat(bytes) : bytes, code, echoes]);

// --- 1002: masking, RSV bits, opcodes
add(1002, 'unmasked text frame', text('hi', { mask: false }));
add(1002, 'unmasked binary frame', binary('hi', { mask: false }));
add(1002, 'unmasked ping', ping('hi', { mask: false }));
add(1002, 'unmasked close', close(1000, '', { mask: false }));
add(1002, 'unmasked continuation in a fragmented message', [text('a', { fin: false }), cont('b', { mask: false })]);
for (const [rsv, label] of [[4, 'RSV1'], [2, 'RSV2'], [1, 'RSV3'], [7, 'RSV1+2+3']]) {
  add(1002, `${label} set on a text frame`, text('x', { rsv }));
}
add(1002, 'RSV1 set on a binary frame (permessage-deflate was not negotiated)', binary('x', { rsv: 4 }));
add(1002, 'RSV2 set on a ping', ping('x', { rsv: 2 }));
add(1002, 'RSV3 set on a continuation', [binary('a', { fin: false }), cont('b', { rsv: 1 })]);
for (const opcode of [3, 4, 5, 6, 7, 11, 12, 13, 14, 15]) {
  add(1002, `reserved opcode ${opcode}`, encodeFrame({ opcode, payload: 'x' }));
}
add(1002, 'reserved opcode 3 with an empty payload', encodeFrame({ opcode: 3 }));
add(1002, 'reserved opcode 11 with FIN=0', encodeFrame({ opcode: 11, fin: false }));

// --- 1002: control frames
add(1002, 'ping with a 126-byte payload', ping(Buffer.alloc(126, 1)));
add(1002, 'pong with a 126-byte payload', pong(Buffer.alloc(126, 1)));
add(1002, 'close with a 126-byte payload', close(1000, 'r'.repeat(124)));
add(1002, 'ping with a 1000-byte payload', ping(Buffer.alloc(1000, 2)));
add(1002, 'ping with FIN=0', ping('x', { fin: false }));
add(1002, 'pong with FIN=0', pong('x', { fin: false }));
add(1002, 'close with FIN=0', close(1000, '', { fin: false }));
add(1002, 'ping with FIN=0 inside a fragmented message', [text('a', { fin: false }), ping('x', { fin: false })]);

// --- 1002: fragmentation state
add(1002, 'continuation (FIN=1) with no message in progress', cont('x'));
add(1002, 'continuation (FIN=0) with no message in progress', cont('x', { fin: false }));
add(1002, 'continuation after a completed message', [text('done'), cont('x')], [[OP.TEXT, 'done']]);
add(1002, 'text frame while a text message is in progress', [text('a', { fin: false }), text('b')]);
add(1002, 'binary frame while a text message is in progress', [text('a', { fin: false }), binary('b')]);
add(1002, 'text FIN=0 while a binary message is in progress', [binary('a', { fin: false }), cont('b', { fin: false }), text('c', { fin: false })]);

// --- 1002: 64-bit length with the top bit set (header and mask key only)
add(1002, '64-bit length 0x8000000000000000', binary('', { declaredLength: 0x8000000000000000n, lengthBytes: 8 }));
add(1002, '64-bit length 0xFFFFFFFFFFFFFFFF', binary('', { declaredLength: 0xFFFFFFFFFFFFFFFFn, lengthBytes: 8 }));
add(1002, '64-bit length 0x8000000000000005 on a text frame', text('', { declaredLength: 0x8000000000000005n, lengthBytes: 8 }));

// --- 1002: bad close frames
add(1002, 'close with a 1-byte payload', encodeFrame({ opcode: OP.CLOSE, payload: B(0x03) }));
for (const code of [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]) {
  add(1002, `close with invalid status code ${code}`, close(code));
}
add(1002, 'close with invalid status code 1005 and a reason', close(1005, 'reason'));
for (const [label, bytes] of [
  ['0xFF', B(0xFF)], ['overlong 0xC0 0xAF', B(0xC0, 0xAF)], ['surrogate ED A0 80', B(0xED, 0xA0, 0x80)],
  ['truncated E2 82', B(0x6F, 0x6B, 0xE2, 0x82)],
]) {
  add(1007, `close 1000 with a non-UTF-8 reason (${label})`, close(1000, bytes));
}

// --- 1007: invalid UTF-8 in text messages (always a complete message)
const badUtf8 = [
  ['lone 0xFF', B(0xFF)],
  ['0xFE inside ASCII', Buffer.concat([Buffer.from('valid text '), B(0xFE), Buffer.from(' more')])],
  ['lone continuation byte 0x80', B(0x80)],
  ['overlong NUL C0 80', B(0xC0, 0x80)],
  ['overlong 3-byte E0 80 AF', B(0xE0, 0x80, 0xAF)],
  ['UTF-16 surrogate ED A0 80', B(0xED, 0xA0, 0x80)],
  ['code point above U+10FFFF (F4 90 80 80)', B(0xF4, 0x90, 0x80, 0x80)],
  ['5-byte sequence F8 88 80 80 80', B(0xF8, 0x88, 0x80, 0x80, 0x80)],
  ['truncated 3-byte sequence at the end', Buffer.concat([Buffer.from('abc'), B(0xE2, 0x82)])],
  ['truncated 4-byte sequence at the end', Buffer.concat([Buffer.from('😀'), B(0xF0, 0x9F, 0x98)])],
];
for (const [label, bytes] of badUtf8) add(1007, `text message with invalid UTF-8: ${label}`, text(bytes));
add(1007, 'fragmented text: valid first fragment, invalid second', [text('abc', { fin: false }), cont(B(0xFF))]);
add(1007, 'fragmented text ending inside a character', [text(Buffer.concat([Buffer.from('ab'), B(0xE2, 0x82)]), { fin: false }), cont('')]);
add(1007, 'fragmented text: invalid byte in the first fragment', [text(B(0xC0, 0x80), { fin: false }), cont('ok')]);
add(1007, 'large text message (70000 bytes) with one bad byte at the end',
  text(Buffer.concat([Buffer.alloc(69999, 0x61), B(0xFF)])));

describe('protocol errors close the connection with the contract status code', () => {
  for (const [name, bytes, code, echoes] of cases) {
    test(`${code}: ${name}`, { timeout: TEST_TIMEOUT_MS }, async () => {
      const c = await openRaw(srv.port);
      try {
        await c.write(binary('warm-up'));
        await expectEcho(c, OP.BINARY, 'warm-up');
        await c.write(bytes);
        for (const [op, payload] of echoes) await expectEcho(c, op, payload);
        await expectClose(c, code);
      } finally {
        c.destroy();
      }
      await assertServes(srv.port);
    });
  }

  test('the error is also detected as the first frame on a connection', { timeout: TEST_TIMEOUT_MS }, async () => {
    const c = await openRaw(srv.port);
    try {
      await c.write(text('no mask', { mask: false }));
      await expectClose(c, 1002);
    } finally {
      c.destroy();
    }
  });

  test('the error is detected when its bytes arrive one at a time', { timeout: TEST_TIMEOUT_MS }, async () => {
    const c = await openRaw(srv.port);
    try {
      await c.writeSplit(encodeFrame({ opcode: 5, payload: 'xyz' }), { delayMs: 2 });
      await expectClose(c, 1002);
    } finally {
      c.destroy();
    }
  });

  test('frames after the bad one are not answered', { timeout: TEST_TIMEOUT_MS }, async () => {
    const c = await openRaw(srv.port);
    try {
      await c.write(Buffer.concat([cont('orphan'), text('after'), ping('after')]));
      await expectClose(c, 1002); // asserts nothing follows the close frame
    } finally {
      c.destroy();
    }
  });

  test('valid close codes around the invalid ranges are still echoed (1000, 1003, 3000, 4999)', { timeout: TEST_TIMEOUT_MS }, async () => {
    for (const code of [1000, 1003, 3000, 4999]) {
      const c = await openRaw(srv.port);
      try {
        await c.write(close(code, 'fine'));
        await expectClose(c, code);
      } finally {
        c.destroy();
      }
    }
  });
});

test('the server is alive and serving after every error case', { timeout: TEST_TIMEOUT_MS }, async () => {
  assert.equal(srv.server.alive, true);
  await assertServes(srv.port);
});

test('the server exits 0 on SIGTERM with no sanitizer report', { timeout: TEST_TIMEOUT_MS }, async () => {
  await srv.server.stop();
});

// Sanity check of the table itself (it must not silently shrink).
test('the error table covers every contract error class', () => {
  assert.ok(cases.filter(([, , code]) => code === 1002).length >= 45);
  assert.ok(cases.filter(([, , code]) => code === 1007).length >= 14);
  assert.ok(closePayload(1000).length === 2);
});
