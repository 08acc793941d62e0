// The workshop console end to end, in headless Chromium: the page loads from the admin
// listener, shows live figures while traffic runs, refuses a wrong token, switches a fix
// flag off and on with the right one — checked on the page and through /admin/flags —
// and leaves a screenshot. `tests/browser/run` starts Keel and runs this; it can also run
// against any Keel:
//
//   KEEL_ADMIN_URL=http://127.0.0.1:9000 KEEL_API_URL=http://127.0.0.1:8080 \
//     node --test tests/browser/console.test.mjs
//
// Environment: KEEL_ADMIN_URL, KEEL_API_URL (required); KEEL_ADMIN_TOKEN (default the dev
// token); SCREENSHOT (default target/ci-artifacts/console.png); CHROMIUM (default
// /usr/bin/chromium); CONSOLE_FLAG (default batch_loading); CONSOLE_WARMUP_SECONDS (traffic
// before the flag is switched, default 0: for a screenshot whose charts have a history).

import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const adminUrl = required('KEEL_ADMIN_URL');
const apiUrl = required('KEEL_API_URL');
const token = process.env.KEEL_ADMIN_TOKEN ?? 'keel-dev-admin-token';
const screenshot = resolve(root, process.env.SCREENSHOT ?? 'target/ci-artifacts/console.png');
const flag = process.env.CONSOLE_FLAG ?? 'batch_loading';
const warmupSeconds = Number(process.env.CONSOLE_WARMUP_SECONDS ?? 0);

// Chromium's switches for a machine without a display, a GPU or a network beyond
// loopback: without the background-networking ones it keeps trying to reach Google.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const STEP_MS = 15_000;

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required (see the header of ${fileURLToPath(import.meta.url)})`);
  return value.replace(/\/$/, '');
}

const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

/** A call with a bounded wait: a hung service fails the test instead of stalling CI. */
function call(url, init = {}) {
  return fetch(url, { ...init, signal: AbortSignal.timeout(5_000) });
}

function adminCall(method, path, body) {
  return call(`${adminUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

async function flagEnabled(name) {
  const response = await adminCall('GET', '/admin/flags');
  assert.equal(response.status, 200, 'GET /admin/flags');
  const { items } = await response.json();
  const found = items.find((f) => f.name === name);
  assert.ok(found, `${name} is listed by /admin/flags`);
  return found.enabled;
}

// ---------------------------------------------------------------------------------------
// Traffic: a few clients on the public API, one request of each route class in turn,
// until stopped. Any status counts: the live panel counts requests, not successes.

function startTraffic() {
  let running = true;
  const email = `console-${Date.now()}@keel.dev`;
  const password = 'browser-test-password';
  let bearer = null;
  const requests = [
    () => call(`${apiUrl}/v1/me`, { headers: auth() }),
    () => call(`${apiUrl}/v1/projects`, { headers: auth() }),
    () => call(`${apiUrl}/v1/me`, { headers: auth() }),
    () => call(`${apiUrl}/v1/projects`, {
      method: 'POST',
      headers: { ...auth(), 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'console test' }),
    }),
  ];
  function auth() {
    return bearer ? { authorization: `Bearer ${bearer}` } : {};
  }
  async function signIn() {
    await call(`${apiUrl}/v1/users`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email, name: 'Console test', password }),
    });
    const response = await call(`${apiUrl}/v1/auth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email, password }),
    });
    if (response.ok) bearer = (await response.json()).access_token;
  }
  // Now and then a sign-in too (the auth class); past its budget of 10 a minute they
  // are 429s, which the console counts as well.
  const signInAgain = () => call(`${apiUrl}/v1/auth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email, password }),
  });
  async function client(offset) {
    for (let i = offset; running; i += 1) {
      const request = offset === 0 && i % 40 === 0 ? signInAgain : requests[i % requests.length];
      await request().then((r) => r.arrayBuffer()).catch(() => {});
      await sleep(40);
    }
  }
  const done = signIn().catch(() => {}).then(() => Promise.all([0, 1, 2].map(client)));
  return async () => {
    running = false;
    await done;
  };
}

// ---------------------------------------------------------------------------------------
// The faults API (`GET /admin/faults`, `PUT /admin/faults/{dependency}`, api.md).

/** The fault on `dependency` as the service has it. */
async function realFault(dependency) {
  const response = await adminCall('GET', '/admin/faults');
  assert.equal(response.status, 200, 'GET /admin/faults');
  return (await response.json()).items.find((f) => f.dependency === dependency);
}

// ---------------------------------------------------------------------------------------

let context;
let profile;
let stopTraffic = async () => {};
const problems = [];

/** A tab on the console, watched for what must never happen on it. */
async function openConsole() {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    // The browser logs every 4xx it is answered; 401, 404 and 422 are the page's business.
    if (message.type() === 'error' && !/status of 4(01|04|22)/.test(message.text())) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(`${adminUrl}/`) && !url.startsWith('data:')) {
      problems.push(`request elsewhere: ${url}`);
    }
  });
  return page;
}

async function load(page) {
  const response = await page.goto(`${adminUrl}/`);
  assert.equal(response.status(), 200);
  assert.match(response.headers()['content-security-policy'], /script-src 'self'/);
}

async function useToken(page, value) {
  await page.getByLabel('Admin token').fill(value);
  await page.getByRole('button', { name: 'Use token' }).click();
}

