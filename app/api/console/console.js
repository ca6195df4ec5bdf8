// router-retriever console: plain DOM, no framework, no build step.
//
// Rules this file keeps:
// - every request goes to this service through a relative URL (the page is served at /console/,
//   so "../search" is the API's /search, also behind a proxy that adds a path prefix);
// - text from the API reaches the page only through textContent or createTextNode, never innerHTML;
// - the API key lives in one variable: never in a URL, storage, a cookie or the console log;
// - every failure is shown in words where the action was started.
"use strict";

/** Search modes. Add one line per mode when the API grows one; `body` is merged into the request. */
const SEARCH_MODES = [
  { value: "default", label: "server default (RR_SEARCH_MODE)", body: {} },
  { value: "dense", label: "dense (embeddings)", body: { mode: "dense" } },
  { value: "lexical", label: "lexical (BM25)", body: { mode: "lexical" } },
  { value: "hybrid", label: "hybrid (embeddings + BM25)", body: { mode: "hybrid" } },
];

/** The stages of `timings_ms`, in the order a query passes through them. */
const TIMING_STAGES = ["queue", "base", "route", "expert", "search", "total"];

/** What each routing mode means, for people. */
const ROUTE_MODES = {
  top1: "routed to the best-scoring expert",
  fanout: "fanned out: several experts searched, their lists merged",
  fallback: "fell back to the base encoder (no adapter): no expert scored high enough",
  forced: "expert chosen by hand: the router was bypassed",
};

let apiKey = null; // in memory only

const $ = (id) => document.getElementById(id);

/** An answer the API refused, with its status and the API's own message. */
class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }

  toString() {
    return this.status ? `${this.status} ${this.type}: ${this.message}` : this.message;
  }
}

/** Call the API: JSON in, JSON out; throws ApiError with the API's message when it refuses. */
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  let response;
  try {
    response = await fetch(`../${path}`, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store", redirect: "error",
    });
  } catch (error) {
    throw new ApiError(0, "network", `The service could not be reached: ${error.message}`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: shown as text below if this is an error
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(response.status, error.type || "http_error", error.message || text.slice(0, 300) || response.statusText);
  }
  return data;
}

// ---------------------------------------------------------------- small DOM helpers

/** An element with text (always as text, never parsed as HTML) and optional class. */
function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function showError(target, error) {
  target.textContent = String(error);
  target.hidden = false;
}

function clearError(target) {
  target.textContent = "";
  target.hidden = true;
}

function setFacts(list, facts) {
  list.replaceChildren();
  for (const [term, value] of facts) {
    list.append(el("dt", term), el("dd", value));
  }
}

function number(value, digits = 3) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "n/a";
}

/** A UTC timestamp from the API (`2026-12-05T11:54:26+00:00`) as `2026-12-05 11:54:26 UTC`; anything else as is. */
function when(iso) {
  const match = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?(?:Z|\+00:00)$/.exec(iso || "");
  return match ? `${match[1]} ${match[2]} UTC` : iso ?? "n/a";
}

/** Disable a form's buttons while `task` runs, so a second click cannot send it twice. */
async function busy(form, task) {
  const buttons = form.querySelectorAll("button");
  buttons.forEach((button) => { button.disabled = true; });
  try {
    await task();
  } finally {
    buttons.forEach((button) => { button.disabled = false; });
  }
}

// ---------------------------------------------------------------- snippets with highlighted terms

/** The query's words (letters or digits, 2+ characters), longest first so longer matches win. */
function queryTerms(query) {
  const terms = new Set();
  for (const match of query.toLowerCase().matchAll(/[\p{L}\p{N}]+/gu)) {
    if (match[0].length > 1) terms.add(match[0]);
  }
  return [...terms].sort((a, b) => b.length - a.length);
}

