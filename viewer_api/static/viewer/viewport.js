// One image viewport: server-rendered images shown in an <img>, view transform (zoom, pan,
// rotate) as a CSS matrix, window/level by drag, measurements in an SVG overlay, cine.
// StackViewport scrolls the images of a series; mpr.js adds the MPR plane viewport.

import { images, stats, postJSON, seriesUrl, frameUrl } from "./api.js";
import * as G from "./geometry.js";

/** Shared between viewports; viewer.js changes it from the toolbar. */
export const settings = { tool: "window", fast: false, dragging: false };

const SVGNS = "http://www.w3.org/2000/svg";
const CLICK_SLOP = 5; // px a press may move and still be a click
export const LOW_SIZE = "128,128";
export const LOW_QUALITY = 50;

function el(tag, className, parent) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (parent) parent.appendChild(node);
  return node;
}
function svg(tag, attrs, parent) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

/** A corner line that small viewports leave out. */
export const minor = (text) => ({ text });

/** "c,w" with sensible rounding: integers for CT-like ranges, decimals for small ones. */
export function windowParam(win) {
  const [c, w] = win;
  const digits = Math.abs(w) >= 50 ? 0 : Math.abs(w) >= 1 ? 2 : 4;
  const f = (v) => String(Number(v.toFixed(digits)));
  return `${f(c)},${f(Math.max(w, digits ? 10 ** -digits : 1))}`;
}

export function parseWindow(text) {
  if (!text) return null;
  const parts = String(text).split(",").map(Number);
  return parts.length === 2 && parts.every(Number.isFinite) ? parts : null;
}

export class ImageViewport {
  constructor(host, app, { prefetch = 4 } = {}) {
    this.app = app;
    this.prefetchDepth = prefetch;
    this.index = 0;
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.rotation = 0;
    this.windowState = { window: null, preset: null, invert: false };
    this.applied = null; // the window the server applied to the shown image ("X-Window")
    this.entry = null;
    this.shownUrl = null;
    this.shownLow = false;
    this.failedUrl = null;
    this.want = null;
    this.busy = false;
    this.measurements = [];
    this.draft = null;
    this.hover = null;
    this.pointers = new Map();
    this.gesture = null;
    this.pinch = null;
    this.wheelAcc = 0;
    this.cine = null;

    this.el = el("div", "viewport", host);
    this.el.tabIndex = 0;
    this.stage = el("div", "stage", this.el);
    this.img = el("img", "image", this.stage);
    this.img.alt = "";
    this.img.draggable = false;
    this.overlay = svg("svg", { class: "overlay", "aria-hidden": "true" }, this.stage);
    this.corners = {};
    for (const corner of ["tl", "tr", "bl", "br"]) {
      this.corners[corner] = el("div", `corner ${corner}`, this.el);
    }
    this.errorBox = el("div", "vp-error", this.el);
    this.errorBox.setAttribute("role", "alert");
    this.errorBox.hidden = true;
    this.slider = el("input", "slider", this.el);
    this.slider.type = "range";
    this.slider.min = "0";
    this.slider.step = "1";
    this.slider.setAttribute("aria-label", "Image 图像");
    this.slider.addEventListener("input", () => this.setIndex(Number(this.slider.value)));

    this._bindPointer();
    this.resizeObserver = new ResizeObserver(() => this.layout());
    this.resizeObserver.observe(this.stage);
  }

  // --- to be provided by subclasses -----------------------------------------------------
  count() { return 0; }
  urlFor(_index, _low) { return null; }
  imageSize() {
    if (this.fullSize) return this.fullSize;
    return this.entry ? { cols: this.entry.width, rows: this.entry.height } : null;
  }
  pixelToPatient(_x, _y) { return null; }
  normal() { return null; }
  spacing() { return null; } // [between rows, between columns] mm, for local measurement
  measureTarget() { return null; } // { study, series }
  imageKey() { return String(this.index); }
  cornerText() { return { tl: [], tr: [], bl: [], br: [] }; }
  extraOverlay(_matrix) {}
  onShown(_entry, _low) {}
  onClick(_point) {}
  defaultWindow() { return [40, 400]; }
  ready() { return Promise.resolve(); } // geometry still loading

