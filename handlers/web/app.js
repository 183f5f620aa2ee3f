// The vault web app: every string from the server or a user goes in as text (textContent),
// never as HTML.

import * as api from "./api.js";
import { Queue, Upload } from "./tus.js";

const $ = (id) => document.getElementById(id);
const queue = new Queue(2);
let files = [];
let view = "files";

// ---------------------------------------------------------------- small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

export function humanSize(n) {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} bytes` : `${v.toFixed(1)} ${units[i]}`;
}

function when(iso) {
  if (!iso) return "never";
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function duration(seconds) {
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.ceil(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

function show(id, visible) {
  $(id).classList.toggle("hidden", !visible);
}

function showError(message, target = "error") {
  const box = $(target);
  box.textContent = message || "";
  box.classList.toggle("hidden", !message);
}

function status(message) {
  $("status").textContent = message;
}

// Runs an action; its failure is shown with the server's message.
async function guarded(fn, target = "error") {
  showError("", target);
  try {
    return await fn();
  } catch (err) {
    showError(err.message || String(err), target);
    return undefined;
  }
}

const enc = encodeURIComponent;

// Lists are redrawn whole; a keyboard user keeps their place: the control that had the focus
// (known by its aria-label, which names the row's file or user) has it again afterwards.
function replaceRows(container, rows) {
  const focused = container.contains(document.activeElement)
    ? document.activeElement.getAttribute("aria-label")
    : null;
  container.replaceChildren(...rows);
  if (focused) {
    [...container.querySelectorAll("[aria-label]")].find((n) => n.getAttribute("aria-label") === focused)?.focus();
  }
}

// ---------------------------------------------------------------- signing in and out

let registering = false;

function showSignIn() {
  for (const id of ["files", "shared", "links", "account", "nav"]) show(id, false);
  show("signin", true);
  $("who").textContent = "";
  $("username").focus();
}

function signedIn() {
  show("signin", false);
  show("nav", true);
  $("who").textContent = api.currentUser();
  showView(view);
}

$("signin-toggle").addEventListener("click", () => {
  registering = !registering;
  $("signin-title").textContent = registering ? "Create an account" : "Sign in";
  $("signin-submit").textContent = registering ? "Create account" : "Sign in";
  $("signin-toggle").textContent = registering ? "I have an account" : "Create an account";
  $("password").autocomplete = registering ? "new-password" : "current-password";
  show("invite-label", registering);
  show("invite", registering);
});

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const user = $("username").value;
    const password = $("password").value;
    if (registering) await api.register(user, password, $("invite").value.trim());
    await api.signIn(user, password);
    $("password").value = "";
    signedIn();
  });
});

$("signout").addEventListener("click", () =>
  guarded(async () => {
    await api.signOut();
    status("Signed out.");
    showSignIn();
  }),
);

$("signout-all").addEventListener("click", () =>
  guarded(async () => {
    await api.signOutEverywhere();
    status("Signed out everywhere.");
    showSignIn();
  }),
);

$("password-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    await api.changePassword($("old-password").value, $("new-password").value);
    $("old-password").value = "";
    $("new-password").value = "";
    status("Password changed. Other sessions were signed out.");
  });
});

api.onSignedOut(() => {
  status("Your session ended: sign in again.");
  showSignIn();
});

// ---------------------------------------------------------------- views

function showView(name) {
  view = name;
  for (const v of ["files", "shared", "links", "account"]) show(v, v === name);
  for (const b of $("nav").querySelectorAll("button")) {
    if (b.dataset.view === name) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  const load = { files: loadFiles, shared: loadShared, links: loadLinks, account: async () => {} }[name];
  guarded(load);
}

for (const b of $("nav").querySelectorAll("button")) {
  b.addEventListener("click", () => showView(b.dataset.view));
}

// ---------------------------------------------------------------- files

async function loadFiles() {
  const [list, me] = await Promise.all([api.call("GET", "/files"), api.call("GET", "/me")]);
  files = list.files;
  renderFiles();
  const quota = me.quota;
  $("usage-bar").max = quota || Math.max(me.usage, 1);
  $("usage-bar").value = quota ? me.usage : 0;
  $("usage-text").textContent = quota
    ? `${humanSize(me.usage)} of ${humanSize(quota)} used (${me.files} files)`
    : `${humanSize(me.usage)} used (${me.files} files, no quota)`;
}

function sorted(list) {
  const [key, dir] = $("sort").value.split("-");
  const sign = dir === "asc" ? 1 : -1;
  const cmp = {
    name: (a, b) => a.filename.localeCompare(b.filename),
    size: (a, b) => a.size - b.size,
    created: (a, b) => a.created.localeCompare(b.created),
  }[key];
  return [...list].sort((a, b) => sign * cmp(a, b));
}

function renderFiles() {
  const needle = $("filter").value.trim().toLowerCase();
  const shown = sorted(files.filter((f) => f.filename.toLowerCase().includes(needle)));
  const rows = shown.map((f) =>
    el(
      "tr",
      {},
      el("td", { class: "name", text: f.filename, title: `SHA-256 ${f.sha256}` }),
      el("td", { class: "num", text: humanSize(f.size), title: `${f.size} bytes` }),
      el("td", { text: when(f.created) }),
      el(
        "td",
        {},
        el(
          "div",
          { class: "actions" },
          el("a", {
          class: "button",
          href: `/web/dl/files/${enc(f.filename)}`,
          download: "",
          text: "Download",
          "aria-label": `Download ${f.filename}`,
        }),
        el("button", { type: "button", text: "Share", "aria-label": `Share ${f.filename}`, onclick: () => openShare(f.filename) }),
        el("button", { type: "button", text: "Link", "aria-label": `Create a link to ${f.filename}`, onclick: () => openLink(f.filename) }),
        el("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${f.filename}`, onclick: () => remove(f.filename) }),
        ),
      ),
    ),
  );
  replaceRows($("file-rows"), rows);
  show("files-empty", files.length === 0);
}

