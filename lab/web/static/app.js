// maillab's dashboard: plain JavaScript, no build step, nothing loaded from elsewhere.
// Every request carries the lab's token (the page holds it in a meta tag). Events come
// over one EventSource; the event list renders only the rows in view, so it keeps up
// with tens of thousands of events.
"use strict";

const TOKEN =
  (document.querySelector('meta[name="maillab-token"]') || {}).content ||
  new URLSearchParams(location.search).get("token") || "";
const ROW = 20; // px per event row
const KEEP = 200000; // events kept in the page at most
const REFRESH_KINDS = /^(queue|delivery\.result|mailbox|link|clock|dsn)\./;

const state = {
  topology: null, queues: {}, events: [], shown: [], filter: {},
  selected: null, mailbox: null, messageId: null, traceRef: null,
  clock: { now: 0, at: 0 },
};
// what tests and benchmarks read
window.maillab = { lastSeq: 0, received: 0, rendered: 0, renderedAt: 0, state };

// helpers ----------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const ns = tag.startsWith("svg:") ? "http://www.w3.org/2000/svg" : null;
  const node = ns ? document.createElementNS(ns, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
const $ = (sel) => document.querySelector(sel);

async function api(path, options = {}) {
  const response = await fetch("/api" + path, {
    ...options,
    headers: { "X-Maillab-Token": TOKEN, "Content-Type": "application/json" },
  });
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}
const post = (path, body) => api(path, { method: "POST", body: JSON.stringify(body || {}) });

function flash(text, ok) {
  const f = $("#flash");
  f.textContent = text;
  f.className = ok ? "ok" : "";
}
async function act(promise, done) {
  try {
    const result = await promise;
    if (done) flash(done(result), true);
    refreshSoon();
    return result;
  } catch (e) {
    flash(e.message, false);
  }
}

function labNow() {
  return state.clock.now + (Date.now() - state.clock.at) / 1000;
}
function fmtTime(t) {
  if (!t) return "";
  return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19);
}
function fmtIn(seconds) {
  const s = Math.round(seconds);
  if (s < 0) return "due";
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60 ? (s % 60) + "s" : ""}`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
}

// the topology -------------------------------------------------------------------------------

function layout(topo) {
  const nets = Object.keys(topo.networks);
  const netY = {};
  nets.forEach((n, i) => (netY[n] = nets.length > 1 ? 110 + (i * 220) / (nets.length - 1) : 230));
  const rows = {};
  for (const [name, node] of Object.entries(topo.nodes)) {
    const on = Object.keys(node.addresses).filter((n) => n in netY);
    let y;
    if (on.length > 1) y = on.reduce((a, n) => a + netY[n], 0) / on.length;
    else if (on.length === 1) {
      const i = nets.indexOf(on[0]);
      y = i === nets.length - 1 && nets.length > 1 ? netY[on[0]] + 78 : netY[on[0]] - 78;
    } else y = 30;
    (rows[y] = rows[y] || []).push(name);
  }
  const pos = {};
  let widest = 1;
  for (const [y, names] of Object.entries(rows)) {
    widest = Math.max(widest, names.length);
    const step = 760 / names.length;
    names.forEach((n, j) => (pos[n] = { x: 20 + step * (j + 0.5), y: Number(y) }));
  }
  return { netY, pos, box: Math.min(150, 760 / widest - 10) };
}

function drawTopology() {
  const topo = state.topology;
  const svg = $("#topo");
  svg.replaceChildren();
  const { netY, pos, box } = layout(topo);
  const half = box / 2;
  for (const [name, net] of Object.entries(topo.networks)) {
    svg.append(
      el("svg:g", { class: "net", "data-net": name },
        el("svg:line", { x1: 20, x2: 780, y1: netY[name], y2: netY[name] }),
        el("svg:text", { x: 24, y: netY[name] - 8, text: `${name} ${net.subnet}` })));
  }
  const linkOf = {};
  for (const [name, link] of Object.entries(topo.links)) linkOf[`${link.node}/${link.network}`] = name;
  for (const [name, node] of Object.entries(topo.nodes)) {
    const p = pos[name];
    for (const [net, addr] of Object.entries(node.addresses)) {
      if (!(net in netY)) continue;
      const ny = netY[net];
      const y1 = p.y + (ny > p.y ? 22 : -22);
      const link = linkOf[`${name}/${net}`];
      if (link) {
        const st = topo.links[link].state;
        const next = st === "up" ? "down" : "up";
        svg.append(
          el("svg:g", {
              class: `link ${st}`, "data-link": link, "data-state": st,
              onclick: () => act(post(`/links/${link}`, { state: next }), (r) => `link ${r.link}: ${r.state}`),
            },
            el("svg:title", { text: `${link}: ${st} (click: ${next})` }),
            el("svg:line", { class: "hit", x1: p.x, x2: p.x, y1, y2: ny }),
            el("svg:line", { class: "wire", x1: p.x, x2: p.x, y1, y2: ny }),
            el("svg:text", { x: p.x + 8, y: (y1 + ny) / 2, text: `${link}: ${st}` })));
      } else {
        svg.append(el("svg:line", { class: "attach", x1: p.x, x2: p.x, y1, y2: ny }));
      }
      svg.append(el("svg:text", { class: "addr", x: p.x + 6, y: ny + (ny > p.y ? -6 : 14), text: addr }));
    }
  }
  for (const [name, node] of Object.entries(topo.nodes)) {
    const p = pos[name];
    const depth = (state.queues[name] || []).length;
    const software = Object.entries(node.software).map(([s, w]) => `${s}: ${w}`).join(", ");
    const g = el("svg:g", {
        class: "node" + (state.selected === name ? " sel" : ""), "data-node": name,
        onclick: () => selectHost(name),
      },
      el("svg:title", {
        text: `${name} (${node.role || node.services.join(",")})\n${node.hostname}\n` +
          Object.entries(node.addresses).map(([n, a]) => `${n} ${a}`).join("\n") + `\n${software}` +
          Object.entries(node.endpoints || {}).map(([s, e]) => `\n${s} from this machine: ${e}`).join("") +
          (node.inside_lab || []).map((s) => `\n${s}: inside the lab only`).join(""),
      }),
      el("svg:rect", { x: p.x - half, y: p.y - 22, width: box, height: 44 }),
      el("svg:text", { class: "name", x: p.x, y: p.y - 6, "text-anchor": "middle", text: `${name} · ${node.role || node.services.join(",")}` }),
      el("svg:text", { class: "sub", x: p.x, y: p.y + 8, "text-anchor": "middle", text: node.hostname }),
      el("svg:text", { class: "sub", x: p.x, y: p.y + 18, "text-anchor": "middle", text: software }));
    if (depth) {
      g.append(el("svg:circle", { class: "badge", cx: p.x + half - 2, cy: p.y - 20, r: 9 }),
        el("svg:text", { class: "badgetext", x: p.x + half - 2, y: p.y - 16, "text-anchor": "middle", text: depth }));
    }
    svg.append(g);
  }
}

function selectHost(name) {
  state.selected = name;
  drawTopology();
  drawHosts();
  const host = document.querySelector(`.host[data-node="${name}"]`);
  if (host) host.scrollIntoView({ block: "nearest" });
  if ((state.topology.nodes[name].mailboxes || []).length) {
    showTab("mailboxes");
    loadMailboxes(name);
  }
}

// hosts and queues ---------------------------------------------------------------------------

function drawHosts() {
  const box = $("#hosts");
  box.replaceChildren();
  for (const [name, node] of Object.entries(state.topology.nodes)) {
    if (!node.services.includes("smtp")) continue;
    const entries = state.queues[name] || [];
    const rows = entries.map((e) =>
      el("tr", { class: "qentry", "data-id": e.id },
        el("td", {}, el("span", { class: "ref", onclick: () => openTrace(e.id), text: e.id })),
        el("td", { text: `<${e.envelope_from}>` }),
        el("td", { text: e.recipients.join(", ") }),
        el("td", { text: e.attempts }),
        el("td", { text: e.last_reply || "" }),
        el("td", { title: fmtTime(e.next_attempt), text: `${fmtTime(e.next_attempt)} (in ${fmtIn(e.next_attempt - labNow())})` })));
    box.append(
      el("div", { class: "host" + (state.selected === name ? " sel" : ""), "data-node": name, "data-depth": entries.length },
        el("h4", {},
          el("span", { text: `${name}` }),
          el("span", { class: "qdepth muted", text: `${entries.length} queued` }),
          el("button", { class: "flush", onclick: () => act(post(`/nodes/${name}/flush`), (r) => `${name}: tried ${r.tried}, ${r.queue.length} still queued`), text: "Flush" }),
          node.services.includes("fetch")
            ? el("button", { class: "fetch", onclick: () => act(post(`/nodes/${name}/fetch`), (r) => `${name}: fetched ${r.fetched}`), text: "Fetch" })
            : null,
          (node.mailboxes || []).length
            ? el("button", { onclick: () => { showTab("mailboxes"); loadMailboxes(name); }, text: "Mailboxes" })
            : null),
        entries.length
          ? el("table", { class: "queue" },
              el("thead", {}, el("tr", {}, ["id", "from", "recipients", "attempts", "last reply", "next attempt"].map((h) => el("th", { text: h })))),
              el("tbody", {}, rows))
          : null));
  }
}

// refreshing ---------------------------------------------------------------------------------

let refreshTimer = null;
function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    await refresh();
  }, 80);
}

async function refresh() {
  try {
    const [topo, queues] = await Promise.all([api("/topology"), api("/queues")]);
    state.topology = topo;
    state.queues = queues;
    state.clock = { now: topo.clock.time, at: Date.now() };
    drawTopology();
    drawHosts();
    if (state.mailbox) loadMailbox(...state.mailbox, true);
    if (state.traceRef) openTrace(state.traceRef, true);
    if ($("#tab-clock").classList.contains("on")) loadClock();
    if ($("#tab-dns").classList.contains("on")) loadDns();
  } catch (e) {
    flash(e.message);
  }
}

// events ---------------------------------------------------------------------------------------

function matches(e) {
  const f = state.filter;
  if (f.node && e.node !== f.node) return false;
  if (f.kind) {
    if (f.kind.endsWith("*") ? !e.kind.startsWith(f.kind.slice(0, -1)) : e.kind !== f.kind) return false;
  }
  if (f.seqs && !f.seqs.has(e.seq)) return false;
  return true;
}

function describe(e) {
  return Object.entries(e.data)
    .filter(([k]) => k !== "raw")
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(" ");
}

const viewport = $("#events");
const spacer = viewport.querySelector(".spacer");
let pending = [];
let frame = null;
let stick = true; // follow new events while scrolled to the bottom

function renderRows() {
  const shown = state.shown;
  spacer.style.height = `${shown.length * ROW}px`;
  const first = Math.max(0, Math.floor(viewport.scrollTop / ROW) - 5);
  const last = Math.min(shown.length, first + Math.ceil(viewport.clientHeight / ROW) + 10);
  const rows = [];
  for (let i = first; i < last; i++) {
    const e = shown[i];
    rows.push(
      el("div", { class: "row", style: `top:${i * ROW}px`, "data-seq": e.seq, title: describe(e) },
        el("span", { class: "seq", text: `#${e.seq} ` }),
        el("span", { class: "node", text: `${e.node} ` }),
        el("span", { class: "kind", text: `${e.kind} ` }),
        describe(e)));
  }
  spacer.replaceChildren(...rows);
  $("#event-count").textContent = `${shown.length} of ${state.events.length} events`;
  window.maillab.rendered = state.events.length ? state.events[state.events.length - 1].seq : 0;
  window.maillab.renderedAt = Date.now();
}

