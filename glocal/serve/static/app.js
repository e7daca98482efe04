// The glocal search page: pick or drop a photo, optionally drag a box on it, see the ranked results, open
// one to see the inlier matches (match.js), add photos or remove a result with the write token (match.js).
// Plain JavaScript served by the app (no build step, nothing loaded from elsewhere).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, img: null, url: null, box: null, drag: null, scale: 1, results: [], xhr: null, open: null };

// ---- messages and requests -----------------------------------------------------------------------------
function showMessage(text, ok = false) {
  $("message-text").textContent = text;
  $("message").classList.toggle("ok", ok);
  $("message").hidden = false;
}

function clearMessage() { $("message").hidden = true; }

/** A readable sentence for a failed request: the server's JSON `detail` when there is one. */
function errorText(status, body, what) {
  if (status === 0) return `${what}: the service could not be reached (is it still running?)`;
  let detail = null;
  try {
    detail = JSON.parse(body).detail;
  } catch (e) { /* not JSON: a proxy page, a crash */ }
  if (Array.isArray(detail)) {  // FastAPI's validation errors: [{loc, msg}, ...]
    detail = detail.map((d) => `${(d.loc || []).filter((p) => p !== "body" && p !== "query").join(".")}: ${d.msg}`)
      .join("; ");
  } else if (detail && typeof detail !== "string") {
    detail = JSON.stringify(detail);
  }
  const reason = detail || (body && body.length < 300 ? body.trim() : "") || "no reason given";
  return `${what} failed (HTTP ${status}): ${reason}`;
}

/** XMLHttpRequest as a promise of {status, body, json}; `onUpload(fraction)` while the body is sent,
 * `onSent()` once it is all sent (the server is working). */
function request(method, url, { body = null, token = null, onUpload = null, onSent = null } = {}) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    if (token) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    if (onUpload) xhr.upload.onprogress = (e) => { if (e.lengthComputable) onUpload(e.loaded / e.total); };
    if (onSent) xhr.upload.onload = onSent;
    const done = () => {
      let json = null;
      try { json = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      resolve({ status: xhr.status, body: xhr.responseText, json, aborted: xhr.aborted === true });
    };
    xhr.onload = done;
    xhr.onerror = done;
    xhr.onabort = () => { xhr.aborted = true; done(); };
    xhr.send(body);
    if (method === "POST" && url.startsWith("/search")) state.xhr = xhr;
  });
}

function progress(text, fraction = null) {
  $("progress").hidden = text === null;
  if (text === null) return;
  $("progress").classList.toggle("busy", fraction === null);
  $("progress-text").textContent = text;
  if (fraction !== null) $("progress-bar").value = Math.round(fraction * 100);
}