$("filter").addEventListener("input", renderFiles);
$("sort").addEventListener("change", renderFiles);

async function remove(name) {
  if (!window.confirm(`Delete ${name}? This cannot be undone.`)) return;
  await guarded(async () => {
    await api.call("DELETE", `/files/${enc(name)}`);
    status(`Deleted ${name}.`);
    await loadFiles();
  });
}

// ---------------------------------------------------------------- uploads

function uploadRow(u) {
  const bar = el("progress", { max: String(Math.max(u.size, 1)), value: "0", "aria-label": `Progress of ${u.name}` });
  const info = el("span", { class: "muted" });
  const pause = el("button", { type: "button", text: "Pause" });
  const cancel = el("button", { type: "button", text: "Cancel" });
  const li = el("li", {}, el("span", { class: "name", text: u.name }), bar, info, el("span", { class: "row" }, pause, cancel));
  pause.addEventListener("click", () => {
    if (u.state === "paused" || u.state === "failed") u.start();
    else u.pause();
  });
  cancel.addEventListener("click", () => u.cancel());
  u.render = () => {
    bar.value = u.size ? u.sent : 1;
    const pct = u.size ? Math.floor((100 * u.sent) / u.size) : 100;
    let text = `${u.message} · ${pct}% of ${humanSize(u.size)}`;
    if (u.state === "uploading") {
      const speed = u.speed();
      if (speed > 0) text += ` · ${humanSize(speed)}/s · ${duration((u.size - u.sent) / speed)} left`;
    }
    info.textContent = text;
    li.dataset.state = u.state;
    pause.textContent = u.state === "paused" || u.state === "failed" ? "Resume" : "Pause";
    pause.disabled = ["done", "cancelled"].includes(u.state);
    cancel.disabled = ["done", "cancelled"].includes(u.state);
    li.classList.toggle("failed", u.state === "failed");
  };
  return li;
}

let refreshSoon = null;

function onUploadChange(u) {
  u.render?.();
  if (u.state === "done" || u.state === "failed") {
    clearTimeout(refreshSoon);
    refreshSoon = setTimeout(() => guarded(loadFiles), 100);
  }
}

function startUploads(entries) {
  for (const { file, name } of entries) {
    const u = new Upload(file, name, api.currentUser(), onUploadChange);
    $("uploads").prepend(uploadRow(u));
    u.render();
    queue.add(u);
  }
}

const named = (list) => [...list].map((file) => ({ file, name: (file.webkitRelativePath || file.name).replaceAll("/", "_") }));

$("picker").addEventListener("change", (e) => {
  startUploads(named(e.target.files));
  e.target.value = "";
});
$("folder-picker").addEventListener("change", (e) => {
  startUploads(named(e.target.files));
  e.target.value = "";
});

// A dropped folder's files, read through its entries (a folder gives "a_b.txt" for a/b.txt).
async function walk(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((res, rej) => entry.file(res, rej));
    out.push({ file, name: prefix + file.name });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
      if (batch.length === 0) break;
      for (const child of batch) await walk(child, `${prefix}${entry.name}_`, out);
    }
  }
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry?.()).filter(Boolean);
  if (entries.length === 0) {
    startUploads(named(e.dataTransfer.files));
    return;
  }
  const out = [];
  await guarded(async () => {
    for (const entry of entries) await walk(entry, "", out);
  });
  startUploads(out);
});

