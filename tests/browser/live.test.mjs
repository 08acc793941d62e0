// The console's arithmetic, in Node: the same module the page imports
// (src/admin/console/console-live.js), checked against figures worked out by hand and
// against what Prometheus's histogram_quantile answers for the same buckets.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  History,
  histogramQuantile,
  parseExposition,
  summarize,
  windowStats,
} from '../../src/admin/console/console-live.js';

test('the parser reads labels holding braces, commas and escaped quotes', () => {
  const samples = parseExposition([
    '# HELP x something',
    '# TYPE x counter',
    'plain 3',
    'x{http_route="/v1/tasks/{id}",note="a, \\"b\\"",le="+Inf"} 7 1700000000000',
    'broken{a="1" 2',
    '',
  ].join('\n'));

  assert.deepEqual(samples, [
    { name: 'plain', labels: {}, value: 3 },
    { name: 'x', labels: { http_route: '/v1/tasks/{id}', note: 'a, "b"', le: '+Inf' }, value: 7 },
  ]);
});

test('histogram_quantile interpolates inside the bucket the rank falls in', () => {
  // 100 observations: 50 ≤ 10 ms, 40 in (10 ms, 100 ms], 10 in (100 ms, 1 s].
  const buckets = [[0.01, 50], [0.1, 90], [1, 100], [Infinity, 100]];

  assert.equal(histogramQuantile(0.5, buckets), 0.01);
  assert.ok(Math.abs(histogramQuantile(0.7, buckets) - 0.055) < 1e-12);
  assert.ok(Math.abs(histogramQuantile(0.99, buckets) - 0.91) < 1e-12);
  assert.equal(histogramQuantile(0.25, buckets), 0.005, 'the first bucket starts at 0');
  assert.equal(histogramQuantile(0.99, [[0.01, 0], [Infinity, 0]]), null, 'no observations');
  assert.equal(
    histogramQuantile(0.99, [[0.01, 1], [1, 1], [Infinity, 5]]),
    1,
    'a rank in +Inf answers the highest finite bound',
  );
});

/** An exposition with `n` requests of `route` in `class`, `slow` of them over 100 ms. */
function exposition({ read = 0, readSlow = 0, read5xx = 0, list = 0, shedList = 0, limited = 0 }) {
  const series = (cls, route, status, total, slow) => {
    const labels = `http_request_method="GET",http_route="${route}",http_response_status_class="${status}",keel_route_class="${cls}"`;
    return [
      `http_server_request_duration_seconds_bucket{${labels},le="0.1"} ${total - slow}`,
      `http_server_request_duration_seconds_bucket{${labels},le="1"} ${total}`,
      `http_server_request_duration_seconds_bucket{${labels},le="+Inf"} ${total}`,
      `http_server_request_duration_seconds_count{${labels}} ${total}`,
    ];
  };
  return [
    ...series('read', '/v1/me', '2xx', read - read5xx, readSlow),
    ...series('read', '/v1/tasks/{id}', '5xx', read5xx, 0),
    ...series('list', '/v1/projects', '2xx', list, 0),
    `keel_shed_total{criticality="sheddable",class="list"} ${shedList}`,
    `keel_rate_limited_total{policy="user"} ${limited}`,
    'keel_fix_flag_enabled{flag="cache"} 1',
    'keel_breaker_state{breaker="redis"} 2',
  ].join('\n');
}

const scrape = (figures) => summarize(parseExposition(exposition(figures)));

test('a window gives rates per class from the increase of the counters', () => {
  const a = scrape({ read: 100, list: 10 });
  const b = scrape({ read: 300, readSlow: 20, read5xx: 10, list: 30, shedList: 5, limited: 22 });

  const stats = windowStats(a, b, 10);

  assert.equal(stats.perClass.read.rps, 20);
  assert.equal(stats.perClass.read.errorRate, 10 / 200);
  assert.equal(stats.perClass.list.rps, 2);
  assert.equal(stats.perClass.list.shedRate, 5 / 20);
  assert.equal(stats.perClass.auth.rps, 0);
  assert.equal(stats.perClass.auth.p99, null, 'no requests, no quantile');
  assert.equal(stats.all.requests, 220);
  assert.equal(stats.all.limitedRate, 22 / 220);
  // 20 of the 200 new reads took over 100 ms: the p99 (rank 198) is 90 % into (0.1, 1].
  assert.ok(Math.abs(stats.perClass.read.p99 - 0.91) < 1e-9, `${stats.perClass.read.p99}`);
  assert.equal(b.breakers.redis, 'open');
  assert.equal(b.flags.cache, true);
});

test('a counter that went down (a restart) drops the windows that span it', () => {
  const history = new History({ keepMs: 60_000, spanMs: 4_000 });
  history.push(0, scrape({ read: 500 }));
  history.push(2_000, scrape({ read: 600 }));
  history.push(4_000, scrape({ read: 5 })); // the process restarted
  history.push(6_000, scrape({ read: 25 }));
  history.push(8_000, scrape({ read: 45 }));

  const rps = history.series((s) => s.perClass.read.rps).map((p) => p.value);

  assert.deepEqual(rps, [null, 50, null, null, 10]);
});

test('scrapes older than the window are forgotten', () => {
  const history = new History({ keepMs: 10_000, spanMs: 2_000 });
  for (let t = 0; t <= 30_000; t += 2_000) history.push(t, scrape({ read: t }));

  assert.equal(history.entries[0].t, 20_000);
  assert.equal(history.latest().stats.perClass.read.rps, 1000);
});
