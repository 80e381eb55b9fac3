// The tutorials page: a client of the JSON API. User data is only ever written with
// textContent (never as HTML), so stored names cannot inject markup.
"use strict";

const state = { cursors: [null], page: 0, query: "", tags: [] };
const $ = (selector) => document.querySelector(selector);

function splitTags(text) {
  return text.split(/[,\s]+/).map((t) => t.trim()).filter((t) => t.length > 0);
}

async function problemText(response) {
  try {
    const problem = await response.json();
    return problem.detail || problem.title || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function renderItem(tutorial) {
  const item = $("#tutorial-item").content.firstElementChild.cloneNode(true);
  const link = item.querySelector(".link");
  const name = item.querySelector(".name");
  if (tutorial.url && /^https?:\/\//i.test(tutorial.url)) {
    link.href = tutorial.url;
    link.textContent = tutorial.name;
    name.remove();
  } else {
    link.remove();
    name.textContent = tutorial.name;
  }
  item.querySelector(".description").textContent = tutorial.description || "";
  const tags = item.querySelector(".tags");
  for (const tag of tutorial.tags) {
    const li = document.createElement("li");
    li.textContent = tag;
    tags.append(li);
  }
  item.querySelector(".updated").textContent =
    `#${tutorial.tutorial_id} · updated ${new Date(tutorial.updated_at).toLocaleString()}`;
  item.querySelector(".delete").addEventListener("click", () => remove(tutorial));
  return item;
}

async function load() {
  const params = new URLSearchParams({ limit: "20" });
  if (state.query) params.set("q", state.query);
  for (const tag of state.tags) params.append("tag", tag);
  const cursor = state.cursors[state.page];
  if (cursor) params.set("cursor", cursor);
  const status = $("#status");
  status.textContent = "Loading…";
  status.classList.remove("error");
  const response = await fetch(`/tutorials?${params}`, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    status.textContent = await problemText(response);
    status.classList.add("error");
    return;
  }
  const page = await response.json();
  const list = $("#tutorials");
  list.replaceChildren(...page.items.map(renderItem));
  status.textContent = page.items.length ? "" : "No tutorials found.";
  state.cursors[state.page + 1] = page.next_cursor;
  $("#next").disabled = !page.next_cursor;
  $("#previous").disabled = state.page === 0;
}

function writeHeaders(form) {
  const headers = { "Content-Type": "application/json" };
  const token = form ? form.elements.namedItem("token") : null;
  const value = token ? token.value : sessionStorage.getItem("tutorials-token");
  if (value) headers.Authorization = `Bearer ${value}`;
  return headers;
}

async function add(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const status = $("#add-status");
  const body = { name: form.elements.name.value };
  if (form.elements.url.value.trim()) body.url = form.elements.url.value.trim();
  if (form.elements.description.value) body.description = form.elements.description.value;
  body.tags = splitTags(form.elements.tags.value);
  const response = await fetch("/tutorials", {
    method: "POST",
    headers: writeHeaders(form),
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    status.textContent = await problemText(response);
    status.classList.add("error");
    return;
  }
  const token = form.elements.namedItem("token");
  if (token) sessionStorage.setItem("tutorials-token", token.value);
  const created = await response.json();
  status.classList.remove("error");
  status.textContent = `Added #${created.tutorial_id}.`;
  form.reset();
  if (token) token.value = sessionStorage.getItem("tutorials-token") || "";
  await load();
}

async function remove(tutorial) {
  if (!window.confirm(`Delete “${tutorial.name}”?`)) return;
  const headers = writeHeaders($("#add"));
  headers["If-Match"] = `"${tutorial.version}"`;
  const response = await fetch(`/tutorials/${tutorial.tutorial_id}`, { method: "DELETE", headers });
  const status = $("#status");
  if (!response.ok) {
    status.textContent = await problemText(response);
    status.classList.add("error");
    return;
  }
  await load();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#search").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    state.query = form.elements.q.value.trim();
    state.tags = splitTags(form.elements.tags.value);
    state.cursors = [null];
    state.page = 0;
    load();
  });
  $("#search").addEventListener("reset", () => {
    state.query = "";
    state.tags = [];
    state.cursors = [null];
    state.page = 0;
    setTimeout(load, 0);
  });
  $("#next").addEventListener("click", () => { state.page += 1; load(); });
  $("#previous").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); load(); });
  $("#add").addEventListener("submit", add);
  load();
});