window.addEventListener("beforeunload", (e) => {
  if (queue.items.some((u) => ["uploading", "retrying", "queued"].includes(u.state))) e.preventDefault();
});

// ---------------------------------------------------------------- sharing

let sharing = null;

async function loadGrantees() {
  const { shared_with } = await api.call("GET", `/files/${enc(sharing)}/shares`);
  const items = shared_with.map((user) =>
    el(
      "li",
      {},
      el("span", { text: user }),
      el("button", {
        type: "button",
        text: "Revoke",
        "aria-label": `Stop sharing with ${user}`,
        onclick: () =>
          guarded(async () => {
            await api.call("DELETE", `/files/${enc(sharing)}/shares/${enc(user)}`);
            await loadGrantees();
          }, "share-error"),
      }),
    ),
  );
  replaceRows($("grantees"), items);
}

function openShare(name) {
  sharing = name;
  $("share-name").textContent = name;
  $("share-user").value = "";
  showError("", "share-error");
  $("share-dialog").showModal();
  guarded(loadGrantees, "share-error");
}

$("share-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    await api.call("POST", `/files/${enc(sharing)}/shares`, { json: { username: $("share-user").value } });
    status(`Shared ${sharing} with ${$("share-user").value}.`);
    $("share-user").value = "";
    await loadGrantees();
  }, "share-error");
});

async function loadShared() {
  const { files: list } = await api.call("GET", "/shared");
  const rows = list.map((f) =>
    el(
      "tr",
      {},
      el("td", { class: "name", text: f.filename }),
      el("td", { text: f.owner }),
      el("td", { class: "num", text: humanSize(f.size) }),
      el("td", { text: when(f.created) }),
      el(
        "td",
        {},
        el("a", {
          class: "button",
          href: `/web/dl/shared/${enc(f.owner)}/${enc(f.filename)}`,
          download: "",
          text: "Download",
          "aria-label": `Download ${f.filename} from ${f.owner}`,
        }),
      ),
    ),
  );
  replaceRows($("shared-rows"), rows);
  show("shared-empty", list.length === 0);
}

// ---------------------------------------------------------------- links

let linking = null;
let qrUrl = null;

function openLink(name) {
  linking = name;
  $("link-name").textContent = name;
  $("link-password").value = "";
  $("link-max").value = "";
  showError("", "link-error");
  show("link-form", true);
  show("link-result", false);
  $("link-dialog").showModal();
}

$("link-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const body = {};
    if ($("link-expiry").value) body.expires_in = Number($("link-expiry").value);
    if ($("link-password").value) body.password = $("link-password").value;
    if ($("link-max").value) body.max_downloads = Number($("link-max").value);
    const link = await api.call("POST", `/files/${enc(linking)}/links`, { json: body });
    $("link-url").value = link.url;
    show("link-form", false);
    show("link-result", true);
    $("link-url").focus(); // the form that had the focus is gone
    $("link-url").select();
    // The QR code is drawn by the server from the URL sent in a POST body (never a URL).
    const resp = await api.call("POST", "/web/qr", { json: { text: link.url }, raw: true });
    if (qrUrl) URL.revokeObjectURL(qrUrl);
    qrUrl = URL.createObjectURL(await resp.blob());
    $("link-qr").src = qrUrl;
  }, "link-error");
});

$("link-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("link-url").value);
    status("Link copied.");
  } catch {
    $("link-url").select();
    status("Press Ctrl+C to copy the selected link.");
  }
});

async function loadLinks() {
  const { links } = await api.call("GET", "/links");
  const rows = links.map((l) =>
    el(
      "tr",
      {},
      el("td", { class: "name", text: l.filename }),
      el("td", { text: when(l.expires) }),
      el("td", { text: l.downloads_left === null ? "unlimited" : String(l.downloads_left) }),
      el("td", { text: l.password ? "yes" : "no" }),
      el(
        "td",
        {},
        el("button", {
          type: "button",
          class: "danger",
          text: "Revoke",
          "aria-label": `Revoke the link to ${l.filename}`,
          onclick: () =>
            guarded(async () => {
              await api.call("DELETE", `/links/${enc(l.id)}`);
              status(`Revoked a link to ${l.filename}.`);
              await loadLinks();
            }),
        }),
      ),
    ),
  );
  replaceRows($("link-rows"), rows);
  show("links-empty", links.length === 0);
}

for (const dialog of document.querySelectorAll("dialog")) {
  for (const b of dialog.querySelectorAll(".close")) b.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    if (view === "files") guarded(loadFiles);
  });
}

// ---------------------------------------------------------------- start

(async () => {
  if (await api.resume()) signedIn();
  else showSignIn();
  document.body.dataset.ready = "1";
})();
