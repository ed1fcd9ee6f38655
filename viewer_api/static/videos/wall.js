// The multi-view wall (/videos/wall?videos=<sop>,… or ?<filters>&limit=N): up to 64 muted,
// looping videos in an automatic grid (1×1 … 8×8). Tiles load lazily: preload="none", and a
// tile asks for its media URL and plays only while it is on screen. A click enlarges a tile;
// the enlarged tile links to the viewer.

import { getJSON } from "/viewer/static/api.js";
import { el, filtersFrom, hospitalName, MAX_TILES, mediaUrl, signedIn, viewerLink } from "./common.js";

const $ = (selector) => document.querySelector(selector);
const wall = (window.videoWall = { tiles: [], refused: "" });

function refuse(text) {
  wall.refused = text;
  const box = $("#wall-message");
  box.textContent = text;
  box.hidden = false;
  document.body.classList.add("ready");
}

/** Columns × rows for n tiles: the smallest square-ish grid holding them (≤ 8×8). */
export function gridFor(n) {
  const columns = Math.min(8, Math.max(1, Math.ceil(Math.sqrt(n))));
  return { columns, rows: Math.max(1, Math.ceil(n / columns)) };
}

async function summaries(params) {
  const listed = (params.get("videos") || "").split(",").map((s) => s.trim()).filter(Boolean);
  if (listed.length) {
    if (listed.length > MAX_TILES) {
      throw new RangeError(`${listed.length} videos were asked for; the wall shows at most ${MAX_TILES}. 多画面最多显示 ${MAX_TILES} 个视频（请求了 ${listed.length} 个）。`);
    }
    const found = new Array(listed.length);
    let next = 0;
    const worker = async () => {
      while (next < listed.length) {
        const i = next++;
        try {
          found[i] = (await getJSON(`/api/videos/${encodeURIComponent(listed[i])}`)).video;
        } catch (err) {
          found[i] = { sopInstanceUid: listed[i], missing: err.detail || err.title || "not found" };
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    return found;
  }
  const limit = Number(params.get("limit") || 16);
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_TILES) {
    throw new RangeError(`limit must be 1 to ${MAX_TILES}; it is ${params.get("limit")}. 多画面最多显示 ${MAX_TILES} 个视频。`);
  }
  const query = filtersFrom(params);
  query.set("limit", String(limit));
  const answer = await getJSON(`/api/videos?${query}`);
  return (answer.videos || []).slice(0, MAX_TILES);
}

function tile(video) {
  const box = el("figure", "tile");
  box.dataset.sop = video.sopInstanceUid;
  if (video.missing) {
    box.classList.add("missing");
    box.append(el("figcaption", "", `${video.sopInstanceUid}: ${video.missing}`));
    return { box, video, element: null };
  }
  const player = el("video");
  player.muted = true;
  player.loop = true;
  player.playsInline = true;
  player.preload = "none";
  player.setAttribute("muted", "");
  const caption = el("figcaption");
  caption.append(
    el("b", "", video.procedure || "–"),
    el("span", "", [hospitalName(video.hospital), video.cameraRole].filter(Boolean).join(" · ")),
    el("span", "", video.surgeon || ""),
  );
  const open = el("a", "open", "Open in viewer 在浏览器中打开 ↗");
  open.href = viewerLink(video);
  box.append(player, caption, open);
  const entry = { box, video, element: player, visible: false, loading: null, refreshes: 0 };
  box.addEventListener("click", (event) => {
    if (event.target === open) return;
    const enlarged = !box.classList.contains("enlarged");
    for (const other of document.querySelectorAll(".tile.enlarged")) other.classList.remove("enlarged");
    box.classList.toggle("enlarged", enlarged);
    document.body.classList.toggle("has-enlarged", enlarged);
  });
  player.addEventListener("error", () => {
    if (!player.getAttribute("src") || entry.refreshes >= 3) return;
    entry.refreshes++;
    const at = player.currentTime;
    player.removeAttribute("src");
    attach(entry, at);
  });
  return entry;
}

async function attach(entry, at = 0) {
  if (entry.loading) return entry.loading;
  entry.loading = (async () => {
    try {
      const url = await mediaUrl(entry.video);
      if (at) entry.element.addEventListener("loadedmetadata", () => (entry.element.currentTime = at), { once: true });
      entry.element.src = url;
      if (entry.visible) await entry.element.play().catch(() => {});
    } catch (err) {
      entry.box.classList.add("failed");
      entry.box.title = String(err.message || err);
    } finally {
      entry.loading = null;
    }
  })();
  return entry.loading;
}

function watch(entries) {
  const observer = new IntersectionObserver((changes) => {
    for (const change of changes) {
      const entry = entries.find((e) => e.box === change.target);
      if (!entry || !entry.element) continue;
      entry.visible = change.isIntersecting;
      if (!entry.visible) entry.element.pause();
      else if (!entry.element.getAttribute("src")) attach(entry);
      else entry.element.play().catch(() => {});
    }
  }, { threshold: 0.1 });
  for (const entry of entries) observer.observe(entry.box);
}

async function start() {
  const me = await signedIn($("#sign-in"));
  $("#who").textContent = me.username || me.name || "";
  let videos;
  try {
    videos = await summaries(new URLSearchParams(location.search));
  } catch (err) {
    refuse(err instanceof RangeError ? err.message : `${err.title || "Error 错误"}: ${err.detail || err.message || ""}`);
    return;
  }
  if (!videos.length) {
    refuse("No videos to show 无视频可显示");
    return;
  }
  const { columns, rows } = gridFor(videos.length);
  const grid = $("#wall");
  grid.style.gridTemplateColumns = `repeat(${columns}, minmax(0, 1fr))`;
  grid.style.gridTemplateRows = `repeat(${rows}, minmax(0, 1fr))`;
  grid.dataset.grid = `${columns}x${rows}`;
  $("#wall-count").textContent = `${videos.length} · ${columns}×${rows}`;
  wall.tiles = videos.map(tile);
  for (const entry of wall.tiles) grid.appendChild(entry.box);
  watch(wall.tiles);
  document.body.classList.add("ready");
}

start().catch((err) => refuse(`${err.title || "Error 错误"}: ${err.detail || err.message || ""}`));
