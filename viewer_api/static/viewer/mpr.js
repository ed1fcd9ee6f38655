// MPR: axial, coronal and sagittal planes of one series side by side, with position sliders,
// cross-reference lines, slab mode and thickness. The server reslices; see /mpr in the contract.

import { fusionUrl, getJSON, mprUrl, seriesUrl } from "./api.js";
import { fusionCorner, fusionQuery } from "./fusion.js";
import * as G from "./geometry.js";
import { ImageViewport, LOW_SIZE, minor } from "./viewport.js";

export const PLANES = ["axial", "coronal", "sagittal"];
const LABELS = { axial: "Axial 轴位", coronal: "Coronal 冠状位", sagittal: "Sagittal 矢状位" };
const AXES = { axial: [0, 0, 1], coronal: [0, 1, 0], sagittal: [1, 0, 0] };
const MODE_LABELS = { thin: "Thin", mip: "MIP", minip: "MinIP", avgip: "AvgIP" };

const posParam = (mm) => String(Number(mm.toFixed(2)));

export class MprViewport extends ImageViewport {
  constructor(host, app, ctl, plane) {
    super(host, app, { prefetch: 1 });
    this.ctl = ctl;
    this.plane = plane;
    this.info = ctl.volume.planes[plane];
    this.geometry = null;
    this.overlayWindow = null; // "c,w" the server applied to the overlay (X-Overlay-Window)
    this.el.classList.add("mpr-view", `plane-${plane}`);
    this.el.dataset.plane = plane;
    const [a, b] = this.info.position_range_mm;
    this.first = Math.min(a, b);
    this.last = Math.max(a, b);
    this.steps = Math.max(1, Math.floor((this.last - this.first) / ctl.step + 1e-6) + 1);
  }

  count() {
    return this.steps;
  }

  positionAt(index) {
    return Math.min(this.last, this.first + index * this.ctl.step);
  }

  indexOf(mm) {
    return Math.round((mm - this.first) / this.ctl.step);
  }

  position() {
    return this.positionAt(this.index);
  }

  urlFor(index, low) {
    const ctl = this.ctl;
    const query = {
      plane: this.plane,
      position: posParam(this.positionAt(index)),
      mode: ctl.mode,
      thickness: ctl.mode === "thin" ? null : String(ctl.thickness),
      ...this.windowQuery(),
      size: low ? LOW_SIZE : null,
    };
    if (ctl.fusion) return fusionUrl(ctl.study, ctl.series.series_instance_uid, fusionQuery(ctl.fusion, query));
    return mprUrl(ctl.study, ctl.series.series_instance_uid, query);
  }

  imageSize() {
    if (this.geometry) return { cols: this.geometry.columns, rows: this.geometry.rows };
    return { cols: this.info.columns, rows: this.info.rows };
  }

  onShown(entry, low) {
    this.overlayWindow = entry.headers.overlayWindow || null;
    if (low || !entry.headers.geometry) return;
    try {
      this.geometry = JSON.parse(entry.headers.geometry);
    } catch (_) {
      return;
    }
    this.ctl.geometries[this.plane] = this.geometry;
    this.ctl.redrawOthers(this);
  }

  pixelToPatient(x, y) {
    return this.geometry ? G.geometryPixelToPatient(this.geometry, x, y) : null;
  }

  normal() {
    return this.geometry ? this.geometry.normal : AXES[this.plane];
  }

  spacing() {
    const s = this.geometry ? this.geometry.pixel_spacing_mm : this.info.pixel_spacing_mm;
    return [s, s];
  }

  measureTarget() {
    return { study: this.ctl.study, series: this.ctl.series.series_instance_uid };
  }

  imageKey() {
    return `${this.plane}@${posParam(this.position())}/${this.ctl.mode}/${this.ctl.thickness}`;
  }

  defaultWindow() {
    return this.ctl.volume.default_window || [40, 400];
  }

  cornerText() {
    const ctl = this.ctl;
    const s = ctl.studyInfo || {};
    const se = ctl.series;
    const slab = ctl.mode === "thin" ? "Thin 薄层" : `${MODE_LABELS[ctl.mode]} ${ctl.thickness} mm`;
    return {
      tl: [
        LABELS[this.plane],
        minor(G.formatPersonName(s.patient_name)),
        minor(s.patient_id ? `ID ${s.patient_id}` : ""),
      ],
      tr: [minor(G.formatDate(s.study_date)), minor(s.study_description || "")],
      bl: [
        minor(`Se ${se.series_number ?? "–"} ${se.series_description || ""}`.trim()),
        minor(`${this.index + 1}/${this.steps}`),
        `Pos ${G.fmt(this.position(), 1)} mm`,
        slab,
      ],
      br: fusionCorner(ctl.fusion, this.overlayWindow),
    };
  }

