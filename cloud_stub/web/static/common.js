// Shared by the dashboard pages: the JSON API (same as scripts use), header, formatting.
"use strict";
const egw = { points: 0 };
async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (r.status === 401) { location.href = "/login"; throw new Error("not logged in"); }
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}
function fmtTime(ms) {
  if (ms === null || ms === undefined) return "-";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z";
}
function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 90 ? s + " s ago" : s < 5400 ? Math.round(s / 60) + " min ago" : fmtTime(ms);
}
function fmtVal(v) {
  return typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : v;
}
function esc(v) {
  return String(v === null || v === undefined ? "-" : v).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function table(el, cols, rows) {
  const head = "<tr>" + cols.map((c) => "<th>" + esc(c[0]) + "</th>").join("") + "</tr>";
  const body = rows.map((r) => "<tr>" + cols.map((c) => "<td>" + c[1](r) + "</td>").join("") +
    "</tr>").join("");
  el.innerHTML = "<table>" + head + body + "</table>";
}
async function header(here) {
  const me = await api("/api/v1/me");
  const links = [["/", "Fleet"], ["/alerts", "Alerts"], ["/gaps", "Gaps"], ["/commands", "Commands"]];
  document.querySelector("header").innerHTML = "<strong>edgegw cloud</strong>" +
    links.map(([h, t]) => '<a href="' + h + '"' + (h === here ? ' class="here"' : "") + ">" + t +
      "</a>").join("") +
    '<span class="who">' + esc(me.name) + " (" + esc(me.role) + ')<form method="post" ' +
    'action="/logout"><button>log out</button></form></span>';
  return me;
}
