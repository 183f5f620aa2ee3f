"""Locust load test for vault: register + log in once per user, then a weighted mix of uploads,
verified downloads (full and ranged), listings and deletes. Driven by ``python -m bench.load``.

    VAULT_CA=certs/cert.pem locust -f bench/locustfile.py --host https://127.0.0.1:5000

Every response is checked (status, JSON fields, sha256 of whole downloads, bytes of ranges,
the listing against what this user holds); a mismatch is a locust failure. Each user keeps at
most ``MAX_FILES`` files and only their size, seed and sha256: the content is regenerated from
the seed when a range has to be checked, so memory does not grow with the number of users.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import random
import secrets
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from locust import HttpUser, between, task
from locust.exception import StopUser

KiB = 1024
MiB = 1024 * KiB
MIN_SIZE = 4 * KiB
MAX_SIZE = 4 * MiB
MAX_FILES = 5  # per user
MAX_RANGE = 3 * MiB // 2  # long enough to cross 1 MiB segment boundaries

log = logging.getLogger("vault.locust")


def ca_bundle() -> str | bool:
    """The server's (self-signed) certificate from VAULT_CA; without it, this session skips checks."""
    path = os.environ.get("VAULT_CA")
    if path:
        return path
    log.warning("VAULT_CA is not set: TLS certificates are NOT verified for these users")
    return False


def content(seed: int, size: int) -> bytes:
    """The (reproducible) bytes of a test file."""
    return random.Random(seed).randbytes(size)


def repr_digest(sha256_hex: str) -> str:
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode() + ":"


@dataclass
class StoredFile:
    name: str
    size: int
    seed: int
    sha256: str


def short(body: bytes, limit: int = 200) -> str:
    return body[:limit].decode("utf-8", errors="replace")


