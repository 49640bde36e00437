// reconnect.test.js — the reference client's signaling socket is cut under it (its TCP
// connection reset, as a network blip does) while its media flows on: it resumes by itself and
// the others see nothing; and a musician who leaves while it is still cut is seen to leave at
// once, not when the server's reconnect grace runs out.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';

import { BOUND_MS, eventually, joinAs, serverAndBrowser, waitConnected, withPages } from '../lib/harness.js';
import { trackIdsOf, waitHears } from '../lib/audio.js';

const TEST_TIMEOUT = 120_000;

/**
 * A TCP proxy in front of the server's HTTP port, for one page's signaling (its media goes to
 * the server's UDP candidates directly). `drop()` resets every proxied connection; while
 * `stall()`ed it accepts connections but holds them until `release()`.
 */
async function tcpProxy(target) {
  const { hostname, port } = new URL(target);
  const live = new Set();
  let held = null;
  const forward = (client) => {
    const upstream = net.connect(Number(port), hostname);
    live.add(client);
    client.once('close', () => { live.delete(client); upstream.destroy(); });
    upstream.once('close', () => client.destroy());
    client.on('error', () => {});
    upstream.on('error', () => {});
    client.pipe(upstream);
    upstream.pipe(client);
  };
  const server = net.createServer({ pauseOnConnect: true }, (client) => {
    if (held) {
      held.add(client);
      client.once('close', () => held?.delete(client));
      client.on('error', () => {});
      return;
    }
    forward(client);
    client.resume();
  });
  await new Promise((res) => server.listen(0, '127.0.0.1', res));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    drop() {
      for (const c of live) c.resetAndDestroy();
      live.clear();
    },
    stall() { held = new Set(); },
    heldCount() { return held?.size ?? 0; },
    release() {
      const waiting = [...(held ?? [])];
      held = null;
      for (const c of waiting) {
        if (c.destroyed) continue;
        forward(c);
        c.resume();
      }
    },
    close() {
      this.drop();
      return new Promise((res) => server.close(res));
    },
  };
}

/** Every server message a page receives from here on, parsed, in order. */
function serverMessages(page) {
  const seen = [];
  page.on('websocket', (ws) => {
    ws.on('framereceived', ({ payload }) => {
      try {
        seen.push(JSON.parse(String(payload)));
      } catch { /* not ours */ }
    });
  });
  return seen;
}

const signaling = (page) => page.evaluate(() => window.veza.state.signaling);

describe('signaling reconnects in the browser', () => {
  const ctx = serverAndBrowser();

  it('a cut signaling socket resumes unseen, and leaving while cut is seen at once', { timeout: TEST_TIMEOUT }, async () => {
    const proxy = await tcpProxy(ctx.server.baseUrl);
    try {
      await withPages(ctx.browser, ctx.server, ['Alice', 'Bob'], async (a, b) => {
        const toAlice = serverMessages(a);
        const toBob = serverMessages(b);
        // Alice's page, and so her signaling, goes through the proxy.
        await joinAs(a, { ...ctx.server, baseUrl: proxy.url }, { session: 'blip', user: 'alice', name: 'Alice' });
        await joinAs(b, ctx.server, { session: 'blip', user: 'bob', name: 'Bob' });
        await Promise.all([waitConnected(a), waitConnected(b)]);
        const aliceTracks = await trackIdsOf(b, 'Alice');
        await waitHears(b, aliceTracks, 'Bob hears Alice');
        const aliceId = await a.evaluate(() => window.veza.state.self.id);
        const aliceLeft = () => toBob.filter((m) => m.type === 'participant_left' && m.participant_id === aliceId);

        // 1. The socket is cut: Alice resumes as herself, Bob is told nothing and hears her on.
        proxy.drop();
        await eventually('Alice resumed', async () =>
          toAlice.some((m) => m.type === 'resumed') && (await signaling(a)) === 'open' ? true : null,
        );
        assert.equal(await a.evaluate(() => window.veza.state.self.id), aliceId);
        await waitHears(b, aliceTracks, 'Bob still hears Alice');
        assert.deepEqual(aliceLeft(), []);
        assert.equal(toBob.filter((m) => m.type === 'participant_joined').length, 0, 'no one joined again');

        // 2. Cut again, with the way back held: she leaves while reconnecting. Her leave goes
        // out on a resumed socket of its own, so Bob sees her leave rather than drop out.
        proxy.stall();
        proxy.drop();
        await a.waitForFunction(() => window.veza.state.signaling === 'reconnecting', null, { timeout: BOUND_MS });
        await a.click('#leave');
        await eventually('her leave to reach the proxy', () => (proxy.heldCount() > 0 ? true : null));
        proxy.release();
        const [left] = await eventually('Bob sees Alice leave', () => (aliceLeft().length ? aliceLeft() : null));
        assert.equal(left.reason, 'left', JSON.stringify(left));
        assert.equal(await a.textContent('#conn-state'), 'Left');
      });
    } finally {
      await proxy.close();
    }
  });
});