function flushEvents() {
  frame = null;
  const batch = pending;
  pending = [];
  let refreshNeeded = false;
  for (const e of batch) {
    state.events.push(e);
    if (matches(e)) state.shown.push(e);
    if (REFRESH_KINDS.test(e.kind)) refreshNeeded = true;
  }
  if (state.events.length > KEEP) {
    state.events.splice(0, state.events.length - KEEP);
    state.shown = state.events.filter(matches);
  }
  renderRows();
  if (stick) viewport.scrollTop = viewport.scrollHeight;
  if (refreshNeeded) refreshSoon();
}

viewport.addEventListener("scroll", () => {
  stick = viewport.scrollTop + viewport.clientHeight >= viewport.scrollHeight - ROW;
  renderRows();
});

function connect() {
  const since = window.maillab.lastSeq;
  const source = new EventSource(`/api/events/stream?since=${since}&token=${encodeURIComponent(TOKEN)}`);
  source.addEventListener("open", () => {
    $("#live").textContent = "live";
    $("#live").className = "live on";
  });
  source.addEventListener("lab", (message) => {
    const e = JSON.parse(message.data);
    if (e.seq <= window.maillab.lastSeq) return;
    window.maillab.lastSeq = e.seq;
    window.maillab.received++;
    pending.push(e);
    if (!frame) frame = requestAnimationFrame(flushEvents);
  });
  source.addEventListener("error", () => {
    $("#live").textContent = "reconnecting";
    $("#live").className = "live off";
  });
}

