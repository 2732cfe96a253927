#!/usr/bin/env node
// Drives the Portcullis dashboard (/-/ui) in Debian's headless Chromium for
// tests/dashboard.rs. Never downloads a browser: it launches
// /usr/bin/chromium (or $CHROMIUM) through playwright-core.
//
//   node tests/ui/dashboard.mjs --url http://127.0.0.1:PORT/-/ui \
//        --reference 127.0.0.1:5000/demo/unsigned --attestor built-by-ci \
//        --expect "no signatures found" --screenshot out.png [--timeout-ms 3000]
//        [--absent-first] [--wait-go]
//
// Protocol with the caller (one line each on stdout / stdin):
//   1. loads the page and waits until it has shown live data and the policy;
//   2. with --absent-first, checks there is no row for --reference yet;
//   3. prints "READY" and, with --wait-go, waits for a "GO" line on stdin
//      (the caller does the denied pull in between);
//   4. waits at most --timeout-ms for a deny row for --reference to appear
//      WITHOUT reloading the page, clicks it, checks the explanation names
//      the attestor and the failure, takes a full-page screenshot;
//   5. fails if the page logged any console error or threw;
//   6. prints "OK appeared-after-ms=N ..." and exits 0. Any failure prints
//      "FAIL: why" on stderr and exits 1.

import { mkdtempSync, rmSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';

function parseArgs(argv) {
  const out = { timeoutMs: 3000, absentFirst: false, waitGo: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) fail(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--url': out.url = next(); break;
      case '--reference': out.reference = next(); break;
      case '--attestor': out.attestor = next(); break;
      case '--expect': out.expect = next(); break;
      case '--screenshot': out.screenshot = next(); break;
      case '--timeout-ms': out.timeoutMs = Number(next()); break;
      case '--absent-first': out.absentFirst = true; break;
      case '--wait-go': out.waitGo = true; break;
      default: fail(`unknown argument ${a}`);
    }
  }
  for (const k of ['url', 'reference', 'attestor', 'expect', 'screenshot']) {
    if (!out[k]) fail(`missing --${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())}`);
  }
  return out;
}

let browser = null;
let profile = null;

/** An expected failure: reported without a stack trace. */
class Failure extends Error {}

function fail(msg) {
  throw new Failure(msg);
}

async function cleanup() {
  try { if (browser) await browser.close(); } catch { /* already gone */ }
  browser = null;
  if (profile) { try { rmSync(profile, { recursive: true, force: true }); } catch { /* ignore */ } }
  profile = null;
}

