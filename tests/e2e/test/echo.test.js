// parley-echo-bot (tools/echo-bot), the example program of docs/client.md, against a
// real parleyd: it answers from inside libparley's event callback while a Deliver
// frame's events are being reported, which must neither handle that frame twice nor
// touch it after it is freed (ASan runs this too), and marks the chat read.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import readline from 'node:readline';
import { checkStderr, withServer, cliUser, send, recv, history } from '../lib/cli.js';

const TIMEOUT = { timeout: 120000 };
const phone = (n) => `+1558${String(process.pid % 1000).padStart(3, '0')}${String(n).padStart(4, '0')}`;

function startBot(home, count) {
  const bin = process.env.PARLEY_ECHO_BOT;
  if (!bin) throw new Error('PARLEY_ECHO_BOT is not set (ctest sets it)');
  const child = spawn(bin, ['--home', home, '--count', String(count)], { stdio: ['ignore', 'pipe', 'pipe'] });
  const bot = { child, lines: [], stderr: '' };
  child.stderr.on('data', (b) => { bot.stderr += b; });
  readline.createInterface({ input: child.stdout }).on('line', (l) => bot.lines.push(JSON.parse(l)));
  bot.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return bot;
}

test('the echo bot answers every message in its conversation from the event callback, once', TIMEOUT, async (t) => {
  const s = await withServer(t);
  const alice = await cliUser(s, 'alice', phone(1));
  const carol = await cliUser(s, 'carol', phone(2));
  const botUser = await cliUser(s, 'bot', phone(3));
  // queued while the bot is offline, so that they arrive together in one Deliver frame
  const fromAlice = [];
  for (const text of ['one', 'two', 'three']) fromAlice.push(await send(alice, botUser, text));
  const fromCarol = await send(carol, botUser, 'from carol');

  const bot = startBot(botUser.home, 4);
  const timer = setTimeout(() => bot.child.kill('SIGKILL'), 60000);
  const end = await bot.exited;
  clearTimeout(timer);
  checkStderr(bot.stderr, 'parley-echo-bot');
  assert.deepEqual(end, { code: 0, signal: null }, bot.stderr);
  // each message echoed exactly once, to the conversation it came from, in order
  assert.deepEqual(bot.lines.map((l) => l.echoed), [...fromAlice, fromCarol]);
  assert.deepEqual(bot.lines.map((l) => l.to), [alice.phone, alice.phone, alice.phone, carol.phone]);
  assert.equal(new Set(bot.lines.map((l) => l.id)).size, 4);

  const got = await recv(alice);
  assert.deepEqual(got.map((m) => m.text), ['one', 'two', 'three']);
  assert.deepEqual(got.map((m) => m.id), bot.lines.slice(0, 3).map((l) => l.id));
  assert.ok(got.every((m) => m.from === botUser.phone && m.conversation === botUser.phone));
  const c = await recv(carol);
  assert.deepEqual(c.map((m) => [m.text, m.conversation]), [['from carol', botUser.phone]]);
  // the bot marked its chats read: alice's messages went blue (the receipts came with the echoes)
  const h = await history(alice, botUser);
  assert.deepEqual(h.filter((m) => m.direction === 'out').map((m) => m.state), ['read', 'read', 'read']);
  assert.ok(h.every((m) => m.conversation === botUser.phone));
});
