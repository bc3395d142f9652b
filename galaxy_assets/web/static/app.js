// galaxy-assets search page: plain JavaScript, no build step.
// The URL holds the query state (q, term, object, filter, k, rerank, k_rerank, detail), so a
// copied URL reproduces the search; every piece of server text is set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
// seq numbers searches: a new search supersedes one still running, whose answer is dropped
const state = { info: null, shown: 0, last: null, loading: false, seq: 0 };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(digits);
  return String(value);
}

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : `HTTP ${response.status}`;
    const err = new Error(message);
    err.status = response.status;
    throw err;
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

// ------------------------------------------------------------------ query state <-> URL
function termRows() { return Array.from(document.querySelectorAll("#terms .term")); }

function termSpec(row) {
  const value = row.querySelector(".value").value.trim();
  if (!value) return null;
  const sign = row.querySelector(".sign").value === "-" ? "-" : "";
  const kind = row.querySelector(".kind").value;
  const weight = parseFloat(row.querySelector(".weight").value);
  const w = Number.isFinite(weight) && weight > 0 && weight !== 1 ? `^${weight}` : "";
  return `${sign}${kind}:${value}${w}`;
}

function addTermRow(spec) {
  let sign = "+", kind = "text", value = "", weight = "1";
  if (spec) {
    const m = /^\s*([+-])?\s*(?:(text|object):)?(.*?)(?:\^([0-9]*\.?[0-9]+))?\s*$/s.exec(spec);
    if (m) { sign = m[1] || "+"; kind = m[2] || "text"; value = m[3]; weight = m[4] || "1"; }
  }
  const signSel = el("select", { class: "sign", "aria-label": "sign" },
    el("option", { value: "+", text: "+" }), el("option", { value: "-", text: "−" }));
  signSel.value = sign;
  const kindSel = el("select", { class: "kind", "aria-label": "kind" },
    el("option", { value: "text", text: "text" }), el("option", { value: "object", text: "object" }));
  kindSel.value = kind;
  const row = el("div", { class: "term" }, signSel, kindSel,
    el("input", { class: "value", type: "text", value, placeholder: "text or object_id",
      "aria-label": "term" }),
    el("input", { class: "weight", type: "number", step: "0.1", min: "0.01", value: weight,
      "aria-label": "weight" }),
    el("button", { type: "button", text: "×", "aria-label": "remove term",
      onclick: () => row.remove() }));
  $("terms").append(row);
}

function formState() {
  const filters = $("filters").value.split("\n").map((s) => s.trim()).filter(Boolean);
  return {
    q: $("q").value.trim(),
    term: termRows().map(termSpec).filter(Boolean),
    object: state.object || "",
    filter: filters,
    k: $("k").value,
    rerank: $("rerank").checked,
    k_rerank: $("k_rerank").value,
  };
}

function toParams(s) {
  const p = new URLSearchParams();
  if (s.q) p.set("q", s.q);
  for (const t of s.term || []) p.append("term", t);
  if (s.object) p.set("object", s.object);
  for (const f of s.filter || []) p.append("filter", f);
  if (s.k && s.k !== defaultPage()) p.set("k", s.k);
  if (s.rerank) { p.set("rerank", "true"); p.set("k_rerank", s.k_rerank || defaultDepth()); }
  return p;
}

// the server's page size (/api/info defaults.k), which the API uses when k is absent
function defaultPage() {
  const k = state.info && state.info.defaults && state.info.defaults.k;
  return k ? String(k) : "24";
}

// the server's re-ranking depth (the settings' search.k_rerank), as the API and CLI use
function defaultDepth() {
  const d = state.info && state.info.defaults && state.info.defaults.k_rerank;
  return d ? String(d) : "100";
}

function fromURL() {
  const p = new URLSearchParams(location.search);
  return {
    q: p.get("q") || "",
    term: p.getAll("term"),
    object: p.get("object") || "",
    filter: p.getAll("filter"),
    k: p.get("k") || defaultPage(),
    rerank: p.get("rerank") === "true",
    k_rerank: p.get("k_rerank") || defaultDepth(),
    detail: p.get("detail") || "",
  };
}

