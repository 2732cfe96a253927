#!/usr/bin/env node
// Drives the Portcullis dashboard (/-/ui) with an admin token configured,
// in Debian's headless Chromium, for tests/dashboard.rs. Never downloads a
// browser: it launches /usr/bin/chromium (or $CHROMIUM) through
// playwright-core.
//
//   node tests/ui/login.mjs --url http://127.0.0.1:PORT/-/ui \
//        --token TOKEN --wrong-token OTHER
//
// Checks, in order:
//   1. the page loads and shows the token form, having asked the API for
//      nothing (no request to /-/api or /metrics before a token is given);
//   2. a wrong token is refused: the form comes back with a message;
//   3. the right token brings live data and the policy, with every API
//      request carrying Authorization: Bearer;
//   4. a reload of the tab keeps working without asking again
//      (sessionStorage), and no cookie was set;
//   5. after step 2, the page logged no console error and threw nothing.
// Prints "OK ..." and exits 0; any failure prints "FAIL: why" on stderr
// and exits 1.

import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

class Failure extends Error {}
function fail(msg) { throw new Failure(msg); }

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) fail(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--url': out.url = next(); break;
      case '--token': out.token = next(); break;
      case '--wrong-token': out.wrongToken = next(); break;
      default: fail(`unknown argument ${a}`);
    }
  }
  for (const k of ['url', 'token', 'wrongToken']) if (!out[k]) fail(`missing ${k}`);
  return out;
}

let browser = null;
let profile = null;
async function cleanup() {
  try { if (browser) await browser.close(); } catch { /* already gone */ }
  browser = null;
  if (profile) { try { rmSync(profile, { recursive: true, force: true }); } catch { /* ignore */ } }
  profile = null;
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
  if (!existsSync(executablePath)) fail(`${executablePath} not found: run \`apt-get install -y chromium\``);
  profile = mkdtempSync(join(tmpdir(), 'portcullis-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage',
    ],
    viewport: { width: 1280, height: 800 },
  });
  browser = context;
  const page = context.pages()[0] || await context.newPage();

  let problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`uncaught exception: ${e.message}`));
  const apiRequests = [];
  // API requests not yet answered (or failed), to know when the wrong
  // token's requests are all over.
  const inFlight = new Set();
  page.on('request', (r) => {
    const path = new URL(r.url()).pathname;
    if (path.startsWith('/-/api/') || path === '/metrics') {
      apiRequests.push({ path, authorization: r.headers()['authorization'] || null });
      inFlight.add(r);
    }
  });
  // Answered is enough: the page need not read a 401's body, and the
  // browser logs the 401 when the response arrives.
  page.on('response', (r) => inFlight.delete(r.request()));
  page.on('requestfailed', (r) => inFlight.delete(r));

  // 1. The form, and no API request without a token.
  const response = await page.goto(args.url, { waitUntil: 'load', timeout: 10000 });
  if (!response || response.status() !== 200) fail(`GET ${args.url} answered ${response ? response.status() : 'nothing'}`);
  try {
    await page.waitForSelector('#login:not([hidden])', { timeout: 5000 });
    await page.waitForSelector('#status[data-state="login"]', { timeout: 5000 });
  } catch {
    fail(`the page did not ask for the token; status: ${await page.textContent('#status').catch(() => '?')}`);
  }
  await page.waitForTimeout(1500);
  if (apiRequests.length) fail(`the page called the API before it had a token: ${JSON.stringify(apiRequests)}`);
  if (problems.length) fail(`problems before sign-in:\n  ${problems.join('\n  ')}`);

  // 2. A wrong token is refused.
  await page.fill('#login-token', args.wrongToken);
  await page.click('#login-submit');
  try {
    await page.waitForFunction(() => {
      const f = document.getElementById('login');
      const e = document.getElementById('login-error');
      return f && !f.hidden && e && e.textContent.trim().length > 0;
    }, null, { timeout: 5000 });
  } catch {
    fail('a wrong token did not bring the form back with a message');
  }
  if (!apiRequests.some((r) => r.authorization === `Bearer ${args.wrongToken}`)) {
    fail('the wrong token was never sent as a bearer token');
  }
  // The browser logs the 401s as console errors: expected up to here,
  // including those of the wrong token's requests still in flight when the
  // form came back (the page asks several endpoints at once).
  // Wait until every one of them was answered, then a moment for the
  // browser's console message about the last 401: on a loaded machine it
  // comes after the response, and must not be counted against step 5.
  await page.waitForLoadState('networkidle', { timeout: 5000 }).catch(() => {});
  for (let waited = 0; inFlight.size && waited < 10000; waited += 50) await page.waitForTimeout(50);
  if (inFlight.size) fail(`${inFlight.size} API requests with the wrong token were never answered`);
  await page.waitForTimeout(500);
  problems = [];
  apiRequests.length = 0;

  // 3. The right token: live data and the policy.
  await page.fill('#login-token', args.token);
  await page.click('#login-submit');
  const live = async (what) => {
    try {
      await page.waitForSelector('#status[data-state="live"]', { timeout: 5000 });
      await page.waitForFunction(() => {
        const r = document.getElementById('policy-revision');
        return r && r.textContent.trim().length > 0;
      }, null, { timeout: 5000 });
    } catch {
      fail(`${what}: no live data within 5 s (status: ${await page.textContent('#status').catch(() => '?')})`);
    }
    if (!(await page.locator('#login').isHidden())) fail(`${what}: the token form is still shown`);
  };
  await live('after signing in');
  const unsigned = apiRequests.filter((r) => r.authorization !== `Bearer ${args.token}`);
  if (!apiRequests.length || unsigned.length) {
    fail(`API requests without the token: ${JSON.stringify(unsigned)} (of ${apiRequests.length})`);
  }

  // 4. A reload keeps the session; nothing went into a cookie.
  await page.reload({ waitUntil: 'load' });
  await live('after a reload');
  const cookies = await context.cookies();
  if (cookies.length) fail(`cookies were set: ${JSON.stringify(cookies.map((c) => c.name))}`);

  // 5. Clean since the wrong token.
  if (problems.length) fail(`the page reported problems:\n  ${problems.join('\n  ')}`);
  process.stdout.write(`OK api-requests=${apiRequests.length}\n`);
  await cleanup();
}

main().catch(async (e) => {
  process.stderr.write(`FAIL: ${e instanceof Failure ? e.message : (e && e.stack) || e}\n`);
  await cleanup();
  process.exit(1);
});
