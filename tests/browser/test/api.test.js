// api.test.js — what the Veza Go API does to a jam, as musicians in the reference client live
// it: a listener promoted to musician over REST starts being heard; a session ended over REST
// tells everyone why. Waits are conditions with an upper bound, never sleeps.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { checkPrerequisites, joinAs, serverAndBrowser, waitConnected, withPages } from '../lib/harness.js';
import { trackIdsOf, waitHears } from '../lib/audio.js';

const TEST_TIMEOUT = 90_000;

it('has Debian Chromium and a built veza-sfu', () => checkPrerequisites());

describe('the Go API acting on a jam in the browser', () => {
  const ctx = serverAndBrowser();

  async function api(method, path, body) {
    const res = await fetch(`${ctx.server.baseUrl}${path}`, {
      method,
      headers: { Authorization: `Bearer ${await ctx.server.adminToken()}`, 'Content-Type': 'application/json' },
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: res.status, body: await res.text() };
  }

  it('a promoted listener is heard, and an ended session says so', { timeout: TEST_TIMEOUT }, async () => {
    const { server, browser } = ctx;
    await withPages(browser, server, ['Uma', 'Vic'], async (uma, vic) => {
      await joinAs(uma, server, { session: 'stage', user: 'uma', name: 'Uma' });
      // Vic joins as a listener: the token grants no publishing.
      const listener = await server.token({ session: 'stage', user: 'vic', name: 'Vic', publish: false });
      await vic.goto(`${server.baseUrl}/?token=${encodeURIComponent(listener)}`);
      await vic.waitForFunction(() => window.veza?.state.joined === true);
      // Nobody else publishes yet, so Uma has no subscriber connection to wait for.
      await Promise.all([waitConnected(uma, { subscriber: false }), waitConnected(vic)]);
      assert.equal(await vic.evaluate(() => window.veza.state.publishing), false, 'a listener does not publish');

      const vicId = await vic.evaluate(() => window.veza.state.self?.id);
      const r = await api('PUT', `/v1/sessions/stage/participants/${vicId}/grants`, { publish: true });
      assert.equal(r.status, 200, r.body);
      await vic.waitForFunction(() => window.veza.state.publishing === true);
      await waitHears(uma, await trackIdsOf(uma, 'Vic'), 'Uma hears the promoted Vic');

      const ended = await api('DELETE', '/v1/sessions/stage');
      assert.ok(ended.status >= 200 && ended.status < 300, ended.body);
      for (const page of [uma, vic]) {
        await page.waitForFunction(() => document.querySelector('#status')?.textContent.includes('session has ended'));
      }
    });
  });
});
