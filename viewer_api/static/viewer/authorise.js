// The workstation's authorisation page (/viewer/authorise.html?patient_id=…&visit=…, optional
// &token= from the HIS): a clinician asks the patient for access to their studies at other
// hospitals. POST /api/grant-requests gives a QR code the patient scans with their phone
// (/patient/authorise/<code>); the page polls GET /api/grant-requests/{id} every 2 s until the
// patient approves or declines, or the request expires.

import { getJSON, offerSingleSignOn, postJSON, setToken, signIn, takeToken } from "./api.js";

const POLL_MS = 2000;
const HOURS = new Set(["4", "24", "72"]);
const $ = (selector) => document.querySelector(selector);

const page = {
  patientId: "",
  visit: "",
  request: null, // the request being waited for: {id, expires_at, state, ...}
  timer: 0,
};

// --- small helpers ---------------------------------------------------------------------

function pad(n) {
  return String(n).padStart(2, "0");
}

/** An ISO instant as local "YYYY-MM-DD HH:MM" (the workstation's clock and zone). */
function localTime(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return String(iso || "");
  return (
    `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())} ` +
    `${pad(when.getHours())}:${pad(when.getMinutes())}`
  );
}

function show(id) {
  for (const section of ["ask", "waiting", "answer"]) $(`#${section}`).hidden = section !== id;
}

function showError(err, fallback) {
  const box = $("#error");
  box.querySelector(".title").textContent = (err && err.title) || fallback || "Error 错误";
  box.querySelector(".detail").textContent = (err && err.detail) || (err && err.message) || "";
  box.hidden = false;
}

function clearError() {
  $("#error").hidden = true;
}

function stopPolling() {
  clearTimeout(page.timer);
  page.timer = 0;
}

// --- signing in --------------------------------------------------------------------------

/** Show the sign-in form (and the hospital's single sign-on link when there is one); call
 * ``then`` once signed in. */
function askToSignIn(err, then) {
  const form = $("#sign-in");
  const message = form.querySelector(".sign-in-error");
  message.textContent = err && err.detail && !/sign in first/.test(err.detail) ? err.detail : "";
  form.hidden = false;
  offerSingleSignOn($("#sso"));
  form.querySelector("input[name=username]").focus();
  form.onsubmit = async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    let user;
    try {
      user = await signIn(String(data.get("username")), String(data.get("password")));
    } catch (failed) {
      message.textContent = (failed && (failed.detail || failed.title)) || "Sign-in failed 登录失败";
      return;
    }
    form.hidden = true;
    form.reset();
    showWho(user);
    then();
  };
}

function showWho(user) {
  const parts = [user && (user.username || user.name), user && user.hospital_id];
  $("#who").textContent = parts.filter(Boolean).join(" · ");
}

// --- the request -------------------------------------------------------------------------

function chosenHours() {
  const checked = document.querySelector("input[name=valid_hours]:checked");
  return checked && HOURS.has(checked.value) ? Number(checked.value) : 24;
}

function patientId() {
  if (page.patientId) return page.patientId;
  return $("#patient-id").value.trim();
}

async function requestAuthorisation() {
  const id = patientId();
  if (!id) {
    showError({ title: "No patient ID 未填写患者编号", detail: "enter the patient's ID number" });
    $("#patient-id").focus();
    return;
  }
  clearError();
  const button = $("#request");
  button.disabled = true;
  const body = { patient_id: id, valid_hours: chosenHours() };
  if (page.visit) body.visit = page.visit;
  let asked;
  try {
    asked = await postJSON("/api/grant-requests", body);
  } catch (err) {
    button.disabled = false;
    if (err && err.status === 401) {
      askToSignIn(err, requestAuthorisation);
      return;
    }
    showError(err, "Request failed 请求失败");
    return;
  }
  button.disabled = false;
  waitFor(asked);
}

function waitFor(asked) {
  stopPolling();
  page.request = asked;
  const qr = $("#qr");
  qr.src = asked.qr_png; // public while the request is pending; no token needed
  qr.dataset.requestId = String(asked.id);
  $("#waiting-status").textContent = "Waiting for the patient… 等待患者确认";
  $("#waiting-status").classList.remove("warn");
  $("#code-expiry").textContent =
    `The code works until ${localTime(asked.expires_at)}. 二维码有效至 ${localTime(asked.expires_at)}`;
  document.body.dataset.state = "pending";
  show("waiting");
  page.timer = setTimeout(poll, POLL_MS);
}