async function applyFilter() {
  const form = $("#event-filters");
  const message = form.message.value.trim();
  state.filter = { node: form.node.value, kind: form.kind.value.trim() };
  if (message) {
    try {
      const trace = await api(`/trace/${encodeURIComponent(message)}`);
      state.filter.seqs = new Set(trace.events.map((e) => e.seq));
    } catch (e) {
      state.filter.seqs = new Set();
    }
  }
  state.shown = state.events.filter(matches);
  renderRows();
}
$("#event-filters").addEventListener("input", applyFilter);
$("#event-filters").addEventListener("submit", (ev) => ev.preventDefault());

// mailboxes ------------------------------------------------------------------------------------

async function loadMailboxes(node) {
  const counts = await api(`/nodes/${node}/mailboxes`).catch((e) => (flash(e.message), {}));
  $("#mbx-list").replaceChildren(
    el("h3", { text: `${node}: mailboxes` }),
    ...Object.entries(counts).map(([user, n]) =>
      el("span", { class: "mbx-user ref", "data-user": user, onclick: () => loadMailbox(node, user), text: `${user} (${n})` })));
  if (!state.mailbox || state.mailbox[0] !== node) {
    $("#mbx-messages").replaceChildren();
    $("#mbx-message").replaceChildren();
  }
}

