// The workshop console: the fix flags and the faults with their switches, and the live
// figures per route class, on the admin listener that serves this file.
//
// Plain modules and the DOM, no framework and no build step: this is read as part of the
// repository, and runs from the binary with nothing else. Every two seconds it scrapes
// `/metrics` (open) and, with the admin token, re-reads `/admin/flags` and `/admin/faults`,
// so that a change made by someone else (another console, curl, a second instance through
// the shared store) shows up here too.
//
// The token lives in sessionStorage: it goes when the tab closes, and no other site or
// tab sees it. Without it the figures still work (the metrics are open) and the switches
// are shown, disabled.

import { CLASSES, History, parseExposition, summarize } from './console-live.js';
import { drawChart } from './console-chart.js';

const POLL_MS = 2000;
const REQUEST_TIMEOUT_MS = 1500;
const TOKEN_KEY = 'keel.adminToken';
/** The dependencies `/admin/faults` knows (docs: api.md), shown before the token is given. */
const DEPENDENCIES = ['postgres', 'redis', 'rabbitmq', 'smtp'];
const NEED_TOKEN = 'enter the admin token to switch';

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text: nothing is parsed as HTML). */
function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  node.append(...children);
  return node;
}

const history = new History();
/** Flag changes seen in the scrapes, drawn as markers on the charts: `[{t, label}]`. */
const flagChanges = [];
let lastFlags = null;
/** Bumped by every PUT, so that a poll that started before it cannot undo what it showed. */
let writes = 0;

// ---------------------------------------------------------------------------------------
// The token.

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  $('token').value = '';
  renderTokenState();
}

/** Enables what needs the token, or disables it; called again as rows appear. */
function renderTokenState() {
  const held = token() !== null;
  $('token').placeholder = held ? 'held for this tab' : '';
  $('forget').disabled = !held;
  $('token-status').textContent = held ? 'switches enabled' : NEED_TOKEN;
  for (const control of document.querySelectorAll('[data-needs-token]')) {
    control.disabled = !held || control.dataset.busy === 'true';
  }
  $('flags-hint').textContent = held ? '' : `${NEED_TOKEN}; states come from /metrics`;
}

function notice(message) {
  $('notice').hidden = !message;
  $('notice').textContent = message ?? '';
}

/**
 * An admin API call with the token. A 401 means the token is wrong (or was rotated): it
 * is forgotten, and the page says so, rather than failing the same way every 2 s.
 */
