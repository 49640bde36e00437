// errors.test.js — the reference client tells a musician, in plain words, why they cannot
// join: a token the real server rejects, and a server that is draining.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { BOUND_MS, checkPrerequisites, launchBrowser, startServer, withPages } from '../lib/harness.js';

/** The error banner's title and detail once it shows. */
async function shownError(page) {
  await page.waitForSelector('#error:not([hidden])', { timeout: BOUND_MS });
  return { title: await page.textContent('#error-title'), detail: await page.textContent('#error-detail') };
}

async function assertOutside(page) {
  assert.equal(await page.textContent('#conn-state'), 'Not connected');
  assert.equal(await page.getAttribute('#conn-state', 'data-state'), 'failed');
  assert.equal(await page.locator('#participants li').count(), 0);
  assert.equal(await page.isEnabled('#join'), true, 'the musician can try again');
  assert.equal(await page.isDisabled('#chat-input'), true);
  assert.deepEqual(page.pageErrors, []);
}

it('has Debian Chromium and a built veza-sfu', () => checkPrerequisites());

describe('reference client error messages', () => {
  let server;
  let browser;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await server?.stop();
  });

  it('a token signed with another secret is rejected in plain words', { timeout: 60_000 }, async () => {
    await withPages(browser, server, ['Mallory'], async (page) => {
      const forged = await server.token({
        session: 'errors',
        user: 'mallory',
        name: 'Mallory',
        secret: 'not-the-secret-of-this-server-not-the-secret-of-this-server',
      });
      await page.goto(`${server.baseUrl}/?token=${encodeURIComponent(forged)}`);
      const { title, detail } = await shownError(page);
      assert.equal(title, 'Your access token was rejected');
      assert.match(detail, /ask for a new invite link/i);
      assert.match(detail, /token_bad_signature/);
      await assertOutside(page);
    });
  });

  it('a pasted token that is not a JWT is rejected in plain words', { timeout: 60_000 }, async () => {
    await withPages(browser, server, ['Typo'], async (page) => {
      await page.goto(server.baseUrl);
      await page.fill('#token', 'definitely-not-a-jwt');
      await page.click('#join');
      const { title, detail } = await shownError(page);
      assert.equal(title, 'Your access token was rejected');
      assert.match(detail, /token_malformed/);
      await assertOutside(page);
    });
  });

  it('a draining server says to come back later', { timeout: 60_000 }, async () => {
    // The dev server cannot be put into draining from outside yet, so the browser's view of it
    // is staged: the WebSocket upgrade is refused and the plain GET of the same URL gets the
    // exact 503 body src/http/ws.rs sends while not ready. The token is a real, valid one.
    await withPages(browser, server, ['Late'], async (page) => {
      const token = await server.token({ session: 'errors', user: 'late', name: 'Late' });
      await page.routeWebSocket(/\/v1\/ws/, (ws) => ws.close({ code: 1011, reason: '' }));
      await page.route(/\/v1\/ws\?/, (route) =>
        route.fulfill({
          status: 503,
          contentType: 'application/json',
          body: JSON.stringify({ code: 'not_ready', message: 'server is not accepting joins' }),
        }),
      );
      await page.goto(`${server.baseUrl}/?token=${encodeURIComponent(token)}`);
      const { title, detail } = await shownError(page);
      assert.equal(title, 'The server is not accepting joins right now');
      assert.match(detail, /try again in a minute/i);
      assert.match(detail, /not_ready/);
      await assertOutside(page);
    });
  });
});
