// Cordon's analyst console: one page, no framework, no CDN. Every datum is shown through
// textContent or escaped, never as markup. The API key lives in sessionStorage; the API
// refuses what a role may not do, and the page hides it too.
"use strict";

const ROLES = ["viewer", "analyst", "responder", "admin"];
const state = { key: sessionStorage.getItem("cordon.key"), me: null, timer: null, seen: new Set() };

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const can = (role) => state.me && ROLES.indexOf(state.me.role) >= ROLES.indexOf(role);
const fmtTime = (t) => (t ? new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "");

function toast(text) {
  const t = $("#toast");
  t.textContent = text;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 2500);
}

async function api(path, { method = "GET", body, accept } = {}) {
  const headers = { Authorization: `Bearer ${state.key}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (accept) headers.accept = accept;
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 401) {
    signOut("That key was not accepted.");
    throw new Error("unauthorised");
  }
  if (accept && accept !== "application/json") {
    if (!r.ok) throw new Error((await r.json()).error);
    return r;
  }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function signOut(message) {
  sessionStorage.removeItem("cordon.key");
  state.key = null;
  state.me = null;
  clearInterval(state.timer);
  // The next person starts from the queue, not from a page their role may not open.
  if (location.hash !== "#/alerts") history.replaceState(null, "", "#/alerts");
  $("#nav").hidden = true;
  $("#sign-out").hidden = true;
  $("#who").textContent = "";
  $("#view").replaceChildren();
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = message || "";
  $("#key").focus();
}

async function signIn(key) {
  state.key = key;
  try {
    state.me = await api("/api/v1/whoami");
  } catch (e) {
    if (e.message !== "unauthorised") signOut(e.message);
    return;
  }
  sessionStorage.setItem("cordon.key", key);
  $("#sign-in").hidden = true;
  $("#nav").hidden = false;
  $("#sign-out").hidden = false;
  $("#who").textContent = `${state.me.name} · ${state.me.role}`;
  document.querySelectorAll("[data-role]").forEach((el) => (el.hidden = !can(el.dataset.role)));
  route();
}

// ---- routing ---------------------------------------------------------------------------

function route() {
  if (!state.me) return;
  clearInterval(state.timer);
  const [, page, arg] = (location.hash || "#/alerts").split("/");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === `#/${page}`));
  const view = $("#view");
  view.replaceChildren();
  const pages = { alerts: alertsPage, alert: alertPage, agent: agentPage, approvals: approvalsPage, sql: sqlPage };
  (pages[page] || alertsPage)(view, arg && decodeURIComponent(arg)).catch((e) => {
    view.insertAdjacentHTML("beforeend", `<p class="error" role="alert">${esc(e.message)}</p>`);
  });
  refreshPending();
}

async function refreshPending() {
  try {
    const { actions } = await api("/api/v1/actions?state=awaiting_approval");
    $("#pending-count").textContent = actions.length ? String(actions.length) : "";
  } catch {
    $("#pending-count").textContent = "";
  }
}

// ---- alert queue -----------------------------------------------------------------------

async function alertsPage(view) {
  view.innerHTML = `
  <section class="card">
    <h1>Alerts</h1>
    <form class="filters" id="filters">
      <div><label for="f-severity">Severity</label>
        <select id="f-severity" name="severity"><option value="">any</option>
          ${["critical", "high", "medium", "low", "informational"].map((s) => `<option>${s}</option>`).join("")}</select></div>
      <div><label for="f-status">Status</label>
        <select id="f-status" name="status"><option value="">any</option>
          ${["new", "in_progress", "resolved", "suppressed"].map((s) => `<option>${s}</option>`).join("")}</select></div>
      <div><label for="f-rule">Rule</label><input id="f-rule" name="rule" placeholder="cordon.mcp.…"></div>
      <div><label for="f-agent">Agent</label><input id="f-agent" name="agent" placeholder="agent id"></div>
      <div><label for="f-since">Since</label><input id="f-since" name="since" type="datetime-local"></div>
      <div><button type="submit">Filter</button></div>
    </form>
    <div class="bulk" ${can("analyst") ? "" : "hidden"}>
      <span id="selected-count">0 selected</span>
      <button type="button" class="secondary" id="bulk-ack">Acknowledge</button>
      <label for="bulk-assignee">Assignee</label>
      <input id="bulk-assignee" placeholder="assignee">
      <button type="button" class="secondary" id="bulk-assign">Assign</button>
      <label for="bulk-reason">Reason</label>
      <input id="bulk-reason" placeholder="why">
      <button type="button" class="secondary" id="bulk-resolve">Resolve</button>
    </div>
    <table aria-label="Alerts">
      <thead><tr><th><input type="checkbox" id="select-all" aria-label="Select all alerts"></th>
        <th>Time</th><th>Severity</th><th>Alert</th><th>Agent</th><th>Status</th></tr></thead>
      <tbody id="alert-rows"></tbody>
    </table>
    <p class="hint" id="queue-note">Live: new alerts appear here as they are stored.</p>
  </section>`;
  const form = $("#filters");
  const query = () => {
    const p = new URLSearchParams({ limit: "200" });
    for (const [k, v] of new FormData(form)) {
      if (!v) continue;
      p.set(k, k === "since" ? new Date(v).toISOString() : v);
    }
    return p.toString();
  };
  let first = true;
  const load = async () => {
    const { alerts } = await api(`/api/v1/alerts?${query()}`);
    const body = $("#alert-rows");
    const checked = new Set([...body.querySelectorAll("input:checked")].map((c) => c.value));
    body.replaceChildren(
      ...alerts.map((a) => {
        const tr = document.createElement("tr");
        if (!first && !state.seen.has(a.alert_id)) tr.className = "new-row";
        state.seen.add(a.alert_id);
        tr.innerHTML = `<td><input type="checkbox" value="${esc(a.alert_id)}" aria-label="Select alert ${esc(a.title)}"></td>
          <td>${esc(fmtTime(a.time))}</td>
          <td><span class="sev sev-${esc(a.severity)}">${esc(a.severity)}</span></td>
          <td><a href="#/alert/${encodeURIComponent(a.alert_id)}">${esc(a.title)}</a><div class="hint">${esc(a.rule_id)}</div></td>
          <td>${a.agent_id ? `<a href="#/agent/${encodeURIComponent(a.agent_id)}">${esc(a.agent_id)}</a>` : ""}</td>
          <td class="status">${esc(a.status)}${a.assignee ? ` · ${esc(a.assignee)}` : ""}</td>`;
        const box = tr.querySelector("input");
        box.checked = checked.has(a.alert_id);
        return tr;
      })
    );
    first = false;
    countSelected();
  };
  const countSelected = () => {
    $("#selected-count").textContent = `${document.querySelectorAll("#alert-rows input:checked").length} selected`;
  };
  $("#alert-rows").addEventListener("change", countSelected);
  $("#select-all").addEventListener("change", (e) => {
    document.querySelectorAll("#alert-rows input").forEach((c) => (c.checked = e.target.checked));
    countSelected();
  });
  const bulk = async (change, body) => {
    const ids = [...document.querySelectorAll("#alert-rows input:checked")].map((c) => c.value);
    if (!ids.length) return toast("Select alerts first");
    let failed = 0;
    for (const id of ids) {
      try {
        await api(`/api/v1/alerts/${encodeURIComponent(id)}/${change}`, { method: "POST", body });
      } catch (e) {
        failed += 1;
        toast(e.message);
      }
    }
    if (!failed) toast(`${change}: ${ids.length} alert${ids.length === 1 ? "" : "s"}`);
    await load();
  };
  $("#bulk-ack").addEventListener("click", () => bulk("ack", {}));
  $("#bulk-assign").addEventListener("click", () => bulk("assign", { assignee: $("#bulk-assignee").value }));
  $("#bulk-resolve").addEventListener("click", () => bulk("resolve", { reason: $("#bulk-reason").value }));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    load().catch((err) => toast(err.message));
  });
  await load();
  state.timer = setInterval(() => load().catch(() => {}), 2000);
}

