// The crash workload (issue 19): senders and recipients that behave like phones, while
// parleyd is killed with SIGKILL again and again and once stopped with SIGSTOP long
// enough for every client's heartbeat to give up. At the end every device drains on a
// fresh connection and the run compares what the server acknowledged with what arrived.
//
// Used by test/crash.test.js (a short form in `make test`) and by crash.js (the long
// form, by hand). Devices are made offline by `parleyctl provision`; the clients are the
// npm ws client with frames encoded by protobufjs from proto/parley.proto.
//
// What counts:
//   lost        acknowledged by a SendAck, never delivered to its recipient
//   duplicated  delivered under two different inbox seqs (stored twice); the same seq
//               delivered again after a lost DeliverAck is a redelivery, which is allowed
//   misordered  a sender's messages first seen by their recipient out of send order
//   receipts    each delivered message gets exactly one DELIVERED receipt stored for its
//               sender (missing or doubled ones are counted)
//   left        envelopes still in the data file after everything drained and parleyd
//               stopped cleanly
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { Frame, ErrorCode, authMessage, sign } from './client.js';
import { Parleyd, SANITIZER, tempDir, removeDir } from './parleyd.js';

// parleyd runs in a process group of its own (a stopped process in an orphaned group
// would get SIGHUP), so it would outlive this process: whatever is still running goes
// with it.
const live = new Set();
process.on('exit', () => { for (const c of live) c.kill('SIGKILL'); });

const hex = (b) => Buffer.from(b).toString('hex');
const DELIVERED = 1;
const BODY_MAGIC = Buffer.from('crash-v1');

function encode(body, value, request_id) {
  return Frame.encode(Frame.create({ version: 1, request_id, [body]: value })).finish();
}

// A message body: magic, sender index, message index, then bytes derived from both
// (opaque ciphertext as far as the server knows; type 2). The same for every resend, so
// a recipient can check each body byte for byte.
const BODY_HEAD = BODY_MAGIC.length + 8;
function messageBody(sender, index, size) {
  const b = Buffer.alloc(Math.max(size, BODY_HEAD));
  BODY_MAGIC.copy(b, 0);
  b.writeUInt32BE(sender, BODY_MAGIC.length);
  b.writeUInt32BE(index, BODY_MAGIC.length + 4);
  for (let off = BODY_HEAD, n = 0; off < b.length; n++) {
    const h = crypto.createHash('sha256').update(`${sender}:${index}:${n}`).digest();
    off += h.copy(b, off);
  }
  return b;
}

// Ids as libparley makes them: 48-bit ms time, then 80 random bits.
function messageId() {
  const id = crypto.randomBytes(16);
  id.writeUIntBE(Date.now(), 0, 6);
  return id;
}

// One device and its connections to parleyd, reconnecting with backoff and jitter for as
// long as the device is wanted. Role hooks: onReady(dev, conn) when a connection is
// authenticated (it becomes the one to send on), onEnvelope(dev, e, seq) for each stored
// envelope, onFrame(dev, conn, f) for the rest.
//
// Normal mode: one connection at a time; a connection silent past the heartbeat is
// dropped, and a handshake the server does not answer soon is abandoned, so while the
// server is stopped the abandoned attempts pile up in its backlog.
// Pile-up mode (run.pileUp): a phone that abandons nothing: a connection silent past the
// heartbeat is kept (it still stores and acks whatever arrives on it) and, while the
// device has no live authenticated connection, another is opened every second (at most
// 8 at once). When a stopped server wakes, the old connection's acks and several new
// connections of the device reach it together, each a receiving connection that is
// handed envelopes and acked until the newest replaces the others (close 4000).
class Device {
  constructor(run, key, role) {
    this.run = run;
    this.phone = key.phone;
    this.account = key.account;
    this.priv = key.priv;
    this.role = role;
    this.conns = new Set();
    this.current = null;      // the newest authenticated connection
    this.wanted = false;
    this.backoff = 50;
    this.attemptTimer = null;
    this.connections = 0;
    this.gaveUp = 0;          // connections the heartbeat or a timeout gave up on
    this.replaced = 0;        // closed by the server with 4000 (pile-up mode)
    this.processing = Promise.resolve();
    this.timers = new Set();
  }