class VaultUser(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.client.verify = ca_bundle()
        self.username = "load-" + uuid.uuid4().hex[:16]
        self.password = secrets.token_urlsafe(18)
        self.files: dict[str, StoredFile] = {}
        self.counter = 0
        credentials = {"username": self.username, "password": self.password}
        with self.client.post("/register", json=credentials, name="/register", catch_response=True) as resp:
            if resp.status_code != 201:
                resp.failure(f"register: HTTP {resp.status_code}: {short(resp.content)}")
                raise StopUser()
            resp.success()
        with self.client.post("/login", json=credentials, name="/login", catch_response=True) as resp:
            token = None
            if resp.status_code == 200:
                try:
                    token = resp.json().get("token")
                except ValueError:
                    pass
            if not isinstance(token, str) or not token:
                resp.failure(f"login: HTTP {resp.status_code}: {short(resp.content)}")
                raise StopUser()
            resp.success()
        self.client.headers["Authorization"] = f"Bearer {token}"

    # ------------------------------------------------------------------ helpers

    def new_file(self) -> tuple[StoredFile, bytes]:
        """Random content; at MAX_FILES the new upload replaces one of this user's files."""
        if len(self.files) >= MAX_FILES:
            name = random.choice(list(self.files))
        else:
            self.counter += 1
            name = f"f{self.counter}-{uuid.uuid4().hex[:8]}.bin"
        seed = random.getrandbits(64)
        size = random.randint(MIN_SIZE, MAX_SIZE)
        data = content(seed, size)
        return StoredFile(name, size, seed, hashlib.sha256(data).hexdigest()), data

    def pick(self) -> StoredFile | None:
        return random.choice(list(self.files.values())) if self.files else None

    def check_upload(self, resp: Any, f: StoredFile) -> None:
        if resp.status_code != 201:
            resp.failure(f"upload: HTTP {resp.status_code}: {short(resp.content)}")
            return
        try:
            body = resp.json()
        except ValueError:
            resp.failure(f"upload: response is not JSON: {short(resp.content)}")
            return
        got = (body.get("filename"), body.get("size"), body.get("sha256"))
        if got != (f.name, f.size, f.sha256):
            resp.failure(f"upload: server reported {got}, expected {(f.name, f.size, f.sha256)}")
            return
        self.files[f.name] = f
        resp.success()

    def check_digest_header(self, resp: Any, f: StoredFile) -> bool:
        if resp.headers.get("Repr-Digest") != repr_digest(f.sha256):
            resp.failure(f"download: Repr-Digest {resp.headers.get('Repr-Digest')!r} is not the file's")
            return False
        return True

    # ------------------------------------------------------------------ tasks

    @task(3)
    def upload_multipart(self) -> None:
        f, data = self.new_file()
        with self.client.post(
            "/upload",
            files={"file": (f.name, data, "application/octet-stream")},
            name="/upload (multipart)",
            catch_response=True,
        ) as resp:
            self.check_upload(resp, f)

    @task(3)
    def upload_put(self) -> None:
        f, data = self.new_file()
        with self.client.put(
            "/upload/" + quote(f.name, safe=""),
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            name="/upload/[name]",
            catch_response=True,
        ) as resp:
            self.check_upload(resp, f)

    @task(5)
    def download(self) -> None:
        f = self.pick()
        if f is None:
            self.upload_put()
            return
        with self.client.get(
            "/download/" + quote(f.name, safe=""), name="/download/[name]", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"download: HTTP {resp.status_code}: {short(resp.content)}")
                return
            body = resp.content
            if len(body) != f.size:
                resp.failure(f"download: got {len(body)} bytes, expected {f.size}")
                return
            digest = hashlib.sha256(body).hexdigest()
            if digest != f.sha256:
                resp.failure(f"download: sha256 of the body differs from the upload's (size {f.size})")
                return
            if self.check_digest_header(resp, f):
                resp.success()

    @task(4)
    def download_range(self) -> None:
        f = self.pick()
        if f is None:
            self.upload_multipart()
            return
        if random.random() < 0.2:  # suffix range: the last n bytes
            n = random.randint(1, min(f.size, MAX_RANGE))
            start, end = f.size - n, f.size - 1
            spec = f"bytes=-{n}"
        else:
            start = random.randrange(f.size)
            end = min(f.size - 1, start + random.randint(0, MAX_RANGE - 1))
            spec = f"bytes={start}-{end}"
        with self.client.get(
            "/download/" + quote(f.name, safe=""),
            headers={"Range": spec},
            name="/download/[name] (range)",
            catch_response=True,
        ) as resp:
            if resp.status_code != 206:
                resp.failure(f"range: HTTP {resp.status_code} for {spec}: {short(resp.content)}")
                return
            expected_range = f"bytes {start}-{end}/{f.size}"
            if resp.headers.get("Content-Range") != expected_range:
                resp.failure(f"range: Content-Range {resp.headers.get('Content-Range')!r} for {spec}")
                return
            if resp.content != content(f.seed, f.size)[start : end + 1]:
                resp.failure(f"range: wrong bytes for {spec} (got {len(resp.content)} bytes)")
                return
            if self.check_digest_header(resp, f):
                resp.success()

    @task(2)
    def list_files(self) -> None:
        with self.client.get("/files", name="/files", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"list: HTTP {resp.status_code}: {short(resp.content)}")
                return
            try:
                listed = {e["filename"]: (e["size"], e["sha256"]) for e in resp.json()["files"]}
            except (ValueError, KeyError, TypeError) as exc:
                resp.failure(f"list: unexpected response ({exc!r}): {short(resp.content)}")
                return
            expected = {f.name: (f.size, f.sha256) for f in self.files.values()}
            if listed != expected:
                resp.failure(
                    f"list: {len(listed)} file(s) listed, expected {len(expected)} (or sizes differ)"
                )
                return
            resp.success()

    @task(1)
    def delete(self) -> None:
        f = self.pick()
        if f is None:
            return
        with self.client.delete(
            "/files/" + quote(f.name, safe=""), name="/files/[name]", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"delete: HTTP {resp.status_code}: {short(resp.content)}")
                return
            del self.files[f.name]
            resp.success()
