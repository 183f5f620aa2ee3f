"""Web app upload benchmark: the browser's tus client (Debian's chromium, headless, Playwright)
against ``curl -T`` as the reference, on the same file and server in one run.

    python -m bench.web_upload [--sizes 256MiB,1GiB] [--json out.json]

For each size: ``curl -T`` to ``PUT /upload/`` (the reference), then the same file dropped on
the web app's picker (8 MiB tus chunks, each hashed for Upload-Checksum), timed from the pick
to the row saying "Done". Reported: MB/s of each and their ratio, server CPU-seconds per GB of
each, and the peak resident memory of the browser's renderer processes (VmRSS, sampled every
100 ms): flat across sizes means the page reads the file by slices, never whole. The stored
file's SHA-256 is checked against the source after each upload.
"""

from __future__ import annotations

import argparse
import json
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


def renderer_rss() -> int:
    """The largest VmRSS among chromium's renderer processes, bytes."""
    peak = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if b"chromium" not in cmdline or b"--type=renderer" not in cmdline:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            continue
    return peak


class PeakSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.peak = max(self.peak, renderer_rss())


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


def stored_sha(srv: Server, token: str, name: str) -> str:
    files = srv.request("GET", "/files", token=token).json()["files"]
    return str(next(f["sha256"] for f in files if f["filename"] == name))


def run_size(page: Any, srv: Server, token: str, scratch: Path, size: int) -> dict[str, Any]:
    src = make_test_file(scratch / f"web-{size}.bin", size)
    stats = ProcStats(srv.process.pid if srv.process else 0)
    cpu0 = stats.cpu_seconds()
    curl_s = curl_put(srv, token, src.path, "ref.bin")
    curl_cpu = stats.cpu_seconds() - cpu0
    assert stored_sha(srv, token, "ref.bin") == src.sha256
    idle = renderer_rss()
    sampler = PeakSampler()
    sampler.start()
    cpu0 = stats.cpu_seconds()
    start = time.monotonic()
    page.set_input_files("#picker", str(src.path))
    page.locator(f"#uploads li[data-state=done]:has-text('{src.path.name}')").wait_for(timeout=3_600_000)
    web_s = time.monotonic() - start
    web_cpu = stats.cpu_seconds() - cpu0
    sampler.stop.set()
    sampler.join()
    assert stored_sha(srv, token, src.path.name) == src.sha256
    src.path.unlink()
    gb = size / 1e9
    return {
        "size": size,
        "curl_mb_s": size / MB / curl_s,
        "web_mb_s": size / MB / web_s,
        "ratio": curl_s / web_s,
        "curl_server_cpu_per_gb": curl_cpu / gb,
        "web_server_cpu_per_gb": web_cpu / gb,
        "renderer_idle_rss": idle,
        "renderer_peak_rss": sampler.peak,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256MiB,1GiB")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    from playwright.sync_api import sync_playwright

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        srv = Server(scratch / "srv").start()
        try:
            name, token = srv.new_user(PASSWORD)
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
                for size in sizes:
                    print(f"uploading {mib(size):.0f} MiB ...", file=sys.stderr)
                    results.append(run_size(page, srv, token, scratch, size))
                browser.close()
        finally:
            srv.stop()
    print(
        "| size | curl -T MB/s | web app MB/s | web/curl | server CPU-s/GB curl / web"
        " | renderer RSS idle / peak |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {mib(r['size']):.0f} MiB | {r['curl_mb_s']:.0f} | {r['web_mb_s']:.0f} | {r['ratio']:.2f} |"
            f" {r['curl_server_cpu_per_gb']:.1f} / {r['web_server_cpu_per_gb']:.1f} |"
            f" {mib(r['renderer_idle_rss']):.0f} / {mib(r['renderer_peak_rss']):.0f} MiB |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