function termPattern(terms) {
  const escaped = terms.map((term) => term.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp(`(${escaped.join("|")})`, "giu");
}

/** About `size` characters of `text` around the first query term. */
function snippetOf(text, terms, size = 280) {
  if (text.length <= size) return text;
  const first = terms.length ? text.search(termPattern(terms)) : -1;
  const start = Math.max(0, Math.min(first - 60, text.length - size));
  return `${start > 0 ? "… " : ""}${text.slice(start, start + size)}${start + size < text.length ? " …" : ""}`;
}

/** Append `text` to `parent`, each query term wrapped in <mark>; all of it as text nodes. */
function appendHighlighted(parent, text, terms) {
  if (!terms.length) {
    parent.append(text);
    return;
  }
  text.split(termPattern(terms)).forEach((part, index) => {
    if (!part) return;
    parent.append(index % 2 === 1 ? el("mark", part) : document.createTextNode(part));
  });
}

// ---------------------------------------------------------------- search

function fillModes() {
  const select = $("mode");
  for (const mode of SEARCH_MODES) {
    const option = el("option", mode.label);
    option.value = mode.value;
    select.append(option);
  }
}

function optionalNumber(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

function searchBody() {
  const mode = SEARCH_MODES.find((m) => m.value === $("mode").value) || SEARCH_MODES[0];
  const body = { query: $("query").value, k: Number($("k").value), ...mode.body };
  if ($("expert").value) body.expert = $("expert").value;
  const route = { top_k: optionalNumber("top-k"), threshold: optionalNumber("threshold"), min_score: optionalNumber("min-score") };
  for (const key of Object.keys(route)) if (route[key] === undefined) delete route[key];
  if (Object.keys(route).length) body.route = route;
  return body;
}

function renderHits(hits, query) {
  const terms = queryTerms(query);
  const list = $("hits");
  list.replaceChildren();
  hits.forEach((hit, index) => {
    const item = el("li");
    item.dataset.id = hit.id;
    const title = el("p", null, "hit-title");
    title.append(el("span", `#${index + 1} `, "rank"));
    appendHighlighted(title, hit.title || "(no title)", terms);
    const parts = [`id ${hit.id}`, `expert ${hit.expert}`, `score ${number(hit.score, 4)}`];
    if (hit.dense_score != null) parts.push(`dense ${number(hit.dense_score, 4)}`);
    if (hit.lexical_score != null) parts.push(`BM25 ${number(hit.lexical_score, 2)}`);
    const meta = el("p", parts.join(" · "), "hit-meta");
    const snippet = el("p", null, "hit-snippet");
    appendHighlighted(snippet, snippetOf(hit.text || "", terms), terms);
    item.append(title, meta, snippet);
    list.append(item);
  });
  $("hits-empty").hidden = hits.length > 0;
}

function renderRoute(route) {
  const chosen = new Set(route.experts);
  setFacts($("route-facts"), [
    ["Expert", route.experts.join(", ")],
    ["Mode", `${route.mode}: ${ROUTE_MODES[route.mode] || "unknown mode"}`],
    ["Margin", route.margin === null ? "n/a (one expert, or chosen by hand)" : number(route.margin, 4)],
    ["Adapters", route.use_adapters ? "used" : "not used (base encoder)"],
    ["Reason", route.reason],
  ]);
  const scores = Object.entries(route.router_scores);
  const chart = $("router-chart");
  chart.replaceChildren();
  $("chart-empty").hidden = scores.length > 0;
  if (!scores.length) return;
  // Scores are cosine similarities (-1..1): bars start at 0, or at the lowest score if one is negative.
  const values = scores.map(([, score]) => score);
  const low = Math.min(0, ...values);
  const span = Math.max(...values) - low || 1;
  for (const [name, score] of scores) {
    const row = el("li", null, chosen.has(name) ? "chosen" : "");
    row.dataset.expert = name;
    const track = el("span", null, "track");
    const bar = el("span", null, "bar");
    bar.style.width = `${(100 * (score - low)) / span}%`;
    track.append(bar);
    track.setAttribute("aria-hidden", "true");
    row.append(el("span", chosen.has(name) ? `${name} (chosen)` : name, "name"), track, el("span", number(score), "value"));
    chart.append(row);
  }
}

function renderTimings(timings, batch) {
  const facts = TIMING_STAGES.map((stage) => [stage, `${number(timings[`${stage}_ms`], 1)} ms`]);
  facts.push(["batch", `answered with ${batch.requests} request(s), ${batch.queries} query(ies)`]);
  setFacts($("timings"), facts);
}

async function runSearch(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearError($("search-error"));
  await busy(form, async () => {
    try {
      const body = searchBody();
      const data = await api("POST", "search", body);
      const result = data.results[0];
      renderHits(result.hits, body.query);
      renderRoute(result.route);
      renderTimings(data.timings_ms, data.batch);
      $("search-output").hidden = false;
    } catch (error) {
      showError($("search-error"), error);
    }
  });
  loadHealth();
}

// ---------------------------------------------------------------- experts

function fillExpertChoice(names) {
  const select = $("expert");
  const current = select.value;
  select.replaceChildren(select.options[0]);
  for (const name of names) {
    const option = el("option", name);
    option.value = name;
    select.append(option);
  }
  select.value = names.includes(current) ? current : "";
}

function expertRow(expert) {
  // "building": not published yet, built beside the service (rr demo); expert.building says what it is doing.
  const row = el("tr", null, expert.state === "loaded" ? "" : expert.state);
  row.dataset.expert = expert.name;
  const adapter = expert.adapter ? `${expert.adapter.side}, ${expert.adapter.trained ? "trained" : "untrained"}` : "n/a";
  const cells = [
    [expert.name], [expert.state], [expert.documents ?? "n/a", "number"],
    [expert.index ? expert.index.factory : "n/a"], [adapter], [expert.version ?? "n/a", "number"],
    [expert.routable ? "yes" : "no"], [expert.error || expert.building || ""],
  ];
  for (const [text, className] of cells) row.append(el("td", text, className));
  if (expert.state === "building") {
    row.children[1].className = "badge";
    row.append(el("td"));  // nothing to remove yet: it is published when complete
    return row;
  }
  const versions = el("button", "Versions");
  versions.type = "button";
  versions.setAttribute("aria-label", `Versions of expert ${expert.name}`);
  versions.setAttribute("aria-controls", "versions");
  versions.setAttribute("aria-expanded", String(shownVersions === expert.name));
  versions.addEventListener("click", () => openVersions(expert.name));
  const button = el("button", "Remove");
  button.type = "button";
  button.setAttribute("aria-label", `Remove expert ${expert.name}`);
  button.addEventListener("click", () => removeExpert(expert.name, button));
  const action = el("td", null, "actions");
  action.append(versions, button);
  row.append(action);
  return row;
}

/** While experts are building or training (rr demo), the list refreshes itself every few seconds; one timer at most. */
const BUILDING_REFRESH_MS = 5000;

/** Whether rr demo is still at work on an expert (building, training), rather than reporting a training it gave up on. */
function stillAtWork(doing) {
  return Boolean(doing) && !doing.startsWith("training failed");
}
let buildingRefresh = null;

async function loadExperts() {
  clearError($("experts-error"));
  window.clearTimeout(buildingRefresh);
  buildingRefresh = null;
  try {
    const data = await api("GET", "experts");
    $("experts-rows").replaceChildren(...data.experts.map(expertRow));
    if (shownVersions !== null && !data.experts.some((e) => e.name === shownVersions && e.state !== "building")) {
      closeVersions();  // unpublished since: nothing left to show
    }
    fillExpertChoice(data.experts.filter((e) => e.state === "loaded").map((e) => e.name));
    if (buildingRefresh === null && data.experts.some((e) => e.state === "building" || stillAtWork(e.building))) {
      buildingRefresh = window.setTimeout(loadExperts, BUILDING_REFRESH_MS);
    }
  } catch (error) {
    showError($("experts-error"), error);
  }
}

async function addExpert(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearError($("admin-error"));
  $("admin-status").textContent = "";
  await busy(form, async () => {
    try {
      const expert = await api("POST", "admin/experts", { path: $("add-path").value.trim(), replace: $("add-replace").checked });
      $("admin-status").textContent = `Published ${expert.name} (${expert.documents ?? "?"} documents, ${expert.state}).`;
      form.reset();
    } catch (error) {
      showError($("admin-error"), error);
    }
  });
  await Promise.all([loadExperts(), loadHealth()]);
}

async function removeExpert(name, button) {
  clearError($("admin-error"));
  $("admin-status").textContent = "";
  if (!window.confirm(`Remove expert "${name}" from the service? Its files stay on disk.`)) return;
  button.disabled = true;
  try {
    const removed = await api("DELETE", `admin/experts/${encodeURIComponent(name)}`);
    $("admin-status").textContent = `Removed ${removed.name}${removed.unloaded ? "" : " (it unloads when its searches finish)"}.`;
  } catch (error) {
    showError($("admin-error"), error);
    button.disabled = false;
  }
  await Promise.all([loadExperts(), loadHealth()]);
}

// ---------------------------------------------------------------- versions and rollback

let shownVersions = null; // the expert whose versions are shown, if any
let versionsRequest = 0; // only the latest request's answer is shown

/** Whether the key in hand may roll back (holds the admin scope), and if not, why; asked of GET /admin/keys. */
let adminAccess = { allowed: false, reason: "Rolling back needs a key with the admin scope: no key is set." };

async function checkAdminAccess() {
  const key = apiKey;
  let access;
  if (!key) {
    access = { allowed: false, reason: "Rolling back needs a key with the admin scope: no key is set." };
  } else {
    try {
      await api("GET", "admin/keys");
      access = { allowed: true, reason: "" };
    } catch (error) {
      access = { allowed: false, reason: `Rolling back needs a key with the admin scope: ${error}` };
    }
  }
  if (key !== apiKey) return; // the key changed while we asked: the newer check decides
  adminAccess = access;
  renderAccess();
}

/** Enable or disable every Roll back button, and say why they are disabled. */
function renderAccess() {
  $("rollback-access").textContent = adminAccess.allowed
    ? "This key has the admin scope: kept versions can be rolled back to."
    : adminAccess.reason;
  $("rollback-access").dataset.allowed = String(adminAccess.allowed);
  for (const button of document.querySelectorAll("#versions-rows button[data-version]")) {
    button.disabled = !adminAccess.allowed;
  }
}

/** A training section in one line: how, on how much, how far the loss fell, when. */
function trainingSummary(version) {
  if (version.error) return `files unreadable: ${version.error}`;
  const training = version.training;
  if (!training) return version.trained ? "trained elsewhere (no training section)" : "none (untrained adapter)";
  const steps = training.recipe && training.recipe.steps !== undefined ? `, ${training.recipe.steps} steps` : "";
  return `${training.mode}, ${training.pairs} pairs${steps}, loss ${number(training.first_loss)} → `
    + `${number(training.final_loss)}, ${training.documents} documents, ${when(training.trained_at)}`;
}

function figures(side) {
  return `v${side.version}: nDCG@10 ${number(side.ndcg_at_10, 4)}, R@100 ${number(side.recall_at_100, 4)}`;
}

/** The gate's figures as a small definition list, or a word when this version passed no gate. */
function gateCell(gate) {
  const cell = el("td", null, "gate");
  if (!gate) {
    cell.textContent = "no gate";
    return cell;
  }
  const facts = el("dl", null, "facts");
  setFacts(facts, [
    ["Set", `${gate.set} (${gate.queries} queries, ${gate.mode})`],
    ["Candidate", figures(gate.candidate)],
    ["Serving", gate.serving ? figures(gate.serving) : "none (nothing was serving)"],
    ["Margin", number(gate.margin, 4)],
    ["Outcome", gate.passed ? "passed" : "refused"],
    ["Measured", when(gate.measured_at)],
  ]);
  cell.append(facts);
  return cell;
}

function versionRow(name, version) {
  const row = el("tr", null, version.serving ? "serving" : "");
  row.dataset.version = version.version;
  row.dataset.path = version.path;
  const adapter = version.trained === null || version.trained === undefined ? "n/a" : version.trained ? "trained" : "untrained";
  const cells = [
    [version.version, "number"], [version.serving ? "serving" : "kept"], [when(version.published_at), "when"],
    [version.documents ?? "n/a", "number"], [adapter], [trainingSummary(version), "training"],
  ];
  for (const [text, className] of cells) row.append(el("td", text, className));
  row.append(gateCell(version.gate));
  const action = el("td");
  if (version.serving) {
    action.textContent = "serving now";
  } else {
    const button = el("button", "Roll back");
    button.type = "button";
    button.dataset.version = version.version;
    button.disabled = !adminAccess.allowed;
    button.setAttribute("aria-label", `Roll back expert ${name} to version ${version.version}`);
    button.setAttribute("aria-describedby", "rollback-access");
    button.addEventListener("click", () => rollbackTo(name, version.version, button));
    action.append(button);
  }
  row.append(action);
  return row;
}

async function loadVersions() {
  const name = shownVersions;
  if (name === null) return;
  const request = ++versionsRequest;
  try {
    const expert = await api("GET", `experts/${encodeURIComponent(name)}`);
    if (request !== versionsRequest) return;
    $("versions-rows").replaceChildren(...expert.versions.map((version) => versionRow(name, version)));
  } catch (error) {
    if (request !== versionsRequest) return;
    $("versions-rows").replaceChildren();
    showError($("versions-error"), error);
  }
}

function markExpanded() {
  for (const button of document.querySelectorAll("#experts-rows button[aria-controls=versions]")) {
    button.setAttribute("aria-expanded", String(button.closest("tr").dataset.expert === shownVersions));
  }
}

async function openVersions(name) {
  shownVersions = name;
  $("versions-name").textContent = name;
  $("versions-status").textContent = "";
  clearError($("versions-error"));
  $("versions-rows").replaceChildren();
  $("versions").hidden = false;
  markExpanded();
  renderAccess();
  $("versions-title").focus(); // a screen reader hears which expert's versions opened
  await loadVersions();
}

function closeVersions() {
  const name = shownVersions;
  const hadFocus = $("versions").contains(document.activeElement);
  shownVersions = null;
  versionsRequest += 1;
  $("versions").hidden = true;
  markExpanded();
  // Focus goes back to the button that opened the panel, when that expert is still listed.
  const opener = [...document.querySelectorAll("#experts-rows button[aria-controls=versions]")]
    .find((button) => button.closest("tr").dataset.expert === name);
  if (opener && hadFocus) opener.focus();
}

async function rollbackTo(name, version, button) {
  clearError($("versions-error"));
  $("versions-status").textContent = "";
  const question = `Roll expert "${name}" back to version ${version}? It is checked before it serves; `
    + "the version serving now is kept, so another rollback can undo this.";
  if (!window.confirm(question)) return;
  button.disabled = true;
  try {
    const expert = await api("POST", `admin/experts/${encodeURIComponent(name)}/rollback`, { version });
    $("versions-status").textContent = `Rolled back ${expert.name}: now serving version ${expert.version} (${expert.path}).`;
  } catch (error) {
    showError($("versions-error"), error);
  }
  await Promise.all([loadVersions(), loadExperts(), loadHealth()]);
}

// ---------------------------------------------------------------- health

function cellRow(cells) {
  const row = el("tr");
  for (const [text, className] of cells) row.append(el("td", text, className));
  return row;
}

async function loadReadiness() {
  const line = $("readiness");
  try {
    const ready = await api("GET", "readyz");
    const work = Object.entries(ready.building || {});
    const busy = work.filter(([, doing]) => stillAtWork(doing)).map(([name, doing]) => `${name}: ${doing}`);
    const failed = work.filter(([, doing]) => !stillAtWork(doing)).map(([name, doing]) => `${name}: ${doing}`);
    line.textContent = `Ready: serving ${ready.experts.length} expert(s): ${ready.experts.join(", ") || "none"}.`
      + (busy.length ? ` Still building or training ${busy.join("; ")}.` : "")
      + (failed.length ? ` ${failed.join("; ")}.` : "");
    line.dataset.state = "ready";
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 503) throw error;
    line.textContent = `Not ready: ${error.message}`;
    line.dataset.state = "not-ready";
  }
}

async function loadMetrics() {
  const summary = await api("GET", "metrics/summary");
  const search = summary.routes.find((r) => r.route === "/search" && r.method === "POST");
  setFacts($("health-facts"), [
    ["Requests", summary.requests],
    ["Server errors (5xx)", summary.server_errors],
    ["Search p50 / p95", search ? `${number(search.p50_ms, 1)} / ${number(search.p95_ms, 1)} ms` : "no searches yet"],
    ["Waiting queries", Object.entries(summary.queue_depth).map(([kind, n]) => `${kind} ${n}`).join(", ") || "0"],
    ["Refused (queue full)", Object.values(summary.rejected).reduce((a, b) => a + b, 0)],
  ]);
  $("routes-rows").replaceChildren(...summary.routes.map((r) => cellRow([
    [`${r.method} ${r.route}`], [r.requests, "number"], [r.server_errors, "number"],
    [number(r.p50_ms, 1), "number"], [number(r.p95_ms, 1), "number"],
  ])));
  $("routed-rows").replaceChildren(...summary.routed.map((r) => {
    const row = cellRow([[r.expert], [r.mode], [r.queries, "number"]]);
    row.dataset.expert = r.expert;
    return row;
  }));
}

async function loadHealth() {
  clearError($("health-error"));
  const outcomes = await Promise.allSettled([loadReadiness(), loadMetrics()]);
  const failures = outcomes.filter((o) => o.status === "rejected").map((o) => String(o.reason));
  if (failures.length) showError($("health-error"), failures.join("; "));
}

// ---------------------------------------------------------------- the key

function setKey(event) {
  event.preventDefault();
  const input = $("key");
  apiKey = input.value.trim() || null;
  input.value = ""; // the key now lives only in `apiKey`, not in the page
  $("key-state").textContent = apiKey ? "A key is set for this page." : "No key set.";
  loadExperts();
  loadVersions();
  checkAdminAccess();
}

function forgetKey() {
  apiKey = null;
  $("key").value = "";
  $("key-state").textContent = "No key set.";
  checkAdminAccess();
}

// ---------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", () => {
  fillModes();
  $("search-form").addEventListener("submit", runSearch);
  $("add-form").addEventListener("submit", addExpert);
  $("key-form").addEventListener("submit", setKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("experts-refresh").addEventListener("click", loadExperts);
  $("health-refresh").addEventListener("click", loadHealth);
  $("versions-refresh").addEventListener("click", () => {
    clearError($("versions-error"));
    loadVersions();
  });
  $("versions-close").addEventListener("click", closeVersions);
  renderAccess();
  loadExperts();
  loadHealth();
});
