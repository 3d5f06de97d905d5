// S13 edge prediction in the browser: the distributed ONNX model, run by onnxruntime-web.
// Reads /models/latest and the version's manifest, downloads model.onnx, checks its sha256
// against the manifest (refusing a mismatch), then predicts the form's row on load and on every
// submit. `?row=7.0,3.2,4.7,1.4` fills the form. The outcome is written only after
// session.run resolves: #status (data-state = done | error), #result (data-label) and
// #probabilities.
"use strict";

const FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"];
const $ = (id) => document.getElementById(id);

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

async function getJson(url) {
  const resp = await fetch(url);
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(`${url} answered ${resp.status}: ${body.message || ""}`);
  return body;
}

async function sha256Hex(bytes) {
  if (!globalThis.crypto || !crypto.subtle) return null; // only in secure contexts
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function loadModel() {
  if (typeof ort === "undefined") {
    throw new Error("onnxruntime-web is not loaded: run `make vendor`, then reload");
  }
  ort.env.wasm.numThreads = 1; // threads need cross-origin isolation; one is plenty here
  ort.env.wasm.wasmPaths = new URL("/static/vendor/", location.href).href;
  const latest = await getJson("/models/latest");
  const manifest = await getJson(latest.manifest_url);
  const resp = await fetch(latest.url);
  if (!resp.ok) throw new Error(`${latest.url} answered ${resp.status}`);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  const digest = await sha256Hex(bytes);
  if (digest !== null && digest !== manifest.sha256) {
    throw new Error(`refused ${latest.version}: sha256 ${digest} does not match the manifest`);
  }
  const session = await ort.InferenceSession.create(bytes);
  $("version").textContent = `${manifest.name} ${manifest.version}`;
  $("sha256").textContent = digest === null
    ? "(sha256 not checked: not a secure context)"
    : `sha256 ${digest.slice(0, 12)}... verified`;
  return { session, manifest };
}

function readRow() {
  const row = FEATURES.map((id) => Number.parseFloat($(id).value));
  if (row.some((v) => !Number.isFinite(v))) throw new Error("every feature must be a number");
  return row;
}

async function predict(model) {
  const row = readRow();
  const { session, manifest } = model;
  const input = new ort.Tensor("float32", Float32Array.from(row), [1, row.length]);
  const started = performance.now();
  const out = await session.run({ [session.inputNames[0]]: input });
  const ms = performance.now() - started;
  const label = Number(out[session.outputNames[0]].data[0]);
  const probabilities = Array.from(out[session.outputNames[1]].data);
  const classes = manifest.classes || [];
  const result = $("result");
  result.dataset.label = String(label);
  result.textContent = classes[label] ?? String(label);
  const table = $("probabilities");
  table.replaceChildren(...probabilities.map((p, i) => {
    const tr = document.createElement("tr");
    tr.dataset.label = String(i);
    tr.innerHTML = "<td></td><td></td>";
    tr.cells[0].textContent = classes[i] ?? String(i);
    tr.cells[1].textContent = p.toFixed(6);
    return tr;
  }));
  setStatus("done", `predicted in ${ms.toFixed(2)} ms, on this device`);
}

async function main() {
  const given = new URLSearchParams(location.search).get("row");
  if (given) given.split(",").forEach((v, i) => { if (FEATURES[i]) $(FEATURES[i]).value = v.trim(); });
  let model;
  try {
    model = await loadModel();
    await predict(model);
  } catch (err) {
    setStatus("error", String(err.message || err));
    return;
  }
  $("row").addEventListener("submit", async (event) => {
    event.preventDefault();
    setStatus("loading", "predicting...");
    try {
      await predict(model);
    } catch (err) {
      setStatus("error", String(err.message || err));
    }
  });
}

main();
