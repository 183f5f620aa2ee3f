"""The web app's JSON side: the browser session, downloads
authenticated by a cookie, and QR codes for links.

Where the browser keeps its tokens (README, Security model): the refresh token in an httpOnly,
Secure, SameSite=Strict cookie sent only to ``/web/session``; the access token in page memory,
plus a copy in an httpOnly cookie sent only to ``/web/dl/`` so that a download is a plain link
the browser's own download manager fetches (no token in a URL, no file in page memory). The
session routes refuse a request without the ``X-Vault-Web`` header or from another origin
(CSRF); the JSON API for curl is unchanged and never reads a cookie.
"""

import io
import urllib.parse
from typing import Any

import segno
import tornado.web

from handlers.auth import LoginHandler, PasswordCheckHandler, PasswordHandler
from handlers.base import BaseHandler, JSONBodyHandler
from handlers.files import DownloadHandler
from handlers.pages import PageHeaders
from handlers.sharing import SharedDownloadHandler
from vault.auth import TokenPair
from vault.errors import AuthError, InputError, InvalidToken

REFRESH_COOKIE = "__Secure-vault-refresh"
DOWNLOAD_COOKIE = "__Secure-vault-dl"
SESSION_PATH = "/web/session"
DOWNLOAD_PATH = "/web/dl"
CSRF_HEADER = "X-Vault-Web"
MAX_QR_TEXT = 1024


class SessionHandler(PasswordCheckHandler, PageHeaders):
    """The browser session routes: same origin and the ``X-Vault-Web`` header, or 403."""

    def prepare(self) -> None:
        if self.request.headers.get(CSRF_HEADER) != "1":
            raise tornado.web.HTTPError(403, f"Forbidden: send {CSRF_HEADER}: 1")
        origin = self.request.headers.get("Origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != self.request.host:
            raise tornado.web.HTTPError(403, "Forbidden: cross-origin request")
        super().prepare()

    def start_session(self, pair: TokenPair, status: int = 200, **extra: str) -> None:
        secure: dict[str, Any] = {"httponly": True, "secure": True, "samesite": "Strict"}
        self.set_cookie(
            REFRESH_COOKIE, pair.refresh_token, path=SESSION_PATH, max_age=pair.refresh_expires_in, **secure
        )
        self.set_cookie(DOWNLOAD_COOKIE, pair.token, path=DOWNLOAD_PATH, max_age=pair.expires_in, **secure)
        username = self.auth.decode(pair.token).identity.username
        body = {"token": pair.token, "expires_in": pair.expires_in, "username": username, **extra}
        self.write_json(status, body)

    def end_session(self) -> None:
        for name, path in ((REFRESH_COOKIE, SESSION_PATH), (DOWNLOAD_COOKIE, DOWNLOAD_PATH)):
            self.clear_cookie(name, path=path, secure=True, httponly=True, samesite="Strict")


class SignInHandler(SessionHandler, LoginHandler):
    """``POST /web/session`` {"username", "password"}: /login for a browser (throttled alike)."""

    async def post(self) -> None:
        self.start_session(await self.log_in())


class RenewHandler(SessionHandler):
    """``POST /web/session/refresh``: the cookie's refresh token for a new pair (it rotates).
    A refused cookie is cleared, so the page falls back to signing in."""

    async def post(self) -> None:
        try:
            pair = await self.auth.refresh(self.get_cookie(REFRESH_COOKIE) or "")
        except (AuthError, InputError):
            self.end_session()
            raise InvalidToken("Signed out: sign in again") from None
        self.start_session(pair)


class SignOutHandler(SessionHandler):
    """``POST /web/session/end``: ends the cookie's session (its refresh and access tokens stop
    working) and clears the cookies. Needs no access token, which may have expired or been
    revoked by "sign out everywhere"."""

    AUDITED = {"POST": "logout"}

    async def post(self) -> None:
        self.end_session()
        token = self.get_cookie(REFRESH_COOKIE)
        if token:
            try:  # one rotation names the session; then it ends
                pair = await self.auth.refresh(token)
                access = self.auth.decode(pair.token)
                self.audit_actor = access.identity.username
                await self.auth.logout(access)
            except (AuthError, InputError):
                pass  # already ended
        self.write_json(200, {"message": "Signed out"})


class WebPasswordHandler(SessionHandler, PasswordHandler):
    """``POST /web/session/password`` {"old_password", "new_password"}: /password for a browser;
    every other session ends and this one continues with new cookies."""

    async def post(self) -> None:
        self.start_session(await self.change(), message="Password changed")


class CookieAuth(BaseHandler):
    """The download routes take the access token from the download cookie, never a header."""

    def bearer_token(self) -> str:
        token = self.get_cookie(DOWNLOAD_COOKIE)
        if not token:
            raise InvalidToken("Signed out: open vault and sign in again")
        return token


class WebDownloadHandler(CookieAuth, DownloadHandler):
    """``GET``/``HEAD /web/dl/files/<name>``: the caller's file, as ``/download`` sends it."""


class WebSharedDownloadHandler(CookieAuth, SharedDownloadHandler):
    """``GET``/``HEAD /web/dl/shared/<owner>/<name>``: a file shared with the caller."""


class QRHandler(JSONBodyHandler):
    """``POST /web/qr`` {"text"}: an SVG QR code (segno). The text (a link's secret URL) comes
    in the body, never the URL, so no log holds it."""

    async def post(self) -> None:
        await self.authenticated()
        text = self.json_body().get("text")
        if not isinstance(text, str) or not 0 < len(text) <= MAX_QR_TEXT:
            raise InputError(f"Field 'text' must be a string of 1-{MAX_QR_TEXT} characters")
        out = io.BytesIO()
        segno.make(text, error="m", micro=False).save(out, kind="svg", scale=4, border=4, xmldecl=False)
        self.set_header("Content-Type", "image/svg+xml")
        self.finish(out.getvalue())


def routes() -> list[tuple[str, type]]:
    return [
        (r"/web/session", SignInHandler),
        (r"/web/session/refresh", RenewHandler),
        (r"/web/session/end", SignOutHandler),
        (r"/web/session/password", WebPasswordHandler),
        (r"/web/dl/files/([^/]+)", WebDownloadHandler),
        (r"/web/dl/shared/([^/]+)/([^/]+)", WebSharedDownloadHandler),
        (r"/web/qr", QRHandler),
    ]
