// The tutorials page: a client of the JSON API, in plain JavaScript with no dependencies.
//
// Safety: user data is only ever written with textContent (never as HTML), links only get
// http(s) addresses, and the Content-Security-Policy forbids inline script. Errors never
// escape to the console: every action runs through `act`, which shows what went wrong in
// plain words next to what it concerns, and a network failure as a notice with a retry.
"use strict";

const PAGE_SIZE = 20;
const SEARCH_DELAY_MS = 250;
// A request still unanswered after this long is given up, and said to be: a dead network can
// leave a request waiting for minutes, and nothing on this page waits forever.
const REQUEST_TIMEOUT_MS = 15000;
const CSRF_COOKIE = "__Host-tutorials-csrf";
const NEEDS_TOKEN = document.body.dataset.writesNeedToken === "true";
const DATE = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const NUMBER = new Intl.NumberFormat();

const $ = (selector, root = document) => root.querySelector(selector);

// What is listed: the address (#/?q=…&tag=…&sort=…) says it, so it can be shared and
// reloaded; the pages seen so far are the cursors that led to them.
const state = { q: "", tags: [], sort: "newest", cursors: [null], page: 0 };
let listLoad = null; // the AbortController of the listing being loaded
let detailLoad = null;
let current = null; // the tutorial the detail view shows
let searchTimer = 0;

// --- Talking to the API ------------------------------------------------------------------

class NetworkError extends Error {}

class HttpError extends Error {
  constructor(status, problem) {
    super(problem.detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function csrfToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === CSRF_COOKIE) return value.join("=");
  }
  return "";
}

async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const signals = [AbortSignal.timeout(REQUEST_TIMEOUT_MS)];
  if (signal) signals.push(signal);
  const init = { method, signal: AbortSignal.any(signals), headers: { Accept: "application/json", ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    if (!init.headers["Content-Type"]) init.headers["Content-Type"] = "application/json";
  }
  if (method !== "GET" && csrfToken()) init.headers["X-CSRF-Token"] = csrfToken();
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new NetworkError(error.name === "TimeoutError" ? "timeout" : "network");
  }
  if (response.status === 401) showSignedIn(); // a sign-in that expired shows as signed out
  if (!response.ok) {
    let problem = {};
    try {
      problem = await response.json();
    } catch {
      problem = {};
    }
    throw new HttpError(response.status, problem);
  }
  return response;
}

// --- Saying what went wrong --------------------------------------------------------------

const notice = { retry: null };

function showNotice(message, retry) {
  $("#notice-text").textContent = message;
  notice.retry = retry;
  $("#notice-retry").hidden = !retry;
  $("#notice").hidden = false;
}

function hideNotice() {
  $("#notice").hidden = true;
  notice.retry = null;
}

// Plain words for a failure that concerns no single field.
function isNetworkFailure(error) {
  return error instanceof NetworkError || (error && error.name === "TimeoutError");
}

function plainWords(error) {
  if (isNetworkFailure(error) && (error.message === "timeout" || error.name === "TimeoutError")) {
    return "The server is taking too long to answer. Check your connection, then try again.";
  }
  if (isNetworkFailure(error)) {
    return "The server cannot be reached. Check your connection, then try again.";
  }
  if (!(error instanceof HttpError)) return "Something went wrong in this page. Reload it and try again.";
  switch (error.status) {
    case 401:
      return NEEDS_TOKEN
        ? "You need to sign in (at the top of the page) to make changes."
        : "This change needs a token.";
    case 403:
      return "Your sign-in could not be confirmed for this change. Reload the page and try again.";
    case 404:
      return "That tutorial does not exist (any more).";
    case 409:
      return "Another tutorial already has this web address.";
    case 412:
      return "Someone changed this tutorial after you opened it.";
    case 413:
      return "That is too large to send.";
    case 503:
      return "The catalog is busy or its database is unreachable right now. Try again in a moment.";
    default:
      return error.status >= 500
        ? `The server failed (error ${error.status}). Try again; if it keeps failing, quote request ${error.problem.request_id || "?"}.`
        : "The server refused this request.";
  }
}

