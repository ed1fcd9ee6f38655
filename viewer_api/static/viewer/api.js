// HTTP access for the viewer: the /viewer-api contract (docs/viewer-contract.md), the bearer
// token, problem+json errors, and a loader/cache of rendered images as decoded blob: URLs.

const TOKEN_KEY = "imaging-cloud-viewer-token";

export const stats = (window.viewerStats = window.viewerStats || {
  requests: 0,        // image requests sent
  imagesShown: 0,     // images put on screen
  cacheHits: 0,
  cineFps: 0,         // frames shown per second during the last cine run
  cineFrames: 0,
  lastImageUrl: "",
  errors: 0,
});

function rememberToken(value) {
  try {
    sessionStorage.setItem(TOKEN_KEY, value);
  } catch (_) { /* storage may be disabled; the token still works for this page */ }
}

/** The token from `?token=` (an HIS embedding) or `#token=` (a single sign-on redirect), kept
 * for this tab and taken out of the address bar, else the one this tab already has. */
export function takeToken(params) {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const given = params.get("token") || fragment.get("token");
  if (given) {
    rememberToken(given);
    params.delete("token");
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
    return given;
  }
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch (_) {
    return null;
  }
}

let token = null;
export function setToken(value) {
  token = value || null;
}

/** Sign in with a username and password (POST /api/auth/token); keeps the token for the tab. */
export async function signIn(username, password) {
  const response = await send("/api/auth/token", {
    method: "POST",
    headers: { Accept: "application/json" },
    body: new URLSearchParams({ username, password }),
  });
  const body = await response.json();
  rememberToken(body.access_token);
  setToken(body.access_token);
  return body.user;
}

let methods = null;

/** How staff may sign in here (GET /api/auth/methods, public); password only when unknown. */
export function signInMethods() {
  if (!methods) {
    methods = fetch("/api/auth/methods", { headers: { Accept: "application/json" } })
      .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
      .catch(() => {
        methods = null; // ask again next time
        return { password: true, oidc: false, oidc_login: null };
      });
  }
  return methods;
}

/** Show ``link`` (an <a hidden>) as the hospital's single sign-on when one is configured. The
 * provider sends the browser back to this page with #token=, which takeToken reads. */
export async function offerSingleSignOn(link) {
  const found = await signInMethods();
  link.dataset.methods = found.oidc && found.oidc_login ? "password oidc" : "password";
  if (!found.oidc || !found.oidc_login) {
    link.hidden = true;
    return;
  }
  const next = location.pathname + location.search;
  link.href = `${found.oidc_login}?next=${encodeURIComponent(next)}`;
  link.hidden = false;
}

function headers(extra) {
  const result = { ...(extra || {}) };
  if (token) result.Authorization = "Bearer " + token;
  return result;
}

export class ApiError extends Error {
  constructor(status, title, detail, url) {
    super(detail || title || `HTTP ${status}`);
    this.status = status;
    this.title = title || `HTTP ${status}`;
    this.detail = detail || "";
    this.url = url;
  }
}

async function problemOf(response, url) {
  let title = `HTTP ${response.status} ${response.statusText || ""}`.trim();
  let detail = "";
  try {
    const type = response.headers.get("content-type") || "";
    if (type.includes("json")) {
      const body = await response.json();
      title = body.title || title;
      detail = body.detail || "";
    } else {
      detail = (await response.text()).slice(0, 300);
    }
  } catch (_) { /* keep the status line */ }
  return new ApiError(response.status, title, detail, url);
}

async function send(url, init) {
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError(0, "Network error 网络错误", `${url}: ${err && err.message}`, url);
  }
  if (!response.ok) throw await problemOf(response, url);
  return response;
}

export async function getJSON(url, signal) {
  const response = await send(url, { headers: headers({ Accept: "application/json" }), signal });
  return response.json();
}

