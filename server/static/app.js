// crema search page: upload / drop / paste / URL -> POST /api/search -> bars, similar grid, web grid.
// Plain DOM, no framework, no build step. Untrusted strings go through textContent, never innerHTML,
// and only http(s) URLs (or the server's own /api/... paths) become links or image sources.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { query: "", page: 0, busy: false, previewUrl: null };

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
  for (const b of document.querySelectorAll("button")) b.disabled = busy;
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
    showError(`"${file.name}" is not an image (${file.type}). Choose a JPEG, PNG, GIF, BMP or WEBP file.`);
    return;
  }
  showPreview(URL.createObjectURL(file));
  const form = new FormData();
  form.append("image", file, file.name || "pasted-image");
  search({ method: "POST", body: form }, file.name ? `“${file.name}”` : "the pasted image");
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
    "the image at that address",
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

function tile({ thumb, title, sub, view, download, pixel }) {
  const img = el("img", { alt: title || "", loading: "lazy", referrerpolicy: "no-referrer" });
  if (thumb) img.src = thumb;
  img.addEventListener("load", () => img.classList.toggle("tiny", img.naturalWidth < 100));
  img.addEventListener("error", () => img.replaceWith(el("span", { className: "muted small", text: "no preview" })));
  const links = el("div", { className: "links" }, [
    view ? el("a", { href: view, target: "_blank", rel: "noopener noreferrer", text: "view" }) : null,
    download ? el("a", { href: download, target: "_blank", rel: "noopener noreferrer", download: "", text: "download" }) : null,
  ]);
  return el("div", { className: pixel ? "tile pixel" : "tile" }, [
    el("div", { className: "thumb" }, [img]),
    el("div", { className: "meta" }, [
      el("div", { className: "title", text: title || "", title: title || "" }),
      sub ? el("div", { className: "muted", text: sub }) : null,
      links,
    ]),
  ]);
}

function renderSimilar(items, note) {
  const grid = $("similar");
  grid.replaceChildren();
  $("similar-note").textContent = note || (items.length ? "from the local gallery, by CNN features" : "");
  for (const s of items) {
    grid.appendChild(
      tile({
        thumb: safeUrl(s.thumb_url),
        title: s.label !== null && s.label !== undefined ? `label ${s.label}` : `#${s.id}`,
        sub: `similarity ${s.score.toFixed(3)}`,
        view: safeUrl(s.image_url),
        download: safeUrl(s.image_url) ? `${s.image_url}?download=1` : null,
        pixel: true,
      }),
    );
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
  const t = data.timings_ms || {};
  $("timings").textContent =
    `inference ${fmt(t.infer)} (batch of ${data.batch_size || 1}), total ${fmt(t.total)} · ` +
    `model ${data.model ? data.model.name : "?"}`;
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
  $("clear-button").addEventListener("click", () => {
    $("preview").hidden = true;
    $("results").hidden = true;
    showError("");
    $("status").textContent = "";
  });
  $("more-button").addEventListener("click", moreWeb);
  loadModelInfo();
  document.body.dataset.ready = "1";
}

setup();
