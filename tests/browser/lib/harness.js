// harness.js — starts a dev-mode veza-sfu, mints tokens with `veza-sfu token`, and drives
// Debian's /usr/bin/chromium through playwright-core (never a downloaded browser).

import { after, before } from 'node:test';
import { spawn, execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const execFileP = promisify(execFile);

/** The repository root (tests/browser/lib -> ../../..). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** Upper bounds only: every wait ends as soon as its condition holds. */
export const BOUND_MS = 20_000;

export function serverBin() {
  // A relative VEZA_SFU_BIN is taken from where the command was typed (npm's INIT_CWD).
  const bin = process.env.VEZA_SFU_BIN
    ? resolve(process.env.INIT_CWD ?? process.cwd(), process.env.VEZA_SFU_BIN)
    : join(REPO_ROOT, 'target/debug/veza-sfu');
  if (!existsSync(bin)) {
    throw new Error(
      `veza-sfu binary not found at ${bin}. Build it first: \`cargo build --bin veza-sfu\` ` +
        '(from the repository root), or point VEZA_SFU_BIN at a built binary.',
    );
  }
  return bin;
}

/** Debian's Chromium; CHROMIUM_BIN may point elsewhere (never at a downloaded browser build). */
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

export function chromiumPath() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `Chromium not found at ${CHROMIUM}. Install Debian's package: \`apt-get install chromium\` ` +
        '(or run `scripts/setup --browser`). These tests never download a browser.',
    );
  }
  return CHROMIUM;
}

/**
 * Throws, saying how to fix it, when Chromium or the server binary is missing. Each test file
 * runs it as a test of its own, so a missing prerequisite is counted as a failure (the suites'
 * before() hooks would only cancel their tests), never as a skip.
 */
export function checkPrerequisites() {
  chromiumPath();
  serverBin();
}

/**
 * A dev-mode server on a free loopback port with its own data dir (hence its own dev secret).
 * Resolves once it prints the reference-client URL, i.e. once it is listening.
 */
export async function startServer() {
  const bin = serverBin();
  const dataDir = mkdtempSync(join(tmpdir(), 'veza-browser-'));
  // The server refuses to start on any VEZA_* variable it does not know (VEZA_SFU_BIN among
  // them), and a developer's own VEZA_* settings would change what is tested: none are passed.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('VEZA_')));
  const env = {
    ...inherited,
    VEZA_DATA_DIR: dataDir,
    VEZA_HTTP__STATIC_DIR: join(REPO_ROOT, 'static'),
    // Every page of every test joins from 127.0.0.1: the per-address join limit is for the public.
    VEZA_HTTP__JOIN_ATTEMPTS_PER_MINUTE: '0',
  };
  const child = spawn(bin, ['serve', '--dev', '--listen', '127.0.0.1:0', '--udp-port', '0'], {
    cwd: REPO_ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = [];
  const remember = (line) => {
    log.push(line);
    if (log.length > 400) log.shift();
  };
  createInterface({ input: child.stderr }).on('line', remember);

  const exited = new Promise((res) => child.once('exit', (code, signal) => res({ code, signal })));
  const listening = new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`veza-sfu printed no URL within ${BOUND_MS} ms:\n${log.join('\n')}`)), BOUND_MS);
    createInterface({ input: child.stdout }).on('line', (line) => {
      remember(line);
      const m = line.match(/Open the reference client: (\S+)/);
      if (m) {
        clearTimeout(timer);
        res(new URL(m[1]));
      }
    });
    child.once('error', (e) => { clearTimeout(timer); rej(e); });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      rej(new Error(`veza-sfu exited (code ${code}, signal ${signal}) before listening:\n${log.join('\n')}`));
    });
  });
  let url;
  try {
    url = await listening;
  } catch (err) {
    child.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }

  let stopped = false;
  return {
    baseUrl: url.origin,
    log,
    /**
     * A fresh participant token for `session` (sessions are created on first join), signed
     * with the server's dev secret, or with `secret` to make one the server must refuse.
     */
    async token({ session, user, name, secret, record, publish = true }) {
      const args = ['token', '--dev', '--session', session, '--user', user, '--name', name ?? user];
      if (record) args.push('--record');
      if (!publish) args.push('--no-publish');
      const tokenEnv = secret ? { ...env, VEZA_AUTH__SECRET: secret } : env;
      const { stdout } = await execFileP(bin, args, { cwd: REPO_ROOT, env: tokenEnv });
      return stdout.trim();
    },
    /** A service token for the REST API (what the Veza Go API holds). */
    async adminToken() {
      const { stdout } = await execFileP(bin, ['token', '--dev', '--admin'], { cwd: REPO_ROOT, env });
      return stdout.trim();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGINT'); // its Ctrl-C path shuts down cleanly
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * For a `describe` block: starts a dev server and a browser before its tests and stops both
 * after them. Returns an object whose `server` and `browser` are set once `before` has run.
 */
export function serverAndBrowser() {
  const ctx = { server: null, browser: null };
  before(async () => {
    ctx.server = await startServer();
    ctx.browser = await launchBrowser();
  });
  after(async () => {
    await ctx.browser?.close().catch(() => {});
    await ctx.server?.stop();
  });
  return ctx;
}

/** Chromium flags: fake mic, loopback ICE, and nothing that reaches out to the network. */
export const CHROMIUM_ARGS = [
  '--no-sandbox', // we run as root in CI
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--autoplay-policy=no-user-gesture-required',
];

/** Headless Chromium; playwright gives it a fresh, temporary user data dir. */
export async function launchBrowser() {
  return chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS });
}

