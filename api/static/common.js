// Shared by both pages: calling the API, the error banner, the token box, small DOM helpers.
// Nothing from the API is ever parsed as HTML: every text goes in through textContent.

const TOKEN_KEY = "cvdb.apiToken";
export const POLL_MS = 1500;
export const IDLE_POLL_MS = 10000;

export class ApiError extends Error {
  constructor(status, error, detail) {
    super(typeof detail === "string" ? detail : error);
    this.status = status;  // 0 when the server could not be reached
    this.error = error;
    this.detail = detail;
  }
}

export function token() {
  try { return localStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; }
}

function setToken(value) {
  try {
    if (value) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY);
  } catch { /* private mode: the token lasts this page only */ }
}

export function authHeaders() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

/** Call the API; resolves to the parsed JSON (null for 204), rejects with an ApiError.
 * `body` is sent as JSON; `raw` (a Blob or File) is sent as it is, with its own type as Content-Type. */
export async function api(path, { method = "GET", body, raw } = {}) {
  const headers = { Accept: "application/json", ...authHeaders() };
  const init = { method, headers, cache: "no-store" };
  if (raw !== undefined) {
    headers["Content-Type"] = raw.type || "application/octet-stream";
    init.body = raw;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    throw new ApiError(0, "unreachable",
      "Cannot reach the API server. Check that it is running; this page retries on its own.");
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    throw new ApiError(response.status, "bad_response",
      `The server answered ${response.status} ${response.statusText} with something that is not JSON ` +
      "(a proxy error page?). Try again in a moment.");
  }
  if (!response.ok) {
    const error = (data && data.error) || `http_${response.status}`;
    const detail = (data && data.detail) || `The server answered ${response.status} ${response.statusText}.`;
    if (response.status === 401) showTokenBox(detail);
    throw new ApiError(response.status, error, detail);
  }
  return data;
}

/** A readable sentence for any error (a 422 list becomes "field: message; ..."). */
export function describe(err) {
  if (!(err instanceof ApiError)) return `Unexpected error in the page: ${err && err.message ? err.message : err}`;
  if (Array.isArray(err.detail)) {
    return "Please fix: " + err.detail.map((d) => `${d.field}: ${d.message}`).join("; ");
  }
  return String(err.detail || err.error);
}

// -- the banner ---------------------------------------------------------------------------------

let bannerSource = null;

/** Show an error in the page's banner; `source` lets polling clear only its own messages. */
export function showError(err, source = "action") {
  const banner = document.getElementById("banner");
  banner.querySelector(".banner-text").textContent = typeof err === "string" ? err : describe(err);
  banner.hidden = false;
  bannerSource = source;
}

export function clearError(source) {
  if (source && bannerSource !== source) return;
  document.getElementById("banner").hidden = true;
  bannerSource = null;
}

// -- the token box --------------------------------------------------------------------------------

let onToken = () => {};

function showTokenBox(detail) {
  const box = document.getElementById("auth");
  if (!box.hidden) return;
  box.hidden = false;
  box.querySelector(".auth-why").textContent = token()
    ? "The saved token was refused. Enter a valid one."
    : "This server needs an API token to show and start jobs.";
  box.querySelector("input").focus();
}

/** Wire the token box and the "forget token" button; `reload` runs after a token is saved. */
export function setupAuth(reload) {
  onToken = reload;
  const box = document.getElementById("auth");
  const forget = document.getElementById("forget-token");
  const syncForget = () => { forget.hidden = !token(); };
  box.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = box.querySelector("input");
    setToken(input.value.trim());
    input.value = "";
    box.hidden = true;
    syncForget();
    clearError();
    onToken();
  });
  forget.addEventListener("click", () => { setToken(""); syncForget(); onToken(); });
  document.querySelector("#banner .banner-close").addEventListener("click", () => clearError());
  syncForget();
}

// -- DOM and formatting helpers -------------------------------------------------------------------

const HANGUL = /[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]/;