// ---- alert detail ----------------------------------------------------------------------

function lineage(events) {
  // What flowed from which earlier step: argument fingerprints of a step that appeared in an
  // earlier step's result.
  return events.map((e, i) => {
    const args = new Set(e["audit.args_fp"] || []);
    const from = [];
    for (let j = 0; j < i; j++) {
      const shared = (events[j]["audit.result_fp"] || []).filter((f) => args.has(f)).length;
      if (shared) from.push({ step: j + 1, shared });
    }
    return from;
  });
}

function baselineChart(analysis) {
  // The agent's normal level against what was observed, as two bars.
  const base = analysis.baselines?.[0]?.observations?.[0]?.value;
  const obs = analysis.anomalies?.[0]?.observations?.[0]?.value;
  const name = analysis.anomalies?.[0]?.observation_parameter || analysis.unmapped?.feature || "";
  const b = Number.parseFloat(base);
  const o = Number.parseFloat(obs);
  if (!Number.isFinite(b) || !Number.isFinite(o)) {
    return `<p><strong>${esc(name)}</strong>: ${esc(obs)} <span class="hint">(${esc(base)})</span></p>`;
  }
  const max = Math.max(b, o, 1e-9);
  const w = (v) => Math.max(2, Math.round((v / max) * 220));
  return `<figure><figcaption><strong>${esc(name)}</strong></figcaption>
    <svg width="320" height="46" role="img" aria-label="${esc(name)}: normal ${esc(b)}, observed ${esc(o)}">
      <rect x="70" y="4" width="${w(b)}" height="14" fill="#8fb3d9"></rect><text x="0" y="15">normal</text>
      <text x="${76 + w(b)}" y="15">${esc(b.toFixed(2))}</text>
      <rect x="70" y="26" width="${w(o)}" height="14" fill="#d9480f"></rect><text x="0" y="37">observed</text>
      <text x="${76 + w(o)}" y="37">${esc(o.toFixed(2))}</text>
    </svg></figure>`;
}