// Run an action; a failure nobody handled becomes a notice (with a retry when trying again
// can help). Superseded requests (aborted) are dropped silently.
async function act(action, retry = action) {
  try {
    await action();
  } catch (error) {
    if (error && error.name === "AbortError") return;
    const retryable = isNetworkFailure(error) || (error instanceof HttpError && error.status >= 500);
    showNotice(plainWords(error), retryable ? retry : null);
  }
}

// Field errors of a 422, in plain words, keyed by form field.
const FIELD_WORDS = {
  name: () => "Give it a name of 1 to 255 characters.",
  url: () => "Enter a full web address that starts with http:// or https://, such as https://example.com/guide. Spaces and accented letters must be percent-encoded.",
  description: () => "The description can have at most 20,000 characters.",
  tags: (loc, tags) => {
    const index = typeof loc[2] === "number" ? loc[2] : -1;
    if (index >= 0 && tags[index] !== undefined) {
      const tag = tags[index].length > 24 ? `${tags[index].slice(0, 24)}…` : tags[index];
      return `The tag “${tag}” is too long: a tag has at most 64 characters.`;
    }
    return "A tutorial can have at most 50 tags of up to 64 characters each.";
  },
  q: () => "This search has too many operators in a row. Simplify it.",
  token: () => "Enter a token.",
  file: () => "Choose a file first.",
};

function clearErrors(form) {
  for (const element of form.querySelectorAll(".field-error")) {
    element.hidden = true;
    element.textContent = "";
  }
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  const general = form.querySelector(".form-error");
  if (general) general.hidden = true;
}

function fieldError(form, field, message) {
  const element = form.querySelector(`[data-error-for="${field}"]`);
  const input = form.elements.namedItem(field);
  if (!element || !input) return false;
  element.textContent = message;
  element.hidden = false;
  input.setAttribute("aria-invalid", "true");
  return true;
}

function formError(form, message) {
  const general = form.querySelector(".form-error");
  general.querySelector("p").textContent = message;
  general.hidden = false;
}

function focusFirstInvalid(form) {
  const invalid = form.querySelector("[aria-invalid='true']");
  if (invalid) invalid.focus();
}

// Show a failed write next to what it concerns: each invalid field beside it, a taken url
// beside the url, anything else under the form.
function showWriteError(form, error, tags = []) {
  if (error instanceof HttpError && error.status === 422 && Array.isArray(error.problem.errors)) {
    let placed = false;
    for (const item of error.problem.errors) {
      const field = item.loc[0] === "body" ? item.loc[1] : item.loc[item.loc.length - 1];
      const words = FIELD_WORDS[field];
      if (words && fieldError(form, field, words(item.loc, tags))) placed = true;
    }
    if (placed) {
      focusFirstInvalid(form);
      return;
    }
  }
  if (error instanceof HttpError && error.status === 409 && fieldError(form, "url", plainWords(error))) {
    focusFirstInvalid(form);
    return;
  }
  formError(form, plainWords(error));
}

// --- Forms of a tutorial ------------------------------------------------------------------

function splitTags(text) {
  // Commas (or semicolons) separate tags; spaces belong to them: "python 3, machine learning".
  return text.split(/[,;]/).map((tag) => tag.trim()).filter((tag) => tag.length > 0);
}

function readFields(form) {
  const value = (name) => form.elements.namedItem(name).value;
  return {
    name: value("name").trim(),
    url: value("url").trim() || null,
    description: value("description") || null,
    tags: splitTags(value("tags")),
  };
}

function fillFields(form, tutorial) {
  form.elements.namedItem("name").value = tutorial.name;
  form.elements.namedItem("url").value = tutorial.url || "";
  form.elements.namedItem("description").value = tutorial.description || "";
  form.elements.namedItem("tags").value = tutorial.tags.join(", ");
}

