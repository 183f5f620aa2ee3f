"""The web app over real HTTPS, without a browser: its page and assets, the browser session's
cookies and CSRF defence, cookie downloads, QR codes and the public link page's form.
tests/test_browser.py drives the same app in Chromium."""

import hashlib
import html
import re
import urllib.parse
from http.cookies import SimpleCookie
from typing import Any

import pytest

from handlers.pages import WEB_DIR
from handlers.web import CSRF_HEADER, DOWNLOAD_COOKIE, REFRESH_COOKIE
from tests.server import Response, Server

PASSWORD = "correct horse battery"
HTML_ACCEPT = "text/html,application/xhtml+xml,*/*;q=0.8"
ASSET_RE = re.compile(r'(?:src|href)="(/static/[0-9a-f]+/([^"]+))"')


def cookies(resp: Response) -> dict[str, Any]:
    """Set-Cookie headers by cookie name (morsels: value and attributes)."""
    jar: dict[str, Any] = {}
    for line in resp.headers.get_all("Set-Cookie") or []:
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(line)
        jar.update(parsed)
    return jar


def web(server: Server, path: str, body: Any = None, **headers: str) -> Response:
    return server.request("POST", "/web/session" + path, body or {}, headers={CSRF_HEADER: "1", **headers})


def sign_in(server: Server) -> tuple[str, Response]:
    name, _ = server.new_user(PASSWORD)
    resp = web(server, "", {"username": name, "password": PASSWORD})
    assert resp.status == 200, resp.body
    return name, resp


def with_cookie(name: str, value: str) -> dict[str, str]:
    return {"Cookie": f"{name}={value}"}


# --------------------------------------------------------------------------- page and assets


