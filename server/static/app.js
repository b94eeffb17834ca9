// crema search page: upload / drop / paste / URL -> POST /api/search -> bars, similar grid, web grid;
// "Your photos": files or folders -> POST /api/personal one photo at a time (three in flight), with progress,
// per-file errors, thumbnails and remove buttons (GET / DELETE /api/personal).
// Plain DOM, no framework, no build step. Untrusted strings go through textContent, never innerHTML,
// and only http(s) URLs (or the server's own /api/... paths) become links or image sources.
"use strict";

const $ = (id) => document.getElementById(id);
// gallery: the --gallery index's summary from /api/health, null when there is none, undefined until known
const state = { query: "", page: 0, busy: false, previewUrl: null, gallery: undefined };
const PHOTO_TYPES = ["image/jpeg", "image/png", "image/gif", "image/bmp", "image/webp"];
const PHOTO_NAME = /\.(jpe?g|png|gif|bmp|webp)$/i;
const UPLOADS_IN_FLIGHT = 3; // concurrent adds: the server batches them into shared forward passes
const MAX_FOLDER_FILES = 20000; // stop walking a dropped folder tree after this many files
const personal = {
  enabled: false, count: 0, bytes: 0, maxPhotos: 0, maxBytes: 0, revision: -1,
  queue: [], total: 0, done: 0, failed: 0, running: false,
};

function safeUrl(u) {
  if (typeof u !== "string" || !u) return null;
  if (u.startsWith("/api/")) return u;
  try {
    const p = new URL(u);
    return p.protocol === "http:" || p.protocol === "https:" ? p.href : null;
  } catch (e) {
    return null;
  }
}

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k === "className") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.appendChild(c);
  return node;
}

function setBusy(busy, message) {
  state.busy = busy;
  document.body.classList.toggle("busy", busy);
  for (const b of document.querySelectorAll("#query button, #results button")) b.disabled = busy;
  $("file-input").disabled = busy;
  $("status").textContent = message || "";
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function readError(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return `the server answered ${resp.status} ${resp.statusText}`;
}

function showPreview(src) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = src.startsWith("blob:") ? src : null;
  const img = $("preview-img");
  img.classList.remove("tiny");
  img.onload = () => img.classList.toggle("tiny", img.naturalWidth < 100 && img.naturalHeight < 100);
  img.src = src;
  $("preview").hidden = false;
}

async function search(body, label) {
  if (state.busy) return;
  showError("");
  setBusy(true, `Looking at ${label}…`);
  try {
    const resp = await fetch("/api/search", body);
    if (!resp.ok) {
      showError(await readError(resp));
      setBusy(false, "");
      return;
    }
    render(await resp.json());
    setBusy(false, "Done.");
  } catch (e) {
    showError("Could not reach the server. Is `crema serve` still running?");
    setBusy(false, "");
  }
}

function searchFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`"${file.name}" is not a photo (${file.type}). Choose a JPEG, PNG, GIF, BMP or WEBP file.`);
    return;
  }
  showPreview(URL.createObjectURL(file));
  const form = new FormData();
  form.append("image", file, file.name || "pasted-image");
  search({ method: "POST", body: form }, file.name ? `“${file.name}”` : "the pasted photo");
}

function searchUrl(url) {
  const safe = safeUrl(url.trim());
  if (!safe || safe.startsWith("/api/")) {
    showError("Enter a web address that starts with http:// or https://.");
    return;
  }
  showPreview(safe);
  search(
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ url: safe }) },
    "the photo at that address",
  );
}

function renderPredictions(preds) {
  const list = $("predictions");
  list.replaceChildren();
  for (const p of preds) {
    const pct = Math.max(0, Math.min(100, 100 * p.prob));
    const fill = el("div", { className: "fill" });
    fill.style.width = `${pct.toFixed(1)}%`;
    list.appendChild(
      el("li", {}, [
        el("span", { className: "label", text: p.label, title: `class ${p.index}` }),
        el("div", { className: "track", role: "img", "aria-label": `${pct.toFixed(1)} percent` }, [fill]),
        el("span", { className: "pct", text: `${pct.toFixed(1)}%` }),
      ]),
    );
  }
}

