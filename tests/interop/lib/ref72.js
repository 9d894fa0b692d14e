// A reference player backed by the official @signalapp/libsignal-client
// 0.72.1 (npm alias libsignal-client-x3dh), the last official release that
// starts classic X3DH sessions.
//
// It writes v3 messages with version byte 0x34 (Rust's CURRENT_VERSION is 4;
// the high nibble 3 is the message version) and reads 0x33 and 0x34. It checks
// the signed-prekey signature itself (processPreKeyBundle throws).

import { Buffer } from 'node:buffer';
import S from 'libsignal-client-x3dh';
import {
  b64, unb64, requestBytes, hasRequestBytes, plaintextFields, normalizeType, parseBundle, peerKey,
} from './common.js';
import { OfficialPlayer } from './official.js';

export { S as Signal72 };

// Stores keep serialized records, so no native object is shared between a
// failed operation and the next one.
class SessionStore extends S.SessionStore {
  constructor() {
    super();
    this.records = new Map(); // "name.device" -> Buffer
  }

  async saveSession(address, record) {
    this.records.set(address.toString(), Buffer.from(record.serialize()));
  }

  async getSession(address) {
    const bytes = this.records.get(address.toString());
    return bytes === undefined ? null : S.SessionRecord.deserialize(bytes);
  }

  async getExistingSessions(addresses) {
    return Promise.all(addresses.map(async (a) => {
      const r = await this.getSession(a);
      if (!r) throw new Error(`no session for ${a.toString()}`);
      return r;
    }));
  }
}

class IdentityStore extends S.IdentityKeyStore {
  constructor(player) {
    super();
    this.player = player;
    this.known = new Map(); // address name -> Buffer
  }

  async getIdentityKey() { return this.player.identity.privateKey; }
  async getLocalRegistrationId() { return this.player.registrationId; }

  async saveIdentity(address, key) {
    const name = address.name();
    const bytes = Buffer.from(key.serialize());
    const old = this.known.get(name);
    this.known.set(name, bytes);
    return old && !old.equals(bytes) ? S.IdentityChange.ReplacedExisting : S.IdentityChange.NewOrUnchanged;
  }

  // Fresh identities in every test: trust everything.
  async isTrustedIdentity() { return true; }

  async getIdentity(address) {
    const bytes = this.known.get(address.name());
    return bytes ? S.PublicKey.deserialize(bytes) : null;
  }
}

// The prekey stores read the key material the player generated
// (OfficialPlayer.generate) and build records on demand.
class PreKeyStore extends S.PreKeyStore {
  constructor(player) {
    super();
    this.player = player;
  }

  async savePreKey() { throw new Error('prekeys are made by generate'); }

  async getPreKey(id) {
    const k = this.player.preKeys.get(id);
    if (!k) throw new Error(`no prekey ${id}`);
    return S.PreKeyRecord.new(id, S.PublicKey.deserialize(k.publicKey), S.PrivateKey.deserialize(k.privateKey));
  }

  async removePreKey(id) { this.player.preKeys.delete(id); }
}

class SignedPreKeyStore extends S.SignedPreKeyStore {
  constructor(player) {
    super();
    this.player = player;
  }

  async saveSignedPreKey() { throw new Error('signed prekeys are made by generate'); }

  async getSignedPreKey(id) {
    const k = this.player.signedPreKey;
    if (!k || k.id !== id) throw new Error(`no signed prekey ${id}`);
    return S.SignedPreKeyRecord.new(id, 0, S.PublicKey.deserialize(k.publicKey),
      S.PrivateKey.deserialize(k.privateKey), k.signature);
  }
}

// Classic X3DH only: no Kyber prekeys exist.
class NoKyberStore extends S.KyberPreKeyStore {
  async saveKyberPreKey() { throw new Error('no kyber prekeys in X3DH tests'); }
  async getKyberPreKey(id) { throw new Error(`no kyber prekey ${id}`); }
  async markKyberPreKeyUsed() {}
}

export class Ref72 extends OfficialPlayer {
  static async spawn() {
    return new Ref72();
  }

  constructor() {
    super('@signalapp/libsignal-client@0.72.1', S);
    this.sessions = new SessionStore();
    this.identities = new IdentityStore(this);
    this.preKeyStore = new PreKeyStore(this);
    this.signedPreKeyStore = new SignedPreKeyStore(this);
    this.kyber = new NoKyberStore();
  }

  commands() {
    return {
      ...super.commands(),
      process_bundle: this.processBundle,
      encrypt: this.encrypt,
      decrypt: this.decrypt,
    };
  }

  async info() {
    return { versions: { implementation: '@signalapp/libsignal-client', version: '0.72.1', message_version: 3 } };
  }

  // The library's address for a request's peer/device_id.
  peerAddress(args) {
    peerKey(args.peer, args.device_id); // validates
    return S.ProtocolAddress.new(args.peer, args.device_id ?? 1);
  }

  async processBundle(args) {
    this.requireIdentity();
    const address = this.peerAddress(args);
    const b = parseBundle(args.bundle);
    const bundle = S.PreKeyBundle.new(
      b.registrationId, b.deviceId,
      b.preKeyId, b.preKey ? S.PublicKey.deserialize(b.preKey) : null,
      b.signedPreKeyId, S.PublicKey.deserialize(b.signedPreKey), b.signedPreKeySignature,
      S.PublicKey.deserialize(b.identityKey));
    await S.processPreKeyBundle(bundle, address, this.sessions, this.identities);
    const answer = { one_time_prekey_used: b.preKey !== null };
    if (hasRequestBytes(args)) Object.assign(answer, await this.encrypt(args));
    return answer;
  }

  // Raw forms, used by encrypt/decrypt and by bench.js.
  async encryptBytes(address, plaintext) {
    const msg = await S.signalEncrypt(Buffer.from(plaintext), address, this.sessions, this.identities);
    const code = msg.type();
    if (code !== S.CiphertextMessageType.PreKey && code !== S.CiphertextMessageType.Whisper) {
      throw new Error(`unexpected message type ${code}`);
    }
    return { type: code === S.CiphertextMessageType.PreKey ? 'prekey' : 'whisper', body: Buffer.from(msg.serialize()) };
  }

  async decryptBytes(address, type, body) {
    if (type === 'prekey') {
      return S.signalDecryptPreKey(S.PreKeySignalMessage.deserialize(body), address,
        this.sessions, this.identities, this.preKeyStore, this.signedPreKeyStore, this.kyber);
    }
    return S.signalDecrypt(S.SignalMessage.deserialize(body), address, this.sessions, this.identities);
  }

  async encrypt(args) {
    this.requireIdentity();
    const { type, body } = await this.encryptBytes(this.peerAddress(args), requestBytes(args));
    return { type, type_code: type === 'prekey' ? 3 : 2, body: b64(body) };
  }

  async decrypt(args) {
    this.requireIdentity();
    const type = normalizeType(args.type);
    const plaintext = await this.decryptBytes(this.peerAddress(args), type, unb64(args.body, 'body'));
    return plaintextFields(plaintext);
  }
}