/**
 * A page for one musician, in its own browser context (own storage, own media devices).
 * Records console output, page errors and dialogs so tests can assert on them and print them.
 */
export async function newMusicianPage(browser, label, viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.label = label;
  page.consoleLines = [];
  page.pageErrors = [];
  page.dialogs = [];
  page.on('console', (m) => page.consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => page.pageErrors.push(e.message));
  page.on('dialog', (d) => {
    page.dialogs.push(`${d.type()}: ${d.message()}`);
    d.dismiss().catch(() => {});
  });
  return page;
}

/** Opens the reference client with a token in the URL (it joins by itself) and waits to be joined. */
export async function joinAs(page, server, { session, user, name, record }) {
  const token = await server.token({ session, user, name, record });
  await page.goto(`${server.baseUrl}/?token=${encodeURIComponent(token)}`);
  await page.waitForFunction(() => window.veza?.state.joined === true, null, { timeout: BOUND_MS });
  return token;
}

/** Waits until both of the page's peer connections are connected and its chat channel is open. */
export async function waitConnected(page, { subscriber = true } = {}) {
  await page.waitForFunction(
    (needSub) => {
      const v = window.veza;
      const ok = (pc) => pc?.connectionState === 'connected';
      return ok(v.pcs.publisher) && v.state.chatOpen && (!needSub || ok(v.pcs.subscriber));
    },
    subscriber,
    { timeout: BOUND_MS },
  );
}

