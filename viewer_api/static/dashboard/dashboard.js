// The regulator dashboard: sign in (the token stays in this page's memory only), load the
// aggregates of /api/statistics/* and draw them with plotly.js (window.Plotly, served by the
// node from the installed plotly package). Only counts and averages ever reach this page.

const METRICS = ["uploads", "images", "views", "citations", "qc", "recognition", "quality"];
// The column a metric is compared on, and the traces of its trend chart.
const MAIN = {
  uploads: "uploads", images: "images", views: "views", citations: "citations",
  qc: "reviewed", recognition: "reminders", quality: "overall",
};
const TRENDS = {
  uploads: [["uploads", "bar"]],
  images: [["images", "bar"]],
  views: [["staff_views", "bar"], ["patient_views", "bar"], ["cross_hospital_views", "line"]],
  citations: [["findings", "bar"], ["impression", "bar"]],
  qc: [["passed", "bar"], ["failed", "bar"], ["pass_rate", "rate"]],
  recognition: [["accepted", "bar"], ["declined", "bar"], ["undecided", "bar"],
    ["acceptance_rate", "rate"]],
  quality: [["overall", "line"], ["completeness", "line"], ["timeliness", "line"],
    ["consistency", "line"], ["conformance", "line"]],
};
const LABELS = {
  uploads: "Studies 检查", images: "Images 影像", bytes: "Bytes 字节", views: "Views 调阅",
  staff_views: "Staff 医护", patient_views: "Patients 患者",
  cross_hospital_views: "Other hospitals 跨院", citations: "Citations 引用",
  findings: "Findings 影像表现", impression: "Impression 诊断意见",
  cross_hospital_citations: "Other hospitals 跨院", reviewed: "Reviewed 已抽检",
  passed: "Passed 合格", failed: "Failed 不合格", pass_rate: "Pass rate % 合格率",
  checks: "Checks 查询", reminders: "Reminders 提醒", accepted: "Accepted 采纳",
  declined: "Declined 未采纳", undecided: "Undecided 未决定",
  acceptance_rate: "Accepted % 采纳率", scored: "Scored 已评分", overall: "Overall 综合",
  completeness: "Completeness 完整性", timeliness: "Timeliness 及时性",
  consistency: "Consistency 一致性", conformance: "Conformance 规范性",
  low_quality: "Below 60 低于60分", district: "District 区县", level: "Level 等级",
  hospital: "Hospital 医院", period: "Period 周期",
};
const COLORS = {
  uploads: "#1f6fb2", images: "#1f6fb2", staff_views: "#1f6fb2", patient_views: "#f39c12",
  cross_hospital_views: "#16a085", findings: "#1f6fb2", impression: "#f39c12",
  passed: "#27ae60", failed: "#c0392b", pass_rate: "#34495e", accepted: "#27ae60",
  declined: "#c0392b", undecided: "#b2bec3", acceptance_rate: "#34495e", overall: "#1f6fb2",
  completeness: "#8e44ad", timeliness: "#f39c12", consistency: "#16a085", conformance: "#7f8c8d",
};
const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

const $ = (selector) => document.querySelector(selector);
const board = (window.dashboard = { loads: 0, ready: false, error: "", charts: {} });

let token = null;
let catalogue = [];
let hospitals = [];
const state = { period: "month", by: "district", from: "", to: "", district: "", level: "",
  hospital_id: "", metric: "uploads" };
const initial = { ...state };
let crumbs = [];

// --- HTTP ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, title, detail) {
    super(detail || title);
    this.status = status;
    this.title = title;
  }
}

function query(params) {
  const parts = Object.entries(params)
    .filter(([, value]) => value !== "" && value !== null && value !== undefined)
    .map(([key, value]) => `${encodeURIComponent(key)}=${encodeURIComponent(value)}`);
  return parts.length ? "?" + parts.join("&") : "";
}

async function send(url, init = {}) {
  const headers = { Accept: "application/json", ...(init.headers || {}) };
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(url, { ...init, headers });
  if (!response.ok) {
    let title = `HTTP ${response.status}`, detail = "";
    try {
      const body = await response.json();
      title = body.title || title;
      detail = body.detail || "";
    } catch (_) { /* not problem+json */ }
    throw new ApiError(response.status, title, detail);
  }
  return response;
}

const getJSON = async (url) => (await send(url)).json();

function filters() {
  return { from: state.from, to: state.to, district: state.district, level: state.level,
    hospital_id: state.hospital_id };
}

