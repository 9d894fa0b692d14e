// Driver for the C program `parley-signal` (path in the environment variable
// PARLEY_SIGNAL).
//
// parley-signal plays one Signal identity. It reads one JSON request per line
// on stdin and writes exactly one JSON answer per line on stdout, in order;
// its logs go to stderr.
//
//   const p = await Parley.spawn();
//   const answer = await p.cmd('encrypt', { peer: 'bob', plaintext: 'hi' });
//   if (!answer.ok) ... answer.error ...
//   await p.close();
//
// Error policy (the same for the reference players in ref6/ref72/ref103):
//   * cmd() RESOLVES with the answer object whether ok is true or false, so a
//     test can assert an expected refusal (bad MAC, replay, bad bundle) as
//     easily as a success;
//   * cmd() REJECTS only when the player itself is broken: PARLEY_SIGNAL
//     unset, spawn failure, the per-request timeout expired, the process
//     exited, an answer line is not JSON, or the answer's id/cmd do not match
//     the request. After a timeout or a mismatch the stream can no longer be
//     trusted, so the driver kills its child and every later cmd() rejects.
//
// close() sends `quit`, waits briefly for the exit and otherwise kills the
// child it spawned (and nothing else).

import { spawn } from 'node:child_process';
import readline from 'node:readline';

const DEFAULT_TIMEOUT_MS = Number(process.env.PARLEY_TIMEOUT_MS) || 15000;
const STDERR_KEEP = 64 * 1024; // bytes of stderr kept for error messages

export class Parley {
  // Starts a parley-signal process. `label` names it in messages; `env`
  // replaces the environment (default: inherited); `args` are command-line
  // arguments (parley-signal takes none; the driver's own tests use them).
  static async spawn({
    path = process.env.PARLEY_SIGNAL, args = [], env = process.env, timeoutMs = DEFAULT_TIMEOUT_MS, label = 'parley-signal',
  } = {}) {
    if (!path) {
      throw new Error('PARLEY_SIGNAL is not set: export PARLEY_SIGNAL=/path/to/parley-signal ' +
        '(these tests need the C implementation; they fail rather than skip without it)');
    }
    const p = new Parley(path, args, env, timeoutMs, label);
    await p.started;
    return p;
  }

