"""Web app upload benchmark: the browser's tus client (Debian's chromium, headless, Playwright)
against ``curl -T`` as the reference, on the same file and server in one run.

    python -m bench.web_upload [--sizes 256MiB,1GiB] [--chunk 8MiB] [--json out.json]

For each size: ``curl -T`` to ``PUT /upload/`` (the reference), then the browser's ceiling (the
whole file as one tus PATCH from the page, its body the File itself, no checksum), then the
same file dropped on
the web app's picker (tus chunks of --chunk, each hashed for Upload-Checksum), timed from the
pick to the row saying "Done". Reported: MB/s of each and their ratio, server CPU-seconds per
GB of each, and the peak resident memory of the browser's renderer processes and of all of
chromium's processes together (VmRSS, sampled every 100 ms): flat across sizes means the page
reads the file by slices, never whole. The stored file's SHA-256 is checked against the source
after each upload. The load average is printed with the table (other work on the machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.transfer import MB, ProcStats, make_test_file, mib, parse_size
from tests.server import Server

PASSWORD = "correct horse battery"  # noqa: S105  # a throwaway account on a temporary server
CHROMIUM = "/usr/bin/chromium"


def chromium_rss(browser_pid: int) -> tuple[int, int]:
    """(the largest VmRSS among the renderer processes, the sum of Pss over all processes: shared
    pages counted once) of the chromium whose browser process is browser_pid, bytes."""
    renderer = total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if int(proc.name) != browser_pid and not _parent_is(proc, browser_pid):
                continue
            rss = _kib(proc / "status", "VmRSS:")
            pss = _kib(proc / "smaps_rollup", "Pss:")
        except (OSError, StopIteration, ValueError):
            continue
        total += pss
        if b"--type=renderer" in cmdline:
            renderer = max(renderer, rss)
    return renderer, total


def _kib(path: Path, key: str) -> int:
    return next(int(line.split()[1]) * 1024 for line in path.read_text().splitlines() if line.startswith(key))


def _parent_is(proc: Path, pid: int) -> bool:
    """Whether pid is an ancestor of proc (chromium's zygote sits between browser and renderer)."""
    for _ in range(4):
        ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            return True
        if ppid <= 1:
            return False
        proc = Path("/proc") / str(ppid)
    return False


def browser_pid() -> int:
    """The pid of the chromium browser process this benchmark started (a child of Playwright's
    driver, which is a child of this process)."""
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            argv0 = cmdline.split(b"\0", 1)[0]
            if argv0.endswith(b"/chromium") and b"--type=" not in cmdline and _parent_is(proc, me):
                return int(proc.name)
        except (OSError, ValueError, IndexError):
            continue
    raise RuntimeError("chromium's browser process was not found")


class PeakSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.renderer = self.total = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            renderer, total = chromium_rss(self.pid)
            self.renderer = max(self.renderer, renderer)
            self.total = max(self.total, total)


def curl_put(srv: Server, token: str, path: Path, name: str) -> float:
    start = time.monotonic()
    subprocess.run(
        [
            "curl",
            "--cacert",
            str(srv.cert),
            "-sS",
            "-f",
            "-o",
            "/dev/null",
            "-H",
            f"Authorization: Bearer {token}",
        ]
        + ["-T", str(path), f"{srv.url}/upload/{name}"],
        check=True,
    )
    return time.monotonic() - start


def login(srv: Server, user: str) -> str:
    """A fresh access token (a big upload outlasts one)."""
    return str(srv.request("POST", "/login", {"username": user, "password": PASSWORD}).json()["token"])


def stored_sha(srv: Server, user: str, name: str) -> str:
    """The stored file's SHA-256; the file is then deleted (a 10 GiB run keeps the disk free)."""
    token = login(srv, user)
    files = srv.request("GET", "/files", token=token).json()["files"]
    sha = str(next(f["sha256"] for f in files if f["filename"] == name))
    conn = srv.connection(timeout=1800)  # deleting a 4 GiB file under load took over a minute
    try:
        conn.request("DELETE", f"/files/{name}", headers={"Authorization": f"Bearer {token}"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    return sha


# The browser's own ceiling: the whole file as one tus PATCH whose body is the File (a Blob),
# no checksum, no chunks, no page work; what the web app loses beyond this is its own.
BARE_PATCH = """async (name) => {
  const file = document.getElementById("bench-file").files[0];
  const src = document.querySelector("script[type=module]").src.replace("app.js", "api.js");
  const auth = { Authorization: `Bearer ${await (await import(src)).fresh()}`, "Tus-Resumable": "1.0.0" };
  const made = await fetch("/tus", { method: "POST", headers: { ...auth, "Upload-Length": String(file.size),
    "Upload-Metadata": `filename ${btoa(name)}` } });
  const url = new URL(made.headers.get("Location"), location.href).pathname;
  const start = performance.now();
  const sent = await fetch(url, { method: "PATCH", body: file, headers: { ...auth, "Upload-Offset": "0",
    "Content-Type": "application/offset+octet-stream" } });
  if (!sent.ok) throw new Error(`PATCH ${sent.status}`);
  return (performance.now() - start) / 1000;
}"""


def run_size(
    page: Any, pid: int, srv: Server, user: str, scratch: Path, size: int, web_only: bool = False
) -> dict[str, Any]:
    src = make_test_file(scratch / f"web-{size}.bin", size)
    stats = ProcStats(srv.process.pid if srv.process else 0)
    curl_s = curl_cpu = bare_s = math.nan
    if not web_only:
        cpu0 = stats.cpu_seconds()
        curl_s = curl_put(srv, login(srv, user), src.path, "ref.bin")
        curl_cpu = stats.cpu_seconds() - cpu0
        assert stored_sha(srv, user, "ref.bin") == src.sha256
        page.set_input_files("#bench-file", str(src.path))
        bare_s = page.evaluate(BARE_PATCH, "bare.bin")
        assert stored_sha(srv, user, "bare.bin") == src.sha256
    idle, _ = chromium_rss(pid)
    sampler = PeakSampler(pid)
    sampler.start()
    cpu0 = stats.cpu_seconds()
    start = time.monotonic()
    page.set_input_files("#picker", str(src.path))
    page.locator(f"#uploads li[data-state=done]:has-text('{src.path.name}')").wait_for(timeout=3_600_000)
    web_s = time.monotonic() - start
    web_cpu = stats.cpu_seconds() - cpu0
    sampler.stop.set()
    sampler.join()
    assert stored_sha(srv, user, src.path.name) == src.sha256
    src.path.unlink()
    gb = size / 1e9
    return {
        "size": size,
        "curl_mb_s": size / MB / curl_s,
        "web_mb_s": size / MB / web_s,
        "ratio": curl_s / web_s,
        "bare_mb_s": size / MB / bare_s,
        "curl_server_cpu_per_gb": curl_cpu / gb,
        "web_server_cpu_per_gb": web_cpu / gb,
        "renderer_idle_rss": idle,
        "renderer_peak_rss": sampler.renderer,
        "chromium_peak_rss": sampler.total,
        "loadavg": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256MiB,1GiB")
    parser.add_argument("--chunk", default="8MiB", help="the page's tus chunk size")
    parser.add_argument(
        "--web-only", action="store_true", help="only the web app (page memory of a big upload; no ratios)"
    )
    parser.add_argument(
        "--force-gc",
        action="store_true",
        help="collect the page's garbage every 500 ms (what memory is live)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    from playwright.sync_api import sync_playwright

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        srv = Server(scratch / "srv").start()
        try:
            name, _ = srv.new_user(PASSWORD)
            with sync_playwright() as p:
                flags = ["--no-sandbox", "--disable-gpu"] + (
                    ["--js-flags=--expose-gc"] if args.force_gc else []
                )
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
                context = browser.new_context(ignore_https_errors=True)
                if args.force_gc:  # garbage is then never more than half a second old
                    context.add_init_script("setInterval(() => window.gc(), 500);")
                context.add_init_script(
                    f"localStorage.setItem('vault.chunkSize', '{parse_size(args.chunk)}')"
                )
                page = context.new_page()
                pid = browser_pid()
                page.goto(srv.url + "/")
                page.fill("#username", name)
                page.fill("#password", PASSWORD)
                page.click("#signin-submit")
                page.wait_for_selector("#files:not(.hidden)")
                page.evaluate(
                    """() => document.body.append(Object.assign(document.createElement("input"),
                       { type: "file", id: "bench-file", hidden: true }))"""
                )
                for size in sizes:
                    print(f"uploading {mib(size):.0f} MiB ...", file=sys.stderr)
                    results.append(run_size(page, pid, srv, name, scratch, size, args.web_only))
                    print(json.dumps(results[-1]), file=sys.stderr)
                browser.close()
        finally:
            srv.stop()
    print(f"chunk {args.chunk}")
    print(
        "| size | curl -T MB/s | browser, one bare PATCH MB/s | web app MB/s | web/curl"
        " | server CPU-s/GB curl / web | renderer RSS idle / peak"
        " | chromium Pss peak (all processes) | load average |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {mib(r['size']):.0f} MiB | {r['curl_mb_s']:.0f} | {r['bare_mb_s']:.0f} |"
            f" {r['web_mb_s']:.0f} | {r['ratio']:.2f} |"
            f" {r['curl_server_cpu_per_gb']:.1f} / {r['web_server_cpu_per_gb']:.1f} |"
            f" {mib(r['renderer_idle_rss']):.0f} / {mib(r['renderer_peak_rss']):.0f} MiB |"
            f" {mib(r['chromium_peak_rss']):.0f} MiB | {r['loadavg']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