  // --- window ---------------------------------------------------------------------------
  windowQuery() {
    const s = this.windowState;
    return {
      window: s.window ? windowParam(s.window) : null,
      preset: !s.window && s.preset && s.preset !== "default" ? s.preset : null,
      invert: s.invert ? "true" : null,
    };
  }

  currentWindow() {
    return this.windowState.window || this.applied || this.defaultWindow();
  }

  setWindowState(state, { fromSync = false } = {}) {
    this.windowState = { ...this.windowState, ...state };
    this.requestRender();
    this.updateCorners();
    if (!fromSync) this.app.onWindow(this);
  }

  // --- images ---------------------------------------------------------------------------
  setIndex(index, { fromSync = false } = {}) {
    const n = this.count();
    if (!n) return;
    const clamped = Math.max(0, Math.min(n - 1, Math.round(index)));
    if (clamped === this.index && this.want) return;
    this.index = clamped;
    this.slider.value = String(clamped);
    this.requestRender();
    this.updateCorners();
    this.updateOverlay();
    if (!fromSync) this.app.onScroll(this);
  }

  scrollBy(delta, wrap = false) {
    const n = this.count();
    if (!n) return;
    let next = this.index + delta;
    if (wrap) next = ((next % n) + n) % n;
    this.setIndex(next);
  }

  requestRender() {
    const full = this.urlFor(this.index, false);
    if (!full) return;
    this.want = { full, low: settings.fast ? this.urlFor(this.index, true) : null };
    if (this.failedUrl && this.failedUrl !== full) this.failedUrl = null;
    this._pump();
    if (!settings.dragging) this.prefetchAround(); // no prefetch of passing windows
  }

  async _pump() {
    if (this.busy) return;
    this.busy = true;
    try {
      // Latest wins: one request at a time; whatever arrives is shown, then the newest wish
      // is fetched until what is shown is what is wanted.
      // Each turn either awaits a request or shows what is wanted, so the loop ends.
      for (;;) {
        const want = this.want;
        if (!want || this.shownUrl === want.full || this.failedUrl === want.full) break;
        let entry = images.peek(want.full);
        if (!entry && want.low && this.shownUrl !== want.low) {
          const low = images.peek(want.low) || (await this._load(want.low));
          if (low && !images.peek(want.full)) this.show(low, true);
          if (this.want !== want) continue;
        }
        entry = entry || (await this._load(want.full));
        if (entry) this.show(entry, false);
        else if (this.want === want) this.failedUrl = want.full;
      }
    } finally {
      this.busy = false;
    }
  }

  async _load(url) {
    try {
      const entry = await images.load(url);
      if (this.want && (url === this.want.full || url === this.want.low)) this.clearError();
      return entry;
    } catch (err) {
      stats.errors++;
      if (this.want && (url === this.want.full || url === this.want.low)) this.showError(err);
      return null;
    }
  }

  show(entry, low) {
    if (this.entry) this.entry.uses--;
    entry.uses++;
    this.entry = entry;
    this.shownUrl = entry.url;
    this.shownLow = low;
    this.img.src = entry.objectUrl;
    this.img.dataset.src = entry.url;
    this.img.dataset.quality = low ? "low" : "full";
    if (!low) this.fullSize = { cols: entry.width, rows: entry.height };
    const applied = parseWindow(entry.headers.window);
    if (applied) this.applied = applied;
    stats.imagesShown++;
    stats.lastImageUrl = entry.url;
    this.onShown(entry, low);
    this.layout();
    this.updateCorners();
  }

  prefetchAround(depth = this.prefetchDepth) {
    images.cancel(this);
    const n = this.count();
    for (let d = 1; d <= depth; d++) {
      for (const i of [this.index + d, this.index - d]) {
        const j = this.cine ? ((i % n) + n) % n : i;
        if (j < 0 || j >= n || (this.cine && i < this.index)) continue;
        const url = this.urlFor(j, settings.fast);
        if (url) images.prefetch(url, this);
      }
    }
  }

  showError(err) {
    this.errorBox.hidden = false;
    this.errorBox.textContent = "";
    el("strong", "", this.errorBox).textContent = err.title || "Error 错误";
    el("div", "detail", this.errorBox).textContent = err.detail || err.message || "";
  }

  clearError() {
    this.errorBox.hidden = true;
  }

