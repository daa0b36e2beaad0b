// Pre- and post-processing of the EdgeSAM web page, numerically the Python predictor's
// (edgesam_core.inference.exported_predictor): PIL's bilinear resize of the longest side (bit for bit),
// SAM's normalisation in float32, zero padding, SAM's packed prompt, torch's bilinear mask upscaling
// (align_corners=False, float32 source positions), stability scores and COCO RLE.
// Pure functions: the page's worker and the Node.js parity test both import this module.

export const PIXEL_MEAN = [123.675, 116.28, 103.53];
export const PIXEL_STD = [58.395, 57.12, 57.375];
export const MASK_THRESHOLD = 0.0;
export const STABILITY_OFFSET = 1.0;
// Which decoder outputs a request for 1, 3 or 4 masks takes (SAM's single-mask token, the 3 multimask ones, all).
export const MASK_SLICES = { 1: [0, 1], 3: [1, 4], 4: [0, 4] };

const PRECISION_BITS = 32 - 8 - 2; // Pillow's fixed point for 8-bit images

/** (newh, neww) after scaling the longest side to `longSide`, rounded as upstream does. */
export function resizedShape(height, width, longSide) {
  const scale = longSide / Math.max(height, width);
  return [Math.trunc(height * scale + 0.5), Math.trunc(width * scale + 0.5)];
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear (triangle) filter.
function pilCoefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Float64Array(outSize * ksize);
  const weights = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1.0 ? 1.0 - t : 0.0;
      weights[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? weights[x] / ww : weights[x];
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS))
        : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(sum) {
  const v = Math.floor(sum / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * Pillow's `Image.resize((outW, outH), BILINEAR)` of 8-bit pixels, bit for bit (horizontal pass, then
 * vertical, each rounded to 8 bits as Pillow does).
 * @param {Uint8Array|Uint8ClampedArray} src  inH x inW x channels, row-major
 * @returns {Uint8Array} outH x outW x outChannels (the first `outChannels` channels, e.g. RGB of RGBA)
 */
export function resizePilBilinear(src, inW, inH, channels, outW, outH, outChannels = channels) {
  let rows = src, rowsW = inW, rowsC = channels;
  if (outW !== inW) {
    const { ksize, bounds, kk } = pilCoefficients(inW, outW);
    rows = new Uint8Array(inH * outW * outChannels);
    for (let y = 0; y < inH; y++) {
      const rowIn = y * inW * channels, rowOut = y * outW * outChannels;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = bounds[xx * 2], xmax = bounds[xx * 2 + 1], k = xx * ksize;
        for (let c = 0; c < outChannels; c++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let x = 0; x < xmax; x++) ss += src[rowIn + (x + xmin) * channels + c] * kk[k + x];
          rows[rowOut + xx * outChannels + c] = clip8(ss);
        }
      }
    }
    rowsW = outW;
    rowsC = outChannels;
  }
  const out = new Uint8Array(outH * outW * outChannels);
  if (outH === inH) {
    for (let i = 0, n = outH * outW; i < n; i++) {
      for (let c = 0; c < outChannels; c++) out[i * outChannels + c] = rows[i * rowsC + c];
    }
    return out;
  }
  const { ksize, bounds, kk } = pilCoefficients(inH, outH);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2], ymax = bounds[yy * 2 + 1], k = yy * ksize;
    for (let xx = 0; xx < rowsW; xx++) {
      for (let c = 0; c < outChannels; c++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let y = 0; y < ymax; y++) ss += rows[((y + ymin) * rowsW + xx) * rowsC + c] * kk[k + y];
        out[(yy * outW + xx) * outChannels + c] = clip8(ss);
      }
    }
  }
  return out;
}

/**
 * RGBA pixels of the original image -> the encoder input: 1 x 3 x size x size float32, normalised with SAM's
 * statistics in float32 and zero-padded right/bottom, plus the resized (h, w).
 */
export function preprocess(rgba, width, height, size) {
  const [h, w] = resizedShape(height, width, size);
  const rgb = resizePilBilinear(rgba, width, height, 4, w, h, 3);
  const x = new Float32Array(3 * size * size);
  const mean = PIXEL_MEAN.map(Math.fround), std = PIXEL_STD.map(Math.fround);
  for (let c = 0; c < 3; c++) {
    const plane = c * size * size;
    for (let y = 0; y < h; y++) {
      for (let i = 0; i < w; i++) {
        x[plane + y * size + i] = Math.fround(rgb[(y * w + i) * 3 + c] - mean[c]) / std[c];
      }
    }
  }
  return { input: x, inputSize: [h, w] };
}

/** Original-frame (x, y) pairs -> the model-input frame (ResizeLongestSide.apply_coords). */
export function applyCoords(coords, originalSize, size) {
  const [oldH, oldW] = originalSize;
  const [newH, newW] = resizedShape(oldH, oldW, size);
  return coords.map(([x, y]) => [x * (newW / oldW), y * (newH / oldH)]);
}

