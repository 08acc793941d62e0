// Small line charts drawn as inline SVG: a few lines over the last minutes, a y scale
// with round steps, and vertical markers where a fix flag changed. A charting library
// would be most of the console's size and a dependency to pin and audit; this is the
// part of one that the console needs.
//
// Styling is left to console.css through class names (`line-read`, `marker`, …): the
// Content-Security-Policy allows no inline style.

const SVG = 'http://www.w3.org/2000/svg'; // the SVG namespace's name, not a fetch
const WIDTH = 640;
const HEIGHT = 150;
const PAD = { left: 52, right: 8, top: 8, bottom: 18 };

function el(name, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

/** The smallest 1, 2 or 5 × 10ⁿ at or above `value`: a y-axis top that reads easily. */
export function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

/**
 * Redraws `svg` with `lines` (`[{name, points: [{t, value}]}]`, `value` null for a gap)
 * between times `from` and `to` (ms), the markers `[{t, label}]`, and y labels written
 * by `format`.
 */
export function drawChart(svg, { lines, markers = [], from, to, format }) {
  svg.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
  svg.replaceChildren();
  const values = lines.flatMap((line) => line.points.map((p) => p.value)).filter((v) => v !== null);
  const top = niceCeiling(Math.max(0, ...values));
  const x = (t) => PAD.left + ((t - from) / (to - from)) * (WIDTH - PAD.left - PAD.right);
  const y = (v) => HEIGHT - PAD.bottom - (v / top) * (HEIGHT - PAD.top - PAD.bottom);

  for (const v of [0, top / 2, top]) {
    svg.append(el('line', { class: 'gridline', x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v) }));
    svg.append(el('text', { class: 'axis', x: PAD.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, v === 0 ? '0' : format(v)));
  }
  const minutes = Math.round((to - from) / 60_000);
  svg.append(el('text', { class: 'axis', x: PAD.left, y: HEIGHT - 4 }, `−${minutes} min`));
  svg.append(el('text', { class: 'axis', x: WIDTH - PAD.right, y: HEIGHT - 4, 'text-anchor': 'end' }, 'now'));

  // Labels take turns over three rows, so that a flag switched off and back on within
  // a few seconds does not print both labels on top of each other; near the right edge
  // they hang to the left of their line.
  markers.filter((m) => m.t >= from).forEach((marker, i) => {
    const mx = x(marker.t);
    const left = mx > WIDTH - 140;
    svg.append(el('line', { class: 'marker', x1: mx, x2: mx, y1: PAD.top, y2: HEIGHT - PAD.bottom }));
    svg.append(el('text', {
      class: 'marker-label',
      x: left ? mx - 3 : mx + 3,
      y: PAD.top + 9 + (i % 3) * 12,
      'text-anchor': left ? 'end' : 'start',
    }, marker.label));
  });

  for (const line of lines) {
    for (const run of runs(line.points)) {
      const points = run.map((p) => `${x(p.t).toFixed(1)},${y(p.value).toFixed(1)}`).join(' ');
      const shape = run.length === 1
        ? el('circle', { cx: x(run[0].t), cy: y(run[0].value), r: 1.5 })
        : el('polyline', { points });
      shape.setAttribute('class', `series line-${line.name}`);
      svg.append(shape);
    }
  }
}

// Splits points at gaps (null values): a dropped window is a break in the line, not a
// straight segment over it.
function runs(points) {
  const out = [];
  let current = [];
  for (const point of points) {
    if (point.value === null || Number.isNaN(point.value)) {
      if (current.length) out.push(current);
      current = [];
    } else {
      current.push(point);
    }
  }
  if (current.length) out.push(current);
  return out;
}