  // --- view transform --------------------------------------------------------------------
  matrix() {
    const size = this.imageSize();
    const W = this.stage.clientWidth;
    const H = this.stage.clientHeight;
    if (!size || !size.cols || !size.rows || !W || !H) return null;
    const rot = ((this.rotation % 360) + 360) % 360;
    const swapped = rot === 90 || rot === 270;
    const fit = Math.min(W / (swapped ? size.rows : size.cols), H / (swapped ? size.cols : size.rows));
    return new DOMMatrix()
      .translate(W / 2 + this.panX, H / 2 + this.panY)
      .rotate(rot)
      .scale(fit * this.zoom)
      .translate(-size.cols / 2, -size.rows / 2);
  }

  layout() {
    const m = this.matrix();
    const size = this.imageSize();
    if (m && size) {
      this.img.style.width = `${size.cols}px`;
      this.img.style.height = `${size.rows}px`;
      this.img.style.transform = m.toString();
      this.img.hidden = false;
    }
    this.updateOverlay();
    this.updateCorners();
  }

  zoomBy(factor, at) {
    const before = this.matrix();
    const W = this.stage.clientWidth;
    const H = this.stage.clientHeight;
    const point = at || { x: W / 2, y: H / 2 };
    this.zoom = Math.max(0.1, Math.min(40, this.zoom * factor));
    if (before) {
      const p = before.inverse().transformPoint(new DOMPoint(point.x, point.y));
      const after = this.matrix().transformPoint(p);
      this.panX += point.x - after.x;
      this.panY += point.y - after.y;
    }
    this.layout();
  }

  rotate(degrees = 90) {
    this.rotation = (this.rotation + degrees) % 360;
    this.layout();
  }

  resetView() {
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.rotation = 0;
    this.layout();
  }

  scale() {
    const m = this.matrix();
    return m ? Math.hypot(m.a, m.b) : 0;
  }

  toImage(point) {
    const m = this.matrix();
    if (!m) return null;
    const p = m.inverse().transformPoint(new DOMPoint(point.x, point.y));
    return [p.x, p.y];
  }

  // --- corners ---------------------------------------------------------------------------
  updateCorners() {
    const text = this.cornerText();
    const win = this.windowState.window || this.applied;
    const br = [...(text.br || [])];
    if (win) {
      const digits = Math.abs(win[1]) >= 50 ? 0 : 2;
      br.push(`C ${G.fmt(win[0], digits)} / W ${G.fmt(win[1], digits)}`);
    }
    if (this.windowState.preset && !this.windowState.window && this.windowState.preset !== "default") {
      br.push(minor(`Preset ${this.windowState.preset}`));
    }
    if (this.windowState.invert) br.push("Inverted 反相");
    const s = this.scale();
    if (s) br.push(minor(`Zoom ${G.fmt(s * 100, 0)}%`));
    text.br = br;
    for (const corner of ["tl", "tr", "bl", "br"]) {
      const lines = (text[corner] || []).filter((line) => line !== null && line !== "" && line.text !== "");
      const key = JSON.stringify(lines);
      const box = this.corners[corner];
      if (box.dataset.key === key) continue;
      box.dataset.key = key;
      box.textContent = "";
      for (const line of lines) {
        const div = el("div", typeof line === "object" ? "minor" : "", box);
        div.textContent = typeof line === "object" ? line.text : line;
      }
    }
    const W = this.stage.clientWidth;
    const H = this.stage.clientHeight;
    this.el.classList.toggle("compact", (W > 0 && W < 320) || (H > 0 && H < 280));
    this.slider.max = String(Math.max(0, this.count() - 1));
    this.slider.value = String(this.index);
    this.slider.hidden = this.count() <= 1;
  }

