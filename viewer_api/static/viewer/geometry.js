// Small geometry helpers: vectors, DICOM JSON metadata -> per-image geometry, plane cuts.

export const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
export const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
export const add = (a, b) => [a[0] + b[0], a[1] + b[1], a[2] + b[2]];
export const scale = (a, s) => [a[0] * s, a[1] * s, a[2] * s];
export const cross = (a, b) => [
  a[1] * b[2] - a[2] * b[1],
  a[2] * b[0] - a[0] * b[2],
  a[0] * b[1] - a[1] * b[0],
];
export const norm = (a) => Math.hypot(a[0], a[1], a[2]);
export const unit = (a) => {
  const n = norm(a);
  return n > 0 ? scale(a, 1 / n) : a;
};

function values(item, tag) {
  const element = item && item[tag];
  return element && Array.isArray(element.Value) ? element.Value : null;
}
function first(item, tag) {
  const v = values(item, tag);
  return v && v.length ? v[0] : null;
}
function numbers(item, tag, count) {
  const v = values(item, tag);
  if (!v || v.length < count) return null;
  const out = v.slice(0, count).map(Number);
  return out.every(Number.isFinite) ? out : null;
}

/**
 * Geometry of each frame of each instance, from a series' DICOM JSON metadata:
 * Map sop -> { rows, columns, frames: [{position, rowDir, colDir, spacing:[row, col]} | null],
 *              frameOfReference, sliceLocation, instanceNumber, spacingOnly }.
 * `spacing` is PixelSpacing (between rows, between columns); ImagerPixelSpacing is used only
 * as a plain spacing (spacingOnly) since it has no patient position.
 */
export function parseSeriesMetadata(items) {
  const result = new Map();
  for (const item of items || []) {
    const sop = first(item, "00080018");
    if (!sop) continue;
    const rows = Number(first(item, "00280010")) || 0;
    const columns = Number(first(item, "00280011")) || 0;
    const frameCount = Number(first(item, "00280008")) || 1;
    const frameOfReference = first(item, "00200052");
    let spacing = numbers(item, "00280030", 2);
    let spacingOnly = false;
    const ipp = numbers(item, "00200032", 3);
    const iop = numbers(item, "00200037", 6);
    const shared = first(item, "52009229");
    const perFrame = values(item, "52009230") || [];
    const sharedSpacing = shared ? nested(shared, "00289110", "00280030", 2) : null;
    const sharedOrientation = shared ? nested(shared, "00209116", "00200037", 6) : null;
    const frames = [];
    for (let f = 0; f < frameCount; f++) {
      const pf = perFrame[f];
      const position = (pf && nested(pf, "00209113", "00200032", 3)) || (f === 0 || frameCount === 1 ? ipp : null);
      const orientation = (pf && nested(pf, "00209116", "00200037", 6)) || sharedOrientation || iop;
      const frameSpacing = (pf && nested(pf, "00289110", "00280030", 2)) || sharedSpacing || spacing;
      if (position && orientation && frameSpacing) {
        frames.push({
          position,
          rowDir: unit(orientation.slice(0, 3)),
          colDir: unit(orientation.slice(3, 6)),
          spacing: frameSpacing,
        });
      } else {
        frames.push(null);
      }
    }
    if (!spacing && !sharedSpacing) {
      const imager = numbers(item, "00181164", 2);
      if (imager) {
        spacing = imager;
        spacingOnly = true;
      }
    }
    result.set(sop, {
      rows,
      columns,
      frames,
      spacing: sharedSpacing || spacing,
      spacingOnly,
      frameOfReference,
      sliceLocation: Number(first(item, "00201041")),
      instanceNumber: Number(first(item, "00200013")),
    });
  }
  return result;
}

function nested(item, sequenceTag, tag, count) {
  const seq = first(item, sequenceTag);
  return seq ? numbers(seq, tag, count) : null;
}

/** Patient position of image coordinates (x right, y down, pixel centres at +0.5). */
export function framePixelToPatient(frame, x, y) {
  const col = x - 0.5;
  const row = y - 0.5;
  // PixelSpacing[0] is between rows (along colDir), [1] between columns (along rowDir).
  return add(frame.position, add(scale(frame.rowDir, col * frame.spacing[1]), scale(frame.colDir, row * frame.spacing[0])));
}

export function frameNormal(frame) {
  return unit(cross(frame.rowDir, frame.colDir));
}

/** Patient position of image coordinates on an MPR plane (SliceGeometry JSON). */
export function geometryPixelToPatient(g, x, y) {
  const col = x - 0.5;
  const row = y - 0.5;
  const s = g.pixel_spacing_mm;
  return add(g.top_left_mm, add(scale(g.row_direction, col * s), scale(g.column_direction, row * s)));
}

/**
 * Where the plane {p : n·p = d} cuts the image of geometry g, as a segment in image
 * coordinates [[x0, y0], [x1, y1]], or null when it misses the image or is parallel.
 */
export function planeCut(g, n, d) {
  const s = g.pixel_spacing_mm;
  // n·(TL + col s R + row s C) = d  ->  a col + b row = c
  const a = s * dot(n, g.row_direction);
  const b = s * dot(n, g.column_direction);
  const c = d - dot(n, g.top_left_mm);
  if (Math.abs(a) < 1e-9 && Math.abs(b) < 1e-9) return null;
  const minC = -0.5, maxC = g.columns - 0.5, minR = -0.5, maxR = g.rows - 0.5;
  const points = [];
  const push = (col, row) => {
    if (col >= minC - 1e-6 && col <= maxC + 1e-6 && row >= minR - 1e-6 && row <= maxR + 1e-6) {
      if (!points.some((p) => Math.abs(p[0] - col) < 1e-6 && Math.abs(p[1] - row) < 1e-6)) {
        points.push([col, row]);
      }
    }
  };
  if (Math.abs(b) > 1e-9) {
    push(minC, (c - a * minC) / b);
    push(maxC, (c - a * maxC) / b);
  }
  if (Math.abs(a) > 1e-9) {
    push((c - b * minR) / a, minR);
    push((c - b * maxR) / a, maxR);
  }
  if (points.length < 2) return null;
  return [
    [points[0][0] + 0.5, points[0][1] + 0.5],
    [points[1][0] + 0.5, points[1][1] + 0.5],
  ];
}

/** "Wang^XiaoDong=王^小東=" -> "Wang XiaoDong 王小東". */
export function formatPersonName(name) {
  if (!name) return "";
  if (typeof name === "object") name = name.Alphabetic || name.Ideographic || "";
  const groups = String(name).split("=").filter((g) => g.trim());
  return groups
    .map((group, i) => {
      const parts = group.split("^").filter((p) => p.trim());
      return i === 0 ? parts.join(" ") : parts.join("");
    })
    .join(" ");
}

/** "20250314" -> "2025-03-14". */
export function formatDate(value) {
  const text = String(value || "");
  return /^\d{8}$/.test(text) ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6, 8)}` : text;
}

export function fmt(value, digits = 1) {
  return Number.isFinite(value) ? value.toFixed(digits) : "–";
}
