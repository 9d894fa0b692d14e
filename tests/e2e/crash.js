#!/usr/bin/env node
// The long form of the crash test (issue 19), by hand:
//   PARLEYD=build/parleyd PARLEYCTL=build/parleyctl node tests/e2e/crash.js [--runs N]
//     [--senders 8] [--online 4] [--messages 8000] [--window 32] [--rate 750]
//     [--process-ms 2.5] [--kills 8]
//     [--stop-ms 30000] [--heartbeat 30] [--pile-up] [--verbose] [--keep]
// Each run prints one line of figures; the exit status is 1 if any run failed.
import { crashRun, verdict, summary } from './lib/crash.js';

const args = process.argv.slice(2);
const flag = (name, dflt) => {
  const i = args.indexOf(name);
  return i < 0 ? dflt : Number(args[i + 1]);
};
const runs = flag('--runs', 1);
const opts = {
  senders: flag('--senders', 8), online: flag('--online', 4), messages: flag('--messages', 8000),
  window: flag('--window', 32), rate: flag('--rate', 750), processMs: flag('--process-ms', 2.5), kills: flag('--kills', 8), stopMs: flag('--stop-ms', 30000),
  heartbeat: flag('--heartbeat', 30), pileUp: args.includes('--pile-up'), keep: args.includes('--keep'),
  log: args.includes('--verbose') ? (s) => console.error(s) : () => {},
};
let failed = 0;
for (let n = 1; n <= runs; n++) {
  let line;
  try {
    const r = await crashRun(opts);
    const problems = verdict(r);
    failed += problems.length > 0;
    line = `run ${n}: ${problems.length ? 'FAILED' : 'ok'}: ${summary(r)}${problems.length ? `\n  ${problems.join('\n  ')}` : ''}`;
    if (r.dir) line += `\n  kept ${r.dir}`;
  } catch (e) {
    failed++;
    line = `run ${n}: FAILED: ${e.stack}`;
  }
  console.log(line);
}
console.log(`${runs - failed} of ${runs} runs passed`);
process.exit(failed ? 1 : 0);