// What can be told before asking the server, in the same words.
function checkFields(form, fields) {
  let ok = true;
  if (!fields.name) ok = fieldError(form, "name", FIELD_WORDS.name()) && false;
  if (fields.url && !/^https?:\/\/[^\s/?#]+/i.test(fields.url)) {
    ok = fieldError(form, "url", FIELD_WORDS.url()) && false;
  }
  if (!ok) focusFirstInvalid(form);
  return ok;
}

// --- The listing --------------------------------------------------------------------------

function listParams() {
  const params = new URLSearchParams();
  if (state.q) {
    params.set("q", state.q);
    params.set("prefix", "true");
  } else {
    params.set("sort", state.sort);
  }
  for (const tag of state.tags) params.append("tag", tag);
  return params;
}

function stateHash() {
  const params = new URLSearchParams();
  if (state.q) params.set("q", state.q);
  for (const tag of state.tags) params.append("tag", tag);
  if (state.sort !== "newest") params.set("sort", state.sort);
  const text = params.toString();
  return text ? `#/?${text}` : "#/";
}

function httpLink(anchor, url) {
  if (url && /^https?:\/\//i.test(url)) {
    anchor.href = url;
    anchor.textContent = url;
    anchor.hidden = false;
  } else {
    anchor.removeAttribute("href");
    anchor.textContent = "";
    anchor.hidden = true;
  }
}

function tagButton(tag) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "tag";
  button.textContent = tag;
  button.setAttribute("aria-label", `Show tutorials tagged ${tag}`);
  button.addEventListener("click", () => filterByTag(tag));
  return button;
}

function renderTags(list, tags) {
  list.replaceChildren(
    ...tags.map((tag) => {
      const item = document.createElement("li");
      item.append(tagButton(tag));
      return item;
    }),
  );
  list.hidden = tags.length === 0;
}

function renderItem(tutorial) {
  const item = $("#tutorial-item").content.firstElementChild.cloneNode(true);
  const open = $(".open", item);
  open.href = `#/tutorials/${tutorial.tutorial_id}`;
  open.textContent = tutorial.name;
  httpLink($(".url", item), tutorial.url);
  const description = $(".description", item);
  description.textContent = tutorial.description || "";
  description.hidden = !tutorial.description;
  renderTags($(".tags", item), tutorial.tags);
  $(".meta", item).textContent =
    `#${tutorial.tutorial_id} · updated ${DATE.format(new Date(tutorial.updated_at))}`;
  return item;
}

function describeCount(found) {
  const many = NUMBER.format(found.count);
  const noun = found.count === 1 ? "tutorial" : "tutorials";
  let text;
  if (found.count === 0) {
    text = state.q || state.tags.length ? "No tutorials match." : "No tutorials yet. Add the first one.";
  } else if (!found.exact) {
    text = `More than ${many} tutorials match; showing the best of the first ${many}.`;
  } else if (state.q) {
    text = `${many} ${noun} ${found.count === 1 ? "matches" : "match"}.`;
  } else {
    text = `${many} ${noun}.`;
  }
  if (state.tags.length && found.count) text = text.replace(/\.$/, ` tagged ${state.tags.join(" and ")}.`);
  return text;
}

async function loadList() {
  if (listLoad) listLoad.abort();
  const controller = new AbortController();
  listLoad = controller;
  const params = listParams();
  const countParams = new URLSearchParams(params);
  countParams.delete("sort");
  const page = new URLSearchParams(params);
  page.set("limit", String(PAGE_SIZE));
  const cursor = state.cursors[state.page];
  if (cursor) page.set("cursor", cursor);
  const list = $("#results");
  const count = $("#count");
  list.setAttribute("aria-busy", "true");
  count.textContent = "Loading…";
  clearErrors($("#search"));
  updateExportLinks();
  try {
    const [listed, found] = await Promise.all([
      api(`/tutorials?${page}`, { signal: controller.signal }).then((r) => r.json()),
      api(`/tutorials/count?${countParams}`, { signal: controller.signal }).then((r) => r.json()),
    ]);
    list.replaceChildren(...listed.items.map(renderItem));
    count.textContent = describeCount(found);
    state.cursors[state.page + 1] = listed.next_cursor;
    $("#next").disabled = !listed.next_cursor;
    $("#previous").disabled = state.page === 0;
    const pages = found.exact ? Math.max(1, Math.ceil(found.count / PAGE_SIZE)) : null;
    const paged = Boolean(listed.next_cursor) || state.page > 0;
    $("#page-number").textContent = paged ? `Page ${state.page + 1}${pages ? ` of ${pages}` : ""}` : "";
    $(".pager").hidden = !paged;
    hideNotice();
  } catch (error) {
    if (error.name === "AbortError") throw error;
    count.textContent = "";
    if (error instanceof HttpError && error.status === 422) {
      const search = $("#search");
      const fields = (error.problem.errors || []).map((item) => item.loc[item.loc.length - 1]);
      if (fields.includes("cursor")) {
        resetPaging();
        return loadList();
      }
      const field = fields.includes("q") ? "q" : "tag";
      if (field === "q") fieldError(search, "q", FIELD_WORDS.q());
      else showNotice("One of the tag filters is not a tag. Remove it and try again.", null);
      return undefined;
    }
    count.textContent = "The tutorials could not be loaded.";
    list.replaceChildren();
    $(".pager").hidden = true;
    throw error;
  } finally {
    if (listLoad === controller) {
      listLoad = null;
      list.removeAttribute("aria-busy");
    }
  }
  return undefined;
}

