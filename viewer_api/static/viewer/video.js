// Video mode of the viewer (issue 8): a surgical video with its annotation timeline.
//
// A <video> cannot send Authorization, so its src is a five-minute URL from
// POST /viewer-api/…/instances/{sop}/media-url; when that URL expires mid-playback the element
// reports a media error and the URL is asked for again, keeping the position. Under the video
// the timeline draws the phases (one row) and steps (second row) of /api/videos/{sop}; users
// holding `annotate_video` get a form to add a phase or step at the current time, with an
// optional voice note. Playback is recorded as viewings (start on play, end on pause, ended
// and pagehide), which the review module counts.

import { ApiError } from "./api.js";

export const VIDEO_SOP_CLASSES = new Set([
  "1.2.840.10008.5.1.4.1.1.77.1.1.1", // Video Endoscopic Image Storage
  "1.2.840.10008.5.1.4.1.1.77.1.2.1", // Video Microscopic Image Storage
  "1.2.840.10008.5.1.4.1.1.77.1.4.1", // Video Photographic Image Storage
]);
/** Modalities a video series can carry: only these series are asked for their SOP classes. */
export const VIDEO_MODALITIES = new Set(["ES", "XC", "GM"]);

const TOKEN_KEY = "imaging-cloud-viewer-token";
const SPEEDS = [0.25, 0.5, 1, 1.5, 2, 4];
const PHASE_COLOURS = ["#3fa9f5", "#f5a83f", "#5cd68a", "#c77dff", "#ff6b6b", "#f5e663", "#4dd0c8", "#ff8fc7"];
const enc = encodeURIComponent;

let givenToken = null;
/** The bearer token the viewer signed in with (kept by api.js in this tab's storage). */
export function setVideoToken(value) {
  givenToken = value || null;
}
function bearer() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || givenToken;
  } catch (_) {
    return givenToken;
  }
}

async function call(method, url, body, extra) {
  const headers = { Accept: "application/json", ...(extra || {}) };
  const token = bearer();
  if (token) headers.Authorization = "Bearer " + token;
  let payload = body;
  if (body !== undefined && !(body instanceof Blob) && !(body instanceof ArrayBuffer)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body: payload });
  } catch (err) {
    throw new ApiError(0, "Network error 网络错误", `${url}: ${err && err.message}`, url);
  }
  if (!response.ok) {
    let title = `HTTP ${response.status}`;
    let detail = "";
    try {
      const answer = await response.json();
      title = answer.title || title;
      detail = answer.detail || "";
    } catch (_) { /* keep the status */ }
    throw new ApiError(response.status, title, detail, url);
  }
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response;
}

/** Series of `study` holding video, as a Map series uid -> first video SOP instance UID. */
export async function findVideoSeries(study) {
  const found = new Map();
  const candidates = (study.series || []).filter((s) => VIDEO_MODALITIES.has(s.modality));
  for (const series of candidates) {
    const url = `/dicom-web/studies/${enc(study.study_instance_uid)}/series/${enc(series.series_instance_uid)}/instances?includefield=00080016`;
    try {
      const rows = await call("GET", url, undefined, { Accept: "application/dicom+json" });
      for (const row of rows || []) {
        const sopClass = row["00080016"] && row["00080016"].Value && row["00080016"].Value[0];
        const sop = row["00080018"] && row["00080018"].Value && row["00080018"].Value[0];
        if (sop && VIDEO_SOP_CLASSES.has(sopClass)) {
          found.set(series.series_instance_uid, sop);
          break;
        }
      }
    } catch (_) { /* not a video we can tell: the series stays an image series */ }
  }
  return found;
}

export function videoPath(study, series, sop) {
  return `/studies/${enc(study)}/series/${enc(series)}/instances/${enc(sop)}`;
}

export function formatTime(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  const whole = Math.floor(seconds);
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const s = (seconds % 60).toFixed(1).padStart(4, "0");
  return (h ? `${h}:${String(m).padStart(2, "0")}` : String(m)) + ":" + s;
}