  constructor(path, args, env, timeoutMs, label) {
    this.label = label;
    this.path = path;
    // parley-signal has a `reload` command (docs/crypto.md): all its state
    // goes through serialize -> deserialize, as in a restart. The scenarios
    // use it between steps; the reference players have no such command.
    this.reloadable = true;
    this.timeoutMs = timeoutMs;
    this.nextId = 1;
    this.pending = [];   // FIFO of { id, cmd, resolve, reject, timer }
    this.broken = null;  // Error once the stream is unusable
    this.exited = false;
    this.closed = false;
    this.stderrText = '';

    this.child = spawn(path, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    this.started = new Promise((resolve, reject) => {
      this.child.once('spawn', resolve);
      this.child.once('error', (err) => {
        this.fail(new Error(`${label}: cannot run ${path}: ${err.message}`));
        reject(this.broken);
      });
    });

    this.child.stderr.on('data', (chunk) => {
      if (process.env.PARLEY_LOG === '1') process.stderr.write(chunk);
      this.stderrText = (this.stderrText + chunk.toString('utf8')).slice(-STDERR_KEEP);
    });
    // Writing to a dead child must not crash the test process.
    this.child.stdin.on('error', () => {});

    this.lines = readline.createInterface({ input: this.child.stdout, crlfDelay: Infinity });
    this.lines.on('line', (line) => this.onLine(line));

    this.exitPromise = new Promise((resolve) => {
      // 'close' comes after stdout has ended, so every answer line the child
      // wrote has been handled before pending requests are failed.
      this.child.once('close', (code, signal) => {
        this.exited = true;
        this.fail(new Error(`${label} exited (code ${code}, signal ${signal})${this.stderrTail()}`));
        resolve({ code, signal });
      });
    });
  }

  stderrTail() {
    const tail = this.stderrText.trim().split('\n').slice(-15).join('\n');
    return tail ? `\n--- last stderr lines ---\n${tail}` : '';
  }

  // Marks the driver unusable and rejects every waiting request.
  fail(err) {
    if (!this.broken) this.broken = err;
    for (const req of this.pending.splice(0)) {
      clearTimeout(req.timer);
      req.reject(this.broken);
    }
  }

  onLine(line) {
    if (line.trim() === '') return;
    const req = this.pending.shift();
    if (!req) {
      this.breakAndKill(new Error(`${this.label}: unexpected output line: ${line.slice(0, 200)}`));
      return;
    }
    clearTimeout(req.timer);
    let answer;
    try {
      answer = JSON.parse(line);
    } catch {
      req.reject(new Error(`${this.label}: answer to ${req.cmd} (id ${req.id}) is not JSON: ${line.slice(0, 200)}`));
      this.breakAndKill(new Error(`${this.label}: garbled output`));
      return;
    }
    if (answer === null || typeof answer !== 'object' || answer.id !== req.id || answer.cmd !== req.cmd ||
        typeof answer.ok !== 'boolean') {
      const err = new Error(`${this.label}: answer ${line.slice(0, 200)} does not match request ` +
        `{id: ${req.id}, cmd: ${req.cmd}} (answers need the echoed id, cmd and a boolean ok)`);
      req.reject(err);
      this.breakAndKill(err);
      return;
    }
    if (!answer.ok && typeof answer.error !== 'string') {
      req.reject(new Error(`${this.label}: ok:false answer to ${req.cmd} without an error string`));
      return;
    }
    req.resolve(answer);
  }

  breakAndKill(err) {
    this.fail(err);
    if (!this.exited) this.child.kill('SIGKILL');
  }

  // Sends one request; resolves with the answer (ok true or false).
  cmd(name, args = {}, { timeoutMs = this.timeoutMs } = {}) {
    if (this.broken) return Promise.reject(this.broken);
    const id = this.nextId++;
    const line = JSON.stringify({ ...args, id, cmd: name }) + '\n';
    return new Promise((resolve, reject) => {
      const req = { id, cmd: name, resolve, reject, timer: null };
      req.timer = setTimeout(() => {
        const err = new Error(`${this.label}: no answer to ${name} (id ${id}) within ${timeoutMs} ms${this.stderrTail()}`);
        this.breakAndKill(err);
      }, timeoutMs);
      this.pending.push(req);
      this.child.stdin.write(line);
    });
  }

  // Asks the child to quit; kills it if it does not exit within graceMs.
  // Rejects if a child that was asked to quit exits with a non-zero status or
  // a signal, or if its stderr holds a sanitizer report (ASan, UBSan, LSan),
  // so a memory error fails the test that caused it.
  async close({ graceMs = 5000 } = {}) {
    if (this.closed) return;
    this.closed = true;
    let askedToQuit = false;
    if (!this.exited && !this.broken) {
      askedToQuit = true;
      this.cmd('quit', {}, { timeoutMs: graceMs }).catch(() => {});
      this.child.stdin.end();
    }
    const timer = setTimeout(() => { if (!this.exited) this.child.kill('SIGKILL'); }, graceMs);
    const { code, signal } = await this.exitPromise;
    clearTimeout(timer);
    this.lines.close();
    const report = this.stderrText.match(/(ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: MemorySanitizer)[^\n]*/);
    if (report) throw new Error(`${this.label}: sanitizer report in stderr: ${report[0]}${this.stderrTail()}`);
    if (askedToQuit && (code !== 0 || signal !== null)) {
      throw new Error(`${this.label}: exit after quit with code ${code}, signal ${signal}${this.stderrTail()}`);
    }
  }
}
