// HTTP for the patient's pages and the share page. The access token lives in this module's
// memory only (never localStorage, sessionStorage, cookies or IndexedDB): closing or reloading
// the page forgets it. Images arrive through fetch() with the token and are shown as blob:
// URLs, which each view revokes when it is left.

let token = null;
let onExpired = null;

export function setToken(value) {
  token = value || null;
}

export function hasToken() {
  return token !== null;
}

/** Called once when a request is refused with 401 while a token is held (it expired, or the
 * share link was revoked). */
export function whenExpired(callback) {
  onExpired = callback;
}

export class ApiError extends Error {
  constructor(status, title, detail, retryAfter) {
    super(detail || title || `HTTP ${status}`);
    this.status = status;
    this.title = title || `HTTP ${status}`;
    this.detail = detail || "";
    this.retryAfter = retryAfter || null;
  }
}

async function problemOf(response) {
  let title = `HTTP ${response.status}`;
  let detail = "";
  try {
    const body = await response.json();
    title = body.title || title;
    detail = body.detail || "";
  } catch (_) { /* not problem+json: keep the status line */ }
  return new ApiError(response.status, title, detail, response.headers.get("retry-after"));
}

async function send(url, init) {
  const headers = { Accept: "application/json", ...((init && init.headers) || {}) };
  if (token) headers.Authorization = "Bearer " + token;
  let response;
  try {
    // credentials "omit": nothing of the browser's own (cookies) goes along or comes back.
    response = await fetch(url, { ...init, headers, credentials: "omit", cache: "no-store" });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError(0, "Network error 网络错误", String(err && err.message));
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    if (response.status === 401 && token && onExpired) {
      token = null;
      onExpired(problem);
    }
    throw problem;
  }
  return response;
}

export async function getJSON(url) {
  return (await send(url)).json();
}

export async function postJSON(url, body) {
  const response = await send(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  return response.json();
}

export async function deleteJSON(url) {
  return (await send(url, { method: "DELETE" })).json();
}

const enc = encodeURIComponent;

export function studyUrl(study) {
  return `/viewer-api/studies/${enc(study)}`;
}

export function frameUrl(study, series, sop, frame, size) {
  const query = size ? `?size=${size},${size}` : "";
  return `${studyUrl(study)}/series/${enc(series)}/instances/${enc(sop)}/frames/${frame}/rendered${query}`;
}

/** Rendered images of one view as blob: URLs; `release()` revokes them all. */
export class ImageScope {
  constructor() {
    this.urls = new Map(); // request URL -> Promise<blob: URL>
    this.released = false;
  }

  image(url) {
    if (this.released) return Promise.reject(new Error("view closed"));
    if (!this.urls.has(url)) {
      const loading = send(url, { headers: { Accept: "image/jpeg" } })
        .then((response) => response.blob())
        .then((blob) => {
          const objectUrl = URL.createObjectURL(blob);
          if (this.released) URL.revokeObjectURL(objectUrl);
          return objectUrl;
        });
      loading.catch(() => this.urls.delete(url));
      this.urls.set(url, loading);
    }
    return this.urls.get(url);
  }

  release() {
    this.released = true;
    for (const loading of this.urls.values()) {
      loading.then((objectUrl) => URL.revokeObjectURL(objectUrl), () => {});
    }
    this.urls.clear();
  }
}

/** Show a blob: image in `img` once loaded; errors leave the img marked. */
export async function showImage(scope, img, url) {
  img.dataset.want = url; // a later call wins over an earlier, slower answer
  try {
    const objectUrl = await scope.image(url);
    if (img.dataset.want !== url) return;
    img.src = objectUrl;
    img.dataset.src = url;
    img.classList.remove("failed");
  } catch (err) {
    if (err && err.message === "view closed") return;
    img.classList.add("failed");
    img.alt = err instanceof ApiError ? err.detail || err.title : "image failed 图像加载失败";
  }
}

export function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

export function formatDate(dicomDate) {
  const d = String(dicomDate || "");
  return d.length === 8 ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6, 8)}` : d || "—";
}

export function formatTime(iso) {
  const moment = new Date(iso);
  if (Number.isNaN(moment.getTime())) return iso || "";
  return moment.toLocaleString("zh-CN", { hour12: false });
}

/** A readable message for an API error (the server's details are bilingual already). */
export function describe(err) {
  if (err instanceof ApiError) {
    if (err.status === 429) {
      const wait = err.retryAfter ? ` ${err.retryAfter} s` : "";
      return `尝试次数过多，请稍后再试 Too many attempts; try again in${wait || " a while"}.`;
    }
    return err.detail || err.title;
  }
  return String((err && err.message) || err);
}
