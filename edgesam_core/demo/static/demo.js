// EdgeSAM demo page: upload once, then every click/box only asks the server to run the mask decoder.
// Test hooks: <body data-status="idle|uploading|ready|busy|error" data-mask-count="N" data-image-id="...">
// and window.edgesamDemo.state (the last server answer is state.result).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const MASK_RGBA = [30, 144, 255, 150];

  const state = {
    info: null, imageId: null, imageName: "image", width: 0, height: 0,
    points: [], labels: [], box: null,
    result: null, index: 0, everything: null,
    busy: false, pending: false, drag: null,
  };
  window.edgesamDemo = { state };

  // -- small helpers ------------------------------------------------------------------------------------

  function setStatus(status) { document.body.dataset.status = status; }

  function showMessage(text, kind) {
    const box = $("message");
    box.textContent = text || "";
    box.dataset.kind = kind || "info";
    box.hidden = !text;
  }

  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      throw new Error("The demo server did not answer (" + err.message + "); is `edgesam demo` still running?");
    }
    let payload = null;
    try { payload = await response.json(); } catch (err) { payload = null; }
    if (!response.ok) {
      throw new Error((payload && payload.error) || ("Request failed with HTTP " + response.status));
    }
    return payload;
  }

  function postJson(path, body) {
    return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = () => reject(new Error("the browser could not display the image"));
      image.src = url;
    });
  }

  const { stem, download } = window.EdgeSamPromptUI;

  // -- info and upload ----------------------------------------------------------------------------------

  async function loadInfo() {
    try {
      state.info = await api("/api/info");
    } catch (err) {
      showMessage(err.message, "error");
      setStatus("error");
      return;
    }
    const info = state.info;
    $("model-name").textContent = "model: " + info.model + (info.is_hq ? " (HQ)" : "");
    $("multimask-label").hidden = !info.multimask;
    $("hq-label").hidden = !info.is_hq;
    $("hq").disabled = !info.hq_toggle;
    if (info.is_hq && !info.hq_toggle) $("hq-label").title = "This backend returns only the HQ mask";
    $("everything").disabled = !info.everything;
    $("task-controls").hidden = !(info.tasks && info.tasks.length);
    for (const name of info.tasks || []) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      $("task").appendChild(option);
    }
    if (!info.everything) $("everything").title = "This backend takes prompts only";
    setStatus("idle");
  }

  async function upload(file) {
    if (!file) return;
    const limit = state.info ? state.info.limits.max_upload_bytes : Infinity;
    if (file.size > limit) {
      showMessage("File is " + (file.size / 1e6).toFixed(1) + " MB; the limit is " + (limit / 1e6).toFixed(1) +
                  " MB (restart the demo with a larger --max-upload-mb)", "error");
      setStatus("error");
      return;
    }
    setStatus("uploading");
    showMessage("Encoding " + file.name + "…");
    let answer, picture;
    try {
      answer = await api("/api/image", {
        method: "POST", body: file,
        headers: { "Content-Type": file.type || "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
      });
      picture = await loadImage(answer.preview);
    } catch (err) {
      showMessage(err.message, "error");
      setStatus("error");
      return;
    }
    Object.assign(state, { imageId: answer.image_id, imageName: file.name, width: answer.width, height: answer.height });
    resetPrompts();
    for (const id of ["image-canvas", "mask-canvas", "prompt-canvas"]) {
      $(id).width = answer.width;
      $(id).height = answer.height;
    }
    $("image-canvas").getContext("2d").drawImage(picture, 0, 0);
    $("stage").classList.remove("empty");
    // Small images are shown at least 640 px wide (CSS max-width still fits large ones to the page).
    $("image-canvas").style.width = Math.max(answer.width, Math.min(640, $("stage").clientWidth - 12)) + "px";
    document.body.dataset.imageId = answer.image_id;
    showMessage(file.name + ": " + answer.width + "×" + answer.height + ", encoded in " +
                Math.round(answer.encode_ms) + " ms. Click the object.");
    $("timing").textContent = "";
    setStatus("ready");
  }

  // -- prompts --------------------------------------------------------------------------------------------

  function resetPrompts() {
    Object.assign(state, { points: [], labels: [], box: null, result: null, index: 0, everything: null });
    render();
  }

  // Runs one server call with the busy flag and status set; errors go to the message line.
  async function whileBusy(work) {
    state.busy = true;
    setStatus("busy");
    try {
      await work();
      setStatus("ready");
    } catch (err) {
      showMessage(err.message, "error");
      setStatus("error");
    } finally {
      state.busy = false;
    }
  }

  async function segment() {
    if (!state.imageId) return;
    if (!state.points.length && !state.box) { state.result = null; render(); return; }
    if (state.busy) { state.pending = true; return; }
    const started = performance.now();
    await whileBusy(async () => {
      const answer = await postJson("/api/segment", {
        image_id: state.imageId, points: state.points, labels: state.labels, box: state.box,
        multimask: !$("multimask-label").hidden && $("multimask").checked,
        hq: !$("hq-label").hidden ? $("hq").checked : true,
      });
      state.result = answer;
      state.index = answer.best;
      await render();
      $("timing").textContent = "decoder " + answer.decode_ms.toFixed(1) + " ms · round trip " +
        (performance.now() - started).toFixed(0) + " ms";
      showMessage("");
    });
    if (state.pending) { state.pending = false; segment(); }
  }

  // A learned task prompt: the server runs the decoder with it, no click; the result shows like a click's.
  async function runTask() {
    if (!state.imageId || state.busy) return;
    const started = performance.now();
    await whileBusy(async () => {
      const answer = await postJson("/api/task", { image_id: state.imageId, task: $("task").value });
      Object.assign(state, { points: [], labels: [], box: null, everything: null, result: answer, index: 0 });
      await render();
      $("timing").textContent = "decoder " + answer.decode_ms.toFixed(1) + " ms · round trip " +
        (performance.now() - started).toFixed(0) + " ms";
      showMessage("Task " + $("task").value + ": no click needed");
    });
  }

  async function everything() {
    if (!state.imageId || state.busy) return;
    showMessage("Segmenting everything…");
    await whileBusy(async () => {
      const answer = await postJson("/api/everything", { image_id: state.imageId });
      Object.assign(state, { points: [], labels: [], box: null, result: null, everything: answer });
      await render();
      showMessage(answer.count + " masks in " + (answer.ms / 1000).toFixed(1) + " s");
    });
  }

  // -- drawing --------------------------------------------------------------------------------------------

  async function render() {
    drawPrompts();
    const canvas = $("mask-canvas");
    const ctx = canvas.getContext("2d");
    const result = state.result;
    let count = 0;
    if (state.everything) {
      const overlay = await loadImage(state.everything.overlay);
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(overlay, 0, 0);
      count = state.everything.count;
      $("score").textContent = count + " masks (everything mode)";
    } else if (result && result.masks.length) {
      const mask = result.masks[state.index];
      const picture = await loadImage(mask.png);
      const scratch = document.createElement("canvas");
      scratch.width = canvas.width;
      scratch.height = canvas.height;
      const sctx = scratch.getContext("2d");
      sctx.drawImage(picture, 0, 0);
      const pixels = sctx.getImageData(0, 0, scratch.width, scratch.height);
      const data = pixels.data;
      for (let i = 0; i < data.length; i += 4) {
        const on = data[i] > 127;
        data[i] = MASK_RGBA[0]; data[i + 1] = MASK_RGBA[1]; data[i + 2] = MASK_RGBA[2];
        data[i + 3] = on ? MASK_RGBA[3] : 0;
      }
      ctx.putImageData(pixels, 0, 0);
      count = result.masks.length;
      $("score").textContent = "score " + mask.score.toFixed(3) + " (stability) · IoU head " +
        mask.predicted_iou.toFixed(3) + " · area " + mask.area.toLocaleString() + " px · " + result.mode;
    } else {
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      $("score").textContent = "no mask yet";
    }
    const many = !!result && result.masks.length > 1;
    $("candidates").hidden = !many;
    if (result) $("mask-label").textContent = (state.index + 1) + "/" + result.masks.length;
    $("download-png").disabled = !(state.everything || (result && result.masks.length));
    $("download-json").disabled = $("download-png").disabled;
    document.body.dataset.maskCount = String(count);
    document.body.dataset.maskIndex = String(state.index);
  }

  function drawPrompts() { window.EdgeSamPromptUI.drawPrompts(state); }

  // -- downloads ------------------------------------------------------------------------------------------

  function downloadPng() {
    if (state.everything) download(state.everything.overlay, stem(state.imageName) + "_everything.png");
    else if (state.result) download(state.result.masks[state.index].png, stem(state.imageName) + "_mask.png");
  }

  function downloadJson() {
    const base = { image: state.imageName, width: state.width, height: state.height,
                   model: state.info ? state.info.model : null };
    let record;
    if (state.everything) {
      record = Object.assign(base, { mode: "everything", masks: state.everything.masks });
    } else if (state.result) {
      const { png, ...mask } = state.result.masks[state.index];
      record = Object.assign(base, { mode: state.result.mode, candidate: state.index, prompts: state.result.prompts,
                                     mask });
    } else {
      return;
    }
    window.EdgeSamPromptUI.saveJson(record, state.imageName);
  }

  // -- wiring ---------------------------------------------------------------------------------------------

  function init() {
    window.EdgeSamPromptUI.attachControls(state, upload, segment, render);
    window.EdgeSamPromptUI.attach(state, () => !!state.imageId, () => { state.everything = null; segment(); });
    $("multimask").addEventListener("change", segment);
    $("hq").addEventListener("change", segment);
    $("clear").addEventListener("click", resetPrompts);
    $("everything").addEventListener("click", everything);
    $("run-task").addEventListener("click", runTask);
    $("download-png").addEventListener("click", downloadPng);
    $("download-json").addEventListener("click", downloadJson);
    loadInfo();
  }

  init();
})();