/** Polls `fn` until it returns a truthy value or the bound passes (then throws with `what`). */
export async function eventually(what, fn, { timeout = BOUND_MS, interval = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * Inbound audio as the subscriber connection's getStats reports it, one entry per inbound-rtp
 * stream. `trackId` is the server's track id for what the m-section carries now, read from the
 * server's latest offer: the server reuses an m-section whose musician left for the next one,
 * and the browser keeps the receiver's MediaStreamTrack (and its id) across that, so the
 * receiver's own track id names whoever first came on it.
 */
export function inboundAudio(page) {
  return page.evaluate(async () => {
    const pc = window.veza.pcs.subscriber;
    if (!pc) return [];
    const served = new Map(); // mid -> { trackId, ssrc } in the current offer
    for (const section of (pc.remoteDescription?.sdp ?? '').split(/\r?\nm=/).slice(1)) {
      const mid = section.match(/^a=mid:(\S+)/m)?.[1];
      if (!mid) continue;
      const ssrc = section.match(/^a=ssrc:(\d+)/m)?.[1];
      served.set(mid, { trackId: section.match(/^a=msid:\S+ (\S+)/m)?.[1] ?? null, ssrc: ssrc ? Number(ssrc) : null });
    }
    const out = [];
    for (const transceiver of pc.getTransceivers()) {
      const { receiver } = transceiver;
      if (receiver.track?.kind !== 'audio') continue;
      const now = served.get(transceiver.mid);
      for (const st of (await receiver.getStats()).values()) {
        if (st.type !== 'inbound-rtp') continue;
        // A stream of an earlier musician on this m-section is not this one's.
        if (now?.ssrc != null && st.ssrc !== now.ssrc) continue;
        out.push({
          trackId: now?.trackId ?? receiver.track.id,
          packetsReceived: st.packetsReceived ?? 0,
          packetsLost: st.packetsLost ?? 0,
          totalAudioEnergy: st.totalAudioEnergy ?? 0,
          totalSamplesDuration: st.totalSamplesDuration ?? 0,
          totalSamplesReceived: st.totalSamplesReceived ?? 0,
          concealedSamples: st.concealedSamples ?? 0,
          audioLevel: st.audioLevel ?? 0,
          jitter: st.jitter,
          jitterBufferDelay: st.jitterBufferDelay,
          jitterBufferTargetDelay: st.jitterBufferTargetDelay,
          jitterBufferMinimumDelay: st.jitterBufferMinimumDelay,
          jitterBufferEmittedCount: st.jitterBufferEmittedCount,
          fecPacketsReceived: st.fecPacketsReceived,
          timestamp: st.timestamp,
        });
      }
    }
    return out;
  });
}

/** The publisher's outbound audio and the RTTs the browser measured, from its own getStats. */
export function publisherStats(page) {
  return page.evaluate(async () => {
    const out = { outbound: null, remoteInbound: null, pairRtt: {}, mediaSource: null };
    for (const role of ['publisher', 'subscriber']) {
      const pc = window.veza.pcs[role];
      if (!pc) continue;
      const report = await pc.getStats();
      for (const st of report.values()) {
        if (st.type === 'transport' && st.selectedCandidatePairId) {
          const pair = report.get(st.selectedCandidatePairId);
          out.pairRtt[role] = {
            currentRoundTripTime: pair?.currentRoundTripTime,
            totalRoundTripTime: pair?.totalRoundTripTime,
            responsesReceived: pair?.responsesReceived,
          };
        }
        if (role !== 'publisher') continue;
        if (st.type === 'outbound-rtp' && st.kind === 'audio') {
          out.outbound = {
            packetsSent: st.packetsSent,
            bytesSent: st.bytesSent,
            timestamp: st.timestamp,
            targetBitrate: st.targetBitrate,
          };
        }
        if (st.type === 'remote-inbound-rtp' && st.kind === 'audio') {
          out.remoteInbound = {
            roundTripTime: st.roundTripTime,
            roundTripTimeMeasurements: st.roundTripTimeMeasurements,
            totalRoundTripTime: st.totalRoundTripTime,
            jitter: st.jitter,
            packetsLost: st.packetsLost,
          };
        }
        if (st.type === 'media-source' && st.kind === 'audio') {
          out.mediaSource = { audioLevel: st.audioLevel, totalAudioEnergy: st.totalAudioEnergy };
        }
      }
    }
    return out;
  });
}

/**
 * Runs one scenario with fresh pages (one browser context each) and always closes them. When
 * the scenario fails, the error carries what the pages and the server said.
 */
export async function withPages(browser, server, labels, fn, viewport) {
  const pages = [];
  try {
    for (const label of labels) pages.push(await newMusicianPage(browser, label, viewport));
    return await fn(...pages);
  } catch (err) {
    const tail = server.log.slice(-30).join('\n');
    err.message += `\n${pages.map(dumpPage).join('\n')}\n--- server:\n${tail}`;
    throw err;
  } finally {
    await Promise.all(pages.map((p) => p.context().close().catch(() => {})));
  }
}

/** Prints what a page said, for a failing test's log. */
export function dumpPage(page) {
  const lines = [...page.consoleLines.slice(-40), ...page.pageErrors.map((e) => `[pageerror] ${e}`)];
  return `--- ${page.label}:\n${lines.join('\n')}`;
}

export function sum(list, key) {
  return list.reduce((acc, x) => acc + (x[key] ?? 0), 0);
}
