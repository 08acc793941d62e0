// The live figures of the console, computed in the browser from the service's own
// Prometheus exposition (`GET /metrics` on the admin listener): no Prometheus server, no
// Grafana, nothing to install for a workshop.
//
// Pure functions and one small class, no DOM: `tests/browser/live.test.mjs` runs them in
// Node. The arithmetic is Prometheus's own, so the console and a Grafana panel over the
// same window agree:
//
// - a rate is the increase of a counter between two scrapes over the time between them;
// - a counter that went down means the process restarted (its counters began again at
//   zero): a window that spans that is dropped, not shown as a negative rate;
// - a quantile is `histogram_quantile`'s: over the increases of the cumulative `_bucket`
//   counts, summed per `le` across the series of a class, interpolated linearly inside the
//   bucket the rank falls in.
//
// The route class of a request is a label the service sets (`keel_route_class`), so the
// rule that sorts routes into classes lives only in `src/http/route_class.rs`.

/** The route classes, in the order the console shows them (src/config/guardrails.rs). */
export const CLASSES = ['auth', 'read', 'list', 'write'];

/** The series the console reads (src/telemetry/metrics.rs names them all). */
export const SERIES = {
  duration: 'http_server_request_duration_seconds',
  shed: 'keel_shed_total',
  deadline: 'keel_deadline_exceeded_total',
  rateLimited: 'keel_rate_limited_total',
  flag: 'keel_fix_flag_enabled',
  concurrencyLimit: 'keel_concurrency_limit',
  concurrencyInFlight: 'keel_concurrency_in_flight',
  breaker: 'keel_breaker_state',
};

/** `keel_breaker_state`'s values. */
export const BREAKER_STATES = ['closed', 'half-open', 'open'];

// ---------------------------------------------------------------------------------------
// The exposition format: `name{label="value",…} value [timestamp]` lines, `#` comments.

/**
 * Parses Prometheus text into samples `{name, labels, value}`. Label values may hold
 * braces (`http_route="/v1/tasks/{id}"`), commas and escaped quotes, so the label block is
 * read character by character rather than split with a regular expression.
 */
export function parseExposition(text) {
  const samples = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const sample = parseLine(line);
    if (sample) samples.push(sample);
  }
  return samples;
}

