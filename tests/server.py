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
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    root: Path = ROOT  # the source tree whose run.py runs (bench/transfer.py --baseline)
    launcher: tuple[str, ...] = ()  # argv before run.py (bench: bench/named_threads.py)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "vault.db"

    @property
    def database_url(self) -> str:
        """The PostgreSQL database of a server started with ``storage: postgres`` (else "")."""
        return self.env.get("VAULT_DATABASE_URL", "") if self.env.get("VAULT_STORAGE") == "postgres" else ""

    @property
    def cert(self) -> Path:
        return self.workdir / "certs" / "cert.pem"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def start(self, port: int = 0, timeout: float = 30.0) -> "Server":
        config = self.workdir / "config.yaml"
        if not config.exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            config.write_text("data_dir: data\ntls_cert: certs/cert.pem\ntls_key: certs/key.pem\n")
        env = {
            **os.environ,
            "VAULT_BCRYPT_ROUNDS": "4",
            "VAULT_LOG_LEVEL": "INFO",
            # Every test logs in from 127.0.0.1 and some fail on purpose: throttling is tested
            # on servers of its own (tests/test_throttle.py).
            "VAULT_LOGIN_FREE_ATTEMPTS": "1000000",
            # A test that ends with a request still open (a stalled body) must not make the
            # stop wait the whole default grace period (tests/test_faults.py tests the grace).
            "VAULT_SHUTDOWN_GRACE": "3",
            "VAULT_REGISTER_PER_ADDRESS": "0",  # every test registers from 127.0.0.1
            "VAULT_REGISTER_PER_HOUR": "0",
            # The tests register their users freely; the default (invite) is tested on servers
            # of its own (tests/test_registration.py).
            "VAULT_REGISTRATION": "open",
            # No 32 MiB reserve file in every test's data directory; tests/test_faults.py tests
            # the reserve on a small file system of its own.
            "VAULT_DISK_RESERVE": "0",
            **self.env,
        }
        start_at = self.log_path.stat().st_size if self.log_path.exists() else 0
        # A file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    *self.launcher,
                    str(self.root / "run.py"),
                    "--config",
                    str(config),
                    "--port",
                    str(port or self.port),
                ],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output()[start_at:]
            match = _LISTENING.search(text)
            if match:
                self.port = int(match.group(2))
                return self
            if self.process.poll() is not None:
                raise RuntimeError("server exited during start-up:\n" + text)
            time.sleep(0.05)
        self.process.kill()
        raise RuntimeError("server did not start in time:\n" + self.output()[start_at:])

    def output(self) -> str:
        """Everything the server printed so far (over all its starts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def admin(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[bytes]:
        """``run.py admin ARGS`` on this server's config and data (it may be running)."""
        return subprocess.run(
            [
                sys.executable,
                str(ROOT / "run.py"),
                "admin",
                "--config",
                str(self.workdir / "config.yaml"),
                *args,
            ],
            input=stdin.encode(),
            capture_output=True,
            timeout=120,
            check=False,
            env={**os.environ, "VAULT_BCRYPT_ROUNDS": "4", **self.env},
        )

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