async function alertPage(view, id) {
  const d = await api(`/api/v1/alerts/${encodeURIComponent(id)}`);
  const f = d.finding;
  const events = (f.evidences || []).map((e) => e.data || {});
  const flows = lineage(events);
  const rule = f.finding_info?.analytic || {};
  view.innerHTML = `
  <p><a href="#/alerts">← Alerts</a></p>
  <section class="card">
    <h1><span class="sev sev-${esc(f.severity)}">${esc(f.severity)}</span> ${esc(f.finding_info?.title)}</h1>
    <p>${esc(f.message)}</p>
    <dl class="kv">
      <dt>Rule</dt><dd><code>${esc(rule.uid)}</code> v${esc(rule.version)} — ${esc(rule.name)}</dd>
      <dt>Description</dt><dd>${esc(f.finding_info?.desc)}</dd>
      <dt>Agent</dt><dd>${f.unmapped?.["gen_ai.agent.id"] ? `<a href="#/agent/${encodeURIComponent(f.unmapped["gen_ai.agent.id"])}">${esc(f.unmapped["gen_ai.agent.id"])}</a>` : ""}</dd>
      <dt>Status</dt><dd id="alert-status">${esc(d.status)}${d.assignee ? ` · ${esc(d.assignee)}` : ""}</dd>
      <dt>Remediation</dt><dd>${esc(f.remediation?.desc)}</dd>
    </dl>
    <div class="bulk" ${can("analyst") ? "" : "hidden"}>
      <button type="button" class="secondary" data-change="ack">Acknowledge</button>
      <label for="assignee">Assignee</label><input id="assignee">
      <button type="button" class="secondary" data-change="assign">Assign</button>
      <label for="reason">Reason</label><input id="reason">
      <button type="button" class="secondary" data-change="resolve">Resolve</button>
      <button type="button" class="secondary" data-change="suppress">Suppress</button>
    </div>
  </section>
  <div class="grid">
    <section class="card"><h2>Chain</h2><ol class="timeline" id="timeline" aria-label="Evidence timeline"></ol></section>
    <div>
      <section class="card"><h2>Baseline</h2><div id="baseline"></div></section>
      <section class="card"><h2>Response</h2><div id="actions"></div></section>
      <section class="card"><h2>History</h2><ol id="history"></ol></section>
    </div>
  </div>`;
  $("#timeline").replaceChildren(
    ...events.map((e, i) => {
      const li = document.createElement("li");
      const deny = e["audit.decision"] === "deny";
      if (deny) li.className = "deny";
      const from = flows[i].map((x) => `↳ carries ${x.shared} fingerprint${x.shared === 1 ? "" : "s"} of step ${x.step}'s result`).join("; ");
      li.innerHTML = `<div><strong>${i + 1}. ${esc(e["gen_ai.tool.name"] || e["mcp.method.name"])}</strong>
          on <code>${esc(e["audit.target"])}</code></div>
        <div class="meta">${esc(fmtTime(e["@timestamp"]))} · decision ${esc(e["audit.decision"] || "-")}
          · data ${esc(e["audit.data_class"] || "-")}${e["audit.result_bytes"] !== undefined ? ` · ${esc(e["audit.result_bytes"])} bytes out` : ""}</div>
        ${from ? `<div class="flow">${esc(from)}</div>` : ""}`;
      return li;
    })
  );
  const analyses = f.anomaly_analyses || [];
  $("#baseline").innerHTML = analyses.length ? analyses.map(baselineChart).join("") : `<p class="hint">No baseline departure in this alert.</p>`;
  $("#actions").innerHTML = d.actions.length
    ? `<ol>${d.actions
        .map(
          (a) => `<li><strong>${esc(a.action)}</strong> → ${esc(a.target || "")} <span class="status">${esc(a.state)}</span>
          ${(a.attempt_log || []).map((t) => `<div class="hint">attempt ${esc(t.n)}: ${esc(t.outcome)} ${t.status ? `(HTTP ${esc(t.status)})` : ""}</div>`).join("")}
          ${a.last_error ? `<div class="error">${esc(a.last_error)}</div>` : ""}</li>`
        )
        .join("")}</ol>`
    : `<p class="hint">No playbook ran for this alert.</p>`;
  $("#history").innerHTML = d.history.length
    ? d.history.map((h) => `<li>${esc(fmtTime(h.time))} · ${esc(h.change)} by ${esc(h.actor_name)}${h.assignee ? ` → ${esc(h.assignee)}` : ""}${h.reason ? `: ${esc(h.reason)}` : ""}</li>`).join("")
    : `<li class="hint">Not worked yet.</li>`;
  view.querySelectorAll("[data-change]").forEach((b) =>
    b.addEventListener("click", async () => {
      try {
        await api(`/api/v1/alerts/${encodeURIComponent(id)}/${b.dataset.change}`, {
          method: "POST",
          body: { reason: $("#reason").value || undefined, assignee: $("#assignee").value || undefined },
        });
        toast(`${b.dataset.change}: done`);
        route();
      } catch (e) {
        toast(e.message);
      }
    })
  );
}

