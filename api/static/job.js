// One job's page: summary, drop reasons, clusters, kept images with a viewer, and the live log.
import {
  STEPS, activeSteps, api, clearError, el, formatElapsed, formatNumber, formatTime,
  poll, safeLink, setupAuth, showError, stageInfo, statusBadge, userText,
} from "/ui/common.js";

const jobId = new URLSearchParams(location.search).get("id") || decodeURIComponent(location.pathname.split("/").pop());
const base = `/api/jobs/${encodeURIComponent(jobId)}`;
let images = [];
let imagesLoadedFor = null;  // the status for which the grid was drawn
let lastJobKey = null;
let poller = null;
let reasons = {};  // code -> {stage, description}, from /api/reasons

// -- summary --------------------------------------------------------------------------------------

function fact(list, term, value) {
  list.append(el("dt", { text: term }), value instanceof Node ? el("dd", {}, value) : el("dd", { text: value }));
}

function renderSummary(job) {
  const title = document.getElementById("job-title");
  title.replaceChildren(userText("span", job.query));
  document.title = `${job.query} · CV Dataset Builder`;
  document.getElementById("job-status").replaceChildren(statusBadge(job.status));

  const info = stageInfo(job);
  const now = activeSteps(job);
  document.getElementById("steps").replaceChildren(...STEPS.map((name, i) => {
    let state = "todo";
    if (now.includes(i)) state = "active";
    else if (i < info.step || job.status === "done") state = "done";
    else if (i === info.step && (job.status === "failed" || job.status === "cancelled")) state = "stopped";
    return el("li", { class: `step step-${state}`, text: name, "aria-current": state === "active" ? "step" : undefined });
  }));
  document.getElementById("job-progress").textContent = info.label;
  const error = document.getElementById("job-error");
  error.hidden = !job.error;
  error.textContent = job.error || "";

  const facts = document.getElementById("job-facts");
  facts.replaceChildren();
  const p = job.progress || {};
  fact(facts, "Kept", `${job.count} of ${job.limit} asked`);
  if (!job.final || !job.stage_counts || job.stage_counts.candidates === undefined) {
    fact(facts, "Candidates", `${p.candidates} found · ${p.fetched} fetched · ${p.accepted} passed the checks`);
  } else {
    fact(facts, "Candidates", `${job.stage_counts.candidates} found · ${job.stage_counts.unique} usable after checks`);
  }
  fact(facts, "Output folder", job.output);
  fact(facts, "Source", job.source);
  fact(facts, "Selection", (job.result && job.result.select) || job.options.select || "query");
  const extra = Object.entries(job.options || {}).filter(([k]) => !["select", "urls"].includes(k));
  if (extra.length) fact(facts, "Options", extra.map(([k, v]) => `${k}=${v}`).join(", "));
  if (job.options && job.options.urls) fact(facts, "URLs given", String(job.options.urls.length));
  fact(facts, "Created", formatTime(job.created_at));
  fact(facts, "Finished", formatTime(job.finished_at));
  fact(facts, "Elapsed", formatElapsed(job.elapsed_s));
  fact(facts, "Job id", el("code", { text: job.id }));

  const actions = document.getElementById("job-actions");
  actions.replaceChildren();
  if (!job.final) {
    actions.append(el("button", {
      type: "button", class: "danger cancel", text: job.status === "cancelling" ? "Cancelling…" : "Cancel",
      disabled: job.status === "cancelling", onclick: () => act(`${base}/cancel`, "POST"),
    }));
  } else {
    actions.append(el("button", {
      type: "button", class: "danger-outline delete", text: "Delete",
      onclick: async () => {
        if (!confirm(`Delete this job and its dataset folder ${job.output}?`)) return;
        if (await act(base, "DELETE")) location.assign("/");
      },
    }));
  }
}

async function act(path, method) {
  try {
    await api(path, { method });
    clearError();
    poller.now();
    return true;
  } catch (err) {
    showError(err);
    return false;
  }
}

// -- drop reasons and clusters -------------------------------------------------------------------

