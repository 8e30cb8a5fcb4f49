// The Studio page: plain DOM calls against the JSON API. Nothing is kept only here: every list is read back from
// the server (jobs, runs, data sets), so a reload or a second browser shows the same state.
"use strict";
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const audio = (url) => url ? `<audio controls preload="metadata" src="${esc(url)}"></audio>` : "-";
const fmt = (v) => (typeof v === "number" ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(4)) : (v ?? "-"));

async function api(path, options = {}) {
  const opts = {...options, headers: {"Content-Type": "application/json", ...(options.headers || {})}};
  if (opts.json !== undefined) { opts.body = JSON.stringify(opts.json); opts.method = opts.method || "POST"; }
  const response = await fetch(path, opts);
  const data = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
  if (!response.ok) { const err = new Error(data.error || `HTTP ${response.status}`); err.field = data.field; throw err; }
  return data;
}

// ---------------------------------------------------------------- tabs
document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
function showTab(name) {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.id === `tab-${name}`));
  location.hash = name;
  ({data: refreshData, train: () => { fillDatasetSelects(); refreshJobs(); }, listen: refreshRuns, speak: refreshSpeak, export: refreshExport}[name] || (() => {}))();
}

// ---------------------------------------------------------------- data
async function browse(path) {
  try {
    const d = await api(`/api/browse?root=data&path=${encodeURIComponent(path)}`);
    const up = path ? `<span data-path="${esc(path.split("/").slice(0, -1).join("/"))}">..</span>` : "";
    $("browse").innerHTML = `data:${esc(path)} ` + up + d.entries.filter((e) => e.dir)
      .map((e) => `<span data-path="${esc(e.path.slice(5))}">${esc(e.name)}/</span>`).join("");
    $("browse").querySelectorAll("span").forEach((s) => s.addEventListener("click", () => {
      $("build-input").value = `data:${s.dataset.path}`; browse(s.dataset.path);
    }));
  } catch (e) { $("browse").textContent = e.message; }
}
$("make-samples").addEventListener("click", async () => {
  $("upload-status").textContent = "writing sample recordings...";
  try {
    const r = await api("/api/sample_recordings", {json: {per_speaker: Number($("samples-per-speaker").value)}});
    $("upload-status").textContent = `${r.files} recordings in ${r.path}`;
    $("build-input").value = r.path; browse("");
  } catch (e) { $("upload-status").textContent = e.message; }
});
$("upload").addEventListener("change", async (ev) => {
  const file = ev.target.files[0]; if (!file) return;
  $("upload-status").textContent = `uploading ${file.name}...`;
  const response = await fetch(`/api/upload?name=${encodeURIComponent(file.name)}`, {method: "POST", body: file});
  const data = await response.json();
  $("upload-status").textContent = response.ok ? `saved as ${data.path}` : data.error;
});
$("build").addEventListener("click", async () => {
  try {
    const job = await api("/api/build", {json: {input: $("build-input").value, name: $("build-name").value,
                                                 segment: $("build-segment").checked}});
    watchJob(job.job_id, $("build-job"), () => { refreshData(); fillDatasetSelects(); });
  } catch (e) { $("build-job").innerHTML = `<span class="error">${esc(e.message)}</span>`; }
});
let datasetCache = [];
async function refreshData() {
  browse("");
  const d = await api("/api/datasets");
  datasetCache = d.datasets;
  $("datasets").innerHTML = d.datasets.length ? `<table class="grid"><tr><th>data set</th><th>clips</th><th>minutes</th>
    <th>speakers</th><th>train/val samples</th><th>rejected</th><th>report</th></tr>` + d.datasets.map((s) => {
      const r = s.report || {}; const p = r.pairing || {};
      const rejected = (r.rejected || []).map((x) => `${esc(x.file || x.path || "")}: ${esc(x.reason || "")}`).join("<br>");
      return `<tr><td><a href="#" data-ds="${esc(s.name)}">${esc(s.name)}</a></td><td>${r.clips_written ?? "-"}</td>
        <td>${fmt((r.clips_hours || 0) * 60)}</td><td>${Object.entries(r.speakers || {}).map(([k, v]) => `${esc(k)} (${v.clips})`).join(", ")}</td>
        <td>${p.train_samples ?? "-"} / ${p.val_samples ?? "-"}</td><td>${(r.rejected || []).length}${rejected ? "<br>" + rejected : ""}</td>
        <td><a href="/files/output/${esc(s.name)}/data_report.png" target="_blank">figure</a></td></tr>`;
    }).join("") + "</table>" : "<p class='help'>No data set built yet.</p>";
  $("datasets").querySelectorAll("a[data-ds]").forEach((a) => a.addEventListener("click", (ev) => { ev.preventDefault(); showClips(a.dataset.ds); }));
}
async function showClips(name) {
  const path = "output:" + name;
  const d = await api(`/api/datasets/clips?path=${encodeURIComponent(path)}`).catch((e) => ({clips: [], error: e.message}));
  const open = await api(`/api/datasets/to_transcribe?path=${encodeURIComponent(path)}`);
  const todo = open.rows.length ? `<h3>Clips without a transcript (${open.rows.length})</h3><table class="grid" id="to-transcribe">` +
    open.rows.map((r) => `<tr><td>${esc(r.clip)}</td><td>${audio(r.url)}</td><td><input size="60" data-clip="${esc(r.clip)}" value="${esc(r.text)}"></td></tr>`).join("") +
    `</table><button id="save-transcripts">Save and rebuild</button> <span id="transcripts-status" class="status"></span>` : "";
  $("clips").innerHTML = `<h3>${esc(name)}: ${d.clips.length} clips</h3>${d.error ? `<p class="error">${esc(d.error)}</p>` : ""}` + todo +
    `<table class="grid"><tr><th>speaker</th><th>clip</th><th>transcript</th><th>listen</th></tr>` +
    d.clips.map((c) => `<tr><td>${esc(c.speaker)}</td><td>${esc(c.clip)}</td><td>${esc(c.text)}</td><td>${audio(c.url)}</td></tr>`).join("") + "</table>";
  $("save-transcripts")?.addEventListener("click", async () => {
    const texts = Object.fromEntries([...document.querySelectorAll("#to-transcribe input")].map((i) => [i.dataset.clip, i.value]));
    try {
      const r = await api("/api/datasets/to_transcribe", {json: {path, texts}});
      const source = (datasetCache.find((s) => s.name === name) || {}).source;
      $("transcripts-status").textContent = `${r.filled} filled, ${r.open} open` + (source ? "; rebuilding" : "; build the data set again to pair them");
      if (source) {
        const job = await api("/api/build", {json: {input: source, name: name.split("/").pop()}});
        watchJob(job.job_id, $("build-job"), () => { refreshData(); showClips(name); });
      }
    } catch (e) { $("transcripts-status").textContent = e.message; }
  });
}

