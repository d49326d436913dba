// Mambo dashboard: REST for the history, the WebSocket (/ws) for everything live.
// Frames are documented in the API description (/docs). No build step, no dependencies but the
// vendored Lightweight Charts.
"use strict";

const MAX_ROWS = 50;
const TF_SECONDS = { s: 1, m: 60, h: 3600, d: 86400 };
const PRICE_INDICATOR = /^(sma|ema|wma|dema|tema|kama|bb|vwap)/;

const state = {
  key: null, // exchange:symbol on the chart
  tf: null, // the trading timeframe (from the signals)
  candles: new Map(), // "key|tf" -> [{time, open, high, low, close}]
  markers: new Map(), // key -> [marker]
  overlays: new Map(), // indicator name -> line series
  lastBarTime: 0,
  seq: null,
  epoch: null,
  apiKey: sessionStorage.getItem("mambo-api-key") || "",
};

const $ = (id) => document.getElementById(id);
const tfSeconds = (tf) => parseInt(tf, 10) * TF_SECONDS[tf.slice(-1)];
const isoTime = (ns) => new Date(Number(ns) / 1e6).toISOString().replace("T", " ").slice(0, 19);
// A Decimal as the API sends it (a string, exact), without the trailing zeros of ClickHouse's scale.
const dec = (x) => {
  if (x === null || x === undefined) return "-";
  const t = String(x);
  if (/e/i.test(t)) return Number(t) === 0 ? "0" : t; // Decimal("0E-18"): a zero at the table's scale
  return t.includes(".") ? t.replace(/0+$/, "").replace(/\.$/, "") : t;
};
const fmt = (x, digits = 2) => (x === null || x === undefined ? "-" : Number(x).toFixed(digits));

// --- charts -------------------------------------------------------------------------------------------
const chartOptions = {
  layout: { background: { color: "#181e25" }, textColor: "#d8dee4" },
  grid: { vertLines: { color: "#222a33" }, horzLines: { color: "#222a33" } },
  timeScale: { timeVisible: true, secondsVisible: true },
};
const chart = LightweightCharts.createChart($("chart"), chartOptions);
const candleSeries = chart.addCandlestickSeries();
const equityChart = LightweightCharts.createChart($("equity-chart"), chartOptions);
const equitySeries = equityChart.addLineSeries({ color: "#4e9af1", lineWidth: 2 });
let lastEquityTime = 0;
const COLORS = ["#f5b942", "#b07cf5", "#4ec9b0", "#f57c7c", "#7cc4f5", "#c4f57c"];

function barOf(c) {
  return { time: Math.floor(c.open_time / 1e9), open: c.open, high: c.high, low: c.low, close: c.close };
}

function pushCandle(c) {
  const id = `${c.exchange}:${c.symbol}|${c.timeframe}`;
  const bars = state.candles.get(id) || [];
  const bar = barOf(c);
  if (bars.length && bars[bars.length - 1].time >= bar.time) return;
  bars.push(bar);
  if (bars.length > 2000) bars.shift();
  state.candles.set(id, bars);
  if (`${c.exchange}:${c.symbol}` === state.key && c.timeframe === state.tf && bar.time > state.lastBarTime) {
    candleSeries.update(bar);
    state.lastBarTime = bar.time;
  }
}

function markerOf(s) {
  const buy = s.side === "buy";
  return {
    time: Math.floor(s.ts_event / 1e9) - tfSeconds(s.timeframe),
    position: buy ? "belowBar" : "aboveBar",
    color: buy ? "#26a69a" : "#ef5350",
    shape: buy ? "arrowUp" : "arrowDown",
    text: `${s.side.toUpperCase()} ${fmt(s.confidence)}`,
  };
}

function pushMarker(s) {
  const key = `${s.exchange}:${s.symbol}`;
  const list = state.markers.get(key) || [];
  list.push(markerOf(s));
  list.sort((a, b) => a.time - b.time);
  if (list.length > 500) list.shift();
  state.markers.set(key, list);
  if (key === state.key) candleSeries.setMarkers(list);
}