  log(what) { this.run.log(`${this.role.name}: ${what}`); }

  get ready() { return !!this.current; }

  start() {
    this.wanted = true;
    this.attempt();
  }

  stop() {
    this.wanted = false;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.attemptTimer = null;
    for (const c of this.conns) c.ws.terminate();
    this.conns.clear();
    this.current = null;
  }

  later(ms, fn) {
    const t = setTimeout(() => { this.timers.delete(t); fn(); }, ms);
    this.timers.add(t);
    return t;
  }

  // Opens a connection now, and in pile-up mode schedules the next attempt.
  // Pile-up mode, except while draining at the end (one connection, so its acks count).
  get pileUp() { return this.run.pileUp && !this.draining; }

  attempt() {
    this.attemptTimer = null;
    if (!this.wanted || this.current) return;
    if (!this.pileUp && this.conns.size) return;
    if (this.conns.size < 8) this.open();
    if (this.pileUp) this.attemptTimer = this.later(Math.min(1000, this.run.heartbeat * 1000 / 6), () => this.attempt());
  }

  // The newest authenticated connection that is not silent, or null.
  pickCurrent() {
    this.current = null;
    for (const c of this.conns) if (c.ready && !c.silent && (!this.current || c.authAt > this.current.authAt)) this.current = c;
  }

  retry() {
    if (!this.wanted || this.current || this.attemptTimer) return;
    if (!this.pileUp && this.conns.size) return;
    const wait = this.backoff / 2 + Math.random() * this.backoff;
    this.backoff = Math.min(this.backoff * 2, 1000);
    this.attemptTimer = this.later(wait, () => this.attempt());
  }

  open() {
    const hb = this.run.heartbeat * 1000;
    const handshakeTimeout = this.pileUp ? 4 * hb : Math.max(500, hb / 6);
    const ws = new WebSocket(this.run.url(), { perMessageDeflate: false, handshakeTimeout });
    const conn = { ws, ready: false, drained: false, nextRid: 1, inFlight: new Map(), lastHeard: Date.now() };
    this.conns.add(conn);
    this.connections++;
    let pinger = null;
    const giveUp = (why) => {
      if (!this.conns.has(conn)) return;
      this.gaveUp++;
      this.log(`gave up on a connection: ${why}`);
      ws.terminate();
    };
    // The heartbeat as a phone runs it: a ping every third of the interval, and a
    // connection silent for two thirds of it is dead (a stopped server never answers).
    // In pile-up mode it is only set aside, until it is silent for four intervals.
    const beat = () => {
      const silence = Date.now() - conn.lastHeard;
      if (this.pileUp && silence > (2 * hb) / 3 && silence <= 4 * hb) {
        if (!conn.silent) {
          conn.silent = true;
          this.gaveUp++;
          this.log('set a silent connection aside');
          if (conn === this.current) this.pickCurrent();
          if (!this.attemptTimer) this.attempt();
        }
      } else if (silence > (2 * hb) / 3) {
        return giveUp('no answer to the heartbeat');
      }
      if (ws.readyState === WebSocket.OPEN) ws.send(encode('ping', {}, 0));
    };
    const authTimer = setTimeout(() => { if (!conn.ready) giveUp('not authenticated in time'); }, 2 * hb + handshakeTimeout);
    ws.on('open', () => { conn.lastHeard = Date.now(); pinger = setInterval(beat, hb / 3); });
    ws.on('error', () => {}); // 'close' follows
    ws.on('close', (code) => {
      clearInterval(pinger);
      clearTimeout(authTimer);
      if (!this.conns.delete(conn)) return;
      if (code === 4000) {
        this.replaced++;
        // with one connection at a time nothing can be newer; piled-up ones replace each other
        if (!this.run.pileUp) this.run.anomaly(`${this.role.name}: its only connection was replaced (close 4000)`);
      }
      if (conn === this.current) this.pickCurrent();
      this.closed?.(conn);
      this.role.onClosed?.(this, conn);
      this.retry();
    });
    ws.on('message', (data, isBinary) => {
      if (!this.conns.has(conn)) return;
      conn.lastHeard = Date.now();
      if (conn.silent) { // it spoke again: the server woke
        conn.silent = false;
        if (conn.ready && (!this.current || conn.authAt > this.current.authAt)) this.current = conn;
      }
      if (!isBinary) return this.run.anomaly(`${this.role.name}: a text frame from the server`);
      const f = Frame.decode(data);
      if (f.hello) {
        this.send(conn, 'connect', { account_id: this.account, device_id: 1, receive: true });
      } else if (f.challenge) {
        const sig = sign(this.priv, authMessage(Buffer.from(f.challenge.nonce), this.account, 1));
        this.send(conn, 'authenticate', { signature: sig });
      } else if (f.authenticated) {
        conn.ready = true;
        conn.authAt = ++this.run.authCounter;
        this.current = conn;
        this.backoff = 50;
        this.role.onReady(this, conn);
      } else if (f.error && f.error.code === ErrorCode.CONNECTION_RATE_LIMITED) {
        ws.terminate(); // and come back after the backoff
      } else if (f.error && (f.error.code === ErrorCode.AUTH_FAILED || f.error.code === ErrorCode.NOT_AUTHENTICATED)) {
        this.run.anomaly(`${this.role.name}: ${f.error.reason}`);
        ws.terminate();
      } else if (f.deliver) {
        // A phone stores what a Deliver brought (it takes processMs per envelope), then
        // acks it on the connection it came on, if that is still up; what it stored stays
        // stored either way.
        const envs = f.deliver.envelopes, drained = f.deliver.drained;
        if (conn.firstDeliver === undefined) conn.firstDeliver = { empty: envs.length === 0, drained };
        const work = envs.length * (this.role.processMs ?? 0);
        this.processing = this.processing.then(() => (work ? sleep(work) : undefined)).then(() => {
          let top = 0;
          for (const e of envs) {
            const seq = Number(e.seq);
            if (seq > top) top = seq;
            this.role.onEnvelope(this, e, seq);
          }
          if (!this.conns.has(conn) || ws.readyState !== WebSocket.OPEN) return;
          if (top) ws.send(encode('deliver_ack', { up_to_seq: top }, 0));
          if (drained) conn.drained = true; // and its ack went out
        });
      } else if (f.pong) {
        // alive
      } else {
        this.role.onFrame(this, conn, f);
      }
    });
  }