async function poll() {
  const asked = page.request;
  if (!asked) return;
  let found;
  try {
    found = await getJSON(`/api/grant-requests/${encodeURIComponent(asked.id)}`);
  } catch (err) {
    if (page.request !== asked) return;
    if (err && err.status === 401) {
      askToSignIn(err, () => {
        page.timer = setTimeout(poll, 0);
      });
      return;
    }
    if (err && err.status >= 400 && err.status < 500) {
      showError(err, "Request unknown 请求不存在");
      finish({ state: "unknown" });
      return;
    }
    const status = $("#waiting-status");
    status.textContent = "Connection problem, retrying… 网络异常，正在重试";
    status.classList.add("warn");
    page.timer = setTimeout(poll, POLL_MS);
    return;
  }
  if (page.request !== asked) return; // cancelled meanwhile
  if (found.state === "pending") {
    const status = $("#waiting-status");
    status.textContent = "Waiting for the patient… 等待患者确认";
    status.classList.remove("warn");
    page.timer = setTimeout(poll, POLL_MS);
    return;
  }
  finish(found);
}

function finish(found) {
  stopPolling();
  page.request = null;
  $("#qr").removeAttribute("src");
  const result = $("#result");
  const detail = $("#result-detail");
  const again = $("#again");
  result.className = "result";
  detail.textContent = "";
  document.body.dataset.state = found.state;
  if (found.state === "approved") {
    const until = found.grant_expires_at ? localTime(found.grant_expires_at) : "";
    result.classList.add("ok");
    result.textContent = until
      ? `Authorised until ${until} 已授权（至 ${until}）`
      : "Authorised 已授权";
    detail.textContent =
      "This hospital now sees the patient's studies from other hospitals. " +
      "本院现在可以查看该患者在其他医院的检查。";
    again.hidden = true;
  } else if (found.state === "declined") {
    result.classList.add("bad");
    result.textContent = "Declined 已拒绝";
    detail.textContent = "The patient declined the request. 患者拒绝了此授权请求。";
    again.hidden = false;
  } else if (found.state === "expired") {
    result.classList.add("bad");
    result.textContent = "Expired 已过期 — request again 请重新请求";
    detail.textContent = "The patient did not answer in time. 患者未在有效期内确认。";
    again.hidden = false;
  } else {
    result.classList.add("bad");
    result.textContent = "Not available 不可用";
    again.hidden = false;
  }
  show("answer");
}

function cancel() {
  stopPolling();
  page.request = null;
  $("#qr").removeAttribute("src");
  document.body.dataset.state = "";
  show("ask");
}

// --- start -------------------------------------------------------------------------------

function showAsk() {
  const shown = $("#patient-id-shown");
  const input = $("#patient-id");
  shown.textContent = page.patientId;
  shown.hidden = !page.patientId;
  input.hidden = Boolean(page.patientId);
  $("#visit").textContent = page.visit;
  $("#visit").hidden = $("#visit-label").hidden = !page.visit;
  show("ask");
}

async function start() {
  const params = new URLSearchParams(location.search);
  const given = takeToken(params);
  if (given) setToken(given);
  page.patientId = (params.get("patient_id") || "").trim().slice(0, 64);
  page.visit = (params.get("visit") || "").trim().slice(0, 64);
  $("#error .dismiss").addEventListener("click", clearError);
  $("#request").addEventListener("click", requestAuthorisation);
  $("#cancel").addEventListener("click", cancel);
  $("#again").addEventListener("click", () => {
    clearError();
    showAsk();
  });
  $("#qr").addEventListener("error", () => {
    if (page.request) $("#waiting-status").textContent = "The code could not be shown 二维码无法显示";
  });
  showAsk();
  if (!given) {
    askToSignIn(null, () => {});
    return;
  }
  try {
    showWho(await getJSON("/api/auth/me"));
  } catch (err) {
    if (err && err.status === 401) askToSignIn(err, () => {});
    else showError(err, "Not available 不可用");
  }
}

start();