function tile({ thumb, title, sub, view, download, extra }) {
  const img = el("img", { alt: title || "", loading: "lazy", referrerpolicy: "no-referrer" });
  if (thumb) img.src = thumb;
  img.addEventListener("load", () => img.classList.toggle("tiny", img.naturalWidth < 100));
  img.addEventListener("error", () => img.replaceWith(el("span", { className: "muted small", text: "no preview" })));
  const links = el("div", { className: "links" }, [
    view ? el("a", { href: view, target: "_blank", rel: "noopener noreferrer", text: "view" }) : null,
    download ? el("a", { href: download, target: "_blank", rel: "noopener noreferrer", download: "", text: "download" }) : null,
  ]);
  return el("div", { className: "tile" }, [
    el("div", { className: "thumb" }, [img]),
    el("div", { className: "meta" }, [
      el("div", { className: "title", text: title || "", title: title || "" }),
      sub ? el("div", { className: "muted", text: sub }) : null,
      links,
      extra || null,
    ]),
  ]);
}

function renderSimilar(items, note) {
  const grid = $("similar");
  grid.replaceChildren();
  const sources = [];
  if (items.some((s) => s.source !== "personal")) sources.push("the gallery");
  if (items.some((s) => s.source === "personal")) sources.push("your photos");
  $("similar-note").textContent = sources.length ? `from ${sources.join(" and ")}, ranked by the network's features` : "";
  $("similar-error").textContent = note || "";
  $("similar-error").hidden = !note;
  for (const s of items) {
    const mine = s.source === "personal";
    let title = `#${s.id}`;
    if (mine) title = s.name || `photo ${s.id}`;
    else if (s.label !== null && s.label !== undefined) title = `label ${s.label}`;
    const item = tile({
      thumb: safeUrl(s.thumb_url),
      title,
      sub: `${mine ? "your photo" : "gallery"} · similarity ${s.score.toFixed(3)}`,
      view: safeUrl(s.image_url),
      download: safeUrl(s.image_url) ? `${s.image_url}?download=1` : null,
    });
    item.dataset.source = mine ? "personal" : "gallery";
    grid.appendChild(item);
  }
}

function appendWeb(items) {
  const grid = $("web");
  for (const w of items) {
    const image = safeUrl(w.image_url);
    grid.appendChild(
      tile({
        thumb: safeUrl(w.thumb_url) || image,
        title: w.title || w.source || "",
        sub: w.source || "",
        view: safeUrl(w.page_url) || image,
        download: image,
      }),
    );
  }
}

function setWebError(message) {
  const box = $("web-error");
  box.textContent = message ? `Web results are not available: ${message}` : "";
  box.hidden = !message;
}

function render(data) {
  $("results").hidden = false;
  renderPredictions(data.predictions || []);
  renderSimilar(data.similar || [], data.similar_error);
  state.query = data.query || "";
  state.page = data.page || 0;
  $("web-query").textContent = state.query ? `for “${state.query}”` : "";
  $("web").replaceChildren();
  appendWeb(data.web || []);
  setWebError(data.web_error);
  $("more-button").hidden = !(data.web && data.web.length);
  renderInside(data.inside);
  const t = data.timings_ms || {};
  $("timings").textContent =
    `inference ${fmt(t.infer)} (batch of ${data.batch_size || 1}), total ${fmt(t.total)} · ` +
    `model ${data.model ? data.model.name : "?"}`;
}

// -- inside the network: filters and feature maps of the forward that answered (PNG grids from the server) -------
const INSIDE_MIN_PX = 320; // smaller grids are magnified by a whole factor to at least this width, tiles crisp

function magnify(img) {
  const k = Math.max(1, Math.ceil(INSIDE_MIN_PX / Math.max(1, img.naturalWidth)));
  img.style.width = `${img.naturalWidth * k}px`;
}

async function insideImage(img, url, onFail) {
  img.removeAttribute("style");
  img.onload = () => {
    magnify(img);
    img.dataset.loaded = url;
  };
  img.onerror = async () => {
    try { // the route answers JSON {"error"} on 4xx: show its words
      const resp = await fetch(url);
      onFail(resp.ok ? "the picture could not be shown" : await readError(resp));
    } catch (e) {
      onFail("could not reach the server");
    }
  };
  delete img.dataset.loaded;
  img.src = url;
}