async function loadMailbox(node, user, quiet) {
  state.mailbox = [node, user];
  if (!quiet) state.messageId = null;
  let messages;
  try {
    messages = await api(`/nodes/${node}/mailboxes/${encodeURIComponent(user)}`);
  } catch (e) {
    return flash(e.message);
  }
  if (quiet) loadMailboxes(node);
  $("#mbx-messages").replaceChildren(
    el("h3", { text: `${user}@${node}: ${messages.length} message(s)` }),
    el("ul", { class: "msglist" },
      messages.map((m) =>
        el("li", { "data-id": m.id, onclick: () => showMessage(m) },
          el("b", { text: m.subject || "(no subject)" }), ` — ${m.from} — ${m.date}`))));
  const open = messages.find((m) => m.id === state.messageId);
  if (open) showMessage(open);
}

function showMessage(m) {
  state.messageId = m.id;
  const ref = m.message_id || m.queue_id;
  $("#mbx-message").replaceChildren(
    el("h3", { text: m.subject || "(no subject)" }),
    el("p", {},
      `envelope from <${m.envelope_from}> `,
      ref ? el("span", { class: "ref open-trace", onclick: () => openTrace(ref), text: "trace this message" }) : null,
      m.dsn_of ? el("span", {}, " · a DSN about ", el("span", { class: "ref dsn-of", onclick: () => openTrace(m.dsn_of), text: m.dsn_of })) : null),
    el("h3", { text: "Received chain (newest first)" }),
    el("ol", { class: "received" }, m.received.map((r) => el("li", { text: r }))),
    el("h3", { text: "Headers" }),
    el("table", { class: "headers" }, m.headers.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v })))),
    el("h3", { text: "Body" }),
    el("pre", { class: "body", text: m.body }),
    el("details", {}, el("summary", { text: "Raw message" }), el("pre", { class: "raw", text: m.raw })));
}

// traces ----------------------------------------------------------------------------------------

async function openTrace(ref, quiet) {
  state.traceRef = ref;
  if (!quiet) showTab("trace");
  $("#trace-form").ref.value = ref;
  let trace;
  try {
    trace = await api(`/trace/${encodeURIComponent(ref)}`);
  } catch (e) {
    $("#trace").replaceChildren(el("p", { text: e.message }));
    return;
  }
  const hops = trace.hops.map((h) =>
    el("div", { class: "hop", "data-node": h.node, "data-id": h.id },
      el("h4", { text: `${h.node} — queue id ${h.id}` }),
      el("p", { class: "muted", text: `envelope <${h.envelope_from || ""}> → ${(h.recipients || []).join(", ")}` }),
      el("pre", { class: "dialogue" },
        h.dialogue.map((d) =>
          d.kind === "smtp.command"
            ? el("div", { class: "c", text: `C: ${d.data.command} ${d.data.arg}`.trimEnd() })
            : d.kind === "smtp.reply"
              ? el("div", { class: "s", text: `S: ${d.data.reply}` })
              : el("div", { class: "muted", text: `   connection from ${d.data.peer}` }))),
      el("details", {}, el("summary", { text: `${h.events.length} events on ${h.node}` }),
        el("pre", {}, h.events.map((e) => `#${e.seq} ${e.kind} ${describe(e)}\n`)))));
  const dsns = trace.dsns.map((d) =>
    el("li", { class: "dsn" },
      `${d.node} sent a ${d.action} DSN `,
      el("span", { class: "ref", onclick: () => openTrace(d.id), text: d.id }),
      ` to <${d.to}> for ${d.recipients.join(", ")} (${d.status.join(", ")}), about `,
      el("span", { class: "ref", onclick: () => openTrace(d.original_id), text: d.original_id })));
  $("#trace").replaceChildren(
    el("h3", { text: `Trace of ${ref}: ${trace.hops.length} hop(s)` }),
    ...hops,
    ...(dsns.length ? [el("h3", { text: "DSNs" }), el("ul", {}, dsns)] : []),
    el("details", {}, el("summary", { text: `all ${trace.events.length} events` }),
      el("pre", {}, trace.events.map((e) => `#${e.seq} ${e.node} ${e.kind} ${describe(e)}\n`))));
}
$("#trace-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const ref = ev.target.ref.value.trim();
  if (ref) openTrace(ref);
});

