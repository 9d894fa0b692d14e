// Starts and stops real parleyd processes for the tests (loopback only).
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const SANITIZER = /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:/;

export function binary() {
  const p = process.env.PARLEYD;
  if (!p) throw new Error('PARLEYD is not set: export PARLEYD=/path/to/parleyd (ctest sets it)');
  return p;
}

export function tempDir() {
  return mkdtempSync(path.join(os.tmpdir(), 'parley-e2e-'));
}

export function removeDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}

// A tmpfs of its own under dir (root only), so that what fills or is measured is the
// data directory's alone; null where it cannot be mounted (a container without
// CAP_SYS_ADMIN). Unmount it with unmountVolume after the server stopped.
export function smallVolume(dir, megabytes) {
  const vol = path.join(dir, 'vol');
  mkdirSync(vol);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${megabytes}m`, 'tmpfs', vol]);
  return r.status === 0 ? vol : null;
}

export function unmountVolume(vol) {
  spawnSync('umount', [vol]);
}

// A free loopback port (the kernel picks; a small race is acceptable in tests).
export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export class Parleyd {
  // extra: more flags, e.g. ['--send-rate', '5'].
  // env: more environment variables, e.g. { PARLEYD_COMMIT_DELAY_MS: '30' }.
  // detached: parleyd in a process group of its own, for tests that stop it with SIGSTOP
  // (a stopped process in a group that becomes orphaned is sent SIGHUP by the kernel).
  // nofile: [soft, hard] descriptor limits to start it with (through sh's ulimit, then exec).
  static async start({ dataDir, sms, heartbeat, threads = 2, maxFrame, extra = [], port, env = {}, detached = false, nofile } = {}) {
    port = port ?? await freePort();
    // every test registers its users and looks them up from 127.0.0.1: the per-address
    // limits meant for strangers are lifted here; the abuse tests set their own after these
    const args = ['--listen', `127.0.0.1:${port}`, '--data', dataDir, '--threads', String(threads),
      '--code-rate', '100000', '--code-global-rate', '100000', '--lookup-rate', '100000', '--lookup-daily', '100000000',
      '--fetch-target-rate', '100000'];
    if (sms) args.push('--sms', sms);
    if (heartbeat) args.push('--heartbeat', String(heartbeat));
    if (maxFrame) args.push('--max-frame', String(maxFrame));
    args.push(...extra);
    const [cmd, argv] = nofile
      ? ['/bin/sh', ['-c', `ulimit -Sn ${nofile[0]} && ulimit -Hn ${nofile[1]} && exec "$0" "$@"`, binary(), ...args]]
      : [binary(), args];
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env }, detached });
    const d = new Parleyd(child, port, dataDir);
    await d.ready();
    return d;
  }

  constructor(child, port, dataDir) {
    this.child = child;
    this.port = port;
    this.dataDir = dataDir;
    this.url = `ws://127.0.0.1:${port}/`;
    this.stderr = '';
    this.stdout = '';
    child.stderr.on('data', (b) => { this.stderr += b; });
    this.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  }

  ready() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`parleyd did not start: ${this.stderr}`)), 10000);
      this.child.stdout.on('data', (b) => {
        this.stdout += b;
        if (this.stdout.includes('parleyd listening')) {
          clearTimeout(timer);
          resolve();
        }
      });
      this.exited.then(({ code }) => { clearTimeout(timer); reject(new Error(`parleyd exited ${code}: ${this.stderr}`)); });
    });
  }

  // SIGTERM, then the exit code must be 0 within 10 s and stderr free of sanitizer reports.
  async stop() {
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10000);
    const { code, signal } = await this.exited;
    clearTimeout(timer);
    if (code !== 0) throw new Error(`parleyd exited with ${code ?? signal}: ${this.stderr}`);
    if (SANITIZER.test(this.stderr)) throw new Error(`sanitizer report from parleyd:\n${this.stderr}`);
  }

  kill9() {
    this.child.kill('SIGKILL');
    return this.exited;
  }
}
