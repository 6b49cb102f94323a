// gradsight explorer: plain JavaScript and SVG, no libraries, no requests beyond the server that sent the page.
// Every number shown comes from the server's JSON; this file only draws it. The SVG shapes carry the numbers as
// data attributes (data-row0 ... data-col1, inclusive input pixels), which the browser tests read.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

const state = {
  model: null, image: 0, depth: null, table: null, layer: null, unit: null, pending: null, view: null,
  inputShape: null, margin: 0, seq: { unit: 0, model: 0, predict: 0, growth: 0 },
};

// ---------------------------------------------------------------------------------------------------------------
// server calls

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    throw new Error(`${url}: the server answered ${response.status} without a readable message`);
  }
  if (!response.ok) {
    throw new Error(body && body.error ? body.error : `${url}: status ${response.status}`);
  }
  return body;
}

function query(params) {
  return Object.entries(params).map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");
}

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
  setStatus("error: see the message above");
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

function setStatus(text) {
  $("status").textContent = text;
}

// ---------------------------------------------------------------------------------------------------------------
// SVG helpers

function svgEl(name, attrs, parent) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

// rect = [[row0, row1], [col0, col1]], inclusive pixel indices: pixel (r, c) covers [c, c + 1] x [r, r + 1].
function placeRect(el, rect) {
  if (!rect) {
    el.setAttribute("visibility", "hidden");
    for (const k of ["row0", "row1", "col0", "col1"]) el.removeAttribute(`data-${k}`);
    return;
  }
  const [[r0, r1], [c0, c1]] = rect;
  el.setAttribute("x", c0);
  el.setAttribute("y", r0);
  el.setAttribute("width", c1 - c0 + 1);
  el.setAttribute("height", r1 - r0 + 1);
  el.setAttribute("visibility", "visible");
  el.dataset.row0 = r0;
  el.dataset.row1 = r1;
  el.dataset.col0 = c0;
  el.dataset.col1 = c1;
}

// The point in the SVG's own coordinates (viewBox units) under a mouse event.
function svgPoint(svg, event) {
  const point = svg.createSVGPoint();
  point.x = event.clientX;
  point.y = event.clientY;
  return point.matrixTransform(svg.getScreenCTM().inverse());
}

function buildPicture(svg, prefix) {
  svg.replaceChildren();
  const [, rows, cols] = state.inputShape;
  const m = state.margin;
  svg.setAttribute("viewBox", `${-m} ${-m} ${cols + 2 * m} ${rows + 2 * m}`);
  const image = svgEl("image", { id: `${prefix}-image`, x: 0, y: 0, width: cols, height: rows,
                                 preserveAspectRatio: "none" }, svg);
  // data-loaded names the picture on screen (the href changes before the new picture has arrived).
  image.addEventListener("load", () => { image.dataset.loaded = image.getAttribute("href"); });
  svgEl("rect", { class: "frame", x: 0, y: 0, width: cols, height: rows }, svg);
  svgEl("g", { id: `${prefix}-growth` }, svg);
  svgEl("rect", { id: `${prefix}-unclipped`, class: "unclipped", visibility: "hidden" }, svg);
  svgEl("rect", { id: `${prefix}-analytic`, class: "analytic", visibility: "hidden" }, svg);
  svgEl("rect", { id: `${prefix}-support`, class: "support", visibility: "hidden" }, svg);
  return image;
}

// ---------------------------------------------------------------------------------------------------------------
// lists and model selection

async function loadImages(select) {
  const data = await api("/api/images");
  const box = $("image");
  box.replaceChildren();
  for (const img of data.images) {
    const option = document.createElement("option");
    option.value = img.index;
    option.textContent = img.label;
    box.appendChild(option);
  }
  box.value = String(select === undefined ? state.image : select);
}

