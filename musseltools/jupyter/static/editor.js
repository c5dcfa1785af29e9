// The front end of musseltools.editor.CorrectionEditor (an anywidget ES module).
//
// Shows one image (an SVG <image>) with its detections as SVG rectangles, in the image's own pixel
// coordinates (the viewBox), and sends what the researcher does to Python, which saves it:
//   click a box            {type: "toggle", id}           live <-> dead (the next category)
//   d / Delete / Backspace {type: "delete", id}           the box under the pointer (else the last clicked)
//   drag on the image      {type: "add", box: [x1, y1, x2, y2], label}   (also when it starts on a box)
//   1..9                   choose the category of added boxes
//   v                      {type: "verify"}                toggle the image's "verified" mark
//   ArrowRight / n         {type: "nav", step: 1}          next image (ArrowLeft / p: previous)
//   u / Ctrl+Z             {type: "undo"}                  undo the last edit of this editor
// The mode (model "mode", chosen in Python) changes what a drag does:
//   scale:  drag a line    {type: "scale_line", line: [x1, y1, x2, y2]}  (Python asks its length in mm)
//   length: click a box    {type: "select", id}  its length line shows, with a handle at each end;
//           drag a handle  {type: "length", id, line: [x1, y1, x2, y2]}  when it is dropped
// Zoom and pan (the view only, nothing is sent): Ctrl+wheel zooms around the pointer, + and - zoom, 0 fits
// the whole image, Shift+arrows or a Shift-drag (or a middle-button drag) pan. An image opens at the
// zoom where its median box is at least MIN_BOX_PX screen pixels (from its top-left corner); every
// key and click above works the same at any zoom (points are mapped through the SVG's own transform).
// Keys are handled while the canvas has focus (it takes it when the pointer enters it) and are kept
// from JupyterLab's own shortcuts.

const SVG = "http://www.w3.org/2000/svg";
const MIN_BOX_PX = 20;  // the median box's smaller side on screen when an image opens
const MAX_ZOOM = 64;

