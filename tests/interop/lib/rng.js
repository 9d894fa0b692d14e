// A seeded pseudo-random generator for message patterns and plaintexts, so a
// failing run can be repeated with INTEROP_SEED=<seed>. (Keys and nonces
// inside the implementations stay truly random.)

import { Buffer } from 'node:buffer';
import crypto from 'node:crypto';

export function seedFromEnv() {
  const env = process.env.INTEROP_SEED;
  return env ? Number(env) >>> 0 : crypto.randomInt(0x7fffffff);
}

// mulberry32: small, fast, good enough for test patterns.
export class Rng {
  constructor(seed = seedFromEnv()) {
    this.seed = seed >>> 0;
    this.state = this.seed;
  }

  next() {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  // Integer in [0, n).
  int(n) {
    return Math.floor(this.next() * n);
  }

  // Integer in [lo, hi].
  between(lo, hi) {
    return lo + this.int(hi - lo + 1);
  }

  pick(list) {
    return list[this.int(list.length)];
  }

  shuffle(list) {
    const a = [...list];
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  }

  bytes(n) {
    const out = Buffer.alloc(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }

  // n bytes that are never valid UTF-8 (the first is a lone continuation
  // byte), so their `plaintext` answer field is always null.
  binary(n) {
    const out = this.bytes(n);
    if (n > 0) out[0] = 0x80 | (out[0] & 0x3f);
    return out;
  }

  // Text of about n characters mixing ASCII and multi-byte UTF-8.
  text(n) {
    const alphabet = 'abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,!?-éüßøΩжд中文😀🔐';
    const chars = [...alphabet];
    let s = '';
    for (let i = 0; i < n; i++) s += this.pick(chars);
    return s;
  }
}
