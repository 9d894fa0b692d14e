// A reference player backed by libsignal@6.0.0 (WhiskeySockets/libsignal-node).
//
// It plays one Signal identity with the parley-signal command vocabulary
// (generate, bundle, process_bundle, encrypt, decrypt, xeddsa_sign,
// xeddsa_verify). Quirks of this library that the wrapper works around
// (SIGNAL-NOTES 2.11):
//   * it does not check the signed-prekey signature of a bundle, so
//     process_bundle verifies it here (curve25519-js) and refuses a bad one;
//   * a failed decrypt mutates the in-memory session before the MAC check, so
//     the store keeps sessions only as serialized JSON and hands the library a
//     fresh copy on every load (a failed decrypt never stores its copy);
//   * encrypt() reports SignalMessages as type 1; we answer whisper/2;
//   * it writes version byte 0x33, and cannot read 0x34 (official Rust) bodies.

import { Buffer } from 'node:buffer';
import libsignal from 'libsignal';
import curve25519 from 'curve25519-js';
import {
  Player, b64, unb64, requestBytes, hasRequestBytes, plaintextFields,
  randomRegistrationId, normalizeType, parseBundle, peerKey,
} from './common.js';

const { curve, keyhelper, ProtocolAddress, SessionBuilder, SessionCipher, SessionRecord } = libsignal;

// libsignal@6 logs freely (console.error on every failed decrypt,
// console.info on session changes). Silence it unless REF_LOG=1.
async function quietly(fn) {
  if (process.env.REF_LOG === '1') return fn();
  const saved = { log: console.log, info: console.info, warn: console.warn, error: console.error };
  const nop = () => {};
  Object.assign(console, { log: nop, info: nop, warn: nop, error: nop });
  try {
    return await fn();
  } finally {
    Object.assign(console, saved);
  }
}

// True when `signature` is a valid XEdDSA signature by the 33-byte key
// `publicKey` (0x05 || u) over `message`.
export function xeddsaVerify(publicKey, message, signature) {
  if (publicKey.length !== 33 || publicKey[0] !== 0x05 || signature.length !== 64) return false;
  return curve25519.verify(publicKey.subarray(1), message, signature);
}

// In-memory storage in the shape libsignal@6 expects.
class Store {
  constructor() {
    this.identity = null;        // { pubKey, privKey }
    this.registrationId = 0;
    this.preKeys = new Map();    // id -> { pubKey, privKey }
    this.signedPreKeys = new Map();
    this.sessions = new Map();   // "name.device" -> JSON text
    this.identities = new Map(); // name -> identity key (first seen)
  }

  async getOurIdentity() { return this.identity; }
  async getOurRegistrationId() { return this.registrationId; }

  // Trust on first use would be the real policy; the tests exchange fresh
  // identities, so accept every key and remember the first one.
  async isTrustedIdentity(name, key) {
    if (!this.identities.has(name)) this.identities.set(name, Buffer.from(key));
    return true;
  }

  async loadSession(addr) {
    const text = this.sessions.get(addr);
    return text === undefined ? undefined : SessionRecord.deserialize(JSON.parse(text));
  }

  async storeSession(addr, record) {
    this.sessions.set(addr, JSON.stringify(record.serialize()));
  }

  async loadPreKey(id) {
    const kp = this.preKeys.get(id);
    return kp && { pubKey: kp.pubKey, privKey: kp.privKey };
  }

  async removePreKey(id) { this.preKeys.delete(id); }

  async loadSignedPreKey(id) {
    const spk = this.signedPreKeys.get(id);
    return spk && { pubKey: spk.keyPair.pubKey, privKey: spk.keyPair.privKey };
  }
}

export class Ref6 extends Player {
  static async spawn() {
    return new Ref6();
  }

  // checkSignedPreKey=false skips our signature check (bench.js only, to time
  // the library alone); tests always check.
  constructor({ checkSignedPreKey = true } = {}) {
    super('libsignal@6.0.0');
    this.checkSignedPreKey = checkSignedPreKey;
    this.store = new Store();
    this.name = null;
    this.deviceId = 1;
    this.signedPreKeyId = null;
  }

  commands() {
    return {
      info: this.info,
      generate: this.generate,
      bundle: this.bundle,
      process_bundle: this.processBundle,
      encrypt: this.encrypt,
      decrypt: this.decrypt,
      xeddsa_sign: this.xeddsaSign,
      xeddsa_verify: this.xeddsaVerify,
      quit: async () => ({}),
    };
  }

  async info() {
    return { versions: { implementation: 'libsignal', version: '6.0.0', message_version: 3 } };
  }

  requireIdentity() {
    if (!this.store.identity) throw new Error('no identity: call generate first');
  }

