// jam.test.js — two (then three) Chromium musicians jam through a real dev-mode veza-sfu using
// the reference client in static/; every assertion is on what the browser reports (getStats,
// SDP, DOM). Waits are conditions with an upper bound, never sleeps.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import {
  BOUND_MS,
  REPO_ROOT,
  checkPrerequisites,
  eventually,
  joinAs,
  launchBrowser,
  publisherStats,
  startServer,
  waitConnected,
  withPages,
} from '../lib/harness.js';
import { inboundOf, opusFmtp, sdpPtime, sdps, trackIdsOf, waitEnergy, waitHears } from '../lib/audio.js';

const OUT_DIR = join(REPO_ROOT, 'target/browser');
const TEST_TIMEOUT = 90_000;

/**
 * The names in a page's participant list: self first (the client's rule), then the others
 * sorted (the protocol promises no order among them).
 */
async function participantNames(page) {
  const names = await page.$$eval('#participants li[data-participant-id] .p-name', (els) => els.map((e) => e.textContent));
  return [names[0], ...names.slice(1).sort()];
}

/** Chat rows as a page shows them. */
function chatRows(page) {
  return page.$$eval('#chat-log .chat-msg', (rows) =>
    rows.map((r) => ({ from: r.querySelector('.chat-from')?.textContent, text: r.querySelector('.chat-text')?.textContent })),
  );
}

/** Types a chat line into the page's input and presses Send, like a person. */
async function typeChat(page, text) {
  await page.fill('#chat-input', text);
  await page.click('#chat-send');
}

/** Whether `name`'s row in the page's participant list carries the muted class. */
function shownMuted(page, name) {
  return page.$$eval(
    '#participants li[data-participant-id]',
    (lis, n) => lis.find((li) => li.querySelector('.p-name').textContent === n)?.classList.contains('muted') ?? null,
    name,
  );
}

function assertNoPageErrors(...pages) {
  for (const p of pages) {
    assert.deepEqual(p.pageErrors, [], `${p.label} threw in the page`);
    assert.deepEqual(p.dialogs, [], `${p.label} opened a dialog`);
  }
}

it('has Debian Chromium and a built veza-sfu', () => checkPrerequisites());

