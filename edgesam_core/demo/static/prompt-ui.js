// Prompts on the image, shared by the `edgesam demo` page and the `edgesam export-web` page: mouse -> points
// (left click; right click or Shift+click = background) and boxes (drag) on #prompt-canvas, drawn over the
// image; plus file downloads. Classic script: defines window.EdgeSamPromptUI.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const DRAG_PX = 5;

  // Pointer position in image pixels, clamped to the image.
  function imagePoint(state, event) {
    const canvas = $("prompt-canvas");
    const rect = canvas.getBoundingClientRect();
    const x = (event.clientX - rect.left) * canvas.width / rect.width;
    const y = (event.clientY - rect.top) * canvas.height / rect.height;
    return [Math.min(Math.max(x, 0), state.width), Math.min(Math.max(y, 0), state.height)];
  }

  // The points (green foreground, red background) and the box (or the box being dragged).
  function drawPrompts(state) {
    const canvas = $("prompt-canvas");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const unit = Math.max(2, Math.max(canvas.width, canvas.height) / 300);
    const box = state.drag && state.drag.moved && state.drag.current
      ? [state.drag.x, state.drag.y, state.drag.current[0], state.drag.current[1]] : state.box;
    if (box) {
      ctx.lineWidth = unit;
      ctx.setLineDash([4 * unit, 2 * unit]);
      ctx.strokeStyle = "#facc15";
      ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
      ctx.setLineDash([]);
    }
    state.points.forEach(([x, y], i) => {
      ctx.beginPath();
      ctx.arc(x, y, 2.5 * unit, 0, 2 * Math.PI);
      ctx.fillStyle = state.labels[i] === 1 ? "#22c55e" : "#ef4444";
      ctx.fill();
      ctx.lineWidth = unit / 2;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    });
  }

  // Wires the mouse: `enabled()` says whether prompts are taken now; `changed()` runs after each new point or box.
  function attach(state, enabled, changed) {
    const canvas = $("prompt-canvas");
    canvas.addEventListener("mousedown", (event) => {
      if (!enabled() || (event.button !== 0 && event.button !== 2)) return;
      event.preventDefault();
      const [x, y] = imagePoint(state, event);
      state.drag = { x, y, clientX: event.clientX, clientY: event.clientY, moved: false,
                     negative: event.button === 2 || event.shiftKey };
    });
    window.addEventListener("mousemove", (event) => {
      const drag = state.drag;
      if (!drag) return;
      if (Math.hypot(event.clientX - drag.clientX, event.clientY - drag.clientY) > DRAG_PX) drag.moved = true;
      if (drag.moved) { drag.current = imagePoint(state, event); drawPrompts(state); }
    });
    window.addEventListener("mouseup", (event) => {
      const drag = state.drag;
      if (!drag) return;
      state.drag = null;
      const [x, y] = imagePoint(state, event);
      if (drag.moved) {
        const box = [Math.min(drag.x, x), Math.min(drag.y, y), Math.max(drag.x, x), Math.max(drag.y, y)];
        if (box[2] - box[0] < 1 || box[3] - box[1] < 1) { drawPrompts(state); return; }
        state.box = box.map((v) => Math.round(v * 10) / 10);
      } else {
        state.points.push([Math.round(x * 10) / 10, Math.round(y * 10) / 10]);
        state.labels.push(drag.negative ? 0 : 1);
      }
      changed();
    });
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  }

  // The page's common controls: file input and drag-and-drop call `open(file)`; Undo drops the last point (else the
  // box) and calls `changed()`; the candidate arrows step `state.index` and call `render()`.
  function attachControls(state, open, changed, render) {
    $("file-input").addEventListener("change", (e) => {
      const file = e.target.files[0];
      e.target.value = "";  // choosing the same file again must open it again
      open(file);
    });
    $("undo").addEventListener("click", () => {
      if (state.points.length) { state.points.pop(); state.labels.pop(); } else { state.box = null; }
      changed();
    });
    const cycle = (step) => {
      if (!state.result || state.result.masks.length < 2) return;
      const n = state.result.masks.length;
      state.index = (state.index + step + n) % n;
      render();
    };
    $("prev-mask").addEventListener("click", () => cycle(-1));
    $("next-mask").addEventListener("click", () => cycle(1));
    document.body.addEventListener("dragover", (e) => { e.preventDefault(); $("stage").classList.add("dragging"); });
    document.body.addEventListener("dragleave", () => $("stage").classList.remove("dragging"));
    document.body.addEventListener("drop", (e) => {
      e.preventDefault();
      $("stage").classList.remove("dragging");
      if (e.dataTransfer.files.length) open(e.dataTransfer.files[0]);
    });
  }

  // Download a record as `<image stem>_mask.json`.
  function saveJson(record, imageName) {
    const url = URL.createObjectURL(new Blob([JSON.stringify(record, null, 2)], { type: "application/json" }));
    download(url, stem(imageName) + "_mask.json");
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function stem(name) { return (name || "image").replace(/\.[^.]+$/, "") || "image"; }

  function download(url, filename) {
    const link = document.createElement("a");
    link.href = url;
    link.download = filename;
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  window.EdgeSamPromptUI = { attach, attachControls, drawPrompts, imagePoint, saveJson, stem, download };
})();