// ---------------------------------------------------------------- jobs (build, train, export)
const watchers = {};
function watchJob(jobId, element, onDone) {
  clearTimeout(watchers[element.id]);
  const tick = async () => {
    let job;
    try { job = await api(`/api/jobs/${jobId}`); } catch (e) {  // a hiccup (server restart): say so, keep watching
      element.querySelector(".status")?.replaceChildren(`(${e.message}; retrying)`);
      watchers[element.id] = setTimeout(tick, 4000); return;
    }
    element.innerHTML = jobHtml(job);
    element.querySelector("button.stop")?.addEventListener("click", () => jobAction(jobId, "stop"));
    element.querySelector("button.resume")?.addEventListener("click", () => jobAction(jobId, "resume"));
    if (job.state === "running") watchers[element.id] = setTimeout(tick, 2000);
    else if (onDone) onDone(job);
  };
  tick();
}
async function jobAction(jobId, action) {  // stop: the job ends cleanly; resume: a new job from the last checkpoint
  try {
    const job = await api(`/api/jobs/${jobId}/${action}`, {method: "POST"});
    if (action === "resume") watchJob(job.job_id, $("job-detail"), refreshJobs);
    refreshJobs();
  } catch (e) { alert(e.message); }
}
function jobButtons(job) {
  return (job.state === "running" ? `<button class="stop" data-job="${esc(job.job_id)}">Stop</button>` : "") +
    (job.resumable ? `<button class="resume" data-job="${esc(job.job_id)}">Resume</button>` : "");
}
function jobHtml(job) {
  const p = job.progress || {};
  const progress = job.kind === "train" && job.run ? `<div>step ${p.step ?? 0} / ${esc(p.max_steps)} | loss ${fmt(p["train/total_loss"])} |
    val_loss ${fmt(p.val_loss)} | tokens/s ${fmt(p["train/tokens_per_second"])} | run ${esc(job.run.run_name)} (${esc(job.run.status)})</div>` : "";
  const chart = job.history ? lossChart({[job.run?.run_name || "run"]: job.history})
    : job.histories ? `<div>trials: ${job.trials.map((t) => `${esc(t.run_name)} (${esc(t.status)})`).join(", ")}</div>` + lossChart(job.histories) : "";
  const report = job.plot_url ? `<div><a href="${esc(job.report_url)}" target="_blank">data_report.json</a><br><img src="${esc(job.plot_url)}" width="480"></div>` : "";
  const card = job.card_url ? `<div><a href="${esc(job.card_url)}" target="_blank">model card</a> (in ${esc(job.output)})</div>` : "";
  return card + `<div><b>${esc(job.title)}</b> <span class="state state-${esc(job.state)}" data-state="${esc(job.state)}">${esc(job.state)}</span>
    ${jobButtons(job)}
    ${job.error ? `<div class="error job-error">${esc(job.error)}</div>` : ""}
    <div class="status">${esc(job.last_line)}</div></div>${progress}${chart}${report}
    ${job.log ? `<details><summary>log</summary><pre class="log">${esc(job.log)}</pre></details>` : ""}`;
}
async function refreshJobs() {
  const d = await api("/api/jobs");
  $("jobs").innerHTML = d.jobs.length ? `<table class="grid"><tr><th>job</th><th>state</th><th>progress</th><th></th></tr>` +
    d.jobs.map((j) => `<tr><td>${esc(j.title)}</td><td class="state-${esc(j.state)}">${esc(j.state)}</td>
      <td>${esc(j.error || j.last_line).slice(0, 120)}</td><td><a href="#" data-job="${esc(j.job_id)}">details</a> ${jobButtons(j)}</td></tr>`).join("") + "</table>"
    : "<p class='help'>No job yet.</p>";
  $("jobs").querySelectorAll("a[data-job]").forEach((a) => a.addEventListener("click", (ev) => { ev.preventDefault(); watchJob(a.dataset.job, $("job-detail"), refreshJobs); }));
  $("jobs").querySelectorAll("button.stop, button.resume").forEach((b) => b.addEventListener("click", () => jobAction(b.dataset.job, b.className)));
  const running = d.jobs.find((j) => j.kind === "train" && j.state === "running");
  if (running && !$("job-detail").innerHTML) watchJob(running.job_id, $("job-detail"), refreshJobs);  // reattach
}

