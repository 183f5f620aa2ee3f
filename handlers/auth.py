"""Accounts: register and log in."""

from handlers.base import BaseHandler, JSONBodyHandler


class RegisterHandler(JSONBodyHandler):
    async def post(self) -> None:
        body = self.json_body()
        await self.auth.register(body.get("username"), body.get("password"))
        self.write_json(201, {"message": "User registered successfully"})


class LoginHandler(JSONBodyHandler):
    async def post(self) -> None:
        body = self.json_body()
        username = body.get("username")
        account = username if isinstance(username, str) else ""
        address = self.throttle.client_address(
            self.request.remote_ip or "", self.request.headers.get("X-Forwarded-For")
        )
        # check() before bcrypt, failed() on InvalidCredentials, succeeded() on success.
        with self.throttle.attempt(account, address):
            issued = await self.auth.login(username, body.get("password"))
        self.write_json(200, {"token": issued.token, "expires_in": issued.expires_in})


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(200, {"status": "ok"})


def routes() -> list[tuple[str, type]]:
    return [
        (r"/register", RegisterHandler),
        (r"/login", LoginHandler),
        (r"/health", HealthHandler),
    ]