function fillForm(s) {
  $("q").value = s.q;
  $("terms").replaceChildren();
  for (const t of s.term) addTermRow(t);
  $("filters").value = s.filter.join("\n");
  const k = $("k");
  if (![...k.options].some((o) => o.value === s.k)) k.append(el("option", { text: s.k }));
  k.value = s.k;
  $("rerank").checked = s.rerank;
  $("k_rerank").value = s.k_rerank;
  state.object = s.object;
  if (s.term.length || s.filter.length) setAdvanced(true);
}

// a thumbnail URL at a size: the server's URL already carries a query (?v=<table version>),
// so the size is added to its parameters (appending "?size=" made v read "6?size=192" and the
// server drew its default size)
function thumbSrc(url, size) {
  const u = new URL(url, location.href);
  u.searchParams.set("size", String(size));
  return `${u.pathname}${u.search}`;
}

function hasQuery(s) { return Boolean(s.q || s.object || (s.term && s.term.length)); }

function setAdvanced(open) {
  $("advanced").hidden = !open;
  $("toggle-advanced").setAttribute("aria-expanded", String(open));
}

// ------------------------------------------------------------------ results
function card(r) {
  const caption = r.caption || "no caption";
  const img = el("img", { src: thumbSrc(r.thumbnail_url, 192), alt: r.object_id, loading: "lazy",
    width: "192", height: "192" });
  const thumb = el("button", { class: "thumb", type: "button", title: caption,
    "aria-label": `details of ${r.object_id}`, onclick: () => openDetail(r.object_id, true) },
    img, el("div", { class: "cap", text: caption }));
  img.addEventListener("error", () => {
    img.replaceWith(el("div", { class: "nopix", text: "no pixels for this galaxy" }));
  });
  const score = r.rating !== undefined && r.rating !== null
    ? `★${fmt(r.rating, 1)} · ${fmt(r.score)}` : fmt(r.score);
  return el("div", { class: "card", "data-object-id": r.object_id },
    thumb,
    el("div", { class: "meta" }, el("span", { text: `#${r.rank}` }), el("span", { class: "score", text: score })),
    el("div", { class: "oid", title: r.object_id, text: r.object_id }),
    el("button", { class: "mlt", type: "button", text: "more like this",
      onclick: () => moreLikeThis(r.object_id) }));
}

function renderSummary(body, upload) {
  $("summary").hidden = false;
  $("query-label").textContent = body.query;
  const filters = body.filter_exprs && body.filter_exprs.length ? ` · filters: ${body.filter_exprs.join(", ")}` : "";
  const rr = body.rerank ? ` · re-ranked top ${body.rerank.k_rerank} (${body.rerank.n_rated} rated)` : "";
  const ms = Object.values(body.timings_ms || {}).reduce((a, b) => a + b, 0);
  $("counts").textContent = `— ${state.shown} shown of ${body.n_indexed} galaxies · table v${body.table_version}` +
    `${filters}${rr} · ${ms.toFixed(0)} ms`;
  $("share").hidden = Boolean(upload);
  $("share").href = location.href;
  const list = $("explanation");
  list.replaceChildren();
  for (const e of body.explanation || []) {
    list.append(el("li", { text: `${e.term}: cosine to the combined query ${fmt(e.cosine)}` }));
  }
}

async function runSearch(append) {
  if (append && state.loading) return;  // "more" waits; a new search replaces the running one
  const s = state.current;
  if (!s || !hasQuery(s)) return;
  const seq = ++state.seq;
  state.loading = true;
  showError("");
  const params = toParams(s);
  const offset = append ? state.shown : 0;
  if (offset) {
    params.set("offset", String(offset));
    // continue the first page's ranking even if the index moved since
    if (state.last) {
      params.set("table_version", String(state.last.table_version));
      // a table dropped and built again reuses version numbers: its epoch tells them apart
      if (state.last.table_epoch !== undefined) params.set("table_epoch", String(state.last.table_epoch));
    }
  }
  $("go").disabled = true;
  try {
    const body = await api(`/api/search?${params}`);
    if (seq !== state.seq) return;  // a newer search was started meanwhile
    if (!append) { $("grid").replaceChildren(); state.shown = 0; }
    for (const r of body.results) $("grid").append(card(r));
    state.shown += body.results.length;
    state.last = body;
    renderSummary(body, false);
    $("more").hidden = !body.has_more;
    if (!append && body.results.length === 0) showError("no galaxy matches this query and these filters");
  } catch (err) {
    if (seq !== state.seq) return;
    showError(err.message);
    if (append && err.status === 409) $("more").hidden = true;  // search again from the top
    if (!append) { $("grid").replaceChildren(); $("summary").hidden = true; $("more").hidden = true; }
  } finally {
    if (seq === state.seq) {
      state.loading = false;
      $("go").disabled = false;
    }
  }
}

