// EdgeSAM web page: the image is encoded once in a Web Worker, every click/box runs only the decoder there.
// URL options: ?threads=N (WASM threads; needs a cross-origin isolated page) and ?backend=wasm|webgpu.
// Test hooks: <body data-status="loading|idle|encoding|ready|busy|error" data-mask-count="N"> and
// window.edgesamWeb ({state, call(type, args), base64(typedArray)}).

const $ = (id) => document.getElementById(id);
const MASK_RGBA = [30, 144, 255, 150];

const state = {
  info: null, imageName: "image", width: 0, height: 0, encoded: false, encode: null,
  points: [], labels: [], box: null, result: null, index: 0,
  busy: false, pending: false, drag: null,
};

// -- the worker -------------------------------------------------------------------------------------------

const worker = new Worker(new URL("web-worker.mjs", import.meta.url), { type: "module" });
const waiting = new Map();
let nextId = 1;
worker.onmessage = (event) => {
  const { id, ok, result, error } = event.data;
  const entry = waiting.get(id);
  if (!entry) return;
  waiting.delete(id);
  if (ok) entry.resolve(result); else entry.reject(new Error(error));
};
worker.onerror = (event) => showError("The model worker failed: " + (event.message || "see the browser console"));

function call(type, args = {}, transfer = []) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    waiting.set(id, { resolve, reject });
    worker.postMessage({ id, type, ...args }, transfer);
  });
}