function pushIndicators(ind) {
  if (`${ind.exchange}:${ind.symbol}` !== state.key || ind.timeframe !== state.tf) return;
  const time = Math.floor(ind.ts_event / 1e9) - tfSeconds(ind.timeframe);
  for (const [name, value] of Object.entries(ind.values)) {
    if (!PRICE_INDICATOR.test(name) || value === null || !Number.isFinite(value)) continue;
    let series = state.overlays.get(name);
    if (!series) {
      series = chart.addLineSeries({
        color: COLORS[state.overlays.size % COLORS.length], lineWidth: 1, title: name,
        priceLineVisible: false, lastValueVisible: false,
      });
      state.overlays.set(name, series);
    }
    try { series.update({ time, value }); } catch (e) { /* older than the last point: skip */ }
  }
  $("legend").textContent = Object.entries(ind.values)
    .map(([k, v]) => `${k} ${v === null ? "-" : fmt(v)}`).join("  ");
}

// --- tables --------------------------------------------------------------------------------------------
function prependRow(tbodyId, cells, attrs = {}) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs)) tr.setAttribute(k, v);
  for (const [text, cls] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  const tbody = $(tbodyId);
  tbody.insertBefore(tr, tbody.firstChild);
  while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
}

function showSignal(s) {
  if (s.side === "hold") return;
  const key = `${s.exchange}:${s.symbol}`;
  prependRow("signals", [
    [isoTime(s.ts_event)], [key], [s.side.toUpperCase(), s.side], [fmt(s.confidence)], [fmt(s.price)],
    [s.lead_strategy],
  ], { "data-event-id": s.event_id, class: "signal-row" });
  pushMarker(s);
}

function showOrder(o) {
  prependRow("orders", [
    [isoTime(o.ts_event)], [`${o.exchange}:${o.symbol}`], [o.strategy], [o.side, o.side], [dec(o.qty)], [o.status],
  ], { "data-event-id": o.event_id });
}

function showFill(f) {
  prependRow("fills", [
    [isoTime(f.ts_event)], [`${f.exchange}:${f.symbol}`], [f.side, f.side], [dec(f.price)], [dec(f.qty)], [dec(f.fee)],
    [dec(f.realized_pnl)],
  ], { "data-event-id": f.event_id });
}

function showEquity(e) {
  const time = Math.floor(e.ts_event / 1e9);
  if (time > lastEquityTime) {
    equitySeries.update({ time, value: Number(e.equity) });
    lastEquityTime = time;
  }
  $("equity-value").textContent =
    `equity ${fmt(e.equity)}  cash ${fmt(e.cash)}  realized ${fmt(e.realized_pnl)}  ` +
    `unrealized ${fmt(e.unrealized_pnl)}  fees ${fmt(e.fees)}  drawdown ${fmt(100 * e.drawdown)}%`;
}

