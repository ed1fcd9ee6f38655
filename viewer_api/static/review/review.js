// The experts' review page: my tasks, a task's videos (played through media URLs, every playback
// recorded as a viewing), the scoring form with its live total, and the task's comments.
//
// The token: `?token=` (an embedding) or `#token=` (single sign-on), else the one this browser
// tab already holds (the viewer's sessionStorage key), else a sign-in form. A <video> cannot
// send Authorization, so its src is a five-minute media URL from
// POST /viewer-api/…/instances/{sop}/media-url. Viewing records are ended with fetch(keepalive),
// since sendBeacon cannot carry the bearer token.

const TOKEN_KEY = "imaging-cloud-viewer-token";
const $ = (selector) => document.querySelector(selector);

// What tests and curious users can read: the state of the page.
const state = (window.review = {
  ready: false, error: "", tasks: [], task: null, submitted: null, viewings: [], lastVideo: null,
});

let token = null;

// --- HTTP ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, title, detail) {
    super(detail || title);
    this.status = status;
    this.title = title;
  }
}

async function send(url, init = {}) {
  const headers = { Accept: "application/json", ...(init.headers || {}) };
  if (token) headers.Authorization = "Bearer " + token;
  if (init.json !== undefined) {
    headers["Content-Type"] = "application/json";
    init = { ...init, body: JSON.stringify(init.json) };
    delete init.json;
  }
  const response = await fetch(url, { ...init, headers });
  if (!response.ok) {
    let title = `HTTP ${response.status}`, detail = "";
    try {
      const body = await response.json();
      title = body.title || title;
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || "");
    } catch (_) { /* not problem+json */ }
    throw new ApiError(response.status, title, detail);
  }
  return response;
}

const getJSON = async (url) => (await send(url)).json();
const postJSON = async (url, json, method = "POST") => (await send(url, { method, json })).json();

function remember(value) {
  try { sessionStorage.setItem(TOKEN_KEY, value); } catch (_) { /* storage disabled */ }
}

function takeToken() {
  const params = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  const given = params.get("token") || fragment.get("token");
  if (given) {
    remember(given);
    params.delete("token");
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
    return given;
  }
  try { return sessionStorage.getItem(TOKEN_KEY); } catch (_) { return null; }
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
    remember(token);
    $("#password").value = "";
    await start();
  } catch (error) {
    token = null;
    message.className = "message error";
    message.textContent = `${error.title || "Error"}: ${error.message}`;
  }
}

function signOut() {
  endAllViewings();
  token = null;
  try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* storage disabled */ }
  location.replace(location.pathname);
}

async function start() {
  const me = await getJSON("/api/auth/me").catch(() => null);
  if (me) $("#who").textContent = [me.username || me.name, me.role].filter(Boolean).join(" · ");
  $("#sign-in").hidden = true;
  $("#app").hidden = false;
  $("#sign-out").hidden = false;
  await loadTasks();
  const wanted = Number(new URLSearchParams(location.search).get("task"));
  if (wanted) await openTask(wanted);
  else if (state.tasks.length === 1) await openTask(state.tasks[0].id);
  state.ready = true;
}

// --- tasks -----------------------------------------------------------------------------------

const STATUS = { open: "Open 评审中", closed: "Closed 已结束" };

function when(iso) {
  if (!iso) return "–";
  const moment = new Date(iso);
  return Number.isNaN(moment.getTime()) ? iso : moment.toLocaleString("zh-CN", { hour12: false });
}

async function loadTasks() {
  const answer = await getJSON("/api/video-reviews/tasks");
  state.tasks = answer.tasks;
  const list = $("#task-list");
  list.replaceChildren(...answer.tasks.map((task) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "task-link";
    button.dataset.task = String(task.id);
    const done = task.mySubmitted ? "✓ Submitted 已提交" : "Pending 待评";
    button.textContent = `${task.title} — ${task.applicant} · ${STATUS[task.status] || task.status}`
      + (task.mySubmitted === undefined ? "" : ` · ${done}`);
    button.addEventListener("click", () => openTask(task.id).catch(showError));
    item.append(button);
    return item;
  }));
  $("#no-tasks").hidden = answer.tasks.length > 0;
}

async function openTask(id) {
  endAllViewings();
  const task = await getJSON(`/api/video-reviews/tasks/${id}`);
  state.task = task;
  state.lastVideo = null;
  for (const button of document.querySelectorAll(".task-link")) {
    button.classList.toggle("current", button.dataset.task === String(id));
  }
  $("#task-title").textContent = task.title;
  $("#task-applicant").textContent = task.applicant;
  $("#task-status").textContent = STATUS[task.status] || task.status;
  $("#task-due").textContent = when(task.dueAt);
  $("#task").hidden = false;
  renderVideos(task);
  renderForm(task);
  renderComments(task.comments);
}

// --- videos and viewing records ----------------------------------------------------------------

const players = new Map(); // sop -> {video, viewing: Promise<string|null>|null}

