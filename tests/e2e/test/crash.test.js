// Acknowledged means durable, under abuse (issue 19): 8 senders and 8 recipients (4
// online throughout, 4 only after every message is acknowledged) while parleyd is
// killed with SIGKILL again and again and once stopped with SIGSTOP for longer than the
// clients' heartbeat allows. Every acknowledged message must arrive once, in order, with
// one delivered receipt, and nothing may be left behind. Run twice: with clients that
// abandon a dead connection before dialling again, and with clients whose attempts and
// connections pile up (several per device at once, the "two receiving connections for
// one device" case). The short form; the long one is `node tests/e2e/crash.js`
// (tests/e2e/README.md). A third run does the same with senders at full speed (no
// SIGSTOP), so the kills land in large group commits.
import test from 'node:test';
import assert from 'node:assert/strict';
import { crashRun, verdict, summary } from '../lib/crash.js';

const shape = {
  senders: 8, online: 4, messages: 1500, rate: 300, processMs: 4,
  kills: 6, gapMs: [1000, 2500], heartbeat: 2, deadlineMs: 150000,
  // the SIGSTOP first, while Sends are in flight, and 3 s: past the clients' heartbeat
  // (they give up after 1.3 s) but not the server's (4 s), as 30 s is for the defaults
  stopAfter: 0, stopMs: 3000,
};

for (const pileUp of [false, true]) {
  const name = pileUp ? 'connections piling up' : 'clients reconnecting one at a time';
  test(`crash, ${name}: kill -9 x6 and a SIGSTOP past the heartbeat; nothing acknowledged is lost`,
    { timeout: 200000 }, async () => {
      const r = await crashRun({ ...shape, pileUp });
      console.log(summary(r));
      const all = shape.senders * shape.messages;
      const stop = r.events.find((e) => e.what === 'SIGSTOP');
      assert.ok(stop && stop.acked < all, 'the SIGSTOP came while Sends were in flight');
      assert.ok(r.events.some((e) => e.what === 'SIGKILL' && e.acked < all), 'a kill while Sends were in flight');
      assert.ok(r.gaveUp > 0, 'the SIGSTOP outlasted the clients\' heartbeat');
      if (pileUp) assert.ok(r.replaced > 0, 'some device had two receiving connections');
      assert.equal(r.acked, shape.senders * shape.messages);
      assert.deepEqual(verdict(r), []);
    });
}

// Saturated (issue 12): senders as fast as a window of 64 allows and recipients that
// take no time, so the writer's groups are large (hundreds of records each) when the
// kills land; several kills while Sends are in flight.
const saturated = {
  senders: 8, online: 4, messages: 8000, window: 64, rate: 0, processMs: 0,
  kills: 6, gapMs: [600, 1400], stopMs: 0, heartbeat: 2, deadlineMs: 150000,
};
test('crash, saturated: kill -9 x6 during sends as fast as the window allows; nothing acknowledged is lost',
  { timeout: 200000 }, async () => {
    const r = await crashRun(saturated);
    console.log(summary(r));
    const all = saturated.senders * saturated.messages;
    const midway = r.events.filter((e) => e.what === 'SIGKILL' && e.acked > 0 && e.acked < all);
    assert.ok(midway.length >= 3, `kills while Sends were in flight: ${JSON.stringify(r.events)}`);
    assert.equal(r.acked, all);
    assert.deepEqual(verdict(r), []);
  });