function navigate(s, push = true) {
  state.current = s;
  const params = toParams(s);
  const url = `${location.pathname}${params.toString() ? "?" + params : ""}`;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
  runSearch(false);
}

function moreLikeThis(objectId) {
  const dialog = $("detail");
  if (dialog.open) dialog.close();
  const s = formState();
  state.object = objectId;
  $("q").value = "";
  $("terms").replaceChildren();
  // similarity to a galaxy has no text to re-rank against (the API refuses re-ranking it)
  navigate({ ...s, q: "", term: [], object: objectId, rerank: false });
}

async function uploadSearch() {
  const file = $("upload").files[0];
  if (!file) { showError("choose a FITS file first"); return; }
  const s = formState();
  const data = new FormData();
  data.append("file", file);
  data.append("k", s.k);
  for (const f of s.filter) data.append("filter", f);
  if (s.q) data.append("term", `text:${s.q}`);
  for (const t of s.term) data.append("term", t);
  showError("");
  $("upload-go").disabled = true;
  const seq = ++state.seq;  // supersedes a text search still running, and is superseded
  // the superseded search's own "finally" no longer resets the search controls (its seq is
  // old): without this the Search button stayed disabled for good
  state.loading = false;
  $("go").disabled = false;
  $("more").hidden = true;
  try {
    const body = await api("/api/search/image", { method: "POST", body: data });
    if (seq !== state.seq) return;  // a newer search was started meanwhile
    $("grid").replaceChildren();
    for (const r of body.results) $("grid").append(card(r));
    state.shown = body.results.length;
    renderSummary(body, true);
    $("more").hidden = true;
    $("upload-note").textContent = "Upload results cannot be paged or shared; upload again for more.";
  } catch (err) {
    if (seq === state.seq) showError(err.message);
  } finally {
    $("upload-go").disabled = false;
  }
}

// ------------------------------------------------------------------ detail view
function kvTable(entries) {
  const table = el("table", { class: "kv" });
  for (const [key, value] of entries) {
    let cell;
    if (typeof value === "string" && /^https?:\/\//.test(value)) {
      cell = el("td", {}, el("a", { href: value, target: "_blank", rel: "noopener", text: value }));
    } else {
      cell = el("td", { text: fmt(value, 4) });
    }
    table.append(el("tr", {}, el("td", { text: key }), cell));
  }
  return table;
}

function section(title, ...content) {
  return el("section", {}, el("h3", { text: title }), ...content);
}