function base64(typed) {
  const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

window.edgesamWeb = { state, call, base64 };

// -- small helpers --------------------------------------------------------------------------------------

function setStatus(status) { document.body.dataset.status = status; }

function showMessage(text, kind) {
  const box = $("message");
  box.textContent = text || "";
  box.dataset.kind = kind || "info";
  box.hidden = !text;
}

function showError(text) { showMessage(text, "error"); setStatus("error"); }

const { stem, download } = window.EdgeSamPromptUI;

// -- model and image ------------------------------------------------------------------------------------

async function loadModel() {
  const query = new URLSearchParams(location.search);
  const threads = parseInt(query.get("threads") || "0", 10);
  const backend = query.get("backend") || "auto";
  try {
    const answer = await call("init", { threads: Number.isFinite(threads) ? threads : 0, backend });
    state.info = answer;
    const m = answer.manifest, r = answer.runtime;
    $("model-name").textContent = "model: " + m.model + (m.is_hq ? " (HQ)" : "") + (m.int8_encoder ? ", int8 encoder" : "");
    $("runtime").textContent = "onnxruntime-web " + r.ortVersion + " · " + r.backend + " · " + r.threads + " thread" +
      (r.threads === 1 ? "" : "s") + (r.crossOriginIsolated ? "" : " (not cross-origin isolated: serve with edgesam demo --client-side)");
    $("multimask-label").hidden = !!m.is_hq;
    $("file-input").disabled = false;
    setStatus("idle");
  } catch (err) {
    showError("Could not load the model: " + err.message);
  }
}

async function openImage(file) {
  if (!file || !state.info) return;
  setStatus("encoding");
  showMessage("Encoding " + file.name + "…");
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch (err) {
    showError(file.name + " is not an image this browser can decode: choose a PNG, JPEG or WebP file");
    return;
  }
  const { width, height } = bitmap;
  for (const id of ["image-canvas", "mask-canvas", "prompt-canvas"]) { $(id).width = width; $(id).height = height; }
  const ctx = $("image-canvas").getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const pixels = ctx.getImageData(0, 0, width, height);
  Object.assign(state, { imageName: file.name, width, height, encoded: false });
  resetPrompts();
  $("stage").classList.remove("empty");
  $("image-canvas").style.width = Math.max(width, Math.min(640, $("stage").clientWidth - 12)) + "px";
  try {
    const rgba = pixels.data.buffer;
    state.encode = await call("encode", { rgba, width, height }, [rgba]);
  } catch (err) {
    showError("Encoding failed: " + err.message);
    return;
  }
  state.encoded = true;
  showMessage(file.name + ": " + width + "×" + height + ", encoded in " + Math.round(state.encode.encode_ms) +
              " ms on this device. Click the object.");
  $("timing").textContent = "";
  setStatus("ready");
}

// -- prompts --------------------------------------------------------------------------------------------

function resetPrompts() {
  Object.assign(state, { points: [], labels: [], box: null, result: null, index: 0 });
  render();
}

async function segment() {
  if (!state.encoded) return;
  if (!state.points.length && !state.box) { state.result = null; render(); return; }
  if (state.busy) { state.pending = true; return; }
  state.busy = true;
  setStatus("busy");
  const started = performance.now();
  try {
    const prompt = { points: state.points.map((p) => p.slice()), labels: state.labels.slice(),
                     box: state.box ? state.box.slice() : null,
                     multimask: !$("multimask-label").hidden && $("multimask").checked };
    const answer = await call("decode", prompt);
    answer.prompts = { points: prompt.points, labels: prompt.labels, box: prompt.box };
    state.result = answer;
    state.index = answer.best;
    render();
    $("timing").textContent = "decoder " + answer.decode_ms.toFixed(1) + " ms · mask " +
      answer.postprocess_ms.toFixed(1) + " ms · click to mask " + (performance.now() - started).toFixed(0) + " ms";
    showMessage("");
    setStatus("ready");
  } catch (err) {
    showError(err.message);
  } finally {
    state.busy = false;
  }
  if (state.pending) { state.pending = false; segment(); }
}

// -- drawing --------------------------------------------------------------------------------------------

function render() {
  drawPrompts();
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d");
  const result = state.result;
  if (result && result.masks.length) {
    const mask = result.masks[state.index];
    const pixels = ctx.createImageData(canvas.width, canvas.height);
    const data = pixels.data;
    for (let i = 0; i < mask.mask.length; i++) {
      if (!mask.mask[i]) continue;
      data.set(MASK_RGBA, i * 4);
    }
    ctx.putImageData(pixels, 0, 0);
    $("score").textContent = "score " + (Number.isNaN(mask.score) ? 0 : mask.score).toFixed(3) + " (stability) · IoU head " +
      mask.predicted_iou.toFixed(3) + " · area " + mask.area.toLocaleString() + " px · " + result.mode;
  } else {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    $("score").textContent = "no mask yet";
  }
  const count = result ? result.masks.length : 0;
  $("candidates").hidden = count < 2;
  if (result) $("mask-label").textContent = (state.index + 1) + "/" + count;
  $("download-png").disabled = !count;
  $("download-json").disabled = !count;
  document.body.dataset.maskCount = String(count);
  document.body.dataset.maskIndex = String(state.index);
}

function drawPrompts() { window.EdgeSamPromptUI.drawPrompts(state); }

// -- downloads ------------------------------------------------------------------------------------------

function downloadPng() {
  const result = state.result;
  if (!result) return;
  const mask = result.masks[state.index].mask;
  const canvas = document.createElement("canvas");
  canvas.width = state.width;
  canvas.height = state.height;
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(state.width, state.height);
  for (let i = 0; i < mask.length; i++) {
    const v = mask[i] ? 255 : 0;
    pixels.data[i * 4] = v; pixels.data[i * 4 + 1] = v; pixels.data[i * 4 + 2] = v; pixels.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
  canvas.toBlob((blob) => {
    const url = URL.createObjectURL(blob);
    download(url, stem(state.imageName) + "_mask.png");
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }, "image/png");
}

function downloadJson() {
  const result = state.result;
  if (!result) return;
  const m = result.masks[state.index];
  const record = {
    image: state.imageName, width: state.width, height: state.height, model: state.info.manifest.model,
    mode: result.mode, candidate: state.index, prompts: result.prompts,
    mask: { score: Number.isNaN(m.score) ? 0 : m.score, predicted_iou: m.predicted_iou, area: m.area, bbox: m.bbox,
            rle: m.rle },
  };
  window.EdgeSamPromptUI.saveJson(record, state.imageName);
}

// -- wiring ---------------------------------------------------------------------------------------------

function init() {
  window.EdgeSamPromptUI.attachControls(state, openImage, segment, render);
  window.EdgeSamPromptUI.attach(state, () => state.encoded, segment);
  $("multimask").addEventListener("change", segment);
  $("clear").addEventListener("click", resetPrompts);
  $("download-png").addEventListener("click", downloadPng);
  $("download-json").addEventListener("click", downloadJson);
  loadModel();
}

init();
