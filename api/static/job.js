// One job's page: summary, classes, drop reasons, clusters, kept images with a filter and a viewer,
// and the live log.
import {
  STEPS, activeSteps, api, clearError, describe, el, formatElapsed, formatNumber, formatTime,
  poll, safeLink, setupAuth, showError, stageInfo, statusBadge, userText,
} from "/ui/common.js";

const jobId = new URLSearchParams(location.search).get("id") || decodeURIComponent(location.pathname.split("/").pop());
const base = `/api/jobs/${encodeURIComponent(jobId)}`;
let images = [];
let imagesLoadedFor = null;  // the status for which the grid was drawn
let lastJobKey = null;
let poller = null;
let reasons = {};  // code -> {stage, description}, from /api/reasons
let polls = 0;  // successful refreshes, shown as <body data-polls> (the tests count redraws with it)

const SPLITS = ["train", "val", "test"];
// What the image grid shows: null means every class / every split. Kept across redraws.
const filter = { label: null, split: null };
let filterKey = null;  // the classes and splits the filter buttons were drawn for
let gridReady = false;  // the grid holds the done job's images

const SEARCH_TOP = 24;  // hits asked for per search
const PICTURE_BYTES = 5 * 1024 * 1024;  // the API's limit on a picture to search by
// The search shown instead of the grid: {what, picture, hits} or null. Kept across redraws: only a new search
// or "Clear" changes it.
let search = null;
let searchSeq = 0;  // the latest search sent; an older answer that comes later is ignored

// -- classes and splits ---------------------------------------------------------------------------

/** The dataset's shape: the result's once done, else what was asked for (null for a plain job). */
function datasetOf(job) {
  return (job.result && job.result.dataset) || (job.options && job.options.dataset) || null;
}

/** The split names the job has (those with a fraction above 0), [] without a split. */
function splitNames(job) {
  const dataset = datasetOf(job);
  const fractions = dataset && Array.isArray(dataset.split) ? dataset.split : [];
  return SPLITS.filter((name, i) => i < fractions.length && fractions[i] > 0);
}

/** The example pictures and negative prompts the job was given (the request's: the result does not repeat them). */
function steeringOf(job) {
  const asked = (job.options && job.options.dataset) || {};
  const list = (value) => (Array.isArray(value) ? value.filter((v) => typeof v === "string" && v) : []);
  return { like: list(asked.like), exclude: list(asked.exclude) };
}

function labelsOf(job) {
  return Array.isArray(job.queries) && job.queries.length ? job.queries : [job.query];
}

/** Several classes or a split: the page shows the class cards and the image filter. */
function hasClasses(job) {
  return labelsOf(job).length > 1 || splitNames(job).length > 0;
}

function imageLabel(image) {
  return image.label ?? (image.manifest && image.manifest.label) ?? null;
}

function imageSplit(image) {
  return image.split ?? (image.manifest && image.manifest.split) ?? null;
}

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
  const warnings = (job.result && Array.isArray(job.result.warnings)) ? job.result.warnings : [];
  const warningList = document.getElementById("job-warnings");
  warningList.hidden = warnings.length === 0;
  warningList.replaceChildren(...warnings.map((text) => userText("li", text)));

  const facts = document.getElementById("job-facts");
  facts.replaceChildren();
  const p = job.progress || {};
  const classCount = labelsOf(job).length;
  fact(facts, "Kept", classCount > 1
    ? `${job.count} (${job.limit} asked for each of ${classCount} classes)` : `${job.count} of ${job.limit} asked`);
  if (!job.final || !job.stage_counts || job.stage_counts.candidates === undefined) {
    fact(facts, "Candidates", `${p.candidates} found · ${p.fetched} fetched · ${p.accepted} passed the checks`);
  } else {
    fact(facts, "Candidates", `${job.stage_counts.candidates} found · ${job.stage_counts.unique} usable after checks`);
  }
  fact(facts, "Output folder", job.output);
  fact(facts, "Source", job.source);
  fact(facts, "Selection", (job.result && job.result.select) || job.options.select || "query");
  const extra = Object.entries(job.options || {}).filter(([k]) => !["select", "urls", "dataset"].includes(k));
  if (extra.length) fact(facts, "Options", extra.map(([k, v]) => `${k}=${v}`).join(", "));
  const dataset = datasetOf(job);
  if (dataset) {
    const labels = labelsOf(job);
    if (labels.length > 1) fact(facts, "Classes", String(labels.length));
    const names = splitNames(job);
    if (names.length) {
      fact(facts, "Split", `${names.map((name) => `${name} ${dataset.split[SPLITS.indexOf(name)]}`).join(" · ")}`
        + ` (seed ${dataset.seed ?? 0})`);
    }
    if (dataset.balance) fact(facts, "Balance", "every class cut to the smallest class's count");
    if (dataset.format && dataset.format !== "imagefolder") fact(facts, "Format", dataset.format);
  }
  const steering = steeringOf(job);
  if (steering.like.length) {
    fact(facts, "Example pictures", el("ul", { class: "fact-list example-links" },
      ...steering.like.map((url) => el("li", {}, safeLink(url)))));
  }
  if (steering.exclude.length) {
    fact(facts, "Exclude", el("span", { class: "fact-chips" },
      ...steering.exclude.map((text) => userText("span", text, { class: "tag tag-exclude" }))));
  }
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

