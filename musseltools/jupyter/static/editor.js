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
// Keys are handled while the canvas has focus (it takes it when the pointer enters it) and are kept
// from JupyterLab's own shortcuts.

const SVG = "http://www.w3.org/2000/svg";

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
  svg.append(image, layer, draft);
  root.append(svg);
  host.append(root);

  let url = null;
  let hovered = null;
  let selected = null;
  let drag = null;

  function sizeImage() {  // the viewBox is the image's own pixels: boxes need no scaling
    const w = model.get("width") || 1;
    const h = model.get("height") || 1;
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    image.setAttribute("width", w);
    image.setAttribute("height", h);
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
    if (e.button !== 0) return;
    root.focus({ preventScroll: true });
    const box = e.target.closest ? e.target.closest("rect.mt-box") : null;
    drag = { start: toImage(e), box: box ? box.getAttribute("data-id") : null };
    e.preventDefault();
  });
  const onMove = (e) => {
    if (!drag) return;
    const [x1, y1, x2, y2] = boxOf(drag.start, toImage(e));
    draft.setAttribute("x", x1);
    draft.setAttribute("y", y1);
    draft.setAttribute("width", x2 - x1);
    draft.setAttribute("height", y2 - y1);
    draft.setAttribute("visibility", "visible");
  };
  const onUp = (e) => {
    if (!drag) return;
    const end = toImage(e);
    const { start, box: clicked } = drag;
    drag = null;
    draft.setAttribute("visibility", "hidden");
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
    if (k === "ArrowRight" || k === "n") model.send({ type: "nav", step: 1 });
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

  model.on("change:image", drawImage);
  model.on("change:width", sizeImage);
  model.on("change:height", sizeImage);
  model.on("change:boxes", drawBoxes);
  model.on("change:colours", drawBoxes);
  sizeImage();
  drawImage();
  drawBoxes();
  return () => {
    window.removeEventListener("mousemove", onMove);
    window.removeEventListener("mouseup", onUp);
    if (url) URL.revokeObjectURL(url);
  };
}

export default { render };