// --- signing in ------------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const message = $("#sign-in-message");
  message.className = "message";
  message.textContent = "Signing in… 登录中";
  try {
    const body = new URLSearchParams({ username: $("#username").value, password: $("#password").value });
    const answer = await (await send("/api/auth/token", { method: "POST", body })).json();
    token = answer.access_token;
    catalogue = (await getJSON("/api/statistics")).metrics;
    $("#password").value = "";
    const user = answer.user || {};
    $("#who").textContent = `${user.username} · ${user.role}${user.hospital_id ? " · " + user.hospital_id : ""}`;
    $("#sign-in").hidden = true;
    $("#board").hidden = false;
    $("#sign-out").hidden = false;
    await start();
  } catch (error) {
    token = null;
    message.className = "message error";
    message.textContent = error.status === 403
      ? "This account may not see statistics. 此账号无统计查看权限。"
      : `${error.title || "Error"}: ${error.message}`;
  }
}

function signOut() {
  token = null;
  location.reload();
}

async function start() {
  hospitals = (await getJSON("/api/statistics/hospitals")).hospitals;
  fillSelect("#district", unique(hospitals.map((h) => h.district)));
  fillSelect("#level", unique(hospitals.map((h) => h.level)));
  fillSelect("#hospital", hospitals.map((h) => [h.hospital_id, h.hospital]));
  const compare = $("#compare-metric");
  compare.replaceChildren(...catalogue.map((m) => new Option(m.title, m.name)));
  if (hospitals.length === 1) { // a hospital admin: one hospital, nothing to compare across
    Object.assign(state, { hospital_id: hospitals[0].hospital_id, by: "hospital" });
  }
  Object.assign(initial, state);
  crumbs = [{ label: "全市 Region", state: { ...state } }];
  await load();
}

const unique = (values) => [...new Set(values.filter(Boolean))].sort().map((v) => [v, v]);

function fillSelect(selector, options) {
  const select = $(selector);
  select.replaceChildren(new Option("All 全部", ""), ...options.map(([value, label]) => new Option(label, value)));
}

// --- loading and drawing ---------------------------------------------------------------------

async function load() {
  const status = $("#status");
  status.className = "message";
  status.textContent = "Loading… 加载中";
  board.ready = false;
  syncForm();
  renderCrumbs();
  const f = filters();
  const compareBy = state.by === "none" ? "hospital" : state.by;
  try {
    const [summary, places, compare, ...trends] = await Promise.all([
      getJSON("/api/statistics/summary" + query(f)),
      getJSON("/api/statistics/hospitals" + query(f)),
      getJSON(`/api/statistics/${state.metric}` + query({ ...f, period: "none", by: compareBy })),
      ...METRICS.map((m) => getJSON(`/api/statistics/${m}` + query({ ...f, period: state.period, by: "none" }))),
    ]);
    $("#timezone").textContent = summary.timezone;
    renderTiles(summary.totals);
    renderMap(places.hospitals);
    renderCompare(compare);
    trends.forEach(renderTrend);
    status.textContent = "";
    board.loads += 1;
    board.ready = true;
    document.body.dataset.loads = String(board.loads);
  } catch (error) {
    board.error = error.message;
    status.className = "message error";
    status.textContent = `${error.title || "Error"}: ${error.message}`;
  }
}

function format(value, unit) {
  if (value === null || value === undefined) return "–";
  const text = Number(value).toLocaleString("zh-CN", { maximumFractionDigits: 1 });
  return unit ? `${text}${unit}` : text;
}

function renderTiles(totals) {
  for (const tile of document.querySelectorAll(".kpi")) {
    const value = (totals[tile.dataset.metric] || {})[tile.dataset.column];
    const shown = tile.querySelector(".value");
    shown.dataset.value = value === null || value === undefined ? "" : String(value);
    shown.textContent = format(value, tile.dataset.unit);
  }
}

function layout(extra) {
  return {
    margin: { l: 48, r: 48, t: 10, b: 60 },
    barmode: "stack",
    legend: { orientation: "h", y: -0.25 },
    font: { family: "system-ui, PingFang SC, Microsoft YaHei, sans-serif", size: 12 },
    paper_bgcolor: "#ffffff",
    plot_bgcolor: "#ffffff",
    ...extra,
  };
}