function resetPaging() {
  state.cursors = [null];
  state.page = 0;
}

function updateExportLinks() {
  const params = new URLSearchParams();
  if (state.q) params.set("q", state.q);
  for (const tag of state.tags) params.append("tag", tag);
  for (const format of ["csv", "ndjson"]) {
    params.set("format", format);
    $(`#export-${format}`).href = `/tutorials/export?${params}`;
  }
}

function renderActiveTags() {
  const holder = $("#active-tags");
  holder.replaceChildren(
    ...state.tags.map((tag) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "tag active";
      button.textContent = `${tag} ✕`;
      button.setAttribute("aria-label", `Remove the tag filter ${tag}`);
      button.addEventListener("click", () => {
        state.tags = state.tags.filter((t) => t !== tag);
        go(stateHash());
      });
      return button;
    }),
  );
  holder.hidden = state.tags.length === 0;
  for (const button of document.querySelectorAll("#tag-list button")) {
    button.setAttribute("aria-pressed", String(state.tags.includes(button.dataset.tag)));
  }
}

function filterByTag(tag) {
  if (!state.tags.includes(tag)) state.tags = [...state.tags, tag];
  go(stateHash());
}

async function loadTags() {
  const status = $("#tags-status");
  try {
    const response = await api("/tags?limit=50");
    const { items } = await response.json();
    $("#tag-list").replaceChildren(
      ...items.map(({ tag, count }) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "tag";
        button.dataset.tag = tag;
        const name = document.createElement("span");
        name.textContent = tag;
        const number = document.createElement("span");
        number.className = "tag-count";
        number.textContent = NUMBER.format(count);
        button.append(name, " ", number);
        button.setAttribute("aria-label", `${tag}: ${count} ${count === 1 ? "tutorial" : "tutorials"}`);
        button.setAttribute("aria-pressed", String(state.tags.includes(tag)));
        button.addEventListener("click", () => {
          if (state.tags.includes(tag)) state.tags = state.tags.filter((t) => t !== tag);
          else state.tags = [...state.tags, tag];
          go(stateHash());
        });
        item.append(button);
        return item;
      }),
    );
    status.textContent = items.length ? "" : "No tags yet.";
  } catch (error) {
    if (error.name === "AbortError") return;
    status.textContent = "The tags could not be loaded.";
    throw error;
  }
}

// --- The detail view ----------------------------------------------------------------------

function showDetail(tutorial) {
  current = tutorial;
  $("#detail-name").textContent = tutorial.name;
  httpLink($("#detail-url"), tutorial.url);
  const description = $("#detail-description");
  description.textContent = tutorial.description || "";
  description.hidden = !tutorial.description;
  renderTags($("#detail-tags"), tutorial.tags);
  $("#detail-id").textContent = `#${tutorial.tutorial_id}`;
  $("#detail-created").textContent = DATE.format(new Date(tutorial.created_at));
  $("#detail-updated").textContent = DATE.format(new Date(tutorial.updated_at));
  $("#detail-version").textContent = String(tutorial.version);
  document.title = `${tutorial.name} · Tutorials`;
}

function openView(name) {
  $("#browse").hidden = name !== "list";
  $("#detail").hidden = name !== "detail";
}

function closeEditors() {
  $("#edit-form").hidden = true;
  $("#detail-view").hidden = false;
  $("#delete-confirm").hidden = true;
  $("#delete-error").hidden = true;
}

