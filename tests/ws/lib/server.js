// Driver for the program under test, `ws-echo-server` (path in the
// environment variable WS_ECHO_SERVER).
//
//   const srv = await EchoServer.start(['--max-message', '4096']);
//   ... connect to 127.0.0.1:srv.port ...
//   await srv.stop();     // SIGTERM; asserts exit 0, no sanitizer report
//
// or, for a whole test file (or a describe block):
//
//   const srv = useServer(['--max-message', '4096']);   // before/after hooks
//   test('...', async () => { ... srv.port ... });
//
// start() REJECTS when WS_ECHO_SERVER is unset (the tests fail, never skip),
// when the program cannot be run, exits early, or does not print its
// `listening <port>` line in time. stop() REJECTS when the program does not
// exit with status 0 within the stop timeout after SIGTERM (it is then killed
// with SIGKILL: only this child, which this driver spawned), when it printed
// anything on stdout besides the one `listening` line, or when its stderr
// holds a sanitizer report.

import { spawn } from 'node:child_process';
import { after, before } from 'node:test';

export const READY_TIMEOUT_MS = Number(process.env.WS_READY_TIMEOUT_MS) || 10000;
export const STOP_TIMEOUT_MS = Number(process.env.WS_STOP_TIMEOUT_MS) || 5000;
export const TEST_TIMEOUT_MS = Number(process.env.WS_TEST_TIMEOUT_MS) || 60000;
const STDERR_KEEP = 256 * 1024;

// Servers this process started and that have not exited: killed (SIGKILL)
// if the test process exits without stopping them, so none is left behind.
const live = new Set();
process.on('exit', () => {
  for (const s of live) s.kill();
});

// ASan, LSan, UBSan ("runtime error:"), MSan, TSan.
const SANITIZER_RE = /(ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|SUMMARY: UndefinedBehaviorSanitizer|WARNING: MemorySanitizer|WARNING: ThreadSanitizer)[^\n]*/;

export function serverPath() {
  const p = process.env.WS_ECHO_SERVER;
  if (!p) {
    throw new Error('WS_ECHO_SERVER is not set: export WS_ECHO_SERVER=/path/to/ws-echo-server ' +
      '(these tests need the C server; they fail rather than skip without it)');
  }
  return p;
}

export class EchoServer {
  static async start(args = [], { label = 'ws-echo-server' } = {}) {
    const s = new EchoServer(serverPath(), args, label);
    await s.ready;
    return s;
  }