// ---- agent -----------------------------------------------------------------------------

function rateChart(byHour) {
  // Calls per minute by hour of day (UTC), with a band of two standard deviations of a
  // Poisson count around each hour's mean.
  const max = Math.max(...byHour.map((m) => m + 2 * Math.sqrt(m)), 1e-9);
  const h = 110;
  const y = (v) => h - (v / max) * (h - 10);
  const bars = byHour
    .map((m, i) => {
      const hi = m + 2 * Math.sqrt(m);
      const lo = Math.max(0, m - 2 * Math.sqrt(m));
      return `<rect x="${30 + i * 22}" y="${y(hi)}" width="18" height="${Math.max(1, y(lo) - y(hi))}" fill="#d6e4f3"></rect>
        <rect x="${30 + i * 22}" y="${y(m) - 1}" width="18" height="2" fill="#0b5cad"></rect>
        ${i % 3 === 0 ? `<text x="${30 + i * 22}" y="${h + 12}">${String(i).padStart(2, "0")}</text>` : ""}`;
    })
    .join("");
  return `<svg width="570" height="${h + 16}" role="img" aria-label="Calls per minute by hour of day with the expected band">
    <text x="0" y="10">${esc(max.toFixed(1))}</text><text x="0" y="${h}">0</text>${bars}</svg>`;
}