  // --- overlay ---------------------------------------------------------------------------
  updateOverlay() {
    const o = this.overlay;
    while (o.firstChild) o.removeChild(o.firstChild);
    const m = this.matrix();
    if (!m) return;
    this.extraOverlay(m);
    const key = this.imageKey();
    const toScreen = (p) => m.transformPoint(new DOMPoint(p[0], p[1]));
    const s = this.scale();
    const shapes = this.measurements.filter((x) => x.key === key);
    if (this.draft) {
      const pts = this.hover ? [...this.draft.pts, this.hover] : this.draft.pts;
      shapes.push({ ...this.draft, pts, radius: this.draft.radius, drafting: true });
    }
    for (const shape of shapes) {
      const pts = shape.pts.map(toScreen);
      const cls = `measure ${shape.kind}${shape.drafting ? " draft" : ""}${shape.error ? " failed" : ""}`;
      const group = svg("g", { class: cls }, o);
      if (shape.kind === "roi") {
        const r = Math.max(2, (shape.radius || 0) * s);
        svg("circle", { cx: pts[0].x, cy: pts[0].y, r }, group);
      } else if (pts.length >= 2) {
        svg("polyline", { points: pts.map((p) => `${p.x},${p.y}`).join(" ") }, group);
      }
      for (const p of pts) svg("circle", { class: "handle", cx: p.x, cy: p.y, r: 3 }, group);
      if (shape.text) {
        const anchor = shape.kind === "angle" && pts.length > 1 ? pts[1] : pts[pts.length - 1];
        const dx = shape.kind === "roi" ? (shape.radius || 0) * s + 6 : 8;
        const label = svg("text", { class: "measure-label", x: anchor.x + dx, y: anchor.y - 6 }, group);
        label.textContent = shape.text;
      }
    }
  }

  // --- measurements ----------------------------------------------------------------------
  cancelDraft() {
    this.draft = null;
    this.hover = null;
    this.updateOverlay();
  }

  clearMeasurements() {
    this.measurements = [];
    this.cancelDraft();
  }

  _measureDown(p) {
    const tool = settings.tool;
    if (!this.draft || this.draft.kind !== tool) this.draft = { kind: tool, pts: [], key: this.imageKey() };
    if (tool === "roi") {
      this.draft.pts = [p];
      this.draft.radius = 0;
    }
  }

  _measureUp(p, down, moved) {
    const tool = settings.tool;
    const draft = this.draft;
    if (!draft) return;
    if (tool === "roi") {
      const centre = draft.pts[0];
      const s = this.scale() || 1;
      const r = moved ? Math.hypot(p[0] - centre[0], p[1] - centre[1]) : Math.max(8 / s, 1.5);
      this._finish({ kind: "roi", pts: [centre], radius: Math.max(r, 0.5) });
      return;
    }
    const needed = tool === "length" ? 2 : 3;
    if (moved && draft.pts.length === 0) draft.pts.push(down, p);
    else draft.pts.push(p);
    if (draft.pts.length >= needed) this._finish({ kind: tool, pts: draft.pts.slice(0, needed) });
    else this.updateOverlay();
  }

  _finish(shape) {
    const m = { ...shape, key: this.imageKey(), text: "…" };
    this.draft = null;
    this.hover = null;
    this.measurements.push(m);
    this.updateOverlay();
    this._compute(m).then(() => this.updateOverlay());
  }

  async _compute(m) {
    await this.ready();
    const target = this.measureTarget();
    const url = target ? `${seriesUrl(target.study, target.series)}/measure` : null;
    const P = m.pts.map((p) => this.pixelToPatient(p[0], p[1]));
    const havePatient = url && P.every(Boolean);
    const sp = this.spacing();
    try {
      if (m.kind === "length") {
        if (havePatient) {
          const r = await postJSON(url, { kind: "length", points: P });
          m.text = `${G.fmt(r.length_mm, 2)} mm`;
          m.value = r.length_mm;
        } else if (sp) {
          const [a, b] = m.pts;
          m.value = Math.hypot((b[0] - a[0]) * sp[1], (b[1] - a[1]) * sp[0]);
          m.text = `${G.fmt(m.value, 2)} mm`;
        } else {
          const [a, b] = m.pts;
          m.value = Math.hypot(b[0] - a[0], b[1] - a[1]);
          m.text = `${G.fmt(m.value, 1)} px (no pixel spacing 无像素间距)`;
        }
      } else if (m.kind === "angle") {
        if (havePatient) {
          const r = await postJSON(url, { kind: "angle", points: [P[0], P[1], P[2]] });
          m.value = r.angle_deg;
        } else {
          const k = sp || [1, 1];
          const [a, v, b] = m.pts.map((p) => [p[0] * k[1], p[1] * k[0]]);
          const u = [a[0] - v[0], a[1] - v[1]];
          const w = [b[0] - v[0], b[1] - v[1]];
          const cos = (u[0] * w[0] + u[1] * w[1]) / (Math.hypot(...u) * Math.hypot(...w));
          m.value = (Math.acos(Math.max(-1, Math.min(1, cos))) * 180) / Math.PI;
        }
        m.text = `${G.fmt(m.value, 1)}°`;
      } else if (m.kind === "roi") {
        const normal = this.normal();
        if (!havePatient || !normal) {
          throw new Error("CT value needs the image position in the patient (no geometry 无几何信息)");
        }
        const pxmm = sp ? Math.min(sp[0], sp[1]) : 1;
        const r = await postJSON(url, {
          kind: "region",
          centre: P[0],
          radius_mm: Math.max(m.radius * pxmm, 0.1),
          normal,
        });
        m.value = r.mean;
        const unit = r.unit ? ` ${r.unit}` : "";
        m.text = `${G.fmt(r.mean, 1)}${unit} ± ${G.fmt(r.std, 1)} (n=${r.count})`;
      }
    } catch (err) {
      m.error = true;
      m.text = `⚠ ${err.detail || err.message}`;
    }
  }