function renderVideos(task) {
  players.clear();
  const open = task.status === "open";
  const figures = task.videos.map((info, index) => {
    const figure = document.createElement("figure");
    figure.className = "video";
    const video = document.createElement("video");
    video.controls = true;
    video.preload = "metadata";
    video.playsInline = true;
    video.dataset.sop = info.sopInstanceUid;
    video.id = `video-${index}`;
    const caption = document.createElement("figcaption");
    const minutes = info.durationSeconds ? ` · ${Math.round(info.durationSeconds)} s` : "";
    caption.textContent = `${index + 1}. ${info.procedure || "Video 视频"} · `
      + `${info.cameraRole || ""}${minutes}`;
    figure.append(video, caption);
    players.set(info.sopInstanceUid, { video, info, viewing: null, retried: false });
    if (open) attachPlayer(video, info);
    else caption.textContent += " · closed: not playable 已结束，不可播放";
    return figure;
  });
  $("#video-list").replaceChildren(...figures);
}

async function mediaUrl(info) {
  const answer = await postJSON(`/viewer-api${info.renderedPath}/media-url`, {});
  return answer.url;
}

function attachPlayer(video, info) {
  const player = players.get(info.sopInstanceUid);
  mediaUrl(info).then((url) => { video.src = url; }).catch(showError);
  video.addEventListener("play", () => {
    state.lastVideo = info.sopInstanceUid;
    startViewing(player);
  });
  video.addEventListener("pause", () => endViewing(player));
  video.addEventListener("ended", () => endViewing(player));
  video.addEventListener("error", async () => {
    // a media URL lives five minutes: fetch a fresh one once and carry on where it was
    if (player.retried) return;
    player.retried = true;
    const at = video.currentTime;
    try {
      video.src = await mediaUrl(info);
      video.currentTime = at;
    } catch (error) { showError(error); }
  });
}

function startViewing(player) {
  if (player.viewing) return;
  const sop = player.info.sopInstanceUid;
  player.viewing = postJSON(`/api/videos/${encodeURIComponent(sop)}/viewings`, { taskId: state.task.id })
    .then((answer) => {
      state.viewings.push({ sop, viewingId: answer.viewingId, startedAt: answer.startedAt });
      return answer.viewingId;
    })
    .catch((error) => { showError(error); return null; });
}

function endViewing(player) {
  const pending = player.viewing;
  if (!pending) return;
  player.viewing = null;
  const sop = player.info.sopInstanceUid;
  pending.then((viewingId) => {
    if (!viewingId) return;
    // keepalive: the request survives the page being closed; sendBeacon cannot send the token
    fetch(`/api/videos/${encodeURIComponent(sop)}/viewings/${viewingId}/end`, {
      method: "POST", keepalive: true,
      headers: { Authorization: "Bearer " + token, Accept: "application/json" },
    }).then((response) => response.ok ? response.json() : null).then((answer) => {
      const record = state.viewings.find((v) => v.viewingId === viewingId);
      if (record && answer) record.durationSeconds = answer.durationSeconds;
    }).catch(() => { /* the page is going away */ });
  });
}

function endAllViewings() {
  for (const player of players.values()) endViewing(player);
}

// --- the scoring form --------------------------------------------------------------------------

function renderForm(task) {
  const form = task.form;
  const mine = task.myAssignment || null;
  const scores = (mine && mine.scores) || {};
  const rows = form.criteria.map((criterion) => {
    const row = document.createElement("tr");
    const label = document.createElement("th");
    label.scope = "row";
    const id = `score-${criterion.key}`;
    const labelled = document.createElement("label");
    labelled.htmlFor = id;
    labelled.textContent = criterion.label;
    label.append(labelled);
    const cell = document.createElement("td");
    const input = document.createElement("input");
    Object.assign(input, { type: "number", id, name: criterion.key, min: "0",
      max: String(criterion.max), step: "0.5", required: true, inputMode: "decimal" });
    if (scores[criterion.key] !== undefined) input.value = String(scores[criterion.key]);
    input.addEventListener("input", updateTotal);
    cell.append(input);
    const top = document.createElement("td");
    top.textContent = String(criterion.max);
    row.append(label, cell, top);
    return row;
  });
  $("#criteria").replaceChildren(...rows);
  $("#max-total").textContent = String(form.maxTotal);
  $("#pass-mark").textContent = String(form.passMark);
  $("#score-comment").value = (mine && mine.comment) || "";
  for (const radio of document.querySelectorAll("input[name=recommendation]")) {
    radio.checked = !!mine && radio.value === mine.recommendation;
  }
  const reviewing = !!mine;
  const open = task.status === "open";
  for (const control of $("#score-form").querySelectorAll("input, textarea, button")) {
    control.disabled = !(reviewing && open);
  }
  $("#score-form").hidden = !reviewing;
  const message = $("#score-message");
  message.className = "message";
  message.textContent = mine && mine.submitted
    ? `Submitted 已提交 ${when(mine.submittedAt)}` + (open ? " · you may change it while open 评审期间可修改" : "")
    : (open ? "" : "This task is closed. 任务已结束。");
  updateTotal();
}