function showInsideLayer(inside, name) {
  const layer = inside.layers.find((l) => l.name === name) || inside.layers[0];
  const error = $("inside-error");
  error.hidden = true;
  const fail = (what) => (message) => {
    error.textContent = `${what}: ${message}`;
    error.hidden = false;
  };
  $("inside-shape").textContent =
    `${layer.type} · ${layer.channels} channels of ${layer.shape[1]}×${layer.shape[2]}` +
    (layer.shown < layer.channels ? ` · the first ${layer.shown} shown` : "");
  const filters = safeUrl(layer.filters_url);
  $("inside-filters-fig").hidden = !filters;
  if (filters) {
    insideImage($("inside-filters"), filters, fail("filters"));
    $("inside-filters-cap").textContent =
      `The ${layer.shape[0]} filters of ${layer.name}: ${inside.filters_note}` +
      (layer.filters_note ? ` (${layer.filters_note})` : "") + ".";
  }
  const maps = safeUrl(layer.maps_url);
  $("inside-maps-fig").hidden = !maps;
  if (maps) {
    insideImage($("inside-maps"), maps, fail("feature maps"));
    $("inside-maps-cap").textContent = `Your picture after ${layer.name}: ${layer.note}.`;
  }
  let note = layer.filters ? "" : `${layer.name}'s filters are not pictures of the image's colours, so only its maps show. `;
  $("inside-note").textContent = note;
}

function renderInside(inside) {
  const box = $("inside");
  if (!inside || !inside.layers || !inside.layers.length) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  $("inside-sub").textContent = `your picture through the network, kept ${Math.round(inside.expires_s / 60)} min`;
  $("inside-how").textContent =
    `Grids as in Caffe's examples: ${inside.normalisation}; at most ${inside.max_tiles} tiles a layer.`;
  const select = $("inside-layer");
  select.replaceChildren(
    ...inside.layers.map((l) => el("option", { value: l.name, text: `${l.name} (${l.type})` })),
  );
  select.value = inside.first || inside.layers[0].name;
  select.onchange = () => showInsideLayer(inside, select.value);
  showInsideLayer(inside, select.value);
}

function fmt(ms) {
  return typeof ms === "number" ? `${ms.toFixed(ms < 10 ? 1 : 0)} ms` : "?";
}

async function moreWeb() {
  if (state.busy || !state.query) return;
  setBusy(true, "Fetching more web results…");
  try {
    const resp = await fetch(`/api/web?q=${encodeURIComponent(state.query)}&page=${state.page + 1}`);
    if (!resp.ok) {
      setWebError(await readError(resp));
    } else {
      const data = await resp.json();
      state.page = data.page;
      appendWeb(data.web || []);
      setWebError(data.web_error);
      if (!data.web || !data.web.length) $("more-button").hidden = true;
    }
  } catch (e) {
    setWebError("could not reach the server");
  }
  setBusy(false, "");
}