function draw(id, traces, extra, rows) {
  const element = document.getElementById(id);
  board.charts[id] = rows;
  window.Plotly.react(element, traces, layout(extra), PLOT_CONFIG);
  if (!element.dataset.bound) { // one listener per chart, reading the rows of the last draw
    element.dataset.bound = "1";
    element.on("plotly_click", (event) => clicked(id, event));
  }
}

function renderTrend(table) {
  const rows = table.rows;
  const x = rows.map((r) => r.period);
  const traces = TRENDS[table.metric].map(([column, kind]) => ({
    type: kind === "bar" ? "bar" : "scatter",
    mode: "lines+markers",
    name: LABELS[column] || column,
    x,
    y: rows.map((r) => r[column]),
    yaxis: kind === "rate" ? "y2" : "y",
    marker: { color: COLORS[column] },
    line: { color: COLORS[column], width: column === "overall" ? 3 : 1.5 },
    meta: column,
  }));
  const rate = TRENDS[table.metric].some(([, kind]) => kind === "rate");
  const extra = { xaxis: { type: "category", automargin: true, tickangle: -45 },
    yaxis: { rangemode: "tozero" } };
  if (rate) {
    extra.yaxis2 = { overlaying: "y", side: "right", range: [0, 105], dtick: 25, ticksuffix: "%",
      showgrid: false };
  }
  if (table.metric === "quality") {
    const lowest = Math.min(100, ...rows.flatMap((r) => TRENDS.quality.map(([c]) => r[c] ?? 100)));
    extra.yaxis = { range: [Math.max(0, Math.floor(lowest / 10) * 10 - 10), 101] };
  }
  const element = document.getElementById(`chart-${table.metric}`);
  element.dataset.period = table.period;
  element.dataset.total = JSON.stringify(table.totals);
  draw(`chart-${table.metric}`, traces, extra, rows);
}

function groupName(row, by) {
  if (by === "hospital") return row.hospital || row.hospital_id || "(none)";
  return row[by] || "(unknown 未填)";
}

function renderCompare(table) {
  const column = MAIN[table.metric];
  const rows = table.rows;
  const names = rows.map((r) => groupName(r, table.by));
  draw("chart-compare", [{
    type: "bar", x: names, y: rows.map((r) => r[column]), name: LABELS[column] || column,
    marker: { color: "#1f6fb2" },
  }], { xaxis: { type: "category", automargin: true }, yaxis: { rangemode: "tozero" }, showlegend: false }, rows);
  const chart = $("#chart-compare");
  chart.dataset.metric = table.metric;
  chart.dataset.by = table.by;
  const columns = table.valueColumns;
  const head = document.createElement("tr");
  for (const name of [table.by, ...columns]) {
    const cell = document.createElement("th");
    cell.textContent = LABELS[name] || name;
    head.append(cell);
  }
  $("#compare-table thead").replaceChildren(head);
  $("#compare-table tbody").replaceChildren(...rows.map((row, index) => {
    const line = document.createElement("tr");
    const first = document.createElement("td");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = names[index];
    button.disabled = !row.drill;
    button.addEventListener("click", () => drillInto(row.drill, names[index]));
    first.append(button);
    line.append(first, ...columns.map((c) => {
      const cell = document.createElement("td");
      cell.textContent = format(row[c]);
      cell.dataset.column = c;
      return cell;
    }));
    return line;
  }));
}

function renderMap(places) {
  const located = places.filter((h) => h.latitude !== null && h.longitude !== null);
  const most = Math.max(1, ...located.map((h) => h.uploads));
  const traces = unique(located.map((h) => h.level)).map(([level]) => {
    const group = located.filter((h) => h.level === level);
    return {
      type: "scatter",
      mode: "markers+text",
      name: level,
      x: group.map((h) => h.longitude),
      y: group.map((h) => h.latitude),
      text: group.map((h) => h.hospital.split(" ")[0]),
      textposition: "top center",
      customdata: group.map((h) => [h.hospital_id, h.hospital, h.uploads, h.images, h.views, h.overall ?? "–"]),
      hovertemplate: "%{customdata[1]}<br>Studies %{customdata[2]} · Images %{customdata[3]}"
        + "<br>Views %{customdata[4]} · Quality %{customdata[5]}<extra>%{fullData.name}</extra>",
      marker: { size: group.map((h) => 12 + 38 * Math.sqrt(h.uploads / most)), opacity: 0.75,
        line: { width: 1, color: "#ffffff" } },
    };
  });
  const latitude = located.length ? located.reduce((s, h) => s + h.latitude, 0) / located.length : 30;
  const around = (values) => { // at least 0.1° across, so one hospital is not a lone dot
    const low = Math.min(...values), high = Math.max(...values);
    const pad = Math.max(0.05, (high - low) * 0.15);
    return values.length ? [low - pad, high + pad] : undefined;
  };
  draw("chart-map", traces, {
    xaxis: { title: { text: "Longitude 经度 (°E)" }, zeroline: false,
      range: around(located.map((h) => h.longitude)) },
    yaxis: { title: { text: "Latitude 纬度 (°N)" }, zeroline: false, scaleanchor: "x",
      scaleratio: 1 / Math.cos((latitude * Math.PI) / 180),
      range: around(located.map((h) => h.latitude)) },
    margin: { l: 60, r: 20, t: 10, b: 50 },
    legend: { orientation: "h", y: -0.15 },
  }, located);
  $("#chart-map").dataset.hospitals = String(located.length);
}

