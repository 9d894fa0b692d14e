// A reference player backed by the official @signalapp/libsignal-client
// 0.103.0: Sender Keys (groups), XEdDSA and safety numbers.
//
// 0.103.0 has no classic 1:1 sessions (PQXDH/SPQR only; "X3DH no longer
// supported"), so process_bundle/encrypt/decrypt answer ok:false here;
// generate and bundle still make keys (for XEdDSA and safety numbers).

import { Buffer } from 'node:buffer';
import crypto from 'node:crypto';
import * as S from '@signalapp/libsignal-client';
import { b64, unb64, requestBytes, plaintextFields } from './common.js';
import { OfficialPlayer } from './official.js';

export { S as Signal103 };

class SenderKeyStore extends S.SenderKeyStore {
  constructor() {
    super();
    this.records = new Map(); // "name.device/distribution" -> Buffer
  }

  static key(sender, distributionId) {
    return `${sender.toString()}/${distributionId.toLowerCase()}`;
  }

  async saveSenderKey(sender, distributionId, record) {
    this.records.set(SenderKeyStore.key(sender, distributionId), Buffer.from(record.serialize()));
  }

  async getSenderKey(sender, distributionId) {
    const bytes = this.records.get(SenderKeyStore.key(sender, distributionId));
    return bytes === undefined ? null : S.SenderKeyRecord.deserialize(bytes);
  }
}

const notHere = async () => {
  throw new Error('not supported by libsignal-client 0.103.0 (no classic X3DH)');
};

export class Ref103 extends OfficialPlayer {
  static async spawn() {
    return new Ref103();
  }

  constructor() {
    super('@signalapp/libsignal-client@0.103.0', S);
    this.senderKeys = new SenderKeyStore();
  }

  commands() {
    return {
      ...super.commands(),
      process_bundle: notHere,
      encrypt: notHere,
      decrypt: notHere,
      group_create: this.groupCreate,
      group_process: this.groupProcess,
      group_encrypt: this.groupEncrypt,
      group_decrypt: this.groupDecrypt,
    };
  }

  async info() {
    return { versions: { implementation: '@signalapp/libsignal-client', version: '0.103.0', sender_key_version: 3 } };
  }

  ownAddress() {
    this.requireIdentity();
    return S.ProtocolAddress.new(this.name, this.deviceId);
  }

  async groupCreate(args) {
    const distributionId = args.distribution_id ?? crypto.randomUUID();
    const skdm = await S.SenderKeyDistributionMessage.create(this.ownAddress(), distributionId, this.senderKeys);
    return {
      distribution_id: skdm.distributionId(),
      chain_id: skdm.chainId(),
      iteration: skdm.iteration(),
      skdm: b64(skdm.serialize()),
    };
  }

  async groupProcess(args) {
    this.requireIdentity();
    if (typeof args.sender !== 'string') throw new Error('group_process: missing sender');
    const skdm = S.SenderKeyDistributionMessage.deserialize(unb64(args.skdm, 'skdm'));
    const sender = S.ProtocolAddress.new(args.sender, args.device_id ?? 1);
    await S.processSenderKeyDistributionMessage(sender, skdm, this.senderKeys);
    return { distribution_id: skdm.distributionId(), chain_id: skdm.chainId(), iteration: skdm.iteration() };
  }

  async groupEncrypt(args) {
    if (typeof args.distribution_id !== 'string') throw new Error('group_encrypt: missing distribution_id');
    const msg = await S.groupEncrypt(this.ownAddress(), args.distribution_id, this.senderKeys, requestBytes(args));
    return { type: 'senderkey', type_code: msg.type(), body: b64(msg.serialize()) };
  }

  async groupDecrypt(args) {
    this.requireIdentity();
    if (typeof args.sender !== 'string') throw new Error('group_decrypt: missing sender');
    const sender = S.ProtocolAddress.new(args.sender, args.device_id ?? 1);
    const plaintext = await S.groupDecrypt(sender, this.senderKeys, unb64(args.body, 'body'));
    return plaintextFields(plaintext);
  }
}