// ---------------------------------------------------------------- train
let catalogue = null;
async function loadSettings() {
  catalogue = await api("/api/settings");
  $("preset").innerHTML = Object.keys(catalogue.presets).map((p) => `<option>${esc(p)}</option>`).join("");
  $("fields").innerHTML = catalogue.fields.map((f) => `<label class="field">${esc(f.name)}
    <input data-field="${esc(f.name)}" data-type="${esc(f.type)}" placeholder="${esc(JSON.stringify(f.default))}">
    <small>${esc(f.help)}</small><span class="error" id="err-${esc(f.name)}"></span></label>`).join("");
  $("fields").querySelectorAll("input").forEach((i) => i.addEventListener("change", checkSettings));
  const sweepDefaults = Object.values(catalogue.sweep_presets)[0] || {};  // the placeholder: what an empty box runs
  $("sweep-fields").innerHTML = catalogue.sweep_fields.map((f) => `<label class="field">sweep: ${esc(f.name)}
    <input data-sweep="${esc(f.name)}" data-type="${esc(f.type)}" placeholder="${esc(JSON.stringify(sweepDefaults[f.name] ?? f.default))}">
    <small>${esc(f.help)}</small><span class="error" id="err-${esc(f.name)}"></span></label>`).join("");
  $("sweep-fields").querySelectorAll("input").forEach((i) => i.addEventListener("change", checkSettings));
}
const isSweep = () => Boolean(catalogue && catalogue.sweep_presets[$("preset").value]);
function trainRequest() {
  const settings = {};
  $("fields").querySelectorAll("input").forEach((i) => {
    if (i.value.trim() === "") return;
    settings[i.dataset.field] = i.dataset.type === "list" ? i.value.split(",").map((x) => x.trim()) : i.value.trim();
  });
  const ds = $("train-dataset").value;
  if (ds) { settings.train_data = settings.train_data || `output:${ds}/train.jsonl`; settings.val_data = settings.val_data || `output:${ds}/val.jsonl`; }
  if ($("run-name").value.trim()) settings.run_name = $("run-name").value.trim();
  const request = {preset: $("preset").value, settings};
  if (isSweep()) {  // a sweep runs tune.py: its own settings (trials, searcher...) on top of the preset's
    request.sweep = {};
    $("sweep-fields").querySelectorAll("input").forEach((i) => { if (i.value.trim() !== "") request.sweep[i.dataset.sweep] = i.value.trim(); });
  }
  return request;
}
function showSettingsError(e) {
  document.querySelectorAll("#fields .error, #sweep-fields .error").forEach((el) => (el.textContent = ""));
  $("train-error").textContent = e ? e.message : "";
  if (e && e.field && $(`err-${e.field}`)) {
    $(`err-${e.field}`).textContent = e.message;
    if ($(`err-${e.field}`).closest("#fields")) $("fields").parentElement.open = true;
  }
}
async function checkSettings() {
  try { await api("/api/train/check", {json: trainRequest()}); showSettingsError(null); } catch (e) { showSettingsError(e); }
}
$("train-start").addEventListener("click", async () => {
  try {
    const job = await api("/api/train", {json: trainRequest()});
    showSettingsError(null); refreshJobs(); watchJob(job.job_id, $("job-detail"), refreshJobs);
  } catch (e) { showSettingsError(e); }
});
async function fillDatasetSelects() {
  const d = await api("/api/datasets");
  datasetCache = d.datasets;
  const opts = d.datasets.map((s) => `<option value="${esc(s.name)}">${esc(s.name)}</option>`).join("");
  $("train-dataset").innerHTML = `<option value="">sample data</option>` + opts;
  $("speak-dataset").innerHTML = opts;
}

