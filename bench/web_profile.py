"""Where the web app's upload time goes, measured inside the page (Debian's chromium, headless):

    python -m bench.web_profile [--size 64MiB] [--chunk 8MiB] [--modes local,nosum,xhrbuf,xhrblob]

One file, one server; for each mode the page walks the file in chunks and reports milliseconds
spent reading chunks into ArrayBuffers, hashing them (SubtleCrypto SHA-256) and sending them as
tus PATCHes, and the MB/s of the whole. Modes: ``local`` reads and hashes only (no network);
``nosum`` sends Blob slices with no checksum (fetch); ``xhrbuf`` / ``fetchbuf`` send the
ArrayBuffer that was hashed (the page before this benchmark); ``xhrblob`` / ``fetchblob`` hash
the ArrayBuffer but send the Blob slice. Each mode sends one after the other, without the app's
overlap of hashing and sending. The load average is printed (other work on the machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.transfer import MB, make_test_file, parse_size
from bench.web_upload import CHROMIUM, PASSWORD
from tests.server import Server

PROFILE = r"""
async ([chunk, mode]) => {
  const file = document.getElementById("bench-file").files[0];
  const api = await import(document.querySelector("script[type=module]").src.replace("app.js", "api.js"));
  const auth = { Authorization: `Bearer ${await api.fresh()}`, "Tus-Resumable": "1.0.0" };
  const t = { read: 0, digest: 0, send: 0, total: 0 };
  const start = performance.now();
  const b64 = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)));
  let url = null;
  if (mode !== "local") {
    const made = await fetch("/tus", { method: "POST", headers: { ...auth, "Upload-Length": String(file.size),
      "Upload-Metadata": `filename ${btoa(`profile-${mode}.bin`)}` } });
    url = new URL(made.headers.get("Location"), location.href).pathname;
  }
  for (let off = 0; off < file.size; off += chunk) {
    const blob = file.slice(off, Math.min(off + chunk, file.size));
    let body = blob;
    const headers = { ...auth, "Upload-Offset": String(off) };
    headers["Content-Type"] = "application/offset+octet-stream";
    let at = performance.now();
    if (mode !== "nosum") {
      const buf = await blob.arrayBuffer();
      t.read += performance.now() - at;
      at = performance.now();
      headers["Upload-Checksum"] = `sha256 ${b64(await crypto.subtle.digest("SHA-256", buf))}`;
      t.digest += performance.now() - at;
      at = performance.now();
      if (mode.endsWith("buf")) body = buf;
    }
    if (mode === "local") continue;
    if (mode.startsWith("xhr")) {
      await new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        xhr.open("PATCH", url);
        for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
        xhr.upload.onprogress = () => {};
        xhr.onload = () => (xhr.status < 300 ? resolve() : reject(new Error(`PATCH ${xhr.status}`)));
        xhr.onerror = () => reject(new Error("network error"));
        xhr.send(body);
      });
    } else {
      const resp = await fetch(url, { method: "PATCH", headers, body });
      if (!resp.ok) throw new Error(`PATCH ${resp.status}`);
    }
    t.send += performance.now() - at;
  }
  t.total = performance.now() - start;
  return t;
}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="64MiB")
    parser.add_argument("--chunk", default="8MiB")
    parser.add_argument("--modes", default="local,nosum,xhrbuf,xhrblob")
    args = parser.parse_args(argv)
    size, chunk = parse_size(args.size), parse_size(args.chunk)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        srv = Server(Path(tmp) / "srv").start()
        try:
            name, _ = srv.new_user(PASSWORD)
            src = make_test_file(Path(tmp) / "profile.bin", size)
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
                )
                page = browser.new_context(ignore_https_errors=True).new_page()
                page.goto(srv.url + "/")
                page.fill("#username", name)
                page.fill("#password", PASSWORD)
                page.click("#signin-submit")
                page.wait_for_selector("#files:not(.hidden)")
                page.evaluate(
                    """() => document.body.append(Object.assign(document.createElement("input"),
                       { type: "file", id: "bench-file", hidden: true }))"""
                )
                page.set_input_files("#bench-file", str(src.path))
                print(f"{args.size} in {args.chunk} chunks, load average {os.getloadavg()[0]:.1f}")
                print("| mode | read ms | hash ms | send ms | total ms | MB/s |")
                print("|---|---|---|---|---|---|")
                for mode in args.modes.split(","):
                    t = page.evaluate(PROFILE, [chunk, mode])
                    print(
                        f"| {mode} | {t['read']:.0f} | {t['digest']:.0f} | {t['send']:.0f} |"
                        f" {t['total']:.0f} | {size / MB / (t['total'] / 1000):.1f} |"
                    )
                browser.close()
        finally:
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
