// Seeded pseudo-random numbers (a 32-bit splitmix-style generator), so
// a failing run can be repeated with WS_TEST_SEED=<seed printed by the test>.

export function makeRng(seed = process.env.WS_TEST_SEED !== undefined
  ? Number(process.env.WS_TEST_SEED) : Math.floor(Math.random() * 2 ** 31)) {
  let s = seed >>> 0;
  const next32 = () => {
    s = (s + 0x9E3779B9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85EBCA6B) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xC2B2AE35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  return {
    seed,
    // integer in [lo, hi]
    int(lo, hi) { return lo + (next32() % (hi - lo + 1)); },
    bytes(n) {
      const b = Buffer.alloc(n);
      for (let i = 0; i < n; i += 4) {
        const v = next32();
        for (let j = 0; j < 4 && i + j < n; j++) b[i + j] = (v >>> (8 * j)) & 0xFF;
      }
      return b;
    },
  };
}
