"""Run a real vault server (python run.py, real TLS, real SQLite) for black-box tests."""

import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"vault listening on https://([^:]+):(\d+)")


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """A running ``run.py``; ``workdir`` holds its config, certificate and data directory."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    port: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "vault.db"

    @property
    def cert(self) -> Path:
        return self.workdir / "certs" / "cert.pem"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, port: int = 0, timeout: float = 30.0) -> "Server":
        config = self.workdir / "config.yaml"
        if not config.exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            config.write_text("data_dir: data\ntls_cert: certs/cert.pem\ntls_key: certs/key.pem\n")
        env = {**os.environ, "VAULT_BCRYPT_ROUNDS": "4", "VAULT_LOG_LEVEL": "INFO", **self.env}
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "--config", str(config), "--port", str(port or self.port)],
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("server exited during start-up:\n" + "".join(self.log))
            self.log.append(line)
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(2))
                os.set_blocking(self.process.stdout.fileno(), False)
                return self
        raise RuntimeError("server did not start in time:\n" + "".join(self.log))

    def output(self) -> str:
        """Everything the server printed so far."""
        if self.process and self.process.stdout:
            try:
                chunk = self.process.stdout.read()
            except (OSError, TypeError):
                chunk = None
            if chunk:
                self.log.append(chunk)
        return "".join(self.log)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output()
        if self.process and self.process.stdout and not self.process.stdout.closed:
            self.process.stdout.close()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def connection(self, timeout: float = 60.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.ssl_context(), timeout=timeout
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> Response:
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if isinstance(body, dict):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return Response(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def new_user(self, password: str = "correct horse battery") -> tuple[str, str]:  # noqa: S107
        """Register a fresh user and log in: (username, token)."""
        name = "u" + uuid.uuid4().hex[:12]
        assert self.request("POST", "/register", {"username": name, "password": password}).status == 201
        resp = self.request("POST", "/login", {"username": name, "password": password})
        assert resp.status == 200, resp.body
        return name, resp.json()["token"]

    def put_file(self, token: str, name: str, data: bytes) -> Response:
        from urllib.parse import quote

        return self.request("PUT", "/upload/" + quote(name, safe=""), data, token=token)
