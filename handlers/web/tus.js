// A small tus 1.0.0 client for vault's /tus: creation, chunked PATCH with Upload-Checksum
// (sha256), resume by file fingerprint, automatic retry, pause, resume and cancel.
//
// Speed and memory (bench/web_upload.py): a chunk's body is its Blob slice, which the browser
// streams from the file itself; an ArrayBuffer body is copied through the renderer and ran
// about 7x slower. The page reads a chunk only to hash it (SubtleCrypto has no incremental
// digest), one chunk ahead, while the previous one is on the wire, and keeps no reference to
// the bytes once hashed, so page memory stays flat whatever the file's size.

import { ApiError, fresh, renew } from "./api.js";

const TUS = { "Tus-Resumable": "1.0.0" };
const STORE = "vault.uploads"; // fingerprint -> upload URL (resume after a reload)
const RETRIES = 10; // network failures in a row before giving up
const RETRYABLE = new Set([0, 408, 409, 423, 429, 460, 500, 502, 503, 504]);
const WINDOW = 5000; // ms of progress the speed is measured over

export function chunkSize() {
  return Number(localStorage.getItem("vault.chunkSize")) || 8 * 1024 * 1024;
}

function remembered() {
  try {
    return JSON.parse(localStorage.getItem(STORE) || "{}");
  } catch {
    return {};
  }
}

function remember(fp, url) {
  const all = remembered();
  if (url) all[fp] = url;
  else delete all[fp];
  localStorage.setItem(STORE, JSON.stringify(all));
}

function b64(bytes) {
  let s = "";
  new Uint8Array(bytes).forEach((b) => {
    s += String.fromCharCode(b);
  });
  return btoa(s);
}