  async generate(args) {
    if (this.store.identity) throw new Error('identity already generated');
    if (typeof args.name !== 'string' || args.name === '' || args.name.includes('.')) {
      throw new Error('generate: name must be a non-empty string without "."');
    }
    const first = args.prekey_id ?? 1;
    const count = args.prekey_count ?? 1;
    if (first < 1) throw new Error('one-time prekey ids start at 1');
    this.name = args.name;
    this.deviceId = args.device_id ?? 1;
    this.store.registrationId = args.registration_id ?? randomRegistrationId();
    this.store.identity = keyhelper.generateIdentityKeyPair();
    this.signedPreKeyId = args.signed_prekey_id ?? 1;
    this.store.signedPreKeys.set(this.signedPreKeyId,
      keyhelper.generateSignedPreKey(this.store.identity, this.signedPreKeyId));
    for (let id = first; id < first + count; id++) {
      this.store.preKeys.set(id, keyhelper.generatePreKey(id).keyPair);
    }
    return { registration_id: this.store.registrationId, bundle: this.makeBundle(true) };
  }

  makeBundle(withPreKey) {
    const spk = this.store.signedPreKeys.get(this.signedPreKeyId);
    let preKeyId = null;
    if (withPreKey && this.store.preKeys.size > 0) preKeyId = Math.min(...this.store.preKeys.keys());
    return {
      registration_id: this.store.registrationId,
      device_id: this.deviceId,
      identity_key: b64(this.store.identity.pubKey),
      signed_prekey_id: this.signedPreKeyId,
      signed_prekey: b64(spk.keyPair.pubKey),
      signed_prekey_signature: b64(spk.signature),
      prekey_id: preKeyId,
      prekey: preKeyId === null ? null : b64(this.store.preKeys.get(preKeyId).pubKey),
    };
  }

  async bundle(args) {
    this.requireIdentity();
    return { bundle: this.makeBundle(args.prekey ?? true) };
  }

  // The library's address for a request's peer/device_id.
  peerAddress(args) {
    peerKey(args.peer, args.device_id); // validates
    return new ProtocolAddress(args.peer, args.device_id ?? 1);
  }

  async processBundle(args) {
    this.requireIdentity();
    const addr = this.peerAddress(args);
    const b = parseBundle(args.bundle);
    // libsignal@6 skips this check; a real client must not.
    if (this.checkSignedPreKey && !xeddsaVerify(b.identityKey, b.signedPreKey, b.signedPreKeySignature)) {
      throw new Error('bundle refused: invalid signed prekey signature');
    }
    const device = {
      registrationId: b.registrationId,
      identityKey: b.identityKey,
      signedPreKey: { keyId: b.signedPreKeyId, publicKey: b.signedPreKey, signature: b.signedPreKeySignature },
      preKey: b.preKey ? { keyId: b.preKeyId, publicKey: b.preKey } : undefined,
    };
    await quietly(() => new SessionBuilder(this.store, addr).initOutgoing(device));
    const answer = { one_time_prekey_used: b.preKey !== null };
    if (hasRequestBytes(args)) Object.assign(answer, await this.encrypt(args));
    return answer;
  }

  // Raw forms, used by encrypt/decrypt and by bench.js.
  async encryptBytes(addr, plaintext) {
    const out = await quietly(() => new SessionCipher(this.store, addr).encrypt(Buffer.from(plaintext)));
    const type = out.type === 3 ? 'prekey' : 'whisper';
    return { type, body: Buffer.from(out.body) };
  }

  async decryptBytes(addr, type, body) {
    const cipher = new SessionCipher(this.store, addr);
    if (type === 'prekey') return quietly(() => cipher.decryptPreKeyWhisperMessage(body));
    return quietly(() => cipher.decryptWhisperMessage(body));
  }

  async encrypt(args) {
    this.requireIdentity();
    const addr = this.peerAddress(args);
    const { type, body } = await this.encryptBytes(addr, requestBytes(args));
    return { type, type_code: type === 'prekey' ? 3 : 2, body: b64(body) };
  }

  async decrypt(args) {
    this.requireIdentity();
    const addr = this.peerAddress(args);
    const type = normalizeType(args.type);
    const plaintext = await this.decryptBytes(addr, type, unb64(args.body, 'body'));
    return plaintextFields(plaintext);
  }

  async xeddsaSign(args) {
    this.requireIdentity();
    const message = requestBytes(args, 'message');
    // Deterministic: curve25519-js without a random argument.
    const signature = curve.calculateSignature(this.store.identity.privKey, message);
    return { public_key: b64(this.store.identity.pubKey), signature: b64(signature) };
  }

  async xeddsaVerify(args) {
    const publicKey = unb64(args.public_key, 'public_key');
    const signature = unb64(args.signature, 'signature');
    return { valid: xeddsaVerify(publicKey, requestBytes(args, 'message'), signature) };
  }
}