// ---------------------------------------------------------------- runs: curves, table, samples
const COLORS = ["#1a56c4", "#c4371a", "#1e7b34", "#8a3ac4", "#c48a1a", "#1ab0c4"];
function lossChart(histories, key = "train/total_loss") {
  const series = Object.entries(histories).map(([name, h]) => [name, h[key] || []]).filter(([, pts]) => pts.length);
  if (!series.length) return "<p class='help'>No loss logged yet.</p>";
  const all = series.flatMap(([, pts]) => pts);
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs) || 1, Math.min(...ys), Math.max(...ys)];
  const W = 480, H = 200, sx = (x) => 40 + (W - 50) * (x - x0) / ((x1 - x0) || 1), sy = (y) => H - 20 - (H - 44) * (y - y0) / ((y1 - y0) || 1);
  const lines = series.map(([name, pts], i) => `<polyline fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="2"
      points="${pts.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" ")}"><title>${esc(name)}</title></polyline>${pts.length === 1  // one point (a run stopped at its first evaluation) draws no line: a dot
      ? `<circle cx="${sx(pts[0][0])}" cy="${sy(pts[0][1])}" r="3" fill="${COLORS[i % COLORS.length]}"></circle>` : ""}
      <text x="${W - 150}" y="${14 + 14 * i}" fill="${COLORS[i % COLORS.length]}" font-size="11">${esc(name)}</text>`).join("");
  return `<svg class="chart" width="${W}" height="${H}" role="img" aria-label="${esc(key)}"><text x="4" y="12" font-size="11">${esc(key)}</text>
    <text x="2" y="${sy(y1) + 4}" font-size="10">${fmt(y1)}</text><text x="2" y="${sy(y0)}" font-size="10">${fmt(y0)}</text>
    <text x="40" y="${H - 4}" font-size="10">step ${x0}</text><text x="${W - 60}" y="${H - 4}" font-size="10">step ${x1}</text>${lines}</svg>`;
}
let runCache = [];
async function refreshRuns() {
  const d = await api("/api/runs");
  runCache = d.runs;
  const keys = ["train/total_loss", "val_loss", "val_audio_accuracy", "eval/sim", "eval/wer"];
  $("runs").innerHTML = `<tr><th>compare</th><th>run</th><th>status</th><th>started</th>${keys.map((k) => `<th>${esc(k)}</th>`).join("")}<th>error</th></tr>` +
    d.runs.map((r) => `<tr><td><input type="checkbox" class="pick" value="${esc(r.run_id)}"></td><td>${esc(r.run_name)}</td><td>${esc(r.status)}</td>
      <td>${new Date(r.start_time).toLocaleString()}</td>${keys.map((k) => `<td>${fmt(r.metrics[k])}</td>`).join("")}<td class="error">${esc(r.error)}</td></tr>`).join("");
  $("runs").querySelectorAll("input.pick").forEach((c) => c.addEventListener("change", compare));
  const first = $("runs").querySelector("input.pick");
  if (first && !$("runs").querySelector("input.pick:checked")) { first.checked = true; compare(); }
}
let compareSeq = 0;
async function compare() {
  const seq = ++compareSeq;  // ticking two runs quickly: only the newest selection is drawn
  const ids = [...$("runs").querySelectorAll("input.pick:checked")].map((c) => c.value);
  const name = (id) => (runCache.find((r) => r.run_id === id) || {}).run_name || id;
  const metrics = await Promise.all(ids.map((id) => api(`/api/runs/${id}/metrics`)));
  const samples = await Promise.all(ids.map((id) => api(`/api/runs/${id}/samples`).catch(() => ({samples: []}))));
  if (seq !== compareSeq) return;
  const hist = Object.fromEntries(ids.map((id, i) => [name(id), metrics[i].history]));
  $("compare-chart").innerHTML = lossChart(hist) + lossChart(hist, "val_loss");
  // one table across the runs: a row per (run, checkpoint), so checkpoints of different runs rank side by side
  $("checkpoints").innerHTML = "<h3>Per checkpoint</h3><table class='grid' id='checkpoint-table'><tr><th>run</th><th>step</th>" +
    "<th>val_loss</th><th>accuracy</th><th>SIM</th><th>WER</th><th>quality</th></tr>" + ids.flatMap((id, i) => metrics[i].checkpoints.map((c) =>
      `<tr data-run="${esc(name(id))}"><td>${esc(name(id))}</td><td>${c.step}</td><td>${fmt(c.val_loss)}</td><td>${fmt(c.val_audio_accuracy)}</td>
      <td>${fmt(c["eval/sim"])}</td><td>${fmt(c["eval/wer"])}</td><td>${fmt(c["eval/dnsmos_ovrl"])}</td></tr>`)).join("") + "</table>";
  // validation rows: reference, target, then each run's sample per step, side by side
  const rows = {};
  ids.forEach((id, i) => samples[i].samples.forEach((s) => {
    const row = (rows[s.sample_id] = rows[s.sample_id] || {text: s.text, ref: s.reference_url, target: s.target_url, cells: []});
    row.cells.push(`<td class="sample" data-run="${esc(name(id))}">${esc(name(id))} step ${s.step}<br>${audio(s.url)}</td>`);
  }));
  $("samples").innerHTML = "<h3>Validation samples</h3>" + (Object.keys(rows).length ? `<table class="grid samples">` +
    Object.entries(rows).map(([sid, r]) => `<tr><td>${esc(sid)}<br><small>${esc(r.text)}</small></td><td>reference<br>${audio(r.ref)}</td>
      <td>target<br>${audio(r.target)}</td>${r.cells.join("")}</tr>`).join("") + "</table>"
    : "<p class='help'>No validation samples logged (train with num_validation_samples &gt; 0).</p>");
}