// ---- the header -----------------------------------------------------------------------------------------
function formatBytes(n) {
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

async function loadFacts() {
  const res = await request("GET", "/page/facts");
  const facts = $("facts");
  if (res.status !== 200 || !res.json) {
    facts.textContent = errorText(res.status, res.body, "Reading the index facts");
    return;
  }
  const f = res.json;
  const strong = (text) => { const b = document.createElement("b"); b.textContent = text; return b; };
  facts.replaceChildren(strong(String(f.images)), " images · method ", strong(f.method || "?"), " · ",
    strong(formatBytes(f.bytes)), " on disk · ");
  facts.append(f.writable ? (f.token ? "writable with a token" : "writable without a token") : "read-only");
  facts.dataset.images = f.images;
  $("edit-note").textContent = f.writable
    ? (f.token ? "Type the service's token to add or remove images." : "This service accepts edits without a token.")
    : "This service is read-only: the server will refuse edits (start it with --writable and a token).";
}

// ---- the query: pick, preview, box ----------------------------------------------------------------------
function pickFile(file) {
  if (!file) return;
  clearMessage();
  if (state.url) URL.revokeObjectURL(state.url);
  state.file = file;
  state.box = null;
  state.img = null;
  state.url = URL.createObjectURL(file);
  const img = new Image();
  $("query-note").textContent = "";
  img.onload = () => { state.img = img; $("preview").hidden = false; drawPreview(); };
  img.onerror = () => {
    $("preview").hidden = true;
    $("query-note").textContent = `This browser cannot show ${file.name}; it is searched anyway (the server reads more formats).`;
  };
  img.src = state.url;
  search();
}

function drawPreview() {
  const img = state.img;
  if (!img) return;
  const canvas = $("query-canvas");
  const width = Math.min(img.naturalWidth, $("preview").clientWidth || 340);
  state.scale = width / img.naturalWidth;
  canvas.width = width;
  canvas.height = Math.round(img.naturalHeight * state.scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  const box = state.drag || state.box;
  if (box) {
    const [x1, y1, x2, y2] = box.map((v) => v * state.scale);
    ctx.fillStyle = "rgba(0, 0, 0, 0.45)";  // dim what is outside the box
    ctx.fillRect(0, 0, canvas.width, y1);
    ctx.fillRect(0, y2, canvas.width, canvas.height - y2);
    ctx.fillRect(0, y1, x1, y2 - y1);
    ctx.fillRect(x2, y1, canvas.width - x2, y2 - y1);
    ctx.strokeStyle = "#ffd400";
    ctx.lineWidth = 2;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
  }
  $("box-text").textContent = state.box ? `Box: ${state.box.map((v) => Math.round(v)).join(", ")} px.` : "";
}

/** Pointer position on the preview in original-image pixels, inside the image. */
function imagePoint(e) {
  const rect = $("query-canvas").getBoundingClientRect();
  const sx = $("query-canvas").width / rect.width;  // CSS may shrink the canvas
  const x = ((e.clientX - rect.left) * sx) / state.scale;
  const y = ((e.clientY - rect.top) * sx) / state.scale;
  return [Math.max(0, Math.min(state.img.naturalWidth, x)), Math.max(0, Math.min(state.img.naturalHeight, y))];
}

function setupBox() {
  const canvas = $("query-canvas");
  let start = null;
  canvas.addEventListener("pointerdown", (e) => {
    if (!state.img) return;
    start = imagePoint(e);
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!start) return;
    const p = imagePoint(e);
    state.drag = [Math.min(start[0], p[0]), Math.min(start[1], p[1]), Math.max(start[0], p[0]), Math.max(start[1], p[1])];
    drawPreview();
  });
  canvas.addEventListener("pointerup", () => {
    if (!start) return;
    const box = state.drag;
    start = null;
    state.drag = null;
    const big = box && (box[2] - box[0]) * state.scale >= 6 && (box[3] - box[1]) * state.scale >= 6;
    if (big) { state.box = box; search(); }
    drawPreview();
  });
  $("clear-box").addEventListener("click", () => { state.box = null; drawPreview(); search(); });
  $("search-again").addEventListener("click", () => search());
}

// ---- searching and the results --------------------------------------------------------------------------
async function search() {
  if (!state.file) return;
  if (state.xhr) state.xhr.abort();
  clearMessage();
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  form.append("top", String(Math.max(1, parseInt($("top").value, 10) || 20)));
  form.append("matches", "true");
  if (state.box) form.append("bbox", state.box.map((v) => v.toFixed(1)).join(","));
  $("results-panel").classList.add("searching");
  progress("uploading the photo…", 0);
  const res = await request("POST", "/search", {
    body: form,
    onUpload: (f) => progress(`uploading the photo… ${Math.round(f * 100)} %`, f),
    onSent: () => progress("searching…"),
  });
  if (res.aborted) return;  // a newer search replaced this one
  state.xhr = null;
  progress(null);
  $("results-panel").classList.remove("searching");
  if (res.status !== 200 || !res.json) {
    showMessage(errorText(res.status, res.body, "Searching"));
    return;
  }
  renderResults(res.json.results, res.json.ms);
}

function card(hit, rank) {
  const li = document.createElement("li");
  li.className = "card";
  li.tabIndex = 0;
  li.dataset.name = hit.name;
  li.dataset.index = hit.index;
  const thumb = document.createElement("div");
  thumb.className = "thumb";
  const img = document.createElement("img");
  img.alt = hit.name;
  img.loading = "lazy";
  img.src = `/thumbnails/${hit.index}?size=small`;
  img.onerror = async () => {  // a placeholder saying why (the server's reason, asked for again)
    const ph = document.createElement("div");
    ph.className = "placeholder";
    ph.textContent = "picture unavailable";
    img.replaceWith(ph);
    const res = await request("GET", img.src);
    if (res.json && typeof res.json.detail === "string") ph.textContent = `picture unavailable: ${res.json.detail}`;
  };
  thumb.append(img);
  const meta = document.createElement("div");
  meta.className = "meta";
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = `${rank}. ${hit.name}`;
  if (typeof hit.verified === "boolean") {
    const badge = document.createElement("span");
    badge.className = `badge ${hit.verified ? "yes" : "no"}`;
    badge.textContent = hit.verified ? "verified" : "not verified";
    name.append(badge);
  }
  const nums = document.createElement("div");
  nums.className = "nums";
  nums.textContent = `score ${Number(hit.score).toFixed(2)} · ${hit.inliers} inliers`;
  meta.append(name, nums);
  li.append(thumb, meta);
  li.addEventListener("click", () => openMatch(hit, rank));
  li.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openMatch(hit, rank); } });
  return li;
}

function renderResults(results, ms) {
  state.results = results;
  const grid = $("results");
  grid.replaceChildren(...results.map((hit, i) => card(hit, i + 1)));
  const where = state.box ? " (inside the box)" : "";
  $("results-title").textContent = `Results for ${state.file.name}${where}`;
  $("results-note").textContent = results.length
    ? `${results.length} images in ${(ms / 1000).toFixed(2)} s, best first. Click one to see the matches.`
    : "No image of the index resembles this photo.";
  grid.dataset.ready = String(Date.now());
}

// ---- wiring ---------------------------------------------------------------------------------------------
function setup() {
  $("query-file").addEventListener("change", (e) => pickFile(e.target.files[0]));
  const drop = $("drop");
  window.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  window.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = [...(e.dataTransfer ? e.dataTransfer.files : [])][0];
    if (file) pickFile(file);
  });
  setupBox();
  $("message-close").addEventListener("click", clearMessage);
  $("match-close").addEventListener("click", closeMatch);
  $("match-remove").addEventListener("click", removeOpen);
  $("add-button").addEventListener("click", addPhotos);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeMatch(); });
  window.addEventListener("resize", () => { drawPreview(); });
  loadFacts();
}

setup();
