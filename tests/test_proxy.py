"""vault behind a real nginx (docs/deploy/nginx-vault.conf) on loopback: streaming both ways,
tus, and the client address taken from X-Forwarded-For only because the proxy is trusted."""

import base64
import http.client
import json
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import ROOT, Server
from vault.tls import ensure_certificate

RECIPE = ROOT / "docs" / "deploy" / "nginx-vault.conf"
CLIENT_ADDRESS = "127.0.0.5"  # the client binds here; nginx sees it, vault sees nginx's 127.0.0.1
PASSWORD = "correct horse battery"  # noqa: S105 (a test password)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nginx:
    def __init__(self, prefix: Path, vault: Server) -> None:
        self.prefix, self.port = prefix, free_port()
        self.cert, self.key = prefix / "proxy-cert.pem", prefix / "proxy-key.pem"
        ensure_certificate(self.cert, self.key)
        self.write_conf(
            RECIPE.read_text()
            .replace("127.0.0.1:5000", f"127.0.0.1:{vault.port}")
            .replace("listen 443 ssl", f"listen 127.0.0.1:{self.port} ssl")
            .replace("/etc/ssl/vault/fullchain.pem", str(self.cert))
            .replace("/etc/ssl/vault/privkey.pem", str(self.key))
            .replace("/srv/vault/certs/cert.pem", str(vault.cert))
        )
        self.process: subprocess.Popen[bytes] | None = None

    def write_conf(self, recipe: str, log_format: str = "") -> None:
        """nginx.conf around a deploy recipe: everything under the prefix, in the foreground;
        ``log_format`` names a format the recipe's caller defines in ``http``."""
        prefix = self.prefix
        temp = "".join(
            f"{kind}_temp_path {prefix}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""
        formats = f"log_format {log_format};\n" if log_format else ""
        used = f" {log_format.split()[0]}" if log_format else ""
        (prefix / "nginx.conf").write_text(
            f"{user}worker_processes 1;\ndaemon off;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log;\n"
            "events { worker_connections 64; }\n"
            f"http {{\n{formats}access_log {prefix}/access.log{used};\n{temp}{recipe}\n}}\n"
        )

    def start(self) -> "Nginx":
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen(
            [nginx, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError("nginx did not start:\n" + (self.prefix / "error.log").read_text(errors="replace"))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def connection(self) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=str(self.cert))
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=context, timeout=60, source_address=(CLIENT_ADDRESS, 0)
        )

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Server, Nginx]]:
    vault = Server(tmp_path / "vault", env={"VAULT_TRUSTED_PROXIES": "127.0.0.1"}).start()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    proxy = Nginx(prefix, vault)
    try:
        yield vault, proxy.start()
    finally:
        proxy.stop()
        vault.stop()


def login_through(proxy: Nginx, name: str) -> str:
    body = json.dumps({"username": name, "password": PASSWORD}).encode()
    status, _, answer = proxy.request("POST", "/login", body, {"Content-Type": "application/json"})
    assert status == 200, answer
    return str(json.loads(answer)["token"])


def test_files_move_both_ways_through_nginx_streaming(proxied: tuple[Server, Nginx]) -> None:
    vault, proxy = proxied
    name, _ = vault.new_user()
    auth = {"Authorization": f"Bearer {login_through(proxy, name)}"}
    data = os.urandom(8 * 1024 * 1024 + 17)
    status, _, answer = proxy.request("PUT", "/upload/big.bin", data, auth)
    assert status == 201, answer
    status, headers, body = proxy.request("GET", "/download/big.bin", None, auth)
    assert (status, len(body), body == data) == (200, len(data), True)
    status, _, body = proxy.request(
        "GET", "/download/big.bin", None, {**auth, "Range": "bytes=5000000-5000099"}
    )
    assert (status, body) == (206, data[5000000:5000100])


def test_a_tus_upload_through_nginx(proxied: tuple[Server, Nginx]) -> None:
    vault, proxy = proxied
    name, _ = vault.new_user()
    auth = {"Authorization": f"Bearer {login_through(proxy, name)}", "Tus-Resumable": "1.0.0"}
    data = os.urandom(3 * 1024 * 1024 + 5)
    meta = "filename " + base64.b64encode(b"tus.bin").decode()
    status, headers, _ = proxy.request(
        "POST", "/tus", b"", {**auth, "Upload-Length": str(len(data)), "Upload-Metadata": meta}
    )
    assert status == 201
    location = headers["Location"]
    assert location.startswith(f"https://127.0.0.1:{proxy.port}/tus/")  # names the proxy, not vault
    path = location.split(str(proxy.port), 1)[1]
    half = len(data) // 2
    for offset, chunk in ((0, data[:half]), (half, data[half:])):
        patch = {**auth, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
        status, answer_headers, _ = proxy.request("PATCH", path, chunk, patch)
        assert status == 204
        assert int(answer_headers["Upload-Offset"]) == offset + len(chunk)
    status, _, body = proxy.request("GET", "/download/tus.bin", None, auth)
    assert (status, body == data) == (200, True)


def test_the_client_address_comes_from_x_forwarded_for_of_the_trusted_proxy(
    proxied: tuple[Server, Nginx],
) -> None:
    vault, proxy = proxied
    name = "proxied-user"
    assert vault.request("POST", "/register", {"username": name, "password": PASSWORD}).status == 201
    login_through(proxy, name)
    body = json.dumps({"username": name, "password": PASSWORD}).encode()
    forged = {"Content-Type": "application/json", "X-Forwarded-For": "198.51.100.9"}
    assert proxy.request("POST", "/login", body, forged)[0] == 200
    deadline = time.monotonic() + 10
    rows: list[tuple[str]] = []
    while len(rows) < 2 and time.monotonic() < deadline:
        with sqlite3.connect(vault.db_path) as con:
            sql = "SELECT address FROM audit WHERE action = 'login' AND actor = ? ORDER BY seq"
            rows = con.execute(sql, (name,)).fetchall()
        time.sleep(0.05)
    # The address nginx saw, both times: a header the client sends itself is only added to.
    assert rows == [(CLIENT_ADDRESS,), (CLIENT_ADDRESS,)]