function renderClasses(job) {
  const section = document.getElementById("classes");
  section.hidden = !hasClasses(job);
  if (section.hidden) return;
  const live = new Map((job.classes || []).map((c) => [c.label, c]));
  const done = new Map(((job.result && job.result.classes) || []).map((c) => [c.label, c]));
  const names = splitNames(job);
  const labels = labelsOf(job);
  document.getElementById("classes-note").textContent = labels.length > 1
    ? `${labels.length} classes, ${job.limit} images asked for each` : "";
  document.getElementById("class-cards").replaceChildren(...labels.map((label) => {
    const now = live.get(label) || {};
    const result = done.get(label);
    const kept = now.kept ?? (result && result.counts ? result.counts.kept : 0);
    const card = el("article", { class: "class-card", dataset: { label, kept } },
      userText("h3", label, { class: "class-label" }),
      el("p", { class: "class-kept" }, el("strong", { class: "class-count", text: kept }), ` kept of ${job.limit}`));
    if (!job.final) {
      card.append(el("p", { class: "class-progress small muted",
        text: `${now.accepted ?? 0} / ${now.candidates ?? 0} candidates passed the checks` }));
    } else if (result && result.counts) {
      card.append(el("p", { class: "class-progress small muted",
        text: `${result.counts.candidates ?? "—"} found · ${result.counts.unique ?? "—"} usable` }));
    }
    if (result && names.length) {
      const splits = result.splits || {};
      card.append(el("p", { class: "class-splits" }, ...names.map((name) =>
        el("span", { class: "split-count", dataset: { split: name } }, `${name} `,
          el("strong", { text: splits[name] ?? 0 })))));
    }
    if (result && result.selection_reason) {
      const cluster = result.chosen_cluster === null || result.chosen_cluster === undefined
        ? "No cluster kept" : `Kept cluster #${result.chosen_cluster}`;
      card.append(userText("p", `${cluster}: ${result.selection_reason}`, { class: "class-reason small muted" }));
    }
    return card;
  }));
}

