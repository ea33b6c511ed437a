// app.js — the workbench page: runs (list, a run's curves growing live over server-sent events,
// comparisons), adapters (load/unload), a playground (chat, side by side with a preference that
// becomes a pair), pair datasets (browse, swap or drop a pair, export). Charts are SVG drawn here (no library, nothing fetched).
// Everything from the store or a model is put in the page as text (textContent, createTextNode),
// never parsed as HTML: a run name or a pair holding <script> shows as those characters.
'use strict';

const SVGNS = 'http://www.w3.org/2000/svg';
const main = () => document.getElementById('main');
let info = null;          // /ui/api/info
let liveStream = null;    // the AbortController of the run page's stream

// ---------------------------------------------------------------- DOM helpers (text only)

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'on') for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = String(v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined || k === false) continue;
    e.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

function notice(text, isError) {
  const n = document.getElementById('notice');
  n.textContent = text || '';
  n.className = 'notice' + (isError ? ' error' : '');
  n.hidden = !text;
}

function fmtNum(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  if (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0)) return v.toExponential(3);
  return Number(v).toFixed(digits === undefined ? 4 : digits);
}
function fmtTime(t) { return t ? new Date(t * 1000).toISOString().replace('T', ' ').slice(0, 19) + 'Z' : '—'; }
function fmtDur(s) {
  if (s === null || s === undefined) return '—';
  if (s < 60) return s.toFixed(1) + ' s';
  if (s < 3600) return (s / 60).toFixed(1) + ' min';
  return (s / 3600).toFixed(2) + ' h';
}

// ---------------------------------------------------------------- HTTP

function key() { return sessionStorage.getItem('moetune-key') || ''; }
function headers(json) {
  const h = {};
  if (json) h['Content-Type'] = 'application/json';
  if (key()) h['Authorization'] = 'Bearer ' + key();
  return h;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function errorOf(r) {
  let msg = r.status + ' ' + r.statusText;
  try {
    const j = await r.json();
    if (j && j.error && j.error.message) msg = j.error.message;
  } catch (e) { /* not JSON: the status says it */ }
  if (r.status === 401) msg += ' — enter the server\'s API key at the top right';
  return new ApiError(r.status, msg);
}

async function getJSON(path) {
  const r = await fetch(path, { headers: headers(false) });
  if (!r.ok) throw await errorOf(r);
  return r.json();
}

async function postJSON(path, body) {
  const r = await fetch(path, { method: 'POST', headers: headers(true), body: JSON.stringify(body) });
  if (!r.ok) throw await errorOf(r);
  const t = r.headers.get('Content-Type') || '';
  return t.startsWith('application/json') ? r.json() : r.text();
}

// Reads a text/event-stream body, calling onData for each "data:" payload (and onEvent with
// the event name when there is one). Used for both the run stream and streamed chat: fetch
// rather than EventSource because the key goes in a header.
async function readSSE(response, onData, signal) {
  const reader = response.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    if (signal && signal.aborted) { reader.cancel(); return; }
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) onData(data.join('\n'), event);
    }
  }
}

// ---------------------------------------------------------------- charts (SVG)

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'];

// 1-2-5 ticks over [lo, hi], about n of them (the same rule as store/plot.c's mt_plot_ticks).
function ticks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; lo = lo - 1; }
  const raw = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw);
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  return out;
}

