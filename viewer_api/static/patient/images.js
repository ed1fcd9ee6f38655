// A simple image view for a phone: one image at a time, swipe (or scroll, or drag the slider)
// through the series' images, a row of series buttons, and the report section below.

import { el, frameUrl, getJSON, showImage, studyUrl } from "./api.js";
import { reportSection } from "./report.js";

const SWIPE_STEP_PX = 24; // finger travel per image
const PREFETCH = 3; // images fetched ahead in the direction of travel

function framesOf(series) {
  const frames = [];
  for (const instance of series.instances) {
    const count = instance.number_of_frames || 1;
    for (let n = 1; n <= count; n++) frames.push({ sop: instance.sop_instance_uid, frame: n });
  }
  return frames;
}

/** Fill `container` with the study's images and its report (`report.js`); returns when the
 * first image is asked for. */
export async function showStudy(container, studyUid, scope) {
  container.replaceChildren(el("p", { class: "muted", text: "加载中 Loading…" }));
  const study = await getJSON(studyUrl(studyUid));
  const series = study.series.filter((s) => s.instances.length > 0);
  const img = el("img", { class: "frame", alt: "影像 Image", draggable: "false" });
  const counter = el("span", { class: "counter", "aria-live": "polite" });
  const slider = el("input", { type: "range", min: "1", value: "1", class: "slider",
                               "aria-label": "Image 图像" });
  const stage = el("div", { class: "stage" }, img, counter);
  const chips = el("div", { class: "chips", role: "tablist" });
  let frames = [];
  let index = 0;
  let current = null;

  function show(position) {
    if (!frames.length) return;
    index = Math.max(0, Math.min(frames.length - 1, position));
    slider.value = String(index + 1);
    counter.textContent = `${index + 1} / ${frames.length}`;
    const f = frames[index];
    showImage(scope, img, frameUrl(studyUid, current.series_instance_uid, f.sop, f.frame));
    for (let ahead = 1; ahead <= PREFETCH; ahead++) {
      const next = frames[index + ahead];
      if (next) {
        scope.image(frameUrl(studyUid, current.series_instance_uid, next.sop, next.frame))
          .catch(() => {});
      }
    }
  }

  function choose(entry, button) {
    current = entry;
    frames = framesOf(entry);
    slider.max = String(frames.length);
    slider.hidden = frames.length < 2;
    for (const chip of chips.children) chip.setAttribute("aria-selected", String(chip === button));
    show(Math.floor(frames.length / 2));
  }

  series.forEach((entry, i) => {
    const label = `${entry.modality || "?"} ${entry.series_description || `#${entry.series_number ?? i + 1}`}`;
    const button = el("button", { type: "button", class: "chip", role: "tab", text: label });
    button.addEventListener("click", () => choose(entry, button));
    chips.append(button);
  });

  slider.addEventListener("input", () => show(Number(slider.value) - 1));
  stage.addEventListener("wheel", (event) => {
    event.preventDefault();
    show(index + (event.deltaY > 0 ? 1 : -1));
  }, { passive: false });
  let touchStart = null;
  stage.addEventListener("touchstart", (event) => {
    const t = event.touches[0];
    touchStart = { x: t.clientX, y: t.clientY, index };
  }, { passive: true });
  stage.addEventListener("touchmove", (event) => {
    if (!touchStart) return;
    event.preventDefault(); // the swipe moves through images, not the page
    const t = event.touches[0];
    const dx = t.clientX - touchStart.x;
    const dy = t.clientY - touchStart.y;
    const travel = Math.abs(dy) > Math.abs(dx) ? dy : dx;
    show(touchStart.index + Math.trunc(travel / SWIPE_STEP_PX));
  }, { passive: false });
  stage.addEventListener("touchend", () => { touchStart = null; });
  stage.tabIndex = 0;
  stage.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "ArrowRight") show(index + 1);
    if (event.key === "ArrowUp" || event.key === "ArrowLeft") show(index - 1);
  });

  const heading = el("p", { class: "study-meta",
                            text: `${study.study_description || ""} · ${(study.modalities || []).join("/")}` });
  container.replaceChildren(heading, chips, stage, slider, reportSection(studyUid));
  if (series.length) choose(series[0], chips.children[0]);
  else stage.replaceChildren(el("p", { class: "muted", text: "没有图像 No images" }));
  return study;
}
