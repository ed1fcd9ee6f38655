// The viewer page: loads a study (?study=<uid> or ?accession=<number>, optional &token=),
// lists its series, shows them in 1×1 / 2×1 / 2×2 layouts or as MPR, wires the toolbar.

import {
  API, ApiError, frameUrl, getJSON, images, metadataUrl, offerSingleSignOn, setToken, signIn,
  stats, studyUrl, takeToken,
} from "./api.js";
import * as G from "./geometry.js";
import { FusionControl } from "./fusion.js";
import { MprController } from "./mpr.js";
import { settings, StackViewport } from "./viewport.js";
import { findVideoSeries, setVideoToken, VideoMode } from "./video.js";

const $ = (selector) => document.querySelector(selector);
const $$ = (selector) => [...document.querySelectorAll(selector)];
const LAYOUTS = { "1x1": 1, "2x1": 2, "2x2": 4 };

const app = {
  study: null,
  series: [],
  views: [],          // the stack viewports of the grid
  active: null,
  layout: "1x1",
  sync: false,
  mpr: null,
  mprOpen: false,
  metadata: new Map(), // series uid -> Promise<Map sop -> geometry>
  video: null,         // the VideoMode, made when the study has a video series
  videoOpen: false,

  // --- callbacks from the viewports -----------------------------------------------------
  activate(view) {
    if (this.active === view) return;
    this.active = view;
    for (const v of this.visible()) v.el.classList.toggle("active", v === view);
    refreshToolbar();
  },

  onScroll(view) {
    if (this.mprOpen) {
      this.mpr.redrawOthers(view);
      return;
    }
    if (!this.sync) return;
    for (const other of this.views) {
      if (other !== view) other.setIndex(matchingIndex(view, other), { fromSync: true });
    }
  },

  onWindow(view) {
    const targets = this.mprOpen ? this.mpr.views : this.sync ? this.views : [];
    for (const other of targets) {
      if (other !== view) other.setWindowState({ ...view.windowState }, { fromSync: true });
    }
    refreshToolbar();
  },

  afterDrag() {
    for (const v of this.visible()) v.prefetchAround();
  },

  visible() {
    return this.mprOpen ? this.mpr.views : this.views;
  },

  /** The viewports a toolbar action applies to: all when synchronised (or in MPR). */
  targets() {
    if (this.mprOpen) return this.mpr.views;
    if (this.sync) return this.views;
    return this.active ? [this.active] : [];
  },

  seriesMetadata(series) {
    const uid = series.series_instance_uid;
    if (!this.metadata.has(uid)) {
      const promise = getJSON(metadataUrl(this.study.study_instance_uid, uid))
        .then((items) => G.parseSeriesMetadata(items))
        .catch(() => null); // geometry is optional: measurements fall back to pixels
      this.metadata.set(uid, promise);
    }
    return this.metadata.get(uid);
  },
};

/** The image of `other` matching the one shown in `view`: same patient position, else fraction. */
function matchingIndex(view, other) {
  const pos = view.positionMm();
  const n1 = view.normal();
  const n2 = other.normal();
  const sameFrame = view.frameOfReference() && view.frameOfReference() === other.frameOfReference();
  if (pos !== null && n1 && n2 && sameFrame && Math.abs(G.dot(n1, n2)) > 0.99 && other.meta) {
    let best = other.index;
    let bestDistance = Infinity;
    for (let i = 0; i < other.count(); i++) {
      const p = other.positionMm(i);
      if (p === null) continue;
      const d = Math.abs(p * Math.sign(G.dot(n1, n2)) - pos);
      if (d < bestDistance) {
        bestDistance = d;
        best = i;
      }
    }
    return best;
  }
  const fraction = view.count() > 1 ? view.index / (view.count() - 1) : 0;
  return Math.round(fraction * Math.max(0, other.count() - 1));
}

// --- errors ---------------------------------------------------------------------------------

function showError(err, fallbackTitle = "Error 错误") {
  const box = $("#error");
  box.hidden = false;
  box.querySelector(".title").textContent = (err && err.title) || fallbackTitle;
  box.querySelector(".detail").textContent = (err && (err.detail || err.message)) || "";
}