  /** Lines where the other two planes cut this one. */
  extraOverlay(m) {
    if (!this.geometry) return;
    for (const other of this.ctl.views) {
      if (other === this) continue;
      const n = other.geometry ? other.geometry.normal : AXES[other.plane];
      const cut = G.planeCut(this.geometry, n, other.position());
      if (!cut) continue;
      const [a, b] = cut.map((p) => m.transformPoint(new DOMPoint(p[0], p[1])));
      const line = document.createElementNS("http://www.w3.org/2000/svg", "line");
      line.setAttribute("class", `xref xref-${other.plane}`);
      line.setAttribute("x1", a.x);
      line.setAttribute("y1", a.y);
      line.setAttribute("x2", b.x);
      line.setAttribute("y2", b.y);
      this.overlay.appendChild(line);
    }
  }

  /** A click (no drag) moves the other planes through the clicked point. */
  onClick(p) {
    const P = this.pixelToPatient(p[0], p[1]);
    if (!P) return;
    for (const other of this.ctl.views) {
      if (other === this) continue;
      const n = other.geometry ? other.geometry.normal : AXES[other.plane];
      other.setIndex(other.indexOf(G.dot(n, P)), { fromSync: true });
    }
    this.ctl.redrawAll();
  }
}

export class MprController {
  constructor(app, gridEl) {
    this.app = app;
    this.gridEl = gridEl;
    this.views = [];
    this.geometries = {};
    this.mode = "thin";
    this.thickness = 1;
    this.fusion = null;
  }

  async open(studyInfo, series, windowState) {
    this.close();
    this.studyInfo = studyInfo;
    this.study = studyInfo.study_instance_uid;
    this.series = series;
    this.volume = await getJSON(`${seriesUrl(this.study, series.series_instance_uid)}/volume`);
    if (this.volume.offered === false) {
      throw Object.assign(new Error(this.volume.reason || "MPR is not offered"), {
        title: "MPR not available 不支持多平面重建",
        detail: this.volume.reason || "",
      });
    }
    const spacing = (this.volume.spacing_mm || []).filter((v) => v > 0);
    const pixel = PLANES.map((p) => this.volume.planes[p].pixel_spacing_mm).filter((v) => v > 0);
    this.step = Math.max(0.05, Math.min(...spacing, ...pixel));
    this.geometries = {};
    this.views = PLANES.map((plane) => {
      const view = new MprViewport(this.gridEl, this.app, this, plane);
      if (windowState) view.windowState = { ...windowState };
      return view;
    });
    for (const view of this.views) {
      const info = view.info;
      const start = Number.isFinite(info.default_position_mm) ? info.default_position_mm : (view.first + view.last) / 2;
      view.index = Math.max(0, Math.min(view.steps - 1, view.indexOf(start)));
      view.requestRender();
      view.updateCorners();
    }
    return this.views;
  }

  describe() {
    const v = this.volume;
    if (!v) return "";
    const s = (v.spacing_mm || []).map((x) => G.fmt(x, 2)).join("×");
    return `${v.images} images · voxel ${s} mm`;
  }

  setSlab(mode, thickness) {
    this.mode = mode;
    this.thickness = thickness;
    for (const view of this.views) {
      view.requestRender();
      view.updateCorners();
      view.updateOverlay();
    }
  }

  /** fusion: null, or { overlay: series uid, label, opacity 0..1, colourMap }. */
  setFusion(fusion) {
    this.fusion = fusion;
    for (const view of this.views) {
      view.overlayWindow = null;
      view.clearError(); // a cached image is shown without a request; a new failure shows again
      view.requestRender();
      view.updateCorners();
    }
  }

  redrawOthers(source) {
    for (const view of this.views) if (view !== source) view.updateOverlay();
  }

  redrawAll() {
    for (const view of this.views) view.updateOverlay();
  }

  close() {
    for (const view of this.views) view.destroy();
    this.views = [];
    this.volume = null;
    this.fusion = null;
  }
}