async function admin(method, path, body) {
  const headers = { authorization: `Bearer ${token()}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  if (response.status === 401) {
    setToken(null);
    notice('The admin token was refused (401) and has been forgotten: enter it again.');
  }
  return response;
}

/** The `detail` of a problem+json answer, or its status line. */
async function problem(response) {
  try {
    const body = await response.json();
    return body.detail ?? body.title ?? `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

// ---------------------------------------------------------------------------------------
// Fix flags: one row per flag, built once and updated in place (so that a poll does not
// take the keyboard focus away from a switch).

function flagRow(name) {
  let row = document.querySelector(`#flags li[data-flag="${CSS.escape(name)}"]`);
  if (row) return row;
  const [nameId, textId] = [`flag-${name}`, `flag-${name}-when-off`];
  const toggle = h('button', {
    type: 'button', class: 'switch', role: 'switch', 'aria-labelledby': nameId, 'aria-describedby': textId,
  });
  toggle.dataset.needsToken = '';
  toggle.addEventListener('click', () => switchFlag(name, toggle));
  row = h('li', {}, toggle, h('span', { class: 'name', id: nameId }, name), h('span', { class: 'when-off', id: textId }));
  row.dataset.flag = name;
  $('flags').append(row);
  return row;
}

function showFlag({ name, enabled, when_off: whenOff }) {
  const row = flagRow(name);
  const toggle = row.querySelector('.switch');
  toggle.setAttribute('aria-checked', String(enabled));
  toggle.textContent = enabled ? 'on' : 'off';
  toggle.title = token() ? `switch ${name} ${enabled ? 'off' : 'on'}` : NEED_TOKEN;
  row.classList.toggle('off', !enabled);
  if (whenOff !== undefined) {
    row.querySelector('.when-off').textContent = `when off: ${whenOff}`;
  }
  toggle.disabled = !token() || toggle.dataset.busy === 'true';
}

async function switchFlag(name, toggle) {
  const enabled = toggle.getAttribute('aria-checked') !== 'true';
  toggle.dataset.busy = 'true';
  toggle.disabled = true;
  writes += 1;
  try {
    const response = await admin('PUT', `/admin/flags/${encodeURIComponent(name)}`, { enabled });
    if (response.ok) {
      showFlag(await response.json());
      notice(null);
    } else if (response.status !== 401) {
      notice(`Switching ${name} failed: ${await problem(response)}`);
    }
  } catch (error) {
    notice(`Switching ${name} failed: ${error.message}`);
  } finally {
    toggle.dataset.busy = 'false';
    writes += 1;
    toggle.disabled = !token();
  }
}

async function refreshFlags(scrape) {
  if (!token()) {
    // Without the token, the flags' states as this instance applies them, from /metrics.
    for (const [name, enabled] of Object.entries(scrape?.flags ?? {}).sort()) {
      showFlag({ name, enabled });
    }
    return;
  }
  const before = writes;
  const response = await admin('GET', '/admin/flags');
  if (!response.ok) return;
  const { items } = await response.json();
  if (writes !== before) return;
  for (const flag of items) showFlag(flag);
}

// ---------------------------------------------------------------------------------------
// Faults: latency and an error rate per dependency (`PUT /admin/faults/{dependency}`).

function faultRow(dependency) {
  let row = document.querySelector(`#faults li[data-dependency="${CSS.escape(dependency)}"]`);
  if (row) return row;
  const input = (className, label, attributes) => {
    const field = h('input', { type: 'number', value: '0', class: className, 'aria-label': `${dependency} ${label}`, ...attributes });
    field.dataset.needsToken = '';
    return field;
  };
  const button = (className, text, label) => {
    const b = h('button', { type: 'button', class: className, 'aria-label': label }, text);
    b.dataset.needsToken = '';
    return b;
  };
  row = h('li', {},
    h('span', { class: 'name' }, dependency,
      h('span', { class: 'breaker', id: `fault-${dependency}-breaker` })),
    h('span', { class: 'current', role: 'status' }),
    input('latency', 'latency ms', { min: 0, max: 10000, step: 10 }),
    input('error-rate', 'error rate', { min: 0, max: 1, step: 0.05 }),
    button('apply', 'apply', `apply the fault to ${dependency}`),
    button('clear', 'clear', `clear the fault on ${dependency}`));
  row.dataset.dependency = dependency;
  row.querySelector('.apply').addEventListener('click', () => {
    const latency = Number(row.querySelector('.latency').value);
    const errorRate = Number(row.querySelector('.error-rate').value);
    setFault(dependency, row, { latency_ms: latency, error_rate: errorRate });
  });
  row.querySelector('.clear').addEventListener('click', () =>
    setFault(dependency, row, { latency_ms: 0, error_rate: 0 }));
  $('faults').append(row);
  return row;
}

function showFault({ dependency, latency_ms: latency, error_rate: errorRate }, { fill = false } = {}) {
  const row = faultRow(dependency);
  const active = latency > 0 || errorRate > 0;
  row.classList.toggle('active', active);
  row.querySelector('.current').textContent = active
    ? `+${latency} ms, ${Math.round(errorRate * 100)} % failing`
    : 'no fault';
  // The inputs are the user's draft: filled from the service only when asked (the first
  // read, an apply), never under someone's typing.
  if (fill) {
    row.querySelector('.latency').value = String(latency);
    row.querySelector('.error-rate').value = String(errorRate);
  }
}

async function setFault(dependency, row, body) {
  const buttons = row.querySelectorAll('button');
  for (const button of buttons) {
    button.dataset.busy = 'true';
    button.disabled = true;
  }
  writes += 1;
  try {
    const response = await admin('PUT', `/admin/faults/${encodeURIComponent(dependency)}`, body);
    if (response.ok) {
      // The fault as the service answers it; an answer without a body means as asked.
      const fault = await response.json().catch(() => ({}));
      showFault({ dependency, ...body, ...fault }, { fill: true });
      notice(null);
    } else if (response.status !== 401) {
      notice(`Setting the ${dependency} fault failed: ${await problem(response)}`);
    }
  } catch (error) {
    notice(`Setting the ${dependency} fault failed: ${error.message}`);
  } finally {
    for (const button of buttons) button.dataset.busy = 'false';
    writes += 1;
    renderTokenState();
  }
}

let faultsFilled = false;

/**
 * The faults API is served by the binary that serves this page; without a token it
 * answers 401, and the panel shows the switches locked.
 */
async function refreshFaults() {
  const before = writes;
  const response = token()
    ? await admin('GET', '/admin/faults')
    : await fetch('/admin/faults', { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  if (!response.ok) {
    $('faults-hint').textContent = response.status === 401 ? NEED_TOKEN : `GET /admin/faults: ${await problem(response)}`;
    for (const dependency of DEPENDENCIES) faultRow(dependency);
    renderTokenState();
    return;
  }
  $('faults-hint').textContent = 'added latency and a share of failing calls, per dependency';
  const { items } = await response.json();
  if (writes !== before) return;
  for (const fault of items) showFault(fault, { fill: !faultsFilled });
  faultsFilled = true;
  renderTokenState();
}

// ---------------------------------------------------------------------------------------
// Live figures.

const percent = (v) => (v === null ? '–' : `${(v * 100).toFixed(v > 0 && v < 0.1 ? 1 : 0)} %`);
const perSecond = (v) => (v === null ? '–' : v.toFixed(v < 10 ? 1 : 0));

function duration(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  if (seconds < 0.001) return `${(seconds * 1000).toFixed(2)} ms`;
  if (seconds < 1) return `${(seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0)} ms`;
  return `${seconds.toFixed(2)} s`;
}

async function scrapeMetrics() {
  const response = await fetch('/metrics', { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  if (!response.ok) throw new Error(`GET /metrics: ${await problem(response)}`);
  const scrape = summarize(parseExposition(await response.text()));
  const now = Date.now();
  history.push(now, scrape);
  noteFlagChanges(now, scrape.flags);
  return scrape;
}

function noteFlagChanges(t, flags) {
  if (lastFlags) {
    for (const [name, enabled] of Object.entries(flags)) {
      if (lastFlags[name] !== undefined && lastFlags[name] !== enabled) {
        flagChanges.push({ t, label: `${name} ${enabled ? 'on' : 'off'}` });
      }
    }
  }
  lastFlags = flags;
}

function renderTable(stats) {
  const rows = [...CLASSES, 'all'].map((name) => {
    const s = name === 'all' ? stats?.all : stats?.perClass[name];
    const cells = s
      ? [perSecond(s.rps), percent(s.errorRate), percent(s.shedRate), percent(s.deadlineRate),
        duration(s.p50), duration(s.p99)]
      : ['–', '–', '–', '–', '–', '–'];
    return h('tr', { class: `row-${name}` },
      h('th', { scope: 'row' }, name),
      ...cells.map((text) => h('td', {}, text)));
  });
  $('live-rows').replaceChildren(...rows);
}

function renderGauges(scrape, stats) {
  const entries = [
    ['429s', stats ? `${percent(stats.all.limitedRate)} of requests` : '–'],
    ['concurrency limit', scrape.concurrencyLimit ?? '–'],
    ['admitted in flight', scrape.concurrencyInFlight ?? '–'],
    ...Object.entries(scrape.breakers).sort().map(([name, state]) => [`${name} breaker`, state]),
  ];
  $('gauges').replaceChildren(...entries.map(([term, value]) => h('div', {},
    h('dt', {}, term),
    h('dd', ['open', 'half-open'].includes(value) ? { class: 'alarm' } : {}, String(value)))));
  for (const dependency of DEPENDENCIES) {
    const badge = document.getElementById(`fault-${dependency}-breaker`);
    const state = scrape.breakers[dependency];
    if (badge) {
      badge.textContent = state ? `breaker ${state}` : '';
      badge.classList.toggle('alarm', state === 'open' || state === 'half-open');
    }
  }
}

function renderCharts() {
  const to = Date.now();
  const from = to - history.keepMs;
  const line = (name, pick) => ({ name, points: history.series((s) => pick(s.perClass[name])) });
  const markers = flagChanges.filter((m) => m.t >= from);
  drawChart($('chart-rps'), {
    lines: CLASSES.map((name) => line(name, (s) => s.rps)),
    markers,
    from,
    to,
    format: (v) => perSecond(v),
  });
  drawChart($('chart-p99'), {
    lines: CLASSES.map((name) => line(name, (s) => s.p99)),
    markers,
    from,
    to,
    format: duration,
  });
}

function renderLegend() {
  $('legend').replaceChildren(...CLASSES.map((name) => h('li', { class: `key-${name}` }, name)));
}

// ---------------------------------------------------------------------------------------
// The loop: each step on its own, so that a failing one (an unreachable /metrics, a slow
// /admin/flags) leaves the others working; the next tick starts when this one is done.

async function tick() {
  let scrape = null;
  try {
    scrape = await scrapeMetrics();
    const latest = history.latest();
    $('live-age').textContent = `· scraped ${new Date(latest.t).toLocaleTimeString()}`;
    renderTable(latest.stats);
    renderGauges(scrape, latest.stats);
    renderCharts();
  } catch (error) {
    $('live-age').textContent = `· metrics unavailable: ${error.message}`;
  }
  await Promise.allSettled([refreshFlags(scrape), refreshFaults()]);
  setTimeout(tick, POLL_MS);
}

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = $('token').value.trim();
  if (!value) return;
  setToken(value);
  notice(null);
  Promise.allSettled([refreshFlags(null), refreshFaults()]);
});
$('forget').addEventListener('click', () => {
  setToken(null);
  notice(null);
});

renderLegend();
renderTokenState();
renderTable(null);
tick();
