// The surgical video search page (/videos/): filters kept in the address bar, the videos and
// studies of /api/surgical-search, the charts of /api/surgical-search/charts (plotly), and a
// multi-view button opening the wall with the selected (or all listed) videos.

import { getJSON } from "/viewer/static/api.js";
import {
  el, filtersFrom, formatDate, hospitalName, loadThumbnail, MAX_TILES, minutes, signedIn, signOut, viewerLink,
} from "./common.js";

const $ = (selector) => document.querySelector(selector);
const PAGE = 48;
const state = (window.videoSearch = { filters: new URLSearchParams(), videos: [], studies: [], charts: null, total: 0, offset: 0 });

function status(text) {
  $("#status").textContent = text || "";
}

function fillForm(filters) {
  const form = $("#filters");
  for (const input of form.elements) {
    if (input.name) input.value = filters.get(input.name) || "";
  }
}

async function search(filters) {
  state.filters = filters;
  state.generation = (state.generation || 0) + 1;
  state.busy = true;
  state.charts = null;
  state.videos = [];
  state.offset = 0;
  $("#videos").textContent = "";
  $("#studies tbody").textContent = "";
  $("#select-all").checked = false;
  const query = filters.toString();
  history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
  status("Searching… 检索中");
  try {
    await Promise.all([loadPage(state.generation), drawCharts(filters, state.generation)]);
    status("");
  } catch (err) {
    status(`${err.title || "Error 错误"}: ${err.detail || err.message || ""}`);
  } finally {
    state.busy = false;
  }
}

async function loadPage(generation = state.generation) {
  const query = new URLSearchParams(state.filters);
  query.set("limit", String(PAGE));
  query.set("offset", String(state.offset));
  const answer = await getJSON(`/api/surgical-search?${query}`);
  if (generation !== state.generation) return; // a newer search has begun
  const videos = (answer.videos && answer.videos.items) || [];
  state.total = (answer.videos && answer.videos.total) || 0;
  state.videos.push(...videos);
  state.offset += videos.length;
  $("#videos-total").textContent = `(${state.total})`;
  for (const video of videos) $("#videos").appendChild(videoItem(video));
  if (!state.videos.length) $("#videos").appendChild(el("li", "empty", "No videos 无视频"));
  $("#more").hidden = state.offset >= state.total || !videos.length;
  if (state.offset === videos.length) {
    state.studies = (answer.studies && answer.studies.items) || [];
    $("#studies-total").textContent = `(${(answer.studies && answer.studies.total) || 0})`;
    drawStudies(state.studies);
  }
}

function videoItem(video) {
  const item = el("li", "video");
  item.dataset.sop = video.sopInstanceUid;
  const pick = el("input");
  pick.type = "checkbox";
  pick.className = "pick";
  pick.value = video.sopInstanceUid;
  pick.setAttribute("aria-label", "Select 选择");
  const link = el("a", "open");
  link.href = viewerLink(video);
  const img = el("img", "thumb");
  img.alt = "";
  img.width = 160;
  img.height = 90;
  loadThumbnail(video, img);
  const text = el("span", "text");
  text.append(
    el("b", "procedure", video.procedure || "(no procedure 未填手术名称)"),
    el("span", "surgeon", video.surgeon ? `Surgeon 术者: ${video.surgeon}` : ""),
    el("span", "date", [formatDate(video.operationDate), minutes(video)].filter(Boolean).join(" · ")),
    el("span", "hospital", hospitalName(video.hospital)),
    el("small", "", [video.diagnosis, video.cameraRole, video.definition, video.annotationCount ? `${video.annotationCount} annotations 标注` : ""].filter(Boolean).join(" · ")),
  );
  link.append(img, text);
  item.append(pick, link);
  return item;
}

function drawStudies(studies) {
  const body = $("#studies tbody");
  body.textContent = "";
  for (const study of studies) {
    const row = el("tr");
    row.dataset.study = study.studyInstanceUid;
    const patient = [study.patientName, study.patientId].filter(Boolean).join(" ");
    const open = el("a", "", "Open 打开");
    open.href = study.viewerUrl || `/viewer/?study=${encodeURIComponent(study.studyInstanceUid)}`;
    const modalities = Array.isArray(study.modalities) ? study.modalities.join(", ") : study.modalities || "";
    for (const value of [formatDate(study.studyDate), modalities, study.studyDescription, hospitalName(study.hospital), patient, study.reportImpression]) {
      row.appendChild(el("td", "", value || ""));
    }
    const last = el("td");
    last.appendChild(open);
    row.appendChild(last);
    body.appendChild(row);
  }
}