function clearError() {
  $("#error").hidden = true;
}

// --- study and series -----------------------------------------------------------------------

/** No token or an expired one: ask for a sign-in, then load the study again. */
function askToSignIn(err) {
  const form = $("#sign-in");
  const message = form.querySelector(".sign-in-error");
  message.textContent = err && err.detail && !/sign in first/.test(err.detail) ? err.detail : "";
  form.hidden = false;
  offerSingleSignOn($("#sso"));
  form.querySelector("input[name=username]").focus();
  form.onsubmit = async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    try {
      await signIn(String(data.get("username")), String(data.get("password")));
    } catch (failed) {
      message.textContent = (failed && (failed.detail || failed.title)) || "Sign-in failed 登录失败";
      return;
    }
    form.hidden = true;
    form.reset();
    loadStudy();
  };
}

async function loadStudy() {
  const params = new URLSearchParams(location.search);
  const given = takeToken(params);
  if (given) {
    setToken(given);
    setVideoToken(given);
  }
  const uid = params.get("study");
  const accession = params.get("accession");
  const info = $("#study-info");
  if (!uid && !accession) {
    info.textContent = "No study 无检查";
    showError({
      title: "No study given 未指定检查",
      detail: "open /viewer/?study=<StudyInstanceUID> or /viewer/?accession=<AccessionNumber>",
    });
    return;
  }
  let study;
  try {
    let studyUid = uid;
    if (!studyUid) {
      const found = await getJSON(`${API}/studies?AccessionNumber=${encodeURIComponent(accession)}`);
      if (!found.length) {
        throw new ApiError(404, "Study not found 未找到检查", `no study has accession number ${accession}`);
      }
      studyUid = found[0].study_instance_uid;
      if (found.length > 1) {
        showError({
          title: "Several studies 多个检查",
          detail: `${found.length} studies have accession number ${accession}; showing the first`,
        });
      }
    }
    study = await getJSON(studyUrl(studyUid));
  } catch (err) {
    if (err && err.status === 401) {
      info.textContent = "Sign in 请登录";
      askToSignIn(err);
      return;
    }
    info.textContent = "Not loaded 未加载";
    document.body.classList.add("failed");
    showError(err, "Study not available 检查不可用");
    return;
  }
  app.study = study;
  app.series = (study.series || []).filter((s) => (s.instances || []).length);
  // Video series (learnt from QIDO's SOP Class UID) play in video mode, not in viewports.
  const videos = await findVideoSeries({ ...study, series: app.series });
  for (const series of app.series) series.video = videos.get(series.series_instance_uid) || null;
  document.title = `${G.formatPersonName(study.patient_name) || "Study"} · 影像浏览`;
  info.textContent = "";
  const name = document.createElement("div");
  name.className = "patient";
  name.textContent = G.formatPersonName(study.patient_name) || "(no name)";
  const meta = document.createElement("div");
  meta.className = "study-meta";
  meta.textContent = [study.patient_id, G.formatDate(study.study_date), study.study_description, study.accession_number ? `Acc ${study.accession_number}` : ""]
    .filter(Boolean)
    .join(" · ");
  // The report opens on its printable page (/report/<uid>) in a new tab, which inherits this
  // tab's token (window.open keeps the opener, so sessionStorage is copied).
  const report = document.createElement("button");
  report.type = "button";
  report.id = "open-report";
  report.className = "report-link";
  report.textContent = "报告 Report ↗";
  report.addEventListener("click", () => {
    window.open(`/report/${encodeURIComponent(study.study_instance_uid)}`, "_blank");
  });
  info.append(name, meta, report);
  renderSeriesList();
  if (!app.series.length) {
    showError({ title: "No images 无图像", detail: "the study has no instances to show" });
    return;
  }
  setLayout(app.layout);
  if (app.series[0].video) showSeries(app.series[0]);
  document.body.classList.add("loaded");
}