async function agentPage(view, id) {
  const d = await api(`/api/v1/agents/${encodeURIComponent(id)}`);
  const p = d.profile;
  const sessions = [...new Set(d.alerts.map((a) => a.session_id).filter(Boolean))];
  view.innerHTML = `
  <p><a href="#/alerts">← Alerts</a></p>
  <section class="card"><h1>Agent <code>${esc(id)}</code></h1>
  ${
    p
      ? `<div class="grid"><div><h2>Calls per minute by hour (UTC)</h2>${rateChart(p.calls_per_minute_by_hour_utc || [])}</div>
        <dl class="kv">
          <dt>Events learnt</dt><dd>${esc(p.events)}</dd>
          <dt>Calls per minute</dt><dd>${esc(Number(p.calls_per_minute).toFixed(2))}</dd>
          <dt>Typical result</dt><dd>${esc(Math.round(p.typical_result_bytes))} bytes</dd>
          <dt>Deny / error ratio</dt><dd>${esc(Number(p.deny_ratio).toFixed(3))} / ${esc(Number(p.error_ratio).toFixed(3))}</dd>
          <dt>Typical session</dt><dd>${esc(Math.round(p.typical_session_calls))} calls on ${esc(Number(p.typical_session_servers).toFixed(1))} servers</dd>
          <dt>Tools used</dt><dd>${esc(p.distinct_tools)}</dd>
          <dt>Servers used</dt><dd>${esc(p.distinct_servers)}</dd>
          <dt>Recipients seen</dt><dd>${esc(p.distinct_recipients)}</dd>
          <dt>Started from peer</dt><dd>${esc(p.peer || "-")}</dd>
          <dt>Last seen</dt><dd>${esc(fmtTime(p.last_seen))}</dd>
        </dl></div>`
      : `<p class="hint">No live profile: the API is not served by a running engine.</p>`
  }</section>
  <section class="card"><h2>Alerts</h2><table aria-label="Agent alerts"><thead><tr><th>Time</th><th>Severity</th><th>Alert</th><th>Session</th><th>Status</th></tr></thead>
    <tbody>${d.alerts
      .map(
        (a) => `<tr><td>${esc(fmtTime(a.time))}</td><td><span class="sev sev-${esc(a.severity)}">${esc(a.severity)}</span></td>
        <td><a href="#/alert/${encodeURIComponent(a.alert_id)}">${esc(a.title)}</a></td><td><code>${esc(a.session_id)}</code></td><td class="status">${esc(a.status)}</td></tr>`
      )
      .join("")}</tbody></table>
    <p class="hint">${sessions.length} session${sessions.length === 1 ? "" : "s"} with alerts.</p></section>`;
}

// ---- approvals -------------------------------------------------------------------------

async function approvalsPage(view) {
  view.innerHTML = `<section class="card"><h1>Pending approvals</h1><div id="approvals"></div></section>
    <section class="card"><h2>Recent actions</h2><div id="recent"></div></section>`;
  const load = async () => {
    const { actions } = await api("/api/v1/actions");
    const pending = actions.filter((a) => a.state === "awaiting_approval");
    $("#approvals").innerHTML = pending.length
      ? pending
          .map(
            (a) => `<div class="card" data-action="${esc(a.id)}">
            <p><strong>${esc(a.playbook)}</strong> step ${esc(a.step + 1)} holds the next steps of alert
              <a href="#/alert/${encodeURIComponent(a.alert_id)}">${esc(a.alert_id)}</a> (${esc(a.rule_id)}).</p>
            <div class="bulk" ${can("responder") ? "" : "hidden"}>
              <label for="reason-${esc(a.id)}">Reason</label>
              <input id="reason-${esc(a.id)}" class="reason" required>
              <button type="button" data-decision="approve">Approve</button>
              <button type="button" class="secondary" data-decision="deny">Deny</button>
            </div>
            ${can("responder") ? "" : `<p class="hint">Your role (${esc(state.me.role)}) may not decide.</p>`}
          </div>`
          )
          .join("")
      : `<p class="hint">Nothing is waiting for a human.</p>`;
    $("#recent").innerHTML = `<table aria-label="Actions"><thead><tr><th>Updated</th><th>Action</th><th>Target</th><th>State</th><th>Attempts</th></tr></thead><tbody>${actions
      .sort((a, b) => b.updated_ms - a.updated_ms)
      .slice(0, 50)
      .map((a) => `<tr><td>${esc(fmtTime(a.updated_ms))}</td><td>${esc(a.action)}</td><td>${esc(a.target || "")}</td><td class="status">${esc(a.state)}</td><td>${esc(a.attempts)}</td></tr>`)
      .join("")}</tbody></table>`;
    view.querySelectorAll("[data-decision]").forEach((b) =>
      b.addEventListener("click", async () => {
        const card = b.closest("[data-action]");
        const reason = card.querySelector(".reason").value.trim();
        if (!reason) return toast("Give a reason");
        try {
          await api(`/api/v1/actions/${encodeURIComponent(card.dataset.action)}/${b.dataset.decision}`, { method: "POST", body: { reason } });
          toast(`${b.dataset.decision}d`);
          await load();
          refreshPending();
        } catch (e) {
          toast(e.message);
        }
      })
    );
  };
  await load();
  state.timer = setInterval(() => {
    if (!view.contains(document.activeElement) || document.activeElement === document.body) load().catch(() => {});
  }, 3000);
}

