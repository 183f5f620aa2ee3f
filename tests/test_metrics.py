"""Prometheus metrics on their own loopback listener, the JSON access log."""

import json
import os
import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import Server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int]]:
    port = free_port()
    env = {"VAULT_METRICS_PORT": str(port), "VAULT_ACCESS_LOG": "json"}
    srv = Server(tmp_path_factory.mktemp("metrics"), env=env).start()
    yield srv, port
    srv.stop()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:  # noqa: S310
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return str(resp.read().decode())


def value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} ([0-9.e+]+)$", text, re.M)
    assert match, f"{series} not in:\n{text}"
    return float(match.group(1))


def test_metrics_count_requests_bytes_and_durations_by_route(metered: tuple[Server, int]) -> None:
    server, port = metered
    _, token = server.new_user()
    data = os.urandom(300_000)
    assert server.put_file(token, "counted.bin", data).status == 201
    assert server.request("GET", "/download/counted.bin", token=token).body == data
    assert server.request("GET", "/download/absent.bin", token=token).status == 404
    text = scrape(port)
    assert value(text, 'vault_http_requests_total{route="/upload/(.*)",method="PUT",status="201"}') >= 1
    assert value(text, 'vault_http_requests_total{route="/download/(.+)",method="GET",status="404"}') >= 1
    assert value(text, 'vault_transfer_bytes_total{direction="in"}') >= len(data)
    assert value(text, 'vault_transfer_bytes_total{direction="out"}') >= len(data)
    assert value(text, 'vault_transfer_duration_seconds_count{kind="upload"}') >= 1
    assert value(text, 'vault_transfer_duration_seconds_bucket{kind="download",le="+Inf"}') >= 1
    assert value(text, "vault_database_bytes") > 0
    for gauge in ("vault_uploads_in_progress", "vault_bcrypt_queue_depth", "vault_throttled_requests_total"):
        assert value(text, gauge) >= 0
    assert value(text, "vault_integrity_failures_total") == 0


def test_metrics_never_name_files_users_or_link_secrets(metered: tuple[Server, int]) -> None:
    server, port = metered
    name, token = server.new_user()
    secret_name = "secret-plans-q3.pdf"
    assert server.put_file(token, secret_name, b"plans").status == 201
    url = server.request("POST", f"/files/{secret_name}/links", {}, token=token).json()["url"]
    link_secret = url.rsplit("/", 1)[1]
    assert server.request("GET", url.split(str(server.port), 1)[1]).body == b"plans"
    assert server.request("GET", "/s/" + "x" * 22).status == 404
    text = scrape(port)
    assert 'route="/s/([A-Za-z0-9_-]{16,64})"' in text  # the public link route is counted, by its pattern
    for private in (name, secret_name, "secret-plans", link_secret, "x" * 22):
        assert private not in text


def test_metrics_are_not_served_on_the_public_port(metered: tuple[Server, int]) -> None:
    server, _ = metered
    assert server.request("GET", "/metrics").status == 404


def test_the_json_access_log_is_one_object_per_line_without_link_secrets(
    metered: tuple[Server, int], tmp_path: Path
) -> None:
    server, _ = metered
    _, token = server.new_user()
    assert server.put_file(token, "logged.bin", b"x").status == 201
    url = server.request("POST", "/files/logged.bin/links", {}, token=token).json()["url"]
    secret = url.rsplit("/", 1)[1]
    assert server.request("GET", url.split(str(server.port), 1)[1]).status == 200
    entries = [
        json.loads(line.split("tornado.access: ", 1)[1])
        for line in server.output().splitlines()
        if "tornado.access: {" in line
    ]
    assert {"status", "method", "path", "route", "client", "ms", "bytes_in"} <= set(entries[-1])
    assert any(e["route"] == "/upload/(.*)" and e["status"] == 201 for e in entries)
    assert secret not in server.output()
