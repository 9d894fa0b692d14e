// A protocol client for the tests: the real WebSocket client (npm ws) carrying
// Frames encoded with protobufjs from proto/parley.proto, and XEdDSA signatures
// from curve25519-js (libsignal's encoding).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import crypto from 'node:crypto';
import protobuf from 'protobufjs';
import WebSocket from 'ws';
import curve from 'curve25519-js';

const protoPath = fileURLToPath(new URL('../../../proto/parley.proto', import.meta.url));
const root = protobuf.parse(readFileSync(protoPath, 'utf8'), { keepCase: true }).root;
export const Frame = root.lookupType('parley.Frame');
export const ErrorCode = root.lookupEnum('parley.ErrorCode').values;

const WAIT_MS = 5000;

export function identity() {
  const kp = curve.generateKeyPair(crypto.randomBytes(32));
  return { priv: Buffer.from(kp.private), pub: Buffer.concat([Buffer.from([5]), Buffer.from(kp.public)]) };
}

export function authMessage(nonce, accountId, deviceId) {
  const dev = Buffer.alloc(4);
  dev.writeUInt32BE(deviceId);
  return Buffer.concat([Buffer.from('parley-auth-v1'), nonce, accountId, dev]);
}

export function sign(priv, message) {
  return Buffer.from(curve.sign(priv, message, crypto.randomBytes(64)));
}

// A device's keys for the directory: a signed prekey (XEdDSA by the identity key over
// 0x05 || u) and one-time prekeys with ids first, first+1, ...
export function signedPreKey(ident, keyId = 1) {
  const kp = identity();
  return { priv: kp.priv, wire: { id: keyId, public_key: kp.pub, signature: sign(ident.priv, kp.pub) } };
}

export function preKeys(first, n) {
  return Array.from({ length: n }, (_, i) => ({ id: first + i, public_key: identity().pub }));
}

export function uploadKeys(ident, { signedId = 1, prekeys = 10, firstPrekey = 1 } = {}) {
  return { signed_prekey: signedPreKey(ident, signedId).wire, prekeys: preKeys(firstPrekey, prekeys) };
}

export class Client {
  // localAddress: the loopback address to connect from (the server limits per address).
  static open(url, { localAddress } = {}) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false, localAddress });
      const c = new Client(ws);
      const timer = setTimeout(() => reject(new Error('no Hello')), WAIT_MS);
      ws.on('error', (e) => { clearTimeout(timer); reject(e); });
      c.next().then((f) => { clearTimeout(timer); c.first = f; c.hello = f.hello; resolve(c); }, reject);
    });
  }

  constructor(ws) {
    this.ws = ws;
    this.queue = [];        // frames nobody asked for: Deliver pushes, errors without an id
    this.waiters = [];
    this.pending = new Map(); // request id -> resolve
    this.nextId = 1;
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    ws.on('message', (data, isBinary) => {
      const f = isBinary ? Frame.toObject(Frame.decode(data), { longs: Number, bytes: Buffer, defaults: false }) : { text: data.toString() };
      const answer = f.request_id && this.pending.get(Number(f.request_id));
      if (answer) {
        this.pending.delete(Number(f.request_id));
        answer(f);
        return;
      }
      const w = this.waiters.shift();
      if (w) w(f);
      else this.queue.push(f);
    });
  }

  // The next frame from the server, whatever it is.
  next(ms = WAIT_MS) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    return new Promise((resolve, reject) => {
      const waiter = (f) => { clearTimeout(timer); resolve(f); };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1); // a later frame must not go to a waiter that gave up
        reject(new Error('no frame from the server'));
      }, ms);
      this.waiters.push(waiter);
    });
  }

  sendRaw(bytes, opts = { binary: true }) {
    this.ws.send(bytes, opts);
  }

  // Sends {body: value} with a fresh request id; returns the answer carrying that id
  // (frames pushed meanwhile stay queued for next()).
  request(body, value, { version = 1, ms = WAIT_MS } = {}) {
    const request_id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.pending.delete(request_id); reject(new Error(`no answer to ${body} (request ${request_id})`)); }, ms);
      this.pending.set(request_id, (f) => { clearTimeout(timer); resolve(f); });
      this.ws.send(Frame.encode(Frame.create({ version, request_id, [body]: value })).finish());
    });
  }

  // Sends a frame that gets no answer (DeliverAck).
  push(body, value) {
    this.ws.send(Frame.encode(Frame.create({ version: 1, [body]: value })).finish());
  }

  close() {
    this.ws.close(1000);
    return this.closed;
  }
}

// Registers phone with a fresh identity and its first keys, reading the code from the
// file provider.
export async function register(url, phone, smsLog, id = identity(), { registrationId = 77, prekeys = 10 } = {}) {
  const c = await Client.open(url);
  const r = await c.request('request_code', { phone });
  if (!r.code_requested) throw new Error(`RequestCode: ${JSON.stringify(r)}`);
  const code = lastCode(smsLog, phone);
  const reg = await c.request('register', { phone, code, identity_key: id.pub, registration_id: registrationId, keys: uploadKeys(id, { prekeys }) });
  await c.close();
  if (!reg.registered) throw new Error(`Register: ${JSON.stringify(reg)}`);
  return { id, account: reg.registered.account_id, device: reg.registered.device_id };
}

export function lastCode(smsLog, phone) {
  const lines = readFileSync(smsLog, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const mine = lines.filter((l) => l.phone === phone);
  if (!mine.length) throw new Error(`no code for ${phone} in ${smsLog}`);
  return mine[mine.length - 1].code;
}

// Connect -> Challenge -> Authenticate; returns the Authenticate answer.
export async function authenticate(c, account, device, priv, { receive } = {}) {
  const connect = { account_id: account, device_id: device };
  if (receive !== undefined) connect.receive = receive;
  const ch = await c.request('connect', connect);
  if (!ch.challenge) return ch;
  return c.request('authenticate', { signature: sign(priv, authMessage(ch.challenge.nonce, account, device)) });
}