// series: [{label, points: [[x, y|null], ...]}]; a null y breaks the line.
function chart(title, series, opts) {
  opts = opts || {};
  const W = 460, H = 260, L = 56, R = 12, T = 24, B = 36;
  let xs = [], ys = [];
  for (const s of series) for (const [x, y] of s.points) { xs.push(x); if (y !== null && Number.isFinite(y)) ys.push(y); }
  const box = el('div', { class: 'chart', 'data-metric': opts.metric || title });
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title });
  root.appendChild(svg('text', { x: L, y: 15, 'font-weight': 600 }, title));
  const nPoints = series.reduce((a, s) => a + s.points.length, 0);
  box.setAttribute('data-points', String(nPoints));
  if (!ys.length) {
    root.appendChild(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no finite values yet'));
    box.appendChild(root);
    return box;
  }
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { const d = Math.abs(y0) * 0.05 || 1; y0 -= d; y1 += d; }
  const yt = ticks(y0, y1, 5), xt = ticks(x0, x1, 6);
  y0 = Math.min(y0, yt[0]); y1 = Math.max(y1, yt[yt.length - 1]);
  const px = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const py = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  for (const t of yt) {
    root.appendChild(svg('line', { x1: L, x2: W - R, y1: py(t), y2: py(t), class: 'grid' }));
    root.appendChild(svg('text', { x: L - 4, y: py(t) + 4, 'text-anchor': 'end' }, fmtTick(t)));
  }
  for (const t of xt) {
    if (t < x0 || t > x1) continue;
    root.appendChild(svg('line', { x1: px(t), x2: px(t), y1: T, y2: H - B, class: 'grid' }));
    root.appendChild(svg('text', { x: px(t), y: H - B + 14, 'text-anchor': 'middle' }, fmtTick(t)));
  }
  root.appendChild(svg('line', { x1: L, x2: L, y1: T, y2: H - B, class: 'axis' }));
  root.appendChild(svg('line', { x1: L, x2: W - R, y1: H - B, y2: H - B, class: 'axis' }));
  root.appendChild(svg('text', { x: (L + W - R) / 2, y: H - 6, 'text-anchor': 'middle' }, opts.xLabel || 'step'));
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    let d = '', pen = false;
    for (const [x, y] of s.points) {
      if (y === null || !Number.isFinite(y)) { pen = false; continue; }
      d += (pen ? 'L' : 'M') + px(x).toFixed(1) + ' ' + py(y).toFixed(1);
      pen = true;
    }
    const sparse = s.points.length <= 12;
    root.appendChild(svg('path', { d, fill: 'none', stroke: color, 'stroke-width': 1.6,
                                   'stroke-dasharray': s.dashed ? '4 3' : 'none', 'data-series': s.label }));
    if (sparse) for (const [x, y] of s.points)
      if (y !== null && Number.isFinite(y)) root.appendChild(svg('circle', { cx: px(x), cy: py(y), r: 2.5, fill: color }));
    if (series.length > 1 || opts.legend) {
      const ly = T + 4 + i * 14;
      root.appendChild(svg('line', { x1: W - R - 120, x2: W - R - 104, y1: ly, y2: ly, stroke: color, 'stroke-width': 2 }));
      root.appendChild(svg('text', { x: W - R - 100, y: ly + 4 }, s.label));
    }
  });
  box.appendChild(root);
  return box;
}

function fmtTick(t) {
  if (t === 0) return '0';
  if (Math.abs(t) >= 1e4 || Math.abs(t) < 1e-3) return t.toExponential(1);
  return String(Number(t.toPrecision(4)));
}

// Which curves share a chart: a metric and its eval twin, DPO's rewards together.
function chartGroups(names) {
  const groups = [];
  const used = new Set();
  const add = (title, members) => {
    const m = members.filter(n => names.includes(n) && !used.has(n));
    if (!m.length) return;
    m.forEach(n => used.add(n));
    groups.push({ title, members: m });
  };
  add('loss (nats/token)', ['loss', 'eval_loss']);
  add('rewards (DPO)', ['rewards/chosen', 'rewards/rejected', 'rewards/margins']);
  for (const n of names.slice().sort()) add(n, [n]);
  return groups;
}

// ---------------------------------------------------------------- routing