  // --- pointer, wheel ----------------------------------------------------------------------
  _point(e) {
    const rect = this.stage.getBoundingClientRect();
    return { x: e.clientX - rect.left, y: e.clientY - rect.top };
  }

  _bindPointer() {
    const stage = this.stage;
    stage.addEventListener("contextmenu", (e) => e.preventDefault());
    stage.addEventListener("pointerdown", (e) => {
      this.app.activate(this);
      this.el.focus({ preventScroll: true });
      e.preventDefault();
      try { stage.setPointerCapture(e.pointerId); } catch (_) { /* synthetic events */ }
      const point = this._point(e);
      this.pointers.set(e.pointerId, point);
      if (this.pointers.size === 2) {
        const [a, b] = [...this.pointers.values()];
        this.gesture = null;
        if (settings.dragging) {
          settings.dragging = false;
          this.app.afterDrag();
        }
        this.draft = this.draft && this.draft.pts.length ? this.draft : null;
        this.pinch = { dist: Math.hypot(a.x - b.x, a.y - b.y), mid: { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 } };
        return;
      }
      if (this.pointers.size > 2) return;
      const action = e.button === 2 ? "window" : e.button === 1 ? "pan" : settings.tool;
      this.gesture = {
        id: e.pointerId,
        action,
        start: point,
        last: point,
        moved: false,
        window: this.currentWindow(),
        imageStart: this.toImage(point),
      };
      if (["length", "angle", "roi"].includes(action) && this.gesture.imageStart) {
        this._measureDown(this.gesture.imageStart);
      }
    });
    stage.addEventListener("pointermove", (e) => {
      const point = this._point(e);
      if (this.pointers.has(e.pointerId)) this.pointers.set(e.pointerId, point);
      if (this.pinch && this.pointers.size === 2) {
        const [a, b] = [...this.pointers.values()];
        const dist = Math.hypot(a.x - b.x, a.y - b.y);
        const mid = { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
        this.panX += mid.x - this.pinch.mid.x;
        this.panY += mid.y - this.pinch.mid.y;
        if (this.pinch.dist > 10) this.zoomBy(dist / this.pinch.dist, mid);
        else this.layout();
        this.pinch = { dist, mid };
        return;
      }
      const g = this.gesture;
      if (!g || g.id !== e.pointerId) {
        if (this.draft && this.draft.pts.length) {
          this.hover = this.toImage(point);
          this.updateOverlay();
        }
        return;
      }
      const dx = point.x - g.last.x;
      const dy = point.y - g.last.y;
      g.last = point;
      if (Math.hypot(point.x - g.start.x, point.y - g.start.y) > CLICK_SLOP) g.moved = true;
      if (g.action === "window") {
        if (!g.moved) return;
        settings.dragging = true;
        const [c0, w0] = g.window;
        const k = Math.max(Math.abs(w0) / 256, 0.01);
        const w = Math.max(k, w0 + (point.x - g.start.x) * k);
        const c = c0 + (point.y - g.start.y) * k;
        this.setWindowState({ window: [c, w], preset: null });
      } else if (g.action === "pan") {
        this.panX += dx;
        this.panY += dy;
        this.layout();
      } else if (g.action === "zoom") {
        this.zoomBy(Math.exp(-dy / 150), g.start);
      } else if (this.draft) {
        const p = this.toImage(point);
        if (g.action === "roi" && this.draft.pts.length) {
          const c = this.draft.pts[0];
          this.draft.radius = Math.hypot(p[0] - c[0], p[1] - c[1]);
          this.hover = null;
        } else if (g.moved) {
          this.hover = p;
        }
        this.updateOverlay();
      }
    });
    const end = (e) => {
      this.pointers.delete(e.pointerId);
      if (this.pinch) {
        if (this.pointers.size < 2) this.pinch = null;
        return;
      }
      const g = this.gesture;
      if (!g || g.id !== e.pointerId) return;
      this.gesture = null;
      if (settings.dragging) {
        settings.dragging = false;
        this.app.afterDrag();
      }
      if (e.type === "pointercancel") return;
      const p = this.toImage(this._point(e));
      if (["length", "angle", "roi"].includes(g.action) && p && g.imageStart) {
        this._measureUp(p, g.imageStart, g.moved);
      } else if (!g.moved && (g.action === "window" || g.action === "pan") && p) {
        this.onClick(p);
      }
    };
    stage.addEventListener("pointerup", end);
    stage.addEventListener("pointercancel", end);
    stage.addEventListener("pointerleave", () => {
      if (this.hover && !this.gesture) {
        this.hover = null;
        this.updateOverlay();
      }
    });
    stage.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        const unitPx = e.deltaMode === 1 ? 40 : e.deltaMode === 2 ? 400 : 1;
        const dy = e.deltaY * unitPx;
        if (e.ctrlKey || e.metaKey) {
          this.zoomBy(Math.exp(-dy / 300), this._point(e));
          return;
        }
        if (Math.abs(dy) >= 40) {
          this.wheelAcc = 0;
          this.scrollBy(Math.sign(dy));
          return;
        }
        this.wheelAcc += dy;
        if (Math.abs(this.wheelAcc) >= 40) {
          this.scrollBy(Math.sign(this.wheelAcc));
          this.wheelAcc = 0;
        }
      },
      { passive: false },
    );
  }

  // --- cine --------------------------------------------------------------------------------
  startCine(fps) {
    this.stopCine();
    if (this.count() < 2) return;
    const cine = { fps, last: 0, times: [], raf: 0, started: performance.now() };
    this.cine = cine;
    stats.cineFrames = 0;
    this.prefetchAround(Math.min(this.count() - 1, Math.max(8, Math.ceil(fps * 1.5))));
    const tick = (now) => {
      if (this.cine !== cine) return;
      cine.raf = requestAnimationFrame(tick);
      const interval = 1000 / cine.fps;
      if (now - cine.last < interval - 4) return;
      const n = this.count();
      const next = (this.index + 1) % n;
      const url = this.urlFor(next, settings.fast);
      const entry = images.peek(url);
      if (!entry) {
        images.load(url).catch(() => null);
        return;
      }
      cine.last = now;
      this.index = next;
      this.want = { full: this.urlFor(next, false), low: null };
      this.show(entry, settings.fast);
      this.updateOverlay();
      cine.times.push(now);
      while (cine.times.length && now - cine.times[0] > 2000) cine.times.shift();
      if (cine.times.length > 2) {
        const span = cine.times[cine.times.length - 1] - cine.times[0];
        stats.cineFps = ((cine.times.length - 1) * 1000) / span;
      }
      stats.cineFrames++;
      if (stats.cineFrames % 4 === 0) this.prefetchAround(Math.min(n - 1, Math.max(8, Math.ceil(cine.fps * 1.5))));
      this.app.onScroll(this);
    };
    cine.raf = requestAnimationFrame(tick);
  }

  stopCine() {
    if (!this.cine) return;
    cancelAnimationFrame(this.cine.raf);
    this.cine = null;
    images.cancel(this);
    this.requestRender(); // refine a reduced cine frame
  }

  destroy() {
    this.stopCine();
    images.cancel(this);
    if (this.entry) this.entry.uses--;
    this.entry = null;
    this.resizeObserver.disconnect();
    this.el.remove();
  }
}