function renderDrops(job) {
  const chart = document.getElementById("drop-chart");
  const empty = document.getElementById("drops-empty");
  const entries = Object.entries(job.drop_counts || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const max = Math.max(1, ...entries.map(([, n]) => n));
  chart.replaceChildren(...entries.map(([reason, n]) => {
    const fill = el("span", { class: "hbar-fill" });
    fill.style.width = `${(100 * n) / max}%`;
    const known = reasons[reason.startsWith("http_") ? "http_<status>" : reason];
    const meaning = known ? `${reason} (${known.stage}): ${known.description}` : reason;
    return el("li", { class: "hbar", dataset: { reason } },
      el("span", { class: "hbar-label", text: reason.replaceAll("_", " "), title: meaning }),
      el("span", { class: "hbar-track" }, fill),
      el("span", { class: "hbar-count", text: n }));
  }));
  const total = entries.reduce((sum, [, n]) => sum + n, 0);
  chart.setAttribute("aria-label", `${total} candidates dropped, by reason`);
  empty.hidden = entries.length > 0;
  empty.textContent = !job.final
    ? "Nothing dropped yet."
    : "Nothing was dropped.";

  const funnel = document.getElementById("funnel");
  const counts = job.stage_counts || {};
  const steps = [["candidates", "found"], ["downloaded", "downloaded"], ["passed_quality", "passed quality"],
    ["unique", "unique"], ["kept", "kept"]].filter(([key]) => typeof counts[key] === "number");
  funnel.replaceChildren(...steps.map(([key, label]) => el("span", { class: "funnel-step" },
    el("strong", { text: counts[key] }), ` ${label}`)));
}

function renderClusters(job) {
  const result = job.result || {};
  const clusters = Array.isArray(result.clusters) ? result.clusters : [];
  const reason = document.getElementById("selection-reason");
  reason.textContent = result.selection_reason
    ? `Kept cluster ${result.chosen_cluster} (${result.select === "largest" ? "largest" : "query match"}): ${result.selection_reason}`
    : "";
  const table = document.getElementById("cluster-table");
  table.hidden = clusters.length === 0;
  const maxSize = Math.max(1, ...clusters.map((c) => c.size || 0));
  table.tBodies[0].replaceChildren(...clusters.map((c) => {
    const chosen = c.id === result.chosen_cluster;
    const fill = el("span", { class: "hbar-fill" });
    fill.style.width = `${(100 * c.size) / maxSize}%`;
    return el("tr", { class: chosen ? "chosen" : "", dataset: { cluster: c.id } },
      el("td", { text: `#${c.id}` }),
      el("td", { class: "size" }, el("span", { class: "hbar-track small-track" }, fill), ` ${c.size}`),
      el("td", { class: "num", text: formatNumber(c.query_similarity) }),
      el("td", { class: "num", text: formatNumber(c.cohesion) }),
      el("td", { class: "num", text: formatNumber(c.score, 2) }),
      el("td", {}, chosen ? el("span", { class: "kept-tag", text: "kept" }) : ""));
  }));
  const empty = document.getElementById("clusters-empty");
  empty.hidden = clusters.length > 0;
  empty.textContent = !job.final
    ? "Clusters appear once the images are embedded and clustered."
    : "No clusters were found.";
}

// -- images ---------------------------------------------------------------------------------------

/** API image URLs are plain, or signed links when tokens protect the API: <img src> works for both. */
function showImage(img, url) {
  img.src = url;
}

async function loadImages(job) {
  const grid = document.getElementById("image-grid");
  const empty = document.getElementById("images-empty");
  const link = document.getElementById("archive-link");
  link.hidden = job.status !== "done";
  link.href = job.links.archive;
  link.setAttribute("download", `${job.output}.zip`);
  if (job.status !== "done") {
    images = [];
    grid.replaceChildren();
    empty.hidden = false;
    empty.textContent = !job.final
      ? "The kept images appear here when the job is done."
      : `No dataset: the job is ${job.status}.`;
    document.getElementById("images-count").textContent = "";
    return;
  }
  const data = await api(job.links.images);
  images = data.images;
  document.getElementById("images-count").textContent = `${data.count} image${data.count === 1 ? "" : "s"}`;
  empty.hidden = data.count > 0;
  empty.textContent = "No images were kept.";
  grid.replaceChildren(...images.map((image, index) => {
    const img = el("img", { alt: image.file, loading: "lazy", width: 160, height: 160 });
    showImage(img, image.url);
    const sim = image.manifest && typeof image.manifest.query_similarity === "number"
      ? ` · sim ${image.manifest.query_similarity.toFixed(2)}` : "";
    return el("button", { type: "button", class: "thumb", title: `${image.file}${sim}`, dataset: { index },
      onclick: () => openViewer(index) }, img, el("span", { class: "thumb-caption", text: `${image.file}${sim}` }));
  }));
}

// -- the viewer -----------------------------------------------------------------------------------

const viewer = document.getElementById("viewer");
let viewing = 0;

function openViewer(index) {
  viewing = (index + images.length) % images.length;
  const image = images[viewing];
  const m = image.manifest || {};
  document.getElementById("viewer-title").textContent = `${image.file} (${viewing + 1} of ${images.length})`;
  const img = document.getElementById("viewer-img");
  img.alt = m.title ? `${image.file}: ${m.title}` : image.file;
  img.removeAttribute("src");
  showImage(img, image.url);
  const facts = document.getElementById("viewer-facts");
  facts.replaceChildren();
  fact(facts, "Query similarity", formatNumber(m.query_similarity));
  fact(facts, "Cluster", m.cluster ?? "—");
  fact(facts, "Size", m.width && m.height ? `${m.width} × ${m.height} px` : "—");
  if (m.title) fact(facts, "Title", userText("span", m.title));
  fact(facts, "Image URL", safeLink(m.url));
  fact(facts, "Found on", safeLink(m.source_page));
  fact(facts, "Source", [m.source, m.source_format].filter(Boolean).join(" · ") || "—");
  if (m.rank !== undefined) fact(facts, "Search rank", m.rank);
  for (const [name, value] of Object.entries(m.scores || {})) fact(facts, name.replaceAll("_", " "), formatNumber(value));
  if (m.sha256) fact(facts, "SHA-256", el("code", { class: "hash", text: m.sha256 }));
  if (!viewer.open) viewer.showModal();
}

document.getElementById("viewer-close").addEventListener("click", () => viewer.close());
document.getElementById("viewer-prev").addEventListener("click", () => openViewer(viewing - 1));
document.getElementById("viewer-next").addEventListener("click", () => openViewer(viewing + 1));
viewer.addEventListener("click", (event) => { if (event.target === viewer) viewer.close(); });
viewer.addEventListener("keydown", (event) => {
  if (event.key === "ArrowLeft") openViewer(viewing - 1);
  if (event.key === "ArrowRight") openViewer(viewing + 1);
});

// -- log ------------------------------------------------------------------------------------------

async function refreshLog(job) {
  const data = await api(job.links.log);
  const pre = document.getElementById("log-text");
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 30;
  if (pre.textContent !== data.log) {
    pre.textContent = data.log || "(empty)";
    pre.lang = /[\uac00-\ud7af]/.test(data.log) ? "ko" : "";
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }
  document.getElementById("log-state").textContent = !job.final
    ? `${data.lines.length} lines · live` : `${data.lines.length} lines`;
}

// -- polling --------------------------------------------------------------------------------------

async function loadReasons() {
  if (Object.keys(reasons).length) return;
  try {
    reasons = (await api("/api/reasons")).reasons || {};
  } catch {
    reasons = {};  // the chart still shows the codes
  }
}

async function refresh() {
  try {
    await loadReasons();
    const job = await api(base);
    const key = JSON.stringify(job);
    if (key !== lastJobKey) {
      lastJobKey = key;
      renderSummary(job);
      renderDrops(job);
      renderClusters(job);
    }
    if (imagesLoadedFor !== job.status) {
      await loadImages(job);
      imagesLoadedFor = job.status;
    }
    await refreshLog(job);
    clearError("poll");
    document.body.dataset.loaded = "true";
    if (location.hash === "#log" && !refresh.scrolled) {
      refresh.scrolled = true;
      document.getElementById("log").scrollIntoView();
    }
    const active = !job.final;
    if (!active) poller.stop();  // a finished job does not change any more
    return active;
  } catch (err) {
    if (err.status === 404) {
      document.getElementById("job-title").textContent = "Job not found";
      poller.stop();
    }
    showError(err, "poll");
    throw err;
  }
}

setupAuth(() => { lastJobKey = null; imagesLoadedFor = null; poller.stop(); poller = poll(refresh); });
poller = poll(refresh);
