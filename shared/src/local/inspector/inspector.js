// The bluehook inspector. Everything that came from a webhook is put on the page as text
// (textContent), never as markup.
"use strict";

const API = "/_bluehook/api/";
const MAX_ROWS = 500;
const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(path, options) {
  const r = await fetch(API + path, options);
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const why = body && body.error ? `${body.error}: ${body.message}` : `HTTP ${r.status}`;
    throw new Error(why);
  }
  return body;
}

function post(path, body) {
  return api(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body || {}),
  });
}

function notice(text, isError) {
  const n = $("notice");
  n.textContent = text;
  n.className = isError ? "notice error" : "notice";
}

const state = { selected: null, selectedEvent: null, live: new Map() };

function filters() {
  return {
    source: $("f-source").value,
    outcome: $("f-outcome").value,
    destination: $("f-destination").value,
    q: $("f-search").value.trim(),
  };
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

function time(iso) {
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleTimeString(undefined, { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function outcomeText(r) {
  if (r.outcome === "refused" || r.outcome === "unavailable") {
    return `${r.status} ${r.reason && r.code === "unauthorized" ? r.reason : r.code || ""}`.trim();
  }
  return r.outcome;
}

function requestRow(r) {
  const tr = el("tr", { "data-seq": r.seq, "data-testid": "request-row", "data-outcome": r.outcome, on: { click: () => select(r.seq) } },
    el("td", { class: "time" }, time(r.at)),
    el("td", {}, r.source || r.path),
    el("td", {},
      el("span", { class: `outcome ${r.outcome}`, "data-testid": "outcome" }, outcomeText(r)),
      (r.outcome === "refused" || r.outcome === "unavailable") && r.code !== "unauthorized" && r.reason
        ? el("div", { class: "reason", "data-testid": "reason" }, r.reason) : null),
    el("td", { class: "mono" }, r.event_ids.join(" ")));
  if (r.seq === state.selected) tr.classList.add("selected");
  return tr;
}

function matches(r, f) {
  if (f.source && r.source !== f.source) return false;
  if (f.outcome === "refused") return r.status >= 400;
  if (f.outcome && r.outcome !== f.outcome) return false;
  return true;
}

async function loadRequests() {
  try {
    const { requests } = await api("requests" + query({ ...filters(), limit: 200 }));
    // Requests that arrived live while this list was being read stay on top of it.
    const newest = requests.length ? requests[0].seq : 0;
    const f = filters();
    const later = [...state.live.values()].filter((r) => r.seq > newest && !f.destination && !f.q && matches(r, f));
    later.sort((a, b) => b.seq - a.seq);
    const body = $("requests");
    body.replaceChildren(...later.concat(requests).map(requestRow));
    $("empty").hidden = body.children.length > 0;
  } catch (e) {
    notice("Could not load the requests: " + e.message, true);
  }
}

function addLive(r) {
  state.live.set(r.seq, r);
  if (state.live.size > MAX_ROWS) state.live.delete(state.live.keys().next().value);
  const f = filters();
  if (f.destination || f.q) { debounce("list", loadRequests, 300); return; }
  if (!matches(r, f)) return;
  const body = $("requests");
  if (body.querySelector(`tr[data-seq="${r.seq}"]`)) return;
  body.prepend(requestRow(r));
  while (body.children.length > MAX_ROWS) body.lastChild.remove();
  $("empty").hidden = true;
}

const timers = {};
function debounce(key, f, ms) {
  clearTimeout(timers[key]);
  timers[key] = setTimeout(f, ms);
}

function kv(pairs) {
  return el("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return text; }
}

async function select(seq) {
  state.selected = seq;
  for (const tr of $("requests").children) tr.classList.toggle("selected", Number(tr.dataset.seq) === seq);
  let req;
  try {
    req = await api("requests/" + seq);
  } catch (e) {
    notice("Could not load the request: " + e.message, true);
    return;
  }
  state.selectedEvent = req.event_ids[0] || null;
  await renderDetail(req);
}

async function renderDetail(req) {
  const parts = [
    el("h2", {}, `${req.method} ${req.path}`),
    kv([
      ["received", req.at],
      ["answer", `${req.status} ${outcomeText(req)}`],
      ["reason", req.reason || "–"],
      ["took", `${req.duration_ms.toFixed(2)} ms`],
    ]),
  ];
  for (const id of req.event_ids) {
    parts.push(await eventSection(id));
  }
  parts.push(el("h3", {}, "Request headers"),
    el("table", { "data-testid": "headers" }, el("tbody", {}, req.headers.map(([k, v]) => el("tr", {}, el("td", { class: "mono" }, k), el("td", { class: "mono" }, v))))));
  parts.push(el("h3", {}, `Raw body (${req.body_bytes} bytes${req.body_truncated ? ", first part" : ""})`),
    el("pre", { "data-testid": "raw-body" }, req.body));
  $("detail").replaceChildren(...parts);
}

async function eventSection(id) {
  let ev;
  try {
    ev = await api("events/" + encodeURIComponent(id));
  } catch (e) {
    return el("p", { class: "reason" }, `Event ${id}: ${e.message}`);
  }
  const section = el("section", { "data-testid": "event", "data-event-id": id });
  section.append(el("h3", {}, "Event ", el("span", { class: "mono" }, id), " ",
    el("span", { class: `outcome ${ev.state}`, "data-testid": "event-state" }, ev.state)));
  section.append(kv([["routes", ev.routes.length ? ev.routes.join(", ") : "not routed yet"]]));
  const destinations = new Set(ev.destinations || []);
  const rows = Object.entries(ev.deliveries).map(([d, s]) =>
    el("tr", { "data-testid": "delivery", "data-destination": d },
      el("td", {}, d),
      el("td", { class: s }, s),
      el("td", {}, destinations.has(d) ? el("button", { type: "button", "data-testid": "redeliver", on: { click: () => redeliver(id, d) } }, "Redeliver") : null)));
  if (rows.length) section.append(el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "destination"), el("th", {}, "state"), el("th", {}))), el("tbody", {}, rows)));
  const others = [...destinations].filter((d) => !(d in ev.deliveries));
  if (others.length) {
    const pick = el("select", { "data-testid": "redeliver-to" }, others.map((d) => el("option", { value: d }, d)));
    section.append(el("p", {}, "Deliver to another destination: ", pick, " ",
      el("button", { type: "button", on: { click: () => redeliver(id, pick.value) } }, "Deliver")));
  }
  section.append(el("h3", {}, "Delivery attempts"));
  if (ev.attempts.length) {
    section.append(el("table", { "data-testid": "attempts" },
      el("thead", {}, el("tr", {}, ["time", "destination", "#", "answer", "ms", "after", "detail"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ev.attempts.map((a) => el("tr", { "data-testid": "attempt", "data-destination": a.destination },
        el("td", { class: "time" }, time(a.at)),
        el("td", {}, a.destination),
        el("td", {}, a.attempt),
        el("td", {}, a.status ? `HTTP ${a.status}` : a.error || "–"),
        el("td", {}, a.duration_ms),
        el("td", { class: a.state }, a.state),
        el("td", { class: "reason" }, a.detail || ""))))));
  } else {
    section.append(el("p", { class: "reason" }, "none yet"));
  }
  if (ev.media && ev.media.length) {
    section.append(el("h3", {}, "Media archive"));
    section.append(el("table", { "data-testid": "media" },
      el("thead", {}, el("tr", {}, ["#", "state", "type", "bytes", "sha256", "location"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ev.media.map((m) => el("tr", { "data-testid": "media-file" },
        el("td", {}, m.n),
        el("td", { class: m.state === "stored" ? "delivered" : m.state === "failed" ? "retrying" : "" }, m.state),
        el("td", {}, m.content_type || "–"),
        el("td", {}, m.size == null ? "–" : m.size),
        el("td", { class: "mono" }, m.sha256 ? m.sha256.slice(0, 16) + "…" : "–"),
        el("td", { class: "mono" }, m.location, m.detail ? el("div", { class: "reason" }, m.detail) : null))))));
  }
  if (ev.requests && ev.requests.length > 1) {
    section.append(el("p", { class: "reason" }, `Received ${ev.requests.length} times (the later ones answered duplicate).`));
  }
  if (ev.event) {
    section.append(el("h3", {}, "Normalised event"), el("pre", { "data-testid": "event-json" }, JSON.stringify(ev.event, null, 2)));
  }
  return section;
}

async function redeliver(id, destination) {
  try {
    await post(`events/${encodeURIComponent(id)}/redeliver`, { destination });
    notice(`Event ${id} queued for ${destination}.`);
  } catch (e) {
    notice(`Redelivery to ${destination} refused: ${e.message}`, true);
  }
}

async function refreshDetail() {
  if (state.selected !== null && state.selectedEvent) {
    const scroll = $("detail").scrollTop;
    try {
      await renderDetail(await api("requests/" + state.selected));
      $("detail").scrollTop = scroll;
    } catch (_) { /* it fell out of the ring */ }
  }
}

async function loadStats() {
  try {
    const s = await api("stats");
    $("c-received").textContent = s.received;
    $("c-accepted").textContent = s.accepted;
    $("c-duplicates").textContent = s.duplicates;
    $("c-refused").textContent = Object.values(s.rejected).reduce((a, b) => a + b, 0);
    $("c-dead").textContent = s.dead_lettered;
  } catch (_) { /* shown as – */ }
  try {
    const { queues } = await api("dlq");
    const dead = queues.filter((q) => q.dead_lettered > 0);
    $("dlq").replaceChildren(...(dead.length ? dead.map((q) =>
      el("li", { "data-testid": "dlq-queue", "data-queue": q.queue },
        el("span", { class: "mono" }, q.queue), el("b", {}, q.dead_lettered),
        el("button", { type: "button", "data-testid": "replay", on: { click: () => replay(q.queue) } }, "Replay")))
      : [el("li", { class: "reason" }, "No dead letters.")]));
  } catch (_) { /* kept */ }
}

async function replay(queue) {
  try {
    const r = await post(`dlq/${encodeURIComponent(queue)}/replay`);
    notice(`Moved ${r.moved} messages from ${queue}-dlq back to ${queue}.`);
    loadStats();
  } catch (e) {
    notice(`Replay of ${queue} refused: ${e.message}`, true);
  }
}

function spark(svgId, values) {
  const svg = $(svgId);
  const ns = "http://www.w3.org/2000/svg";
  const points = values.map((v, i) => [i, v]).filter(([, v]) => v !== null && v !== undefined);
  if (!points.length) { svg.replaceChildren(); return; }
  const step = values.length > 1 ? 120 / (values.length - 1) : 0;
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map(([i, v]) => `${(i * step).toFixed(1)},${(23 - v * 22).toFixed(1)}`).join(" "));
  svg.replaceChildren(line);
}

async function loadRates() {
  try {
    const r = await api("rates?buckets=24");
    const pct = (v) => (v === null || v === undefined ? "–" : `${Math.round(v * 100)}%`);
    $("r-delivery").textContent = pct(r.delivery_rate);
    $("r-read").textContent = pct(r.read_rate);
    spark("spark-delivery", r.buckets.map((b) => b.delivery_rate));
    spark("spark-read", r.buckets.map((b) => b.read_rate));
  } catch (_) { /* kept */ }
}

async function loadChoices() {
  try {
    const { samples } = await api("samples");
    $("sample").replaceChildren(...samples.map((s) => el("option", { value: s.sample, "data-source": s.source }, `${s.sample} → ${s.source}`)));
    const sources = [...new Set(samples.map((s) => s.source))];
    $("f-source").append(...sources.map((s) => el("option", { value: s }, s)));
  } catch (e) {
    notice("Could not load the samples: " + e.message, true);
  }
  try {
    const { queues } = await api("dlq");
    const names = queues.map((q) => q.destination || ({ "sms-fallback": "sms_fallback", replies: "reply" }[q.queue] || q.queue)).filter((n) => n !== "events");
    $("f-destination").append(...names.map((n) => el("option", { value: n }, n)));
  } catch (_) { /* kept */ }
}

async function sendSample() {
  const option = $("sample").selectedOptions[0];
  if (!option) return;
  const content = $("sample-content").value;
  try {
    const r = await post(`samples/${encodeURIComponent(option.value)}`, { source: option.dataset.source, content });
    const answer = typeof r.answer === "object" && r.answer ? r.answer.status || r.answer.error : r.answer;
    notice(`Sent ${r.sample} to ${r.source}: HTTP ${r.status} ${answer || ""}`);
  } catch (e) {
    notice("Sending the sample failed: " + e.message, true);
  }
}

function connect() {
  const live = $("live");
  const source = new EventSource(API + "stream");
  source.addEventListener("open", () => { live.textContent = "live"; live.className = "live"; });
  source.addEventListener("error", () => { live.textContent = "reconnecting"; live.className = "live off"; });
  source.addEventListener("request", (m) => {
    addLive(JSON.parse(m.data));
    debounce("stats", loadStats, 250);
  });
  source.addEventListener("changed", () => {
    debounce("detail", refreshDetail, 150);
    debounce("stats", loadStats, 250);
    debounce("rates", loadRates, 2000);
  });
  source.addEventListener("lagged", () => debounce("list", loadRequests, 100));
}

function start() {
  for (const id of ["f-source", "f-outcome", "f-destination"]) $(id).addEventListener("change", loadRequests);
  $("f-search").addEventListener("input", () => debounce("list", loadRequests, 250));
  $("send-sample").addEventListener("click", sendSample);
  loadChoices();
  loadRequests();
  loadStats();
  loadRates();
  connect();
}

document.addEventListener("DOMContentLoaded", start);