// ---------------------------------------------------------------------------------------

/** Scrolls through the images (frames of instances) of one series. */
export class StackViewport extends ImageViewport {
  constructor(host, app) {
    super(host, app, { prefetch: 4 });
    this.study = null;
    this.series = null;
    this.frames = [];
    this.meta = null; // Map sop -> parsed metadata, when loaded
  }

  setSeries(studyInfo, series, metaPromise) {
    this.stopCine();
    images.cancel(this);
    this.studyInfo = studyInfo;
    this.study = studyInfo.study_instance_uid;
    this.series = series;
    this.frames = [];
    for (const inst of series.instances || []) {
      const n = Math.max(1, Number(inst.number_of_frames) || 1);
      for (let f = 1; f <= n; f++) this.frames.push({ sop: inst.sop_instance_uid, frame: f, number: inst.instance_number });
    }
    this.meta = null;
    this.fullSize = null;
    this.index = 0;
    this.want = null;
    this.shownUrl = null;
    this.failedUrl = null;
    this.applied = null;
    this.measurements = [];
    this.draft = null;
    this.el.dataset.series = series.series_instance_uid;
    this.resetView();
    this.metaPromise = metaPromise || Promise.resolve(null);
    if (metaPromise) {
      metaPromise.then((meta) => {
        if (this.series !== series || !meta) return;
        this.meta = meta;
        this.layout();
      });
    }
    this.requestRender();
    this.updateCorners();
  }