async function openDetail(objectId, push) {
  const dialog = $("detail");
  const body = $("detail-body");
  body.replaceChildren(el("p", { class: "muted", text: `loading ${objectId}…` }));
  if (!dialog.open) dialog.showModal();
  if (push) {
    const p = new URLSearchParams(location.search);
    p.set("detail", objectId);
    history.replaceState(null, "", `${location.pathname}?${p}`);
  }
  let d;
  try {
    d = await api(`/api/galaxy/${encodeURIComponent(objectId)}`);
  } catch (err) {
    body.replaceChildren(el("p", { class: "muted", text: err.message }));
    return;
  }
  const img = el("img", { src: thumbSrc(d.thumbnail_url, 256), alt: d.object_id, width: "256", height: "256" });
  img.addEventListener("error", () => img.replaceWith(el("div", { class: "nopix", text: "no pixels" })));
  const facts = el("div", { class: "facts" },
    el("h2", { text: d.object_id }),
    el("div", { text: `RA ${fmt(d.ra, 5)}  Dec ${fmt(d.dec, 5)}  HEALPix ${fmt(d.healpix)}` }));
  if (d.viewer_url) {
    facts.append(el("div", {}, el("a", { id: "viewer-link", href: d.viewer_url, target: "_blank",
      rel: "noopener", text: "Legacy Survey sky viewer ↗" })));
  }
  if (d.caption) {
    facts.append(el("p", { class: "caption-text", text: d.caption.text }));
    facts.append(el("div", { class: "muted small",
      text: `caption by ${d.caption.backend || "?"} · model ${d.caption.model || "?"}` +
        (d.caption.prompt ? ` · prompt ${d.caption.prompt.name}` : "") +
        (d.caption.prompt_sha ? ` (sha ${d.caption.prompt_sha})` : "") }));
    if (d.caption.prompt) facts.append(el("pre", { class: "prompt", text: d.caption.prompt.text }));
    if (d.caption.note) facts.append(el("div", { class: "muted small", text: d.caption.note }));
  } else {
    facts.append(el("p", { class: "muted", text: "no caption: found through its image vector alone" }));
  }
  facts.append(el("button", { id: "detail-more", type: "button", text: "more like this",
    onclick: () => moreLikeThis(d.object_id) }));
  const bars = el("div", { class: "bars" });
  for (const [name, value] of Object.entries(d.morphology || {})) {
    if (value === null || value === undefined) continue;
    bars.append(el("div", {}, el("span", { class: "name", text: name }),
      el("span", { class: "bar", style: `width:${Math.round(Math.max(0, Math.min(1, value)) * 160)}px` }),
      el("span", { text: fmt(value, 2) })));
  }
  const posteriors = Object.entries(d.posteriors || {});
  body.replaceChildren(
    el("div", { class: "detail-head" }, img, facts),
    el("div", { class: "detail-sections" },
      section("Morphology (predicted vote fractions)",
        bars.childElementCount ? bars : el("p", { class: "muted", text: "no predictions" })),
      section("Posterior summaries",
        posteriors.length ? kvTable(posteriors) : el("p", { class: "muted", text: "none indexed" })),
      section("Lineage", kvTable(Object.entries(d.lineage || {}))),
      section("Photometry", kvTable(Object.entries(d.photometry || {}))),
      section("All indexed columns", kvTable(Object.entries(d.columns || {})))));
}

// ------------------------------------------------------------------ start
async function start() {
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.object = "";
    navigate(formState());
  });
  $("toggle-advanced").addEventListener("click", () => setAdvanced($("advanced").hidden));
  $("add-term").addEventListener("click", () => addTermRow(""));
  $("more").addEventListener("click", () => runSearch(true));
  $("upload-go").addEventListener("click", uploadSearch);
  $("detail").addEventListener("close", () => {
    const p = new URLSearchParams(location.search);
    if (p.has("detail")) {
      p.delete("detail");
      history.replaceState(null, "", `${location.pathname}${p.toString() ? "?" + p : ""}`);
    }
  });
  window.addEventListener("popstate", () => {
    const s = fromURL();
    fillForm(s);
    state.current = s;
    if (hasQuery(s)) runSearch(false);
  });
  try {
    const info = await api("/api/info");
    state.info = info;
    $("status").textContent = `${info.table} v${info.table_version} · ${info.n_indexed} galaxies · ${info.aligner_version || ""}`;
    for (const example of info.examples || []) {
      $("examples").append(el("button", { type: "button", text: example, onclick: () => {
        $("q").value = example;
        state.object = "";
        navigate(formState());
      } }));
    }
    $("rerank-label").hidden = !info.capabilities.rerank;
    $("upload-go").disabled = !info.capabilities.image_upload;
    if (!info.capabilities.image_upload) $("upload-note").textContent = "this server has no image encoder for uploads";
    $("columns").textContent = Object.keys(info.filterable_columns || {}).join(", ");
  } catch (err) {
    $("status").textContent = "index unavailable";
    showError(err.message);
  }
  const s = fromURL();
  fillForm(s);
  state.current = s;
  if (hasQuery(s)) await runSearch(false);
  if (s.detail) openDetail(s.detail, false);
}

document.addEventListener("DOMContentLoaded", start);