  send(conn, body, value) {
    const rid = conn.nextRid++;
    conn.ws.send(encode(body, value, rid));
    return rid;
  }

  // Drains the inbox on one fresh connection at a time until a fresh connection's first
  // Deliver is empty and drained. The server answers a new receiving connection only
  // after the acks of the old ones are committed, so that empty Deliver proves every
  // ack of this device is durable.
  async drain(deadline) {
    this.draining = true;
    for (;;) {
      this.stop();
      this.start();
      while (!(this.current && (this.current.drained || this.current.firstDeliver?.empty))) {
        if (Date.now() > deadline) throw new Error(`${this.role.name} did not drain in time`);
        await sleep(20);
      }
      const conn = this.current;
      const { empty, drained } = conn.firstDeliver;
      // a clean close: the server reads the acks before the close frame
      const closed = new Promise((resolve) => { this.closed = (c) => { if (c === conn) resolve(); }; });
      this.wanted = false;
      conn.ws.close(1000);
      let timer;
      await Promise.race([closed, new Promise((resolve) => { timer = setTimeout(resolve, Math.max(0, deadline - Date.now())); })]);
      clearTimeout(timer);
      this.closed = null;
      if (empty && drained) break;
      if (Date.now() > deadline) throw new Error(`${this.role.name} did not drain in time`);
    }
    this.stop();
    this.draining = false;
  }
}

// Sends count messages to one recipient with up to window unacknowledged; after every
// reconnect every unacknowledged message goes again with the same id.
class Sender {
  constructor(run, index, recipient) {
    this.run = run;
    this.index = index;
    this.name = `sender ${index}`;
    this.recipient = recipient;      // its Device
    this.ids = [];                   // message index -> id
    this.unacked = new Map();        // id hex -> message index, in send order
    this.acked = new Set();          // id hex
    this.nextNew = 0;
    this.nextAt = 0;
    this.paced = null;
    this.refused = new Set();        // message indices refused once (their order may change)
    this.receipts = new Map();       // message id hex -> set of receipt seqs
    this.receiptSeqs = new Set();
  }

