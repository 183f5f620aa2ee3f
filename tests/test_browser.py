"""The web app in a real browser: Debian's Chromium, headless, driven by Playwright, against the
real run.py over TLS. A console error or a CSP violation on any page fails the test.

Set VAULT_SCREENSHOTS=<folder> to save the screenshots the README shows (docs/)."""

import base64
import hashlib
import io
import os
import random
import shutil
import signal
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server import Server

CHROMIUM = shutil.which("chromium") or ""
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(
    not CHROMIUM, reason="Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
)

MiB = 1024 * 1024
PASSWORD = "correct horse battery"
SHOTS = os.environ.get("VAULT_SCREENSHOTS")
# Chromium logs every answered 4xx and every request the test aborts as a console error; they
# are the point of some tests, so those say so. Anything else (a CSP violation, an exception,
# a failed module) always fails.
NETWORK_ERRORS = ("Failed to load resource",)
CATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI);
});
localStorage.setItem("vault.chunkSize", String(1024 * 1024));
"""


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def shot(page: Any, name: str) -> None:
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / name))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("web")).start()
    yield srv
    srv.stop()


class Tab:
    """A browser context and page that record console errors and CSP violations."""

    def __init__(self, browser: Any, server: Server, width: int = 1100) -> None:
        self.server = server
        self.context = browser.new_context(
            ignore_https_errors=True, viewport={"width": width, "height": 760}, accept_downloads=True
        )
        self.context.add_init_script(CATCH_CSP)
        self.errors: list[str] = []
        self.allowed: tuple[str, ...] = ()
        self.page = self.new_page()

    def new_page(self) -> Any:
        page = self.context.new_page()
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"exception: {e}"))
        return page

    def open(self, path: str = "/") -> Any:
        self.page.goto(self.server.url + path)
        if path == "/":
            self.page.wait_for_selector("body[data-ready]")
        return self.page

    def sign_in(self, name: str, password: str = PASSWORD) -> Any:
        page = self.open()
        page.fill("#username", name)
        page.fill("#password", password)
        page.click("#signin-submit")
        page.wait_for_selector("#files:not(.hidden)")
        return page

    def check(self) -> None:
        for page in self.context.pages:
            if not page.is_closed() and page.url.startswith("https"):
                assert page.evaluate("window.__csp || []") == [], "CSP violations"
        unexpected = [e for e in self.errors if not e.startswith(self.allowed)]
        assert unexpected == [], "console errors"

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tabs(browser: Any, app_server: Server) -> Iterator[Callable[..., Tab]]:
    opened: list[Tab] = []

    def make(server: Server | None = None, width: int = 1100) -> Tab:
        tab = Tab(browser, server or app_server, width)
        opened.append(tab)
        return tab

    yield make
    try:
        for tab in opened:
            tab.check()
    finally:
        for tab in opened:
            tab.close()


def new_account(server: Server) -> tuple[str, str]:
    return server.new_user(PASSWORD)


def stored(server: Server, token: str, name: str) -> bytes:
    resp = server.request("GET", f"/download/{name}", token=token)
    assert resp.status == 200, resp.body
    return resp.body


def upload_row(page: Any, name: str) -> Any:
    return page.locator("#uploads li", has_text=name)


def wait_state(page: Any, name: str, state: str, timeout: float = 30_000) -> None:
    page.locator(f"#uploads li[data-state={state}]", has_text=name).wait_for(timeout=timeout)


# --------------------------------------------------------------------------- tests


def test_register_upload_download_filter_delete_and_stay_signed_in(
    tabs: Callable[..., Tab], app_server: Server, tmp_path: Path
) -> None:
    tab = tabs()
    page = tab.open()
    name = "u" + uuid.uuid4().hex[:10]
    page.click("#signin-toggle")
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    page.click("#signin-submit")
    page.wait_for_selector("#files:not(.hidden)")
    assert page.text_content("#who") == name

    data = blob(3 * MiB + 123, 1)
    src = tmp_path / "rapport d'été & co.bin"
    src.write_bytes(data)
    (tmp_path / "notes.txt").write_bytes(b"short notes\n")
    page.set_input_files("#picker", [str(src), str(tmp_path / "notes.txt")])
    wait_state(page, src.name, "done")
    wait_state(page, "notes.txt", "done")
    page.locator("#file-rows tr", has_text="notes.txt").wait_for()
    row = page.locator("#file-rows tr", has_text=src.name)
    assert row.locator("td").nth(1).text_content() == "3.0 MiB"
    assert row.locator("td").first.text_content() == src.name  # as text, not HTML
    assert "used (2 files" in page.text_content("#usage-text")  # from /me
    shot(page, "web-files.png")

    with page.expect_download() as download:
        row.get_by_role("link", name=f"Download {src.name}").click()
    assert download.value.suggested_filename == src.name
    assert Path(download.value.path()).read_bytes() == data

    drop = page.evaluate_handle(
        """() => { const dt = new DataTransfer();
          dt.items.add(new File(["dropped bytes"], "dropped.txt")); return dt; }"""
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": drop})  # drag and drop
    wait_state(page, "dropped.txt", "done")
    page.locator("#file-rows tr", has_text="dropped.txt").wait_for()

    page.fill("#filter", "notes")
    assert page.locator("#file-rows tr").count() == 1
    page.fill("#filter", "")
    page.select_option("#sort", "size-asc")
    assert page.locator("#file-rows tr").first.text_content().startswith("notes.txt")

    page.reload()  # the session survives a reload (the refresh cookie)
    page.wait_for_selector("#file-rows tr")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete notes.txt").click()
    page.locator("#file-rows tr", has_text="notes.txt").wait_for(state="detached")
    token = app_server.request("POST", "/login", {"username": name, "password": PASSWORD}).json()["token"]
    assert app_server.request("GET", "/download/notes.txt", token=token).status == 404
    assert stored(app_server, token, "dropped.txt") == b"dropped bytes"
    assert stored(app_server, token, urllib.parse.quote(src.name)) == data


def test_upload_retries_a_dropped_chunk_and_resumes_after_a_reload(
    tabs: Callable[..., Tab], app_server: Server, tmp_path: Path
) -> None:
    name, token = new_account(app_server)
    tab = tabs()
    tab.allowed = NETWORK_ERRORS  # the requests aborted on purpose
    page = tab.sign_in(name)
    data = blob(6 * MiB + 5, 2)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    patches: list[int] = []

    def cut(route: Any) -> None:
        if route.request.method != "PATCH":
            route.continue_()
            return
        patches.append(int(route.request.headers["upload-offset"]))
        if len(patches) == 2 or len(patches) >= 4:  # a drop the client retries; then the network goes
            route.abort()
        else:
            route.continue_()

    page.route("**/tus/*", cut)
    page.set_input_files("#picker", str(src))
    while len(patches) < 4:
        page.wait_for_event("request", lambda r: r.method == "PATCH")
    assert patches[:4] == [0, MiB, MiB, 2 * MiB]  # the dropped chunk was sent again by itself
    wait_state(page, "big.bin", "retrying")
    page.reload()
    page.unroute("**/tus/*")
    page.wait_for_selector("#files:not(.hidden)")
    offsets: list[str] = []
    page.on("request", lambda r: offsets.append(r.headers["upload-offset"]) if r.method == "PATCH" else None)
    page.set_input_files("#picker", str(src))  # the same file again: resumes
    wait_state(page, "big.bin", "done")
    assert offsets[0] == str(2 * MiB) and len(offsets) == 5
    assert stored(app_server, token, "big.bin") == data


def test_pause_and_resume(tabs: Callable[..., Tab], app_server: Server, tmp_path: Path) -> None:
    name, token = new_account(app_server)
    tab = tabs()
    tab.allowed = NETWORK_ERRORS  # the chunk stopped by Pause
    page = tab.sign_in(name)
    data = blob(4 * MiB, 3)
    src = tmp_path / "paused.bin"
    src.write_bytes(data)
    held: list[Any] = []
    page.route(
        "**/tus/*",
        lambda r: (
            held.append(r)
            if r.request.method == "PATCH" and r.request.headers["upload-offset"] == str(MiB)
            else r.continue_()
        ),
    )
    with page.expect_request(lambda r: r.method == "PATCH" and r.headers["upload-offset"] == str(MiB)):
        page.set_input_files("#picker", str(src))
    row = upload_row(page, "paused.bin")
    row.get_by_role("button", name="Pause").click()
    wait_state(page, "paused.bin", "paused")
    assert "25%" in row.text_content()
    shot(page, "web-uploading.png")
    page.unroute("**/tus/*")
    url = page.evaluate("Object.values(JSON.parse(localStorage.getItem('vault.uploads')))[0]")
    head = app_server.request("HEAD", url, headers={"Tus-Resumable": "1.0.0"}, token=token)
    assert head.headers["Upload-Offset"] == str(MiB)  # nothing more arrived while paused
    row.get_by_role("button", name="Resume").click()
    wait_state(page, "paused.bin", "done")
    assert stored(app_server, token, "paused.bin") == data


def test_share_with_a_user_who_downloads_it_then_revoke(tabs: Callable[..., Tab], app_server: Server) -> None:
    alice, alice_token = new_account(app_server)
    bob, bob_token = new_account(app_server)
    data = blob(300_000, 4)
    assert app_server.put_file(alice_token, "for-bob.bin", data).status == 201
    page = tabs().sign_in(alice)
    page.get_by_role("button", name="Share for-bob.bin").click()
    page.fill("#share-user", bob)
    page.locator("#share-form button[type=submit]").click()
    page.locator("#grantees li", has_text=bob).wait_for()
    page.locator("#share-dialog .close").click()

    bob_page = tabs().sign_in(bob)
    bob_page.get_by_role("button", name="Shared with me").click()
    link = bob_page.get_by_role("link", name=f"Download for-bob.bin from {alice}")
    with bob_page.expect_download() as download:
        link.click()
    assert Path(download.value.path()).read_bytes() == data

    page.get_by_role("button", name="Share for-bob.bin").click()
    page.get_by_role("button", name=f"Stop sharing with {bob}").click()
    page.locator("#grantees li").wait_for(state="detached")
    assert app_server.request("GET", f"/shared/{alice}/for-bob.bin", token=bob_token).status == 404


def test_password_change_and_sign_out_everywhere_end_the_other_tabs_sessions(
    tabs: Callable[..., Tab], app_server: Server
) -> None:
    name, _ = new_account(app_server)
    first = tabs()
    first.allowed = NETWORK_ERRORS  # the ended session's 401s
    here = first.sign_in(name)
    second = tabs()
    second.allowed = NETWORK_ERRORS
    there = second.sign_in(name)  # another browser
    here.click("#nav button[data-view=account]")
    here.fill("#old-password", PASSWORD)
    here.fill("#new-password", "a new password 7")
    here.get_by_role("button", name="Change password").click()
    here.wait_for_selector("#status:has-text('Password changed')")
    there.get_by_role("button", name="Links").click()  # its next call finds the session ended
    there.wait_for_selector("#signin:not(.hidden)")
    assert "session ended" in there.text_content("#status")

    there.fill("#username", name)
    there.fill("#password", "a new password 7")
    there.click("#signin-submit")
    there.wait_for_selector("#links:not(.hidden)")  # back where it was
    there.click("#nav button[data-view=account]")
    there.click("#signout-all")
    there.wait_for_selector("#signin:not(.hidden)")
    here.get_by_role("button", name="My files").click()  # this tab was still signed in
    here.wait_for_selector("#signin:not(.hidden)")
    here.reload()  # and stays signed out: the refresh cookie is dead
    here.wait_for_selector("#signin:not(.hidden)")


def test_password_link_with_qr_code_downloads_through_the_page(
    tabs: Callable[..., Tab], app_server: Server
) -> None:
    import zxingcpp
    from PIL import Image

    name, token = new_account(app_server)
    data = blob(200_000, 5)
    assert app_server.put_file(token, "linked.bin", data).status == 201
    page = tabs().sign_in(name)
    page.get_by_role("button", name="Create a link to linked.bin").click()
    page.fill("#link-password", "open sesame 42")
    page.fill("#link-max", "2")
    page.locator("#link-form button[type=submit]").click()
    page.wait_for_function("() => document.getElementById('link-qr').naturalWidth > 0")
    url = page.input_value("#link-url")
    assert url.startswith(app_server.url + "/s/")
    shot(page, "web-link.png")
    decoded = zxingcpp.read_barcodes(Image.open(io.BytesIO(page.locator("#link-qr").screenshot())))
    assert [code.text for code in decoded] == [url]
    page.locator("#link-result .close").click()
    page.get_by_role("button", name="Links").click()
    page.locator("#link-rows tr", has_text="linked.bin").wait_for()
    assert "yes" in page.locator("#link-rows tr").first.text_content()

    visitor = tabs(width=360)
    visitor.allowed = NETWORK_ERRORS  # the wrong password's 403
    public = visitor.open(url.removeprefix(app_server.url))
    assert "linked.bin" not in public.content()
    public.fill("#password", "wrong password")
    public.get_by_role("button", name="Open").click()
    assert "Wrong password" in public.text_content("#message")
    public.fill("#password", "open sesame 42")
    public.get_by_role("button", name="Open").click()
    assert public.text_content("#title") == "linked.bin"
    assert public.text_content("#sha256") == hashlib.sha256(data).hexdigest()
    shot(public, "web-link-page.png")
    with public.expect_download() as download:
        public.get_by_role("button", name="Download").click()
    assert Path(download.value.path()).read_bytes() == data

    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Revoke the link to linked.bin").click()
    page.locator("#links-empty:not(.hidden)").wait_for()
    public.goto(url)
    assert "revoked" in public.text_content("#message")


def test_two_tabs_renewing_at_once_stay_signed_in(tabs: Callable[..., Tab], app_server: Server) -> None:
    name, _ = new_account(app_server)
    tab = tabs()
    first = tab.sign_in(name)
    second = tab.new_page()
    second.goto(app_server.url + "/")
    second.wait_for_selector("#files:not(.hidden)")  # resumed from the cookie
    start = """async () => {
      const src = document.querySelector('script[type=module]').src.replace('app.js', 'api.js');
      const api = await import(src);
      window.__renewals = Promise.all([api.renew(), api.renew(), api.renew()]);
      window.__renewals.catch(() => {});
    }"""
    settle = "() => window.__renewals.then(() => 'ok', (e) => e.message)"
    for _ in range(3):  # both tabs at once, several rounds
        first.evaluate(start)
        second.evaluate(start)
        assert (first.evaluate(settle), second.evaluate(settle)) == ("ok", "ok")
    second.reload()
    second.wait_for_selector("#files:not(.hidden)")
    first.get_by_role("button", name="Links").click()
    first.locator("#links-empty:not(.hidden)").wait_for()

    # The control: the same renewals without the lock present one cookie twice, and the
    # server ends the session (so the lock is what keeps tabs signed in).
    tab.allowed = NETWORK_ERRORS
    race = """() => Promise.all([1, 2].map(() => fetch('/web/session/refresh',
      {method: 'POST', headers: {'X-Vault-Web': '1'}}).then((r) => r.status)))"""
    assert sorted(first.evaluate(race)) == [200, 401]
    assert first.evaluate(race) == [401, 401]


def test_errors_from_the_server_are_shown_for_413_quota_and_429(
    tabs: Callable[..., Tab], tmp_path: Path, browser: Any
) -> None:
    srv = Server(
        tmp_path / "limits", env={"VAULT_MAX_FILE_SIZE": str(2 * MiB), "VAULT_LOGIN_FREE_ATTEMPTS": "2"}
    )
    srv.start()
    try:
        name, _ = new_account(srv)
        assert srv.admin("set-limits", name, "--quota", "1M").returncode == 0
        tab = tabs(srv)
        tab.allowed = NETWORK_ERRORS  # the 413s and 429s shown
        page = tab.sign_in(name)
        too_big = tmp_path / "too-big.bin"
        too_big.write_bytes(bytes(2 * MiB + 1))
        over_quota = tmp_path / "over-quota.bin"
        over_quota.write_bytes(bytes(MiB + MiB // 2))
        page.set_input_files("#picker", [str(too_big), str(over_quota)])
        wait_state(page, "too-big.bin", "failed")
        wait_state(page, "over-quota.bin", "failed")
        assert "2097152" in upload_row(page, "too-big.bin").text_content()
        assert "quota" in upload_row(page, "over-quota.bin").text_content().lower()
        page.click("#nav button[data-view=account]")
        page.click("#signout")
        page.wait_for_selector("#signin:not(.hidden)")
        for _ in range(3):
            page.fill("#username", name)
            page.fill("#password", "not the password")
            page.click("#signin-submit")
            page.wait_for_selector("#error:not(.hidden)")
        message = page.text_content("#error")
        assert message.startswith("Too many") and "429" not in message
    finally:
        srv.stop()


def test_register_with_an_invite_code_when_the_server_asks_for_one(
    tabs: Callable[..., Tab], tmp_path: Path
) -> None:
    srv = Server(tmp_path / "invite", env={"VAULT_REGISTRATION": "invite"}).start()
    try:
        done = srv.admin("invite")
        assert done.returncode == 0, done.stderr
        code = done.stdout.decode().strip().splitlines()[-1]
        tab = tabs(srv)
        tab.allowed = NETWORK_ERRORS  # the 403 of the attempt without a code
        page = tab.open()
        assert not page.is_visible("#invite")  # signing in asks for no code
        page.click("#signin-toggle")
        name = "u" + uuid.uuid4().hex[:10]
        page.fill("#username", name)
        page.fill("#password", PASSWORD)
        page.click("#signin-submit")
        page.wait_for_selector("#error:not(.hidden)")
        assert "invite" in page.text_content("#error").lower()  # the server's message, shown
        page.fill("#invite", code)
        page.click("#signin-submit")
        page.wait_for_selector("#files:not(.hidden)")
        assert page.text_content("#who") == name
    finally:
        srv.stop()


def test_upload_resumes_after_the_server_is_killed_and_restarted(
    tabs: Callable[..., Tab], tmp_path: Path
) -> None:
    srv = Server(tmp_path / "restart").start()
    try:
        name, token = new_account(srv)
        tab = tabs(srv)
        tab.allowed = NETWORK_ERRORS  # the requests to the stopped server
        page = tab.sign_in(name)
        data = blob(5 * MiB + 7, 6)
        src = tmp_path / "restart.bin"
        src.write_bytes(data)
        killed: list[int] = []

        def kill_before_the_third_chunk(route: Any) -> None:
            request = route.request
            if not killed and request.method == "PATCH" and request.headers["upload-offset"] == str(2 * MiB):
                srv.stop(signal.SIGKILL)  # no goodbye: the server keeps what it had made durable
                killed.append(2 * MiB)
            route.continue_()

        page.route("**/tus/*", kill_before_the_third_chunk)
        page.set_input_files("#picker", str(src))
        wait_state(page, "restart.bin", "retrying")
        assert killed
        page.unroute("**/tus/*")
        offsets: list[str] = []
        page.on(
            "request", lambda r: offsets.append(r.headers["upload-offset"]) if r.method == "PATCH" else None
        )
        srv.start()  # the same port and data
        wait_state(page, "restart.bin", "done", timeout=90_000)
        assert offsets == [str(n * MiB) for n in (2, 3, 4, 5)]  # from the server's offset on
        assert stored(srv, token, "restart.bin") == data
    finally:
        srv.stop()


# The focused element, and whether it shows a focus ring (a hidden file input's is on its label).
FOCUS = """() => {
  const a = document.activeElement;
  const shown = a.matches('.visually-hidden') ? a.nextElementSibling : a;
  const style = getComputedStyle(shown);
  const name = a.getAttribute('aria-label') || a.labels?.[0]?.textContent || a.textContent.trim() || a.id;
  const ring = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2;
  return { name, visible: ring && shown.getClientRects().length > 0 };
}"""


def tab_to(page: Any, name: str, limit: int = 80) -> None:
    """Press Tab until the control called name has the focus; every stop shows its focus."""
    passed = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        focus = page.evaluate(FOCUS)
        assert focus["visible"], f"no visible focus on {focus['name']!r}"
        if focus["name"] == name:
            return
        passed.append(focus["name"])
    raise AssertionError(f"{name!r} not reached by Tab; passed {passed}")


def test_keyboard_only_sign_in_upload_download_share_link_delete(
    tabs: Callable[..., Tab], app_server: Server, tmp_path: Path
) -> None:
    name, token = new_account(app_server)
    bob, bob_token = new_account(app_server)
    data = blob(700_000, 7)
    src = tmp_path / "keys.bin"
    src.write_bytes(data)
    page = tabs().open()
    keys = page.keyboard
    assert page.evaluate("document.activeElement.id") == "username"  # the page puts the caret there
    keys.type(name)
    tab_to(page, "Password")
    keys.type(PASSWORD)
    keys.press("Enter")
    page.wait_for_selector("#files:not(.hidden)")

    tab_to(page, "Choose files")
    with page.expect_file_chooser() as chooser:
        keys.press("Space")
    chooser.value.set_files(str(src))
    wait_state(page, "keys.bin", "done")
    page.locator("#file-rows tr", has_text="keys.bin").wait_for()

    tab_to(page, "Download keys.bin")
    with page.expect_download() as download:
        keys.press("Enter")
    assert Path(download.value.path()).read_bytes() == data

    tab_to(page, "Share keys.bin")
    keys.press("Enter")
    assert page.evaluate("document.activeElement.id") == "share-user"  # focus moved into the dialog
    keys.type(bob)
    keys.press("Enter")
    page.locator("#grantees li", has_text=bob).wait_for()
    page.evaluate("document.querySelector('#file-rows tr').dataset.old = '1'")
    keys.press("Escape")
    page.wait_for_function("() => !document.querySelector('#file-rows tr[data-old]')")  # redrawn
    assert page.evaluate(FOCUS)["name"] == "Share keys.bin"  # the place in the list is kept
    assert app_server.request("GET", f"/shared/{name}/keys.bin", token=bob_token).body == data

    tab_to(page, "Create a link to keys.bin")
    keys.press("Enter")
    tab_to(page, "Download limit (optional)")
    keys.type("1")
    keys.press("Enter")
    page.wait_for_selector("#link-result:not(.hidden)")
    assert page.evaluate("document.activeElement.id") == "link-url"
    url = page.input_value("#link-url")
    keys.press("Escape")
    public = app_server.request("GET", url.removeprefix(app_server.url))
    assert public.status == 200 and public.body == data

    tab_to(page, "Delete keys.bin")
    page.once("dialog", lambda d: d.accept())  # the browser's own confirm box: Enter accepts it
    keys.press("Enter")
    page.locator("#file-rows tr", has_text="keys.bin").wait_for(state="detached")
    assert app_server.request("GET", "/download/keys.bin", token=token).status == 404


# A dropped folder arrives as a directory entry. A headless browser cannot drag a folder from
# the desktop, so the test builds a real one in the browser's sandboxed file system (the same
# FileSystemDirectoryEntry API) and hands it to the page's drop handler in a drop event.
DROP_FOLDER = """async () => {
  const call = (fn) => new Promise((resolve, reject) => fn(resolve, reject));
  const fs = await call((ok, no) => webkitRequestFileSystem(window.TEMPORARY, 1 << 20, ok, no));
  const folder = (dir, name) => call((ok, no) => dir.getDirectory(name, { create: true }, ok, no));
  const write = async (dir, name, text) => {
    const entry = await call((ok, no) => dir.getFile(name, { create: true }, ok, no));
    const writer = await call((ok, no) => entry.createWriter(ok, no));
    await call((ok, no) => { writer.onwriteend = ok; writer.onerror = no; writer.write(new Blob([text])); });
  };
  const album = await folder(fs.root, "album");
  await write(album, "c.txt", "c bytes");
  await write(await folder(album, "deep"), "d.txt", "d bytes");
  const drop = new Event("drop", { cancelable: true });
  const items = [{ webkitGetAsEntry: () => album }];
  Object.defineProperty(drop, "dataTransfer", { value: { items, files: [] } });
  document.getElementById("drop").dispatchEvent(drop);
}"""


def test_a_chosen_or_dropped_folder_uploads_its_files_named_by_their_path(
    tabs: Callable[..., Tab], app_server: Server, tmp_path: Path
) -> None:
    name, token = new_account(app_server)
    page = tabs().sign_in(name)
    folder = tmp_path / "photos"
    (folder / "2026").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"a bytes")
    (folder / "2026" / "b.bin").write_bytes(blob(300_000, 8))
    page.set_input_files("#folder-picker", str(folder))  # "Choose a folder"
    wait_state(page, "photos_a.txt", "done")
    wait_state(page, "photos_2026_b.bin", "done")
    assert stored(app_server, token, "photos_a.txt") == b"a bytes"
    assert stored(app_server, token, "photos_2026_b.bin") == blob(300_000, 8)

    page.evaluate(DROP_FOLDER)
    wait_state(page, "album_c.txt", "done")
    wait_state(page, "album_deep_d.txt", "done")
    assert stored(app_server, token, "album_c.txt") == b"c bytes"
    assert stored(app_server, token, "album_deep_d.txt") == b"d bytes"
    names = {f["filename"] for f in app_server.request("GET", "/files", token=token).json()["files"]}
    assert names == {"photos_a.txt", "photos_2026_b.bin", "album_c.txt", "album_deep_d.txt"}


def test_chunks_carry_checksums_and_renewed_tokens_and_cancel_deletes_the_upload(
    tabs: Callable[..., Tab], tmp_path: Path
) -> None:
    # Every token is within a minute of expiring (20 s): the page renews it before each chunk.
    srv = Server(tmp_path / "ttl", env={"VAULT_TOKEN_TTL": "20"}).start()
    try:
        name, _ = new_account(srv)
        tab = tabs(srv)
        tab.allowed = NETWORK_ERRORS  # the cancelled chunk
        page = tab.sign_in(name)
        data = blob(3 * MiB + 1, 9)
        src = tmp_path / "checked.bin"
        src.write_bytes(data)
        sent: list[tuple[str, str]] = []

        def record(request: Any) -> None:
            if request.method == "PATCH":
                sent.append((request.headers["upload-offset"], request.headers["upload-checksum"]))
            elif request.url.endswith("/web/session/refresh"):
                sent.append(("refresh", ""))

        page.on("request", record)
        page.set_input_files("#picker", str(src))
        wait_state(page, "checked.bin", "done")
        chunks = [(off, checksum) for off, checksum in sent if off != "refresh"]
        assert [off for off, _ in chunks] == [str(n * MiB) for n in range(4)]
        for off, checksum in chunks:
            piece = data[int(off) : int(off) + MiB]
            assert checksum == "sha256 " + base64.b64encode(hashlib.sha256(piece).digest()).decode()
        kinds = "".join("r" if off == "refresh" else "p" for off, _ in sent)
        assert "pp" not in kinds and kinds.startswith("r"), kinds  # a renewal before each chunk
        token = srv.request("POST", "/login", {"username": name, "password": PASSWORD}).json()["token"]
        assert stored(srv, token, "checked.bin") == data

        other = tmp_path / "cancelled.bin"
        other.write_bytes(data)
        page.route(
            "**/tus/*",
            lambda r: (
                None
                if r.request.method == "PATCH" and r.request.headers["upload-offset"] != "0"
                else r.continue_()
            ),
        )
        with page.expect_request(lambda r: r.method == "PATCH" and r.headers["upload-offset"] == str(MiB)):
            page.set_input_files("#picker", str(other))
        url = page.evaluate("Object.values(JSON.parse(localStorage.getItem('vault.uploads')))[0]")
        with page.expect_response(lambda r: r.request.method == "DELETE" and r.url.endswith(url)) as deleted:
            upload_row(page, "cancelled.bin").get_by_role("button", name="Cancel").click()
        assert deleted.value.status == 204
        wait_state(page, "cancelled.bin", "cancelled")
        assert page.evaluate("localStorage.getItem('vault.uploads')") == "{}"
        token = srv.request("POST", "/login", {"username": name, "password": PASSWORD}).json()["token"]
        head = srv.request("HEAD", url, headers={"Tus-Resumable": "1.0.0"}, token=token)
        assert head.status == 404  # gone from the server too
    finally:
        srv.stop()