function renderSeriesList() {
  const list = $("#series-list");
  list.textContent = "";
  for (const series of app.series) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "series";
    button.dataset.series = series.series_instance_uid;
    const thumb = document.createElement("img");
    thumb.className = "thumb";
    thumb.alt = "";
    const text = document.createElement("span");
    text.className = "series-text";
    const count = series.instances.reduce((n, i) => n + Math.max(1, Number(i.number_of_frames) || 1), 0);
    const title = document.createElement("strong");
    title.textContent = `${series.series_number ?? "–"} · ${series.modality || ""}`;
    const desc = document.createElement("span");
    desc.textContent = series.series_description || "";
    const small = document.createElement("small");
    small.textContent = series.video
      ? "Video 视频"
      : `${count} images 张` + (series.mpr && series.mpr.offered ? " · MPR" : "");
    text.append(title, desc, small);
    button.append(thumb, text);
    button.addEventListener("click", () => showSeries(series));
    item.appendChild(button);
    list.appendChild(item);
    const first = series.instances[0];
    const url = series.video
      ? `/dicom-web/studies/${encodeURIComponent(app.study.study_instance_uid)}/series/${encodeURIComponent(series.series_instance_uid)}/instances/${encodeURIComponent(series.video)}/thumbnail`
      : frameUrl(app.study.study_instance_uid, series.series_instance_uid, first.sop_instance_uid, 1, { size: "96,96" });
    images
      .load(url)
      .then((entry) => {
        entry.uses++;
        thumb.src = entry.objectUrl;
      })
      .catch((err) => {
        thumb.classList.add("broken");
        thumb.title = err.detail || err.message;
      });
  }
}

function showSeries(series) {
  stopCine();
  if (app.mprOpen) closeMpr();
  if (series.video) {
    openVideo(series);
    return;
  }
  closeVideo();
  const view = app.active || app.views[0];
  if (!view) return;
  view.setSeries(app.study, series, app.seriesMetadata(series));
  if (app.sync && app.views.length > 1) {
    const other = app.views.find((v) => v !== view);
    if (other) view.setWindowState({ ...other.windowState }, { fromSync: true });
  }
  closeDrawer();
  refreshToolbar();
}

// --- video mode ----------------------------------------------------------------------------

function openVideo(series) {
  if (!app.video) app.video = new VideoMode($("#video-mode"), showError);
  app.videoOpen = true;
  app.videoSeries = series.series_instance_uid;
  document.body.classList.add("video-mode");
  app.video.open(app.study.study_instance_uid, series.series_instance_uid, series.video);
  closeDrawer();
  refreshToolbar();
}

function closeVideo() {
  if (!app.videoOpen) return;
  app.videoOpen = false;
  app.videoSeries = null;
  document.body.classList.remove("video-mode");
  app.video.close();
  for (const v of app.views) v.layout();
}

// --- layout ------------------------------------------------------------------------------

function setLayout(name) {
  if (!LAYOUTS[name]) return;
  closeVideo();
  stopCine();
  if (app.mprOpen) closeMpr();
  app.layout = name;
  const grid = $("#grid");
  grid.className = `grid layout-${name}`;
  const wanted = LAYOUTS[name];
  while (app.views.length > wanted) app.views.pop().destroy();
  const stacks = app.series.filter((s) => !s.video);
  while (app.views.length < wanted && stacks.length) {
    const view = new StackViewport(grid, app);
    const i = app.views.length;
    app.views.push(view);
    const series = stacks[i % stacks.length];
    view.setSeries(app.study, series, app.seriesMetadata(series));
  }
  if (!app.views.includes(app.active)) app.active = null;
  app.activate(app.active || app.views[0]);
  if (app.sync && app.active) {
    app.onWindow(app.active); // new viewports join the linked window and position
    app.onScroll(app.active);
  }
  for (const v of app.views) v.el.classList.toggle("active", v === app.active);
  for (const b of $$("[data-layout]")) b.setAttribute("aria-pressed", String(b.dataset.layout === name));
}

// --- MPR ---------------------------------------------------------------------------------