  get done() { return this.acked.size === this.run.messages; }

  // On the device's newest connection; its answer may come on any connection it went on.
  sendOne(dev, i) {
    const conn = dev.current;
    const rid = dev.send(conn, 'send', {
      message_id: this.ids[i], recipient_account: this.recipient.account,
      messages: [{ device_id: 1, type: 2, body: messageBody(this.index, i, this.run.payload) }],
    });
    conn.inFlight.set(rid, i);
  }

  // New messages at most at run.rate per second (0: as fast as the window allows).
  fill(dev) {
    while (dev.ready && dev.current.inFlight.size < this.run.window && this.nextNew < this.run.messages) {
      const now = Date.now();
      if (this.run.rate) {
        if (this.nextAt > now) {
          if (!this.paced) this.paced = dev.later(this.nextAt - now, () => { this.paced = null; this.fill(dev); });
          return;
        }
        this.nextAt = Math.max(this.nextAt, now - 100) + 1000 / this.run.rate;
      }
      const i = this.nextNew++;
      this.ids[i] = messageId();
      this.unacked.set(hex(this.ids[i]), i);
      this.sendOne(dev, i);
    }
  }

  // Sends that were in flight on a connection that closed go again on the newest one
  // (a connection that authenticated later may already be the one sent on).
  onClosed(dev, conn) {
    if (!dev.ready) return; // the next onReady resends everything unacknowledged
    for (const i of conn.inFlight.values()) if (this.unacked.has(hex(this.ids[i]))) this.sendOne(dev, i);
  }

  onReady(dev) {
    this.paced = null;
    for (const i of this.unacked.values()) this.sendOne(dev, i);
    this.fill(dev);
  }

  onFrame(dev, conn, f) {
    const i = f.request_id ? conn.inFlight.get(Number(f.request_id)) : undefined;
    if (i === undefined) return f.error ? this.run.anomaly(`${this.name}: error ${f.error.code} ${f.error.reason}`) : undefined;
    conn.inFlight.delete(Number(f.request_id));
    if (f.send_ack) {
      const h = hex(f.send_ack.message_id);
      if (h !== hex(this.ids[i])) this.run.anomaly(`${this.name}: SendAck for another id`);
      if (this.unacked.delete(h)) {
        this.acked.add(h);
        this.run.noteAck(); // the first SendAck of an id; a resend's is one more
      }
    } else if (f.error && (f.error.code === ErrorCode.RATE_LIMITED || f.error.code === ErrorCode.STORAGE_FULL)) {
      this.refused.add(i); // sent again after the pause: its order may change (not misordered)
      dev.later(f.error.retry_after_ms || 50, () => { if (dev.ready && this.unacked.has(hex(this.ids[i]))) this.sendOne(dev, i); });
      return;
    } else {
      this.run.anomaly(`${this.name}: ${JSON.stringify(f.error ?? Object.keys(f))}`);
    }
    this.fill(dev);
  }

  onEnvelope(dev, e, seq) {
    const r = e.receipt;
    if (!r || r.status !== DELIVERED) return this.run.anomaly(`${this.name}: an envelope that is not a delivered receipt`);
    if (this.receiptSeqs.has(seq)) return; // redelivered after a lost ack
    this.receiptSeqs.add(seq);
    for (const id of r.message_ids) {
      const h = hex(id);
      if (!this.receipts.has(h)) this.receipts.set(h, 0);
      this.receipts.set(h, this.receipts.get(h) + 1);
    }
  }
}

class Recipient {
  constructor(run, index, online) {
    this.run = run;
    this.index = index;
    this.online = online;
    this.name = `recipient ${index}${online ? '' : ' (offline)'}`;
    this.processMs = run.processMs;
    this.bySeq = new Map();   // seq -> key, for redeliveries
    this.byKey = new Map();   // sender account hex + id hex -> first seq
    this.first = [];          // [sender index, message index] in order of first delivery
    this.redelivered = 0;
    this.duplicated = 0;
    this.bad = 0;
  }