const PLOT_LAYOUT = {
  margin: { l: 48, r: 12, t: 8, b: 80 },
  paper_bgcolor: "rgba(0,0,0,0)",
  plot_bgcolor: "rgba(0,0,0,0)",
  font: { color: "#223" },
  height: 260,
};

function bar(id, x, y, text, name) {
  const target = document.getElementById(id);
  if (!window.Plotly) {
    target.textContent = x.map((label, i) => `${label}: ${y[i]}`).join(" · ");
    return;
  }
  const trace = { type: "bar", x, y, text, name, textposition: "none", hovertemplate: "%{x}: %{y}<br>%{text}<extra></extra>", marker: { color: "#2f7dc0" } };
  // Categories, always: one month alone ("2026-01") would otherwise become a date axis.
  const layout = { ...PLOT_LAYOUT, xaxis: { type: "category", automargin: true }, yaxis: { rangemode: "tozero" } };
  window.Plotly.react(target, [trace], layout, { displaylogo: false, responsive: true });
}

const mean = (m) => (m === null || m === undefined ? "" : `mean 平均 ${Number(m).toFixed(1)} min`);

async function drawCharts(filters, generation) {
  const charts = await getJSON(`/api/surgical-search/charts?${filters}`);
  if (generation !== state.generation) return;
  state.charts = charts;
  const procedures = charts.byProcedure || [];
  bar("chart-procedure", procedures.map((r) => r.procedure || "–"), procedures.map((r) => r.count), procedures.map((r) => mean(r.meanMinutes)), "procedure");
  const months = charts.byMonth || [];
  bar("chart-month", months.map((r) => r.month), months.map((r) => r.count), months.map(() => ""), "month");
  const surgeons = charts.bySurgeon || [];
  bar("chart-surgeon", surgeons.map((r) => r.surgeon || "–"), surgeons.map((r) => r.count), surgeons.map((r) => mean(r.meanMinutes)), "surgeon");
  const bins = charts.durationHistogram || [];
  bar("chart-duration", bins.map((r) => `${r.fromMinutes}–${r.toMinutes}`), bins.map((r) => r.count), bins.map(() => "min 分钟"), "duration");
}

function openWall() {
  const picked = [...document.querySelectorAll("#videos .pick:checked")].map((box) => box.value);
  const sops = picked.length ? picked : state.videos.map((v) => v.sopInstanceUid);
  if (sops.length > MAX_TILES) {
    status(`At most ${MAX_TILES} videos on the wall; ${sops.length} are chosen. 多画面最多 ${MAX_TILES} 个视频，当前 ${sops.length} 个。`);
    return;
  }
  if (!sops.length) {
    status("No videos to show 无视频可显示");
    return;
  }
  location.href = `/videos/wall?videos=${sops.map(encodeURIComponent).join(",")}`;
}

async function start() {
  const me = await signedIn($("#sign-in"));
  $("#who").textContent = me.username || me.name || "";
  $("#sign-out").hidden = false;
  $("#sign-out").addEventListener("click", signOut);
  $("#search").hidden = false;
  const initial = filtersFrom(new URLSearchParams(location.search));
  fillForm(initial);
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    search(filtersFrom(new FormData($("#filters"))));
  });
  $("#reset").addEventListener("click", () => {
    fillForm(new URLSearchParams());
    search(new URLSearchParams());
  });
  $("#more").addEventListener("click", () => loadPage().catch((err) => status(err.detail || err.message)));
  $("#select-all").addEventListener("change", () => {
    for (const box of document.querySelectorAll("#videos .pick")) box.checked = $("#select-all").checked;
  });
  $("#open-wall").addEventListener("click", openWall);
  await search(initial);
  document.body.classList.add("ready");
}

start().catch((err) => status(`${err.title || "Error 错误"}: ${err.detail || err.message || ""}`));