function renderClusters(job) {
  const result = job.result || {};
  const perClass = Array.isArray(result.classes) && result.classes.length > 1 ? result.classes : null;
  // Several classes: one cluster kept per class, each class's clusters listed under its label.
  const clusters = perClass
    ? perClass.flatMap((k) => (k.clusters || []).map((c) => ({
      ...c, label: k.label, chosen: c.id === k.chosen_cluster })))
    : (Array.isArray(result.clusters) ? result.clusters : []).map((c) => ({
      ...c, chosen: c.id === result.chosen_cluster }));
  const reason = document.getElementById("selection-reason");
  if (perClass) {
    reason.textContent = `One cluster kept per class (${result.select === "largest" ? "largest" : "query match"}); `
      + "each class card says why.";
  } else {
    reason.textContent = result.selection_reason
      ? `Kept cluster ${result.chosen_cluster} (${result.select === "largest" ? "largest" : "query match"}): ${result.selection_reason}`
      : "";
  }
  const table = document.getElementById("cluster-table");
  table.hidden = clusters.length === 0;
  // Example similarity: a column only when the job had example pictures to compare with.
  const withLike = clusters.some((c) => typeof c.like_similarity === "number");
  document.getElementById("like-column").hidden = !withLike;
  const maxSize = Math.max(1, ...clusters.map((c) => c.size || 0));
  table.tBodies[0].replaceChildren(...clusters.map((c) => {
    const chosen = c.chosen;
    const fill = el("span", { class: "hbar-fill" });
    fill.style.width = `${(100 * c.size) / maxSize}%`;
    const labelled = c.label !== undefined;
    const attrs = labelled ? { cluster: c.id, label: c.label } : { cluster: c.id };
    const excluded = typeof c.excluded_by === "string" && c.excluded_by !== "";
    if (excluded) attrs.excludedBy = c.excluded_by;
    // A group the negative prompt dropped says so under its number, where it is seen without scrolling.
    const mark = excluded ? userText("span", `excluded: matches '${c.excluded_by}'`, {
      class: "excluded-tag",
      title: `This group matches the negative prompt '${c.excluded_by}' better than the query.`,
    }) : null;
    const rowClass = [chosen ? "chosen" : "", excluded ? "excluded" : ""].filter(Boolean).join(" ");
    return el("tr", { class: rowClass, dataset: attrs },
      labelled
        ? el("td", { class: "cluster-id" }, userText("span", c.label, { class: "cluster-class" }), `#${c.id}`, mark)
        : el("td", { class: "cluster-id" }, `#${c.id}`, mark),
      el("td", { class: "size" }, el("span", { class: "hbar-track small-track" }, fill), ` ${c.size}`),
      el("td", { class: "num", text: formatNumber(c.query_similarity) }),
      withLike ? el("td", { class: "num like", text: formatNumber(c.like_similarity) }) : null,
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
    gridReady = false;
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
  gridReady = true;
  grid.replaceChildren(...images.map((image, index) => {
    const img = el("img", { alt: image.file, loading: "lazy", width: 160, height: 160 });
    showImage(img, image.url);
    const sim = image.manifest && typeof image.manifest.query_similarity === "number"
      ? ` · sim ${image.manifest.query_similarity.toFixed(2)}` : "";
    const label = imageLabel(image);
    const split = imageSplit(image);
    const tags = [label === null ? null : `class ${label}`, split === null ? null : `split ${split}`].filter(Boolean);
    const attrs = { index };
    if (label !== null) attrs.label = label;
    if (split !== null) attrs.split = split;
    const title = [`${image.file}${sim}`, ...tags].join("\n");
    return el("button", { type: "button", class: "thumb", title, dataset: attrs, onclick: () => openViewer(index) }, img,
      tags.length ? el("span", { class: "thumb-tags" },
        label === null ? null : userText("span", label, { class: "tag tag-class" }),
        split === null ? null : el("span", { class: `tag tag-split tag-${split}`, text: split })) : null,
      el("span", { class: "thumb-caption", text: `${image.file}${sim}` }));
  }));
  applyFilter();
}

// -- the image filter -----------------------------------------------------------------------------

function matches(image) {
  return (filter.label === null || imageLabel(image) === filter.label)
    && (filter.split === null || imageSplit(image) === filter.split);
}

/** Indexes (into `images`) of the images the filter lets through, in grid order. */
function shownIndexes() {
  return images.flatMap((image, index) => (matches(image) ? [index] : []));
}

/** Hide the tiles the filter leaves out; the grid itself is never redrawn for it. */
function applyFilter() {
  const grid = document.getElementById("image-grid");
  let shown = 0;
  for (const tile of grid.children) {
    const visible = matches(images[Number(tile.dataset.index)]);
    tile.hidden = !visible;
    if (visible) shown += 1;
  }
  if (gridReady) {  // before the job is done, loadImages wrote what the grid's place says
    const total = images.length;
    const filtered = filter.label !== null || filter.split !== null;
    document.getElementById("images-count").textContent = filtered
      ? `${shown} of ${total} image${total === 1 ? "" : "s"}`
      : `${total} image${total === 1 ? "" : "s"}`;
    const empty = document.getElementById("images-empty");
    empty.hidden = shown > 0;
    empty.textContent = total === 0 ? "No images were kept." : "No kept image matches this filter.";
  }
  for (const button of document.querySelectorAll("#image-filter button[data-kind]")) {
    const value = button.dataset.value === undefined ? null : button.dataset.value;
    button.setAttribute("aria-pressed", String(filter[button.dataset.kind] === value));
  }
}

function filterButton(kind, value, text) {
  const props = { type: "button", class: "chip", dataset: value === null ? { kind } : { kind, value },
    "aria-pressed": String(filter[kind] === value), onclick: () => { filter[kind] = value; applyFilter(); } };
  return kind === "label" && value !== null ? userText("button", text, props) : el("button", { ...props, text });
}

/** Draw the filter buttons once per set of classes and splits: a redraw of the page keeps the same
 * buttons (and the choice), so a click that lands while the page is redrawn is not lost. */
function renderFilter(job) {
  const box = document.getElementById("image-filter");
  const labels = hasClasses(job) ? labelsOf(job) : [];
  const names = hasClasses(job) ? splitNames(job) : [];
  const key = JSON.stringify([labels, names]);
  if (key === filterKey) return;
  filterKey = key;
  if (!labels.includes(filter.label)) filter.label = null;
  if (!names.includes(filter.split)) filter.split = null;
  box.hidden = labels.length <= 1 && names.length === 0;
  document.getElementById("filter-class-group").hidden = labels.length <= 1;
  document.getElementById("filter-classes").replaceChildren(
    filterButton("label", null, "All"), ...labels.map((label) => filterButton("label", label, label)));
  document.getElementById("filter-split-group").hidden = names.length === 0;
  document.getElementById("filter-splits").replaceChildren(
    filterButton("split", null, "All"), ...names.map((name) => filterButton("split", name, name)));
  applyFilter();
}

// -- search ---------------------------------------------------------------------------------------

const searchForm = document.getElementById("search-form");
const searchText = document.getElementById("search-text");
const searchButton = document.getElementById("search-submit");
const searchPicture = document.getElementById("search-picture");
let searchBusy = false;

function setSearchMessage(text, kind = "") {
  const message = document.getElementById("search-message");
  message.textContent = text;
  message.className = kind ? `search-message search-${kind}` : "search-message";
}

function setSearchBusy(busy) {
  searchBusy = busy;
  searchForm.setAttribute("aria-busy", String(busy));
  searchButton.disabled = busy;
  searchPicture.disabled = busy;
  searchButton.textContent = busy ? "Searching…" : "Search";
}

/** The search panel is there once the job is done; a job that is not (any more) drops its results. */
function syncSearchPanel(job) {
  const done = job.status === "done";
  searchForm.hidden = !done;
  if (!done && (search !== null || searchBusy)) {
    search = null;
    searchSeq += 1;
    setSearchBusy(false);
    setSearchMessage("");
    renderSearch();
  }
}

function indexOfFile(file) {
  return images.findIndex((image) => image.file === file);
}

/** One ranked hit: its picture, its score, and its class and split when the dataset has them. */
function hitTile(hit, rank) {
  const label = hit.label ?? null;
  const split = hit.split ?? null;
  const score = typeof hit.score === "number" ? hit.score.toFixed(3) : "—";
  let picture;
  if (hit.url) {
    picture = el("img", { alt: hit.file, loading: "lazy", width: 160, height: 160 });
    showImage(picture, hit.url);
  } else {
    picture = el("span", { class: "thumb-missing", text: "no picture" });
  }
  const tags = [label === null ? null : `class ${label}`, split === null ? null : `split ${split}`].filter(Boolean);
  return el("button", {
    type: "button", class: "thumb hit", title: [`#${rank + 1} ${hit.file} · score ${score}`, ...tags].join("\n"),
    dataset: { file: hit.file, rank: rank + 1, score },
    onclick: () => { const index = indexOfFile(hit.file); if (index >= 0) openViewer(index); },
  }, picture,
  tags.length ? el("span", { class: "thumb-tags" },
    label === null ? null : userText("span", label, { class: "tag tag-class" }),
    split === null ? null : el("span", { class: `tag tag-split tag-${split}`, text: split })) : null,
  el("span", { class: "thumb-caption" }, el("strong", { class: "hit-score", text: score }), ` ${hit.file}`));
}

/** Show the search's hits instead of the grid, or (search null) the grid again with its filter. The grid
 * itself is left alone underneath, so a redraw of the page while the hits are shown does not lose them. */
function renderSearch() {
  document.getElementById("images").classList.toggle("searching", search !== null);
  document.getElementById("search-head").hidden = search === null;
  const results = document.getElementById("search-results");
  results.hidden = search === null;
  if (search === null) {
    results.replaceChildren();
    document.getElementById("search-title").replaceChildren();
    applyFilter();
    return;
  }
  const n = search.hits.length;
  document.getElementById("search-title").replaceChildren(
    `Results for ${search.picture ? "the picture " : ""}`,
    userText("span", `'${search.what}'`, { class: "search-what" }), ` (${n})`);
  results.dataset.top = String(SEARCH_TOP);
  results.replaceChildren(...search.hits.map(hitTile));
  if (n === 0) results.append(el("p", { class: "empty muted", text: "Nothing in this dataset matches." }));
}

/** Send one search; only the latest one's answer is shown. */
async function runSearch(what, picture, request) {
  const seq = ++searchSeq;
  setSearchBusy(true);
  setSearchMessage("Searching…", "busy");
  try {
    const data = await request();
    if (seq !== searchSeq) return;
    search = { what, picture, hits: Array.isArray(data && data.hits) ? data.hits : [] };
    setSearchMessage("");
    renderSearch();
  } catch (err) {
    if (seq !== searchSeq) return;
    setSearchMessage(describe(err), "error");
  } finally {
    if (seq === searchSeq) setSearchBusy(false);
  }
}

function searchByText(event) {
  event.preventDefault();
  if (searchBusy) return;
  const q = searchText.value.trim();
  if (!q) {
    setSearchMessage("Type what to look for, e.g. an object or a color.", "error");
    searchText.focus();
    return;
  }
  runSearch(q, false, () => api(`${base}/search?q=${encodeURIComponent(q)}&top=${SEARCH_TOP}`));
}

function searchByPicture() {
  const file = searchPicture.files && searchPicture.files[0];
  searchPicture.value = "";  // the same file can be chosen again
  if (!file || searchBusy) return;
  if (file.size > PICTURE_BYTES) {
    const bytes = new Intl.NumberFormat("en").format(file.size);
    setSearchMessage(`“${file.name}” is too large (${bytes} bytes): a picture to search by can be at most 5 MiB.`,
      "error");
    return;
  }
  if (!file.type.startsWith("image/")) {
    setSearchMessage(`“${file.name}” is not a picture; choose a JPEG, PNG or WebP file.`, "error");
    return;
  }
  runSearch(file.name, true, () => api(`${base}/search?top=${SEARCH_TOP}`, { method: "POST", raw: file }));
}

function clearSearch() {
  search = null;
  searchSeq += 1;  // an answer still on its way is not shown
  setSearchBusy(false);
  setSearchMessage("");
  renderSearch();
  searchText.focus();
}

searchForm.addEventListener("submit", searchByText);
searchPicture.addEventListener("change", searchByPicture);
document.getElementById("search-clear").addEventListener("click", clearSearch);

// -- the viewer -----------------------------------------------------------------------------------

const viewer = document.getElementById("viewer");
let viewing = 0;

/** The images the viewer steps through: the search's hits in rank order, else those the filter shows. */
function viewerOrder() {
  if (search !== null) return search.hits.map((hit) => indexOfFile(hit.file)).filter((index) => index >= 0);
  return shownIndexes();
}

/** Show images[index]; the viewer steps through the images the grid (or the search) shows. */
function openViewer(index) {
  viewing = index;
  const shown = viewerOrder();
  const position = shown.indexOf(index);
  const image = images[viewing];
  const m = image.manifest || {};
  document.getElementById("viewer-title").textContent = position >= 0
    ? `${image.file} (${position + 1} of ${shown.length})` : image.file;
  const img = document.getElementById("viewer-img");
  img.alt = m.title ? `${image.file}: ${m.title}` : image.file;
  img.removeAttribute("src");
  showImage(img, image.url);
  const facts = document.getElementById("viewer-facts");
  facts.replaceChildren();
  const label = imageLabel(image);
  const split = imageSplit(image);
  if (label !== null) fact(facts, "Class", userText("span", label));
  if (split !== null) fact(facts, "Split", split);
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

/** The next (step 1) or previous (step -1) image the grid (or the search) shows. */
function step(by) {
  const shown = viewerOrder();
  if (!shown.length) return;
  const position = shown.indexOf(viewing);
  const next = position < 0 ? (by > 0 ? 0 : shown.length - 1) : (position + by + shown.length) % shown.length;
  openViewer(shown[next]);
}

document.getElementById("viewer-close").addEventListener("click", () => viewer.close());
document.getElementById("viewer-prev").addEventListener("click", () => step(-1));
document.getElementById("viewer-next").addEventListener("click", () => step(1));
viewer.addEventListener("click", (event) => { if (event.target === viewer) viewer.close(); });
viewer.addEventListener("keydown", (event) => {
  if (event.key === "ArrowLeft") step(-1);
  if (event.key === "ArrowRight") step(1);
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
      renderClasses(job);
      renderDrops(job);
      renderClusters(job);
    }
    renderFilter(job);
    if (imagesLoadedFor !== job.status) {
      await loadImages(job);
      imagesLoadedFor = job.status;
    }
    syncSearchPanel(job);
    await refreshLog(job);
    clearError("poll");
    document.body.dataset.loaded = "true";
    polls += 1;
    document.body.dataset.polls = String(polls);
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
