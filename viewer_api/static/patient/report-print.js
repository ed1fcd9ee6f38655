// The printable report, /report/<study>: the report card on an A4 page with the report's QR
// code. Staff open it from the viewer; the token comes from #token= (or ?token=) or from the
// viewer's token in this browser tab, and stays in memory.

import { ApiError, describe, el, getJSON, setToken } from "./api.js";
import { reportCard, reportUrl } from "./report.js";

const VIEWER_TOKEN = "imaging-cloud-viewer-token"; // what viewer/api.js keeps per tab
const $ = (id) => document.getElementById(id);
const study = decodeURIComponent(location.pathname.split("/")[2] || "");

function takeToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const given = fragment.get("token") || new URLSearchParams(location.search).get("token");
  if (given) {
    history.replaceState(null, "", location.pathname); // not left in the address bar
    return given;
  }
  try {
    return sessionStorage.getItem(VIEWER_TOKEN);
  } catch (_) {
    return null;
  }
}

async function showQr() {
  // The QR code of /r/<ref> (no UID printed): with the token, so fetched, then a blob: URL.
  const response = await fetch(`/api/studies/${encodeURIComponent(study)}/report-qr.svg`, {
    headers: { Authorization: `Bearer ${token}` }, credentials: "omit", cache: "no-store",
  });
  if (!response.ok) return;
  $("report-qr-image").src = URL.createObjectURL(await response.blob());
  $("report-qr").hidden = false;
}

const token = takeToken();

async function start() {
  if (!token) {
    $("report-body").replaceChildren(el("p", { class: "message error",
      text: "请先在影像浏览器中登录 Sign in in the viewer first, then open the report from there." }));
    return;
  }
  setToken(token);
  try {
    const report = await getJSON(reportUrl(study));
    $("report-body").replaceChildren(reportCard(report, study));
    document.title = `${report.hospital?.name || ""} 影像诊断报告 Imaging report`.trim();
    $("printed-at").textContent = `打印时间 Printed ${new Date().toLocaleString("zh-CN", { hour12: false })}`
      + " · 引用请注明引用编号 Cite with the citation ID";
    $("print").disabled = false;
    document.body.dataset.ready = "true";
    showQr().catch(() => {});
  } catch (err) {
    const missing = err instanceof ApiError && err.status === 404;
    $("report-body").replaceChildren(el("p", { class: missing ? "muted" : "message error",
      text: missing ? "报告暂未出具 Report: not yet available" : describe(err) }));
    document.body.dataset.ready = "error";
  }
}

$("print").addEventListener("click", () => window.print());
start();