function updateTotal() {
  const form = state.task && state.task.form;
  if (!form) return;
  let total = 0, invalid = false;
  for (const criterion of form.criteria) {
    const input = document.getElementById(`score-${criterion.key}`);
    const value = input.value === "" ? 0 : Number(input.value);
    const bad = Number.isNaN(value) || value < 0 || value > criterion.max;
    input.classList.toggle("invalid", bad);
    invalid ||= bad;
    if (!bad) total += value;
  }
  total = Math.round(total * 100) / 100;
  $("#total").value = String(total);
  $("#total").textContent = String(total);
  const verdict = $("#verdict");
  verdict.textContent = invalid ? "Points out of range 分值超出范围"
    : total >= form.passMark ? "At or above the pass mark 达到及格线" : "Below the pass mark 未达及格线";
  verdict.className = invalid ? "error" : total >= form.passMark ? "good" : "low";
}

async function submitScores(event) {
  event.preventDefault();
  const task = state.task;
  const message = $("#score-message");
  const scores = {};
  for (const criterion of task.form.criteria) {
    scores[criterion.key] = Number(document.getElementById(`score-${criterion.key}`).value);
  }
  const chosen = document.querySelector("input[name=recommendation]:checked");
  try {
    const answer = await postJSON(`/api/video-reviews/tasks/${task.id}/scores`, {
      scores, recommendation: chosen ? chosen.value : "", comment: $("#score-comment").value,
    }, "PUT");
    state.submitted = answer;
    task.myAssignment = answer;
    message.className = "message good";
    message.textContent = `Submitted 已提交: ${answer.total} / ${task.form.maxTotal} · ${when(answer.submittedAt)}`;
    await loadTasks();
  } catch (error) {
    message.className = "message error";
    message.textContent = `${error.title}: ${error.message}`;
  }
}

// --- comments ----------------------------------------------------------------------------------

function clock(seconds) {
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${(seconds - minutes * 60).toFixed(1).padStart(4, "0")}`;
}

function renderComments(comments) {
  const index = new Map((state.task ? state.task.videos : []).map((v, i) => [v.sopInstanceUid, i]));
  $("#comment-list").replaceChildren(...comments.map((comment) => {
    const item = document.createElement("li");
    const head = document.createElement("div");
    head.className = "comment-head";
    let where = "";
    if (comment.sopInstanceUid) {
      where = ` · video 视频 ${index.get(comment.sopInstanceUid) + 1}`
        + (comment.atSeconds !== null && comment.atSeconds !== undefined ? ` @ ${clock(comment.atSeconds)}` : "");
    }
    head.textContent = `${comment.author} · ${when(comment.createdAt)}${where}`;
    const text = document.createElement("p");
    text.textContent = comment.text;
    item.append(head, text);
    if (comment.sopInstanceUid && comment.atSeconds !== null && comment.atSeconds !== undefined) {
      const jump = document.createElement("button");
      jump.type = "button";
      jump.className = "jump";
      jump.textContent = "Go to 跳转";
      jump.addEventListener("click", () => {
        const player = players.get(comment.sopInstanceUid);
        if (player) { player.video.currentTime = comment.atSeconds; player.video.focus(); }
      });
      item.append(jump);
    }
    return item;
  }));
}

async function postComment(event) {
  event.preventDefault();
  const message = $("#comment-message");
  const body = { text: $("#comment-text").value };
  if ($("#comment-at-time").checked) {
    const sop = state.lastVideo || (state.task.videos[0] || {}).sopInstanceUid;
    const player = sop && players.get(sop);
    if (player) {
      body.sopInstanceUid = sop;
      body.atSeconds = Math.round(player.video.currentTime * 10) / 10;
    }
  }
  try {
    await postJSON(`/api/video-reviews/tasks/${state.task.id}/comments`, body);
    $("#comment-text").value = "";
    message.className = "message";
    message.textContent = "";
    renderComments(await getJSON(`/api/video-reviews/tasks/${state.task.id}/comments`));
  } catch (error) {
    message.className = "message error";
    message.textContent = `${error.title}: ${error.message}`;
  }
}

// --- start -------------------------------------------------------------------------------------

function showError(error) {
  state.error = `${error.title || "Error"}: ${error.message}`;
  if (error.status === 401) {
    token = null;
    $("#app").hidden = true;
    $("#sign-in").hidden = false;
  }
  const message = $("#score-message");
  if (message) {
    message.className = "message error";
    message.textContent = state.error;
  }
}

$("#sign-in").addEventListener("submit", signIn);
$("#sign-out").addEventListener("click", signOut);
$("#score-form").addEventListener("submit", submitScores);
$("#comment-form").addEventListener("submit", postComment);
window.addEventListener("pagehide", endAllViewings);

token = takeToken();
if (token) {
  start().catch((error) => {
    showError(error);
    if (error.status === 401) $("#sign-in").hidden = false;
  });
} else {
  $("#sign-in").hidden = false;
}
