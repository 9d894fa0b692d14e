// What the rough node benchmarks share until parley-bench exists: the repository root,
// the ws client and protobufjs from tests/e2e, libsignal-client (fast XEdDSA) from
// tests/interop, and the wire Frame type. Needs `make interop-deps`.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = fileURLToPath(new URL('../../', import.meta.url));
const e2e = createRequire(path.join(root, 'tests/e2e/package.json'));
export const WebSocket = e2e('ws');
const protobuf = e2e('protobufjs');
export const S = await import(path.join(root, 'tests/interop/node_modules/@signalapp/libsignal-client/dist/index.js'));
export const Frame = protobuf.parse(readFileSync(path.join(root, 'proto/parley.proto'), 'utf8'), { keepCase: true })
  .root.lookupType('parley.Frame');