  constructor(path, args, label) {
    this.path = path;
    this.args = ['--listen', '127.0.0.1:0', ...args];
    this.label = label;
    this.port = null;
    this.stdoutText = '';
    this.stderrText = '';
    this.exit = null; // { code, signal } once exited
    this.stopping = false;

    this.child = spawn(path, this.args, { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(this);
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        live.delete(this);
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
    this.child.stderr.on('data', (chunk) => {
      if (process.env.WS_SERVER_LOG === '1') process.stderr.write(chunk);
      this.stderrText = (this.stderrText + chunk.toString('utf8')).slice(-STDERR_KEEP);
    });

    this.ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        fail(new Error(`${label}: no "listening <port>" line on stdout within ${READY_TIMEOUT_MS} ms`));
      }, READY_TIMEOUT_MS);
      const fail = (err) => {
        clearTimeout(timer);
        this.kill();
        reject(new Error(`${err.message} (${this.describe()})${this.stderrTail()}`));
      };
      this.child.once('error', (err) => fail(new Error(`${label}: cannot run ${path}: ${err.message}`)));
      this.child.once('exit', (code, signal) => {
        if (this.port === null) fail(new Error(`${label}: exited before it was ready (code ${code}, signal ${signal})`));
      });
      this.child.stdout.on('data', (chunk) => {
        this.stdoutText += chunk.toString('utf8');
        if (this.port !== null) return;
        const nl = this.stdoutText.indexOf('\n');
        if (nl < 0) return;
        const line = this.stdoutText.slice(0, nl);
        const m = /^listening (\d+)$/.exec(line);
        const port = m ? Number(m[1]) : 0;
        if (!m || port < 1 || port > 65535) {
          fail(new Error(`${label}: first stdout line is ${JSON.stringify(line)}, expected "listening <port>"`));
          return;
        }
        this.port = port;
        clearTimeout(timer);
        resolve(this);
      });
    });
  }

  describe() {
    return `${this.path} ${this.args.join(' ')}`;
  }

  stderrTail(n = 4000) {
    if (!this.stderrText) return '';
    return `\n--- ${this.label} stderr (last ${n} chars) ---\n${this.stderrText.slice(-n)}`;
  }

  // True while the process runs (used to check it survived a bad client).
  get alive() {
    return this.exit === null;
  }

  sanitizerReport() {
    const m = SANITIZER_RE.exec(this.stderrText);
    return m ? m[0] : null;
  }

  kill() {
    if (this.exit === null) {
      try { this.child.kill('SIGKILL'); } catch { /* already gone */ }
    }
  }

  // Sends SIGTERM and asserts a clean exit (see the header comment).
  async stop({ timeoutMs = STOP_TIMEOUT_MS } = {}) {
    if (this.stopping) return this.exited;
    this.stopping = true;
    if (this.exit !== null) {
      throw new Error(`${this.label}: had already exited before SIGTERM (code ${this.exit.code}, ` +
        `signal ${this.exit.signal})${this.stderrTail()}`);
    }
    this.child.kill('SIGTERM');
    let timer;
    const timedOut = new Promise((resolve) => { timer = setTimeout(() => resolve(null), timeoutMs); });
    const exit = await Promise.race([this.exited, timedOut]);
    clearTimeout(timer);
    if (exit === null) {
      this.kill();
      await this.exited;
      throw new Error(`${this.label}: did not exit within ${timeoutMs} ms of SIGTERM (killed)${this.stderrTail()}`);
    }
    // Let the pipes drain so a report printed at exit is seen.
    await Promise.all([streamDone(this.child.stdout), streamDone(this.child.stderr)]);
    const report = this.sanitizerReport();
    if (report) throw new Error(`${this.label}: sanitizer report on stderr: ${report}${this.stderrTail()}`);
    if (exit.code !== 0 || exit.signal !== null) {
      throw new Error(`${this.label}: exit after SIGTERM was code ${exit.code}, signal ${exit.signal}; ` +
        `expected code 0${this.stderrTail()}`);
    }
    const expected = `listening ${this.port}\n`;
    if (this.stdoutText !== expected) {
      throw new Error(`${this.label}: stdout was ${JSON.stringify(this.stdoutText.slice(0, 500))}, ` +
        `expected exactly ${JSON.stringify(expected)}`);
    }
    return exit;
  }
}

function streamDone(stream) {
  if (stream.readableEnded || stream.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, 2000);
    stream.once('close', () => { clearTimeout(t); resolve(); });
    stream.once('end', () => { clearTimeout(t); resolve(); });
  });
}

// Registers before/after hooks that start one server for the enclosing test
// file or describe block and stop it (with the exit assertions) at the end.
// The returned handle's `port` and `server` are set once `before` ran; if the
// start failed, every test using the handle fails with the start error.
export function useServer(args = [], opts = {}) {
  const handle = {
    server: null,
    error: null,
    get port() {
      if (this.error) throw this.error;
      if (!this.server) throw new Error('server not started (before hook did not run?)');
      return this.server.port;
    },
  };
  before(async () => {
    try {
      handle.server = await EchoServer.start(args, opts);
    } catch (err) {
      handle.error = err;
      throw err;
    }
  });
  after(async () => {
    if (handle.server) await handle.server.stop();
  });
  return handle;
}
