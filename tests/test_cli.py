"""The ``vault`` command-line client (vaultcli/) against the real run.py over TLS.

Interruptions are placed with a pacing TCP relay in front of the server (TLS passes through
it untouched): the test waits until a known number of bytes went through, then kills the
client with SIGINT or SIGKILL, and runs the same command again.
"""

import base64
import hashlib
import http.client
import http.server
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.marks import needs_curl
from tests.server import ROOT, Server

MiB = 1 << 20
PASSWORD = "correct horse battery"
EXIT_INTEGRITY = 3


class Relay:
    """A TCP relay on a free loopback port that forwards to the server and counts the bytes
    each way. ``hold(direction, nbytes)`` stops it forwarding that way once ``nbytes`` have
    gone, so a test interrupts a transfer at a real midpoint, however fast the transfer is."""

    def __init__(self, port: int, connect: bool = False) -> None:
        self.target = port
        self.held: tuple[str, int] | None = None
        self.connect = connect  # act as an HTTP CONNECT proxy: the client names the target
        self.tunnels: list[bytes] = []
        self.counts = {"up": 0, "down": 0}
        self.changed = threading.Condition()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.connect:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += client.recv(4096)
                self.tunnels.append(request.split(b"\r\n")[0])
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while data := src.recv(64 * 1024):
                dst.sendall(data)
                with self.changed:
                    self.counts[direction] += len(data)
                    self.changed.notify_all()
                    self.changed.wait_for(lambda: not self.holding(direction))
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def holding(self, direction: str) -> bool:
        return self.held is not None and self.held[0] == direction and self.counts[direction] >= self.held[1]

    def hold(self, direction: str, nbytes: int) -> None:
        with self.changed:
            self.held = (direction, nbytes)

    def release(self) -> None:
        """Drop every open connection (what a held one had left is never delivered) and
        forward freely again."""
        with self.changed:
            self.held = None
            self.cut()
            self.changed.notify_all()

    def cut(self) -> None:
        """Drop every open connection (the client sees a network error), keep listening."""
        for sock in self.sockets[1:]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def wait_for(self, direction: str, nbytes: int, timeout: float = 60.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.counts[direction] >= nbytes, timeout), self.counts

    def close(self) -> None:
        self.release()
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass


Tamper = Callable[[str, str, http.client.HTTPMessage, bytes], bytes]


class TamperingProxy:
    """A TLS-terminating HTTP proxy in front of the real server, with the server's own
    certificate (so the client trusts it as it trusts the server): requests go through as they
    are, and ``tamper(method, path, headers, body)`` may change each answer's headers (in place)
    and returns its body; a request for which ``refuse(method, path)`` is true gets a 503 instead.
    Bodies are small in these tests: each is read whole."""

    def __init__(
        self, server: Server, tamper: Tamper, refuse: Callable[[str, str], bool] | None = None
    ) -> None:
        upstream = server.ssl_context()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if refuse is not None and refuse(self.command, self.path):  # as an overloaded server would
                    self.send_response(503)
                    message = b'{"message": "Try again later", "status": 503}'
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(message)))
                    self.end_headers()
                    self.wfile.write(message)
                    return
                conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                    answer = conn.getresponse()
                    content = answer.read()
                finally:
                    conn.close()
                headers = answer.headers
                content = tamper(self.command, self.path, headers, content)
                self.send_response(answer.status, answer.reason)
                for key, value in headers.items():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                length = headers.get("Content-Length") if self.command == "HEAD" else str(len(content))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = forward

            def log_message(self, *args: Any) -> None:
                pass

        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(server.cert, server.workdir / "certs" / "key.pem")
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Cli:
    """Runs ``python -m vaultcli`` with its own config directory."""

    def __init__(self, home: Path, server: Server) -> None:
        self.home, self.server = home, server
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.lower().endswith("_proxy") and not key.startswith("VAULT_")
        }
        self.env.update(
            {"VAULT_CONFIG_DIR": str(home / "config"), "PYTHONPATH": str(ROOT), "VAULT_RETRY_DELAY": "0.05"}
        )

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vaultcli", *args]

    def run(
        self, *args: str, stdin: str = "", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.home,
            env={**self.env, **(env or {})},
            timeout=120,
            check=False,
        )

    def ok(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.ok("--json", *args).stdout)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.home,
            env=self.env,
        )

    def login(self, user: str, url: str | None = None) -> None:
        url = url or self.server.url
        self.ok("login", url, "-u", user, "--cacert", str(self.server.cert), stdin=PASSWORD + "\n")

    def credentials(self) -> Any:
        return json.loads((self.home / "config" / "credentials.json").read_text())

    def edit_credentials(self, **changes: object) -> None:
        path = self.home / "config" / "credentials.json"
        path.write_text(json.dumps({**self.credentials(), **changes}))