// --- drill-down ------------------------------------------------------------------------------

function clicked(id, event) {
  const point = event && event.points && event.points[0];
  if (!point) return;
  const rows = board.charts[id] || [];
  if (id === "chart-map") {
    const [hospitalId, name] = point.customdata;
    drillInto({ by: "none", hospital_id: hospitalId, period: "month" }, name.split(" ")[0]);
    return;
  }
  const row = rows[point.pointIndex];
  if (!row || !row.drill) return;
  const label = id === "chart-compare" ? groupName(row, $("#chart-compare").dataset.by) : row.period;
  drillInto(row.drill, label);
}

function drillInto(change, label) {
  if (!change) return;
  Object.assign(state, change);
  crumbs.push({ label, state: { ...state } });
  load();
}

function renderCrumbs() {
  const nav = $("#crumbs");
  nav.replaceChildren(...crumbs.flatMap((crumb, index) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = crumb.label;
    button.dataset.depth = String(index);
    if (index === crumbs.length - 1) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => {
      crumbs = crumbs.slice(0, index + 1);
      Object.assign(state, crumb.state);
      load();
    });
    if (index === 0) return [button];
    const sep = document.createElement("span");
    sep.className = "sep";
    sep.textContent = "›";
    return [sep, button];
  }));
}

// --- the form --------------------------------------------------------------------------------

function syncForm() {
  $("#from").value = state.from;
  $("#to").value = state.to;
  $("#district").value = state.district;
  $("#level").value = state.level;
  $("#hospital").value = state.hospital_id;
  $("#period").value = state.period;
  $("#compare-metric").value = state.metric;
  $("#compare-by").value = state.by === "none" ? "hospital" : state.by;
}

function applyForm(event) {
  event.preventDefault();
  Object.assign(state, {
    from: $("#from").value, to: $("#to").value, district: $("#district").value,
    level: $("#level").value, hospital_id: $("#hospital").value, period: $("#period").value,
  });
  crumbs.push({ label: "Filter 筛选", state: { ...state } });
  load();
}

function reset() {
  Object.assign(state, initial);
  crumbs = crumbs.slice(0, 1);
  load();
}

async function downloadCsv(event) {
  const chart = event.currentTarget.dataset.chart;
  const compare = chart === "compare";
  const metric = compare ? state.metric : chart;
  const params = { ...filters(), period: compare ? "none" : state.period,
    by: compare ? (state.by === "none" ? "hospital" : state.by) : "none" };
  try {
    const response = await send(`/api/statistics/${metric}.csv` + query(params), { headers: { Accept: "text/csv" } });
    const blob = await response.blob();
    const disposition = response.headers.get("content-disposition") || "";
    const name = (disposition.match(/filename="([^"]+)"/) || [])[1] || `${metric}.csv`;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  } catch (error) {
    $("#status").className = "message error";
    $("#status").textContent = `CSV: ${error.message}`;
  }
}

$("#sign-in").addEventListener("submit", signIn);
$("#sign-out").addEventListener("click", signOut);
$("#filters").addEventListener("submit", applyForm);
$("#reset").addEventListener("click", reset);
$("#compare-metric").addEventListener("change", (event) => {
  state.metric = event.target.value;
  load();
});
$("#compare-by").addEventListener("change", (event) => {
  state.by = event.target.value;
  crumbs.push({ label: LABELS[state.by], state: { ...state } });
  load();
});
for (const button of document.querySelectorAll("button.csv")) button.addEventListener("click", downloadCsv);