function utf8b64(text) {
  return b64(new TextEncoder().encode(text));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Upload {
  constructor(file, name, user, onchange) {
    this.file = file;
    this.name = name;
    this.size = file.size;
    this.fp = ["v1", user, name, file.size, file.lastModified].join("/");
    this.onchange = onchange;
    this.url = null;
    this.offset = null; // null: ask the server
    this.sent = 0; // bytes the server has, plus the current chunk's progress
    this.state = "queued";
    this.message = "";
    this.samples = [];
    this.xhr = null;
    this.running = null;
    this.resumedFrom = null;
    this.ahead = null; // {offset, chunk}: the next chunk, hashed while this one is sent
  }

  changed() {
    const now = performance.now();
    this.samples.push([now, this.sent]);
    while (this.samples.length > 2 && now - this.samples[0][0] > WINDOW) this.samples.shift();
    this.onchange(this);
  }

  speed() {
    if (this.samples.length < 2) return 0;
    const [t0, b0] = this.samples[0];
    const [t1, b1] = this.samples[this.samples.length - 1];
    return t1 > t0 ? ((b1 - b0) * 1000) / (t1 - t0) : 0;
  }

  start() {
    if (!this.running && !["done", "cancelled"].includes(this.state)) {
      this.paused = false;
      this.running = this.run().finally(() => {
        this.running = null;
      });
    }
    return this.running;
  }

  pause() {
    if (this.state === "done" || this.state === "cancelled") return;
    this.paused = true;
    this.xhr?.abort();
    this.set("paused", "Paused");
  }

  async cancel() {
    this.cancelled = true;
    this.xhr?.abort();
    this.set("cancelled", "Cancelled");
    remember(this.fp, null);
    if (this.url) {
      try {
        await this.request("DELETE", this.url, {});
      } catch {
        // it expires on its own
      }
    }
  }

  set(state, message) {
    this.state = state;
    this.message = message;
    this.changed();
  }

  async run() {
    let failures = 0;
    this.set("uploading", "Uploading");
    while (!this.paused && !this.cancelled) {
      try {
        if (this.url === null) await this.locate();
        else if (this.offset === null) await this.ask();
        if (this.offset >= this.size) break;
        await this.sendChunk();
        failures = 0;
        if (this.state !== "uploading") this.set("uploading", "Uploading");
      } catch (err) {
        if (this.paused || this.cancelled) return;
        if (!RETRYABLE.has(err.status) || ++failures > RETRIES) {
          this.set("failed", err.message);
          return;
        }
        this.offset = null; // whatever happened, ask the server where it stands
        const wait = err.retryAfter ? err.retryAfter * 1000 : Math.min(500 * 2 ** failures, 30000);
        this.set("retrying", `${err.message}: retrying in ${Math.ceil(wait / 1000)} s`);
        await sleep(wait);
      }
    }
    if (!this.paused && !this.cancelled) {
      remember(this.fp, null);
      this.sent = this.size;
      this.set("done", "Done");
    }
  }

  // An upload of this file left by an earlier page (same user, name, size and date) resumes
  // where the server has it; otherwise a new one is created.
  async locate() {
    const known = remembered()[this.fp];
    if (known) {
      this.url = known;
      try {
        await this.ask();
        this.resumedFrom = this.offset;
        return;
      } catch (err) {
        if (![403, 404, 410].includes(err.status)) throw err;
        remember(this.fp, null);
        this.url = null;
      }
    }
    const xhr = await this.request("POST", "/tus", {
      "Upload-Length": String(this.size),
      "Upload-Metadata": `filename ${utf8b64(this.name)}`,
    });
    this.url = new URL(xhr.getResponseHeader("Location"), location.href).pathname;
    this.offset = Number(xhr.getResponseHeader("Upload-Offset") || 0);
    this.sent = this.offset;
    if (this.size > 0) remember(this.fp, this.url);
  }

  async ask() {
    const xhr = await this.request("HEAD", this.url, {});
    this.offset = Number(xhr.getResponseHeader("Upload-Offset"));
    this.sent = this.offset;
    this.changed();
  }

  // The chunk at offset: its Blob slice and the checksum of its bytes.
  async read(offset) {
    const blob = this.file.slice(offset, Math.min(offset + chunkSize(), this.size));
    const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
    return { blob, end: offset + blob.size, checksum: `sha256 ${b64(digest)}` };
  }

  // The chunk at offset, hashed ahead if it was the one expected; then the next one is started.
  async chunkAt(offset) {
    const ahead = this.ahead;
    this.ahead = null;
    const chunk = await (ahead?.offset === offset ? ahead.chunk : this.read(offset));
    if (chunk.end < this.size) {
      const next = this.read(chunk.end);
      next.catch(() => {}); // a read error surfaces when that chunk is sent
      this.ahead = { offset: chunk.end, chunk: next };
    }
    return chunk;
  }

  async sendChunk() {
    const base = this.offset;
    const { blob, checksum } = await this.chunkAt(base);
    const xhr = await this.request(
      "PATCH",
      this.url,
      {
        "Upload-Offset": String(base),
        "Content-Type": "application/offset+octet-stream",
        "Upload-Checksum": checksum,
      },
      blob,
      (loaded) => {
        this.sent = base + loaded;
        this.changed();
      },
    );
    this.offset = Number(xhr.getResponseHeader("Upload-Offset"));
    this.sent = this.offset;
    this.changed();
  }

  // One XHR (for upload progress), with a token renewed first if it is about to expire; a
  // 401 renews once more and counts as a retryable failure.
  async request(method, url, headers, body, progress) {
    const token = await fresh();
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      this.xhr = xhr;
      xhr.open(method, url);
      xhr.setRequestHeader("Authorization", `Bearer ${token}`);
      for (const [k, v] of Object.entries({ ...TUS, ...headers })) xhr.setRequestHeader(k, v);
      if (progress) xhr.upload.onprogress = (e) => progress(e.loaded);
      xhr.onload = () => {
        this.xhr = null;
        if (xhr.status >= 200 && xhr.status < 300) {
          resolve(xhr);
          return;
        }
        let message = `${xhr.status} ${xhr.statusText}`;
        try {
          message = JSON.parse(xhr.responseText).message || message;
        } catch {
          // HEAD has no body
        }
        if (xhr.status === 404 && method === "HEAD") message = "Upload not found";
        const err = new ApiError(message, xhr.status);
        err.retryAfter = Number(xhr.getResponseHeader("Retry-After")) || 0;
        if (xhr.status === 401) {
          renew().then(
            () => reject(Object.assign(err, { status: 503 })),
            () => reject(err),
          );
          return;
        }
        reject(err);
      };
      xhr.onerror = () => {
        this.xhr = null;
        reject(new ApiError("Network error", 0));
      };
      xhr.onabort = () => {
        this.xhr = null;
        reject(new ApiError("Stopped", 0));
      };
      xhr.send(body === undefined ? null : body);
    });
  }
}

// Runs uploads a few at a time (the server allows uploads_per_user at once).
export class Queue {
  constructor(parallel = 2) {
    this.parallel = parallel;
    this.items = [];
  }

  add(upload) {
    this.items.push(upload);
    this.pump();
  }

  pump() {
    const active = this.items.filter((u) => u.running).length;
    const waiting = this.items.filter((u) => u.state === "queued" && !u.running);
    for (const u of waiting.slice(0, Math.max(0, this.parallel - active))) {
      u.start().finally(() => this.pump());
    }
  }
}
