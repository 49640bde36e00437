// audio.js — what a page hears and sends, read from its own getStats and SDP, for the jam tests.

import { eventually, inboundAudio, BOUND_MS } from './harness.js';

/** Ids of the tracks `name` publishes, as the listener's client knows them (track_published). */
export async function trackIdsOf(listener, name) {
  return eventually(`${listener.label} to learn ${name}'s track`, () =>
    listener.evaluate((n) => {
      const p = [...window.veza.participants.values()].find((x) => x.name === n);
      return p && p.tracks.length ? p.tracks.map((t) => t.id) : null;
    }, name),
  );
}

/** The listener's inbound-rtp stats of the stream carrying `trackIds`, or null. */
export async function inboundOf(listener, trackIds) {
  const all = await inboundAudio(listener);
  return all.find((s) => trackIds.includes(s.trackId)) ?? null;
}

/** Waits until the stream's packets and audio energy both grow: the listener hears it. */
export async function waitHears(listener, trackIds, what) {
  const first = await eventually(`${what}: first packets`, async () => {
    const s = await inboundOf(listener, trackIds);
    return s && s.packetsReceived > 0 ? s : null;
  });
  return eventually(`${what}: packets and energy growing`, async () => {
    const s = await inboundOf(listener, trackIds);
    return s.packetsReceived > first.packetsReceived && s.totalAudioEnergy > first.totalAudioEnergy && s.totalAudioEnergy > 0
      ? { first, now: s }
      : null;
  });
}

/**
 * Waits until, over the last `windowS` seconds of received audio (totalSamplesDuration, so
 * in the browser's own clock), the energy either grew (`growing`) or stayed flat. Returns the
 * window's two samples. The bound is the only timing here.
 */
export async function waitEnergy(listener, trackIds, { growing, windowS = 1, epsilon = 1e-4 }, what) {
  const samples = [];
  return eventually(
    what,
    async () => {
      const s = await inboundOf(listener, trackIds);
      if (!s) return null;
      samples.push(s);
      const latest = s.totalSamplesDuration;
      // The newest sample at least windowS older than this one.
      const older = samples.filter((x) => latest - x.totalSamplesDuration >= windowS).at(-1);
      if (!older) return null;
      const grew = s.totalAudioEnergy - older.totalAudioEnergy > epsilon;
      return grew === growing ? { from: older, to: s } : null;
    },
    { timeout: BOUND_MS, interval: 200 },
  );
}

/** The `a=fmtp` parameters of the Opus payload type in an SDP, as a Map. */
export function opusFmtp(sdp) {
  const pt = sdp.match(/^a=rtpmap:(\d+) opus\/48000/im)?.[1];
  if (!pt) return null;
  const line = sdp.match(new RegExp(`^a=fmtp:${pt} (.*)$`, 'm'))?.[1] ?? '';
  return new Map(
    line
      .trim()
      .split(';')
      .filter(Boolean)
      .map((kv) => kv.trim().split('=')),
  );
}

/** `a=ptime` of an SDP, or null. */
export function sdpPtime(sdp) {
  const m = sdp.match(/^a=ptime:(\d+)/m);
  return m ? Number(m[1]) : null;
}

/** The four SDPs of a page's two connections. */
export function sdps(page) {
  return page.evaluate(() => {
    const { publisher, subscriber } = window.veza.pcs;
    return {
      publisherOffer: publisher?.localDescription?.sdp ?? null,
      publisherAnswer: publisher?.remoteDescription?.sdp ?? null,
      subscriberOffer: subscriber?.remoteDescription?.sdp ?? null,
      subscriberAnswer: subscriber?.localDescription?.sdp ?? null,
    };
  });
}
