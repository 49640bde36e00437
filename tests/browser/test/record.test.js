// record.test.js — a musician whose token grants `record` records a jam from the reference
// client and downloads aligned FLAC stems; a musician without the grant sees no Record button.
// Waits are conditions with an upper bound, never sleeps.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { checkPrerequisites, eventually, joinAs, serverAndBrowser, waitConnected, withPages } from '../lib/harness.js';
import { trackIdsOf, waitHears } from '../lib/audio.js';

const TEST_TIMEOUT = 120_000;

it('has Debian Chromium and a built veza-sfu', () => checkPrerequisites());

describe('recording from the reference client', () => {
  const ctx = serverAndBrowser();

  it('records a jam and downloads one FLAC stem per musician', { timeout: TEST_TIMEOUT }, async () => {
    const { server, browser } = ctx;
    await withPages(browser, server, ['Rita', 'Sam'], async (rita, sam) => {
      await joinAs(rita, server, { session: 'take', user: 'rita', name: 'Rita', record: true });
      await joinAs(sam, server, { session: 'take', user: 'sam', name: 'Sam' });
      await Promise.all([waitConnected(rita), waitConnected(sam)]);
      await waitHears(sam, await trackIdsOf(sam, 'Rita'), 'Sam hears Rita');
      await waitHears(rita, await trackIdsOf(rita, 'Sam'), 'Rita hears Sam');

      assert.equal(await rita.isVisible('#record'), true, 'the record grant shows the button');
      assert.equal(await sam.isVisible('#record'), false, 'no grant, no button');

      await rita.click('#record');
      await rita.waitForFunction(() => Boolean(window.veza.recording?.active));
      // Both musicians hear that the session is being recorded.
      await sam.waitForFunction(() => Boolean(window.veza.recording?.active));
      // Record a couple of seconds of audio, measured by what Sam's browser received.
      const start = await sam.evaluate(() => performance.now());
      await eventually('two seconds of recording', () => sam.evaluate((t0) => performance.now() - t0 > 2000, start));
      await rita.click('#record');
      await rita.waitForFunction(() => Boolean(window.veza.recording?.last) && !window.veza.recording.active);

      await rita.click('#export-stems');
      await rita.waitForFunction(() => ['done', 'failed'].includes(window.veza.recording.exportState), null, {
        timeout: 60_000,
      });
      assert.equal(await rita.evaluate(() => window.veza.recording.exportState), 'done');
      const links = await rita.$$eval('#downloads a', (as) => as.map((a) => ({ name: a.textContent, href: a.href })));
      const flacs = links.filter((l) => l.name.endsWith('.flac'));
      assert.equal(flacs.length, 2, `one stem per musician: ${JSON.stringify(links)}`);

      // The links work as a person would use them, and serve real FLAC.
      for (const link of flacs) {
        const head = await rita.evaluate(async (href) => {
          const res = await fetch(href);
          const bytes = new Uint8Array(await res.arrayBuffer());
          return { status: res.status, magic: String.fromCharCode(...bytes.slice(0, 4)), size: bytes.length };
        }, link.href);
        assert.equal(head.status, 200, link.name);
        assert.equal(head.magic, 'fLaC', link.name);
        assert.ok(head.size > 10_000, `${link.name} holds audio (${head.size} bytes)`);
      }
    });
  });
});
