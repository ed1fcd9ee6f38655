// The patient's page: sign in with the ID number and a one-time code, the exams of every
// hospital (newest first), a simple image view, share links and authorisations. Also the
// target of a hospital's QR request (/patient/authorise/<code>) and of a report's QR code
// (/patient/?study=<ref>). Nothing is kept on the phone: the token lives in memory only.

import {
  ImageScope, deleteJSON, describe, el, formatDate, formatTime, frameUrl, getJSON,
  hasToken, postJSON, setToken, showImage, whenExpired,
} from "./api.js";
import { showStudy } from "./images.js";

const $ = (id) => document.getElementById(id);
const VIEWS = ["sign-in", "authorise", "exams", "study", "share", "grants"];
const THUMB_PX = 160;

const authoriseMatch = location.pathname.match(/^\/patient\/authorise\/([^/]+)$/);
let authoriseCode = authoriseMatch ? decodeURIComponent(authoriseMatch[1]) : null;
let reportRef = new URLSearchParams(location.search).get("study");
let studies = [];
let scope = null; // images of the current view, released when it is left

function show(view) {
  if (scope) scope.release();
  scope = new ImageScope();
  for (const name of VIEWS) $(name).hidden = name !== view;
  const signedIn = hasToken();
  $("tabs").hidden = !signedIn || view === "sign-in" || view === "authorise";
  for (const tab of $("tabs").querySelectorAll("button")) {
    tab.setAttribute("aria-pressed", String(tab.dataset.view === view));
  }
  $("sign-out").hidden = !signedIn;
  document.body.dataset.view = view;
  window.scrollTo(0, 0);
}

function say(id, text, kind) {
  const node = $(id);
  node.textContent = text || "";
  node.className = "message" + (kind ? " " + kind : "");
}

function studyLabel(study) {
  return `${formatDate(study.study_date)} · ${study.hospital_name || study.hospital_id || "—"}`;
}

// --- sign-in ---------------------------------------------------------------------------------

$("code-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const patientId = $("patient-id").value.trim();
  try {
    const answer = await postJSON("/api/patient/code", { patient_id: patientId });
    say("sign-in-message", `${answer.detail}. Valid 5 min 有效期5分钟`, "ok");
    $("code").focus();
  } catch (err) {
    say("sign-in-message", describe(err), "error");
  }
});

$("session-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { patient_id: $("patient-id").value.trim(), code: $("code").value.trim() };
  try {
    const answer = await postJSON("/api/patient/session", body);
    setToken(answer.access_token);
    $("code").value = "";
    say("sign-in-message", "");
    await afterSignIn();
  } catch (err) {
    say("sign-in-message", describe(err), "error");
  }
});

whenExpired(() => {
  studies = [];
  window.addEventListener("pagehide", () => scope && scope.release());
show("sign-in");
  say("sign-in-message", "会话已结束，请重新登录 Your session has ended; sign in again.", "error");
});

$("sign-out").addEventListener("click", () => {
  setToken(null);
  studies = [];
  $("patient-id").value = "";
  window.addEventListener("pagehide", () => scope && scope.release());
show("sign-in");
  say("sign-in-message", "已退出 Signed out.", "ok");
});

async function afterSignIn() {
  if (authoriseCode) return openAuthorise();
  await openExams();
  if (reportRef) {
    const wanted = studies.find((s) => s.ref === reportRef);
    reportRef = null;
    if (wanted) return openStudy(wanted);
    say("exams-message", "此报告的检查不在您的记录中 That report's exam is not among yours.", "error");
  }
}

// --- exams -----------------------------------------------------------------------------------