export async function postJSON(url, body) {
  const response = await send(url, {
    method: "POST",
    headers: headers({ Accept: "application/json", "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
  return response.json();
}

const enc = encodeURIComponent;
export const API = "/viewer-api";

export function studyUrl(study) {
  return `${API}/studies/${enc(study)}`;
}
export function seriesUrl(study, series) {
  return `${studyUrl(study)}/series/${enc(series)}`;
}
export function frameUrl(study, series, sop, frame, query) {
  return `${seriesUrl(study, series)}/instances/${enc(sop)}/frames/${frame}/rendered` + qs(query);
}
export function mprUrl(study, series, query) {
  return `${seriesUrl(study, series)}/mpr` + qs(query);
}
export function fusionUrl(study, series, query) {
  return `${seriesUrl(study, series)}/fusion` + qs(query);
}
export function metadataUrl(study, series) {
  return `/dicom-web/studies/${enc(study)}/series/${enc(series)}/metadata`;
}

/** A query string from an object, skipping null/undefined/false values, in insertion order. */
export function qs(query) {
  const parts = [];
  for (const [key, value] of Object.entries(query || {})) {
    if (value === null || value === undefined || value === false || value === "") continue;
    parts.push(`${enc(key)}=${String(value).replace(/[^A-Za-z0-9.,_\-]/g, (c) => enc(c))}`);
  }
  return parts.length ? "?" + parts.join("&") : "";
}

// ---------------------------------------------------------------------------------------
// Images: fetched (so the bearer token goes along), decoded once, kept as blob: URLs.

class ImageEntry {
  constructor(url) {
    this.url = url;
    this.objectUrl = null;
    this.headers = {};
    this.width = 0;
    this.height = 0;
    this.bytes = 0;
    this.uses = 0;
    this.error = null;
  }
}

const MAX_ENTRIES = 600;
const MAX_BYTES = 96 * 1024 * 1024;
const PREFETCH_CONCURRENCY = 4;

class ImageLoader {
  constructor() {
    this.ready = new Map();      // url -> ImageEntry, in LRU order (oldest first)
    this.pending = new Map();    // url -> Promise<ImageEntry>
    this.queue = [];             // prefetch jobs {url, owner, resolve, reject}
    this.active = 0;
    this.bytes = 0;
  }

  peek(url) {
    const entry = this.ready.get(url);
    if (entry) {
      this.ready.delete(url);
      this.ready.set(url, entry);
    }
    return entry || null;
  }

  /** Load now (the user waits for it). */
  load(url, signal) {
    const hit = this.peek(url);
    if (hit) {
      stats.cacheHits++;
      return Promise.resolve(hit);
    }
    const queued = this.queue.findIndex((job) => job.url === url);
    if (queued >= 0) {
      const [job] = this.queue.splice(queued, 1);
      this._start(job);
    }
    if (this.pending.has(url)) return this.pending.get(url);
    return this._fetch(url, signal);
  }

  /** Load when a slot is free, unless cancelled with cancel(owner) first. */
  prefetch(url, owner) {
    if (this.ready.has(url) || this.pending.has(url)) return;
    if (this.queue.some((job) => job.url === url)) return;
    this.queue.push({ url, owner });
    this._pump();
  }

  cancel(owner) {
    this.queue = this.queue.filter((job) => job.owner !== owner);
  }

  _pump() {
    while (this.active < PREFETCH_CONCURRENCY && this.queue.length) {
      this._start(this.queue.shift());
    }
  }

  _start(job) {
    if (this.pending.has(job.url) || this.ready.has(job.url)) return;
    this.active++;
    this._fetch(job.url)
      .catch(() => null)
      .finally(() => {
        this.active--;
        this._pump();
      });
  }

  _fetch(url, signal) {
    const promise = (async () => {
      stats.requests++;
      const response = await send(url, { headers: headers({ Accept: "image/jpeg" }), signal });
      const blob = await response.blob();
      const entry = new ImageEntry(url);
      entry.headers = {
        window: response.headers.get("X-Window"),
        geometry: response.headers.get("X-MPR-Geometry"),
        overlayWindow: response.headers.get("X-Overlay-Window"),
      };
      entry.objectUrl = URL.createObjectURL(blob);
      entry.bytes = blob.size;
      const probe = new Image();
      probe.src = entry.objectUrl;
      try {
        await probe.decode();
      } catch (_) {
        URL.revokeObjectURL(entry.objectUrl);
        throw new ApiError(0, "Bad image 图像无法解码", url, url);
      }
      entry.width = probe.naturalWidth;
      entry.height = probe.naturalHeight;
      entry.probe = probe; // keeps the decoded bitmap alive for instant display
      this._add(entry);
      return entry;
    })();
    this.pending.set(url, promise);
    promise.then(
      () => this.pending.delete(url),
      () => this.pending.delete(url),
    );
    return promise;
  }

  _add(entry) {
    this.ready.set(entry.url, entry);
    this.bytes += entry.bytes;
    if (this.ready.size <= MAX_ENTRIES && this.bytes <= MAX_BYTES) return;
    for (const [url, old] of this.ready) {
      if (this.ready.size <= MAX_ENTRIES && this.bytes <= MAX_BYTES) break;
      if (old.uses > 0 || old === entry) continue;
      this.ready.delete(url);
      this.bytes -= old.bytes;
      URL.revokeObjectURL(old.objectUrl);
      old.probe = null;
    }
  }
}

export const images = new ImageLoader();