  count() {
    return this.frames.length;
  }

  ready() {
    return this.metaPromise || Promise.resolve();
  }

  urlFor(index, low) {
    const f = this.frames[index];
    if (!f) return null;
    const query = this.windowQuery();
    if (low) {
      query.size = LOW_SIZE;
      query.quality = LOW_QUALITY;
    }
    return frameUrl(this.study, this.series.series_instance_uid, f.sop, f.frame, query);
  }

  _meta(index = this.index) {
    const f = this.frames[index];
    return f && this.meta ? this.meta.get(f.sop) : null;
  }

  frameGeometry(index = this.index) {
    const m = this._meta(index);
    const f = this.frames[index];
    return m && f ? m.frames[f.frame - 1] || null : null;
  }

  imageSize() {
    const m = this._meta();
    if (m && m.rows && m.columns) return { cols: m.columns, rows: m.rows };
    return super.imageSize();
  }

  pixelToPatient(x, y) {
    const g = this.frameGeometry();
    return g ? G.framePixelToPatient(g, x, y) : null;
  }

  normal() {
    const g = this.frameGeometry();
    return g ? G.frameNormal(g) : null;
  }

  spacing() {
    const g = this.frameGeometry();
    if (g) return g.spacing;
    const m = this._meta();
    return m && m.spacing ? m.spacing : null;
  }

  /** Position of an image along its normal (mm), for the overlay and position sync. */
  positionMm(index = this.index) {
    const g = this.frameGeometry(index);
    if (g) return G.dot(g.position, G.frameNormal(g));
    const m = this._meta(index);
    return m && Number.isFinite(m.sliceLocation) ? m.sliceLocation : null;
  }

  frameOfReference() {
    const m = this._meta();
    return m ? m.frameOfReference : null;
  }

  measureTarget() {
    return this.series ? { study: this.study, series: this.series.series_instance_uid } : null;
  }

  imageKey() {
    const f = this.frames[this.index];
    return f ? `${f.sop}/${f.frame}` : "";
  }

  defaultWindow() {
    return this.series && this.series.modality === "CT" ? [40, 400] : [128, 256];
  }

  cornerText() {
    const s = this.studyInfo || {};
    const se = this.series || {};
    const f = this.frames[this.index];
    const pos = this.positionMm();
    return {
      tl: [G.formatPersonName(s.patient_name), minor(s.patient_id ? `ID ${s.patient_id}` : "")],
      tr: [minor(G.formatDate(s.study_date)), minor(s.study_description || "")],
      bl: [
        minor(`Se ${se.series_number ?? "–"} ${se.modality || ""} ${se.series_description || ""}`.trim()),
        `Im ${this.index + 1}/${this.frames.length}` + (f && f.number != null ? ` (#${f.number}${f.frame > 1 ? ` f${f.frame}` : ""})` : ""),
        pos !== null ? `Pos ${G.fmt(pos, 1)} mm` : "",
      ],
      br: [],
    };
  }
}