async function loadDetail(id, { focus = true } = {}) {
  if (detailLoad) detailLoad.abort();
  const controller = new AbortController();
  detailLoad = controller;
  openView("detail");
  closeEditors();
  const status = $("#detail-status");
  if (!current || String(current.tutorial_id) !== String(id)) {
    $("#detail-view").hidden = true;
    status.textContent = "Loading…";
  }
  try {
    const response = await api(`/tutorials/${id}`, { signal: controller.signal });
    showDetail(await response.json());
    $("#detail-view").hidden = false;
    if (status.textContent === "Loading…") status.textContent = "";
    hideNotice();
    if (focus) $("#detail-name").focus();
  } catch (error) {
    if (error.name === "AbortError") throw error;
    status.textContent = "";
    if (error instanceof HttpError && (error.status === 404 || error.status === 422)) {
      current = null;
      status.textContent = `There is no tutorial #${id}. It may have been deleted.`;
      return;
    }
    throw error;
  } finally {
    if (detailLoad === controller) detailLoad = null;
  }
}

function startEdit() {
  const form = $("#edit-form");
  clearErrors(form);
  $("#edit-reload").hidden = true;
  fillFields(form, current);
  $("#detail-view").hidden = true;
  form.hidden = false;
  $("#detail-status").textContent = "";
  form.elements.namedItem("name").focus();
}

async function saveEdit(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  $("#edit-reload").hidden = true;
  const fields = readFields(form);
  if (!checkFields(form, fields)) return;
  const editing = current;
  try {
    const response = await api(`/tutorials/${editing.tutorial_id}`, {
      method: "PATCH",
      body: fields,
      headers: { "Content-Type": "application/merge-patch+json", "If-Match": `"${editing.version}"` },
    });
    showDetail(await response.json());
    closeEditors();
    $("#detail-status").textContent = "Saved.";
    $("#detail-name").focus();
    hideNotice();
    act(loadTags);
  } catch (error) {
    if (error instanceof HttpError && error.status === 412) {
      formError(
        form,
        "Someone changed this tutorial after you opened it, so your changes were not saved. " +
          "Load the latest version, then make your changes again.",
      );
      $("#edit-reload").hidden = false;
      $("#edit-reload").focus();
      return;
    }
    if (isNetworkFailure(error)) {
      formError(form, `${plainWords(error)} Your changes are still here.`);
      return;
    }
    showWriteError(form, error, fields.tags);
  }
}

async function reloadForEdit() {
  const form = $("#edit-form");
  try {
    const response = await api(`/tutorials/${current.tutorial_id}`);
    current = await response.json();
    showDetail(current);
    fillFields(form, current);
    clearErrors(form);
    $("#edit-reload").hidden = true;
    $("#detail-status").textContent = `Loaded version ${current.version}.`;
    form.elements.namedItem("name").focus();
  } catch (error) {
    if (error instanceof HttpError && error.status === 404) {
      formError(form, "This tutorial has been deleted in the meantime.");
      $("#edit-reload").hidden = true;
      return;
    }
    formError(form, plainWords(error));
  }
}

function askDelete() {
  $("#delete-question").textContent = `Delete “${current.name}” for good?`;
  $("#delete-confirm").hidden = false;
  $("#delete-error").hidden = true;
  $("#delete-no").focus();
}

async function confirmDelete() {
  const doomed = current;
  const error = $("#delete-error");
  error.hidden = true;
  try {
    await api(`/tutorials/${doomed.tutorial_id}`, {
      method: "DELETE",
      headers: { "If-Match": `"${doomed.version}"` },
    });
    current = null;
    $("#delete-confirm").hidden = true;
    hideNotice();
    go(stateHash());
    $("#list-status").textContent = `Deleted “${doomed.name}”.`;
    act(loadTags);
  } catch (failure) {
    $("#delete-confirm").hidden = true;
    const stale = failure instanceof HttpError && failure.status === 412;
    $("#delete-error-text").textContent = stale
      ? "Someone changed this tutorial after you opened it, so it was not deleted. Look at the latest version first."
      : plainWords(failure);
    $("#delete-reload").hidden = !stale;
    error.hidden = false;
    (stale ? $("#delete-reload") : $("#delete")).focus();
  }
}

// --- Adding, signing in, importing ----------------------------------------------------------

