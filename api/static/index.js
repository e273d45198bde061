// The start page: the job form and the live job history.
import {
  ApiError, api, clearError, el, formatElapsed, formatTime, poll, setupAuth, showError,
  stageInfo, statusBadge, userText,
} from "/ui/common.js";

const PER_PAGE = 20;
const form = document.getElementById("job-form");
const tbody = document.querySelector("#jobs tbody");
let page = 1;
let poller = null;

// -- the form -------------------------------------------------------------------------------------

function fieldErrors() {
  return form.querySelectorAll(".field-error");
}

function clearFieldErrors() {
  for (const p of fieldErrors()) p.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

/** Put a message under its field; false when the page has no such field. */
function setFieldError(field, message) {
  const name = String(field || "").split(".")[0];
  const slot = document.getElementById(`err-${name}`);
  if (!slot) return false;
  slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
  const input = form.elements.namedItem(name);
  if (input) input.setAttribute("aria-invalid", "true");
  const details = slot.closest("details");
  if (details) details.open = true;
  return true;
}

/** "0.8,0.1,0.1" (commas, semicolons or spaces between) -> [0.8, 0.1, 0.1]; null if it is not 2 or 3 numbers. */
function parseSplit(text) {
  const parts = text.split(/[\s,;]+/).filter(Boolean);
  if (parts.length < 2 || parts.length > 3) return null;
  const numbers = parts.map((part) => (/^[+]?(\d+\.?\d*|\.\d+)$/.test(part) ? Number(part) : NaN));
  return numbers.every(Number.isFinite) ? numbers : null;
}

/** The URL list: one URL a line (or several split by spaces), or label<TAB>URL to give it to one class. */
function readUrls(text) {
  return text.split(/\r?\n/).flatMap((line) => {
    const tab = line.lastIndexOf("\t");
    const label = tab > 0 ? line.slice(0, tab).trim() : "";
    if (label && !/^https?:\/\//i.test(label)) return [`${label}\t${line.slice(tab + 1).trim()}`];
    return line.split(/\s+/);
  }).filter(Boolean);
}

const MAX_EXAMPLES = 8;

/** One entry a line, spaces around each trimmed, blank lines dropped. */
function readLines(text) {
  return text.split(/\r?\n/).map((line) => line.trim()).filter(Boolean);
}

/** The example pictures: http(s) URLs, one a line; a problem sentence for the first bad line or too many. */
function readExamples(text) {
  const lines = text.split(/\r?\n/);
  const urls = [];
  for (const [i, raw] of lines.entries()) {
    const line = raw.trim();
    if (!line) continue;
    if (!/^https?:\/\/\S+$/i.test(line)) {
      const shown = line.length > 60 ? `${line.slice(0, 60)}…` : line;
      return { urls, problem: `Line ${i + 1} is not an http(s) URL: “${shown}”. Give one picture address a line.` };
    }
    urls.push(line);
  }
  if (urls.length > MAX_EXAMPLES) {
    return { urls, problem: `At most ${MAX_EXAMPLES} example pictures; ${urls.length} are given.` };
  }
  return { urls, problem: null };
}

/** The request body from the form: only the fields the user filled in. */
function readForm() {
  const body = {};
  const problems = [];
  for (const input of form.querySelectorAll("input[name], select[name], textarea[name]")) {
    if (input.closest("[hidden]")) continue;
    const name = input.name;
    if (input.type === "number") {
      if (input.validity.badInput) { problems.push([name, "enter a number"]); continue; }
      if (input.value.trim() === "") continue;
      body[name] = Number(input.value);
    } else if (input.type === "checkbox") {
      if (input.checked) body[name] = true;
    } else if (name === "queries") {
      // More classes: the query above is the first class, then one class a line.
      const more = readLines(input.value);
      if (more.length) body.queries = more;
    } else if (name === "split") {
      if (input.value.trim() === "") continue;
      const split = parseSplit(input.value);
      if (split) body.split = split;
      else problems.push([name, "Write 2 or 3 fractions separated by commas (train, val, test), e.g. 0.8,0.1,0.1."]);
    } else if (name === "like") {
      const { urls, problem } = readExamples(input.value);
      if (problem) problems.push([name, problem]);
      else if (urls.length) body.like = urls;
    } else if (name === "exclude") {
      const prompts = readLines(input.value);
      if (prompts.length) body.exclude = prompts;
    } else if (name === "urls") {
      body.urls = readUrls(input.value);
    } else if (name === "output") {
      if (input.value.trim()) body.output = input.value.trim();
    } else {
      body[name] = input.value;
    }
  }
  if (body.queries) {
    body.queries = [String(body.query || "").trim(), ...body.queries].filter(Boolean);
    delete body.query;
  }
  return { body, problems };
}

async function submitJob(event) {
  event.preventDefault();
  clearFieldErrors();
  const message = document.getElementById("form-message");
  message.textContent = "";
  message.className = "form-message";
  const { body, problems } = readForm();
  if (problems.length) {
    for (const [field, text] of problems) setFieldError(field, text);
    return;
  }
  const button = document.getElementById("start");
  button.disabled = true;
  try {
    const created = await api("/api/jobs", { method: "POST", body });
    clearError();
    message.className = "form-message ok";
    message.replaceChildren("Started. ", el("a", { href: `/jobs/${created.id}`, text: "Open the job page" }));
    form.elements.namedItem("output").value = "";
    page = 1;
    poller.now();
  } catch (err) {
    showFormError(err);
  } finally {
    button.disabled = false;
  }
}

function showFormError(err) {
  if (err instanceof ApiError && err.status === 422 && Array.isArray(err.detail)) {
    const general = err.detail.filter((d) => !setFieldError(d.field, d.message));
    const count = err.detail.length;
    showError(general.length
      ? `The server refused the job: ${general.map((d) => d.message).join("; ")}`
      : `The server refused the job: ${count} field${count > 1 ? "s" : ""} to fix (see below each).`);
  } else if (err instanceof ApiError && err.status === 409) {
    setFieldError("output", String(err.detail));
    showError(err);
  } else {
    showError(err);
  }
}

function syncUrlsField() {
  document.getElementById("urls-field").hidden = form.elements.namedItem("source").value !== "urls";
}

// -- the history ----------------------------------------------------------------------------------

function progressCell(job) {
  const info = stageInfo(job);
  const bar = el("span", { class: "bar-fill" });
  bar.style.width = `${Math.round(info.fraction * 100)}%`;
  const cell = el("td", { class: "progress", dataset: { label: "Progress" } },
    el("span", { class: `bar bar-${job.status}`, role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-valuenow": Math.round(info.fraction * 100) }, bar),
    el("span", { class: "progress-text", text: info.label }));
  if (job.error) cell.append(el("span", { class: "job-error", text: job.error }));
  return cell;
}

function actionsCell(job) {
  const cell = el("div", { class: "actions" },
    el("a", { class: "button secondary", href: `/jobs/${job.id}`, text: "View" }),
    el("a", { class: "button secondary", href: `/jobs/${job.id}#log`, text: "Log" }));
  if (!job.final) {
    cell.append(el("button", {
      type: "button", class: "danger cancel", text: job.status === "cancelling" ? "Cancelling…" : "Cancel",
      disabled: job.status === "cancelling", onclick: () => act(`/api/jobs/${job.id}/cancel`, "POST"),
    }));
  } else {
    cell.append(el("button", {
      type: "button", class: "danger-outline delete", text: "Delete",
      onclick: () => {
        if (confirm(`Delete the job "${job.query}" and its dataset folder ${job.output}?`)) {
          act(`/api/jobs/${job.id}`, "DELETE");
        }
      },
    }));
  }
  return el("td", { class: "actions-cell", dataset: { label: "", key: actionsKey(job) } }, cell);
}

// What the buttons depend on: a redraw that leaves it unchanged keeps the old buttons, so a click
// that lands while the row is redrawn (elapsed time ticks every poll) is not lost.
function actionsKey(job) {
  return JSON.stringify([job.final, job.status === "cancelling", job.query, job.output]);
}

/** "12 / 50"; with several classes the limit is per class: "40 / 3 × 20". */
function keptText(job) {
  const classes = Array.isArray(job.queries) ? job.queries.length : 1;
  return classes > 1 ? `${job.count} / ${classes} × ${job.limit}` : `${job.count} / ${job.limit}`;
}

function jobRow(job) {
  const row = el("tr", { dataset: { id: job.id, status: job.status } },
    el("td", { class: "query", dataset: { label: "Query" } },
      el("a", { href: `/jobs/${job.id}` }, userText("span", job.query)),
      el("span", { class: "muted small block", text: `${job.output} · ${job.source}` })),
    el("td", { dataset: { label: "Status" } }, statusBadge(job.status)),
    progressCell(job),
    el("td", { class: "num kept", dataset: { label: "Kept" }, text: keptText(job) }),
    el("td", { class: "num", dataset: { label: "Elapsed" }, text: formatElapsed(job.elapsed_s) }),
    el("td", { class: "small", dataset: { label: "Created" }, text: formatTime(job.created_at) }),
    actionsCell(job));
  return row;
}

const rendered = new Map();  // job id -> [JSON of the job as drawn, its row]

function renderJobs(data) {
  const seen = new Set();
  let previous = null;
  for (const job of data.jobs) {
    seen.add(job.id);
    const key = JSON.stringify(job);
    let entry = rendered.get(job.id);
    if (!entry || entry[0] !== key) {
      const row = jobRow(job);
      if (entry) {
        const [kept, fresh] = [entry[1], row].map((r) => r.querySelector(".actions-cell"));
        if (kept.dataset.key === fresh.dataset.key) fresh.replaceWith(kept);
        entry[1].replaceWith(row);
      }
      entry = [key, row];
      rendered.set(job.id, entry);
    }
    const row = entry[1];
    const expected = previous ? previous.nextSibling : tbody.firstChild;
    if (row !== expected) tbody.insertBefore(row, expected);
    previous = row;
  }
  for (const [id, [, row]] of rendered) {
    if (!seen.has(id)) { row.remove(); rendered.delete(id); }
  }
  document.getElementById("jobs-empty").hidden = data.total > 0;
  document.getElementById("jobs").hidden = data.jobs.length === 0;
  document.getElementById("history-total").textContent = data.total ? `${data.total} job${data.total > 1 ? "s" : ""}` : "";
  const pages = Math.max(1, Math.ceil(data.total / PER_PAGE));
  document.getElementById("pager").hidden = pages <= 1;
  document.getElementById("page-info").textContent = `page ${page} of ${pages}`;
  document.getElementById("prev-page").disabled = page <= 1;
  document.getElementById("next-page").disabled = page >= pages;
}

async function refresh() {
  try {
    const data = await api(`/api/jobs?page=${page}&per_page=${PER_PAGE}`);
    if (data.jobs.length === 0 && page > 1) { page -= 1; return true; }
    renderJobs(data);
    clearError("poll");
    document.body.dataset.loaded = "true";
    return data.jobs.some((job) => !job.final);
  } catch (err) {
    showError(err, "poll");
    throw err;
  }
}

async function act(path, method) {
  try {
    await api(path, { method });
    clearError();
  } catch (err) {
    showError(err);
  }
  poller.now();
}

async function clearHistory() {
  if (!confirm("Remove all finished jobs from the history? Their dataset folders stay on disk.")) return;
  try {
    const result = await api("/api/jobs/clear", { method: "POST" });
    clearError();
    const message = document.getElementById("form-message");
    message.className = "form-message ok";
    message.textContent = `Removed ${result.deleted} finished job${result.deleted === 1 ? "" : "s"} from the history.`;
  } catch (err) {
    showError(err);
  }
  page = 1;
  poller.now();
}

form.addEventListener("submit", submitJob);
form.elements.namedItem("source").addEventListener("change", syncUrlsField);
document.getElementById("clear-history").addEventListener("click", clearHistory);
document.getElementById("prev-page").addEventListener("click", () => { page -= 1; poller.now(); });
document.getElementById("next-page").addEventListener("click", () => { page += 1; poller.now(); });
syncUrlsField();
setupAuth(() => poller.now());
poller = poll(refresh);
