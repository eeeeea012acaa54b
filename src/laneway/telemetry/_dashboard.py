"""The live dashboard: one self-contained page (inline CSS and JS) polling `/admin/stats`.

The page itself holds no figures, so it is served to anyone who reaches the gateway; the figures
come from `/admin/stats`, which needs the admin key where one is set. A browser sends no bearer
header when it opens a page, so the page asks for the key (or takes it from `#key=...` in its
address, which never leaves the browser), keeps it for the tab's session, and sends it with every poll.
"""

from __future__ import annotations

STATS_PATH = "/admin/stats"
POLL_MS = 2000

# Cells carry `data-model` and `data-field`, so the page can be checked against `stats()`.
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Laneway dashboard</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2733; background: #f6f7f9; }
  h1 { font-size: 1.3rem; margin: 0 0 .5rem; }
  .banner { background: #fff4ce; border: 1px solid #e0c060; padding: .5rem .8rem; margin: .5rem 0; }
  .banner[hidden] { display: none; }
  .tiles { display: flex; gap: 1rem; margin: 1rem 0; flex-wrap: wrap; }
  .tile { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: .6rem 1rem;
          min-width: 9rem; }
  .tile b { display: block; font-size: 1.4rem; }
  table { border-collapse: collapse; background: #fff; width: 100%; }
  th, td { border-bottom: 1px solid #e4e7eb; padding: .35rem .6rem; text-align: right; white-space: nowrap; }
  th:first-child, td:first-child { text-align: left; }
  .bar { display: inline-block; height: .7rem; background: #4a7bd0; vertical-align: middle;
         margin-right: .4rem; }
  .bad { color: #b3261e; }
  #status { color: #5b6675; font-size: .85rem; }
</style>
</head>
<body>
<h1>Laneway</h1>
<div id="simulated" class="banner" __SIMULATED_HIDDEN__>Simulated fleet: these numbers come from the
simulated fleet, not from real providers.</div>
<div class="tiles">
  <div class="tile">requests<b id="total-requests">-</b></div>
  <div class="tile">cost (USD)<b id="total-cost">-</b></div>
  <div class="tile">cost / conversation<b id="total-cost-per-conversation">-</b></div>
  <div class="tile">errors<b id="total-errors">-</b></div>
  <div class="tile">fallbacks<b id="total-fallbacks">-</b></div>
</div>
<table>
  <thead><tr><th>model</th><th>traffic share</th><th>requests</th><th>p50 ms</th><th>p95 ms</th>
  <th>p99 ms</th><th>TTFT p95 ms</th><th>errors</th><th>error rate</th><th>fallbacks</th>
  <th title="attempts at this model that failed, whichever model answered in the end">failed attempts</th>
  <th>cost USD</th><th>cost / conversation</th></tr></thead>
  <tbody id="models"></tbody>
</table>
<form id="login" hidden>
  <label>This gateway's figures need its admin key:
  <input id="key" type="password" autocomplete="current-password" size="40"></label>
  <button type="submit">Show figures</button>
</form>
<p id="status">waiting for the first poll of <code>__STATS_PATH__</code></p>
<script>
"use strict";
const FIELDS = [
  ["share", v => pct(v)], ["requests", v => String(v)], ["p50_ms", v => fixed(v, 1)],
  ["p95_ms", v => fixed(v, 1)], ["p99_ms", v => fixed(v, 1)], ["ttft_p95_ms", v => fixed(v, 1)],
  ["errors", v => String(v)], ["error_rate", v => pct(v)], ["fallbacks", v => String(v)],
  ["failed_attempts", v => String(v)],
  ["cost_usd", v => fixed(v, 4)], ["cost_per_conversation_usd", v => fixed(v, 6)],
];
const BAD_SHARE = 0.05;  // of a model's error rate, and of its attempts that failed
const LATE_S = 60;  // a worker started this much after the first one was replaced
function fixed(v, digits) { return v === null || v === undefined ? "-" : v.toFixed(digits); }
function pct(v) { return v === null || v === undefined ? "-" : (v * 100).toFixed(1) + "%"; }
function cell(model, field, text) {
  const td = document.createElement("td");
  td.dataset.model = model; td.dataset.field = field; td.textContent = text;
  return td;
}
function render(stats) {
  const total = stats.total;
  document.getElementById("simulated").hidden = !stats.simulated;
  document.getElementById("total-requests").textContent = String(total.requests);
  document.getElementById("total-cost").textContent = fixed(total.cost_usd, 4);
  document.getElementById("total-cost-per-conversation").textContent =
    fixed(total.cost_per_conversation_usd, 6);
  document.getElementById("total-errors").textContent = String(total.errors);
  document.getElementById("total-fallbacks").textContent = String(total.fallbacks);
  const body = document.getElementById("models");
  body.replaceChildren();
  for (const [model, figures] of Object.entries(stats.models)) {
    const row = document.createElement("tr");
    row.dataset.model = model;
    const name = cell(model, "model", "");
    const bar = document.createElement("span");
    bar.className = "bar"; bar.style.width = Math.round((figures.share || 0) * 120) + "px";
    name.append(bar, model);
    row.append(name);
    for (const [field, format] of FIELDS) {
      const td = cell(model, field, format(figures[field]));
      if (field === "error_rate" && figures.error_rate > BAD_SHARE) td.className = "bad";
      // A model behind fallbacks answers nothing when it fails every call: its failed attempts say so.
      const tried = figures.requests + figures.failed_attempts;
      if (field === "failed_attempts" && tried && figures.failed_attempts / tried > BAD_SHARE) td.className = "bad";
      row.append(td);
    }
    body.append(row);
  }
  const workers = stats.workers;
  const missing = workers ? workers.count - workers.answered.length : 0;
  const starts = workers ? Object.entries(workers.started_at) : [];
  const first = Math.min(...starts.map(([, at]) => at));
  const late = starts.filter(([, at]) => at - first > LATE_S)
    .map(([index, at]) => "worker " + index + " since " + new Date(at * 1000).toLocaleTimeString());
  document.getElementById("status").textContent =
    "updated " + new Date().toLocaleTimeString() + " - every __POLL_S__ s from __STATS_PATH__" +
    (workers ? " - " + workers.answered.length + " of " + workers.count + " workers" : "") +
    (missing > 0 ? " (the others did not answer: their requests are missing)" : "") +
    (late.length ? " - restarted: " + late.join(", ") + " (what they served before is not in these figures)" : "");
  document.getElementById("status").className = missing > 0 || late.length ? "bad" : "";
}
const KEY = "laneway-admin-key";
const given = new URLSearchParams(location.hash.slice(1)).get("key");
if (given) {
  sessionStorage.setItem(KEY, given);
  history.replaceState(null, "", location.pathname + location.search);  // the key leaves the address bar
}
document.getElementById("login").addEventListener("submit", event => {
  event.preventDefault();
  sessionStorage.setItem(KEY, document.getElementById("key").value);
  poll();
});
async function poll() {
  const status = document.getElementById("status");
  const key = sessionStorage.getItem(KEY);
  try {
    const response = await fetch("__STATS_PATH__",
      {cache: "no-store", headers: key ? {"Authorization": "Bearer " + key} : {}});
    const login = document.getElementById("login");
    login.hidden = !(response.status === 401 || response.status === 403);
    if (!response.ok) {
      let reason = "HTTP " + response.status;
      try { reason += ": " + (await response.json()).error.message; } catch (ignored) {}
      status.textContent = "cannot read __STATS_PATH__ - " + reason +
        (key && response.status === 401 ? " (the admin key given was refused)" : "");
      status.className = "bad";
      return;
    }
    render(await response.json());
  } catch (error) {
    status.textContent = "cannot read __STATS_PATH__: " + error;
    status.className = "bad";
  }
}
poll();
setInterval(poll, __POLL_MS__);
</script>
</body>
</html>
"""


def dashboard_page(simulated: bool) -> bytes:
    page = (
        _PAGE.replace("__SIMULATED_HIDDEN__", "" if simulated else "hidden")
        .replace("__STATS_PATH__", STATS_PATH)
        .replace("__POLL_MS__", str(POLL_MS))
        .replace("__POLL_S__", str(POLL_MS // 1000))
    )
    return page.encode("utf-8")