@pytest.fixture(scope="module", autouse=True)
def interruptible_clients() -> Iterator[None]:
    """Clients started here take SIGINT as Ctrl-C. A suite started in the background by a
    script (``.ci/run &``) inherits SIGINT ignored, and an ignored signal stays ignored across
    exec: the clients would carry on through the test's Ctrl-C. A handled one is reset to
    the default in the child."""
    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if before is not None:
        signal.signal(signal.SIGINT, before)


@pytest.fixture
def cli(server: Server, tmp_path: Path) -> Cli:
    return Cli(tmp_path, server)


@pytest.fixture
def alice(server: Server, cli: Cli) -> tuple[str, str]:
    """A fresh user, logged in with the CLI: (name, an access token of the test's own)."""
    name, token = server.new_user(PASSWORD)
    cli.login(name)
    return name, token


@pytest.fixture
def relay(server: Server) -> Iterator[Relay]:
    r = Relay(server.port)
    yield r
    r.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(server: Server, token: str, name: str) -> bytes:
    resp = server.request("GET", "/download/" + name, token=token)
    assert resp.status == 200, resp.body
    return resp.body


def stop_when(proc: subprocess.Popen[str], ready: Callable[[], None], sig: int) -> None:
    ready()
    proc.send_signal(sig)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the client carried on after signal {sig}") from None
    assert proc.returncode != 0


# -- session ----------------------------------------------------------------------------


def test_login_persists_with_private_files_and_whoami(
    server: Server, cli: Cli, alice: tuple[str, str]
) -> None:
    config = cli.home / "config"
    assert (config / "credentials.json").stat().st_mode & 0o777 == 0o600
    assert config.stat().st_mode & 0o777 == 0o700
    assert PASSWORD not in (config / "credentials.json").read_text()
    me = cli.json("whoami")
    assert me["username"] == alice[0] and me["files"] == 0
    assert f"{alice[0]} on {server.url}\n0 files, " in cli.ok("whoami").stdout


def test_access_tokens_renew_across_invocations_and_concurrent_commands(
    fresh_server: Server, tmp_path: Path
) -> None:
    fresh_server.env = {"VAULT_TOKEN_TTL": "1"}  # every access token is all but expired
    fresh_server.start()
    cli = Cli(tmp_path, fresh_server)
    name, _ = fresh_server.new_user(PASSWORD)
    cli.login(name)
    first = cli.credentials()["refresh_token"]
    cli.ok("ls")
    assert cli.credentials()["refresh_token"] != first  # renewed, and the new pair saved
    procs = [cli.start("whoami") for _ in range(4)]  # all renew at once: one at a time, by the lock
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert cli.json("whoami")["username"] == name


def test_a_rejected_access_token_is_renewed(cli: Cli, alice: tuple[str, str]) -> None:
    cli.edit_credentials(access_token="not.a.token", access_expires=time.time() + 3600)
    assert cli.json("ls") == []


def test_a_refresh_cut_off_is_never_sent_again(server: Server, cli: Cli, alice: tuple[str, str]) -> None:
    """A renewal whose answer was lost leaves ``refreshing`` set: the client asks for a new
    login instead of reusing the token, which would make the server revoke the session."""
    cli.edit_credentials(refreshing=True, access_expires=0)
    done = cli.run("ls")
    assert done.returncode == 1 and "log in again" in done.stderr
    refresh = server.request("POST", "/token/refresh", {"refresh_token": cli.credentials()["refresh_token"]})
    assert refresh.status == 200  # the client did not spend it: the session is intact