async function openMpr() {
  const view = app.active;
  if (!view || !view.series) return;
  const series = view.series;
  stopCine();
  const panel = $("#mpr");
  $("#grid").hidden = true;
  panel.hidden = false;
  app.mprOpen = true;
  try {
    app.mpr.mode = $("#mpr-mode").value;
    app.mpr.thickness = currentThickness();
    const views = await app.mpr.open(app.study, series, view.windowState);
    fusion.populate(app.study, series);
    $("#mpr-info").textContent = app.mpr.describe();
    app.active = null;
    app.activate(views[0]);
  } catch (err) {
    closeMpr();
    showError(err, "MPR failed 多平面重建失败");
  }
  refreshToolbar();
}

function closeMpr() {
  stopCine();
  app.mpr.close();
  app.mprOpen = false;
  $("#mpr").hidden = true;
  $("#grid").hidden = false;
  app.active = null;
  app.activate(app.views[0]);
  for (const v of app.views) v.layout();
  refreshToolbar();
}

function currentThickness() {
  const select = $("#mpr-thickness");
  const custom = $("#mpr-thickness-custom");
  custom.hidden = select.value !== "custom";
  const value = select.value === "custom" ? Number(custom.value) : Number(select.value);
  return Number.isFinite(value) && value > 0 && value <= 500 ? value : null;
}

function updateSlab() {
  const thickness = currentThickness();
  const mode = $("#mpr-mode").value;
  if (thickness === null) {
    $("#mpr-thickness-custom").setCustomValidity("0 < thickness ≤ 500 mm");
    return;
  }
  $("#mpr-thickness-custom").setCustomValidity("");
  if (app.mprOpen) app.mpr.setSlab(mode, thickness);
  else {
    app.mpr.mode = mode;
    app.mpr.thickness = thickness;
  }
}

// --- cine --------------------------------------------------------------------------------

let cineView = null;
let cineTimer = 0;

function startCine() {
  const view = app.active;
  if (!view) return;
  const rate = Math.max(1, Math.min(60, Number($("#cine-rate").value) || 20));
  cineView = view;
  view.startCine(rate);
  $("#cine").setAttribute("aria-pressed", "true");
  $("#cine").textContent = "■ Stop 停止";
  clearInterval(cineTimer);
  cineTimer = setInterval(() => {
    $("#cine-fps").textContent = `${stats.cineFps.toFixed(1)} fps`;
  }, 250);
}

function stopCine() {
  if (cineView) cineView.stopCine();
  cineView = null;
  clearInterval(cineTimer);
  $("#cine").setAttribute("aria-pressed", "false");
  $("#cine").textContent = "▶ Cine 电影";
}

// --- toolbar -----------------------------------------------------------------------------

function refreshToolbar() {
  const view = app.active;
  const series = view && !app.mprOpen ? view.series : null;
  const mprButton = $("#mpr-open");
  const offered = !!(series && series.mpr && series.mpr.offered);
  mprButton.disabled = !offered && !app.mprOpen;
  mprButton.title = offered || !series ? "Multiplanar reconstruction 多平面重建" : `MPR: ${(series.mpr && series.mpr.reason) || "not offered"}`;
  mprButton.setAttribute("aria-pressed", String(app.mprOpen));
  $("#invert").setAttribute("aria-pressed", String(!!(view && view.windowState.invert)));
  $("#sync").setAttribute("aria-pressed", String(app.sync));
  $("#fast").setAttribute("aria-pressed", String(settings.fast));
  for (const b of $$("[data-tool]")) b.setAttribute("aria-pressed", String(b.dataset.tool === settings.tool));
  const preset = view ? view.windowState.preset || (view.windowState.window ? null : "default") : null;
  for (const b of $$("[data-preset]")) b.setAttribute("aria-pressed", String(b.dataset.preset === preset));
  for (const b of $$(".series")) {
    const shown = app.videoOpen ? app.videoSeries : view && view.series && view.series.series_instance_uid;
    b.classList.toggle("current", !!shown && b.dataset.series === shown);
  }
}