async function openExams() {
  show("exams");
  say("exams-message", "加载中 Loading…");
  try {
    studies = await getJSON("/api/patient/studies");
  } catch (err) {
    say("exams-message", describe(err), "error");
    return;
  }
  say("exams-message", studies.length ? "" : "暂无检查 No exams yet.");
  const list = $("exam-list");
  list.replaceChildren();
  for (const study of studies) {
    const img = el("img", { class: "thumb", alt: "", draggable: "false" });
    const text = el("span", { class: "exam-text" },
      el("strong", { text: studyLabel(study) }),
      el("span", { text: `${study.modalities.join("/") || "—"} · ${study.study_description || ""}` }),
      el("span", { class: "muted", text: `${study.images} images 幅` }));
    const button = el("button", { type: "button", class: "exam-open" }, img, text);
    button.addEventListener("click", () => openStudy(study));
    list.append(el("li", { class: "exam", "data-study": study.study_instance_uid }, button));
    const thumb = study.thumbnail;
    if (thumb.sop_instance_uid) {
      showImage(scope, img, frameUrl(study.study_instance_uid, thumb.series_instance_uid,
                                     thumb.sop_instance_uid, 1, THUMB_PX));
    }
  }
}

async function openStudy(study) {
  show("study");
  $("study-title").textContent = studyLabel(study);
  $("study-share").onclick = () => openShare([study.study_instance_uid]);
  try {
    await showStudy($("study-body"), study.study_instance_uid, scope);
  } catch (err) {
    $("study-body").replaceChildren(el("p", { class: "message error", text: describe(err) }));
  }
}

$("study-back").addEventListener("click", () => openExams());

// --- share -----------------------------------------------------------------------------------

async function openShare(selected) {
  show("share");
  $("share-result").hidden = true;
  say("share-message", "");
  if (!studies.length) studies = await getJSON("/api/patient/studies").catch(() => []);
  const box = $("share-studies");
  box.replaceChildren();
  for (const study of studies) {
    const check = el("input", { type: "checkbox", value: study.study_instance_uid,
                                checked: selected.includes(study.study_instance_uid) });
    box.append(el("label", {}, check,
      ` ${studyLabel(study)} · ${study.modalities.join("/")} ${study.study_description || ""}`));
  }
  await listLinks();
}

$("share-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const uids = [...$("share-studies").querySelectorAll("input:checked")].map((c) => c.value);
  if (!uids.length) return say("share-message", "请选择检查 Choose at least one exam.", "error");
  const body = {
    study_uids: uids,
    expires_in: Number(document.querySelector("input[name=expires]:checked").value),
  };
  const password = $("share-password").value;
  if (password) body.password = password;
  try {
    const link = await postJSON("/api/share-links", body);
    $("share-password").value = "";
    $("share-url").value = link.url;
    $("share-expiry").textContent = `Valid until 有效期至 ${formatTime(link.expires_at)}`
      + (password ? " · password protected 需密码" : "");
    $("share-qr").src = link.qr_png;
    $("share-result").hidden = false;
    say("share-message", "链接已生成 Link created.", "ok");
    await listLinks();
  } catch (err) {
    say("share-message", describe(err), "error");
  }
});

$("share-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("share-url").value);
    say("share-message", "已复制 Copied.", "ok");
  } catch (_) {
    $("share-url").select();
  }
});

async function listLinks() {
  const list = $("link-list");
  try {
    const links = await getJSON("/api/share-links");
    list.replaceChildren(...links.map((link) => {
      const state = link.revoked_at ? "revoked 已撤销" : link.active ? "active 有效" : "expired 已过期";
      const item = el("li", { class: link.active ? "" : "muted" },
        el("span", { text: `${link.study_uids.length} exam(s) · until ${formatTime(link.expires_at)} · ${state}` }));
      if (link.active) {
        item.append(el("button", { type: "button", class: "danger", text: "Revoke 撤销",
          onclick: async () => { await deleteJSON(`/api/share-links/${link.id}`); listLinks(); } }));
      }
      return item;
    }));
  } catch (err) {
    list.replaceChildren(el("li", { class: "message error", text: describe(err) }));
  }
}

// --- authorisations --------------------------------------------------------------------------

async function openGrants() {
  show("grants");
  say("grants-message", "");
  try {
    const [grants, hospitals] = await Promise.all([
      getJSON("/api/patient/grants"), getJSON("/api/patient/hospitals")]);
    $("grant-list").replaceChildren(...(grants.length ? grants.map(grantItem)
      : [el("li", { class: "muted", text: "暂无授权 No authorisations." })]));
    $("grant-hospital").replaceChildren(...hospitals.map((h) =>
      el("option", { value: h.hospital_id, text: h.name })));
  } catch (err) {
    say("grants-message", describe(err), "error");
  }
}