const routes = [
  [/^#\/runs$/, viewRuns],
  [/^#\/run\/(\d+)$/, m => viewRun(Number(m[1]))],
  [/^#\/compare\/([\d,]+)$/, m => viewCompare(m[1].split(',').map(Number))],
  [/^#\/adapters$/, viewAdapters],
  [/^#\/playground$/, viewPlayground],
  [/^#\/pairs$/, viewPairs],
  [/^#\/pairs\/(.+)$/, m => viewPairList(decodeURIComponent(m[1]), 0)],
];

async function route() {
  if (liveStream) { liveStream.abort(); liveStream = null; }
  notice('');
  const h = location.hash || '#/runs';
  for (const a of document.querySelectorAll('header nav a'))
    a.classList.toggle('on', h.startsWith(a.getAttribute('href').replace(/s$/, '')));
  for (const [re, fn] of routes) {
    const m = h.match(re);
    if (m) {
      clear(main());
      try { await fn(m); } catch (e) { notice(e.message, true); }
      return;
    }
  }
  location.hash = '#/runs';
}

// ---------------------------------------------------------------- runs

let runSort = { key: 'id', dir: -1 };

async function viewRuns() {
  const data = await getJSON('/ui/api/runs');
  const m = main();
  m.appendChild(el('h1', { text: 'Runs' }));
  const filter = el('input', { type: 'search', id: 'run-filter', placeholder: 'filter: name, method, status, base',
                               size: 36, value: sessionStorage.getItem('moetune-filter') || '' });
  const compareBtn = el('button', { id: 'compare', disabled: true, text: 'Compare selected' });
  m.appendChild(el('div', { class: 'toolbar' }, filter, compareBtn,
                   el('span', { class: 'muted', text: data.runs.length + ' runs in the store' })));
  const cols = [
    ['', null], ['id', 'id'], ['name', 'name'], ['method', 'method'], ['base', 'base_path'], ['status', 'status'],
    ['steps', 'last_step'], ['best eval loss', 'best_eval_loss'], ['last loss', 'last_loss'],
    ['started', 'started'], ['duration', 'duration'],
  ];
  const table = el('table', { id: 'runs' });
  const head = el('tr');
  for (const [label, k] of cols) {
    const th = el('th', { class: k ? 'sortable' : null, text: label + (k && runSort.key === k ? (runSort.dir > 0 ? ' ▲' : ' ▼') : '') });
    if (k) th.addEventListener('click', () => {
      runSort = { key: k, dir: runSort.key === k ? -runSort.dir : 1 };
      route();
    });
    head.appendChild(th);
  }
  table.appendChild(el('thead', {}, head));
  const body = el('tbody');
  table.appendChild(body);
  m.appendChild(table);
  const selected = new Set();
  const rows = data.runs.slice().sort((a, b) => {
    const x = a[runSort.key], y = b[runSort.key];
    if (x === y) return 0;
    if (x === null) return 1;
    if (y === null) return -1;
    return (x < y ? -1 : 1) * runSort.dir;
  });
  const draw = () => {
    clear(body);
    const f = filter.value.trim().toLowerCase();
    sessionStorage.setItem('moetune-filter', filter.value);
    for (const r of rows) {
      const hay = [r.name, r.method, r.status, r.base_path].join(' ').toLowerCase();
      if (f && !hay.includes(f)) continue;
      const box = el('input', { type: 'checkbox', 'data-run': r.id, checked: selected.has(r.id) });
      box.addEventListener('change', () => {
        if (box.checked) selected.add(r.id); else selected.delete(r.id);
        compareBtn.disabled = selected.size < 2;
      });
      body.appendChild(el('tr', { 'data-run': r.id },
        el('td', {}, box),
        el('td', { class: 'num', text: r.id }),
        el('td', {}, el('a', { href: '#/run/' + r.id, class: 'run-link', text: r.name })),
        el('td', { text: r.method }),
        el('td', { text: r.base_path || '—', title: r.base_hash || '' }),
        el('td', { class: 'status-' + r.status, text: r.status + (r.stale ? ' (process gone)' : '') }),
        el('td', { class: 'num', text: r.last_step >= 0 ? r.last_step : '—' }),
        el('td', { class: 'num', text: fmtNum(r.best_eval_loss) }),
        el('td', { class: 'num', text: fmtNum(r.last_loss) }),
        el('td', { text: fmtTime(r.started) }),
        el('td', { class: 'num', text: fmtDur(r.duration) })));
    }
  };
  filter.addEventListener('input', draw);
  compareBtn.addEventListener('click', () => { location.hash = '#/compare/' + [...selected].sort((a, b) => a - b).join(','); });
  draw();
}

function kv(rows) {
  const t = el('table', { class: 'kv' });
  for (const [k, v] of rows) t.appendChild(el('tr', {}, el('th', { text: k }), el('td', {}, v instanceof Node ? v : String(v))));
  return t;
}

async function viewRun(id) {
  const run = await getJSON('/ui/api/runs/' + id);
  const m = main();
  const metrics = run.metrics || {};
  m.appendChild(el('h1', {}, 'Run ' + run.id + ': ', el('span', { id: 'run-name', text: run.name })));
  const status = el('span', { id: 'run-status', class: 'status-' + run.status, text: run.status });
  const steps = el('span', { id: 'run-steps', text: run.last_step });
  m.appendChild(kv([
    ['method', run.method], ['status', status], ['steps', steps], ['base', (run.base_path || '—') + '  ' + (run.base_hash || '').slice(0, 12)],
    ['started', fmtTime(run.started)], ['duration', fmtDur(run.duration)], ['best eval loss', fmtNum(run.best_eval_loss)],
    ['seed', run.seed], ['message', run.status_message || '—'],
  ]));
  const charts = el('div', { class: 'charts', id: 'charts' });
  m.append(el('h2', { text: 'Curves' }), charts);
  const redraw = () => {
    clear(charts);
    for (const g of chartGroups(Object.keys(metrics)))
      charts.appendChild(chart(g.title, g.members.map(n => ({ label: n, points: metrics[n], dashed: n.startsWith('eval') })),
                               { metric: g.members[0] }));
    if (!charts.firstChild) charts.appendChild(el('p', { class: 'muted', text: 'no metrics logged yet' }));
  };
  redraw();
  const events = el('tbody');
  const addEvents = list => {
    for (const e of list)
      events.appendChild(el('tr', {}, el('td', { class: 'num', text: e.step === null ? '—' : e.step }),
        el('td', { text: fmtTime(e.time) }), el('td', { text: e.kind }),
        el('td', { class: 'cell-text', text: e.detail === null ? '' : JSON.stringify(e.detail) })));
  };
  addEvents(run.events || []);
  m.append(el('h2', { text: 'Events' }),
    el('table', { id: 'events' }, el('thead', {}, el('tr', {}, el('th', { text: 'step' }), el('th', { text: 'time' }),
      el('th', { text: 'kind' }), el('th', { text: 'detail' }))), events));
  if ((run.adapters || []).length) {
    m.appendChild(el('h2', { text: 'Adapters' }));
    m.appendChild(adapterTable(run.adapters, null));
  }
  if ((run.datasets || []).length) {
    const t = el('table', {}, el('tr', {}, ...['split', 'path', 'format', 'docs', 'tokens'].map(h => el('th', { text: h }))));
    for (const d of run.datasets)
      t.appendChild(el('tr', {}, el('td', { text: d.split }), el('td', { text: d.path }), el('td', { text: d.format }),
        el('td', { class: 'num', text: d.n_docs }), el('td', { class: 'num', text: d.n_tokens })));
    m.append(el('h2', { text: 'Data' }), t);
  }
  m.append(el('h2', { text: 'Recipe' }), el('pre', { id: 'recipe', text: run.recipe_text || '(none recorded)' }));

  if (run.status !== 'running') return;
  // Live: the stream sends each poll's new points; the charts are redrawn from the merged series.
  const ctl = new AbortController();
  liveStream = ctl;
  const live = el('span', { class: 'status-running', id: 'live', text: ' ● live' });
  status.after(live);
  try {
    const r = await fetch('/ui/api/runs/' + id + '/stream', { headers: headers(false), signal: ctl.signal });
    if (!r.ok) throw await errorOf(r);
    await readSSE(r, (data, event) => {
      if (event === 'end') return;
      const u = JSON.parse(data);
      for (const [n, pts] of Object.entries(u.metrics || {})) {
        const have = metrics[n] || (metrics[n] = []);
        const last = have.length ? have[have.length - 1][0] : -Infinity;
        for (const p of pts) if (p[0] > last) have.push(p);
      }
      status.textContent = u.status;
      status.className = 'status-' + u.status;
      steps.textContent = u.last_step;
      addEvents(u.events || []);
      redraw();
    }, ctl.signal);
  } catch (e) {
    if (e.name !== 'AbortError') notice('live updates stopped: ' + e.message, true);
  }
  live.remove();
}

async function viewCompare(ids) {
  const [cmp, ...runs] = await Promise.all([getJSON('/ui/api/compare?runs=' + ids.join(',')),
                                            ...ids.map(i => getJSON('/ui/api/runs/' + i))]);
  const m = main();
  m.appendChild(el('h1', { text: 'Compare runs ' + ids.join(', ') }));
  const names = new Set();
  runs.forEach(r => Object.keys(r.metrics || {}).forEach(n => names.add(n)));
  const charts = el('div', { class: 'charts', id: 'compare-charts' });
  for (const n of [...names].sort((a, b) => (a === 'loss' ? -1 : b === 'loss' ? 1 : a < b ? -1 : 1))) {
    const series = runs.filter(r => r.metrics && r.metrics[n]).map(r => ({ label: r.id + ' ' + r.name, points: r.metrics[n] }));
    charts.appendChild(chart(n, series, { metric: n, legend: true }));
  }
  m.appendChild(charts);
  m.appendChild(el('h2', { text: 'Recipe differences (from run ' + ids[0] + ')' }));
  if (!cmp.differences.length) {
    m.appendChild(el('p', { id: 'no-diff', class: 'muted', text: 'the recipes\' configurations are the same' }));
  } else {
    const t = el('table', { class: 'diff', id: 'diff' },
      el('tr', {}, el('th', { text: 'run' }), el('th', { text: 'key' }), el('th', { text: 'run ' + ids[0] }), el('th', { text: 'this run' })));
    for (const d of cmp.differences)
      t.appendChild(el('tr', {}, el('td', { text: d.run }), el('td', { text: d.key }),
        el('td', { text: d.first === null ? '(absent)' : d.first }), el('td', { text: d.this === null ? '(absent)' : d.this })));
    m.appendChild(t);
  }
  const summary = el('table', {}, el('tr', {}, ...['run', 'name', 'method', 'status', 'steps', 'best eval loss', 'last loss', 'duration'].map(h => el('th', { text: h }))));
  for (const r of cmp.runs)
    summary.appendChild(el('tr', {}, el('td', {}, el('a', { href: '#/run/' + r.id, text: r.id })), el('td', { text: r.name }),
      el('td', { text: r.method }), el('td', { text: r.status }), el('td', { class: 'num', text: r.last_step }),
      el('td', { class: 'num', text: fmtNum(r.best_eval_loss) }), el('td', { class: 'num', text: fmtNum(r.last_loss) }),
      el('td', { class: 'num', text: fmtDur(r.duration) })));
  m.append(el('h2', { text: 'Summary' }), summary);
}

// ---------------------------------------------------------------- adapters

function baseName(p) { return String(p || '').replace(/\/+$/, '').split('/').pop(); }

async function loadAdapter(name, path) {
  try {
    const msg = await postJSON('/v1/load_lora_adapter', { lora_name: name, lora_path: path });
    notice(String(msg));
  } catch (e) { notice(e.message, true); }
  await route();
}

async function unloadAdapter(name) {
  try {
    const msg = await postJSON('/v1/unload_lora_adapter', { lora_name: name });
    notice(String(msg));
  } catch (e) { notice(e.message, true); }
  await route();
}

function adapterTable(list, served) {
  const t = el('table', { class: 'adapters-stored' }, el('tr', {}, ...['id', 'run', 'path', 'base hash', 'rank', 'alpha', 'targets',
    'thresholds', 'eval', 'created', served ? 'served' : null].filter(Boolean).map(h => el('th', { text: h }))));
  for (const a of list) {
    const s = served && served.find(x => x.path === a.path || x.name === baseName(a.path));
    const cells = [
      el('td', { class: 'num', text: a.id }),
      el('td', {}, a.run_id ? el('a', { href: '#/run/' + a.run_id, text: a.run_id }) : '—'),
      el('td', { class: 'cell-text', text: a.path }),
      el('td', { text: (a.base_hash || '').slice(0, 12), title: a.base_hash || '' }),
      el('td', { class: 'num', text: a.rank }),
      el('td', { class: 'num', text: a.alpha }),
      el('td', { class: 'cell-text', text: a.targets === null ? '—' : JSON.stringify(a.targets) }),
      el('td', { class: 'cell-text', text: a.thresholds === null ? '—' : JSON.stringify(a.thresholds) }),
      el('td', { class: 'cell-text', text: a.eval === null ? '—' : JSON.stringify(a.eval) }),
      el('td', { text: fmtTime(a.created) }),
    ];
    if (served) cells.push(el('td', { text: s ? 'yes, as ' + s.name + ' v' + s.version : 'no' }));
    t.appendChild(el('tr', {}, cells));
  }
  return t;
}

async function viewAdapters() {
  const d = await getJSON('/ui/api/adapters');
  const m = main();
  m.appendChild(el('h1', { text: 'Adapters' }));
  if (d.served === null) {
    m.appendChild(el('p', { class: 'muted', text: 'No model is loaded here (moetune ui): nothing is served. ' +
      'Start moetune serve --model DIR --adapters DIR --store FILE to load adapters from this page.' }));
  } else {
    m.appendChild(el('h2', { text: 'Served' }));
    const t = el('table', { id: 'served' }, el('tr', {}, ...['name', 'version', 'base hash', 'rank', 'modules', 'thresholds',
      'requests served', 'load time', ''].map(h => el('th', { text: h }))));
    for (const a of d.served)
      t.appendChild(el('tr', { 'data-adapter': a.name }, el('td', { text: a.name }), el('td', { class: 'num', text: a.version }),
        el('td', { text: (a.base_hash || '').slice(0, 12), title: a.base_hash }), el('td', { class: 'num', text: a.rank }),
        el('td', { class: 'num', text: a.modules }),
        el('td', { class: 'cell-text', text: a.thresholds === null ? '—' : JSON.stringify(a.thresholds) }),
        el('td', { class: 'num requests', text: a.requests }), el('td', { class: 'num', text: fmtNum(a.load_seconds, 3) + ' s' }),
        el('td', {}, el('button', { class: 'unload', text: 'Unload', on: { click: () => unloadAdapter(a.name) } }))));
    if (!d.served.length) t.appendChild(el('tr', {}, el('td', { colspan: 9, class: 'muted', text: 'none loaded' })));
    m.appendChild(t);
    m.appendChild(el('h2', { text: 'In the adapters folder' }));
    const f = el('table', { id: 'folders' }, el('tr', {}, el('th', { text: 'name' }), el('th', { text: 'path' }), el('th', { text: '' })));
    for (const a of d.folders || []) {
      const loaded = d.served.some(s => s.name === a.name);
      f.appendChild(el('tr', { 'data-folder': a.name }, el('td', { text: a.name }), el('td', { class: 'cell-text', text: a.path }),
        el('td', {}, loaded ? el('span', { class: 'muted', text: 'loaded' })
          : el('button', { class: 'load', text: 'Load', on: { click: () => loadAdapter(a.name, a.path) } }))));
    }
    if (!(d.folders || []).length) f.appendChild(el('tr', {}, el('td', { colspan: 3, class: 'muted', text: 'no adapters folder, or it is empty' })));
    m.appendChild(f);
  }
  m.appendChild(el('h2', { text: 'In the store' }));
  if (d.stored === null) m.appendChild(el('p', { class: 'muted', text: 'no store (start with --store FILE)' }));
  else m.appendChild(adapterTable(d.stored, d.served));
}

// ---------------------------------------------------------------- playground

async function models() {
  try {
    const d = await getJSON('/v1/models');
    return d.data.map(x => x.id);
  } catch (e) {
    if (e.status === 503) return null;
    throw e;
  }
}

function samplingControls() {
  const temp = el('input', { type: 'number', id: 'temperature', min: 0, max: 2, step: 0.1, value: 0 });
  const topP = el('input', { type: 'number', id: 'top-p', min: 0.05, max: 1, step: 0.05, value: 1 });
  const maxT = el('input', { type: 'number', id: 'max-tokens', min: 1, max: 4096, step: 1, value: 32 });
  const seed = el('input', { type: 'number', id: 'seed', step: 1, value: 1 });
  const box = el('div', { class: 'toolbar' }, el('label', {}, 'temperature ', temp), el('label', {}, 'top_p ', topP),
    el('label', {}, 'max tokens ', maxT), el('label', {}, 'seed ', seed));
  box.params = () => ({ temperature: Number(temp.value), top_p: Number(topP.value), max_tokens: Number(maxT.value),
                        seed: Number(seed.value) });
  return box;
}

// Streams one chat completion into `out` (as text); resolves to {id, text}.
async function streamChat(model, messages, params, out) {
  const r = await fetch('/v1/chat/completions', { method: 'POST', headers: headers(true),
    body: JSON.stringify(Object.assign({ model, messages, stream: true }, params)) });
  if (!r.ok) throw await errorOf(r);
  let id = null, text = '';
  out.textContent = '';
  await readSSE(r, data => {
    if (data === '[DONE]') return;
    const c = JSON.parse(data);
    if (c.error) throw new Error(c.error.message);
    id = id || c.id;
    for (const ch of c.choices || []) {
      const d = ch.delta && ch.delta.content;
      if (d) { text += d; out.textContent = text; }
    }
  });
  return { id, text };
}

function modelSelect(id, names, pick) {
  const s = el('select', { id });
  for (const n of names) s.appendChild(el('option', { value: n, text: n, selected: n === pick }));
  return s;
}

async function viewPlayground() {
  const m = main();
  m.appendChild(el('h1', { text: 'Playground' }));
  const names = await models();
  if (names === null) {
    m.appendChild(el('p', { id: 'no-model', class: 'muted', text: 'No model is loaded here (moetune ui shows a store only). ' +
      'Start moetune serve --model DIR [--adapters DIR] --store FILE to chat with the base and its adapters.' }));
    return;
  }
  const sampling = samplingControls();
  m.appendChild(sampling);

  // chat with one model
  m.appendChild(el('h2', { text: 'Chat' }));
  const pick = modelSelect('chat-model', names, names[0]);
  const log = el('div', { id: 'chat-log', class: 'pane' });
  const input = el('textarea', { id: 'chat-input', rows: 3, placeholder: 'a message' });
  const history = [];
  const send = el('button', { id: 'chat-send', text: 'Send' });
  send.addEventListener('click', async () => {
    const text = input.value.trim();
    if (!text) return;
    history.push({ role: 'user', content: text });
    log.appendChild(el('div', { class: 'msg' }, el('span', { class: 'role', text: 'user' }), text));
    const out = el('span', { class: 'reply' });
    log.appendChild(el('div', { class: 'msg' }, el('span', { class: 'role', text: pick.value }), out));
    input.value = '';
    send.disabled = true;
    try {
      const r = await streamChat(pick.value, history, sampling.params(), out);
      history.push({ role: 'assistant', content: r.text });
    } catch (e) { notice(e.message, true); history.pop(); }
    send.disabled = false;
  });
  const reset = el('button', { text: 'New chat', on: { click: () => { history.length = 0; clear(log); } } });
  m.append(el('div', { class: 'toolbar' }, el('label', {}, 'model ', pick), reset), log, input, el('div', { class: 'toolbar' }, send));

  // side by side, then a preference
  m.appendChild(el('h2', { text: 'Side by side' }));
  const left = modelSelect('left-model', names, names[0]);
  const right = modelSelect('right-model', names, names[1] || names[0]);
  const dataset = el('input', { id: 'pair-dataset', value: 'workbench', size: 16 });
  const prompt = el('textarea', { id: 'sbs-prompt', rows: 3, placeholder: 'the same prompt for both' });
  const outL = el('div', { class: 'completion', id: 'left-out' }), outR = el('div', { class: 'completion', id: 'right-out' });
  const verdict = el('div', { class: 'toolbar', id: 'verdict' });
  const ask = el('button', { id: 'sbs-ask', text: 'Ask both' });
  let got = null;
  const vote = async which => {
    if (!got) return;
    const [a, b] = got;
    const common = { dataset: dataset.value || 'workbench', annotator: 'labelled in the workbench' };
    try {
      let res;
      if (which === 'tie') {
        // a tie is two equal ratings: the store keeps them and makes no pair of them
        await postJSON('/v1/feedback', Object.assign({ id: a.id, rating: 0 }, common));
        res = await postJSON('/v1/feedback', Object.assign({ id: b.id, rating: 0 }, common));
      } else {
        const [c, r] = which === 'left' ? [a, b] : [b, a];
        res = await postJSON('/v1/feedback', Object.assign({ chosen_id: c.id, rejected_id: r.id }, common));
      }
      clear(verdict).appendChild(el('span', { id: 'verdict-done', text: 'recorded in dataset ' + res.dataset + ': ' +
        res.pairs_added + ' pair(s) added' + (res.duplicates ? ', ' + res.duplicates + ' already there' : '') }));
    } catch (e) { notice(e.message, true); }
  };
  ask.addEventListener('click', async () => {
    const text = prompt.value.trim();
    if (!text) return;
    ask.disabled = true;
    clear(verdict);
    got = null;
    const msgs = [{ role: 'user', content: text }];
    try {
      got = await Promise.all([streamChat(left.value, msgs, sampling.params(), outL),
                               streamChat(right.value, msgs, sampling.params(), outR)]);
      verdict.appendChild(el('button', { id: 'left-better', text: 'Left is better', on: { click: () => vote('left') } }));
      verdict.appendChild(el('button', { id: 'tie', text: 'Tie', on: { click: () => vote('tie') } }));
      verdict.appendChild(el('button', { id: 'right-better', text: 'Right is better', on: { click: () => vote('right') } }));
    } catch (e) { notice(e.message, true); }
    ask.disabled = false;
  });
  m.append(el('div', { class: 'toolbar' }, el('label', {}, 'left ', left), el('label', {}, 'right ', right),
    el('label', {}, 'pairs go to dataset ', dataset)), prompt, el('div', { class: 'toolbar' }, ask),
    el('div', { class: 'cols' }, el('div', { class: 'pane' }, el('b', { text: 'left' }), outL),
      el('div', { class: 'pane' }, el('b', { text: 'right' }), outR)), verdict);
}

// ---------------------------------------------------------------- pairs

async function viewPairs() {
  const d = await getJSON('/ui/api/datasets');
  const m = main();
  m.appendChild(el('h1', { text: 'Preference pairs' }));
  const t = el('table', { id: 'datasets' }, el('tr', {}, ...['dataset', 'pairs', 'train', 'eval', 'formats', 'imports',
    'duplicates', 'refused lines', 'digest'].map(h => el('th', { text: h }))));
  for (const x of d.datasets) {
    const formats = Object.entries(x.formats).filter(([, n]) => n).map(([f, n]) => f + ' ' + n).join(', ');
    t.appendChild(el('tr', { 'data-dataset': x.name },
      el('td', {}, el('a', { href: '#/pairs/' + encodeURIComponent(x.name), text: x.name })),
      el('td', { class: 'num', text: x.pairs }), el('td', { class: 'num', text: x.train }), el('td', { class: 'num', text: x.eval }),
      el('td', { text: formats || '—' }), el('td', { class: 'num', text: x.imports }), el('td', { class: 'num', text: x.duplicates }),
      el('td', { class: 'num', text: x.refused }), el('td', { text: (x.digest || '').slice(0, 12) })));
  }
  if (!d.datasets.length) t.appendChild(el('tr', {}, el('td', { colspan: 9, class: 'muted', text: 'no pair datasets yet' })));
  m.appendChild(t);
}

function showText(v) {
  // conversational pairs hold message lists as JSON text: show them as role: content lines
  if (typeof v === 'string' && v.startsWith('[')) {
    try {
      const a = JSON.parse(v);
      if (Array.isArray(a) && a.every(x => x && typeof x.role === 'string'))
        return a.map(x => x.role + ': ' + (typeof x.content === 'string' ? x.content : JSON.stringify(x.content))).join('\n');
    } catch (e) { /* plain text that starts with [ */ }
  }
  return v === null || v === undefined ? '' : String(v);
}

async function viewPairList(name, offset) {
  const limit = 50;
  const d = await getJSON('/ui/api/pairs?dataset=' + encodeURIComponent(name) + '&offset=' + offset + '&limit=' + limit);
  const m = main();
  clear(m);
  m.appendChild(el('h1', {}, 'Pairs of ', el('span', { text: name })));
  const exp = el('button', { id: 'export', text: 'Export TRL JSONL' });
  exp.addEventListener('click', async () => {
    const r = await fetch('/ui/api/pairs/export?dataset=' + encodeURIComponent(name), { headers: headers(false) });
    if (!r.ok) { notice((await errorOf(r)).message, true); return; }
    const url = URL.createObjectURL(await r.blob());
    const a = el('a', { href: url, download: name + '.jsonl' });
    document.body.appendChild(a);
    a.click();
    a.remove();
    URL.revokeObjectURL(url);
  });
  const prev = el('button', { text: '◀ previous', disabled: offset === 0, on: { click: () => viewPairList(name, Math.max(0, offset - limit)) } });
  const next = el('button', { text: 'next ▶', disabled: offset + limit >= d.total, on: { click: () => viewPairList(name, offset + limit) } });
  m.appendChild(el('div', { class: 'toolbar' }, exp, prev, next,
    el('span', { class: 'muted', text: (d.total ? (offset + 1) + '–' + Math.min(d.total, offset + limit) : 0) + ' of ' + d.total })));
  const t = el('table', { id: 'pairs' }, el('tr', {}, ...['id', 'split', 'prompt', 'chosen', 'rejected', 'source', 'annotator', 'label', ''].map(h => el('th', { text: h }))));
  const edit = async (p, what) => {
    try {
      await postJSON('/ui/api/pairs/' + p.id + '/' + what, { dataset: name });
      notice('pair ' + p.id + (what === 'swap' ? ': chosen and rejected swapped' : ' dropped'));
    } catch (e) { notice(e.message, true); return; }
    const keep = document.getElementById('notice').textContent;
    await viewPairList(name, offset);
    notice(keep);
  };
  for (const p of d.pairs) {
    const drop = el('button', { class: 'drop', text: 'Drop' });
    drop.addEventListener('click', () => {
      // two clicks, no native dialog: the first one asks
      if (drop.dataset.armed) edit(p, 'drop');
      else { drop.dataset.armed = '1'; drop.textContent = 'Really drop?'; }
    });
    const actions = el('td', {}, el('button', { class: 'swap', title: 'chosen and rejected change places', text: 'Swap',
                                                on: { click: () => edit(p, 'swap') } }), ' ', drop);
    t.appendChild(el('tr', { 'data-pair': p.id }, el('td', { class: 'num', text: p.id }), el('td', { text: p.split }),
      el('td', { class: 'cell-text prompt', text: showText(p.prompt) }), el('td', { class: 'cell-text chosen', text: showText(p.chosen) }),
      el('td', { class: 'cell-text rejected', text: showText(p.rejected) }),
      el('td', { class: 'cell-text', text: (p.source || '—') + (p.file ? ' (' + p.file + (p.line !== null ? ':' + p.line : '') + ')' : '') }),
      el('td', { text: p.annotator || '—' }),
      el('td', { class: 'cell-text', text: p.label === null ? '—' : JSON.stringify(p.label) }), actions));
  }
  m.appendChild(t);
}

// ---------------------------------------------------------------- start

async function start() {
  const k = document.getElementById('api-key');
  k.value = key();
  k.addEventListener('change', () => { sessionStorage.setItem('moetune-key', k.value); start(); });
  try {
    info = await getJSON('/ui/api/info');
    document.getElementById('where').textContent = (info.model ? 'model ' + info.model : 'no model loaded') +
      ' · store ' + (info.store || 'none') + ' · moetune ' + info.version;
  } catch (e) {
    notice(e.message, true);
    if (e.status === 401) return;
  }
  route();
}

window.addEventListener('hashchange', route);
document.addEventListener('DOMContentLoaded', start);