// -- your photos (the personal gallery) ----------------------------------------------------------------------
function size(bytes) {
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0)} MB`;
  if (bytes >= 1e3) return `${(bytes / 1e3).toFixed(bytes < 1e4 ? 1 : 0)} kB`;
  return `${bytes} bytes`;
}

function isPhoto(file) {
  if (file.name && file.name.startsWith(".")) return false;
  return PHOTO_TYPES.includes(file.type) || (!file.type && PHOTO_NAME.test(file.name || ""));
}

function setCounts(data) {
  // Uploads run UPLOADS_IN_FLIGHT at a time, so their answers can arrive out of order: keep the newest state.
  if (typeof data.revision === "number") {
    if (data.revision < personal.revision) return;
    personal.revision = data.revision;
  }
  personal.count = data.count;
  personal.bytes = data.bytes;
  personal.maxPhotos = data.max_photos;
  personal.maxBytes = data.max_bytes;
  $("personal-count").textContent =
    `${data.count} of ${data.max_photos} photos · ${size(data.bytes)} of ${size(data.max_bytes)}`;
  $("personal-clear").hidden = data.count === 0;
  updateGalleryHint();
}

function updateGalleryHint() {
  const hint = $("gallery-hint");
  let text = "";
  if (state.gallery === null && !(personal.enabled && personal.count > 0)) {
    text = personal.enabled
      ? "No gallery yet, so there are no similar images to show. Add your own photos under “Your photos” " +
        "below, or index a folder on the server: `crema index DIR`, then `crema serve --gallery DIR`."
      : "This server has no gallery, so there are no similar images to show. To add one, index a folder on " +
        "the server: `crema index DIR`, then `crema serve --gallery DIR`.";
  }
  hint.textContent = text;
  hint.hidden = !text;
}

function personalTile(item) {
  const remove = el("button", {
    type: "button", className: "button ghost remove", text: "Remove", "aria-label": `Remove ${item.name || "this photo"}`,
  });
  const node = tile({
    thumb: safeUrl(item.thumb_url),
    title: item.name || `photo ${item.id}`,
    sub: `${item.width}×${item.height} · ${size(item.bytes)}`,
    view: safeUrl(item.image_url),
    download: safeUrl(item.image_url) ? `${item.image_url}?download=1` : null,
    extra: remove,
  });
  node.dataset.id = String(item.id);
  remove.addEventListener("click", () => removePhoto(item.id, node, remove));
  return node;
}

function personalError(message) {
  const list = $("personal-errors");
  list.appendChild(el("li", { text: message }));
  list.hidden = false;
}

async function removePhoto(id, node, button) {
  button.disabled = true;
  try {
    const resp = await fetch(`/api/personal/${id}`, { method: "DELETE" });
    if (resp.ok || resp.status === 404) {
      node.remove(); // 404: already gone
      if (resp.ok) setCounts(await resp.json());
      return;
    }
    personalError(`Could not remove the photo: ${await readError(resp)}`);
  } catch (e) {
    personalError("Could not reach the server to remove the photo.");
  }
  button.disabled = false;
}

async function removeAll() {
  if (!window.confirm(`Remove all ${personal.count} photos from your personal gallery?`)) return;
  const button = $("personal-clear");
  button.disabled = true;
  try {
    const resp = await fetch("/api/personal", { method: "DELETE" });
    if (resp.ok) {
      $("personal-grid").replaceChildren();
      setCounts(await resp.json());
    } else {
      personalError(`Could not remove the photos: ${await readError(resp)}`);
    }
  } catch (e) {
    personalError("Could not reach the server to remove the photos.");
  }
  button.disabled = false;
}

function showProgress() {
  const { total, done, failed } = personal;
  $("personal-progress").hidden = total === 0;
  $("personal-bar").max = Math.max(total, 1);
  $("personal-bar").value = done + failed;
  let text = `indexed ${done} of ${total}`;
  if (failed) text += ` · ${failed} not added`;
  $("personal-status").textContent = text;
}

async function uploadOne(file) {
  const form = new FormData();
  form.append("image", file, file.name || "photo");
  const label = file.webkitRelativePath || file.name || "a photo";
  try {
    const resp = await fetch("/api/personal", { method: "POST", body: form });
    if (resp.ok) {
      const data = await resp.json();
      $("personal-grid").appendChild(personalTile(data.item));
      setCounts(data);
      personal.done += 1;
      return;
    }
    const message = await readError(resp);
    personal.failed += 1;
    if (resp.status === 409 || resp.status === 403) {
      // full (or turned off): the rest of the queue would fail the same way
      const left = personal.queue.length;
      personal.failed += left;
      personal.queue = [];
      personalError(`${label}: ${message}${left ? ` (${left} more not sent)` : ""}`);
    } else {
      personalError(`${label}: ${message}`);
    }
  } catch (e) {
    personal.failed += 1;
    personalError(`${label}: could not reach the server`);
  }
}

async function addPhotos(files) {
  if (!personal.enabled) return;
  const photos = files.filter(isPhoto);
  const skipped = files.length - photos.length;
  if (!personal.running) {
    personal.total = personal.done = personal.failed = 0;
    $("personal-errors").replaceChildren();
    $("personal-errors").hidden = true;
  }
  if (skipped) personalError(`${skipped} file${skipped > 1 ? "s are" : " is"} not a JPEG, PNG, GIF, BMP or WEBP photo: skipped`);
  personal.queue.push(...photos);
  personal.total += photos.length;
  showProgress();
  if (personal.running || !photos.length) return;
  personal.running = true;
  const worker = async () => {
    while (personal.queue.length) {
      await uploadOne(personal.queue.shift());
      showProgress();
    }
  };
  await Promise.all(Array.from({ length: UPLOADS_IN_FLIGHT }, worker));
  personal.running = false;
  showProgress();
}

// A drop's files, folders walked (the entries must be taken before the drop handler returns).
async function droppedFiles(dataTransfer) {
  const entries = Array.from(dataTransfer.items || [])
    .filter((item) => item.kind === "file")
    .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null));
  if (!entries.length || entries.some((e) => !e)) return Array.from(dataTransfer.files || []);
  const out = [];
  const walk = async (entry) => {
    if (out.length >= MAX_FOLDER_FILES || entry.name.startsWith(".")) return;
    if (entry.isFile) {
      out.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child);
      }
    }
  };
  for (const entry of entries) {
    try {
      await walk(entry);
    } catch (e) {
      personalError(`${entry.name}: could not be read`);
    }
  }
  return out;
}

async function loadPersonal() {
  try {
    const resp = await fetch("/api/personal");
    if (!resp.ok) return; // 403: turned off on this server (--no-personal-gallery); the section stays hidden
    const data = await resp.json();
    personal.enabled = true;
    $("personal").hidden = false;
    $("personal-grid").replaceChildren(...data.items.map(personalTile));
    setCounts(data);
  } catch (e) {
    /* the section stays hidden */
  }
}

async function loadGalleryInfo() {
  try {
    const health = await (await fetch("/api/health")).json();
    state.gallery = health.gallery || null;
  } catch (e) {
    state.gallery = undefined; // unknown: no hint rather than a wrong one
  }
}

function setupPersonal() {
  for (const id of ["personal-files", "personal-folder"]) {
    $(id).addEventListener("change", (e) => {
      const files = Array.from(e.target.files || []);
      e.target.value = "";
      addPhotos(files);
    });
  }
  const zone = $("personal-drop");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();
    droppedFiles(e.dataTransfer).then(addPhotos);
  });
  $("personal-clear").addEventListener("click", removeAll);
}

async function loadModelInfo() {
  try {
    const resp = await fetch("/api/models");
    const data = await resp.json();
    const m = data.models[0];
    $("model-info").textContent =
      `${m.name} · ${m.classes} classes · input ${m.input_shape.join("×")} · features ${m.feature_blob} (${m.feature_dim}-d)`;
  } catch (e) {
    $("model-info").textContent = "model information unavailable";
  }
}

function setup() {
  const zone = $("dropzone");
  $("file-input").addEventListener("change", (e) => {
    searchFile(e.target.files[0]);
    e.target.value = "";
  });
  $("url-form").addEventListener("submit", (e) => {
    e.preventDefault();
    searchUrl($("url-input").value);
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    const dt = e.dataTransfer;
    if (dt.files && dt.files.length) searchFile(dt.files[0]);
    else {
      const url = dt.getData("text/uri-list") || dt.getData("text/plain");
      if (url) searchUrl(url.split("\n")[0]);
    }
  });
  document.addEventListener("paste", (e) => {
    if (e.target === $("url-input")) return; // typing a URL
    const items = e.clipboardData ? Array.from(e.clipboardData.items) : [];
    const image = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (image) {
      e.preventDefault();
      searchFile(image.getAsFile());
      return;
    }
    const text = e.clipboardData && e.clipboardData.getData("text/plain");
    if (text && /^https?:\/\//i.test(text.trim())) {
      e.preventDefault();
      $("url-input").value = text.trim();
      searchUrl(text);
    }
  });
  $("clear-button").addEventListener("click", () => {  // a new search starts from an empty page
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = null;
    $("preview-img").removeAttribute("src");
    $("preview").hidden = true;
    $("results").hidden = true;
    $("more-button").hidden = true;
    $("file-input").value = "";
    $("url-input").value = "";
    showError("");
    $("status").textContent = "";
  });
  $("more-button").addEventListener("click", moreWeb);
  // a drop that misses the drop zones must not navigate away from the page
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());
  setupPersonal();
  loadModelInfo();
  Promise.all([loadGalleryInfo(), loadPersonal()]).then(() => {
    updateGalleryHint();
    document.body.dataset.ready = "1";
  });
}

setup();
