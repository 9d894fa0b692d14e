// A small reader for the Signal wire formats (SIGNAL-NOTES 2.7), used by the
// tests to check version bytes and field order and to aim bit flips at chosen
// fields. It only reads; it never re-encodes.

import { Buffer } from 'node:buffer';

// Reads one varint at `pos`; returns [value, nextPos]. Values above 2^53 are
// not expected in these messages.
function readVarint(buf, pos) {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) throw new Error('protobuf: truncated varint');
    const byte = buf[pos++];
    value += (byte & 0x7f) * scale;
    if ((byte & 0x80) === 0) return [value, pos];
    scale *= 128;
  }
  throw new Error('protobuf: varint too long');
}

// Lists the fields of a protobuf message in wire order:
// { field, wireType, value, start, valueStart, end } with `value` a number
// (varint) or a Buffer (length-delimited); offsets are into `buf`.
export function readFields(buf) {
  const fields = [];
  let pos = 0;
  while (pos < buf.length) {
    const start = pos;
    let key;
    [key, pos] = readVarint(buf, pos);
    const field = Math.floor(key / 8);
    const wireType = key & 7;
    let value;
    const valueStart = pos;
    if (wireType === 0) {
      [value, pos] = readVarint(buf, pos);
    } else if (wireType === 2) {
      let len;
      [len, pos] = readVarint(buf, pos);
      if (pos + len > buf.length) throw new Error('protobuf: truncated bytes field');
      value = buf.subarray(pos, pos + len);
      pos += len;
    } else {
      throw new Error(`protobuf: unexpected wire type ${wireType}`);
    }
    fields.push({ field, wireType, value, start, valueStart: wireType === 2 ? pos - value.length : valueStart, end: pos });
  }
  return fields;
}

function byNumber(fields) {
  const out = {};
  for (const f of fields) out[f.field] = f;
  return out;
}

// SignalMessage = version || protobuf || mac[8].
export function parseSignalMessage(body) {
  const buf = Buffer.from(body);
  if (buf.length < 1 + 8) throw new Error('SignalMessage too short');
  const proto = buf.subarray(1, buf.length - 8);
  const fields = readFields(proto);
  const f = byNumber(fields);
  return {
    version: buf[0],
    fieldOrder: fields.map((x) => x.field),
    ratchetKey: f[1]?.value,
    counter: f[2]?.value,
    previousCounter: f[3]?.value,
    ciphertext: f[4]?.value,
    mac: buf.subarray(buf.length - 8),
    // Offsets into `body` of interesting bytes.
    offsets: {
      ratchetKey: f[1] ? 1 + f[1].valueStart : null,
      counter: f[2] ? 1 + f[2].valueStart : null,
      ciphertext: f[4] ? 1 + f[4].valueStart : null,
      ciphertextEnd: f[4] ? 1 + f[4].end : null,
      mac: buf.length - 8,
    },
  };
}

// PreKeySignalMessage = version || protobuf (the inner message carries the MAC).
export function parsePreKeyMessage(body) {
  const buf = Buffer.from(body);
  const fields = readFields(buf.subarray(1));
  const f = byNumber(fields);
  return {
    version: buf[0],
    fieldOrder: fields.map((x) => x.field),
    preKeyId: f[1]?.value ?? null,
    baseKey: f[2]?.value,
    identityKey: f[3]?.value,
    message: f[4]?.value,
    registrationId: f[5]?.value,
    signedPreKeyId: f[6]?.value,
    offsets: {
      baseKey: f[2] ? 1 + f[2].valueStart : null,
      identityKey: f[3] ? 1 + f[3].valueStart : null,
      message: f[4] ? 1 + f[4].valueStart : null,
      signedPreKeyId: f[6] ? 1 + f[6].valueStart : null,
    },
  };
}

// SenderKeyMessage = version || protobuf || XEdDSA signature[64].
export function parseSenderKeyMessage(body) {
  const buf = Buffer.from(body);
  const proto = buf.subarray(1, buf.length - 64);
  const fields = readFields(proto);
  const f = byNumber(fields);
  return {
    version: buf[0],
    fieldOrder: fields.map((x) => x.field),
    distributionUuid: f[1]?.value,
    chainId: f[2]?.value,
    iteration: f[3]?.value,
    ciphertext: f[4]?.value,
    signature: buf.subarray(buf.length - 64),
    offsets: {
      ciphertext: f[4] ? 1 + f[4].valueStart : null,
      signature: buf.length - 64,
    },
  };
}

// SenderKeyDistributionMessage = version || protobuf (unsigned).
export function parseSkdm(body) {
  const buf = Buffer.from(body);
  const fields = readFields(buf.subarray(1));
  const f = byNumber(fields);
  return {
    version: buf[0],
    fieldOrder: fields.map((x) => x.field),
    distributionUuid: f[1]?.value,
    chainId: f[2]?.value,
    iteration: f[3]?.value,
    chainKey: f[4]?.value,
    signingKey: f[5]?.value,
  };
}

// "xxxxxxxx-xxxx-..." for 16 bytes.
export function uuidString(bytes) {
  const h = Buffer.from(bytes).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// A copy of `body` with bit `bit` (0 = least significant) of byte `index` flipped.
export function flipBit(body, index, bit = 0) {
  const copy = Buffer.from(body);
  if (index < 0 || index >= copy.length) throw new Error(`flipBit: index ${index} outside ${copy.length} bytes`);
  copy[index] ^= 1 << bit;
  return copy;
}