  onReady() {}

  onFrame(dev, conn, f) {
    if (f.error) this.run.anomaly(`${this.name}: error ${f.error.code} ${f.error.reason}`);
  }

  onEnvelope(dev, e, seq) {
    if (!e.body?.length || !e.message_id?.length) return this.run.anomaly(`${this.name}: an envelope without a body`);
    const key = hex(e.sender_account) + hex(e.message_id);
    if (this.bySeq.has(seq)) {
      if (this.bySeq.get(seq) !== key) this.run.anomaly(`${this.name}: seq ${seq} delivered with two contents`);
      this.redelivered++;
      return;
    }
    this.bySeq.set(seq, key);
    if (this.byKey.has(key)) {
      this.duplicated++;
      return;
    }
    this.byKey.set(key, seq);
    const body = Buffer.from(e.body);
    if (body.length < BODY_HEAD || !body.subarray(0, BODY_MAGIC.length).equals(BODY_MAGIC)) { this.bad++; return; }
    const from = body.readUInt32BE(BODY_MAGIC.length), index = body.readUInt32BE(BODY_MAGIC.length + 4);
    if (!body.equals(messageBody(from, index, this.run.payload))) { this.bad++; return; }
    this.first.push([from, index, hex(e.message_id)]);
  }
}

function provision(ctl, dataDir, keysFile, count) {
  execFileSync(ctl, ['provision', '--data', dataDir, '--count', String(count), '--keys', keysFile,
    '--first-phone', '+15559000000'], { encoding: 'utf8' });
  return readFileSync(keysFile, 'utf8').trim().split('\n').map((l) => {
    const [phone, account, , priv] = l.split(' ');
    return { phone, account: Buffer.from(account, 'hex'), priv: Buffer.from(priv, 'hex') };
  });
}