// send, clock, DNS ---------------------------------------------------------------------------------

$("#send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const headers = {};
  for (const line of f.headers.value.split("\n")) {
    const i = line.indexOf(":");
    if (i > 0) headers[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  const body = {
    from_node: f.from_node.value, mail_from: f.mail_from.value,
    to: f.to.value.split(",").map((s) => s.trim()).filter(Boolean),
    subject: f.subject.value, body: f.body.value, headers, via: f.via.value.trim() || null,
  };
  const result = await act(post("/send", body), (r) => (r.accepted ? `accepted: ${r.queue_id}` : "not accepted"));
  if (result) {
    const out = $("#send-result");
    out.replaceChildren(
      result.queue_id ? el("span", { class: "ref", onclick: () => openTrace(result.queue_id), text: `trace ${result.queue_id}\n` }) : "",
      [result.greeting, result.helo, result.mail, ...Object.values(result.rcpt), result.data, result.error].filter(Boolean).join("\n"));
  }
});

$("#advance-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const duration = ev.target.duration.value.trim();
  act(post("/clock/advance", { duration }), (r) => `advanced ${r.advanced}: ${r.timers} timer(s) ran`);
});

async function loadClock() {
  const clock = await api("/clock").catch((e) => (flash(e.message), null));
  if (!clock) return;
  state.clock = { now: clock.now, at: Date.now() };
  $("#clock-offset").textContent = `(${fmtIn(clock.offset)} ahead of real time)`;
  $("#timers tbody").replaceChildren(
    ...clock.timers.map((t) => el("tr", {}, el("td", { text: fmtTime(t.when) }), el("td", { text: fmtIn(t.when - clock.now) }), el("td", { text: t.name }))));
}

async function loadDns() {
  const rows = await api("/dns").catch((e) => (flash(e.message), []));
  $("#dns tbody").replaceChildren(
    ...rows.map((r) => el("tr", {}, el("td", { text: r.name }), el("td", { text: r.type }), el("td", { text: r.values.join(", ") }))));
}
$("#dns-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const body = f.type.value
    ? { name: f.name.value, type: f.type.value, values: f.values.value.split(",").map((s) => s.trim()).filter(Boolean) }
    : { name: f.name.value, fault: f.fault.value || null };
  act(post("/dns", body), (r) => `DNS ${r.name} set`).then(loadDns);
});

// tabs and start ----------------------------------------------------------------------------------

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.tab === name);
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("on", t.id === `tab-${name}`);
  if (name === "clock") loadClock();
  if (name === "dns") loadDns();
  if (name === "events") renderRows();
}
for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));

setInterval(() => {
  if (!state.clock.now) return;
  $("#clock-now").textContent = fmtTime(labNow());
  $("#clock-now2").textContent = fmtTime(labNow());
}, 500);

(async function start() {
  await refresh();
  const topo = state.topology;
  if (!topo) return;
  $("#labname").textContent = topo.name;
  $("#backend").textContent = `${topo.backend} backend · ${Object.keys(topo.nodes).length} hosts`;
  document.title = `maillab: ${topo.name}`;
  const nodes = Object.keys(topo.nodes);
  $("#event-filters").node.append(...nodes.map((n) => el("option", { value: n, text: n })));
  $("#send-form").from_node.append(...nodes.map((n) => el("option", { value: n, text: n })));
  if (topo.operator && topo.operator.node) $("#send-form").from_node.value = topo.operator.node;
  connect();
})();