// --- REST ----------------------------------------------------------------------------------------------
async function get(path) {
  const headers = state.apiKey ? { "X-API-Key": state.apiKey } : {};
  const r = await fetch(path, { headers });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

function addSymbolOption(key) {
  const sel = $("symbol");
  if ([...sel.options].some((o) => o.value === key)) return;
  sel.add(new Option(key, key));
}

async function selectMarket(key, tf) {
  state.key = key;
  state.tf = tf;
  state.lastBarTime = 0;
  addSymbolOption(key);
  $("symbol").value = key;
  $("chart-title").textContent = `${key} ${tf}`;
  for (const s of state.overlays.values()) chart.removeSeries(s);
  state.overlays.clear();
  const q = `symbol=${encodeURIComponent(key)}&timeframe=${tf}&order=desc&limit=500`;
  try {
    const page = await get(`/candles?${q}`);
    for (const c of page.items.reverse()) pushCandle(c);
    const ind = await get(`/indicators?${q}`);
    for (const i of ind.items.reverse()) pushIndicators(i);
  } catch (e) { console.warn(e); }
  const bars = state.candles.get(`${key}|${tf}`) || [];
  candleSeries.setData(bars);
  state.lastBarTime = bars.length ? bars[bars.length - 1].time : 0;
  candleSeries.setMarkers(state.markers.get(key) || []);
}

async function loadHistory() {
  const health = await get("/health");
  $("open-banner").hidden = health.auth !== "open";
  $("key-box").hidden = health.auth === "open";
  try {
    for (const s of await get("/symbols")) addSymbolOption(s.key);
    const latest = await get("/signals/latest");
    const signals = await get("/signals?order=desc&limit=200");
    for (const s of signals.items.reverse()) showSignal(s);
    for (const o of (await get("/orders?order=desc&limit=50")).items.reverse()) showOrder(o);
    for (const f of (await get("/fills?order=desc&limit=50")).items.reverse()) showFill(f);
    for (const e of (await get("/pnl?order=desc&limit=1000")).equity.reverse()) showEquity(e);
    if (latest.length && !state.key) await selectMarket(`${latest[0].exchange}:${latest[0].symbol}`, latest[0].timeframe);
  } catch (e) { console.warn(e); }
}

async function refreshHealth() {
  try {
    const h = await get("/health");
    const tbody = $("feed");
    tbody.replaceChildren();
    for (const [topic, f] of Object.entries(h.feed)) {
      prependRow("feed", [[topic], [f.messages.toLocaleString()], [isoTime(f.last_event_ts)], [fmt(f.age_seconds, 1)]]);
    }
    $("hub").textContent = `hub: ${h.hub.clients} clients, ${h.hub.published.toLocaleString()} published, ` +
      `${h.hub.dropped_clients} dropped`;
  } catch (e) { console.warn(e); }
}

function setRows(tbodyId, rows) {
  const tbody = $(tbodyId);
  tbody.replaceChildren();
  for (const [cells, attrs] of rows) {
    const tr = document.createElement("tr");
    for (const [k, v] of Object.entries(attrs || {})) tr.dataset[k] = v;
    for (const c of cells) {
      const td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
}

const ms = (s) => (s === null || s === undefined ? "-" : fmt(1000 * s, 1) + " ms");

async function refreshOperator() {
  try {
    const m = await get("/metrics/summary");
    const total = (o) => Object.values(o).reduce((a, b) => a + b, 0);
    const rows = [
      ["messages", total(m.messages).toLocaleString(), "messages"],
      ["dead letters", m.dead_letters.reduce((a, d) => a + d.count, 0).toLocaleString(), "dead_letters"],
      ["orders", (m.orders.new || 0).toLocaleString(), "orders"],
      ["fills", m.fills.toLocaleString(), "fills"],
      ["risk rejections", total(m.rejections).toLocaleString(), "rejections"],
    ];
    for (const [stage, l] of Object.entries(m.latency)) {
      rows.push([`latency ${stage} p50 / p99`, `${ms(l.p50)} / ${ms(l.p99)}`, `latency_${stage}`]);
    }
    for (const [account, a] of Object.entries(m.accounts)) {
      rows.push([`${account} equity`, fmt(a.equity), `equity_${account}`]);
      rows.push([`${account} drawdown`, `${fmt(100 * (a.drawdown || 0))}%` + (a.halted ? "  HALTED" : ""), `drawdown_${account}`]);
    }
    if (m.lag.length) rows.push(["max consumer lag", Math.max(...m.lag.map((l) => l.messages)).toLocaleString(), "lag"]);
    rows.push(["WebSocket clients", String(m.ws.clients), "ws_clients"]);
    setRows("operator", rows.map(([label, value, figure]) => [[label, value], { figure }]));
  } catch (e) { console.warn(e); }
}

async function refreshPositions() {
  try {
    const rows = (await get("/positions")).filter((p) => Number(p.qty) !== 0).map((p) => [
      [p.account, `${p.exchange}:${p.symbol}`, fmt(p.qty, 6), fmt(p.avg_price), fmt(p.mark_price), fmt(p.unrealized_pnl),
       p.liquidation_price === null ? "-" : fmt(p.liquidation_price)],
      { market: `${p.exchange}:${p.symbol}` },
    ]);
    setRows("positions", rows);
  } catch (e) { console.warn(e); }
}

async function sendControl(body) {
  const headers = { "Content-Type": "application/json", ...(state.apiKey ? { "X-API-Key": state.apiKey } : {}) };
  const what = `${body.action} ${body.strategy || ""}${body.market ? " on " + body.market : ""}`;
  const answerEl = $("control-answer");
  delete answerEl.dataset.status;
  const r = await fetch("/control", { method: "POST", headers, body: JSON.stringify(body) });
  const answer = await r.json();
  if (!r.ok) {
    answerEl.textContent = `${what}: refused: ${typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail)}`;
    answerEl.dataset.status = "refused";
    return;
  }
  answerEl.textContent = `${what}: sent (version ${answer.version})`;
  for (let i = 0; i < 40; i++) {
    await new Promise((ok) => setTimeout(ok, 250));
    const results = await get(`/control/results?command_id=${answer.command_id}`);
    if (results.length) {
      const states = results.map((x) => x.status + (x.reason ? ` (${x.reason})` : ""));
      answerEl.textContent = `${what}: ${[...new Set(states)].join(", ")}`;
      answerEl.dataset.status = results.every((x) => x.status === "applied") ? "applied" : "rejected";
      refreshControlHistory();
      return;
    }
  }
}

// A button sending a command: ``body``, or what ``body()`` gives when clicked (the market chosen then).
function controlButton(label, action, body) {
  const b = document.createElement("button");
  b.textContent = label;
  b.dataset.action = action;
  b.addEventListener("click", () => sendControl(typeof body === "function" ? body() : body));
  return b;
}

// One row per strategy, made once (a form being filled in survives the refreshes): the signal count,
// the market the controls act on (every market of the account, or one), pause/stop/start, and the
// parameters form (its declared parameters, filled with the defaults or the last values applied).
const strategyRows = new Map(); // name -> {count, market, form}
const appliedParams = new Map(); // "strategy|market" -> params object, from the answers

function parameterForm(s, market) {
  const form = document.createElement("form");
  form.className = "params";
  form.hidden = true;
  form.dataset.strategy = s.name;
  for (const [name, value] of Object.entries(s.parameters)) {
    const label = document.createElement("label");
    label.textContent = name + " ";
    const input = document.createElement("input");
    input.name = name;
    if (typeof value === "boolean") { input.type = "checkbox"; input.checked = value; }
    else if (typeof value === "number") { input.type = "number"; input.step = "any"; input.value = value; }
    else input.value = value;
    input.dataset.kind = typeof value;
    input.dataset.integer = s.parameter_types[name] === "int" ? "1" : ""; // 30.0 stays a float
    label.appendChild(input);
    form.appendChild(label);
  }
  const apply = document.createElement("button");
  apply.type = "submit";
  apply.textContent = "apply";
  apply.dataset.action = "set_params";
  form.appendChild(apply);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const params = {};
    for (const input of form.querySelectorAll("input")) {
      if (input.dataset.kind === "boolean") params[input.name] = input.checked;
      else if (input.dataset.kind === "number") {
        // an int parameter given a fraction is sent as it is: the strategy refuses it with its reason
        params[input.name] = input.dataset.integer && /^-?\d+$/.test(input.value) ? parseInt(input.value, 10) : Number(input.value);
      } else params[input.name] = input.value;
    }
    sendControl({ action: "set_params", strategy: s.name, market: market.value, params });
  });
  return form;
}

function fillForm(name) {
  const row = strategyRows.get(name);
  if (!row) return;
  const applied = appliedParams.get(`${name}|${row.market.value}`) || {};
  for (const input of row.form.querySelectorAll("input")) {
    const value = input.name in applied ? applied[input.name] : row.defaults[input.name];
    if (input.dataset.kind === "boolean") input.checked = value; else input.value = value;
  }
}

function strategyRow(s) {
  const tbody = $("strategies");
  const tr = document.createElement("tr");
  tr.dataset.strategy = s.name;
  const name = document.createElement("td");
  name.textContent = s.name;
  const count = document.createElement("td");
  const where = document.createElement("td");
  const market = document.createElement("select");
  market.className = "market";
  for (const m of ["", ...s.markets]) {
    const o = document.createElement("option");
    o.value = m;
    o.textContent = m || "every market";
    market.appendChild(o);
  }
  where.appendChild(market);
  const controls = document.createElement("td");
  for (const action of ["pause", "stop", "start"]) {
    controls.appendChild(controlButton(action, action, () => ({ action, strategy: s.name, market: market.value })));
  }
  const form = parameterForm(s, market);
  if (Object.keys(s.parameters).length) {
    const toggle = document.createElement("button");
    toggle.textContent = "parameters";
    toggle.dataset.action = "parameters";
    toggle.addEventListener("click", () => { form.hidden = !form.hidden; fillForm(s.name); });
    controls.appendChild(toggle);
  }
  market.addEventListener("change", () => fillForm(s.name));
  tr.append(name, count, where, controls);
  const formRow = document.createElement("tr");
  formRow.dataset.paramsFor = s.name;
  const cell = document.createElement("td");
  cell.colSpan = 4;
  cell.appendChild(form);
  formRow.appendChild(cell);
  const account = tbody.querySelector("tr[data-strategy='']");
  tbody.insertBefore(tr, account);
  tbody.insertBefore(formRow, account);
  strategyRows.set(s.name, { count, market, form, defaults: s.parameters });
}

async function refreshStrategies() {
  try {
    const list = await get("/strategies");
    if (!list.length) return;
    const tbody = $("strategies");
    if (!tbody.querySelector("tr[data-strategy='']")) {
      const tr = document.createElement("tr");
      tr.dataset.strategy = "";
      const name = document.createElement("td");
      name.textContent = "account main";
      const controls = document.createElement("td");
      controls.colSpan = 3;
      controls.appendChild(controlButton("halt entries", "halt", { action: "halt" }));
      controls.appendChild(controlButton("resume", "resume", { action: "resume" }));
      tr.append(name, controls);
      tbody.appendChild(tr);
    }
    for (const s of list) {
      if (!strategyRows.has(s.name)) strategyRow(s);
      strategyRows.get(s.name).count.textContent = s.signals.toLocaleString();
    }
  } catch (e) { console.warn(e); }
}

// The answers to commands, newest first: what ran with which parameters from when, and who said so.
async function refreshControlHistory() {
  try {
    const results = await get("/control/results");
    for (const r of results) {
      if (r.action === "set_params" && r.status === "applied") {
        appliedParams.set(`${r.strategy}|${r.exchange}:${r.symbol}`, JSON.parse(r.params || "{}"));
      }
    }
    const rows = results.slice(-20).reverse().map((r) => [
      [isoTime(r.ts_event), r.who, r.action, r.strategy || "-", r.exchange ? `${r.exchange}:${r.symbol}` : "-",
       r.status, r.reason || (r.action === "set_params" ? r.params : "")],
      { status: r.status, command: r.command_id },
    ]);
    setRows("control-history", rows);
  } catch (e) { console.warn(e); }
}

// --- WebSocket -----------------------------------------------------------------------------------------
function onFrame(msg) {
  if (msg.type === "welcome") {
    if (state.epoch && state.epoch !== msg.epoch) state.seq = null; // the server restarted
    state.epoch = msg.epoch;
    return;
  }
  if (msg.seq !== undefined && msg.type === "event") {
    state.seq = msg.seq;
    $("seq").textContent = msg.seq;
  }
  if (msg.type !== "event") return;
  const d = msg.data;
  switch (msg.channel) {
    case "candles": pushCandle(d); break;
    case "indicators": pushIndicators(d); break;
    case "signals":
      if (!state.key) selectMarket(`${d.exchange}:${d.symbol}`, d.timeframe);
      showSignal(d);
      break;
    case "orders": showOrder(d); break;
    case "fills": showFill(d); break;
    case "equity": showEquity(d); break;
  }
}

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws`);
  ws.onopen = () => {
    if (state.apiKey) ws.send(JSON.stringify({ op: "auth", api_key: state.apiKey }));
    const sub = { op: "subscribe", channels: ["signals", "candles", "indicators", "orders", "fills", "equity"] };
    if (state.seq !== null) sub.resume_from = state.seq;
    ws.send(JSON.stringify(sub));
    $("ws-status").textContent = "live";
    $("ws-status").className = "status live";
  };
  ws.onmessage = (ev) => onFrame(JSON.parse(ev.data));
  ws.onclose = () => {
    $("ws-status").textContent = "reconnecting";
    $("ws-status").className = "status down";
    setTimeout(connect, 1000);
  };
}

$("symbol").addEventListener("change", (ev) => selectMarket(ev.target.value, state.tf || "1m"));
$("key-save").addEventListener("click", () => {
  state.apiKey = $("api-key").value.trim();
  sessionStorage.setItem("mambo-api-key", state.apiKey);
  location.reload();
});

loadHistory().finally(() => {
  connect();
  refreshHealth();
  setInterval(refreshHealth, 2000);
  refreshOperator();
  setInterval(refreshOperator, 2000);
  refreshPositions();
  setInterval(refreshPositions, 2000);
  refreshStrategies();
  setInterval(refreshStrategies, 5000);
  refreshControlHistory();
  setInterval(refreshControlHistory, 5000);
});
