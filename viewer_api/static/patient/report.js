// A study's report as the patient's page, the share page and the printable page show it: the
// fields the Chongqing spec lists, findings and impression each with a "copy" button that
// cites them (the server records who copied what and returns a citation ID that travels with
// the pasted text), and a print button. GET/POST /api/studies/<uid>/report[/cite].

import { ApiError, describe, el, formatDate, getJSON, postJSON } from "./api.js";

const enc = encodeURIComponent;
const PARTS = {
  findings: { title: "影像表现 Findings", copy: "复制影像表现 Copy findings" },
  impression: { title: "诊断意见 Impression", copy: "复制诊断意见 Copy impression" },
};
const SEX = { M: "男 M", F: "女 F", O: "其他 O" };
const AGE_UNITS = { D: ["天", "d"], W: ["周", "w"], M: ["月", "mo"], Y: ["岁", "y"] };

export function reportUrl(study) {
  return `/api/studies/${enc(study)}/report`;
}

/** DICOM AS ("045Y") as "45岁 45 y". */
export function formatAge(as) {
  const found = /^(\d{3})([DWMY])$/.exec(as || "");
  if (!found) return "";
  const n = Number(found[1]);
  const [zh, en] = AGE_UNITS[found[2]];
  return `${n}${zh} ${n} ${en}`;
}

function formatTimeOfDay(tm) {
  const t = String(tm || "");
  return t.length >= 4 ? `${t.slice(0, 2)}:${t.slice(2, 4)}` : "";
}

function field(name, label, value) {
  return el("div", { class: "report-field", "data-field": name },
    el("span", { class: "report-label", text: label }),
    el("span", { class: "report-value", text: value || "—" }));
}

function fields(report) {
  const patient = report.patient || {};
  const shown = [];
  if (!report.anonymised) shown.push(field("patient-name", "姓名 Name", patient.name));
  shown.push(
    field("sex", "性别 Sex", SEX[patient.sex] || patient.sex),
    field("age", "年龄 Age", formatAge(patient.age)));
  if (!report.anonymised) shown.push(field("exam-number", "检查号 Exam no.", report.examNumber));
  shown.push(
    field("exam-type", "检查类型 Type", report.examType),
    field("body-part", "检查部位 Body part", report.bodyPart),
    field("exam-name", "检查项目 Exam", report.examName),
    field("request-date", "申请日期 Requested", report.requestDate && formatDate(report.requestDate)),
    field("exam-date", "检查日期 Examined", report.examDate && formatDate(report.examDate)),
    field("report-date", "报告日期 Reported",
      report.reportDate && `${formatDate(report.reportDate)} ${formatTimeOfDay(report.reportTime)}`.trim()));
  return el("div", { class: "report-grid" }, ...shown);
}

/** Cite `part` of the report: copy the text with its citation ID, and say which ID. */
async function copyPart(studyUid, part, status, spare) {
  status.className = "citation";
  status.textContent = "…";
  let cited;
  try {
    cited = await postJSON(`${reportUrl(studyUid)}/cite`, { field: part });
  } catch (err) {
    status.className = "citation error";
    status.textContent = describe(err);
    return;
  }
  let copied = false;
  try {
    await navigator.clipboard.writeText(cited.quote);
    copied = true;
  } catch (_) { /* no clipboard here (permission, http): show the text to copy by hand */ }
  status.dataset.citation = cited.citationId;
  status.textContent = `${copied ? "已复制 Copied" : "请手动复制 Copy it below"} · `
    + `引用编号 Citation ID ${cited.citationId}`;
  spare.hidden = copied;
  spare.value = cited.quote;
  if (!copied) spare.select();
}

/** The report as a card; `studyUid` enables the copy buttons, `onPrint` the print button. */
export function reportCard(report, studyUid, { onPrint } = {}) {
  const final = report.status === "final";
  const hospital = (report.hospital && report.hospital.name) || "";
  const status = el("p", { class: "citation", role: "status", "aria-live": "polite" });
  const spare = el("textarea", { class: "citation-text", readonly: true, rows: "4",
                                 "aria-label": "引用文本 Cited text", hidden: true });
  const parts = Object.entries(PARTS).map(([part, words]) => {
    const text = report[part] || "";
    const section = el("section", { class: "report-part", "data-part": part },
      el("h4", { text: words.title }),
      el("p", { class: "report-text", text: text || "—" }));
    if (studyUid && text) {
      const button = el("button", { type: "button", class: "copy", "data-copy": part,
                                    text: words.copy });
      button.addEventListener("click", () => copyPart(studyUid, part, status, spare));
      section.append(button);
    }
    return section;
  });
  const signs = [
    field("reporting-physician", "报告医生 Reported by", report.reportingPhysician),
    field("reviewing-physician", "审核医生 Reviewed by", report.reviewingPhysician),
  ].filter(() => !report.anonymised);
  const card = el("article", { class: `report-card ${final ? "final" : "draft"}`,
                               "data-status": report.status, "data-version": report.version },
    el("header", { class: "report-head" },
      el("h3", { text: `${hospital} 影像诊断报告`.trim() }),
      el("p", { class: "report-sub",
                text: `Imaging report · ${final ? "已审核 Final" : "草稿 Draft (未审核)"}`
                  + ` · v${report.version}` })),
    fields(report),
    ...parts,
    signs.length ? el("footer", { class: "report-signs" }, ...signs) : null,
    status, spare);
  if (onPrint) {
    const print = el("button", { type: "button", class: "print", text: "打印报告 Print" });
    print.addEventListener("click", onPrint);
    card.append(el("div", { class: "report-actions" }, print));
  }
  return card;
}

/** The report section under a study's images: loads the report, or says it is not out yet. */
export function reportSection(studyUid) {
  const body = el("p", { class: "muted", text: "加载中 Loading…" });
  const section = el("section", { class: "report", "aria-label": "Report 报告" },
    el("h3", { text: "报告 Report" }), body);
  getJSON(reportUrl(studyUid)).then(
    (report) => body.replaceWith(reportCard(report, studyUid, { onPrint: () => window.print() })),
    (err) => {
      const missing = err instanceof ApiError && err.status === 404;
      body.className = missing ? "muted report-missing" : "message error";
      body.textContent = missing ? "报告暂未出具 Report: not yet available" : describe(err);
    });
  return section;
}