// Runs the workload once; returns the figures (and the anomalies seen on the way).
// opts: senders, online (recipients online throughout), messages (per sender), window
// (unacknowledged sends), payload (bytes), rate (new sends per second per sender),
// processMs (a recipient's time per envelope: recipients fall behind, so kills land
// while they receive and ack), kills, gapMs [min, max] between kills, stopMs (the
// SIGSTOP), heartbeat (seconds), pileUp (Device above), serverArgs, log, keep.
export async function crashRun(opts = {}) {
  const o = {
    senders: 8, online: 4, messages: 8000, window: 32, payload: 100, rate: 750, processMs: 2.5,
    kills: 8, gapMs: [1500, 4000],
    stopMs: 30000, heartbeat: 30, pileUp: false, serverArgs: [], log: () => {}, keep: false, deadlineMs: 600000, ...opts,
  };
  const ctl = process.env.PARLEYCTL;
  if (!ctl) throw new Error('PARLEYCTL is not set (ctest sets it)');
  const dir = tempDir();
  const dataDir = path.join(dir, 'var');
  const keys = provision(ctl, dataDir, path.join(dir, 'keys.txt'), 2 * o.senders);
  const t0 = Date.now();
  const deadline = t0 + o.deadlineMs;
  const anomalies = [];
  const events = [];
  const serverOpts = { dataDir, heartbeat: o.heartbeat, extra: ['--send-rate', '1000000', ...o.serverArgs], detached: true };
  let server = await Parleyd.start(serverOpts);
  const port = server.port;
  let ackCount = 0, lastAckAt = 0;
  const run = {
    messages: o.messages, window: o.window, payload: o.payload, heartbeat: o.heartbeat, rate: o.rate,
    processMs: o.processMs, pileUp: o.pileUp, authCounter: 0,
    url: () => `ws://127.0.0.1:${port}/`,
    log: (s) => o.log(`${((Date.now() - t0) / 1000).toFixed(1)}s ${s}`),
    anomaly: (s) => { if (anomalies.length < 100) anomalies.push(s); run.log(`ANOMALY ${s}`); },
    noteAck: () => { ackCount++; lastAckAt = Date.now(); },
  };

  // parleyd exits only when the chaos kills it; anything else is a crash, reported with
  // what it printed
  let expectExit = false;
  const watch = (d) => {
    live.add(d.child);
    d.exited.then(({ code, signal }) => {
      live.delete(d.child);
      if (!expectExit) run.anomaly(`parleyd exited by itself (${code ?? signal}): ${d.stderr.slice(-2000)}`);
      else if (SANITIZER.test(d.stderr)) run.anomaly(`sanitizer report from a killed parleyd: ${d.stderr.slice(-2000)}`);
    });
    return d;
  };
  watch(server);

  const recipients = [], senders = [], devices = [];
  for (let i = 0; i < o.senders; i++) {
    const r = new Recipient(run, i, i < o.online);
    const rd = new Device(run, keys[o.senders + i], r);
    recipients.push({ role: r, dev: rd });
    const s = new Sender(run, i, rd);
    const sd = new Device(run, keys[i], s);
    senders.push({ role: s, dev: sd });
    devices.push(sd, rd);
  }
  const stopAll = () => { for (const d of devices) d.stop(); };
  let killed = 0, stopped = false, cancelled = false, chaosFailed = null, chaos = Promise.resolve();
  try {
    for (const s of senders) s.dev.start();
    for (const r of recipients) if (r.role.online) r.dev.start();

    // the chaos: kills at random moments, and once a long SIGSTOP between two of them
    // (it stops at the first step after the run was cancelled)
    const stopAfter = o.stopAfter ?? Math.floor(Math.random() * o.kills);
    chaos = (async () => {
      for (let k = 0; k < o.kills && !cancelled; k++) {
        await sleep(o.gapMs[0] + Math.random() * (o.gapMs[1] - o.gapMs[0]));
        if (cancelled) break;
        if (k === stopAfter && o.stopMs > 0) {
          run.log(`SIGSTOP for ${o.stopMs} ms`);
          events.push({ at: Date.now() - t0, what: 'SIGSTOP', acked: ackCount });
          server.child.kill('SIGSTOP');
          await sleep(o.stopMs);
          server.child.kill('SIGCONT');
          stopped = true;
          run.log('SIGCONT');
          await sleep(o.gapMs[0] + Math.random() * (o.gapMs[1] - o.gapMs[0]));
          if (cancelled) break;
        }
        run.log(`kill -9 (${ackCount} acked)`);
        events.push({ at: Date.now() - t0, what: 'SIGKILL', acked: ackCount });
        expectExit = true;
        await server.kill9();
        expectExit = false;
        killed++;
        server = watch(await Parleyd.start({ ...serverOpts, port }));
      }
    })();
    chaos.catch((e) => { chaosFailed = e; });

    // the offline recipients come once every message is acknowledged
    while (!senders.every((s) => s.role.done)) {
      if (chaosFailed) throw chaosFailed;
      if (Date.now() > deadline) throw new Error(`senders not done: ${senders.map((s) => s.role.acked.size).join(' ')}`);
      await sleep(20);
    }
    const allAckedAt = lastAckAt - t0;
    run.log('all acknowledged; the offline recipients connect');
    for (const r of recipients) if (!r.role.online) r.dev.start();
    await chaos;
    if (chaosFailed) throw chaosFailed;

    // the end: every device drains until a fresh connection finds its inbox empty
    // (recipients first: their committed acks have stored every delivered receipt
    // before the senders drain)
    for (const r of recipients) await r.dev.drain(deadline);
    for (const s of senders) await s.dev.drain(deadline);
    stopAll();
    expectExit = true;
    await server.stop(); // SIGTERM: exit 0 and no sanitizer report
    const left = JSON.parse(execFileSync(ctl, ['stats', '--data', dataDir], { encoding: 'utf8' })).inbox_envelopes;

    // the count
    let lost = 0, duplicated = 0, misordered = 0, redelivered = 0, bad = 0, receiptsMissing = 0, receiptsDoubled = 0;
    const lostIds = [];
    for (let i = 0; i < o.senders; i++) {
      const s = senders[i].role, r = recipients[i].role;
      const seen = new Set(r.first.map((x) => x[2]));
      // a lost message with a receipt was taken from the inbox by an ack; one without
      // a receipt vanished some other way
      for (const h of s.acked) {
        if (seen.has(h)) continue;
        lost++;
        if (lostIds.length < 20) lostIds.push(`${i}:${h}${s.receipts.has(h) ? '(receipt)' : ''}`);
      }
      duplicated += r.duplicated;
      redelivered += r.redelivered;
      bad += r.bad;
      let last = -1;
      for (const [from, index, h] of r.first) {
        if (from !== i || hex(s.ids[index] ?? []) !== h) bad++;
        else if (index < last && !s.refused.has(index)) misordered++;
        last = Math.max(last, index);
      }
      for (const h of seen) {
        const n = s.receipts.get(h) ?? 0;
        if (n === 0) receiptsMissing++;
        else if (n > 1) receiptsDoubled++;
      }
    }
    const delivered = recipients.reduce((a, r) => a + r.role.byKey.size, 0);
    return {
      messages: o.senders * o.messages, acked: senders.reduce((a, s) => a + s.role.acked.size, 0), delivered,
      lost, lostIds, duplicated, misordered, redelivered, bad, receiptsMissing, receiptsDoubled, left,
      kills: killed, sigstop: stopped, allAckedAtMs: allAckedAt, seconds: (Date.now() - t0) / 1000,
      reconnects: devices.reduce((a, d) => a + d.connections, 0) - devices.length,
      gaveUp: devices.reduce((a, d) => a + d.gaveUp, 0),
      replaced: devices.reduce((a, d) => a + d.replaced, 0),
      refused: senders.reduce((a, s) => a + s.role.refused.size, 0),
      anomalies, events, dir: o.keep ? dir : undefined,
    };
  } catch (e) {
    if (anomalies.length) e.message += `\nanomalies:\n  ${anomalies.join('\n  ')}`;
    if (o.keep) e.message += `\nkept ${dir}`;
    throw e;
  } finally {
    cancelled = true;
    await chaos.catch(() => {}); // it starts no server after this
    stopAll();
    expectExit = true;
    if (server.child.exitCode === null && server.child.signalCode === null) {
      server.child.kill('SIGCONT');
      await server.kill9();
    }
    if (!o.keep) removeDir(dir);
  }
}

