"""One HTTP connection to a vault server (httpx: keep-alive, streaming, proxy variables) and
the session's tokens: access tokens are renewed from the refresh token by themselves.

Refresh tokens rotate and the server revokes a session whose spent refresh token comes back,
so a renewal is never retried once its request may have reached the server: a lost answer, or
a process killed while waiting for it (``Credentials.refreshing`` stays set), means logging in
again, said plainly. Only a connection that was never made is safe to try again.
"""

import contextlib
import json
import os
import ssl
import time
from collections.abc import Iterator
from importlib import metadata
from typing import Any
from urllib.parse import quote

import httpx

from vaultcli.config import Credentials, Store
from vaultcli.errors import CliError, LoginNeeded

RENEW_MARGIN = 30.0  # seconds: renew an access token this long before it expires
TIMEOUT = httpx.Timeout(120.0, connect=20.0)


def version() -> str:
    try:
        return metadata.version("vault")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def path_of(name: str) -> str:
    """A file name as one path segment."""
    return quote(name, safe="")


def server_message(response: httpx.Response) -> str:
    """The server's one-line ``message``, or the status when the body says nothing useful."""
    try:
        response.read()
        content = response.content[:65536]
    except httpx.HTTPError:
        content = b""
    return body_message(response.status_code, response.reason_phrase, content)


def body_message(status: int, reason: str, content: bytes) -> str:
    """``message`` from an error answer's JSON body, in one line with the status."""
    try:
        body = json.loads(content)
        message = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    text = str(message) if message else reason or "error"
    return f"{text} (HTTP {status})".replace("\n", " ")


def transport_message(url: str, exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"cannot verify {url}'s TLS certificate ({text}); trust its CA with --cacert or VAULT_CACERT"
    return f"cannot reach {url}: {text}"


def tls_context(cacert: str | None) -> ssl.SSLContext:
    """The system's trust store, or only ``cacert`` (a self-signed server's certificate)."""
    try:
        if cacert:
            return ssl.create_default_context(cafile=cacert)
        return ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot use the CA file {cacert}: {exc}") from None


def user_agent() -> str:
    return f"vault-cli/{version()}"


def make_http(base_url: str, tls: ssl.SSLContext) -> httpx.Client:
    """httpx honours HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY (``trust_env``)."""
    return httpx.Client(
        base_url=base_url,
        verify=tls,
        timeout=TIMEOUT,
        headers={"User-Agent": user_agent()},
        trust_env=True,
        follow_redirects=False,
    )


class Session:
    """A logged-in user's connection: ``request`` and ``stream`` add a fresh access token."""

    def __init__(self, store: Store, creds: Credentials, cacert: str | None = None) -> None:
        self.store = store
        self.creds = creds
        self.url = creds.url
        self.sent_token: str | None = None
        self.tls = tls_context(cacert or os.environ.get("VAULT_CACERT") or creds.cacert)
        self.http = make_http(creds.url, self.tls)

    @classmethod
    def open(cls, store: Store, cacert: str | None = None) -> "Session":
        creds = store.load_credentials()
        if creds is None:
            raise LoginNeeded("not logged in: run `vault login URL` first")
        return cls(store, creds, cacert)

    def close(self) -> None:
        self.http.close()

    # -- tokens ---------------------------------------------------------------------------

    def token(self, rejected: str | None = None) -> str:
        """A usable access token, renewed if it is about to expire or was ``rejected``.
        Another ``vault`` process may have renewed it meanwhile: the file is read again under
        the lock, so a refresh token is never spent twice."""
        with self.store.locked():
            creds = self.store.load_credentials()
            if creds is None or creds.url != self.url:
                raise LoginNeeded("logged out meanwhile: run `vault login` again")
            self.creds = creds
            fresh = creds.access_expires - time.time() > RENEW_MARGIN
            if creds.access_token and fresh and creds.access_token != rejected:
                return creds.access_token
            return self._refresh(creds)

    def _refresh(self, creds: Credentials) -> str:
        if creds.refreshing:
            raise LoginNeeded(
                "an earlier token renewal was cut off before its answer arrived; sending that refresh"
                " token again would end the session, so log in again: vault login"
            )
        creds.refreshing = True
        self.store.save_credentials(creds)
        try:
            response = self.http.post("/token/refresh", json={"refresh_token": creds.refresh_token})
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never reached the server
            creds.refreshing = False
            self.store.save_credentials(creds)
            raise CliError(transport_message(self.url, exc)) from None
        except httpx.TransportError:
            raise LoginNeeded(
                "the answer to a token renewal was lost; the refresh token is spent and reusing it would"
                " end the session, so log in again: vault login"
            ) from None
        if response.status_code == 200:
            pair = response.json()
            creds.access_token = pair["token"]
            creds.access_expires = time.time() + float(pair["expires_in"])
            creds.refresh_token = pair["refresh_token"]
            creds.refreshing = False
            self.store.save_credentials(creds)
            return str(pair["token"])
        message = server_message(response)
        if response.status_code == 401:
            self.store.forget_credentials()
            raise LoginNeeded(f"the session has ended ({message}): log in again: vault login")
        if response.status_code < 500:  # refused before the token was looked at
            creds.refreshing = False
            self.store.save_credentials(creds)
        raise CliError(f"token renewal failed: {message}")

    # -- requests -------------------------------------------------------------------------

    def _auth(self, token: str, headers: dict[str, str] | None) -> dict[str, str]:
        return {**(headers or {}), "Authorization": f"Bearer {token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request with a small body, sent again once with a renewed token if the server
        refuses the access token (expired early by a clock difference, or no longer valid after
        a server's key change); a session the server ended fails at the renewal."""
        headers = kwargs.pop("headers", None)
        token = self.token()
        try:
            response = self.http.request(method, path, headers=self._auth(token, headers), **kwargs)
            if response.status_code == 401:
                token = self.token(rejected=token)
                response = self.http.request(method, path, headers=self._auth(token, headers), **kwargs)
        except httpx.TransportError as exc:
            raise CliError(transport_message(self.url, exc)) from None
        return response

    def expect(self, response: httpx.Response, *ok: int) -> httpx.Response:
        """The response if its status is one of ``ok``; else the server's message as an error."""
        if response.status_code in ok:
            return response
        message = server_message(response)
        if response.status_code == 401:
            raise LoginNeeded(f"{message}: run `vault login` again")
        raise CliError(message)

    def json(self, method: str, path: str, *ok: int, **kwargs: Any) -> Any:
        return self.expect(self.request(method, path, **kwargs), *(ok or (200,))).json()

    @contextlib.contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed request; the caller handles 401 (its body may not be replayable)."""
        headers = kwargs.pop("headers", None)
        self.sent_token = self.token()
        with self.http.stream(
            method, path, headers=self._auth(self.sent_token, headers), **kwargs
        ) as response:
            yield response

    def renew(self) -> None:
        """After a 401 on ``stream``: renew the token that was sent (once per retry)."""
        self.token(rejected=self.sent_token)