describe('browser jam through veza-sfu', () => {
  let server;
  let browser;
  const figures = {};

  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await server?.stop();
    if (Object.keys(figures).length) {
      mkdirSync(OUT_DIR, { recursive: true });
      writeFileSync(join(OUT_DIR, 'figures.json'), `${JSON.stringify(figures, null, 2)}\n`);
    }
  });

  it('two musicians hear each other in stereo Opus with in-band FEC', { timeout: TEST_TIMEOUT }, async (t) => {
    await withPages(browser, server, ['Alice', 'Bob'], async (a, b) => {
      await joinAs(a, server, { session: 'hear', user: 'alice', name: 'Alice' });
      await joinAs(b, server, { session: 'hear', user: 'bob', name: 'Bob' });
      await Promise.all([waitConnected(a), waitConnected(b)]);

      const aliceTracks = await trackIdsOf(b, 'Alice');
      const bobTracks = await trackIdsOf(a, 'Bob');
      const bobHearsAlice = await waitHears(b, aliceTracks, 'Bob hears Alice');
      const aliceHearsBob = await waitHears(a, bobTracks, 'Alice hears Bob');
      assert.ok(bobHearsAlice.now.totalAudioEnergy > 0);
      assert.ok(aliceHearsBob.now.totalAudioEnergy > 0);

      // The music profile, as both sides of both connections negotiated it.
      const sa = await sdps(a);
      const sb = await sdps(b);
      const negotiated = {
        "Alice's publisher offer (browser)": sa.publisherOffer,
        "Alice's publisher answer (server)": sa.publisherAnswer,
        "Bob's subscriber offer (server)": sb.subscriberOffer,
        "Bob's subscriber answer (browser)": sb.subscriberAnswer,
      };
      for (const [which, sdp] of Object.entries(negotiated)) {
        assert.ok(sdp, `${which}: no SDP`);
        const fmtp = opusFmtp(sdp);
        assert.ok(fmtp, `${which}: no Opus`);
        assert.equal(fmtp.get('stereo'), '1', `${which}: stereo=1 in ${[...fmtp]}`);
        assert.equal(fmtp.get('useinbandfec'), '1', `${which}: useinbandfec=1 in ${[...fmtp]}`);
      }
      figures.serverAnswerFmtp = [...opusFmtp(sa.publisherAnswer)].map((kv) => kv.join('=')).join(';');
      figures.serverAnswerPtimeMs = sdpPtime(sa.publisherAnswer);

      // What Chromium actually sends: packets over >= 2 s of its own stats clock, at the sender
      // (outbound-rtp) and at the receiver (inbound-rtp through the SFU).
      const out0 = (await publisherStats(a)).outbound;
      const in0 = await inboundOf(b, aliceTracks);
      const { out1, in1 } = await eventually('2 s of stats', async () => {
        const o = (await publisherStats(a)).outbound;
        return o.timestamp - out0.timestamp >= 2000 ? { out1: o, in1: await inboundOf(b, aliceTracks) } : null;
      });
      const sentPtime = (out1.timestamp - out0.timestamp) / (out1.packetsSent - out0.packetsSent);
      const recvPtime = (in1.timestamp - in0.timestamp) / (in1.packetsReceived - in0.packetsReceived);
      const jbWindowMs = (1000 * (in1.jitterBufferDelay - in0.jitterBufferDelay)) / (in1.jitterBufferEmittedCount - in0.jitterBufferEmittedCount);
      const jbCumulativeMs = (1000 * in1.jitterBufferDelay) / in1.jitterBufferEmittedCount;
      const jbTargetMs = (1000 * (in1.jitterBufferTargetDelay - in0.jitterBufferTargetDelay)) / (in1.jitterBufferEmittedCount - in0.jitterBufferEmittedCount);
      assert.ok(sentPtime > 0 && Number.isFinite(sentPtime), `packet time ${sentPtime}`);

      // Round trips as Chromium measures them: RTCP (remote-inbound-rtp, from the server's
      // receiver reports) and ICE consent checks (the selected candidate pair).
      const rtt = await eventually('an RTCP round trip from the server', async () => {
        const st = await publisherStats(a);
        return st.remoteInbound?.roundTripTimeMeasurements > 0 ? st : null;
      });
      const signalingMs = await a.evaluate(() => window.veza.state.rtt.signalingMs);

      Object.assign(figures, {
        chromiumSendPtimeMs: +sentPtime.toFixed(2),
        receivedPtimeAtPeerMs: +recvPtime.toFixed(2),
        remoteInboundRoundTripTimeMs: +(rtt.remoteInbound.roundTripTime * 1000).toFixed(3),
        candidatePairCurrentRoundTripTimeMs: {
          publisher: rtt.pairRtt.publisher?.currentRoundTripTime * 1000,
          subscriber: rtt.pairRtt.subscriber?.currentRoundTripTime * 1000,
        },
        jitterBufferDelayPerEmittedSampleMs: { last2s: +jbWindowMs.toFixed(2), sinceStart: +jbCumulativeMs.toFixed(2) },
        jitterBufferTargetDelayPerEmittedSampleMs: +jbTargetMs.toFixed(2),
        packetsLostAtPeer: in1.packetsLost,
        concealedSamplesAtPeer: in1.concealedSamples,
        signalingPingRttMs: signalingMs == null ? null : +signalingMs.toFixed(1),
        outboundTargetBitrate: out1.targetBitrate,
      });
      t.diagnostic(`Opus packet time Chromium sends: ${sentPtime.toFixed(2)} ms (received at the peer: ${recvPtime.toFixed(2)} ms); server asked a=ptime:${figures.serverAnswerPtimeMs}`);
      t.diagnostic(`RTT: RTCP ${figures.remoteInboundRoundTripTimeMs} ms, ICE pair ${JSON.stringify(figures.candidatePairCurrentRoundTripTimeMs)} ms, signaling ping ${figures.signalingPingRttMs} ms`);
      t.diagnostic(`jitterBufferDelay per emitted sample: ${jbWindowMs.toFixed(1)} ms over the last 2 s, ${jbCumulativeMs.toFixed(1)} ms since start (target ${jbTargetMs.toFixed(1)} ms)`);
      console.log('browser figures:', JSON.stringify(figures));

      // The page itself shows the meters, the delays and the connection.
      await b.waitForFunction(
        () => {
          const li = [...document.querySelectorAll('#participants li[data-participant-id]')].find(
            (x) => x.querySelector('.p-name').textContent === 'Alice',
          );
          return li && Number(li.querySelector('.level').dataset.level) > 0 && /\d ms/.test(li.querySelector('.p-delay').textContent);
        },
        null,
        { timeout: BOUND_MS },
      );
      for (const p of [a, b]) {
        assert.equal(await p.textContent('#conn-state'), 'Connected');
        await p.waitForFunction(() => /\d ms/.test(document.querySelector('#server-rtt').textContent), null, { timeout: BOUND_MS });
      }
      assertNoPageErrors(a, b);
    });
  });

  it('chat from Alice shows at Bob with her name, and markup stays text', { timeout: TEST_TIMEOUT }, async () => {
    await withPages(browser, server, ['Alice', 'Bob'], async (a, b) => {
      await joinAs(a, server, { session: 'chat', user: 'alice', name: 'Alice' });
      await joinAs(b, server, { session: 'chat', user: 'bob', name: 'Bob' });
      await Promise.all([waitConnected(a, { subscriber: false }), waitConnected(b, { subscriber: false })]);

      const evil = '<img src=x onerror=alert(1)>';
      await typeChat(a, 'hello from Alice');
      await typeChat(a, evil);
      await b.waitForFunction((n) => document.querySelectorAll('#chat-log .chat-msg').length >= n, 2, { timeout: BOUND_MS });

      assert.deepEqual(await chatRows(b), [
        { from: 'Alice', text: 'hello from Alice' },
        { from: 'Alice', text: evil },
      ]);
      // The sender sees her own messages relayed back, in the same order.
      await a.waitForFunction(() => document.querySelectorAll('#chat-log .chat-msg').length >= 2, null, { timeout: BOUND_MS });
      assert.deepEqual((await chatRows(a)).map((r) => r.text), ['hello from Alice', evil]);
      for (const p of [a, b]) {
        assert.equal(await p.locator('#chat-log img').count(), 0, `${p.label}: the markup became an element`);
        assert.equal(await p.inputValue('#chat-input'), '', `${p.label}: input not cleared`);
      }
      // No alert() ran: a dialog would have been recorded by the page's dialog listener.
      assertNoPageErrors(a, b);
    });
  });

  it('a late joiner sees the chat history, and everyone sees who leaves', { timeout: TEST_TIMEOUT }, async () => {
    await withPages(browser, server, ['Alice', 'Bob', 'Carol'], async (a, b, c) => {
      await joinAs(a, server, { session: 'late', user: 'alice', name: 'Alice' });
      await joinAs(b, server, { session: 'late', user: 'bob', name: 'Bob' });
      await Promise.all([waitConnected(a, { subscriber: false }), waitConnected(b, { subscriber: false })]);
      await typeChat(a, 'tune to A440');
      await typeChat(b, 'ok, tuned');
      await a.waitForFunction(() => document.querySelectorAll('#chat-log .chat-msg').length >= 2, null, { timeout: BOUND_MS });

      await joinAs(c, server, { session: 'late', user: 'carol', name: 'Carol' });
      assert.deepEqual(await chatRows(c), [
        { from: 'Alice', text: 'tune to A440' },
        { from: 'Bob', text: 'ok, tuned' },
      ]);
      assert.deepEqual(await participantNames(c), ['Carol', 'Alice', 'Bob']);
      await b.waitForFunction(
        () => [...document.querySelectorAll('#participants .p-name')].some((e) => e.textContent === 'Carol'),
        null,
        { timeout: BOUND_MS },
      );
      assert.deepEqual(await participantNames(b), ['Bob', 'Alice', 'Carol']);
      // Carol hears both of them.
      await waitConnected(c);
      await waitHears(c, await trackIdsOf(c, 'Alice'), 'Carol hears Alice');
      await waitHears(c, await trackIdsOf(c, 'Bob'), 'Carol hears Bob');

      const aliceId = await a.evaluate(() => window.veza.state.self.id);
      await a.click('#leave');
      for (const p of [b, c]) {
        await p.waitForFunction(
          (id) => !document.querySelector(`#participants li[data-participant-id="${id}"]`),
          aliceId,
          { timeout: BOUND_MS },
        );
        // Her audio element goes with her.
        assert.equal(await p.locator(`#audio-sinks audio[data-participant-id="${aliceId}"]`).count(), 0);
      }
      assert.deepEqual(await participantNames(b), ['Bob', 'Carol']);
      assert.deepEqual(await participantNames(c), ['Carol', 'Bob']);
      // Alice's own page says she left and lets her join again.
      assert.equal(await a.textContent('#conn-state'), 'Left');
      assert.equal(await a.locator('#participants li').count(), 0);
      assert.equal(await a.isEnabled('#join'), true);

      // And she can come back from the same page: a new participant, heard again.
      await a.click('#join');
      await a.waitForFunction(() => window.veza.state.joined === true, null, { timeout: BOUND_MS });
      await waitConnected(a);
      await b.waitForFunction(
        () => [...document.querySelectorAll('#participants .p-name')].some((e) => e.textContent === 'Alice'),
        null,
        { timeout: BOUND_MS },
      );
      assert.deepEqual(await participantNames(a), ['Alice', 'Bob', 'Carol']);
      await waitHears(b, await trackIdsOf(b, 'Alice'), 'Bob hears Alice again');
      // She came back on the m-section she left: Bob's offers stay as large as the band,
      // not one m-section more for every musician who ever joined.
      const bobOffer = (await sdps(b)).subscriberOffer;
      assert.equal(bobOffer.match(/^m=audio/gm).length, 2, bobOffer);
      assert.equal(bobOffer.match(/^a=sendonly/gm).length, 2, bobOffer);
      // And Bob's page plays her through an element of her new participation.
      const aliceAgain = await a.evaluate(() => window.veza.state.self.id);
      await b.waitForSelector(`#audio-sinks audio[data-participant-id="${aliceAgain}"]`, { state: 'attached', timeout: BOUND_MS });
      await waitHears(a, await trackIdsOf(a, 'Carol'), 'Alice hears Carol after rejoining');
      assertNoPageErrors(a, b, c);
    });
  });

  it('mute in Alice silences her at Bob, and unmute brings her back', { timeout: TEST_TIMEOUT }, async (t) => {
    await withPages(browser, server, ['Alice', 'Bob'], async (a, b) => {
      await joinAs(a, server, { session: 'mute', user: 'alice', name: 'Alice' });
      await joinAs(b, server, { session: 'mute', user: 'bob', name: 'Bob' });
      await Promise.all([waitConnected(a), waitConnected(b)]);
      const aliceTracks = await trackIdsOf(b, 'Alice');
      await waitHears(b, aliceTracks, 'Bob hears Alice');

      await a.click('#mute');
      assert.equal(await a.getAttribute('#mute', 'aria-pressed'), 'true');
      assert.equal(await a.textContent('#mute'), 'Unmute');
      await eventually('Bob to see Alice muted', async () => (await shownMuted(b, 'Alice')) === true);
      // A muted track (track.enabled = false) in Chrome still sends a packet of encoded silence
      // every ptime, so packet counts keep growing: what stops is the audio energy.
      const silent = await waitEnergy(b, aliceTracks, { growing: false }, 'Alice silent at Bob');
      const packetsWhileMuted = silent.to.packetsReceived - silent.from.packetsReceived;
      t.diagnostic(
        `while muted, over ${(silent.to.totalSamplesDuration - silent.from.totalSamplesDuration).toFixed(2)} s: ` +
          `+${packetsWhileMuted} packets, energy +${(silent.to.totalAudioEnergy - silent.from.totalAudioEnergy).toExponential(2)}, audioLevel ${silent.to.audioLevel}`,
      );
      figures.packetsPerSecondWhileMuted = Math.round(
        packetsWhileMuted / (silent.to.totalSamplesDuration - silent.from.totalSamplesDuration),
      );
      assert.ok(silent.to.audioLevel < 0.001, `audioLevel while muted: ${silent.to.audioLevel}`);
      await b.waitForFunction(
        () => [...document.querySelectorAll('#participants li')].some(
          (li) => li.querySelector('.p-name').textContent === 'Alice' && li.querySelector('.level').dataset.level === '0.00',
        ),
        null,
        { timeout: BOUND_MS },
      );

      await a.click('#mute');
      assert.equal(await a.getAttribute('#mute', 'aria-pressed'), 'false');
      await eventually('Bob to see Alice unmuted', async () => (await shownMuted(b, 'Alice')) === false);
      await waitEnergy(b, aliceTracks, { growing: true }, 'Alice heard again at Bob');
      assertNoPageErrors(a, b);
    });
  });

  it('a two-musician jam page looks right on a laptop screen (screenshot)', { timeout: TEST_TIMEOUT }, async (t) => {
    const laptop = { width: 1366, height: 768 };
    await withPages(
      browser,
      server,
      ['Ana', 'Ben'],
      async (a, b) => {
        await joinAs(a, server, { session: 'friday-jam', user: 'ana', name: 'Ana (guitar)' });
        await joinAs(b, server, { session: 'friday-jam', user: 'ben', name: 'Ben (bass)' });
        await Promise.all([waitConnected(a), waitConnected(b)]);
        await typeChat(b, 'ready when you are');
        await typeChat(a, 'count us in: 1, 2, 3, 4');
        await typeChat(b, '<b>this stays text</b>');
        // Everything the page can show is showing: meters moving, delays, RTT, packet time.
        await a.waitForFunction(
          () => {
            const lis = [...document.querySelectorAll('#participants li[data-participant-id]')];
            return (
              lis.length === 2 &&
              lis.every((li) => Number(li.querySelector('.level').dataset.level) > 0) &&
              /\d ms/.test(lis[1].querySelector('.p-delay').textContent) &&
              /\d ms/.test(document.querySelector('#server-rtt').textContent) &&
              /packets/.test(document.querySelector('#codec').textContent) &&
              document.querySelectorAll('#chat-log .chat-msg').length === 3
            );
          },
          null,
          { timeout: BOUND_MS },
        );
        mkdirSync(OUT_DIR, { recursive: true });
        const path = join(OUT_DIR, 'jam.png');
        await a.screenshot({ path });
        assert.ok(statSync(path).size > 10_000, 'screenshot is suspiciously small');
        // Nothing is cut off at laptop size: the page does not scroll.
        const overflow = await a.evaluate(() => document.documentElement.scrollHeight - window.innerHeight);
        assert.ok(overflow <= 0, `page overflows the laptop screen by ${overflow}px`);
        t.diagnostic(`screenshot: ${path}`);
        assertNoPageErrors(a, b);
      },
      laptop,
    );
  });
});