async function selectModel(key, wanted) {
  const seq = ++state.seq.model;
  clearGrowth();
  $("model").value = key;
  setStatus(`loading ${key}… (the first use of a model builds it and traces its receptive fields)`);
  const table = await api(`/api/layers?${query({ model: key })}`);
  if (seq !== state.seq.model) return;
  state.model = key;
  state.table = table;
  state.depth = table.depth;
  state.inputShape = table.input_shape;
  state.margin = table.margin;
  $("note").textContent = `${table.label}: ${table.note}`;
  buildPicture($("input-svg"), "input");
  buildPicture($("gradient-svg"), "gradient");
  fillDepths(table);
  fillTable(table);
  fillMethods(table);
  await loadInput();
  loadPrediction();
  const layer = (wanted && wanted.layer) || table.default_layer;
  const unit = (wanted && wanted.unit) || table.default_unit;
  if (layer) await selectLayer(layer, unit);
}

async function reloadTable(depth) {
  const table = await api(`/api/layers?${query({ model: state.model, depth })}`);
  state.table = table;
  state.depth = table.depth;
  fillTable(table);
  markSelectedRow();
}

function fillDepths(table) {
  const box = $("depth");
  box.replaceChildren();
  for (const d of [1, 2, 3, 4]) {
    const option = document.createElement("option");
    option.value = d;
    option.textContent = d;
    box.appendChild(option);
  }
  box.value = String(table.depth);
}

function fmt(values) {
  if (values === null || values === undefined) return "–";
  if (values === "global") return "global";
  if (!Array.isArray(values)) return String(values);
  return values.every((v) => v === values[0]) && values.length === 2 ? String(values[0]) : values.join("×");
}

function fillTable(table) {
  const body = document.querySelector("#rf-table tbody");
  body.replaceChildren();
  for (const row of table.layers) {
    const tr = document.createElement("tr");
    tr.className = row.spatial ? "spatial" : "global";
    tr.dataset.layer = row.name;
    const cells = [row.name, row.kind, row.output_shape.join("×"), fmt(row.kernel), fmt(row.stride),
                   fmt(row.dilation), fmt(row.rf_size), fmt(row.effective_stride), fmt(row.effective_padding)];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    if (!row.aligned) tr.title = `misaligned paths: ${row.misaligned_at}`;
    if (row.spatial) {
      tr.addEventListener("click", () => selectLayer(row.name).catch((err) => showError(err.message)));
      tr.addEventListener("mouseenter", () => showGrowth(row.name));
    }
    body.appendChild(tr);
  }
}

function fillMethods(table) {
  const box = $("method");
  box.replaceChildren();
  for (const method of table.methods) {
    const option = document.createElement("option");
    option.value = method.name;
    option.textContent = method.name;
    option.title = method.label;
    box.appendChild(option);
  }
  box.disabled = table.methods.length === 0;
}

