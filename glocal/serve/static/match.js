// The match view and the edits of the glocal search page (loaded before app.js, whose helpers it uses:
// $, state, request, errorText, showMessage, progress, loadFacts).
"use strict";

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