// ---------------------------------------------------------------- speak and export
async function adapterOptions() {
  const d = await api("/api/runs");
  return d.runs.filter((r) => r.status === "FINISHED" && r.output_dir)
    .map((r) => `<option value="run:${esc(r.run_id)}">${esc(r.run_name)} (adapter)</option>`).join("");
}
async function refreshSpeak() {
  await fillDatasetSelects();
  $("speak-adapter").innerHTML = (await adapterOptions()) + `<option value="">base model</option>`;
  await speakers();
}
async function speakers() {
  const ds = $("speak-dataset").value;
  if (!ds) { $("speak-speaker").innerHTML = ""; return; }
  const d = await api(`/api/datasets/clips?path=${encodeURIComponent("output:" + ds)}`);
  $("speak-speaker").innerHTML = d.speakers.map((s) => `<option>${esc(s)}</option>`).join("");
}
$("speak-dataset").addEventListener("change", speakers);
$("speak").addEventListener("click", async () => {
  const model = $("speak-adapter").value, ref = $("speak-ref").value.trim();
  const request = {text: $("speak-text").value};
  if (model.startsWith("run:")) request.run_id = model.slice(4);
  if (ref) { request.ref_audio = ref; request.ref_text = $("speak-ref-text").value; }
  else { request.speaker = $("speak-speaker").value; request.data = `output:${$("speak-dataset").value}`; }
  $("speak-result").innerHTML = "<span class='status'>generating...</span>";
  try {
    const r = await api("/api/speak", {json: request});
    const checks = r.problems.length ? `<div class="error">audio check: ${r.problems.map(esc).join("; ")}</div>` : `<div class="status">audio check: ok</div>`;
    $("speak-result").innerHTML = `<div>voice of ${esc(r.voice)}, ${fmt(r.seconds)} s ${audio(r.url)}
      <a id="speak-download" href="${esc(r.url)}" download>download</a></div>${checks}`;
  } catch (e) { $("speak-result").innerHTML = `<span class="error">${esc(e.message)}</span>`; }
});
async function refreshExport() {
  const d = await api("/api/runs");
  $("export-adapter").innerHTML = d.runs.filter((r) => r.status === "FINISHED" && r.output_dir).map((r) =>
    `<option value="${esc(r.output_dir)}">${esc(r.run_name)}</option>`).join("");
}
$("export").addEventListener("click", async () => {
  const dir = $("export-adapter").value, marker = "/";
  const run = runCache.find((r) => r.output_dir === dir) || {};
  try {
    const rel = dir.split(marker).pop();
    const job = await api("/api/export", {json: {adapter: `output:${rel}/adapter`, name: $("export-name").value || run.run_name || rel, merge: $("export-merge").checked}});
    watchJob(job.job_id, $("export-job"));
  } catch (e) { $("export-job").innerHTML = `<span class="error">${esc(e.message)}</span>`; }
});

// ---------------------------------------------------------------- start
(async () => {
  await loadSettings();
  await fillDatasetSelects();
  showTab(location.hash.slice(1) || "data");
  $("preset").addEventListener("change", () => { $("sweep-fields").hidden = !isSweep(); checkSettings(); });
})();
