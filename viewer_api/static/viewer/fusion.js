// PET/CT fusion in the MPR view: the "Fusion 融合" controls (overlay series, colour map,
// opacity) and the …/fusion query the MPR planes ask for instead of …/mpr (see the contract).

export const COLOUR_MAPS = ["hot", "rainbow", "pet"];

const $ = (selector) => document.querySelector(selector);
const opacityParam = (v) => String(Number(Math.max(0, Math.min(1, v)).toFixed(2)));

/** The …/fusion query for an MPR query: overlay first, the plane parameters, then the blend. */
export function fusionQuery(fusion, query) {
  return {
    overlay: fusion.overlay,
    ...query,
    size: null, // /fusion has no reduced size: fast mode shows the full image at once
    colour_map: fusion.colourMap,
    opacity: opacityParam(fusion.opacity),
  };
}

/** Overlay lines for the bottom-right corner of an MPR plane. */
export function fusionCorner(fusion, overlayWindow) {
  if (!fusion) return [];
  const lines = [`Fusion 融合 ${fusion.label}`, { text: `${fusion.colourMap} · ${Math.round(fusion.opacity * 100)}%` }];
  const parts = String(overlayWindow || "").split(",").map(Number);
  if (parts.length === 2 && parts.every(Number.isFinite)) {
    const f = (v) => String(Number(v.toPrecision(4)));
    lines.push(`Overlay C ${f(parts[0])} / W ${f(parts[1])}`);
  }
  return lines;
}

export function seriesLabel(series) {
  return [series.modality, series.series_description].filter(Boolean).join(" ") || series.series_instance_uid;
}

/** Wires #fusion-series, #fusion-colour and #fusion-opacity to an MprController. */
export class FusionControl {
  constructor(mpr) {
    this.mpr = mpr;
    this.select = $("#fusion-series");
    this.colour = $("#fusion-colour");
    this.opacity = $("#fusion-opacity");
    this.readout = $("#fusion-opacity-value");
    this.labels = new Map();
    this.select.addEventListener("change", () => this.apply());
    this.colour.addEventListener("change", () => this.apply());
    this.opacity.addEventListener("input", () => this.apply());
  }

  /** List the study's other series (PT first) as overlays for `base`; back to "none". */
  populate(study, base) {
    const others = (study.series || []).filter(
      (s) => s.series_instance_uid !== base.series_instance_uid && (s.instances || []).length,
    );
    others.sort((a, b) => Number(b.modality === "PT") - Number(a.modality === "PT"));
    this.select.textContent = "";
    this.labels.clear();
    this.select.add(new Option("None 无", ""));
    for (const s of others) {
      const label = seriesLabel(s);
      this.labels.set(s.series_instance_uid, label);
      this.select.add(new Option(`${s.series_number ?? "–"} · ${label}`, s.series_instance_uid));
    }
    this.select.value = "";
    this.select.disabled = !others.length;
    this.apply();
  }

  apply() {
    const overlay = this.select.value;
    const opacity = Number(this.opacity.value);
    this.readout.textContent = `${Math.round(opacity * 100)}%`;
    this.colour.disabled = !overlay;
    this.opacity.disabled = !overlay;
    const colourMap = COLOUR_MAPS.includes(this.colour.value) ? this.colour.value : "hot";
    const next = overlay ? { overlay, label: this.labels.get(overlay) || "", opacity, colourMap } : null;
    const now = this.mpr.fusion;
    const same = next === now || (next && now && Object.keys(next).every((k) => next[k] === now[k]));
    if (!same) this.mpr.setFusion(next);
  }
}