// A run passes when nothing acknowledged went missing, nothing was stored twice, every
// stream kept its order (unless a send had to be repeated after a refusal), every
// delivered message has one receipt, nothing is left behind and nothing odd was seen.
export function verdict(r) {
  const problems = [];
  if (r.acked !== r.messages) problems.push(`${r.messages - r.acked} never acknowledged`);
  if (r.lost) problems.push(`${r.lost} acknowledged and lost (${r.lostIds.join(' ')})`);
  if (r.duplicated) problems.push(`${r.duplicated} stored twice`);
  if (r.misordered) problems.push(`${r.misordered} out of order`);
  if (r.bad) problems.push(`${r.bad} delivered with a wrong body or to the wrong recipient`);
  if (r.receiptsMissing) problems.push(`${r.receiptsMissing} delivered without a receipt`);
  if (r.receiptsDoubled) problems.push(`${r.receiptsDoubled} with two receipts`);
  if (r.left) problems.push(`${r.left} envelopes left in the data file`);
  if (r.anomalies.length) problems.push(`anomalies: ${r.anomalies.slice(0, 5).join('; ')}`);
  return problems;
}

export function summary(r) {
  return `${r.messages} messages, ${r.kills} kills${r.sigstop ? ' + SIGSTOP' : ''}, all acked by ${(r.allAckedAtMs / 1000).toFixed(1)} s, ` +
    `${r.delivered} delivered, lost ${r.lost}, duplicated ${r.duplicated}, misordered ${r.misordered}, ` +
    `redelivered ${r.redelivered}, receipts missing ${r.receiptsMissing} doubled ${r.receiptsDoubled}, left ${r.left}, ` +
    `${r.reconnects} reconnects (${r.gaveUp} given up, ${r.replaced} replaced), ${r.refused} sends refused once or more, ${r.seconds.toFixed(1)} s`;
}
