// The glocal search page: pick or drop a photo, optionally drag a box on it, see the ranked results, open
// one to see the inlier matches, add photos or remove a result with the write token. Plain JavaScript
// served by the app (no build step, nothing loaded from elsewhere).
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

// ---- the match view -------------------------------------------------------------------------------------
function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`cannot load ${url}`));
    img.src = url;
  });
}

async function openMatch(hit, rank) {
  state.open = hit;
  $("match-view").hidden = false;
  $("match-title").textContent = `${rank}. ${hit.name}`;
  const canvas = $("match-canvas");
  delete canvas.dataset.drawn;
  canvas.width = 0;
  const n = hit.matches ? hit.matches.length : 0;
  const verdict = typeof hit.verified === "boolean" ? (hit.verified ? " · verified" : " · not verified") : "";
  $("match-note").textContent = `score ${Number(hit.score).toFixed(2)} · ${hit.inliers} inliers${verdict} · loading the picture…`;
  const info = await request("GET", `/thumbnails/${hit.index}/info`);
  if (state.open !== hit) return;
  if (info.status !== 200) {
    $("match-note").textContent = errorText(info.status, info.body, "Loading the picture");
    return;
  }
  let db;
  try {
    db = await loadImage(`/thumbnails/${hit.index}?size=large`);
  } catch (e) {
    $("match-note").textContent = `The picture of ${hit.name} could not be loaded.`;
    return;
  }
  if (state.open !== hit) return;
  drawMatches(hit, db, info.json);
  const drawnNote = state.img ? (n ? `${n} inlier matches drawn` : "no inlier matches to draw (re-ranking did not verify this image)")
    : "the query cannot be shown by this browser";
  $("match-note").textContent = `score ${Number(hit.score).toFixed(2)} · ${hit.inliers} inliers${verdict} · ${drawnNote}`;
}

/** Query (left) and result (right) at the same height, inlier matches as lines between them. The match
 * coordinates are in original pixels of each image; `size` is the result's original width and height. */
function drawMatches(hit, db, size) {
  const canvas = $("match-canvas");
  const q = state.img;
  const gap = 16;
  const qw = q ? q.naturalWidth : 0;
  const qh = q ? q.naturalHeight : 1;
  const maxW = Math.max(320, $("match-view").clientWidth - 40);
  let h = Math.max(200, Math.min(640, window.innerHeight - 140));
  const widthAt = (hh) => (q ? (qw * hh) / qh + gap : 0) + (size.width * hh) / size.height;
  if (widthAt(h) > maxW) h *= (maxW - (q ? gap : 0)) / (widthAt(h) - (q ? gap : 0));
  const qs = h / qh;  // query pixels -> canvas
  const ds = h / size.height;  // result pixels -> canvas
  const x0 = q ? qw * qs + gap : 0;
  canvas.width = Math.round(x0 + size.width * ds);
  canvas.height = Math.round(h);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#141821";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (q) ctx.drawImage(q, 0, 0, qw * qs, h);
  ctx.drawImage(db, x0, 0, size.width * ds, h);
  if (q && state.box) {
    const [x1, y1, x2, y2] = state.box.map((v) => v * qs);
    ctx.strokeStyle = "#ffd400";
    ctx.lineWidth = 2;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
  }
  let drawn = 0;
  if (q && hit.matches) {
    ctx.lineWidth = 1.2;
    for (const [xq, yq, xd, yd] of hit.matches) {
      const a = [xq * qs, yq * qs];
      const b = [x0 + xd * ds, yd * ds];
      ctx.strokeStyle = "rgba(60, 230, 90, 0.75)";
      ctx.beginPath();
      ctx.moveTo(a[0], a[1]);
      ctx.lineTo(b[0], b[1]);
      ctx.stroke();
      ctx.fillStyle = "#3ce65a";
      for (const [x, y] of [a, b]) { ctx.beginPath(); ctx.arc(x, y, 2.5, 0, 2 * Math.PI); ctx.fill(); }
      drawn += 1;
    }
  }
  canvas.dataset.drawn = String(drawn);
}

function closeMatch() {
  state.open = null;
  $("match-view").hidden = true;
}

// ---- editing the index ----------------------------------------------------------------------------------
function token() { return $("token").value.trim() || null; }

async function removeOpen() {
  const hit = state.open;
  if (!hit) return;
  const res = await request("DELETE", `/images/${encodeURIComponent(hit.name)}`, { token: token() });
  if (res.status !== 200) {
    showMessage(errorText(res.status, res.body, `Removing ${hit.name}`));
    return;
  }
  closeMatch();
  const li = [...$("results").children].find((c) => c.dataset.name === hit.name);
  if (li) li.remove();
  showMessage(`Removed ${hit.name} from the index.`, true);
  loadFacts();
}

function logLine(text, ok) {
  const li = document.createElement("li");
  li.className = ok ? "good" : "bad";
  li.textContent = text;
  $("add-log").append(li);
}

async function addPhotos() {
  const files = [...$("add-files").files];
  if (!files.length) { showMessage("Choose one or more photos to add first."); return; }
  clearMessage();
  $("add-button").disabled = true;
  const single = files.length === 1 && $("add-name").value.trim();
  let added = 0;
  for (const [i, file] of files.entries()) {
    const name = single || file.name;
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("name", name);
    const label = `photo ${i + 1} of ${files.length} (${name})`;
    const res = await request("POST", "/images", {
      body: form,
      token: token(),
      onUpload: (f) => progress(`uploading ${label}… ${Math.round(f * 100)} %`, f),
      onSent: () => progress(`indexing ${label}…`),
    });
    if (res.status === 201 && res.json) {
      added += 1;
      logLine(`added ${name} as image number ${res.json.index}`, true);
      continue;
    }
    const text = errorText(res.status, res.body, `Adding ${name}`);
    logLine(text, false);
    if ([0, 401, 403].includes(res.status)) {  // every other photo would be refused the same way
      showMessage(text);
      break;
    }
  }
  progress(null);
  $("add-button").disabled = false;
  if (added) { showMessage(`Added ${added} of ${files.length} photos to the index.`, true); loadFacts(); }
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