before(async () => {
  profile = mkdtempSync(join(tmpdir(), 'keel-console-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 800 },
    timeout: 30_000,
  });
  assert.equal((await call(`${adminUrl}/admin/faults`)).status, 401, 'the faults API is there and needs the token');
  stopTraffic = startTraffic();
});

after(async () => {
  await stopTraffic();
  // Whatever happened, the service is left as the run found it.
  await adminCall('PUT', `/admin/flags/${flag}`, { enabled: true }).catch(() => {});
  await adminCall('PUT', '/admin/faults/smtp', { latency_ms: 0, error_rate: 0 }).catch(() => {});
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test('without the token the figures show and every switch is disabled', { timeout: 60_000 }, async () => {
  const page = await openConsole();
  await load(page);

  const readRow = page.locator('#live-rows tr.row-read td');
  await readRow.first().filter({ hasText: /^[0-9.]+$/ }).waitFor();
  assert.ok(Number(await readRow.first().textContent()) > 0, 'the read class shows requests per second');
  await readRow.nth(5).filter({ hasText: /ms|s$/ }).waitFor();
  const toggle = page.getByRole('switch', { name: flag, exact: true });
  await toggle.waitFor();
  assert.equal(await toggle.isDisabled(), true, 'switches need the token');
  assert.match(await page.locator('#flags-hint').textContent(), /enter the admin token to switch/);
  await page.locator('#faults li[data-dependency="smtp"] .apply').waitFor();
  assert.equal(await page.locator('#faults li[data-dependency="smtp"] .apply').isDisabled(), true);
  await page.close();
  assert.deepEqual(problems, [], 'no script errors, CSP violations or outside requests');
});

test('with the token the console switches a flag and a fault, and shows it', { timeout: 120_000 + warmupSeconds * 1000 }, async () => {
  assert.equal(await flagEnabled(flag), true, `${flag} starts on`);
  const page = await openConsole();
  const fault = realFault;
  await load(page);
  const toggle = page.getByRole('switch', { name: flag, exact: true });
  await toggle.waitFor();

  // A wrong token is refused and forgotten, and the page says so.
  await useToken(page, 'not-the-admin-token');
  await page.getByRole('alert').filter({ hasText: 'refused (401)' }).waitFor();
  assert.equal(await toggle.isDisabled(), true, 'no switching with a refused token');

  // The right one enables the switches and brings the flags' descriptions.
  await useToken(page, token);
  await page.waitForFunction((name) => {
    const s = document.querySelector(`#flags li[data-flag="${name}"] .switch`);
    return s && !s.disabled;
  }, flag);
  assert.match(await page.locator(`#flag-${flag}-when-off`).textContent(), /^when off: ./);
  assert.equal(await toggle.getAttribute('aria-checked'), 'true');

  // With a history, the charts read better in the screenshot.
  if (warmupSeconds > 0) await sleep(warmupSeconds * 1000);

  // Off: on the page, in the service, and as a marker on the charts once scraped.
  const switched = (state) => page.waitForFunction(([name, want]) =>
    document.querySelector(`#flags li[data-flag="${name}"] .switch`)?.getAttribute('aria-checked') === want, [flag, state]);
  await toggle.click();
  await switched('false');
  assert.equal(await flagEnabled(flag), false, '/admin/flags has it off');
  await page.locator('#chart-p99 .marker-label', { hasText: `${flag} off` }).waitFor();

  // And back on.
  await toggle.click();
  await switched('true');
  assert.equal(await flagEnabled(flag), true, '/admin/flags has it on again');
  await page.locator('#chart-p99 .marker-label', { hasText: `${flag} on` }).waitFor();

  // A fault on SMTP (which this run never calls: no request is slowed by it).
  const smtp = page.locator('#faults li[data-dependency="smtp"]');
  await smtp.getByLabel('smtp latency ms').fill('250');
  await smtp.getByLabel('smtp error rate').fill('0.5');
  await smtp.getByRole('button', { name: 'apply the fault to smtp' }).click();
  await smtp.locator('.current', { hasText: '+250 ms, 50 % failing' }).waitFor();
  assert.deepEqual(
    (({ latency_ms: l, error_rate: e }) => [l, e])(await fault('smtp')),
    [250, 0.5],
    'the service has the fault',
  );
  await smtp.getByLabel('smtp latency ms').fill('20000');
  await smtp.getByRole('button', { name: 'apply the fault to smtp' }).click();
  await page.getByRole('alert').filter({ hasText: 'Setting the smtp fault failed' }).waitFor();
  await smtp.getByLabel('smtp latency ms').fill('250');
  await smtp.getByRole('button', { name: 'apply the fault to smtp' }).click();
  await page.getByRole('alert').waitFor({ state: 'hidden' });

  // The picture: live figures, flag markers on the charts, a fault applied.
  mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);

  await smtp.getByRole('button', { name: 'clear the fault on smtp' }).click();
  await smtp.locator('.current', { hasText: 'no fault' }).waitFor();
  assert.deepEqual(
    (({ latency_ms: l, error_rate: e }) => [l, e])(await fault('smtp')),
    [0, 0],
    'the fault is cleared',
  );
  assert.deepEqual(problems, [], 'no script errors, CSP violations or outside requests');
});