/** "20260302" (DICOM DA) as "2026-03-02"; anything else unchanged. */
function formatDay(value) {
  const text = String(value ?? "");
  return /^\d{8}$/.test(text) ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6)}` : text;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

/** The audio type of a recorded or chosen note (a .webm file reports video/webm). */
export function voiceType(blob) {
  const type = (blob.type || "").split(";")[0].trim().toLowerCase();
  if (type.startsWith("audio/")) return blob.type;
  if (type === "video/webm") return "audio/webm";
  if (type === "video/mp4") return "audio/mp4";
  const name = (blob.name || "").toLowerCase();
  const byExtension = { webm: "audio/webm", ogg: "audio/ogg", oga: "audio/ogg", opus: "audio/ogg", m4a: "audio/mp4", mp3: "audio/mpeg", wav: "audio/wav" };
  return byExtension[name.split(".").pop()] || "audio/webm";
}

function describe(annotation) {
  const parts = [
    annotation.label,
    annotation.tissue && `Tissue 组织: ${annotation.tissue}`,
    annotation.instrument && `Instrument 器械: ${annotation.instrument}`,
    annotation.action && `Action 动作: ${annotation.action}`,
    annotation.compliance && `Compliance 规范: ${annotation.compliance}`,
  ];
  return parts.filter(Boolean).join(" · ");
}

/** Plays one video SOP instance with its annotations inside `container`. */
export class VideoMode {
  constructor(container, onError) {
    this.container = container;
    this.onError = onError || (() => {});
    this.sop = null;
    this.path = "";
    this.summary = null;
    this.annotations = [];
    this.phaseColours = new Map();
    this.viewing = null;        // {id, promise}
    this.mayAnnotate = null;    // unknown until /api/auth/me answers
    this.refreshes = [];        // times of media-URL refreshes (to stop a refresh loop)
    this.lastTime = 0;          // the last position shown, to resume at after a refresh
    this.recorded = null;       // Blob of a recorded voice note
    this.recorder = null;
    this.audio = null;
    this.build();
    window.addEventListener("pagehide", () => this.endViewing());
    window.viewerVideo = this; // for tests and the console
  }

  // --- structure ----------------------------------------------------------------------

  build() {
    const c = this.container;
    c.textContent = "";
    this.title = element("div", "video-title");
    this.title.id = "video-title";
    const body = element("div", "video-body");
    const stage = element("div", "video-stage");
    this.video = element("video");
    this.video.id = "video";
    this.video.playsInline = true;
    this.video.preload = "metadata";
    const controls = element("div", "video-controls");
    this.playButton = element("button", "", "▶ Play 播放");
    this.playButton.type = "button";
    this.playButton.id = "video-play";
    const back = element("button", "", "◁ −1 frame 帧");
    back.type = "button";
    back.id = "video-frame-back";
    const forward = element("button", "", "+1 frame 帧 ▷");
    forward.type = "button";
    forward.id = "video-frame-forward";
    const speedLabel = element("label", "", "Speed 速度 ");
    this.speed = element("select");
    this.speed.id = "video-speed";
    for (const rate of SPEEDS) {
      const option = element("option", "", `${rate}×`);
      option.value = String(rate);
      option.selected = rate === 1;
      this.speed.appendChild(option);
    }
    speedLabel.appendChild(this.speed);
    this.clock = element("span", "readout", "–");
    this.clock.id = "video-clock";
    controls.append(this.playButton, back, forward, speedLabel, this.clock);

    this.timeline = element("div", "timeline");
    this.timeline.id = "timeline";
    this.phaseRow = element("div", "timeline-row phases");
    this.phaseRow.title = "Phases 阶段";
    this.stepRow = element("div", "timeline-row steps");
    this.stepRow.title = "Steps 步骤";
    this.cursor = element("div", "timeline-cursor");
    this.tip = element("div", "timeline-tip");
    this.tip.hidden = true;
    this.timeline.append(this.phaseRow, this.stepRow, this.cursor, this.tip);
    this.legend = element("div", "timeline-legend", "Upper row: phases 阶段 · lower row: steps 步骤 · click to seek 点击跳转");
    stage.append(this.video, controls, this.timeline, this.legend);

    const side = element("aside", "video-side");
    this.side = side;
    side.append(element("h3", "", "Annotations 标注"));
    this.list = element("ol", "annotation-list");
    this.list.id = "annotation-list";
    this.message = element("p", "video-message");
    this.message.setAttribute("role", "status");
    side.append(this.list, this.message, this.buildForm());
    body.append(stage, side);
    c.append(this.title, body);

    this.playButton.addEventListener("click", () => this.togglePlay());
    back.addEventListener("click", () => this.stepFrames(-1));
    forward.addEventListener("click", () => this.stepFrames(1));
    this.speed.addEventListener("change", () => {
      this.video.playbackRate = Number(this.speed.value) || 1;
    });
    this.video.addEventListener("timeupdate", () => this.onTime());
    this.video.addEventListener("seeked", () => this.onTime());
    this.video.addEventListener("loadedmetadata", () => this.drawTimeline());
    this.video.addEventListener("play", () => {
      this.playButton.textContent = "⏸ Pause 暂停";
      this.startViewing();
    });
    this.video.addEventListener("pause", () => {
      this.playButton.textContent = "▶ Play 播放";
      this.endViewing();
    });
    this.video.addEventListener("ended", () => this.endViewing());
    this.video.addEventListener("error", () => this.onMediaError());
  }

  buildForm() {
    const form = element("form", "annotation-form");
    form.id = "annotation-form";
    form.hidden = true;
    form.innerHTML = `
      <h4>Add annotation 添加标注</h4>
      <label>Kind 类型 <select name="kind">
        <option value="phase">Phase 阶段</option><option value="step">Step 步骤</option></select></label>
      <label>Start 开始 (s) <input name="start" type="number" min="0" step="0.01" required></label>
      <label>End 结束 (s) <input name="end" type="number" min="0" step="0.01"></label>
      <button type="button" class="now">At current time 当前时间</button>
      <label>Label 名称 <input name="label" maxlength="200" required></label>
      <label>Tissue 组织 <input name="tissue" maxlength="200"></label>
      <label>Instrument 器械 <input name="instrument" maxlength="200"></label>
      <label>Action 动作 <input name="action" maxlength="200"></label>
      <label>Compliance 规范性 <input name="compliance" maxlength="100" list="compliance-values"></label>
      <datalist id="compliance-values"><option value="compliant"><option value="deviation"><option value="non-compliant"></datalist>
      <label>Note 备注 <textarea name="note" rows="2" maxlength="2000"></textarea></label>
      <fieldset class="voice"><legend>Voice note 语音备注</legend>
        <button type="button" class="record" hidden>● Record 录音</button>
        <input type="file" name="voice" accept="audio/*">
        <span class="voice-state readout"></span>
      </fieldset>
      <button type="submit">Add 添加</button>`;
    form.querySelector(".now").addEventListener("click", () => this.fillNow());
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    const record = form.querySelector(".record");
    if (window.MediaRecorder && navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
      record.hidden = false;
      record.addEventListener("click", () => this.toggleRecording(record));
    }
    this.form = form;
    return form;
  }

  // --- opening -----------------------------------------------------------------------

  async open(study, series, sop) {
    await this.close();
    this.study = study;
    this.series = series;
    this.sop = sop;
    this.lastTime = 0;
    this.refreshes = [];
    this.path = videoPath(study, series, sop);
    this.container.hidden = false;
    this.title.textContent = "Loading… 加载中";
    this.annotations = [];
    this.showAnnotations(true);
    this.drawAnnotations();
    const detail = call("GET", `/api/videos/${enc(sop)}`).catch((err) => err);
    const permissions = this.mayAnnotate === null ? call("GET", "/api/auth/me").catch(() => null) : null;
    try {
      await this.loadSource(0, false);
    } catch (err) {
      this.onError(err, "Video not available 视频不可用");
    }
    const found = await detail;
    if (found instanceof Error) {
      this.summary = null;
      this.title.textContent = "";
      this.title.append(element("span", "muted", "No catalogue entry 无视频目录信息"));
    } else {
      this.summary = found.video || null;
      this.showTitlePage(found.titlePage || {}, found.video || {});
      this.annotations = found.annotations || [];
      this.showAnnotations(found.annotationsVisible !== false);
      this.drawAnnotations();
    }
    if (permissions) {
      const me = await permissions;
      this.mayAnnotate = !!(me && (me.permissions || []).includes("annotate_video"));
    }
    this.form.hidden = !this.mayAnnotate || found instanceof Error;
  }

  async close() {
    await this.endViewing();
    if (this.sop) {
      this.video.pause();
      this.video.removeAttribute("src");
      this.video.load();
    }
    this.sop = null;
    this.container.hidden = true;
  }

  async loadSource(at, play) {
    const issued = await call("POST", `/viewer-api${this.path}/media-url`);
    const resume = () => {
      if (at > 0) this.video.currentTime = at;
      if (play) this.video.play().catch(() => {});
    };
    this.video.addEventListener("loadedmetadata", resume, { once: true });
    this.video.src = issued.url;
    this.mediaUrl = issued.url;
  }

  /** The URL most likely expired (five minutes): ask again and carry on where we were. */
  async onMediaError() {
    if (!this.sop || !this.video.getAttribute("src")) return;
    const now = Date.now();
    this.refreshes = this.refreshes.filter((t) => now - t < 60000);
    if (this.refreshes.length >= 3) {
      this.onError({ title: "Video failed 视频播放失败", detail: (this.video.error && this.video.error.message) || "media error" });
      return;
    }
    this.refreshes.push(now);
    const at = this.video.currentTime || this.lastTime || 0;
    const playing = !!this.viewing;
    try {
      await this.loadSource(at, playing);
    } catch (err) {
      this.onError(err, "Video not available 视频不可用");
    }
  }

  showTitlePage(page, video) {
    this.title.textContent = "";
    const minutes = page.operationMinutes ?? video.operationMinutes;
    const items = [
      ["Procedure 手术", page.procedure ?? video.procedure],
      ["Applicant 申请人", page.applicant ?? video.applicant],
      ["Hospital 医院", page.hospital ?? video.hospital],
      ["Surgeon 术者", page.surgeon ?? video.surgeon],
      ["Diagnosis 诊断", page.diagnosis ?? video.diagnosis],
      ["Date 日期", formatDay(page.operationDate ?? video.operationDate)],
      ["Duration 时长", minutes !== null && minutes !== undefined ? `${minutes} min 分钟` : ""],
      ["Notes 备注", page.notes],
    ];
    for (const [label, value] of items) {
      if (value === null || value === undefined || value === "") continue;
      const item = element("span", "title-item");
      item.append(element("small", "", label), element("b", "", String(value)));
      this.title.appendChild(item);
    }
  }

  // --- playback ------------------------------------------------------------------------

  togglePlay() {
    if (this.video.paused) this.video.play().catch((err) => this.onError({ title: "Cannot play 无法播放", detail: String(err) }));
    else this.video.pause();
  }

  frameRate() {
    const rate = this.summary && Number(this.summary.frameRate);
    return rate > 0 && rate < 1000 ? rate : 25;
  }

  stepFrames(count) {
    this.video.pause();
    const d = this.duration();
    const next = this.video.currentTime + count / this.frameRate();
    this.video.currentTime = Math.max(0, d ? Math.min(d, next) : next);
  }

  duration() {
    const d = this.video.duration;
    if (Number.isFinite(d) && d > 0) return d;
    return (this.summary && Number(this.summary.durationSeconds)) || 0;
  }

  seek(seconds) {
    this.video.currentTime = Math.max(0, seconds);
    this.onTime();
  }

  onKey(event) {
    if (event.target instanceof HTMLTextAreaElement) return;
    if (event.key === " ") {
      event.preventDefault();
      this.togglePlay();
    } else if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
      event.preventDefault();
      this.stepFrames(event.key === "ArrowRight" ? 1 : -1);
    }
  }

  onTime() {
    const t = this.video.currentTime;
    if (this.video.readyState >= 1 && !this.video.error) this.lastTime = t; // kept across a reload
    const d = this.duration();
    this.clock.textContent = `${formatTime(t)} / ${formatTime(d)}`;
    if (d) this.cursor.style.left = `${(100 * Math.min(t, d)) / d}%`;
    for (const node of this.container.querySelectorAll("[data-annotation]")) {
      const found = this.annotations.find((a) => String(a.id) === node.dataset.annotation);
      node.classList.toggle("current", !!found && this.isCurrent(found, t));
    }
  }

  isCurrent(annotation, t) {
    const start = Number(annotation.start) || 0;
    const end = Number(annotation.end);
    if (Number.isFinite(end) && end > start) return t >= start && t < end;
    return Math.abs(t - start) < 0.5; // a step without an end is current around its moment
  }

  // --- viewings ----------------------------------------------------------------------------

  startViewing() {
    if (this.viewing || !this.sop) return;
    const sop = this.sop;
    const body = {};
    const task = new URLSearchParams(location.search).get("task");
    if (task) body.taskId = task;
    const viewing = { id: null, sop };
    viewing.promise = call("POST", `/api/videos/${enc(sop)}/viewings`, body)
      .then((answer) => {
        viewing.id = answer && answer.viewingId;
      })
      .catch(() => { /* recording is best effort: playback goes on */ });
    this.viewing = viewing;
  }

  async endViewing() {
    const viewing = this.viewing;
    if (!viewing) return;
    this.viewing = null;
    await viewing.promise;
    if (!viewing.id) return;
    const headers = {};
    const token = bearer();
    if (token) headers.Authorization = "Bearer " + token;
    const url = `/api/videos/${enc(viewing.sop)}/viewings/${enc(viewing.id)}/end`;
    try {
      await fetch(url, { method: "POST", headers, keepalive: true });
    } catch (_) { /* the page is going away */ }
  }

  // --- annotations --------------------------------------------------------------------------

  colourOf(label) {
    if (!this.phaseColours.has(label)) {
      this.phaseColours.set(label, PHASE_COLOURS[this.phaseColours.size % PHASE_COLOURS.length]);
    }
    return this.phaseColours.get(label);
  }

  drawAnnotations() {
    this.annotations.sort((a, b) => (Number(a.start) || 0) - (Number(b.start) || 0));
    this.list.textContent = "";
    if (!this.annotations.length) {
      this.list.appendChild(element("li", "empty", "No annotations 暂无标注"));
    }
    for (const annotation of this.annotations) {
      const item = element("li", `annotation ${annotation.kind}`);
      item.dataset.annotation = String(annotation.id);
      const button = element("button", "annotation-seek");
      button.type = "button";
      const kind = annotation.kind === "phase" ? "Phase 阶段" : "Step 步骤";
      const end = Number(annotation.end) > Number(annotation.start) ? `–${formatTime(Number(annotation.end))}` : "";
      button.append(
        element("span", "when", `${formatTime(Number(annotation.start))}${end}`),
        element("b", "", annotation.label || "(no label)"),
        element("small", "", [kind, annotation.tissue, annotation.instrument, annotation.action, annotation.compliance, annotation.author].filter(Boolean).join(" · ")),
      );
      if (annotation.note) button.append(element("small", "note", annotation.note));
      if (annotation.kind === "phase") {
        const swatch = element("i", "swatch");
        swatch.style.background = this.colourOf(annotation.label);
        button.prepend(swatch);
      }
      button.addEventListener("click", () => this.seek(Number(annotation.start) || 0));
      item.appendChild(button);
      if (annotation.voiceNoteUrl) {
        const play = element("button", "voice-play", "🔊 Voice 语音");
        play.type = "button";
        play.addEventListener("click", () => this.playVoice(annotation.voiceNoteUrl, play));
        item.appendChild(play);
      }
      this.list.appendChild(item);
    }
    this.drawTimeline();
  }

  drawTimeline() {
    this.phaseRow.textContent = "";
    this.stepRow.textContent = "";
    const d = this.duration();
    if (!d) return;
    for (const annotation of this.annotations) {
      const start = Math.max(0, Math.min(d, Number(annotation.start) || 0));
      const endValue = Number(annotation.end);
      const end = Number.isFinite(endValue) && endValue > start ? Math.min(d, endValue) : start;
      const phase = annotation.kind === "phase";
      const mark = element("div", phase ? "segment" : end > start ? "step-span" : "step-marker");
      mark.dataset.annotation = String(annotation.id);
      mark.dataset.start = String(start);
      mark.style.left = `${(100 * start) / d}%`;
      if (phase || end > start) mark.style.width = `${Math.max(0.4, (100 * (end - start)) / d)}%`;
      if (phase) mark.style.background = this.colourOf(annotation.label);
      mark.setAttribute("aria-label", describe(annotation));
      if (phase) mark.textContent = annotation.label || "";
      mark.addEventListener("click", (event) => {
        event.stopPropagation();
        this.seek(start);
      });
      mark.addEventListener("pointerenter", () => this.showTip(mark, annotation));
      mark.addEventListener("pointerleave", () => {
        this.tip.hidden = true;
      });
      (phase ? this.phaseRow : this.stepRow).appendChild(mark);
    }
    this.onTime();
  }

  showTip(mark, annotation) {
    this.tip.textContent = "";
    this.tip.append(element("b", "", annotation.label || ""));
    for (const [label, value] of [["Tissue 组织", annotation.tissue], ["Instrument 器械", annotation.instrument], ["Action 动作", annotation.action], ["Compliance 规范", annotation.compliance]]) {
      if (value) this.tip.append(element("div", "", `${label}: ${value}`));
    }
    this.tip.hidden = false;
    const box = this.timeline.getBoundingClientRect();
    const at = mark.getBoundingClientRect();
    this.tip.style.left = `${Math.max(0, Math.min(box.width - 220, at.left - box.left))}px`;
  }

  fillNow() {
    const t = Math.round(this.video.currentTime * 100) / 100;
    this.form.elements.start.value = String(t);
    const end = Number(this.form.elements.end.value);
    if (!(end > t)) this.form.elements.end.value = "";
  }

  async submit() {
    const f = this.form.elements;
    const start = Number(f.start.value);
    // A step is a moment: without an end it lasts one second (the API wants end > start).
    const d = this.duration();
    const moment = d ? Math.min(d, start + 1) : start + 1;
    const end = f.end.value === "" && f.kind.value === "step" ? Math.round(moment * 1000) / 1000 : Number(f.end.value);
    if (f.end.value === "" && f.kind.value === "phase") {
      this.message.textContent = "A phase needs an end 阶段需要结束时间";
      return;
    }
    if (!(end > start)) {
      this.message.textContent = "End must be after start 结束时间须晚于开始时间";
      return;
    }
    const body = { kind: f.kind.value, start, end, label: f.label.value.trim() };
    for (const name of ["tissue", "instrument", "action", "compliance", "note"]) {
      const value = f[name].value.trim();
      if (value) body[name] = value;
    }
    let created;
    try {
      created = await call("POST", `/api/videos/${enc(this.sop)}/annotations`, body);
    } catch (err) {
      if (err.status === 403) {
        this.mayAnnotate = false;
        this.form.hidden = true;
        this.message.textContent = "You may not annotate this video 无标注权限";
      } else {
        this.message.textContent = `${err.title}: ${err.detail}`;
      }
      return;
    }
    const annotation = (created && created.annotation) || created;
    const voice = this.recorded || (f.voice.files && f.voice.files[0]);
    this.message.textContent = "Saved 已保存";
    if (voice && annotation && annotation.id !== undefined) {
      try {
        await call("PUT", `/api/videos/${enc(this.sop)}/annotations/${enc(annotation.id)}/voice-note`, voice, { "Content-Type": voiceType(voice) });
      } catch (err) {
        this.message.textContent = `Voice note not saved 语音未保存: ${err.detail || err.title}`;
      }
    }
    this.form.reset();
    this.recorded = null;
    this.form.querySelector(".voice-state").textContent = "";
    await this.reloadAnnotations(annotation);
  }

  async reloadAnnotations(fallback) {
    try {
      const answer = await call("GET", `/api/videos/${enc(this.sop)}/annotations`);
      this.annotations = answer.annotations || [];
    } catch (err) {
      if (err.status === 403) {
        // Annotations are professional evaluation, not for every viewer: no timeline, no error.
        this.annotations = [];
        this.showAnnotations(false);
        return;
      }
      if (fallback) this.annotations.push(fallback);
    }
    this.drawAnnotations();
  }

  /** Show or hide everything about annotations (timeline, legend, list and form): a viewer
   * without `view_video_annotations` (a patient, a share link) watches the video alone. */
  showAnnotations(visible) {
    this.annotationsVisible = visible;
    this.timeline.hidden = !visible;
    this.legend.hidden = !visible;
    this.side.hidden = !visible;
  }

  async toggleRecording(button) {
    const state = this.form.querySelector(".voice-state");
    if (this.recorder) {
      this.recorder.stop();
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      state.textContent = "No microphone 无麦克风: choose a file 请选择文件";
      return;
    }
    const chunks = [];
    const recorder = new MediaRecorder(stream);
    recorder.addEventListener("dataavailable", (e) => chunks.push(e.data));
    recorder.addEventListener("stop", () => {
      for (const track of stream.getTracks()) track.stop();
      this.recorded = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
      this.recorder = null;
      button.textContent = "● Record 录音";
      state.textContent = `Recorded 已录制 ${(this.recorded.size / 1024).toFixed(0)} KB`;
    });
    recorder.start();
    this.recorder = recorder;
    button.textContent = "■ Stop 停止";
    state.textContent = "Recording… 录音中";
  }

  /** Voice notes need the bearer token, so they are fetched and played through Web Audio
   * (the viewer's CSP admits no blob: media). */
  async playVoice(url, button) {
    try {
      const response = await call("GET", url, undefined, { Accept: "audio/*" });
      const data = await response.arrayBuffer();
      this.audio = this.audio || new AudioContext();
      const buffer = await this.audio.decodeAudioData(data);
      const source = this.audio.createBufferSource();
      source.buffer = buffer;
      source.connect(this.audio.destination);
      source.start();
      button.classList.add("playing");
      source.addEventListener("ended", () => button.classList.remove("playing"));
    } catch (err) {
      this.message.textContent = `Voice note 语音: ${err.detail || err.message || err}`;
    }
  }
}
