// The share page /s/<token>: asks for the password if the link has one, then shows the shared
// exams. An unknown, expired or revoked link, or one revoked while open, gets a plain message.
// The token from opening the link lives in memory only.

import {
  ApiError, ImageScope, describe, el, formatDate, formatTime, getJSON, postJSON, setToken,
  studyUrl, whenExpired,
} from "./api.js";
import { showStudy } from "./images.js";

const $ = (id) => document.getElementById(id);
const linkToken = decodeURIComponent(location.pathname.split("/")[2] || "");
let scope = null;

function only(id) {
  for (const name of ["share-loading", "gone", "password", "shared"]) $(name).hidden = name !== id;
  document.body.dataset.view = id;
}

function gone(err) {
  if (scope) scope.release();
  setToken(null);
  const status = err instanceof ApiError ? err.status : 0;
  const titles = {
    404: "链接不存在 This link does not exist",
    410: "链接已失效 This link no longer works",
    401: "链接已失效 This link no longer works",
  };
  $("gone-title").textContent = titles[status] || "无法打开 Cannot open this link";
  $("gone-detail").textContent = describe(err);
  only("gone");
}

async function openLink(password) {
  const body = password ? { password } : {};
  const opened = await postJSON(`/api/share/${encodeURIComponent(linkToken)}/open`, body);
  setToken(opened.access_token);
  $("link-password").value = "";
  await showShared(opened.study_uids, opened.expires_in);
}

async function showShared(uids, seconds) {
  only("shared");
  const until = new Date(Date.now() + seconds * 1000).toISOString();
  $("shared-expiry").textContent = `This view works until 可查看至 ${formatTime(until)}`;
  const studies = await Promise.all(uids.map((uid) => getJSON(studyUrl(uid))));
  studies.sort((a, b) => String(b.study_date).localeCompare(String(a.study_date)));
  const tabs = $("shared-tabs");
  tabs.replaceChildren();
  for (const study of studies) {
    const label = `${formatDate(study.study_date)} ${(study.modalities || []).join("/")} ${study.study_description || ""}`;
    const tab = el("button", { type: "button", class: "chip", role: "tab", text: label.trim() });
    tab.addEventListener("click", () => choose(study, tab));
    tabs.append(tab);
  }
  tabs.hidden = studies.length < 2;
  if (studies.length) await choose(studies[0], tabs.children[0]);
}

async function choose(study, tab) {
  if (scope) scope.release();
  scope = new ImageScope();
  for (const other of $("shared-tabs").children) {
    other.setAttribute("aria-selected", String(other === tab));
  }
  await showStudy($("shared-body"), study.study_instance_uid, scope);
}

$("password-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await openLink($("link-password").value);
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 410)) return gone(err);
    const wrong = err instanceof ApiError && err.status === 401;
    $("password-message").textContent = wrong ? "密码错误 Wrong password." : describe(err);
    $("password-message").className = "message error";
  }
});

whenExpired((problem) => gone(problem));
window.addEventListener("pagehide", () => scope && scope.release());

async function start() {
  try {
    const status = await getJSON(`/api/share/${encodeURIComponent(linkToken)}`);
    if (status.password) {
      only("password");
      $("link-password").focus();
    } else {
      await openLink(null);
    }
  } catch (err) {
    gone(err);
  }
}

start();
