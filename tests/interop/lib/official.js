// Parts shared by the two players backed by the official library
// (@signalapp/libsignal-client 0.72.1 in ref72.js, 0.103.0 in ref103.js):
// identity, XEdDSA and safety numbers. Both versions have the same API for
// these; the module is passed in.

import { Buffer } from 'node:buffer';
import {
  Player, b64, unb64, requestBytes, randomRegistrationId,
} from './common.js';

// Signal's safety-number iteration count (Signal-Desktop ts/util/safetyNumber.ts,
// Signal-Android); the only value the tests use.
export const FINGERPRINT_ITERATIONS = 5200;

// Fingerprint.new(...) with the official library `S`: digits (60 characters)
// and the scannable encoding (CombinedFingerprints protobuf).
export function safetyNumber(S, { version, localId, localKey, remoteId, remoteKey }) {
  const fp = S.Fingerprint.new(
    FINGERPRINT_ITERATIONS, version,
    Buffer.from(localId), S.PublicKey.deserialize(Buffer.from(localKey)),
    Buffer.from(remoteId), S.PublicKey.deserialize(Buffer.from(remoteKey)));
  return {
    digits: fp.displayableFingerprint().toString(),
    scannable: Buffer.from(fp.scannableFingerprint().toBuffer()),
  };
}

// True when `signature` verifies under the 33-byte `publicKey`, according to
// the official PublicKey.verify. A key that does not parse gives false.
export function officialVerify(S, publicKey, message, signature) {
  let key;
  try {
    key = S.PublicKey.deserialize(Buffer.from(publicKey));
  } catch {
    return false;
  }
  return key.verify(Buffer.from(message), Buffer.from(signature));
}

export class OfficialPlayer extends Player {
  constructor(label, S) {
    super(label);
    this.S = S;
    this.identity = null; // IdentityKeyPair
    this.registrationId = 0;
    this.name = null;
    this.deviceId = 1;
    this.signedPreKey = null;
    this.preKeys = new Map();
  }

  commands() {
    return {
      info: this.info,
      generate: this.generate,
      bundle: this.bundle,
      xeddsa_sign: this.xeddsaSign,
      xeddsa_verify: this.xeddsaVerify,
      safety_number: this.safetyNumber,
      quit: async () => ({}),
    };
  }

  requireIdentity() {
    if (!this.identity) throw new Error('no identity: call generate first');
  }

  // Identity, signed prekey and one-time prekeys. The private keys stay here
  // (serialized); ref72's stores build records from them on demand.
  async generate(args) {
    if (this.identity) throw new Error('identity already generated');
    if (typeof args.name !== 'string' || args.name === '') throw new Error('generate: missing name');
    const first = args.prekey_id ?? 1;
    const count = args.prekey_count ?? 1;
    if (first < 1) throw new Error('one-time prekey ids start at 1');
    const S = this.S;
    this.name = args.name;
    this.deviceId = args.device_id ?? 1;
    this.registrationId = args.registration_id ?? randomRegistrationId();
    this.identity = S.IdentityKeyPair.generate();
    const spk = S.PrivateKey.generate();
    this.signedPreKey = {
      id: args.signed_prekey_id ?? 1,
      privateKey: Buffer.from(spk.serialize()),
      publicKey: Buffer.from(spk.getPublicKey().serialize()),
      signature: Buffer.from(this.identity.privateKey.sign(spk.getPublicKey().serialize())),
    };
    this.preKeys = new Map(); // id -> { privateKey, publicKey } (Buffers), until used
    for (let id = first; id < first + count; id++) {
      const pk = S.PrivateKey.generate();
      this.preKeys.set(id, { privateKey: Buffer.from(pk.serialize()), publicKey: Buffer.from(pk.getPublicKey().serialize()) });
    }
    return { registration_id: this.registrationId, bundle: this.makeBundle(true) };
  }

  makeBundle(withPreKey) {
    let preKeyId = null;
    if (withPreKey && this.preKeys.size > 0) preKeyId = Math.min(...this.preKeys.keys());
    return {
      registration_id: this.registrationId,
      device_id: this.deviceId,
      identity_key: b64(this.identity.publicKey.serialize()),
      signed_prekey_id: this.signedPreKey.id,
      signed_prekey: b64(this.signedPreKey.publicKey),
      signed_prekey_signature: b64(this.signedPreKey.signature),
      prekey_id: preKeyId,
      prekey: preKeyId === null ? null : b64(this.preKeys.get(preKeyId).publicKey),
    };
  }

  async bundle(args) {
    this.requireIdentity();
    return { bundle: this.makeBundle(args.prekey ?? true) };
  }

  async xeddsaSign(args) {
    this.requireIdentity();
    const signature = this.identity.privateKey.sign(requestBytes(args, 'message'));
    return { public_key: b64(this.identity.publicKey.serialize()), signature: b64(signature) };
  }

  async xeddsaVerify(args) {
    const publicKey = unb64(args.public_key, 'public_key');
    const signature = unb64(args.signature, 'signature');
    return { valid: officialVerify(this.S, publicKey, requestBytes(args, 'message'), signature) };
  }

  async safetyNumber(args) {
    this.requireIdentity();
    const id = (name) => {
      if (typeof args[name] === 'string') return Buffer.from(args[name], 'utf8');
      if (typeof args[`${name}_b64`] === 'string') return unb64(args[`${name}_b64`], `${name}_b64`);
      throw new Error(`safety_number: missing ${name} or ${name}_b64`);
    };
    const { digits, scannable } = safetyNumber(this.S, {
      version: args.version ?? 2,
      localId: id('local_id'),
      localKey: this.identity.publicKey.serialize(),
      remoteId: id('remote_id'),
      remoteKey: unb64(args.remote_identity_key, 'remote_identity_key'),
    });
    return { digits, scannable: b64(scannable) };
  }
}