async function add(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  const fields = readFields(form);
  if (!checkFields(form, fields)) return;
  const body = { name: fields.name, tags: fields.tags };
  if (fields.url) body.url = fields.url;
  if (fields.description) body.description = fields.description;
  try {
    const response = await api("/tutorials", { method: "POST", body });
    const created = await response.json();
    form.reset();
    hideNotice();
    current = created;
    go(`#/tutorials/${created.tutorial_id}`);
    $("#detail-status").textContent = `Added “${created.name}”.`;
    act(loadTags);
  } catch (error) {
    showWriteError(form, error, fields.tags);
  }
}

function showSignedIn() {
  if (!NEEDS_TOKEN) return;
  const signedIn = csrfToken() !== "";
  $("#signin").hidden = signedIn;
  $("#signed-in").hidden = !signedIn;
}

async function signIn(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  const token = form.elements.namedItem("token").value;
  if (!token.trim()) {
    fieldError(form, "token", FIELD_WORDS.token());
    focusFirstInvalid(form);
    return;
  }
  try {
    await api("/session", { method: "POST", body: { token } });
  } catch (error) {
    const words =
      error instanceof HttpError && error.status === 401
        ? "That token is not one this server accepts. Check it and try again."
        : plainWords(error);
    fieldError(form, "token", words);
    focusFirstInvalid(form);
    return;
  }
  form.reset();
  if (!csrfToken()) {
    fieldError(form, "token", "Your browser did not keep the sign-in: this page must be served over HTTPS (or from localhost).");
    return;
  }
  showSignedIn();
  $("#signout").focus();
}

async function signOut() {
  try {
    await api("/session", { method: "DELETE" });
  } catch (error) {
    if (!(error instanceof HttpError && error.status === 401)) throw error; // already out
  }
  showSignedIn();
  $("#signin-token").focus();
}

function importType(file) {
  const name = file.name.toLowerCase();
  if (name.endsWith(".csv")) return "text/csv";
  if (name.endsWith(".ndjson") || name.endsWith(".jsonl")) return "application/x-ndjson";
  return null;
}

function importFile(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  const file = form.elements.namedItem("file").files[0];
  if (!file) {
    fieldError(form, "file", FIELD_WORDS.file());
    focusFirstInvalid(form);
    return;
  }
  const type = importType(file);
  if (!type) {
    fieldError(form, "file", "Choose a .csv or .ndjson file.");
    focusFirstInvalid(form);
    return;
  }
  const progress = $("#import-progress");
  const status = $("#import-status");
  const errors = $("#import-errors");
  errors.replaceChildren();
  progress.value = 0;
  progress.hidden = false;
  status.textContent = `Sending ${file.name}…`;
  const request = new XMLHttpRequest();
  request.open("POST", "/tutorials/import");
  request.setRequestHeader("Content-Type", `${type}; charset=utf-8`);
  request.setRequestHeader("Accept", "application/json");
  if (csrfToken()) request.setRequestHeader("X-CSRF-Token", csrfToken());
  request.upload.addEventListener("progress", (progressEvent) => {
    if (progressEvent.lengthComputable) {
      progress.value = Math.round((100 * progressEvent.loaded) / progressEvent.total);
      status.textContent = `Sending ${file.name}: ${progress.value}%`;
    }
  });
  request.upload.addEventListener("load", () => {
    progress.value = 100;
    status.textContent = `Sent ${file.name}; importing…`;
  });
  request.addEventListener("error", () => {
    progress.hidden = true;
    status.textContent = "";
    fieldError(form, "file", plainWords(new NetworkError("network")));
  });
  request.addEventListener("load", () => {
    progress.hidden = true;
    let body = {};
    try {
      body = JSON.parse(request.responseText);
    } catch {
      body = {};
    }
    if (request.status !== 200) {
      status.textContent = "";
      const words =
        request.status === 400 || request.status === 415
          ? "This file cannot be imported: a CSV file needs the header name,url,description,tags (name first is enough)."
          : plainWords(new HttpError(request.status, body));
      fieldError(form, "file", words);
      return;
    }
    const parts = [`${NUMBER.format(body.inserted)} new`, `${NUMBER.format(body.updated)} updated`];
    if (body.unchanged) parts.push(`${NUMBER.format(body.unchanged)} unchanged`);
    if (body.rejected) parts.push(`${NUMBER.format(body.rejected)} refused`);
    status.textContent = `Imported ${file.name}: ${NUMBER.format(body.rows)} rows, ${parts.join(", ")}.`;
    errors.replaceChildren(
      ...(body.errors || []).slice(0, 10).map((rejected) => {
        const item = document.createElement("li");
        item.textContent = `Line ${rejected.line}: ${rejected.reason}`;
        return item;
      }),
    );
    form.reset();
    act(() => Promise.all([loadList(), loadTags()]));
  });
  request.send(file);
}