def test_a_revoked_session_says_log_in_again(server: Server, cli: Cli, alice: tuple[str, str]) -> None:
    assert server.request("POST", "/logout/all", token=alice[1]).status == 200
    done = cli.run("ls")
    assert done.returncode == 1
    assert "log in again" in done.stderr and "HTTP 401" in done.stderr
    assert done.stderr.count("\n") == 1


def test_wrong_password_prints_the_servers_message(server: Server, cli: Cli) -> None:
    name, _ = server.new_user(PASSWORD)
    done = cli.run("login", server.url, "-u", name, "--cacert", str(server.cert), stdin="wrong password\n")
    assert done.returncode == 1
    assert done.stderr == "vault: login failed: Invalid username or password (HTTP 401)\n"


def test_logout_ends_the_session_on_the_server(server: Server, cli: Cli, alice: tuple[str, str]) -> None:
    refresh = cli.credentials()["refresh_token"]
    cli.ok("logout")
    assert not (cli.home / "config" / "credentials.json").exists()
    assert server.request("POST", "/token/refresh", {"refresh_token": refresh}).status == 401
    assert cli.run("ls").returncode == 1


def test_untrusted_certificate_is_refused_with_a_hint(server: Server, cli: Cli) -> None:
    name, _ = server.new_user(PASSWORD)
    done = cli.run("login", server.url, "-u", name, stdin=PASSWORD + "\n")
    assert done.returncode == 1 and "--cacert" in done.stderr


# -- put --------------------------------------------------------------------------------