function el(name, attrs = {}) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function render({ model, el: host }) {
  const root = document.createElement("div");
  root.className = "mt-editor-canvas";
  root.tabIndex = 0;
  root.setAttribute("data-lm-suppress-shortcuts", "true");
  root.style.cssText = "outline: none; position: relative; max-width: 100%; user-select: none;";
  const svg = el("svg", { class: "mt-editor-svg", preserveAspectRatio: "xMinYMin meet" });
  svg.style.cssText = "display: block; width: 100%; height: auto; cursor: crosshair; background: #222;";
  const image = el("image", { x: 0, y: 0, class: "mt-editor-image" });
  const layer = el("g", { class: "mt-editor-boxes" });
  const draft = el("rect", { class: "mt-editor-draft", fill: "none", stroke: "#fff", "stroke-dasharray": "4 3",
                             "stroke-width": 2, "vector-effect": "non-scaling-stroke", visibility: "hidden" });
  const lineAttrs = { "stroke-width": 3, "vector-effect": "non-scaling-stroke", visibility: "hidden" };
  const scaleLine = el("line", { class: "mt-editor-scale-line", stroke: "#ffd400", ...lineAttrs });
  const lengthLayer = el("g", { class: "mt-editor-length-layer" });
  svg.append(image, layer, draft, scaleLine, lengthLayer);
  const bar = document.createElement("div");
  bar.className = "mt-editor-zoombar";
  bar.style.cssText = "display: flex; gap: 0.4em; align-items: center; margin: 2px 0; font-size: 12px;";
  const zoomText = document.createElement("span");
  zoomText.className = "mt-editor-zoom";
  const buttons = [["\u2212", "zoom out (-)", () => zoomBy(0.5)], ["+", "zoom in (+)", () => zoomBy(2)],
                   ["fit", "whole image (0)", () => setView(1)]].map(([text, title, act]) => {
    const b = document.createElement("button");
    b.textContent = text;
    b.title = title;
    b.className = "jupyter-button mt-editor-zoom-button";
    b.style.cssText = "width: 3em; height: 1.8em;";
    b.addEventListener("click", (e) => { e.preventDefault(); act(); root.focus({ preventScroll: true }); });
    return b;
  });
  bar.append(...buttons, zoomText);
  root.append(bar, svg);
  host.append(root);

  let url = null;
  let hovered = null;
  let selected = null;
  let drag = null;
  let pan = null;
  let handle = null;  // a length handle being dragged: {end: 0 | 1, line: [x1, y1, x2, y2]}
  let view = { x: 0, y: 0, zoom: 1 };  // the window in image pixels: top-left corner and zoom
  let autoZoom = true;  // choose the zoom when the view has a size (a new image)

  function setView(zoom, x = view.x, y = view.y) {  // the viewBox is the window: boxes need no scaling
    const W = model.get("width") || 1;
    const H = model.get("height") || 1;
    const z = Math.min(Math.max(zoom, 1), MAX_ZOOM);
    const w = W / z;
    const h = H / z;
    view = { zoom: z, x: Math.min(Math.max(x, 0), W - w), y: Math.min(Math.max(y, 0), H - h) };
    svg.setAttribute("viewBox", `${view.x} ${view.y} ${w} ${h}`);
    svg.setAttribute("data-zoom", String(z));
    zoomText.textContent = z > 1 ? `zoom ${Math.round(z * 10) / 10}x \u2014 Shift+arrows or Shift-drag: pan`
                                 : "whole image \u2014 + or Ctrl+wheel: zoom";
    drawLength();
  }

  function setLine(node, [x1, y1, x2, y2]) {
    for (const [k, v] of Object.entries({ x1, y1, x2, y2 })) node.setAttribute(k, v);
    node.setAttribute("visibility", "visible");
  }

  function drawScaleLine() {
    const line = model.get("scale_line") || [];
    if (line.length === 4) setLine(scaleLine, line);
    else scaleLine.setAttribute("visibility", "hidden");
  }

  function drawLength() {  // the selected box's length line and its two handles (length mode only)
    lengthLayer.replaceChildren();
    const box = (model.get("boxes") || []).find((b) => b.id === selected);
    if (model.get("mode") !== "length" || !box) return;
    const line = handle ? handle.line : box.line;
    const r = 7 * ((model.get("width") || 1) / view.zoom) / (svg.clientWidth || 1);  // 7 screen pixels
    const path = el("line", { class: "mt-length-line", stroke: "#00e5ff", "stroke-width": 2,
                              "vector-effect": "non-scaling-stroke", "data-id": box.id });
    setLine(path, line);
    lengthLayer.append(path);
    [[line[0], line[1]], [line[2], line[3]]].forEach(([cx, cy], end) => {
      const c = el("circle", { class: "mt-length-handle", "data-end": end, "data-id": box.id, cx, cy, r,
                               fill: "rgba(0,229,255,0.35)", stroke: "#00e5ff", "stroke-width": 2,
                               "vector-effect": "non-scaling-stroke" });
      c.style.cursor = "move";
      lengthLayer.append(c);
    });
  }

  function zoomBy(factor, cx, cy) {  // around an image point (default: the view's centre)
    const W = model.get("width") || 1;
    const H = model.get("height") || 1;
    const w = W / view.zoom;
    const h = H / view.zoom;
    const px = cx ?? view.x + w / 2;
    const py = cy ?? view.y + h / 2;
    const z = Math.min(Math.max(view.zoom * factor, 1), MAX_ZOOM);
    const fx = (px - view.x) / w;
    const fy = (py - view.y) / h;
    setView(z, px - fx * (W / z), py - fy * (H / z));
  }

  function chooseZoom() {  // the zoom where the median box's smaller side is MIN_BOX_PX on screen
    const shown = svg.clientWidth;
    if (!shown) return;  // not laid out yet: the ResizeObserver calls again
    autoZoom = false;
    const sides = (model.get("boxes") || []).map((b) => Math.min(b.x2 - b.x1, b.y2 - b.y1)).sort((a, b) => a - b);
    const W = model.get("width") || 1;
    let z = 1;
    if (sides.length) {
      const median = sides[Math.floor(sides.length / 2)];
      const px = median * shown / W;
      while (px * z < MIN_BOX_PX && z < MAX_ZOOM) z *= 2;
    }
    setView(z, 0, 0);
  }

  function sizeImage() {
    const w = model.get("width") || 1;
    const h = model.get("height") || 1;
    image.setAttribute("width", w);
    image.setAttribute("height", h);
    autoZoom = true;
    setView(1, 0, 0);
    chooseZoom();
  }

  function drawImage() {
    const bytes = model.get("image");
    if (url) URL.revokeObjectURL(url);
    url = bytes && bytes.byteLength ? URL.createObjectURL(new Blob([bytes], { type: "image/jpeg" })) : null;
    if (url) image.setAttribute("href", url);
    else image.removeAttribute("href");
  }

  function drawBoxes() {
    layer.replaceChildren();
    const colours = model.get("colours") || {};
    for (const b of model.get("boxes") || []) {
      const r = el("rect", {
        x: b.x1, y: b.y1, width: Math.max(b.x2 - b.x1, 1), height: Math.max(b.y2 - b.y1, 1),
        class: `mt-box mt-box-${b.source}`, "data-id": b.id, "data-label": b.label, "data-source": b.source,
        fill: "rgba(0,0,0,0)", stroke: colours[b.label] || "#ff0", "stroke-width": b.id === selected ? 4 : 2,
        "vector-effect": "non-scaling-stroke",
      });
      if (b.source !== "model") r.setAttribute("stroke-dasharray", "6 3");
      r.style.cursor = "pointer";
      r.addEventListener("mouseenter", () => { hovered = b.id; });
      r.addEventListener("mouseleave", () => { if (hovered === b.id) hovered = null; });
      const title = el("title");
      title.textContent = `${b.label} ${b.source}${b.confidence < 1 ? " " + b.confidence.toFixed(2) : ""}`;
      r.append(title);
      layer.append(r);
    }
  }

  function toImage(e) {
    const pt = svg.createSVGPoint();
    pt.x = e.clientX;
    pt.y = e.clientY;
    const p = pt.matrixTransform(svg.getScreenCTM().inverse());
    const w = model.get("width");
    const h = model.get("height");
    return { x: Math.min(Math.max(p.x, 0), w), y: Math.min(Math.max(p.y, 0), h), sx: e.clientX, sy: e.clientY };
  }

  function boxOf(a, b) {
    return [Math.min(a.x, b.x), Math.min(a.y, b.y), Math.max(a.x, b.x), Math.max(a.y, b.y)];
  }

  svg.addEventListener("mousedown", (e) => {
    if (e.button === 1 || (e.button === 0 && e.shiftKey)) {  // pan
      root.focus({ preventScroll: true });
      pan = { sx: e.clientX, sy: e.clientY, x: view.x, y: view.y };
      e.preventDefault();
      return;
    }
    if (e.button !== 0) return;
    root.focus({ preventScroll: true });
    const end = e.target.closest ? e.target.closest("circle.mt-length-handle") : null;
    if (end) {  // length mode: drag an end of the selected box's length line
      const box = (model.get("boxes") || []).find((b) => b.id === selected);
      if (box) handle = { end: Number(end.getAttribute("data-end")), line: [...box.line] };
      e.preventDefault();
      return;
    }
    const box = e.target.closest ? e.target.closest("rect.mt-box") : null;
    drag = { start: toImage(e), box: box ? box.getAttribute("data-id") : null, mode: model.get("mode") };
    e.preventDefault();
  });
  svg.addEventListener("wheel", (e) => {  // Ctrl+wheel (or a pinch): plain wheel scrolls the notebook
    if (!e.ctrlKey && !e.metaKey) return;
    e.preventDefault();
    const p = toImage(e);
    zoomBy(e.deltaY < 0 ? 1.25 : 0.8, p.x, p.y);
  }, { passive: false });
  const onMove = (e) => {
    if (pan) {
      const perPx = (model.get("width") || 1) / view.zoom / (svg.clientWidth || 1);
      setView(view.zoom, pan.x - (e.clientX - pan.sx) * perPx, pan.y - (e.clientY - pan.sy) * perPx);
      return;
    }
    if (handle) {
      const p = toImage(e);
      handle.line[2 * handle.end] = p.x;
      handle.line[2 * handle.end + 1] = p.y;
      drawLength();
      return;
    }
    if (!drag) return;
    if (drag.mode === "scale") {
      const p = toImage(e);
      setLine(scaleLine, [drag.start.x, drag.start.y, p.x, p.y]);
      return;
    }
    if (drag.mode === "length") return;
    const [x1, y1, x2, y2] = boxOf(drag.start, toImage(e));
    draft.setAttribute("x", x1);
    draft.setAttribute("y", y1);
    draft.setAttribute("width", x2 - x1);
    draft.setAttribute("height", y2 - y1);
    draft.setAttribute("visibility", "visible");
  };
  const onUp = (e) => {
    if (pan) {
      pan = null;
      return;
    }
    if (handle) {
      const line = handle.line.map((v) => Math.round(v * 10) / 10);
      handle = null;
      model.send({ type: "length", id: selected, line });
      return;
    }
    if (!drag) return;
    const end = toImage(e);
    const { start, box: clicked, mode } = drag;
    drag = null;
    draft.setAttribute("visibility", "hidden");
    if (mode === "scale") {  // a click too: Python says why a line of zero length cannot be a scale
      const line = [start.x, start.y, end.x, end.y].map((v) => Math.round(v * 10) / 10);
      model.send({ type: "scale_line", line });
      return;
    }
    if (mode === "length") {
      if (clicked) {
        selected = clicked;
        model.send({ type: "select", id: clicked });
        drawLength();
      }
      return;
    }
    if (Math.abs(end.sx - start.sx) < 4 && Math.abs(end.sy - start.sy) < 4) {  // a click, not a drag
      if (clicked) {
        selected = clicked;
        model.send({ type: "toggle", id: clicked });
      }
      return;
    }
    if (Math.abs(end.sx - start.sx) < 4 || Math.abs(end.sy - start.sy) < 4) return;  // too thin to be a box
    const box = boxOf(start, end).map((v) => Math.round(v * 10) / 10);
    model.send({ type: "add", box, label: model.get("add_label") });
  };
  window.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp);

  root.addEventListener("mouseenter", () => root.focus({ preventScroll: true }));
  root.addEventListener("keydown", (e) => {
    const k = e.key;
    let handled = true;
    const W = model.get("width") || 1;
    const H = model.get("height") || 1;
    const step = [W / view.zoom / 3, H / view.zoom / 3];
    if (e.shiftKey && k.startsWith("Arrow")) {
      const [dx, dy] = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[k];
      setView(view.zoom, view.x + dx * step[0], view.y + dy * step[1]);
    } else if (k === "+" || k === "=") zoomBy(2);
    else if (k === "-") zoomBy(0.5);
    else if (k === "0") setView(1, 0, 0);
    else if (k === "ArrowRight" || k === "n") model.send({ type: "nav", step: 1 });
    else if (k === "ArrowLeft" || k === "p") model.send({ type: "nav", step: -1 });
    else if (k === "d" || k === "Delete" || k === "Backspace") {
      const id = hovered || selected;
      if (id) model.send({ type: "delete", id });
      if (id === selected) selected = null;
    } else if (k === "v") model.send({ type: "verify" });
    else if (k === "u" || ((e.ctrlKey || e.metaKey) && k === "z")) model.send({ type: "undo" });
    else if (/^[1-9]$/.test(k)) {
      const cats = model.get("categories") || [];
      const i = Number(k) - 1;
      if (i < cats.length) {
        model.set("add_label", cats[i]);
        model.save_changes();
      }
    } else handled = false;
    if (handled) {
      e.preventDefault();
      e.stopPropagation();
    }
  });

  model.on("change:image", () => { drawImage(); autoZoom = true; chooseZoom(); });  // a new image
  model.on("change:width", sizeImage);
  model.on("change:height", sizeImage);
  model.on("change:boxes", () => { drawBoxes(); drawLength(); if (autoZoom) chooseZoom(); });
  model.on("change:scale_line", drawScaleLine);
  model.on("change:mode", () => { handle = null; drawLength(); });
  model.on("change:colours", drawBoxes);
  const resized = new ResizeObserver(() => { if (autoZoom) chooseZoom(); else setView(view.zoom); });
  resized.observe(svg);
  sizeImage();
  drawImage();
  drawBoxes();
  drawScaleLine();
  chooseZoom();
  return () => {
    resized.disconnect();
    window.removeEventListener("mousemove", onMove);
    window.removeEventListener("mouseup", onUp);
    if (url) URL.revokeObjectURL(url);
  };
}

export default { render };
