// The model side of the EdgeSAM web page, in a module Web Worker: onnxruntime-web sessions for the encoder
// (once per image) and the decoder (once per prompt), with the Python predictor's pre/post-processing.
// Messages: {id, type: "init" | "encode" | "decode" | "resources", ...} -> {id, ok, result | error}.
import * as sam from "./sam-web.mjs";

let ort = null;
let manifest = null;
const sessions = {};
let current = null; // {features: [ort.Tensor], context: [ort.Tensor] | null, originalSize, inputSize}
let runtime = null;

function siteUrl(path) { return new URL(path, self.location.href).href; }

async function pickBackend(asked) {
  if (asked === "wasm" || !manifest.webgpu) return "wasm";
  if (!self.navigator || !self.navigator.gpu) {
    if (asked === "webgpu") throw new Error("this browser has no WebGPU: open the page without ?backend=webgpu");
    return "wasm";
  }
  let adapter = null;
  try { adapter = await self.navigator.gpu.requestAdapter(); } catch (err) { adapter = null; }
  if (!adapter && asked === "webgpu") throw new Error("WebGPU has no adapter here: use ?backend=wasm");
  return adapter ? "webgpu" : "wasm";
}

async function init({ threads, backend }) {
  const started = performance.now();
  const response = await fetch(siteUrl("manifest.json"));
  if (!response.ok) throw new Error("manifest.json is missing (HTTP " + response.status + "): rebuild the site with edgesam export-web");
  manifest = await response.json();
  const chosen = await pickBackend(backend);
  ort = await import(chosen === "webgpu" ? "./ort/ort.webgpu.min.mjs" : "./ort/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = siteUrl("ort/");
  ort.env.wasm.proxy = false;
  // Threads need SharedArrayBuffer, i.e. a cross-origin isolated page (COOP/COEP headers).
  const wanted = threads > 0 ? threads : Math.min(4, self.navigator.hardwareConcurrency || 1);
  ort.env.wasm.numThreads = self.crossOriginIsolated ? wanted : 1;
  const options = { executionProviders: chosen === "webgpu" ? ["webgpu", "wasm"] : ["wasm"],
                    graphOptimizationLevel: "all" };
  for (const [role, file] of Object.entries(manifest.graphs)) {
    sessions[role] = await ort.InferenceSession.create(siteUrl(file), options);
  }
  runtime = { backend: chosen, threads: ort.env.wasm.numThreads, crossOriginIsolated: !!self.crossOriginIsolated,
              ortVersion: manifest.ort_web.version };
  return { manifest, runtime, load_ms: performance.now() - started };
}

async function encode({ rgba, width, height }) {
  const size = manifest.img_size;
  const t0 = performance.now();
  const { input, inputSize } = sam.preprocess(new Uint8Array(rgba), width, height, size);
  const t1 = performance.now();
  const encoder = sessions.encoder;
  const out = await encoder.run({ [encoder.inputNames[0]]: new ort.Tensor("float32", input, [1, 3, size, size]) });
  const features = encoder.outputNames.map((name) => out[name]);
  let context = null;
  if (sessions.decoder_image) {
    const stage = sessions.decoder_image;
    const ctx = await stage.run({ [stage.inputNames[0]]: features[0] });
    context = stage.outputNames.map((name) => ctx[name]);
  }
  const t2 = performance.now();
  current = { features, context, originalSize: [height, width], inputSize };
  return { preprocess_ms: t1 - t0, encode_ms: t2 - t1, input_size: inputSize };
}

// The demo's mask choice: HQ -> its one mask; multimask -> the 3 candidates; a box alone -> the single-mask
// output; points -> the most stable of the 4 outputs.
function request(prompt) {
  if (manifest.is_hq) {
    if (prompt.multimask) throw new Error("HQ models predict one mask per prompt: turn multimask off");
    return { count: 1, mode: "hq" };
  }
  if (prompt.multimask) return { count: 3, mode: "multimask" };
  if (prompt.box) return { count: 1, mode: "single" };
  return { count: 4, mode: "best-of-4" };
}

async function runDecoder(coords, labels, box) {
  const { features, context } = current;
  if (sessions.decoder_prompts) {
    const stage = sessions.decoder_prompts;
    const packed = sam.packPrompt(coords, labels, box);
    const p = packed.labels.length;
    const values = [...context, new ort.Tensor("float32", packed.coords, [1, p, 2]),
                    new ort.Tensor("float32", packed.labels, [1, p])];
    const feed = {};
    stage.inputNames.forEach((name, i) => { feed[name] = values[i]; });
    const out = await stage.run(feed);
    return [out.scores, out.masks];
  }
  // The upstream-contract decoder (HQ models): flags say which of points and box are real.
  const decoder = sessions.decoder;
  const n = Math.max(coords.length, 1);
  const feed = {
    image_embeddings: features[0],
    point_coords: new ort.Tensor("float32", Float32Array.from(coords.length ? coords.flat() : [0, 0]), [1, n, 2]),
    point_labels: new ort.Tensor("float32", Float32Array.from(coords.length ? labels : [-1]), [1, n]),
    boxes: new ort.Tensor("float32", Float32Array.from(box || [0, 0, 0, 0]), [1, 1, 4]),
    point_valid: new ort.Tensor("bool", Uint8Array.from([coords.length ? 1 : 0]), [1, 1]),
    boxes_valid: new ort.Tensor("bool", Uint8Array.from([box ? 1 : 0]), [1, 1]),
  };
  features.slice(1).forEach((t, i) => { feed["interm_embeddings_" + i] = t; });
  const wanted = {};
  for (const name of decoder.inputNames) wanted[name] = feed[name];
  const out = await decoder.run(wanted);
  return [out.scores, out.masks];
}

async function decode(prompt) {
  if (!current) throw new Error("no image is encoded yet: choose an image first");
  const t0 = performance.now();
  const size = manifest.img_size;
  const { originalSize, inputSize } = current;
  const coords = sam.applyCoords(prompt.points, originalSize, size);
  const box = prompt.box ? sam.applyCoords([prompt.box.slice(0, 2), prompt.box.slice(2, 4)], originalSize, size).flat()
    : null;
  if (!coords.length && !box) throw new Error("a prompt needs a point or a box");
  const { count, mode } = request(prompt);
  const [scores, masks] = await runDecoder(coords, prompt.labels, box);
  const t1 = performance.now();
  const side = masks.dims[masks.dims.length - 1];
  const plane = side * side;
  const [start, stop] = manifest.is_hq ? [0, 1] : sam.MASK_SLICES[count];
  const candidates = [];
  for (let k = start; k < stop; k++) {
    const lowRes = masks.data.slice(k * plane, (k + 1) * plane);
    candidates.push({ lowRes, predicted_iou: scores.data[k], stability: sam.stabilityScore(lowRes) });
  }
  const chosen = mode === "best-of-4" ? [candidates[sam.bestIndex(candidates.map((c) => c.stability))]] : candidates;
  const [H, W] = originalSize;
  const results = chosen.map((c) => {
    const logits = sam.postprocessMask(c.lowRes, side, size, inputSize, originalSize);
    const { mask, area, bbox } = sam.threshold(logits, W, H);
    return { mask, area, bbox, lowRes: c.lowRes, score: c.stability, predicted_iou: c.predicted_iou,
             rle: sam.cocoRle(mask, W, H) };
  });
  const t2 = performance.now();
  return { masks: results, best: sam.bestIndex(results.map((r) => r.score)), mode,
           decode_ms: t1 - t0, postprocess_ms: t2 - t1 };
}

function resources() {
  return performance.getEntriesByType("resource").map((e) => e.name);
}

const HANDLERS = { init, encode, decode, resources };

self.onmessage = async (event) => {
  const { id, type, ...args } = event.data;
  try {
    const handler = HANDLERS[type];
    if (!handler) throw new Error("unknown request " + type);
    const result = await handler(args);
    const transfer = [];
    if (result && result.masks) for (const m of result.masks) transfer.push(m.mask.buffer, m.lowRes.buffer);
    self.postMessage({ id, ok: true, result }, transfer);
  } catch (err) {
    self.postMessage({ id, ok: false, error: String(err && err.message ? err.message : err) });
  }
};