function grantItem(grant) {
  const state = grant.revoked_at ? "revoked 已撤销" : grant.active ? "active 有效" : "expired 已过期";
  const item = el("li", { class: grant.active ? "grant" : "grant muted", "data-grant": grant.id },
    el("strong", { text: grant.hospital_name }),
    el("span", { text: ` until 至 ${formatTime(grant.expires_at)} · ${state}` }));
  if (grant.active) {
    item.append(el("button", { type: "button", class: "danger", text: "Revoke 撤销",
      onclick: async () => {
        await postJSON(`/api/patient/grants/${grant.id}/revoke`).catch((err) =>
          say("grants-message", describe(err), "error"));
        openGrants();
      } }));
  }
  return item;
}

$("grant-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { hospital_id: $("grant-hospital").value, valid_hours: Number($("grant-hours").value) };
  try {
    await postJSON("/api/patient/grants", body);
    await openGrants();
    say("grants-message", "已授权 Authorised.", "ok");
  } catch (err) {
    say("grants-message", describe(err), "error");
  }
});

// --- a hospital's QR request ---------------------------------------------------------------

async function openAuthorise() {
  show("authorise");
  say("authorise-message", "");
  $("authorise-done").hidden = true;
  let request;
  try {
    request = await getJSON(`/api/patient/grant-requests/${encodeURIComponent(authoriseCode)}`);
  } catch (err) {
    $("authorise-body").replaceChildren();
    answered(describe(err), "error");
    return;
  }
  $("authorise-body").replaceChildren(
    el("p", { class: "asker", text: request.hospital_name }),
    el("p", { text: `asks to see your images from other hospitals for ${request.valid_hours} h.` }),
    el("p", { text: `请求调阅您在其他医院的影像，时长 ${request.valid_hours} 小时。` }),
    el("p", { class: "hint", text: `Request valid until 请求有效期至 ${formatTime(request.expires_at)}` }));
  if (request.state !== "pending") answered(`This request is ${request.state}. 此请求已处理或过期。`, "error");
  else $("approve").parentElement.hidden = false;
}

function answered(text, kind) {
  $("approve").parentElement.hidden = true;
  say("authorise-message", text, kind);
  $("authorise-done").hidden = false;
}

async function answer(approve) {
  const path = `/api/patient/grant-requests/${encodeURIComponent(authoriseCode)}/${approve ? "approve" : "decline"}`;
  try {
    const result = await postJSON(path);
    answered(approve
      ? `已授权 Authorised: ${result.hospital_name} until 至 ${formatTime(result.grant_expires_at)}`
      : "已拒绝 Declined.", "ok");
  } catch (err) {
    answered(describe(err), "error");
  }
}

$("approve").addEventListener("click", () => answer(true));
$("decline").addEventListener("click", () => answer(false));
$("authorise-done").addEventListener("click", () => {
  authoriseCode = null;
  history.replaceState(null, "", "/patient/");
  openExams();
});

// --- start -----------------------------------------------------------------------------------

for (const tab of $("tabs").querySelectorAll("button")) {
  tab.addEventListener("click", () => {
    if (tab.dataset.view === "exams") openExams();
    else if (tab.dataset.view === "grants") openGrants();
    else openShare([]);
  });
}

if (authoriseCode) {
  $("sign-in-purpose").hidden = false;
  $("sign-in-purpose").textContent =
    "A hospital asks for access to your images; confirm who you are first. 医院请求调阅您的影像，请先验证身份。";
} else if (reportRef) {
  $("sign-in-purpose").hidden = false;
  $("sign-in-purpose").textContent = "Confirm who you are to open the report's exam. 请先验证身份以查看报告对应的检查。";
}
window.addEventListener("pagehide", () => scope && scope.release());
show("sign-in");