/** Make an element: el("td", {class: "x", text: "y", title: "z"}, child, ...). Text only, never HTML. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

/** Text that may be Korean: tagged lang="ko" so the browser picks a Korean font. */
export function userText(tag, text, props = {}) {
  return el(tag, { ...props, text, lang: HANGUL.test(String(text)) ? "ko" : undefined });
}

/** An <a> only for http(s) addresses (never javascript: and the like); plain text otherwise. */
export function safeLink(url, text = url) {
  if (typeof url === "string" && /^https?:\/\//i.test(url)) {
    return el("a", { href: url, text, target: "_blank", rel: "noopener noreferrer nofollow" });
  }
  return el("span", { text: url ?? "—" });
}

export function formatElapsed(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${seconds < 10 ? seconds.toFixed(1) : s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

export function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export function formatNumber(value, digits = 3) {
  if (typeof value !== "number") return value === undefined || value === null ? "—" : String(value);
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

/** Where a job is, in words, plus a 0..1 fraction for its progress bar. */
export function stageInfo(job) {
  const p = job.progress || {};
  const chunks = job.fetch_chunks || {};
  const chunkText = chunks.total ? ` · chunk ${chunks.done}/${chunks.total}` : "";
  if (job.status === "queued") return { step: -1, label: "queued, waiting for a worker", fraction: 0 };
  if (job.status === "done") return { step: 6, label: `done · ${job.count} kept`, fraction: 1 };
  if (job.status === "failed") return { step: STEP_OF[job.stage] ?? -1, label: "failed", fraction: 1 };
  if (job.status === "cancelled") {
    return { step: STEP_OF[job.stage] ?? -1, label: `cancelled while ${STAGE_VERB[job.stage] || "queued"}`, fraction: 1 };
  }
  const prefix = job.status === "cancelling" ? "cancelling… " : "";
  switch (job.stage) {
    case "search":
      return { step: 0, label: `${prefix}searching ${job.source}`, fraction: 0.03 };
    case "fetch": {
      const done = p.candidates ? p.fetched / p.candidates : 0;
      return {
        step: 1,
        label: `${prefix}downloading ${p.fetched}/${p.candidates}, filtering: ${p.accepted} passed${chunkText}`,
        fraction: 0.05 + 0.75 * done,
      };
    }
    case "embed":
      return { step: 3, label: `${prefix}embedding ${p.accepted} images`, fraction: 0.85 };
    case "select":
      return { step: 4, label: `${prefix}clustering and saving`, fraction: 0.93 };
    default:
      return { step: -1, label: `${prefix}${job.status}`, fraction: 0.02 };
  }
}

// The pipeline's steps as the page shows them; a job stage covers one or two of them.
export const STEPS = ["searching", "downloading", "filtering", "embedding", "clustering", "saving"];
const STEP_OF = { search: 0, fetch: 1, embed: 3, select: 4, done: 6 };
const STAGE_VERB = { search: "searching", fetch: "downloading", embed: "embedding", select: "clustering" };

/** Which steps are active now: fetch is downloading and filtering; select is clustering and saving. */
export function activeSteps(job) {
  if (job.final || job.status === "queued") return [];
  return { search: [0], fetch: [1, 2], embed: [3], select: [4, 5] }[job.stage] || [];
}

export function statusBadge(status) {
  return el("span", { class: `status status-${status}`, text: status });
}

/** Call `tick` now and again after each run: every POLL_MS while it returns true, else slowly. */
export function poll(tick) {
  let timer = null;
  let stopped = false;
  async function run() {
    if (stopped) return;
    clearTimeout(timer);
    let active = false;
    let failed = false;
    try {
      active = await tick();
    } catch (err) {
      failed = true;
    }
    if (stopped) return;
    const delay = failed ? 3000 : active ? POLL_MS : IDLE_POLL_MS;
    timer = setTimeout(run, document.hidden ? Math.max(delay, IDLE_POLL_MS) : delay);
  }
  document.addEventListener("visibilitychange", () => { if (!document.hidden && !stopped) run(); });
  run();
  return { now: run, stop: () => { stopped = true; clearTimeout(timer); } };
}