// ---- SQL -------------------------------------------------------------------------------

async function sqlPage(view) {
  if (!can("analyst")) {
    view.innerHTML = `<p class="error" role="alert">SQL needs the analyst role.</p>`;
    return;
  }
  view.innerHTML = `<div class="grid"><section class="card"><h1>SQL</h1>
      <label for="sql">Query (SELECT, WITH or EXPLAIN)</label>
      <textarea id="sql" rows="6">SELECT rule_id, severity, count(*) AS n FROM alerts GROUP BY rule_id, severity ORDER BY n DESC</textarea>
      <div class="bulk"><button type="button" id="run">Run</button><button type="button" class="secondary" id="csv">Download CSV</button></div>
      <p id="sql-error" class="error" role="alert"></p><div class="results" id="results"></div></section>
    <aside class="card schema"><h2>Tables</h2><div id="schema"></div></aside></div>`;
  try {
    const { rows } = await api("/api/v1/sql", {
      method: "POST",
      body: { query: "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position" },
    });
    const tables = {};
    for (const r of rows) (tables[r.table_name] ||= []).push(r);
    $("#schema").innerHTML = Object.entries(tables)
      .map(([t, cols]) => `<details open><summary>${esc(t)}</summary><ul>${cols.map((c) => `<li><code>${esc(c.column_name)}</code> <span class="hint">${esc(c.data_type)}</span></li>`).join("")}</ul></details>`)
      .join("");
  } catch (e) {
    $("#schema").textContent = e.message;
  }
  const run = async () => {
    $("#sql-error").textContent = "";
    try {
      const { rows } = await api("/api/v1/sql", { method: "POST", body: { query: $("#sql").value } });
      const cols = rows.length ? Object.keys(rows[0]) : [];
      $("#results").innerHTML = `<table aria-label="Query results"><thead><tr>${cols.map((c) => `<th>${esc(c)}</th>`).join("")}</tr></thead>
        <tbody>${rows.map((r) => `<tr>${cols.map((c) => `<td>${esc(typeof r[c] === "object" ? JSON.stringify(r[c]) : r[c])}</td>`).join("")}</tr>`).join("")}</tbody></table>
        <p class="hint">${rows.length} row${rows.length === 1 ? "" : "s"}</p>`;
    } catch (e) {
      $("#sql-error").textContent = e.message;
    }
  };
  $("#run").addEventListener("click", run);
  $("#csv").addEventListener("click", async () => {
    try {
      const r = await api("/api/v1/sql", { method: "POST", body: { query: $("#sql").value }, accept: "text/csv" });
      const url = URL.createObjectURL(await r.blob());
      const a = document.createElement("a");
      a.href = url;
      a.download = "cordon-query.csv";
      document.body.append(a);
      a.click();
      a.remove();
      URL.revokeObjectURL(url);
    } catch (e) {
      $("#sql-error").textContent = e.message;
    }
  });
  await run();
}

// ---- start -----------------------------------------------------------------------------

$("#sign-in-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn($("#key").value.trim());
});
$("#sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
if (state.key) signIn(state.key);
else signOut();