def test_put_several_files_and_get_them_back(server: Server, cli: Cli, alice: tuple[str, str]) -> None:
    sizes = {"empty": 0, "one": 1, "under": MiB - 1, "over": MiB + 1}
    data = {name: os.urandom(size) for name, size in sizes.items()}
    for name, content in data.items():
        (cli.home / name).write_bytes(content)
    results = cli.json("put", *data, "--chunk-size", "512K")
    assert [(r["filename"], r["sha256"]) for r in results] == [(n, sha(d)) for n, d in data.items()]
    for name, content in data.items():
        assert stored(server, alice[1], name) == content
        got = cli.json("get", name, "-o", name + ".back")
        assert (cli.home / (name + ".back")).read_bytes() == content and got["sha256"] == sha(content)
    assert not list(cli.home.glob("*.part"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_put_killed_midway_resumes_to_an_identical_file(
    server: Server, cli: Cli, alice: tuple[str, str], relay: Relay, sig: int
) -> None:
    data = os.urandom(8 * MiB)
    (cli.home / "big.bin").write_bytes(data)
    cli.login(alice[0], relay.url)
    relay.hold("up", 3 * MiB)
    proc = cli.start("put", "big.bin", "--chunk-size", "1M")
    stop_when(proc, lambda: relay.wait_for("up", 3 * MiB), sig)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
    relay.release()
    (result,) = cli.json("put", "big.bin", "--chunk-size", "1M")
    assert result["resumed_from"] >= MiB
    assert result["sha256"] == sha(data)
    assert stored(server, alice[1], "big.bin") == data
    assert cli.json("ls")[0]["size"] == len(data)


def test_put_and_get_retry_by_themselves_after_a_dropped_connection(
    server: Server, cli: Cli, alice: tuple[str, str], relay: Relay
) -> None:
    data = os.urandom(6 * MiB)
    (cli.home / "big.bin").write_bytes(data)
    cli.login(alice[0], relay.url)
    relay.hold("up", 3 * MiB)
    proc = cli.start("--json", "put", "big.bin", "--chunk-size", "1M")
    relay.wait_for("up", 3 * MiB)
    relay.release()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "retrying" in err
    assert json.loads(out)[0]["sha256"] == sha(data)
    assert stored(server, alice[1], "big.bin") == data
    before = relay.counts["down"]
    relay.hold("down", before + 3 * MiB)
    proc = cli.start("--json", "get", "big.bin", "-o", "copy.bin")
    relay.wait_for("down", before + 3 * MiB)
    relay.release()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "retrying" in err and json.loads(out)["resumed_from"] > 0
    assert (cli.home / "copy.bin").read_bytes() == data


def test_put_and_get_retry_after_5xx_answers(server: Server, cli: Cli, alice: tuple[str, str]) -> None:
    refused: list[str] = []

    def refuse(method: str, path: str) -> bool:
        """The first PATCH of the upload, and the first GET of the download."""
        transfer = method == "PATCH" or (method == "GET" and path.startswith("/download/"))
        if transfer and method not in refused:
            refused.append(method)
            return True
        return False

    data = os.urandom(3 * MiB)
    (cli.home / "r.bin").write_bytes(data)
    proxy = TamperingProxy(server, lambda method, path, headers, body: body, refuse)
    try:
        cli.login(alice[0], proxy.url)
        put = cli.run("put", "r.bin", "--chunk-size", "1M")
        get = cli.run("get", "r.bin", "-o", "copy.bin")
    finally:
        proxy.close()
    assert refused == ["PATCH", "GET"]
    assert put.returncode == 0 and get.returncode == 0, put.stderr + get.stderr
    assert "Try again later (HTTP 503); retrying" in put.stderr
    assert "Try again later (HTTP 503); retrying" in get.stderr
    assert stored(server, alice[1], "r.bin") == data
    assert (cli.home / "copy.bin").read_bytes() == data


def test_put_of_a_file_changed_under_the_same_fingerprint_fails_integrity(
    server: Server, cli: Cli, alice: tuple[str, str], relay: Relay
) -> None:
    """The prefix the server holds differs from the local file: the final digest check catches it."""
    path = cli.home / "big.bin"
    path.write_bytes(os.urandom(6 * MiB))
    cli.login(alice[0], relay.url)
    relay.hold("up", 3 * MiB)
    proc = cli.start("put", "big.bin", "--chunk-size", "1M")
    stop_when(proc, lambda: relay.wait_for("up", 3 * MiB), signal.SIGKILL)
    relay.release()
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"tampered")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    done = cli.run("put", "big.bin", "--chunk-size", "1M")
    assert done.returncode == EXIT_INTEGRITY, done.stderr
    assert "integrity check failed" in done.stderr


def test_put_stdin_and_progress_only_on_a_terminal(server: Server, cli: Cli, alice: tuple[str, str]) -> None:
    done = cli.run("put", "-", "--name", "piped.txt", stdin="hello\n")
    assert done.returncode == 0 and "cannot be resumed" in done.stderr
    assert "%|" not in done.stderr and "B/s" not in done.stderr  # stderr is no terminal: no bars
    assert stored(server, alice[1], "piped.txt") == b"hello\n"
    assert cli.run("put", "-").returncode == 2  # stdin needs --name


def test_put_over_the_size_limit_prints_413(server: Server, cli: Cli, alice: tuple[str, str]) -> None:
    assert server.admin("set-limits", alice[0], "--max-file-size", "1K").returncode == 0
    (cli.home / "two.bin").write_bytes(os.urandom(2048))
    done = cli.run("put", "two.bin")
    assert done.returncode == 1
    assert done.stderr == "vault: File too large: the limit is 1024 bytes (HTTP 413)\n"
    assert cli.json("ls") == []


# -- get --------------------------------------------------------------------------------


def put_via_server(server: Server, token: str, name: str, data: bytes) -> None:
    assert server.put_file(token, name, data).status == 201


def interrupted_get(cli: Cli, relay: Relay, name: str, sig: int = signal.SIGKILL) -> Path:
    part = cli.home / (name + ".part")

    def some_written() -> None:
        relay.wait_for("down", 3 * MiB)
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size >= MiB) and time.monotonic() < deadline:
            time.sleep(0.01)

    relay.hold("down", 3 * MiB)
    proc = cli.start("get", name)
    stop_when(proc, some_written, sig)
    relay.release()
    assert part.stat().st_size >= MiB
    assert not (cli.home / name).exists()
    return part


def test_get_killed_midway_resumes(server: Server, cli: Cli, alice: tuple[str, str], relay: Relay) -> None:
    data = os.urandom(8 * MiB)
    put_via_server(server, alice[1], "big.bin", data)
    cli.login(alice[0], relay.url)
    interrupted_get(cli, relay, "big.bin")
    result = cli.json("get", "big.bin")
    assert 0 < result["resumed_from"] < len(data)
    assert (cli.home / "big.bin").read_bytes() == data


