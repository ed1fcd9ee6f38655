// Shared by the video search page and the wall: sign-in (the viewer's token, kept per tab),
// the search filters as a query string, thumbnails fetched with the token, small formatters.

import { getJSON, offerSingleSignOn, setToken, signIn, takeToken } from "/viewer/static/api.js";

export const FILTERS = [
  "procedure", "diagnosis", "surgeon", "applicant", "hospitalId", "dateFrom", "dateTo",
  "minMinutes", "maxMinutes", "q", "cameraRole", "videoClass",
];
export const MAX_TILES = 64;
const TOKEN_KEY = "imaging-cloud-viewer-token";
const enc = encodeURIComponent;

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

export function bearer() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch (_) {
    return null;
  }
}

/** The filters present in `params` (URLSearchParams or FormData), as URLSearchParams. */
export function filtersFrom(params) {
  const out = new URLSearchParams();
  for (const name of FILTERS) {
    const value = params.get(name);
    if (value !== null && String(value).trim() !== "") out.set(name, String(value).trim());
  }
  return out;
}

/** Signed in (token from ?token=, #token= or this tab) and who: or the sign-in form until. */
export async function signedIn(form) {
  const given = takeToken(new URLSearchParams(location.search));
  if (given) setToken(given);
  try {
    return await getJSON("/api/auth/me");
  } catch (err) {
    if (err.status !== 401) throw err;
  }
  form.hidden = false;
  offerSingleSignOn(form.querySelector(".sso"));
  const message = form.querySelector(".message");
  return new Promise((resolve) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      try {
        await signIn(String(data.get("username")), String(data.get("password")));
        form.hidden = true;
        resolve(await getJSON("/api/auth/me"));
      } catch (err) {
        message.textContent = (err && (err.detail || err.title)) || "Sign-in failed 登录失败";
      }
    });
  });
}

export function signOut() {
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch (_) { /* nothing kept */ }
  setToken(null);
  location.reload();
}

/** POST …/media-url for a video summary: a URL a <video> can play for five minutes. */
export async function mediaUrl(video) {
  const headers = { Accept: "application/json" };
  const token = bearer();
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(`/viewer-api${video.renderedPath}/media-url`, { method: "POST", headers });
  if (!response.ok) throw new Error(`media-url: HTTP ${response.status}`);
  return (await response.json()).url;
}

const thumbQueue = [];
let thumbActive = 0;

/** Put the video's thumbnail into `img` (fetched with the token, shown as a blob: URL). */
export function loadThumbnail(video, img) {
  thumbQueue.push({ video, img });
  pumpThumbnails();
}

function pumpThumbnails() {
  while (thumbActive < 4 && thumbQueue.length) {
    const { video, img } = thumbQueue.shift();
    thumbActive++;
    const headers = { Accept: "image/jpeg" };
    const token = bearer();
    if (token) headers.Authorization = "Bearer " + token;
    fetch(`/dicom-web${video.renderedPath}/thumbnail`, { headers })
      .then((response) => (response.ok ? response.blob() : Promise.reject(response.status)))
      .then((blob) => {
        img.src = URL.createObjectURL(blob);
      })
      .catch(() => img.classList.add("broken"))
      .finally(() => {
        thumbActive--;
        pumpThumbnails();
      });
  }
}

/** "20260122" (DICOM DA) as "2026-01-22"; anything else unchanged. */
export function formatDate(value) {
  const text = String(value || "");
  return /^\d{8}$/.test(text) ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6)}` : text;
}

export function hospitalName(value) {
  if (!value) return "";
  if (typeof value === "string") return value;
  return value.name || value.hospitalId || value.id || "";
}

export function minutes(video) {
  if (video.operationMinutes !== null && video.operationMinutes !== undefined) return `${video.operationMinutes} min`;
  const seconds = Number(video.durationSeconds);
  if (!Number.isFinite(seconds) || seconds <= 0) return "";
  return seconds < 90 ? `${seconds.toFixed(1)} s` : `${Math.round(seconds / 60)} min`;
}

export function viewerLink(video) {
  return video.viewerUrl || `/viewer/?study=${enc(video.studyInstanceUid)}`;
}