// --- Where we are: the address ------------------------------------------------------------

function go(hash) {
  if (location.hash === hash) act(route);
  else location.hash = hash; // hashchange routes
}

function readListHash(hash) {
  const query = hash.startsWith("#/?") ? hash.slice(3) : "";
  const params = new URLSearchParams(query);
  const sort = params.get("sort");
  return {
    q: (params.get("q") || "").trim(),
    tags: params.getAll("tag").filter((tag) => tag.trim()),
    sort: ["newest", "oldest", "name", "updated"].includes(sort) ? sort : "newest",
  };
}

async function route() {
  const hash = location.hash;
  const item = /^#\/tutorials\/([0-9]{1,19})$/.exec(hash);
  if (item) {
    await loadDetail(item[1]); // as written: ids are bigints, past what a Number holds exactly
    return;
  }
  document.title = "Tutorials";
  const wanted = readListHash(hash);
  const changed =
    wanted.q !== state.q || wanted.sort !== state.sort || wanted.tags.join("\n") !== state.tags.join("\n");
  Object.assign(state, wanted);
  if (changed) resetPaging();
  const q = $("#q");
  if (q.value.trim() !== state.q) q.value = state.q;
  $("#sort").value = state.sort;
  $("#sort").disabled = Boolean(state.q);
  $("#sort-hint").hidden = !state.q;
  renderActiveTags();
  openView("list");
  await loadList();
}

function searchTyped() {
  clearTimeout(searchTimer);
  $("#list-status").textContent = "";
  searchTimer = setTimeout(() => {
    state.q = $("#q").value.trim();
    resetPaging();
    history.replaceState(null, "", stateHash());
    act(route);
  }, SEARCH_DELAY_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#notice-retry").addEventListener("click", () => {
    const retry = notice.retry;
    hideNotice();
    if (retry) act(retry);
  });
  $("#search").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(searchTimer);
    state.q = $("#q").value.trim();
    go(stateHash());
  });
  $("#q").addEventListener("input", searchTyped);
  $("#sort").addEventListener("change", (event) => {
    state.sort = event.currentTarget.value;
    go(stateHash());
  });
  $("#next").addEventListener("click", () => {
    state.page += 1;
    act(loadList);
    $("#results").focus();
  });
  $("#previous").addEventListener("click", () => {
    state.page = Math.max(0, state.page - 1);
    act(loadList);
    $("#results").focus();
  });
  $("#add").addEventListener("submit", (event) => act(() => add(event)));
  $("#edit").addEventListener("click", startEdit);
  $("#edit-form").addEventListener("submit", (event) => act(() => saveEdit(event)));
  $("#edit-cancel").addEventListener("click", () => {
    closeEditors();
    $("#edit").focus();
  });
  $("#edit-reload").addEventListener("click", () => act(reloadForEdit));
  $("#delete").addEventListener("click", askDelete);
  $("#delete-no").addEventListener("click", () => {
    $("#delete-confirm").hidden = true;
    $("#delete").focus();
  });
  $("#delete-confirm").addEventListener("keydown", (event) => {
    if (event.key === "Escape") $("#delete-no").click();
  });
  $("#edit-form").addEventListener("keydown", (event) => {
    if (event.key === "Escape") $("#edit-cancel").click();
  });
  $("#delete-yes").addEventListener("click", () => act(confirmDelete));
  $("#delete-reload").addEventListener("click", () => act(() => loadDetail(current.tutorial_id)));
  $("#import").addEventListener("submit", importFile);
  if (NEEDS_TOKEN) {
    $("#signin").addEventListener("submit", (event) => act(() => signIn(event)));
    $("#signout").addEventListener("click", () => act(signOut));
    showSignedIn();
  }
  window.addEventListener("hashchange", () => act(route));
  act(route);
  act(loadTags);
});
