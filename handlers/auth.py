"""Accounts and sessions: register, log in, refresh, log out (here or everywhere), new password."""

from typing import Any

from handlers.base import BaseHandler, JSONBodyHandler
from vault.auth import TokenPair
from vault.errors import Busy, VaultError

UNKNOWN_ACCOUNT = "(no such account)"  # the audit actor of a failed login with any other name


def pair_json(pair: TokenPair) -> dict[str, Any]:
    return {
        "token": pair.token,
        "expires_in": pair.expires_in,
        "refresh_token": pair.refresh_token,
        "refresh_expires_in": pair.refresh_expires_in,
    }


class PasswordCheckHandler(JSONBodyHandler):
    """Checks a password under the login throttle: check() before bcrypt, failed() on
    InvalidCredentials, succeeded() on success."""


class RegisterHandler(PasswordCheckHandler):
    AUDITED = {"POST": "register"}

    async def post(self) -> None:
        body = self.json_body()
        self.audit_actor = str(body.get("username"))[:64]
        await self.throttle.check_registration(self.client_address())  # 429 before bcrypt runs
        await self.auth.sign_up(body.get("username"), body.get("password"), body.get("invite"))
        self.write_json(201, {"message": "User registered successfully"})


class LoginHandler(PasswordCheckHandler):
    AUDITED = {"POST": "login"}

    async def post(self) -> None:
        self.write_json(200, pair_json(await self.log_in()))

    async def log_in(self) -> TokenPair:
        """The body's credentials, under the throttle, for a new session (web.py's too)."""
        body = self.json_body()
        username = body.get("username")
        account = username if isinstance(username, str) else ""
        try:
            async with self.throttle.guard(account, self.client_address()):
                pair = await self.auth.login(username, body.get("password"))
        except VaultError:
            # What was typed as a user name is often a password: the audit log names only
            # accounts that exist.
            user = await self.auth.find_user(account) if account else None
            self.audit_actor = user.username if user else UNKNOWN_ACCOUNT
            raise
        self.audit_actor = account[:64]
        return pair


class RefreshHandler(JSONBodyHandler):
    """``POST /token/refresh`` {"refresh_token"}: a new pair; the presented token is used up."""

    async def post(self) -> None:
        pair = await self.auth.refresh(self.json_body().get("refresh_token"))
        self.write_json(200, pair_json(pair))


class LogoutHandler(JSONBodyHandler):
    """``POST /logout`` {"refresh_token"} (optional): ends the session of the Bearer token."""

    AUDITED = {"POST": "logout"}

    async def post(self) -> None:
        access = await self.access()
        await self.auth.logout(access, self.json_body(empty_ok=True).get("refresh_token"))
        self.write_json(200, {"message": "Logged out"})


class LogoutAllHandler(BaseHandler):
    """``POST /logout/all``: every access and refresh token of the caller stops working."""

    AUDITED = {"POST": "logout-all"}

    async def post(self) -> None:
        await self.auth.logout_all(await self.authenticated())
        self.write_json(200, {"message": "Logged out everywhere"})


class PasswordHandler(PasswordCheckHandler):
    """``POST /password`` {"old_password", "new_password"}: a wrong old password counts toward
    the login throttle; success ends every session and answers a fresh pair."""

    AUDITED = {"POST": "password-change"}

    async def post(self) -> None:
        self.write_json(200, {"message": "Password changed", **pair_json(await self.change())})

    async def change(self) -> TokenPair:
        """Check and change the password (web.py's route too); the new session's pair."""
        identity = await self.authenticated()
        body = self.json_body()
        async with self.throttle.guard(identity.username, self.client_address()):
            return await self.auth.change_password(
                identity, body.get("old_password"), body.get("new_password")
            )


class HealthHandler(BaseHandler):
    """``GET /health``: 200 only if the database answers a read; 503 otherwise."""

    async def get(self) -> None:
        if not await self.core.store.healthy():
            raise Busy("Database unavailable")
        self.write_json(200, {"status": "ok"})


def routes() -> list[tuple[str, type]]:
    return [
        (r"/register", RegisterHandler),
        (r"/login", LoginHandler),
        (r"/token/refresh", RefreshHandler),
        (r"/logout", LogoutHandler),
        (r"/logout/all", LogoutAllHandler),
        (r"/password", PasswordHandler),
        (r"/health", HealthHandler),
    ]