function waitForGo() {
  return new Promise((resolve, reject) => {
    let go = false;
    const rl = createInterface({ input: process.stdin });
    rl.on('line', (line) => {
      if (line.trim() === 'GO') { go = true; resolve(); rl.close(); }
    });
    rl.on('close', () => { if (!go) reject(new Error('stdin closed before GO')); });
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch (e) {
    fail(`cannot load playwright-core (${e.message}): run \`npm ci --prefix tests/ui\``);
  }
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!existsSync(executablePath)) {
    fail(`${executablePath} not found: run \`apt-get install -y chromium\``);
  }
  profile = mkdtempSync(join(tmpdir(), 'portcullis-chromium-'));
  // launchPersistentContext: a fresh user-data-dir of our own.
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // Containers often have a tiny /dev/shm.
      '--disable-dev-shm-usage',
    ],
    viewport: { width: 1440, height: 900 },
    deviceScaleFactor: 1,
    colorScheme: 'light',
    timezoneId: 'UTC',
    locale: 'en-US',
  });
  browser = context;
  const page = context.pages()[0] || await context.newPage();

  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`uncaught exception: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`));

  const response = await page.goto(args.url, { waitUntil: 'load', timeout: 10000 });
  if (!response || response.status() !== 200) {
    fail(`GET ${args.url} answered ${response ? response.status() : 'nothing'}`);
  }
  // Live data and the policy are on the page.
  try {
    await page.waitForSelector('#status[data-state="live"]', { timeout: 5000 });
    await page.waitForFunction(() => {
      const r = document.getElementById('policy-revision');
      return r && r.textContent.trim().length > 0;
    }, null, { timeout: 5000 });
  } catch (e) {
    const status = await page.textContent('#status').catch(() => '?');
    fail(`the dashboard did not show live data within 5 s (status: ${status}); ${problems.join('; ')}`);
  }

  const rowSel = `#decisions-body tr[data-verdict="deny"][data-reference="${args.reference.replace(/"/g, '\\"')}"]`;
  if (args.absentFirst) {
    const n = await page.locator(rowSel).count();
    if (n !== 0) fail(`a deny row for ${args.reference} is on the page before the pull (${n})`);
  }
  const rowsBefore = await page.locator('#decisions-body tr').count();
  process.stdout.write(`READY rows=${rowsBefore}\n`);
  if (args.waitGo) {
    try { await waitForGo(); } catch (e) { fail(e.message); }
  }

  const t0 = Date.now();
  try {
    await page.waitForSelector(rowSel, { timeout: args.timeoutMs });
  } catch {
    const refs = await page.$$eval('#decisions-body tr', (rs) =>
      rs.map((r) => `${r.dataset.verdict} ${r.dataset.reference}`));
    fail(`no deny row for ${args.reference} appeared within ${args.timeoutMs} ms without a reload; ` +
      `rows: [${refs.join(', ')}]`);
  }
  const appearedMs = Date.now() - t0;

  // The explanation of that decision.
  await page.locator(rowSel).first().click();
  try {
    await page.waitForSelector(`#detail[data-state="shown"][data-verdict="deny"]`, { timeout: 2000 });
  } catch {
    fail('clicking the row did not show its explanation');
  }
  const detail = await page.locator('#detail').innerText();
  const attestor = page.locator(`#detail-attestors .attestor[data-attestor="${args.attestor}"]`);
  if (await attestor.count() !== 1) {
    fail(`the explanation does not list attestor ${args.attestor}:\n${detail}`);
  }
  if ((await attestor.getAttribute('data-satisfied')) !== 'false') {
    fail(`the explanation shows attestor ${args.attestor} as satisfied:\n${detail}`);
  }
  const attestorText = await attestor.innerText();
  if (!attestorText.includes(args.expect)) {
    fail(`attestor ${args.attestor}'s explanation lacks "${args.expect}":\n${attestorText}`);
  }
  const reason = await page.locator('#detail-reason').innerText();
  if (!reason.includes(args.attestor) || !reason.includes(args.expect)) {
    fail(`the reason does not name the attestor and the failure: ${reason}`);
  }
  const rule = await page.locator('#detail-rule').innerText();
  if (!rule.trim()) fail('the explanation shows no rule');

  // Let the chart and the top list catch up (same poll) before the picture.
  try {
    await page.waitForFunction((ref) => {
      const c = document.getElementById('chart');
      const top = document.querySelector(`#top-denied li[data-reference="${CSS.escape(ref)}"]`);
      return c && Number(c.getAttribute('data-denied')) > 0 && top;
    }, args.reference, { timeout: 3000 });
  } catch {
    fail('the chart and the top blocked repositories did not show the denial within 3 s');
  }

  mkdirSync(dirname(args.screenshot), { recursive: true });
  await page.screenshot({ path: args.screenshot, fullPage: true, animations: 'disabled' });

  // The filters narrow the table (server-side query) and clear again.
  const rowsNow = () => page.$$eval('#decisions-body tr', (rs) =>
    rs.map((r) => ({ verdict: r.dataset.verdict, reference: r.dataset.reference })));
  const until = async (what, pred) => {
    try {
      await page.waitForFunction(pred, null, { timeout: 3000 });
    } catch {
      fail(`filters: ${what}; rows: ${JSON.stringify(await rowsNow())}`);
    }
  };
  await page.selectOption('#f-verdict', 'allow');
  await until('verdict=allow still lists a denial', () => {
    const rs = [...document.querySelectorAll('#decisions-body tr')];
    return rs.length > 0 && rs.every((r) => r.dataset.verdict === 'allow');
  });
  await page.selectOption('#f-verdict', 'deny');
  await page.fill('#f-repository', args.reference.slice(args.reference.indexOf('/') + 1));
  await until(`verdict=deny + repository did not narrow to ${args.reference}`, () => {
    const rs = [...document.querySelectorAll('#decisions-body tr')];
    return rs.length > 0 && rs.every((r) => r.dataset.verdict === 'deny' &&
      r.dataset.reference.endsWith(document.getElementById('f-repository').value));
  });
  await page.click('#f-clear');
  await until('clearing the filters did not bring every verdict back', () =>
    new Set([...document.querySelectorAll('#decisions-body tr')].map((r) => r.dataset.verdict)).size > 1);

  if (problems.length) fail(`the page reported problems:\n  ${problems.join('\n  ')}`);
  process.stdout.write(`OK appeared-after-ms=${appearedMs} screenshot=${args.screenshot}\n`);
  await cleanup();
}

main().catch(async (e) => {
  process.stderr.write(`FAIL: ${e instanceof Failure ? e.message : (e && e.stack) || e}\n`);
  await cleanup();
  process.exit(1);
});