function closeDrawer() {
  document.body.classList.remove("drawer-open");
  $("#series-toggle").setAttribute("aria-expanded", "false");
}

function wireToolbar() {
  for (const b of $$("[data-layout]")) b.addEventListener("click", () => setLayout(b.dataset.layout));
  for (const b of $$("[data-tool]")) {
    b.addEventListener("click", () => {
      settings.tool = b.dataset.tool;
      for (const v of [...app.views, ...(app.mpr ? app.mpr.views : [])]) v.cancelDraft();
      document.body.dataset.tool = settings.tool;
      refreshToolbar();
    });
  }
  for (const b of $$("[data-preset]")) {
    b.addEventListener("click", () => {
      const preset = b.dataset.preset === "default" ? null : b.dataset.preset;
      for (const v of app.targets()) v.setWindowState({ window: null, preset }, { fromSync: true });
      refreshToolbar();
    });
  }
  $("#invert").addEventListener("click", () => {
    const invert = !(app.active && app.active.windowState.invert);
    for (const v of app.targets()) v.setWindowState({ invert }, { fromSync: true });
    refreshToolbar();
  });
  $("#zoom-in").addEventListener("click", () => app.active && app.active.zoomBy(1.25));
  $("#zoom-out").addEventListener("click", () => app.active && app.active.zoomBy(0.8));
  $("#rotate").addEventListener("click", () => app.active && app.active.rotate(90));
  $("#reset").addEventListener("click", () => {
    for (const v of app.targets()) {
      v.resetView();
      v.setWindowState({ window: null, preset: null, invert: false }, { fromSync: true });
    }
    refreshToolbar();
  });
  $("#clear-measurements").addEventListener("click", () => {
    for (const v of app.visible()) v.clearMeasurements();
  });
  $("#sync").addEventListener("click", () => {
    app.sync = !app.sync;
    if (app.sync && app.active && !app.mprOpen) {
      app.onWindow(app.active);
      app.onScroll(app.active);
    }
    refreshToolbar();
  });
  $("#fast").addEventListener("click", () => {
    settings.fast = !settings.fast;
    refreshToolbar();
  });
  $("#cine").addEventListener("click", () => (cineView ? stopCine() : startCine()));
  $("#cine-rate").addEventListener("change", () => {
    if (cineView) startCine();
  });
  $("#mpr-open").addEventListener("click", () => (app.mprOpen ? closeMpr() : openMpr()));
  $("#mpr-close").addEventListener("click", closeMpr);
  $("#mpr-mode").addEventListener("change", updateSlab);
  $("#mpr-thickness").addEventListener("change", updateSlab);
  $("#mpr-thickness-custom").addEventListener("change", updateSlab);
  $("#error .dismiss").addEventListener("click", clearError);
  $("#views").addEventListener("pointerdown", closeDrawer);
  $("#series-toggle").addEventListener("click", () => {
    const open = document.body.classList.toggle("drawer-open");
    $("#series-toggle").setAttribute("aria-expanded", String(open));
  });

  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    if (app.videoOpen) {
      app.video.onKey(e);
      return;
    }
    const view = app.active;
    if (!view) return;
    const steps = { ArrowUp: -1, ArrowLeft: -1, ArrowDown: 1, ArrowRight: 1, PageUp: -10, PageDown: 10 };
    if (e.key in steps) {
      e.preventDefault();
      view.scrollBy(steps[e.key]);
    } else if (e.key === "Home") {
      view.setIndex(0);
    } else if (e.key === "End") {
      view.setIndex(view.count() - 1);
    } else if (e.key === "Escape") {
      view.cancelDraft();
    } else if (e.key === " " && e.target === document.body) {
      e.preventDefault();
      cineView ? stopCine() : startCine();
    }
  });
}

app.mpr = new MprController(app, $("#mpr-grid"));
const fusion = new FusionControl(app.mpr);
window.viewerApp = app; // for debugging from the console
wireToolbar();
document.body.dataset.tool = settings.tool;
loadStudy();