function markSelectedRow() {
  for (const tr of document.querySelectorAll("#rf-table tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.layer === state.layer);
  }
}

async function loadInput() {
  const info = await api(`/api/input?${query({ model: state.model, image: state.image })}`);
  $("input-how").textContent = `${info.shape.join("×")} — ${info.how}`;
  $("input-image").setAttribute("href", info.png);
}

async function loadPrediction() {
  const seq = ++state.seq.predict;
  const list = $("top5");
  const picture = $("saliency-image");
  list.replaceChildren();
  picture.hidden = true;
  if (!state.table.classifier) {
    $("predict-note").textContent = `No predictions for this model (${state.table.note}).`;
    return;
  }
  $("predict-note").textContent = "computing the top-5 and the map… (some methods take many passes)";
  try {
    const data = await api(`/api/predict?${query({ model: state.model, image: state.image,
                                                     method: $("method").value || "gradient" })}`);
    if (seq !== state.seq.predict) return;
    for (const item of data.top5) {
      const li = document.createElement("li");
      li.textContent = `${item.class} ${item.name} — ${item.probability.toFixed(4)}`;
      list.appendChild(li);
    }
    const scale = data.display === "sum" ? "red positive, blue negative, scaled to the 99th percentile of |map|"
      : "grey, scaled to its 99th percentile";
    const method = state.table.methods.find((m) => m.name === data.method);
    $("predict-note").textContent = `${data.method} of the ${data.score} of class ${data.target}` +
      `${method ? `: ${method.label}` : ""} (${scale})`;
    picture.src = data.png;
    picture.hidden = false;
  } catch (err) {
    if (seq === state.seq.predict) {
      $("predict-note").textContent = "";
      showError(err.message);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// layer grid and units

function layerRow(name) {
  return state.table.layers.find((row) => row.name === name);
}

async function selectLayer(name, unit) {
  let row = layerRow(name);
  if (!row) {
    // a layer listed only at another depth: the server knows it
    await reloadTable(4);
    $("depth").value = "4";
    row = layerRow(name);
  }
  if (!row || !row.spatial) {
    showError(`layer ${name}: its units see the whole input; pick a layer with a receptive-field size`);
    return;
  }
  state.layer = name;
  markSelectedRow();
  const [rows, cols] = row.grid;
  $("layer-name").textContent = name;
  $("grid-size").textContent = `${rows}×${cols} units, ${row.channels} channels`;
  const channel = $("channel");
  channel.max = row.channels - 1;
  const c = unit ? unit[2] : Math.min(Number(channel.value) || 0, row.channels - 1);
  channel.value = c;
  buildGrid(rows, cols);
  const target = unit || [Math.floor(rows / 2), Math.floor(cols / 2), c];
  await selectUnit({ x: target[0], y: target[1], c: target[2] });
}

function buildGrid(rows, cols) {
  const svg = $("grid-svg");
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${cols} ${rows}`);
  svg.dataset.rows = rows;
  svg.dataset.cols = cols;
  svgEl("rect", { x: 0, y: 0, width: cols, height: rows, fill: "#f4f4f4" }, svg);
  if (rows <= 64 && cols <= 64) {
    for (let r = 1; r < rows; r++) svgEl("line", { class: "gridline", x1: 0, y1: r, x2: cols, y2: r }, svg);
    for (let c = 1; c < cols; c++) svgEl("line", { class: "gridline", x1: c, y1: 0, x2: c, y2: rows }, svg);
  }
  svgEl("rect", { id: "grid-cell", class: "cell", width: 1, height: 1, visibility: "hidden" }, svg);
}

// where: {x, y, c} (a unit) or {row, col, c} (an input pixel: the unit centred nearest it)
async function selectUnit(where) {
  const seq = ++state.seq.unit;
  const params = { model: state.model, image: state.image, layer: state.layer, ...where };
  // Arrow keys pressed before the answer arrives move on from the unit asked for, not the one shown.
  state.pending = "x" in where ? [where.x, where.y, where.c] : null;
  setStatus("computing the unit's gradient…");
  let view;
  try {
    view = await api(`/api/unit?${query(params)}`);
  } catch (err) {
    if (seq === state.seq.unit) {
      state.pending = null;
      showError(err.message);
    }
    return;
  }
  if (seq !== state.seq.unit) return;  // a later click won
  state.pending = null;
  clearError();
  state.unit = view.unit;
  state.view = view;
  drawUnit(view);
  setStatus(view.cached ? "from the cache" :
    `gradient computed in ${view.ms} ms (${view.cropped ? "on the unit's input cone only" : "on the whole input"})`);
}

function drawUnit(view) {
  const [x, y, c] = view.unit;
  const label = `${x},${y},${c}`;
  for (const prefix of ["input", "gradient"]) {
    const analytic = $(`${prefix}-analytic`);
    placeRect(analytic, view.rect);
    analytic.dataset.unit = label;
    analytic.dataset.layer = view.layer;
    placeRect($(`${prefix}-unclipped`), view.unclipped);
    placeRect($(`${prefix}-support`), view.support);
  }
  const picture = $("gradient-image");
  picture.dataset.unit = label;
  picture.dataset.digest = view.digest;
  picture.setAttribute("href", view.urls.png);
  const cell = $("grid-cell");
  cell.setAttribute("x", y);
  cell.setAttribute("y", x);
  cell.setAttribute("visibility", "visible");
  cell.dataset.unit = label;
  $("channel").value = c;
  updateExports();
  const [[r0, r1], [c0, c1]] = view.rect;
  const info = [
    ["unit", `${view.layer}[x=${x}, y=${y}, c=${c}] = ${view.value.toPrecision(6)}`],
    ["analytic field", `rows ${r0}..${r1}, cols ${c0}..${c1} (${r1 - r0 + 1} × ${c1 - c0 + 1} in the image)`],
    ["before clipping", view.unclipped ? `rows ${view.unclipped[0].join("..")}, cols ${view.unclipped[1].join("..")}`
      : "– (paths with different strides meet: the rectangle is an outer bound)"],
    ["measured support", view.support
      ? `rows ${view.support[0].join("..")}, cols ${view.support[1].join("..")}` : "none (zero gradient)"],
    ["agreement", view.agreement_text],
    ["layer's field", `size ${fmt(view.rf_size)}, effective stride ${fmt(view.effective_stride)}, ` +
     `effective padding ${fmt(view.effective_padding)}`],
  ];
  const box = $("unit-info");
  box.replaceChildren();
  box.dataset.agreement = view.agreement;
  for (const [term, text] of info) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = text;
    if (term === "agreement") dd.className = view.agreement;
    box.append(dt, dd);
  }
}

// The export links: the unit shown, and the attribution method picked (classifiers only).
function updateExports() {
  if (!state.view) return;
  const method = state.table && state.table.classifier && $("method").value ? `&${query({ method: $("method").value })}`
    : "";
  $("export-png").setAttribute("href", state.view.urls.export_png + method);
  $("export-json").setAttribute("href", state.view.urls.export_json + method);
  $("export-npy").setAttribute("href", state.view.urls.npy);
}

function moveUnit(dx, dy) {
  const from = state.pending || state.unit;
  if (!from || !state.layer) return;
  const [rows, cols] = layerRow(state.layer).grid;
  const x = Math.max(0, Math.min(rows - 1, from[0] + dx));
  const y = Math.max(0, Math.min(cols - 1, from[1] + dy));
  if (x !== from[0] || y !== from[1]) selectUnit({ x, y, c: from[2] });
}

// ---------------------------------------------------------------------------------------------------------------
// how the field grows: nested rectangles of every layer up to the hovered one, around the current unit's centre

async function showGrowth(layer) {
  if (!state.model || !state.inputShape) return;
  const seq = ++state.seq.growth;
  const [, rows, cols] = state.inputShape;
  const [row, col] = state.view ? state.view.centre : [(rows - 1) / 2, (cols - 1) / 2];
  const point = { row: Math.min(Math.max(row, 0), rows - 1), col: Math.min(Math.max(col, 0), cols - 1) };
  let data;
  try {
    data = await api(`/api/growth?${query({ model: state.model, layer, depth: state.depth, ...point })}`);
  } catch (err) {
    if (seq === state.seq.growth) showError(err.message);
    return;
  }
  if (seq !== state.seq.growth) return;
  const group = $("input-growth");
  group.replaceChildren();
  group.dataset.layer = layer;
  data.layers.forEach((item, i) => {
    const current = i === data.layers.length - 1;
    const el = svgEl("rect", { class: current ? "growth current" : "growth" }, group);
    placeRect(el, item.unclipped || item.rect);
    el.dataset.layer = item.layer;
    if (current) {
      const text = svgEl("text", { class: "growth-label", x: (item.unclipped || item.rect)[1][0] + 1,
                                   y: (item.unclipped || item.rect)[0][0] - 1.5 }, group);
      text.textContent = `${item.layer}: ${item.rf_size[0]}×${item.rf_size[1]}`;
    }
  });
}

function clearGrowth() {
  ++state.seq.growth;
  const group = $("input-growth");
  if (group) group.replaceChildren();
}

// ---------------------------------------------------------------------------------------------------------------
// uploads and events

async function upload(file) {
  setStatus(`uploading ${file.name}…`);
  try {
    const data = await api(`/api/upload?${query({ name: file.name })}`, {
      method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" },
    });
    await loadImages(data.index);
    await changeImage(data.index);
  } catch (err) {
    showError(err.message);
  }
}

async function changeImage(index) {
  state.image = Number(index);
  $("image").value = String(index);
  await loadInput();
  loadPrediction();
  if (state.layer && state.unit) {
    await selectUnit({ x: state.unit[0], y: state.unit[1], c: state.unit[2] });
  }
}

async function preset(key) {
  await loadImages(0);
  state.image = 0;
  await selectModel(key, { layer: "L6", unit: [0, 0, 0] });
}

function guard(promise) {
  promise.catch((err) => showError(err.message));
}

function wire() {
  $("model").addEventListener("change", (e) => guard(selectModel(e.target.value)));
  $("image").addEventListener("change", (e) => guard(changeImage(e.target.value)));
  $("upload").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (file) upload(file);
  });
  $("preset-same").addEventListener("click", () => guard(preset("seed-cnn")));
  $("preset-torch").addEventListener("click", () => guard(preset("seed-cnn-torch")));
  $("error-close").addEventListener("click", clearError);
  $("depth").addEventListener("change", (e) => guard(reloadTable(Number(e.target.value))));
  $("method").addEventListener("change", () => {
    updateExports();
    loadPrediction();
  });
  $("channel").addEventListener("change", (e) => {
    if (state.unit) guard(selectUnit({ x: state.unit[0], y: state.unit[1], c: Number(e.target.value) }));
  });
  $("input-svg").addEventListener("click", (e) => {
    if (!state.layer) return;
    const p = svgPoint($("input-svg"), e);
    const [, rows, cols] = state.inputShape;
    if (p.x < 0 || p.y < 0 || p.x >= cols || p.y >= rows) return;  // a click in the margin
    // pixel (r, c) covers [c, c + 1] x [r, r + 1]; the server measures fields from pixel centres
    guard(selectUnit({ row: p.y - 0.5, col: p.x - 0.5, c: state.unit ? state.unit[2] : 0 }));
  });
  $("grid-svg").addEventListener("click", (e) => {
    const svg = $("grid-svg");
    if (!state.layer) return;
    const p = svgPoint(svg, e);
    const rows = Number(svg.dataset.rows);
    const cols = Number(svg.dataset.cols);
    const x = Math.floor(p.y);
    const y = Math.floor(p.x);
    if (x < 0 || y < 0 || x >= rows || y >= cols) return;
    svg.focus();
    guard(selectUnit({ x, y, c: state.unit ? state.unit[2] : Number($("channel").value) }));
  });
  document.querySelector("#rf-table tbody").addEventListener("mouseleave", clearGrowth);
  document.addEventListener("keydown", (e) => {
    const tag = document.activeElement ? document.activeElement.tagName : "";
    if (["INPUT", "SELECT", "TEXTAREA"].includes(tag)) return;
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (!(e.key in moves)) return;
    e.preventDefault();
    moveUnit(...moves[e.key]);
  });
}

async function start() {
  wire();
  try {
    const data = await api("/api/models");
    const box = $("model");
    for (const model of data.models) {
      const option = document.createElement("option");
      option.value = model.key;
      option.textContent = model.label;
      box.appendChild(option);
    }
    await loadImages(0);
    await selectModel(data.default);
    document.body.dataset.ready = "true";
  } catch (err) {
    showError(err.message);
  }
}

document.addEventListener("DOMContentLoaded", start);
