// mnistlab draw-a-digit page: pointer-event drawing, throttled live predictions, upload. No libraries.
"use strict";

(() => {
  const PEN_WIDTH = 20;          // in canvas pixels (the pad is 280x280 inside, whatever its size on screen)
  const THROTTLE_MS = 120;       // at most one request per this while drawing; one more when the stroke ends
  const INK = "#111";
  const CROP_MARGIN = 12;        // px of white kept round the ink in an upload (imaging.INK_CROP_MARGIN)

  const body = document.body;
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const input28 = document.getElementById("input28").getContext("2d");
  const saliencyCanvas = document.getElementById("saliency");
  const saliencyFigure = document.getElementById("saliency-figure");
  const predictionEl = document.getElementById("prediction");
  const confidenceEl = document.getElementById("confidence");
  const barsEl = document.getElementById("bars");
  const statusEl = document.getElementById("status");
  const modelInfoEl = document.getElementById("model-info");
  const uploadEl = document.getElementById("upload");

  let classNames = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
  let maxBytes = Infinity;
  let strokes = [];              // each stroke: array of [x, y] in canvas pixels
  let current = null;            // the stroke being drawn
  let uploaded = null;           // {bitmap, name} while an uploaded picture is shown
  let timer = null;
  let sent = 0;                  // request counter; a response older than the last shown one is dropped
  let shown = 0;
  let results = 0;
  let pending = 0;               // requests being prepared or on their way (tests wait for 0)

  // One rule for every figure on the page (and format_percent in predict.py): one decimal, except what would
  // round to 0.0% (a softmax is never exactly 0) or to 100.0% (nor exactly 1: never claim certainty).
  function percent(p) {
    const shown = (100 * p).toFixed(1);
    if (shown === "0.0" || p <= 0) return "<0.1%";
    if (shown === "100.0" || p >= 1) return ">99.9%";
    return `${shown}%`;
  }

  // ------------------------------------------------------------------------------------------ token
  // A server started with --token wants `Authorization: Bearer TOKEN` on /api/*. The URL it prints carries the
  // token in the fragment (#token=...): browsers never send fragments, so it stays out of requests and logs.
  // It is kept for this tab (sessionStorage) and removed from the address bar; without one, the page asks.
  const TOKEN_KEY = "mnistlab-token";
  let token = null;
  try { token = sessionStorage.getItem(TOKEN_KEY); } catch (_) { token = null; }
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromUrl) {
    token = fromUrl;
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (_) { /* private mode: kept in memory only */ }
    history.replaceState(null, "", location.pathname + location.search);
  }

  async function api(path, options = {}) {
    for (let attempt = 0; ; attempt++) {
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      const response = await fetch(path, { ...options, headers });
      if (response.status !== 401 || attempt >= 2) return response;
      const given = window.prompt("This server needs its access token (printed by `mnistlab serve` where it " +
                                  "was started, after #token=):");
      if (!given) return response;
      token = given.trim();
      try { sessionStorage.setItem(TOKEN_KEY, token); } catch (_) { /* kept in memory only */ }
    }
  }

  // ----------------------------------------------------------------------------------------- drawing
  function clearPad() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, pad.width, pad.height);
  }

  function drawStroke(points) {
    ctx.strokeStyle = INK;
    ctx.fillStyle = INK;
    ctx.lineWidth = PEN_WIDTH;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    if (points.length === 1) {
      ctx.beginPath();
      ctx.arc(points[0][0], points[0][1], PEN_WIDTH / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    ctx.moveTo(points[0][0], points[0][1]);
    for (let i = 1; i < points.length; i++) ctx.lineTo(points[i][0], points[i][1]);
    ctx.stroke();
  }

  function redraw() {
    clearPad();
    if (uploaded && uploaded.bitmap) {
      const { bitmap } = uploaded;
      const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
      const w = bitmap.width * scale, h = bitmap.height * scale;
      ctx.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    }
    strokes.forEach(drawStroke);
  }

  function pointFrom(event) {
    const rect = pad.getBoundingClientRect();
    return [(event.clientX - rect.left) * pad.width / rect.width,
            (event.clientY - rect.top) * pad.height / rect.height];
  }

  pad.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 && event.pointerType === "mouse") return;
    event.preventDefault();
    if (uploaded) { uploaded = null; redraw(); }
    pad.setPointerCapture(event.pointerId);
    current = [pointFrom(event)];
    strokes.push(current);
    drawStroke(current);
    schedule();
  });

  pad.addEventListener("pointermove", (event) => {
    if (!current) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    const start = current.length - 1;   // draw only the new segment, from the last point drawn
    for (const e of (events.length ? events : [event])) current.push(pointFrom(e));
    drawStroke(current.slice(start));
    schedule();
  });

  function endStroke() {
    if (!current) return;
    current = null;
    predictNow();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  function undo() {
    if (uploaded) { clearAll(); return; }
    strokes.pop();
    redraw();
    predictNow();
  }

  function clearAll() {
    strokes = [];
    current = null;
    uploaded = null;
    redraw();
    predictNow();
  }

  document.getElementById("undo").addEventListener("click", undo);
  document.getElementById("clear").addEventListener("click", clearAll);
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") { event.preventDefault(); undo(); }
    if (event.key === "Escape") clearAll();
  });

  // -------------------------------------------------------------------------------------- predicting
  function schedule() {
    if (timer === null) timer = setTimeout(predictNow, THROTTLE_MS);
  }

  function predictNow() {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    if (strokes.length === 0 && !uploaded) { showEmpty(); return; }
    track(+1);
    const id = ++sent;  // numbered now, not when the upload is ready: a Clear meanwhile makes it stale
    padUpload()
      .then((blob) => (blob ? send(blob, "drawing.png", id) : null))
      .catch((error) => { if (id >= shown) { shown = id; showError(`cannot read the pad (${error.message})`); } })
      .finally(() => track(-1));
  }

  // What the page uploads for the pad: its ink with a white margin (or the whole pad), by the same rule as
  // imaging.ink_crop_box, as an 8-bit grayscale PNG of Pillow's own luma levels. The server's 28x28 is
  // exactly the one it makes of the whole RGBA canvas (tests check both), from a ninth of the bytes to
  // inflate and no colour conversion. Without CompressionStream (older browsers) the crop goes as the
  // canvas's own RGBA PNG; a pad that is not opaque goes whole, as the canvas's PNG. (ink_crop_box also
  // refuses images over its working size, 1024 px: the pad is 280.)
  async function padUpload() {
    const { width, height } = pad;
    const data = ctx.getImageData(0, 0, width, height).data;
    const gray = new Uint8Array(width * height);
    let top = height, bottom = -1, left = width, right = -1, inked = 0;
    for (let y = 0, i = 0, p = 0; y < height; y++) {
      for (let x = 0; x < width; x++, i += 4, p++) {
        if (data[i + 3] !== 255) return canvasPng(pad);
        const level = (data[i] * 19595 + data[i + 1] * 38470 + data[i + 2] * 7471 + 0x8000) >>> 16;
        gray[p] = level;
        if (level >= 255) continue;
        inked++;
        if (x < left) left = x;
        if (x > right) right = x;
        if (y < top) top = y;
        bottom = y;
      }
    }
    const margin = Math.max(CROP_MARGIN, Math.round(0.02 * Math.min(width, height)) + 5);
    let box = [0, height, 0, width];
    if (inked * 1000 > width * height && top - margin >= 0 && left - margin >= 0 &&
        bottom + 1 + margin <= height && right + 1 + margin <= width) {
      box = [top - margin, bottom + 1 + margin, left - margin, right + 1 + margin];
    }
    const [y0, y1, x0, x1] = box;
    if (typeof CompressionStream === "function") {
      try { return await grayPng(gray, width, box); } catch (_) { /* fall back to the canvas's encoder */ }
    }
    const crop = document.createElement("canvas");
    crop.width = x1 - x0;
    crop.height = y1 - y0;
    crop.getContext("2d").putImageData(ctx.getImageData(x0, y0, crop.width, crop.height), 0, 0);
    return canvasPng(crop);
  }

  function canvasPng(canvas) {
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  const CRC_TABLE = new Uint32Array(256).map((_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });

  function pngChunk(type, body) {
    const out = new Uint8Array(12 + body.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, body.length);
    for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
    out.set(body, 8);
    let c = 0xffffffff;
    for (let i = 4; i < 8 + body.length; i++) c = CRC_TABLE[(c ^ out[i]) & 0xff] ^ (c >>> 8);
    view.setUint32(8 + body.length, (c ^ 0xffffffff) >>> 0);
    return out;
  }

  // A PNG of the box [y0, y1) x [x0, x1) of a row-major gray image: 8-bit grayscale, no filter, zlib-deflated
  // by the browser (PNG's IDAT is a zlib stream: CompressionStream's "deflate").
  async function grayPng(gray, width, [y0, y1, x0, x1]) {
    const w = x1 - x0, h = y1 - y0;
    const raw = new Uint8Array((w + 1) * h);  // each row: filter type 0, then its levels
    for (let y = 0; y < h; y++) {
      const from = (y0 + y) * width;
      raw.set(gray.subarray(from + x0, from + x1), y * (w + 1) + 1);
    }
    const stream = new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"));
    const deflated = new Uint8Array(await new Response(stream).arrayBuffer());
    const header = new Uint8Array(13);
    const view = new DataView(header.buffer);
    view.setUint32(0, w);
    view.setUint32(4, h);
    header[8] = 8;   // bits per sample; colour type 0 (gray), deflate, no filter method, no interlace: zeros
    const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
    const chunks = [pngChunk("IHDR", header), pngChunk("IDAT", deflated), pngChunk("IEND", new Uint8Array(0))];
    return new Blob([signature, ...chunks], { type: "image/png" });
  }

  function track(delta) {
    pending += delta;
    body.dataset.pending = String(pending);
  }

  async function send(blob, name, id = ++sent) {
    const form = new FormData();
    form.append("image", blob, name);
    body.dataset.state = "busy";
    let response, data;
    try {
      response = await api("/api/predict?top=3", { method: "POST", body: form });
      data = await response.json().catch(() => ({ detail: `${response.status} ${response.statusText}` }));
    } catch (error) {
      if (id >= shown) { shown = id; showError(`cannot reach the server (${error.message})`); }
      return;
    }
    if (id < shown) return;  // an older answer arriving after a newer one (or after Clear)
    shown = id;
    if (!response.ok) { showError(data.detail || `error ${response.status}`); return; }
    showResult(data);
  }

  function showEmpty() {
    shown = ++sent;  // drop answers still on their way
    predictionEl.textContent = "?";
    confidenceEl.textContent = "";
    statusEl.textContent = "Draw a digit in the box.";
    input28.clearRect(0, 0, 28, 28);
    drawSaliency(null);
    renderBars(null);
    body.dataset.state = "empty";
    body.dataset.notSure = "false";
  }

  function showError(message) {
    predictionEl.textContent = "?";
    confidenceEl.textContent = "";
    statusEl.textContent = message;
    drawSaliency(null);
    renderBars(null);
    body.dataset.state = "error";
    body.dataset.notSure = "false";
  }

  function showResult(data) {
    const top = data.probabilities[data.prediction];
    if (data.not_sure) {
      // A calibrated run's top probability is below the threshold chosen on its validation split: offer
      // the guesses instead of one answer.
      predictionEl.textContent = "not sure";
      confidenceEl.textContent = `top guess only ${percent(top)} (needs ${percent(data.threshold)})`;
      statusEl.textContent = "maybe: " + data.top.map((t) => `${t.label} (${percent(t.probability)})`).join(", ");
    } else {
      predictionEl.textContent = data.label;
      confidenceEl.textContent = `${percent(top)} sure`;
      const second = data.top[1];
      statusEl.textContent = second ? `next best: ${second.label} (${percent(second.probability)})` : "";
    }
    renderBars(data.probabilities, data.prediction);
    drawInput(data.input);
    drawSaliency(data.saliency || null);
    body.dataset.notSure = String(Boolean(data.not_sure));
    body.dataset.prediction = String(data.prediction);
    body.dataset.results = String(++results);
    body.dataset.state = "ready";
  }

  function renderBars(probabilities, best) {
    if (barsEl.children.length !== classNames.length) {
      barsEl.textContent = "";
      classNames.forEach((name, i) => {
        const li = document.createElement("li");
        li.dataset.class = String(i);
        li.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span>' +
                       '<span class="value"></span>';
        li.querySelector(".name").textContent = name;
        li.title = name;
        barsEl.appendChild(li);
      });
    }
    Array.from(barsEl.children).forEach((li, i) => {
      const p = probabilities ? probabilities[i] : 0;
      li.dataset.probability = String(p);
      li.classList.toggle("top", probabilities !== null && i === best);
      li.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
      li.querySelector(".value").textContent = probabilities ? percent(p) : "";
    });
  }

  function drawInput(rows) {
    const image = input28.createImageData(28, 28);
    for (let r = 0; r < 28; r++) {
      for (let c = 0; c < 28; c++) {
        const v = rows[r][c], o = 4 * (28 * r + c);
        image.data[o] = image.data[o + 1] = image.data[o + 2] = v;
        image.data[o + 3] = 255;
      }
    }
    input28.putImageData(image, 0, 0);
  }

  function drawSaliency(rows) {
    // A heat map: black where the pixel did not matter, through red to yellow where it mattered most.
    saliencyFigure.hidden = rows === null;
    if (rows === null) return;
    const context = saliencyCanvas.getContext("2d");
    const image = context.createImageData(28, 28);
    for (let r = 0; r < 28; r++) {
      for (let c = 0; c < 28; c++) {
        const v = Math.max(0, Math.min(1, rows[r][c])), o = 4 * (28 * r + c);
        image.data[o] = Math.round(255 * Math.min(1, 2 * v));
        image.data[o + 1] = Math.round(255 * Math.max(0, 2 * v - 1));
        image.data[o + 2] = 0;
        image.data[o + 3] = 255;
      }
    }
    context.putImageData(image, 0, 0);
  }

  // ------------------------------------------------------------------------------------------ upload
  uploadEl.addEventListener("change", async () => {
    const file = uploadEl.files && uploadEl.files[0];
    uploadEl.value = "";         // choosing the same file again fires change again
    if (!file) return;
    if (file.size > maxBytes) {
      showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB, over the server's ` +
                `${(maxBytes / 1048576).toFixed(0)} MB limit; resize it first`);
      return;
    }
    track(+1);
    try {
      strokes = [];
      current = null;
      let bitmap = null;
      try { bitmap = await createImageBitmap(file, { imageOrientation: "from-image" }); } catch (_) { bitmap = null; }
      uploaded = { bitmap, name: file.name };
      redraw();
      if (!bitmap) {             // a format the browser cannot show (TIFF, say): the server may still read it
        ctx.fillStyle = "#5d6675";
        ctx.font = "16px system-ui, sans-serif";
        ctx.fillText(`uploaded: ${file.name}`.slice(0, 32), 12, 140);
      }
      statusEl.textContent = `reading ${file.name}…`;
      await send(file, file.name);
    } finally {
      track(-1);
    }
  });

  // --------------------------------------------------------------------------------------------- start
  async function loadModel() {
    try {
      const response = await api("/api/model");
      const info = await response.json();
      if (!response.ok) throw new Error(info.detail || `${response.status} ${response.statusText}`);
      classNames = info.class_names.map(String);
      maxBytes = info.limits.max_bytes;
      const accuracy = info.test_accuracy === null ? "test accuracy not recorded"
        : `test accuracy ${(100 * info.test_accuracy).toFixed(2)}%`;
      const calibration = info.calibration && info.calibration.calibrated
        ? ` · "not sure" below ${percent(info.calibration.threshold)}` : "";
      modelInfoEl.textContent = `${info.model} trained on ${info.dataset} · ${accuracy} · run ${info.run}${calibration}`;
    } catch (error) {
      modelInfoEl.textContent = `cannot load the model's description (${error.message})`;
    }
    renderBars(null);
    showEmpty();
  }

  clearPad();
  loadModel();
})();