/**
 * One prompt set as SAM's packed prompt (points, then a padding point labelled -1 when there is no box, then
 * the box corners labelled 2 and 3), in the model-input frame: {coords: Float32Array P*2, labels: Float32Array P}.
 */
export function packPrompt(points, labels, box) {
  const c = [], l = [];
  points.forEach((p, i) => { c.push(p[0], p[1]); l.push(labels[i]); });
  if (box) { c.push(box[0], box[1], box[2], box[3]); l.push(2, 3); } else { c.push(0, 0); l.push(-1); }
  return { coords: Float32Array.from(c), labels: Float32Array.from(l) };
}

/** Stability score of one mask's logits (NaN for an empty mask, as in Python). */
export function stabilityScore(logits, threshold = MASK_THRESHOLD, offset = STABILITY_OFFSET) {
  let inter = 0, union = 0;
  const hi = Math.fround(threshold + offset), lo = Math.fround(threshold - offset);
  for (let i = 0; i < logits.length; i++) {
    if (logits[i] > hi) inter++;
    if (logits[i] > lo) union++;
  }
  return inter / union;
}

/** Index of the highest score; NaN never wins (the demo's and `edgesam segment`'s rule). */
export function bestIndex(scores) {
  let best = 0, value = -Infinity;
  scores.forEach((s, i) => { const v = Number.isNaN(s) ? -1 : s; if (v > value) { value = v; best = i; } });
  return best;
}

// torch's bilinear source index (align_corners=False) with float32 arithmetic as torch does for float tensors.
function axisWeights(inSize, outSize, count) {
  const scale = Math.fround(inSize / outSize);
  const i0 = new Int32Array(count), i1 = new Int32Array(count), f = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    let src = Math.fround(scale * (i + 0.5) - 0.5); // one rounding, as torch's fused multiply-add
    if (src < 0) src = 0;
    const a = Math.min(Math.trunc(src), inSize - 1);
    i0[i] = a;
    i1[i] = Math.min(a + 1, inSize - 1);
    f[i] = Math.min(Math.max(Math.fround(src - a), 0), 1);
  }
  return { i0, i1, f };
}

function bilinear(src, inH, inW, outH, outW, rows, cols) {
  // `rows` x `cols` of the outH x outW resize (the top-left crop of it when smaller).
  const ay = axisWeights(inH, outH, rows), ax = axisWeights(inW, outW, cols);
  const out = new Float32Array(rows * cols);
  for (let y = 0; y < rows; y++) {
    const r0 = ay.i0[y] * inW, r1 = ay.i1[y] * inW, fy = ay.f[y], gy = 1 - fy;
    for (let x = 0; x < cols; x++) {
      const c0 = ax.i0[x], c1 = ax.i1[x], fx = ax.f[x], gx = 1 - fx;
      out[y * cols + x] = gy * (gx * src[r0 + c0] + fx * src[r0 + c1]) + fy * (gx * src[r1 + c0] + fx * src[r1 + c1]);
    }
  }
  return out;
}

/**
 * Low-res logits (side x side) -> logits in the original frame (Sam.postprocess_masks): upscale to the model
 * input, crop to the resized image, resize to the original size. Returns Float32Array H*W.
 */
export function postprocessMask(lowRes, side, size, inputSize, originalSize) {
  const [h, w] = inputSize, [H, W] = originalSize;
  const cropped = side === size ? cropTopLeft(lowRes, size, h, w) : bilinear(lowRes, side, side, size, size, h, w);
  if (h === H && w === W) return cropped;
  return bilinear(cropped, h, w, H, W, H, W);
}

function cropTopLeft(x, side, h, w) {
  const out = new Float32Array(h * w);
  for (let y = 0; y < h; y++) out.set(x.subarray(y * side, y * side + w), y * w);
  return out;
}

/** Logits -> 0/1 mask (logit > threshold), its area and tight [x, y, w, h] box. */
export function threshold(logits, width, height, value = MASK_THRESHOLD) {
  const mask = new Uint8Array(width * height);
  let area = 0, x0 = width, y0 = height, x1 = -1, y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (logits[y * width + x] > value) {
        mask[y * width + x] = 1;
        area++;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return { mask, area, bbox: area ? [x0, y0, x1 - x0 + 1, y1 - y0 + 1] : [0, 0, 0, 0] };
}

/** COCO compressed RLE of a 0/1 row-major mask ({size: [H, W], counts: string}), as pycocotools writes it. */
export function cocoRle(mask, width, height) {
  const counts = [];
  let current = 0, run = 0;
  for (let x = 0; x < width; x++) {
    for (let y = 0; y < height; y++) { // column-major
      const v = mask[y * width + x];
      if (v !== current) { counts.push(run); run = 0; current = v; }
      run++;
    }
  }
  counts.push(run);
  let s = "";
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x >>= 5;
      more = (c & 0x10) ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      s += String.fromCharCode(c + 48);
    }
  }
  return { size: [height, width], counts: s };
}