def test_page_has_a_strict_csp_and_loads_only_versioned_assets_from_vault(server: Server) -> None:
    page = server.request("GET", "/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe" not in csp and "http" not in csp
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-cache"
    text = page.body.decode()
    assert "<script>" not in text and "style=" not in text and "<style" not in text
    assets = ASSET_RE.findall(text)
    assert {a[1] for a in assets} == {"app.css", "app.js", "icon.svg"}
    for url, name in assets:
        resp = server.request("GET", url)
        assert resp.status == 200, url
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert resp.body == (WEB_DIR / name).read_bytes()
        assert "Content-Security-Policy" in resp.headers
    stale = server.request("GET", "/static/0123abcd/app.js")
    assert stale.status == 200 and stale.headers["Cache-Control"] == "no-cache"
    for missing in ("/static/0123abcd/nope.js", "/static/0123abcd/index.html", "/static/0123abcd/../run.py"):
        assert server.request("GET", missing).status == 404, missing


def test_scripts_never_insert_html_or_evaluate_strings() -> None:
    """Every user string goes in as text: no innerHTML and friends anywhere in the app."""
    forbidden = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function")
    scripts = sorted(WEB_DIR.glob("*.js"))
    assert {"app.js", "api.js", "tus.js"} <= {path.name for path in scripts}  # the check saw them
    for path in scripts:
        assert not forbidden.search(path.read_text()), path.name


# --------------------------------------------------------------------------- the browser session


def test_sign_in_keeps_the_refresh_token_in_an_httponly_strict_cookie_only(server: Server) -> None:
    name, resp = sign_in(server)
    body = resp.json()
    assert set(body) == {"token", "expires_in", "username"} and body["username"] == name
    jar = cookies(resp)
    refresh, download = jar[REFRESH_COOKIE], jar[DOWNLOAD_COOKIE]
    for morsel, path in ((refresh, "/web/session"), (download, "/web/dl")):
        assert morsel["path"] == path
        assert morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Strict"
    assert download.value == body["token"]
    assert refresh.value not in resp.body.decode()
    assert server.request("GET", "/me", token=body["token"]).json()["username"] == name


@pytest.mark.parametrize(
    "headers",
    [{}, {CSRF_HEADER: "0"}, {CSRF_HEADER: "1", "Origin": "https://evil.example"}],
    ids=["no header", "wrong header", "other origin"],
)
def test_session_routes_refuse_cross_site_requests(server: Server, headers: dict[str, str]) -> None:
    name, signed = sign_in(server)
    cookie = with_cookie(REFRESH_COOKIE, cookies(signed)[REFRESH_COOKIE].value)
    for path, body in (("", {"username": name, "password": PASSWORD}), ("/refresh", {}), ("/end", {})):
        resp = server.request("POST", "/web/session" + path, body, headers={**cookie, **headers})
        assert resp.status == 403, (path, resp.body)
        assert resp.json()["status"] == 403 and "Set-Cookie" not in resp.headers
    # Nothing was ended or rotated: the cookie still renews, from the page's own origin.
    origin = {"Origin": f"https://127.0.0.1:{server.port}"}
    assert web(server, "/refresh", **cookie, **origin).status == 200


def test_refresh_rotates_the_cookie_and_a_reused_one_ends_the_session(server: Server) -> None:
    _, signed = sign_in(server)
    first = cookies(signed)[REFRESH_COOKIE].value
    renewed = web(server, "/refresh", **with_cookie(REFRESH_COOKIE, first))
    assert renewed.status == 200, renewed.body
    second = cookies(renewed)[REFRESH_COOKIE].value
    assert second != first and cookies(renewed)[DOWNLOAD_COOKIE].value == renewed.json()["token"]
    reused = web(server, "/refresh", **with_cookie(REFRESH_COOKIE, first))
    assert (reused.status, reused.json()["message"]) == (401, "Signed out: sign in again")
    assert cookies(reused)[REFRESH_COOKIE].value == ""  # cleared
    assert web(server, "/refresh", **with_cookie(REFRESH_COOKIE, second)).status == 401
    assert server.request("GET", "/me", token=renewed.json()["token"]).status == 401
    assert web(server, "/refresh").status == 401  # no cookie at all


def test_sign_out_ends_the_session_and_clears_both_cookies(server: Server) -> None:
    _, signed = sign_in(server)
    refresh = cookies(signed)[REFRESH_COOKIE].value
    token = signed.json()["token"]
    out = web(server, "/end", **with_cookie(REFRESH_COOKIE, refresh))
    assert (out.status, out.json()) == (200, {"message": "Signed out"})
    jar = cookies(out)
    assert jar[REFRESH_COOKIE].value == "" and jar[DOWNLOAD_COOKIE].value == ""
    assert server.request("GET", "/me", token=token).status == 401
    assert web(server, "/refresh", **with_cookie(REFRESH_COOKIE, refresh)).status == 401
    assert web(server, "/end").status == 200  # nothing to end: still fine


def test_password_change_from_the_page_ends_other_sessions_and_renews_cookies(server: Server) -> None:
    name, signed = sign_in(server)
    other = web(server, "", {"username": name, "password": PASSWORD})
    auth = {"Authorization": f"Bearer {signed.json()['token']}"}
    wrong = web(server, "/password", {"old_password": "nope nope", "new_password": "a new secret"}, **auth)
    assert wrong.status == 401
    changed = web(server, "/password", {"old_password": PASSWORD, "new_password": "a new secret"}, **auth)
    assert changed.status == 200, changed.body
    assert changed.json()["message"] == "Password changed" and REFRESH_COOKIE in cookies(changed)
    assert server.request("GET", "/me", token=other.json()["token"]).status == 401
    assert server.request("GET", "/me", token=changed.json()["token"]).status == 200


# --------------------------------------------------------------------------- downloads and QR


def test_download_routes_take_the_cookie_and_ignore_a_bearer_header(server: Server) -> None:
    _, signed = sign_in(server)
    token = signed.json()["token"]
    assert server.put_file(token, "café.bin", b"\x00web bytes").status == 201
    path = "/web/dl/files/" + urllib.parse.quote("café.bin")
    got = server.request("GET", path, headers=with_cookie(DOWNLOAD_COOKIE, token))
    assert (got.status, got.body) == (200, b"\x00web bytes")
    assert "attachment" in got.headers["Content-Disposition"]
    assert server.request("GET", path, token=token).status == 401
    assert server.request("GET", path, headers=with_cookie(DOWNLOAD_COOKIE, "forged.jwt.x")).status == 401
    owner, other = server.new_user()
    assert server.put_file(other, "theirs.txt", b"shared").status == 201
    me = server.request("GET", "/me", token=token).json()["username"]
    assert server.request("POST", "/files/theirs.txt/shares", {"username": me}, token=other).status == 201
    shared = server.request(
        "GET", f"/web/dl/shared/{owner}/theirs.txt", headers=with_cookie(DOWNLOAD_COOKIE, token)
    )
    assert (shared.status, shared.body) == (200, b"shared")


def test_qr_code_is_svg_and_needs_a_token(server: Server, token: str) -> None:
    text = "https://127.0.0.1/s/secret"
    qr = server.request("POST", "/web/qr", {"text": text}, token=token)
    assert qr.status == 200 and qr.headers["Content-Type"] == "image/svg+xml"
    assert qr.body.startswith(b"<svg") and b"secret" not in qr.body
    assert server.request("POST", "/web/qr", {"text": text}).status == 401
    assert server.request("POST", "/web/qr", {"text": "x" * 1025}, token=token).status == 400


# --------------------------------------------------------------------------- the public link page


def new_link(server: Server, token: str, name: str, **options: Any) -> str:
    resp = server.request("POST", f"/files/{name}/links", options, token=token)
    assert resp.status == 201, resp.body
    return str(urllib.parse.urlsplit(resp.json()["url"]).path)


def form(server: Server, path: str, **fields: str) -> Response:
    body = urllib.parse.urlencode(fields)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": HTML_ACCEPT}
    return server.request("POST", path, body, headers=headers)


def test_link_page_shows_name_size_expiry_and_sha256_at_no_cost(server: Server, token: str) -> None:
    data = b"link page bytes\n" * 100
    name = "<img src=x onerror='alert(1)'>&.txt"  # names cannot hold "/": no closing tags
    assert server.put_file(token, name, data).status == 201
    path = new_link(server, token, urllib.parse.quote(name, safe=""), max_downloads=1, expires_in=3600)
    for _ in range(2):
        page = server.request("GET", path, headers={"Accept": HTML_ACCEPT})
        assert page.status == 200 and "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        text = page.body.decode()
        assert html.escape(name) in text and "<img" not in text
        assert "1.6 KiB" in text and "1,600 bytes" in text
        assert hashlib.sha256(data).hexdigest() in text
        assert 'name="viewport"' in text and 'href="?dl=1"' in text
    got = server.request("GET", path + "?dl=1", headers={"Accept": HTML_ACCEPT})
    assert (got.status, got.body) == (200, data)
    gone = server.request("GET", path + "?dl=1", headers={"Accept": HTML_ACCEPT})
    assert gone.status == 410 and "no downloads left" in gone.body.decode()
    assert gone.headers["Content-Type"].startswith("text/html")


def test_password_link_page_asks_with_a_form_not_the_basic_dialog(server: Server, token: str) -> None:
    data = b"secret plans"
    assert server.put_file(token, "plans.txt", data).status == 201
    path = new_link(server, token, "plans.txt", password="open sesame 1")
    page = server.request("GET", path, headers={"Accept": HTML_ACCEPT})
    assert page.status == 200 and "WWW-Authenticate" not in page.headers
    assert 'id="password-form"' in page.body.decode() and "plans.txt" not in page.body.decode()
    wrong = form(server, path, password="not it at all")
    assert wrong.status == 403 and "WWW-Authenticate" not in wrong.headers
    assert "Wrong password" in wrong.body.decode() and "plans.txt" not in wrong.body.decode()
    opened = form(server, path, password="open sesame 1")
    text = opened.body.decode()
    assert opened.status == 200 and "plans.txt" in text and 'id="download-form"' in text
    assert form(server, path, password="not it", dl="1").status == 403
    got = form(server, path, password="open sesame 1", dl="1")
    assert (got.status, got.body) == (200, data)
    assert "attachment" in got.headers["Content-Disposition"]
    # curl is unchanged: a Basic challenge without the password
    assert server.request("GET", path).headers["WWW-Authenticate"].startswith("Basic")


def test_link_form_over_its_size_limit_is_refused_before_it_is_read(server: Server, token: str) -> None:
    assert server.put_file(token, "f.txt", b"x").status == 201
    path = new_link(server, token, "f.txt")
    big = form(server, path, password="x" * 5000)
    assert big.status == 413 and big.headers["Content-Type"].startswith("text/html")
    extra = form(server, path, **{f"f{i}": "1" for i in range(20)})  # unknown fields: ignored
    assert extra.status == 200
    assert server.request("GET", path, "x" * 10).status == 413  # a GET has no body


def test_link_secret_from_the_page_form_is_not_logged(server: Server, token: str) -> None:
    assert server.put_file(token, "logged.txt", b"x").status == 201
    path = new_link(server, token, "logged.txt", password="open sesame 1")
    form(server, path, password="open sesame 1", dl="1")
    secret = path.rsplit("/", 1)[1]
    assert secret not in server.output() and "open sesame 1" not in server.output()