def test_get_of_a_file_replaced_between_halves_starts_again(
    server: Server, cli: Cli, alice: tuple[str, str], relay: Relay
) -> None:
    put_via_server(server, alice[1], "big.bin", os.urandom(8 * MiB))
    cli.login(alice[0], relay.url)
    interrupted_get(cli, relay, "big.bin", signal.SIGINT)
    new = os.urandom(8 * MiB)
    put_via_server(server, alice[1], "big.bin", new)
    done = cli.run("--json", "get", "big.bin")
    assert done.returncode == 0, done.stderr
    assert "changed on the server" in done.stderr
    assert json.loads(done.stdout)["resumed_from"] == 0
    assert (cli.home / "big.bin").read_bytes() == new


def test_get_with_a_corrupt_partial_file_exits_with_the_integrity_code(
    server: Server, cli: Cli, alice: tuple[str, str], relay: Relay
) -> None:
    put_via_server(server, alice[1], "big.bin", os.urandom(8 * MiB))
    cli.login(alice[0], relay.url)
    part = interrupted_get(cli, relay, "big.bin")
    with open(part, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    done = cli.run("get", "big.bin")
    assert done.returncode == EXIT_INTEGRITY
    assert "integrity check failed" in done.stderr
    assert part.stat().st_size == 8 * MiB  # kept, not deleted
    assert not (cli.home / "big.bin").exists()


FORGED = "sha-256=:" + base64.b64encode(hashlib.sha256(b"forged").digest()).decode() + ":"


@pytest.mark.parametrize("tampered", ["nothing", "digest", "body"])
def test_get_refuses_an_answer_tampered_in_transit(
    server: Server, cli: Cli, alice: tuple[str, str], tampered: str
) -> None:
    data = os.urandom(128 * 1024).hex().encode()  # text, for -o - too
    put_via_server(server, alice[1], "t.txt", data)
    seen: list[str] = []

    def tamper(method: str, path: str, headers: http.client.HTTPMessage, body: bytes) -> bytes:
        if method == "GET" and path == "/download/t.txt":
            seen.append(path)
            if tampered == "digest":
                headers.replace_header("Repr-Digest", FORGED)
            elif tampered == "body":
                body = body[:1000] + bytes([body[1000] ^ 1]) + body[1001:]
        return body

    proxy = TamperingProxy(server, tamper)
    try:
        cli.login(alice[0], proxy.url)
        done = cli.run("get", "t.txt")
        to_stdout = cli.run("get", "t.txt", "-o", "-")
    finally:
        proxy.close()
    assert len(seen) == 2
    if tampered == "nothing":  # the proxy itself changes nothing the client checks
        assert done.returncode == 0 and to_stdout.returncode == 0, done.stderr + to_stdout.stderr
        assert (cli.home / "t.txt").read_bytes() == data
        return
    assert done.returncode == EXIT_INTEGRITY, done.stderr
    assert "integrity check failed" in done.stderr
    assert not (cli.home / "t.txt").exists()  # no file claims to be the complete one
    assert (cli.home / "t.txt.part").stat().st_size == len(data)  # kept, not deleted
    assert to_stdout.returncode == EXIT_INTEGRITY, to_stdout.stderr
    assert "integrity check failed" in to_stdout.stderr


def test_put_refuses_a_stored_digest_tampered_in_transit(
    server: Server, cli: Cli, alice: tuple[str, str]
) -> None:
    seen: list[str] = []

    def tamper(method: str, path: str, headers: http.client.HTTPMessage, body: bytes) -> bytes:
        if method == "HEAD" and path == "/download/up.bin":
            headers.replace_header("Repr-Digest", FORGED)
            seen.append(path)
        return body

    (cli.home / "up.bin").write_bytes(os.urandom(300_000))
    proxy = TamperingProxy(server, tamper)
    try:
        cli.login(alice[0], proxy.url)
        done = cli.run("put", "up.bin")
    finally:
        proxy.close()
    assert seen
    assert done.returncode == EXIT_INTEGRITY, done.stderr
    assert "integrity check failed" in done.stderr


def test_get_missing_file_prints_404_and_writes_nothing(cli: Cli, alice: tuple[str, str]) -> None:
    done = cli.run("get", "nope.bin")
    assert done.returncode == 1
    assert done.stderr == "vault: File not found (HTTP 404)\n"
    assert not (cli.home / "nope.bin").exists() and not (cli.home / "nope.bin.part").exists()


def test_get_refuses_to_overwrite_without_o(server: Server, cli: Cli, alice: tuple[str, str]) -> None:
    put_via_server(server, alice[1], "a.txt", b"new")
    (cli.home / "a.txt").write_bytes(b"mine")
    assert cli.run("get", "a.txt").returncode == 1
    assert (cli.home / "a.txt").read_bytes() == b"mine"
    cli.ok("get", "a.txt", "-o", "a.txt")
    assert (cli.home / "a.txt").read_bytes() == b"new"


def test_get_to_stdout(server: Server, cli: Cli, alice: tuple[str, str]) -> None:
    put_via_server(server, alice[1], "a.txt", b"some bytes")
    assert cli.ok("get", "a.txt", "-o", "-").stdout == "some bytes"


def test_get_says_in_one_line_when_the_output_cannot_be_written(
    server: Server, cli: Cli, alice: tuple[str, str]
) -> None:
    """The body is hashed and written in a thread of its own: a failed write still ends the
    command with a one-line error (no traceback, no hang, not exit 0)."""
    put_via_server(server, alice[1], "big.bin", os.urandom(3 * MiB))
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            cli.argv("get", "big.bin", "-o", "-"),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cli.home,
            env=cli.env,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr == "vault: cannot write standard output: No space left on device\n"


# -- sharing and links ------------------------------------------------------------------


def test_share_shared_and_get_shared(
    server: Server, cli: Cli, alice: tuple[str, str], tmp_path: Path
) -> None:
    put_via_server(server, alice[1], "notes.txt", b"for bob")
    bob_name, _ = server.new_user(PASSWORD)
    cli.ok("share", "notes.txt", bob_name)
    bob = Cli(tmp_path / "bob", server)
    bob.home.mkdir()
    bob.login(bob_name)
    assert bob.json("shared")[0]["owner"] == alice[0]
    bob.ok("get", "--shared", f"{alice[0]}/notes.txt")
    assert (bob.home / "notes.txt").read_bytes() == b"for bob"
    cli.ok("unshare", "notes.txt", bob_name)
    assert bob.run("get", "--shared", f"{alice[0]}/notes.txt", "-o", "x").returncode == 1


@needs_curl
def test_send_prints_a_link_that_downloads_once(server: Server, cli: Cli, alice: tuple[str, str]) -> None:
    data = os.urandom(300_000)
    (cli.home / "photo.jpg").write_bytes(data)
    url = cli.ok("send", "photo.jpg", "--downloads", "1", "-q").stdout.strip()
    assert url.startswith(server.url + "/s/")
    curl = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--cacert", str(server.cert), url],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert curl.returncode == 0 and curl.stdout == data
    gone = cli.run("get", url, "-o", "again.jpg")
    assert gone.returncode == 1
    assert gone.stderr == "vault: This link has no downloads left (HTTP 410)\n"
    assert not (cli.home / "again.jpg").exists()


def test_link_with_password_and_lockout(cli: Cli, server: Server, alice: tuple[str, str]) -> None:
    put_via_server(server, alice[1], "secret.txt", b"s3cret")
    url = cli.run(
        "link", "secret.txt", "--password", "--expires", "1d", "-q", stdin="open sesame\n"
    ).stdout.strip()
    cli.run("get", url, "-o", "out.txt", stdin="open sesame\n")
    assert (cli.home / "out.txt").read_bytes() == b"s3cret"
    wrong = cli.run("get", url, "-o", "bad.txt", stdin="wrong one\n")
    assert wrong.returncode == 1 and "Wrong password" in wrong.stderr
    for _ in range(8):
        locked = cli.run("get", url, "-o", "bad.txt", stdin="wrong one\n")
        if "HTTP 429" in locked.stderr:
            break
    assert locked.returncode == 1
    assert locked.stderr.startswith("vault: Too many wrong passwords")
    assert not (cli.home / "bad.txt").exists()
    links = cli.json("links")
    assert links[0]["password"] is True
    cli.ok("revoke", links[0]["id"])
    assert cli.json("links") == []


def test_revoke_takes_an_id_beginning_with_a_dash_after_double_dash(cli: Cli, alice: tuple[str, str]) -> None:
    """Ids made before they were hex may begin with "-": `--` passes one to the server."""
    done = cli.run("revoke", "--", "-Xq2")
    assert done.returncode == 1, done.stderr  # the server's 404, not a usage error (2)
    assert done.stderr.startswith("vault: ") and "Traceback" not in done.stderr


def test_link_qr_prints_a_code(cli: Cli, server: Server, alice: tuple[str, str]) -> None:
    put_via_server(server, alice[1], "a.txt", b"x")
    out = cli.ok("link", "a.txt", "--qr").stdout
    assert out.startswith(server.url + "/s/") and "█" in out


def test_ls_rm(cli: Cli, server: Server, alice: tuple[str, str]) -> None:
    put_via_server(server, alice[1], "a.txt", b"abc")
    assert "a.txt  3 B" in cli.ok("ls").stdout
    cli.ok("rm", "a.txt")
    assert cli.json("ls") == []
    assert cli.run("rm", "a.txt").stderr == "vault: File not found (HTTP 404)\n"


# -- conventions ------------------------------------------------------------------------


def test_every_command_has_help_with_examples_and_usage_errors_exit_2(cli: Cli) -> None:
    from vaultcli.main import COMMANDS, parser

    top = parser()
    subcommands: Any = next(a for a in top._actions if a.choices and "put" in a.choices).choices
    assert set(subcommands) == set(COMMANDS)
    for command in COMMANDS:
        text = subcommands[command].format_help()
        assert "examples:\n  vault " + command in text and "exit status" in text
    assert cli.run("frobnicate").returncode == 2
    assert cli.run("put", "a", "b", "--name", "c").returncode == 2
    assert cli.ok("--version").stdout.startswith("vault ")


def test_not_logged_in(cli: Cli) -> None:
    done = cli.run("ls")
    assert done.returncode == 1 and "vault login" in done.stderr


def test_bash_completion_completes_commands_and_options(cli: Cli) -> None:
    script = cli.ok("completion", "bash").stdout
    probe = (
        script
        + "COMP_WORDS=(vault pu); COMP_CWORD=1; _vault; echo ${COMPREPLY[@]}\n"
        + "COMP_WORDS=(vault link f --ex); COMP_CWORD=3; _vault; echo ${COMPREPLY[@]}\n"
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.split("\n")[:2] == ["put", "--expires"], done.stderr
    assert cli.ok("completion", "zsh").stdout.startswith("autoload -U +X bashcompinit")


def test_proxy_variables_are_honoured(server: Server, cli: Cli, alice: tuple[str, str]) -> None:
    data = os.urandom(300_000)
    put_via_server(server, alice[1], "p.bin", data)
    proxy = Relay(server.port, connect=True)
    via = {"HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}"}
    try:
        done = cli.run("ls", env=via)
        assert done.returncode == 0, done.stderr
        assert proxy.tunnels and proxy.tunnels[0] == f"CONNECT 127.0.0.1:{server.port} HTTP/1.1".encode()
        tunnels = len(proxy.tunnels)
        done = cli.run("get", "p.bin", env=via)  # the download's own connection (vaultcli.fetch)
        assert done.returncode == 0, done.stderr
        assert len(proxy.tunnels) > tunnels and proxy.counts["down"] > len(data)
        tunnels = len(proxy.tunnels)
        done = cli.run("get", "p.bin", "-o", "again.bin", env={**via, "NO_PROXY": "127.0.0.1"})
        assert done.returncode == 0, done.stderr
        assert len(proxy.tunnels) == tunnels
    finally:
        proxy.close()
    assert (cli.home / "p.bin").read_bytes() == (cli.home / "again.bin").read_bytes() == data