function parseLine(line) {
  const nameEnd = line.search(/[{\s]/);
  if (nameEnd <= 0) return null;
  const name = line.slice(0, nameEnd);
  const labels = {};
  let i = nameEnd;
  if (line[i] === '{') {
    i = parseLabels(line, i + 1, labels);
    if (i < 0) return null;
  }
  const value = parseValue(line.slice(i).trim().split(/\s+/)[0]);
  return Number.isNaN(value) ? null : { name, labels, value };
}

// Reads `a="x",b="y"}` from `start`; returns the index after `}`, or -1 if malformed.
function parseLabels(line, start, labels) {
  let i = start;
  while (i < line.length) {
    while (line[i] === ' ' || line[i] === ',') i += 1;
    if (line[i] === '}') return i + 1;
    const eq = line.indexOf('=', i);
    if (eq < 0 || line[eq + 1] !== '"') return -1;
    const key = line.slice(i, eq).trim();
    let value = '';
    i = eq + 2;
    for (; i < line.length && line[i] !== '"'; i += 1) {
      if (line[i] === '\\') {
        i += 1;
        value += line[i] === 'n' ? '\n' : line[i];
      } else {
        value += line[i];
      }
    }
    if (i >= line.length) return -1;
    labels[key] = value;
    i += 1;
  }
  return -1;
}

function parseValue(text) {
  if (text === '+Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  return text === undefined || text === '' ? NaN : Number(text);
}

// ---------------------------------------------------------------------------------------
// One scrape, reduced to what the console shows: cumulative figures per route class.

function emptyClass() {
  // `buckets` maps each `le` bound (a number, Infinity for +Inf) to a cumulative count.
  return { count: 0, errors: 0, shed: 0, deadline: 0, buckets: new Map() };
}

/**
 * Reduces a scrape's samples to cumulative counters per route class, plus the gauges the
 * console shows as they are (flags, concurrency limit, breakers).
 */
export function summarize(samples) {
  const classes = Object.fromEntries(CLASSES.map((c) => [c, emptyClass()]));
  const scrape = {
    classes,
    rateLimited: 0,
    rateLimitedBy: {},
    flags: {},
    breakers: {},
    concurrencyLimit: null,
    concurrencyInFlight: null,
  };
  const classOf = (labels) => classes[labels.keel_route_class ?? labels.class];
  for (const { name, labels, value } of samples) {
    switch (name) {
      case `${SERIES.duration}_count`: {
        const c = classOf(labels);
        if (!c) break;
        c.count += value;
        if (labels.http_response_status_class === '5xx') c.errors += value;
        break;
      }
      case `${SERIES.duration}_bucket`: {
        const c = classOf(labels);
        if (!c) break;
        const le = parseValue(labels.le);
        c.buckets.set(le, (c.buckets.get(le) ?? 0) + value);
        break;
      }
      case SERIES.shed: {
        const c = classOf(labels);
        if (c) c.shed += value;
        break;
      }
      case SERIES.deadline: {
        const c = classOf(labels);
        if (c) c.deadline += value;
        break;
      }
      case SERIES.rateLimited:
        scrape.rateLimited += value;
        scrape.rateLimitedBy[labels.policy] = (scrape.rateLimitedBy[labels.policy] ?? 0) + value;
        break;
      case SERIES.flag:
        scrape.flags[labels.flag] = value === 1;
        break;
      case SERIES.breaker:
        scrape.breakers[labels.breaker] = BREAKER_STATES[value] ?? String(value);
        break;
      case SERIES.concurrencyLimit:
        scrape.concurrencyLimit = value;
        break;
      case SERIES.concurrencyInFlight:
        scrape.concurrencyInFlight = value;
        break;
      default:
    }
  }
  return scrape;
}

// ---------------------------------------------------------------------------------------
// Two scrapes → the figures of the window between them.

/**
 * `histogram_quantile(q, …)` over cumulative bucket counts `[[le, count], …]` sorted by
 * `le` and ending with `+Inf`. `null` when there were no observations. A rank in the `+Inf`
 * bucket answers the highest finite bound (all Prometheus can say: "at least this").
 */
export function histogramQuantile(q, buckets) {
  if (buckets.length < 2) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  const i = buckets.findIndex(([, count]) => count >= rank);
  if (i === buckets.length - 1) return buckets[buckets.length - 2][0];
  const [upper, count] = buckets[i];
  const [lower, before] = i === 0 ? [0, 0] : buckets[i - 1];
  if (count === before) return upper;
  return lower + (upper - lower) * ((rank - before) / (count - before));
}

/** The increase of each `le` between two bucket maps, sorted; `null` on a decrease. */
function bucketIncrease(older, newer) {
  const out = [];
  for (const [le, count] of newer) {
    const increase = count - (older.get(le) ?? 0);
    if (increase < 0) return null;
    out.push([le, increase]);
  }
  return out.sort((a, b) => a[0] - b[0]);
}

function addBuckets(into, buckets) {
  for (const [le, count] of buckets) into.set(le, (into.get(le) ?? 0) + count);
}

/**
 * The figures between scrape `a` and the later scrape `b`, `seconds` apart: per class and
 * for all classes, `{requests, rps, errorRate, shedRate, deadlineRate, p50, p99}` (rates
 * are shares of the window's requests, `null` without requests), and the share of
 * requests refused with 429. `null` when a counter went down: the process restarted in
 * between, and the window says nothing.
 */
export function windowStats(a, b, seconds) {
  if (!(seconds > 0)) return null;
  const perClass = {};
  const allA = emptyClass();
  const allB = emptyClass();
  for (const name of CLASSES) {
    const stats = classStats(a.classes[name], b.classes[name], seconds);
    if (!stats) return null;
    perClass[name] = stats;
    for (const [all, one] of [[allA, a.classes[name]], [allB, b.classes[name]]]) {
      for (const key of ['count', 'errors', 'shed', 'deadline']) all[key] += one[key];
      addBuckets(all.buckets, one.buckets);
    }
  }
  const all = classStats(allA, allB, seconds);
  const limited = b.rateLimited - a.rateLimited;
  if (!all || limited < 0) return null;
  all.limitedRate = share(limited, all.requests);
  return { perClass, all, seconds };
}

function classStats(a, b, seconds) {
  const requests = b.count - a.count;
  const errors = b.errors - a.errors;
  const shed = b.shed - a.shed;
  const deadline = b.deadline - a.deadline;
  const buckets = bucketIncrease(a.buckets, b.buckets);
  if (requests < 0 || errors < 0 || shed < 0 || deadline < 0 || !buckets) return null;
  return {
    requests,
    rps: requests / seconds,
    errorRate: share(errors, requests),
    shedRate: share(shed, requests),
    deadlineRate: share(deadline, requests),
    p50: histogramQuantile(0.5, buckets),
    p99: histogramQuantile(0.99, buckets),
  };
}

function share(part, whole) {
  return whole > 0 ? part / whole : null;
}

// ---------------------------------------------------------------------------------------
// The last minutes of scrapes.

/**
 * The scrapes of the last `keepMs`, each with the figures of the `spanMs` before it, so
 * that a chart redraws from stored points instead of recomputing every window.
 */
export class History {
  constructor({ keepMs = 5 * 60_000, spanMs = 10_000 } = {}) {
    this.keepMs = keepMs;
    this.spanMs = spanMs;
    this.entries = []; // {t, scrape, stats}
  }

  /** Adds a scrape taken at `t` (milliseconds); drops what has aged out. */
  push(t, scrape) {
    const base = this.baseFor(t);
    const stats = base ? windowStats(base.scrape, scrape, (t - base.t) / 1000) : null;
    this.entries.push({ t, scrape, stats });
    while (this.entries.length > 0 && this.entries[0].t < t - this.keepMs) this.entries.shift();
    return stats;
  }

  // The newest scrape at least `spanMs` older than `t`, or failing that the oldest one
  // (so that the figures appear after the first two scrapes, not after `spanMs`).
  baseFor(t) {
    let base = null;
    for (const entry of this.entries) {
      if (entry.t <= t - this.spanMs || base === null) base = entry;
      else break;
    }
    return base;
  }

  latest() {
    return this.entries[this.entries.length - 1] ?? null;
  }

  /** `[{t, value}]` over the window, `value` null where there is no figure (a gap). */
  series(pick) {
    return this.entries.map(({ t, stats }) => ({ t, value: stats ? pick(stats) : null }));
  }
}
