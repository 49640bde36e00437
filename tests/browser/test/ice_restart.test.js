// ice_restart.test.js — Chromium restarts ICE on both of its connections (what the reference
// client does by itself when its network path is lost) and the session carries on: new ICE
// credentials on both sides, the same participant, audio both ways, nobody told of a leave.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { eventually, joinAs, serverAndBrowser, waitConnected, withPages } from '../lib/harness.js';
import { inboundOf, sdps, trackIdsOf, waitHears } from '../lib/audio.js';

const TEST_TIMEOUT = 90_000;

/** The ICE username fragment of an SDP. */
function ufrag(sdp) {
  return sdp?.match(/^a=ice-ufrag:(\S+)/m)?.[1] ?? null;
}

/** The ufrags of the four descriptions of a page's two connections. */
async function ufrags(page) {
  const s = await sdps(page);
  return Object.fromEntries(Object.entries(s).map(([k, sdp]) => [k, ufrag(sdp)]));
}

/** Waits until the listener has received more than `after` packets of `trackIds`. */
function packetsBeyond(listener, trackIds, after, what) {
  return eventually(what, async () => {
    const s = await inboundOf(listener, trackIds);
    return s && s.packetsReceived > after ? s : null;
  });
}

describe('ICE restart in the browser', () => {
  const ctx = serverAndBrowser();

  it('restarting ICE on both connections keeps the musician and the audio', { timeout: TEST_TIMEOUT }, async () => {
    await withPages(ctx.browser, ctx.server, ['Alice', 'Bob'], async (a, b) => {
      await joinAs(a, ctx.server, { session: 'handover', user: 'alice', name: 'Alice' });
      await joinAs(b, ctx.server, { session: 'handover', user: 'bob', name: 'Bob' });
      await Promise.all([waitConnected(a), waitConnected(b)]);
      const aliceTracks = await trackIdsOf(b, 'Alice');
      const bobTracks = await trackIdsOf(a, 'Bob');
      await waitHears(b, aliceTracks, 'Bob hears Alice');
      await waitHears(a, bobTracks, 'Alice hears Bob');
      const aliceId = await a.evaluate(() => window.veza.state.self.id);
      const before = await ufrags(a);

      await a.evaluate(() => window.veza.restartIce());

      // Every one of the four descriptions carries new credentials: Chromium's offer and answer
      // and the server's answer and offer.
      const after = await eventually('both restarts negotiated', async () => {
        const u = await ufrags(a);
        const fresh = Object.keys(u).every((k) => u[k] && u[k] !== before[k]);
        const signaling = await a.evaluate(() => ['publisher', 'subscriber'].map((r) => window.veza.pcs[r].signalingState));
        return fresh && signaling.every((st) => st === 'stable') ? u : null;
      });
      assert.notDeepEqual(after, before);
      await waitConnected(a);

      // Audio keeps flowing both ways across the restarted connections.
      const heardByBob = (await inboundOf(b, aliceTracks)).packetsReceived;
      const heardByAlice = (await inboundOf(a, bobTracks)).packetsReceived;
      await packetsBeyond(b, aliceTracks, heardByBob + 100, 'Bob hears Alice after the restart');
      await packetsBeyond(a, bobTracks, heardByAlice + 100, 'Alice hears Bob after the restart');

      // Same participant; Bob still has her, with the same tracks, and never lost her.
      assert.equal(await a.evaluate(() => window.veza.state.self.id), aliceId);
      assert.deepEqual(await trackIdsOf(b, 'Alice'), aliceTracks);
      const bobKnows = await b.evaluate((id) => window.veza.participants.has(id), aliceId);
      assert.ok(bobKnows, 'Bob still lists Alice');
      assert.deepEqual(a.pageErrors, []);
      assert.deepEqual(b.pageErrors, []);
    });
  });
});
