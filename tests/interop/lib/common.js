// Helpers shared by the reference players (ref6, ref72, ref103) and the tests.
//
// Every player (the parley-signal driver and the reference wrappers) speaks the
// same request/answer vocabulary: `await player.cmd(name, args)` resolves to an
// answer object `{ id, cmd, ok: true, ... }` or `{ id, cmd, ok: false, error }`.
// Protocol failures (bad MAC, replay, bad bundle ...) are answers with
// ok:false, never exceptions; only a broken player (timeout, crash, garbled
// output) makes cmd() reject.

import { Buffer, isUtf8 } from 'node:buffer';
import crypto from 'node:crypto';

export function b64(buf) {
  return Buffer.from(buf).toString('base64');
}

// Standard padded base64 only; anything else is a caller bug.
export function unb64(text, what = 'value') {
  if (typeof text !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
    throw new Error(`${what}: not standard padded base64`);
  }
  return Buffer.from(text, 'base64');
}

// The bytes of a request's `plaintext` (UTF-8) or `plaintext_b64`.
export function requestBytes(args, field = 'plaintext') {
  if (typeof args[field] === 'string') return Buffer.from(args[field], 'utf8');
  if (typeof args[`${field}_b64`] === 'string') return unb64(args[`${field}_b64`], `${field}_b64`);
  throw new Error(`missing ${field} or ${field}_b64`);
}

export function hasRequestBytes(args, field = 'plaintext') {
  return typeof args[field] === 'string' || typeof args[`${field}_b64`] === 'string';
}

// The `plaintext` answer field: the text when the bytes are well-formed UTF-8
// (NUL included), else null. `plaintext_b64` always carries the bytes.
export function textOrNull(bytes) {
  const buf = Buffer.from(bytes);
  return isUtf8(buf) ? buf.toString('utf8') : null;
}

// Answer fields for a decrypted plaintext.
export function plaintextFields(buf) {
  return { plaintext: textOrNull(buf), plaintext_b64: b64(buf) };
}

// Random 14-bit registration id, never 0.
export function randomRegistrationId() {
  return 1 + crypto.randomInt(0x3fff);
}

// Message type names and codes as parley-signal reports them.
export const TYPE_CODES = { prekey: 3, whisper: 2, senderkey: 7 };

// `type` in a decrypt request may be a name or a code; libsignal@6 calls
// SignalMessages type 1.
export function normalizeType(type) {
  if (type === 'prekey' || type === 3) return 'prekey';
  if (type === 'whisper' || type === 2 || type === 1) return 'whisper';
  throw new Error(`unknown message type ${JSON.stringify(type)}`);
}

// The bundle object of the parley-signal contract, parsed into Buffers.
export function parseBundle(bundle) {
  if (!bundle || typeof bundle !== 'object') throw new Error('bundle: not an object');
  const need = (k) => {
    if (bundle[k] === undefined || bundle[k] === null) throw new Error(`bundle: missing ${k}`);
    return bundle[k];
  };
  const hasPreKey = bundle.prekey !== null && bundle.prekey !== undefined;
  return {
    registrationId: need('registration_id'),
    deviceId: need('device_id'),
    identityKey: unb64(need('identity_key'), 'identity_key'),
    signedPreKeyId: need('signed_prekey_id'),
    signedPreKey: unb64(need('signed_prekey'), 'signed_prekey'),
    signedPreKeySignature: unb64(need('signed_prekey_signature'), 'signed_prekey_signature'),
    preKeyId: hasPreKey ? need('prekey_id') : null,
    preKey: hasPreKey ? unb64(bundle.prekey, 'prekey') : null,
  };
}

// Base class of the reference players: a dispatch table from command name to
// method, with the id/cmd echo and error-to-answer conversion that
// parley-signal does.
export class Player {
  constructor(label) {
    this.label = label;
    this.nextId = 1;
  }

  async cmd(name, args = {}) {
    const id = this.nextId++;
    const method = this.commands()[name];
    if (!method) return { id, cmd: name, ok: false, error: `unknown command ${name}` };
    try {
      const fields = await method.call(this, args);
      return { id, cmd: name, ok: true, ...fields };
    } catch (err) {
      return { id, cmd: name, ok: false, error: describeError(err) };
    }
  }

  // Subclasses return { name: method }.
  commands() {
    return {};
  }

  async close() {}
}

export function describeError(err) {
  if (!(err instanceof Error)) return String(err);
  const name = err.name && err.name !== 'Error' ? `${err.name}: ` : '';
  const code = err.code !== undefined ? ` [code ${err.code}]` : '';
  return `${name}${err.message}${code}`;
}

export function peerKey(peer, deviceId) {
  if (typeof peer !== 'string' || peer === '') throw new Error('missing peer');
  return `${peer}.${deviceId ?? 1}`;
}
