"""vault.auth without a server: username/password rules, token verification, register/login."""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import bcrypt
import pytest

from storage.sqlite import SQLiteStore
from tests import incore
from tests.dbedit import edit
from vault.auth import (
    CHANGE_ATTEMPTS,
    EPOCH_CACHE_SECONDS,
    INVITE_RE,
    MAX_PENDING_REGISTRATIONS,
    USER_ID_BITS,
    Authenticator,
    Identity,
    TokenPair,
    check_password,
    check_username,
    invite_hash,
)
from vault.config import Settings
from vault.core import Core, open_core
from vault.errors import (
    Busy,
    ExpiredToken,
    Forbidden,
    IntegrityError,
    InvalidCredentials,
    InvalidField,
    InvalidToken,
    NotFound,
    RevokedToken,
    UserExists,
)
from vault.keys import Keyring, row_tag
from vault.rows import USER
from vault.store import RefreshToken, Store, User
from vault.tokens import MAX_REFRESH_CHARS, POLL_OVERLAP, RefreshTokens, refresh_id

KEYRING = Keyring.of(1, {1: bytes(range(32))})
SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(32, 64))
ISSUER = "vault-test"
AUDIENCE = "vault-test-aud"
TTL = 600


class FakeUserStore:
    """Just the user methods Authenticator needs, and a list for the refresh tokens a login
    adds; verify() never touches the store."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.lookups: list[str] = []
        self.refresh_tokens: list[RefreshToken] = []

    async def create_user(self, user: User, invite: bytes | None = None) -> None:
        if user.username in self.users:
            raise UserExists()
        self.users[user.username] = user

    async def set_last_login(self, user_id: int, at: float) -> None:
        pass

    async def get_user(self, username: str) -> User | None:
        self.lookups.append(username)
        return self.users.get(username)

    async def add_refresh(self, token: RefreshToken, prune_before: float) -> None:
        self.refresh_tokens.append(token)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1, thread_name_prefix="test-bcrypt")
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
def store() -> FakeUserStore:
    return FakeUserStore()


@pytest.fixture
def auth(store: FakeUserStore, executor: ThreadPoolExecutor) -> Authenticator:
    return authenticator(cast(Store, store), executor)


def authenticator(
    store: Store,
    executor: ThreadPoolExecutor,
    secret: bytes = SECRET,
    keyring: Keyring = KEYRING,
    **options: Any,
) -> Authenticator:
    """An Authenticator with the tests' secret, keyring, claims and cheapest bcrypt cost."""
    return Authenticator(
        store,
        secret,
        keyring,
        rounds=4,
        ttl=TTL,
        issuer=ISSUER,
        audience=AUDIENCE,
        executor=executor,
        **options,
    )


# --- check_username / check_password ---------------------------------------------------------


@pytest.mark.parametrize("name", ["abc", "a" * 32, "Alice_1", "0day", "a.b-c_d", "ABC"])
def test_valid_usernames_are_accepted(name: str) -> None:
    assert check_username(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "ab", "a" * 33, "_abc", ".abc", "-abc", "a b", "al/ce", "alice\x00", "alice\n", "ålice", "alice!"],
)
def test_invalid_usernames_are_rejected(name: str) -> None:
    with pytest.raises(InvalidField) as refused:
        check_username(name)
    assert refused.value.message == (
        "Field 'username' is required and must be a non-empty string"
        if name == ""
        else "Field 'username' must be 3-32 characters: letters, digits, '_', '.', '-',"
        " starting with a letter or digit"
    )


@pytest.mark.parametrize("name", [None, 123, b"alice", ["alice"]])
def test_non_string_username_is_rejected(name: object) -> None:
    with pytest.raises(InvalidField, match="^Field 'username' is required and must be a non-empty string$"):
        check_username(name)


@pytest.mark.parametrize(
    "password",
    [
        "8 chars!",
        "a" * 72,
        "é" * 36,  # 72 bytes
        "€" * 24,  # 72 bytes
        "😀" * 18,  # 72 bytes
        "a" * 70 + "é",  # 72 bytes
    ],
    ids=["min-length", "ascii-72", "2byte-72", "3byte-72", "4byte-72", "mixed-72"],
)
def test_valid_passwords_are_accepted_as_utf8(password: str) -> None:
    assert check_password(password) == password.encode("utf-8")


@pytest.mark.parametrize(
    "password",
    ["a" * 73, "é" * 36 + "a", "€" * 24 + "a", "😀" * 18 + "a", "a" * 71 + "é", "a" * 70 + "€"],
    ids=["ascii-73", "2byte-73", "3byte-73", "4byte-73", "2byte-crossing", "3byte-crossing"],
)
def test_passwords_over_72_utf8_bytes_are_rejected(password: str) -> None:
    assert len(password.encode("utf-8")) > 72
    with pytest.raises(InvalidField, match="72 bytes"):
        check_password(password)


@pytest.mark.parametrize("password", ["a", "7 chars", "ééééééé"])
def test_passwords_under_8_characters_are_rejected(password: str) -> None:
    with pytest.raises(InvalidField, match="^Field 'password' must be at least 8 characters$"):
        check_password(password)


@pytest.mark.parametrize("password", ["password\x00", "\x00password", "pass\x00word123"])
def test_passwords_with_nul_are_rejected(password: str) -> None:
    with pytest.raises(InvalidField, match="NUL"):
        check_password(password)


@pytest.mark.parametrize("password", ["", None, 12345678, b"password123", ["password123"]])
def test_empty_or_non_string_password_is_rejected(password: object) -> None:
    with pytest.raises(InvalidField, match="required"):
        check_password(password)


# --- Authenticator.verify ---------------------------------------------------------------------


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_token(
    claims: dict[str, Any], key: bytes = SECRET, alg: str = "HS256", header: dict[str, Any] | None = None
) -> str:
    """A JWT signed by hand, so that tests can build tokens PyJWT itself refuses to make."""
    head = {"alg": alg, "typ": "JWT", **(header or {})}
    signing_input = b64url(json.dumps(head).encode()) + "." + b64url(json.dumps(claims).encode())
    digests: dict[str, Callable[[], Any]] = {
        "HS256": hashlib.sha256,
        "HS384": hashlib.sha384,
        "HS512": hashlib.sha512,
    }
    signature = b"" if alg.lower() == "none" else hmac.new(key, signing_input.encode(), digests[alg]).digest()
    return signing_input + "." + b64url(signature)


def good_claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": "7",
        "name": "alice",
        "typ": "access",
        "iat": now,
        "exp": now + TTL,
        "jti": "0123456789abcdef0123456789abcdef",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sid": "fedcba9876543210fedcba9876543210",
        "epoch": 0,
    }
    claims.update(changes)
    return claims


def assert_invalid(auth: Authenticator, token: str) -> None:
    with pytest.raises(InvalidToken) as info:
        auth.verify(token)
    assert str(info.value) == "Invalid token"


def test_issued_token_verifies(auth: Authenticator) -> None:
    issued = auth.issue(Identity(7, "alice"))
    assert issued.expires_in == TTL
    assert auth.verify(issued.token) == Identity(7, "alice")


def test_hand_made_token_verifies(auth: Authenticator) -> None:
    """The control for the attacks below: a correct hand-made token is accepted."""
    assert auth.verify(make_token(good_claims())) == Identity(7, "alice")
    assert auth.decode(make_token(good_claims(epoch=2**62 - 1))).epoch == 2**62 - 1  # the last epoch


def test_alg_none_token_is_invalid(auth: Authenticator) -> None:
    assert_invalid(auth, make_token(good_claims(), alg="none"))
    assert_invalid(auth, make_token(good_claims(), alg="none")[:-1])
    assert_invalid(auth, make_token(good_claims(), alg="None"))


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_token_with_another_hmac_algorithm_and_the_right_secret_is_invalid(
    auth: Authenticator, alg: str
) -> None:
    assert_invalid(auth, make_token(good_claims(), alg=alg))


def test_token_signed_with_another_key_is_invalid(auth: Authenticator) -> None:
    assert_invalid(auth, make_token(good_claims(), key=OTHER_SECRET))


def test_token_signed_by_another_authenticator_is_invalid(
    auth: Authenticator, executor: ThreadPoolExecutor
) -> None:
    other = authenticator(cast(Store, FakeUserStore()), executor, OTHER_SECRET)
    assert_invalid(auth, other.issue(Identity(7, "alice")).token)


def test_token_with_a_tampered_payload_is_invalid(auth: Authenticator) -> None:
    head, _, sig = make_token(good_claims()).split(".")
    forged_payload = b64url(json.dumps(good_claims(sub="1", name="admin")).encode())
    assert_invalid(auth, f"{head}.{forged_payload}.{sig}")


def test_expired_token_raises_expired_token(auth: Authenticator) -> None:
    issued = auth.issue(Identity(7, "alice"), now=time.time() - TTL - 120)
    with pytest.raises(ExpiredToken) as info:
        auth.verify(issued.token)
    assert "log in again" in str(info.value)


def test_expired_hand_made_token_raises_expired_token(auth: Authenticator) -> None:
    past = int(time.time()) - 3600
    with pytest.raises(ExpiredToken, match="log in again"):
        auth.verify(make_token(good_claims(iat=past - TTL, exp=past)))


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "jti", "iss", "aud", "sid", "epoch"])
def test_token_missing_a_required_claim_is_invalid(auth: Authenticator, claim: str) -> None:
    claims = good_claims()
    del claims[claim]
    assert_invalid(auth, make_token(claims))


@pytest.mark.parametrize("claim", ["typ", "name"])
def test_token_missing_typ_or_name_is_invalid(auth: Authenticator, claim: str) -> None:
    claims = good_claims()
    del claims[claim]
    assert_invalid(auth, make_token(claims))


@pytest.mark.parametrize("iss", ["vault", "", "vault-test-other", None, ["vault-test"]])
def test_token_with_wrong_issuer_is_invalid(auth: Authenticator, iss: object) -> None:
    assert_invalid(auth, make_token(good_claims(iss=iss)))


@pytest.mark.parametrize("aud", ["vault", "", "other", ["other", "another"], None])
def test_token_with_wrong_audience_is_invalid(auth: Authenticator, aud: object) -> None:
    assert_invalid(auth, make_token(good_claims(aud=aud)))


@pytest.mark.parametrize("typ", ["refresh", "", "ACCESS", None, 1])
def test_token_with_wrong_type_is_invalid(auth: Authenticator, typ: object) -> None:
    assert_invalid(auth, make_token(good_claims(typ=typ)))


@pytest.mark.parametrize(
    "sub",
    ["abc", "", "-1", "1.5", " 7", "7 ", "0x7", "²", "١", 7, None],
    ids=[
        "letters",
        "empty",
        "negative",
        "fraction",
        "lead-space",
        "trail-space",
        "hex",
        "superscript-two",
        "arabic-indic-one",
        "int",
        "null",
    ],
)
def test_token_with_non_numeric_subject_is_invalid(auth: Authenticator, sub: object) -> None:
    assert_invalid(auth, make_token(good_claims(sub=sub)))


@pytest.mark.parametrize(
    "sid", ["", "abc", "FEDCBA9876543210FEDCBA9876543210", "g" * 32, "a" * 33, 7, ["a" * 32]]
)
def test_token_with_a_malformed_session_is_invalid(auth: Authenticator, sid: object) -> None:
    assert_invalid(auth, make_token(good_claims(sid=sid)))


@pytest.mark.parametrize("epoch", [-1, 1.0, 1.5, "0", True, 2**62, [0]])
def test_token_with_a_malformed_epoch_is_invalid(auth: Authenticator, epoch: object) -> None:
    assert_invalid(auth, make_token(good_claims(epoch=epoch)))


@pytest.mark.parametrize("name", [None, 7, ["alice"]])
def test_token_with_non_string_name_is_invalid(auth: Authenticator, name: object) -> None:
    assert_invalid(auth, make_token(good_claims(name=name)))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "...",
        "a.b.c.d",
        "eyJhbGciOiJIUzI1NiJ9",
        "eyJhbGciOiJIUzI1NiJ9..",
        "Bearer " + "x" * 40,
        "\x00\xff",
        "é.é.é",
    ],
)
def test_garbage_token_is_invalid(auth: Authenticator, token: str) -> None:
    assert_invalid(auth, token)


def test_token_with_non_json_payload_is_invalid(auth: Authenticator) -> None:
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{head}.{b64url(b'not json')}"
    sig = b64url(hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest())
    assert_invalid(auth, f"{signing_input}.{sig}")


@pytest.mark.parametrize(
    ("kid", "key"),
    [
        ("/dev/null", b""),
        ("../../../../dev/null", b""),
        ("../data/jwt.secret", OTHER_SECRET),
        ("' UNION SELECT 'attacker-key", b"attacker-key"),
        ("1", OTHER_SECRET),
    ],
)
def test_token_with_kid_header_pointing_elsewhere_is_invalid(
    auth: Authenticator, kid: str, key: bytes
) -> None:
    assert_invalid(auth, make_token(good_claims(), key=key, header={"kid": kid}))


def test_token_with_embedded_jwk_of_the_attacker_is_invalid(auth: Authenticator) -> None:
    jwk = {"kty": "oct", "k": b64url(OTHER_SECRET)}
    assert_invalid(
        auth, make_token(good_claims(), key=OTHER_SECRET, header={"jwk": jwk, "jku": "https://x/"})
    )


def test_issued_token_uses_hs256_and_has_every_claim(auth: Authenticator) -> None:
    token = auth.issue(Identity(3, "bob"), now=1_700_000_000).token
    head, payload, _ = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert header["alg"] == "HS256"
    assert "kid" not in header
    assert claims["sub"] == "3"
    assert claims["typ"] == "access"
    assert claims["iat"] == 1_700_000_000
    assert claims["exp"] == 1_700_000_000 + TTL
    assert claims["iss"] == ISSUER
    assert claims["aud"] == AUDIENCE
    assert len(claims["jti"]) >= 16
    assert claims["epoch"] == 0 and len(claims["sid"]) == 32
    assert auth.issue(Identity(3, "bob")).token != auth.issue(Identity(3, "bob")).token


# --- register / login -------------------------------------------------------------------------


def count_checkpw(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Replace bcrypt.checkpw as vault.auth sees it; return the list of hashes it was run on."""
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr("vault.auth.bcrypt.checkpw", counting)
    return calls


def test_register_then_login_gives_a_token_for_that_user(auth: Authenticator, store: FakeUserStore) -> None:
    asyncio.run(auth.register("alice", "correct horse"))
    stored = store.users["alice"]
    assert stored.password_hash.startswith(b"$2b$04$")
    assert bcrypt.checkpw(b"correct horse", stored.password_hash)
    issued = asyncio.run(auth.login("alice", "correct horse"))
    assert auth.verify(issued.token) == Identity(stored.id, "alice")
    (refresh,) = store.refresh_tokens
    assert (
        refresh.user_id == stored.id and refresh.id == hashlib.sha256(issued.refresh_token.encode()).digest()
    )
    assert auth.decode(issued.token).session == refresh.family


def test_register_validates_username_and_password(auth: Authenticator, store: FakeUserStore) -> None:
    with pytest.raises(InvalidField, match="username"):
        asyncio.run(auth.register("a", "correct horse"))
    with pytest.raises(InvalidField, match="password"):
        asyncio.run(auth.register("alice", "short"))
    assert store.users == {}


def test_register_of_a_taken_name_raises_user_exists(auth: Authenticator) -> None:
    asyncio.run(auth.register("alice", "correct horse"))
    with pytest.raises(UserExists):
        asyncio.run(auth.register("alice", "another password"))


def test_login_of_unknown_user_and_wrong_password_fail_alike(
    auth: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(auth.register("alice", "correct horse"))
    calls = count_checkpw(monkeypatch)
    with pytest.raises(InvalidCredentials) as unknown:
        asyncio.run(auth.login("mallory", "correct horse"))
    assert len(calls) == 1, "an unknown user must still cost one bcrypt check"
    with pytest.raises(InvalidCredentials) as wrong:
        asyncio.run(auth.login("alice", "wrong password"))
    assert len(calls) == 2
    assert str(unknown.value) == str(wrong.value) == "Invalid username or password"
    assert calls[0][:7] == calls[1][:7] == b"$2b$04$"  # the dummy hash costs what a real one does


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("x", "correct horse"),  # not even a valid username: no store lookup, still bcrypt
        ("bad name!", "correct horse"),
        ("alice", "a" * 73),  # over bcrypt's limit
        ("alice", "correct horse\x00"),  # NUL is never part of a password
        ("alice", "correct horse" + "x" * 60),  # first 72 bytes equal the right password's prefix
        ("ALICE", "correct horse"),  # names are case-sensitive
    ],
)
def test_login_failures_all_run_bcrypt_once(
    auth: Authenticator, store: FakeUserStore, monkeypatch: pytest.MonkeyPatch, username: str, password: str
) -> None:
    asyncio.run(auth.register("alice", "correct horse"))
    calls = count_checkpw(monkeypatch)
    with pytest.raises(InvalidCredentials, match="Invalid username or password"):
        asyncio.run(auth.login(username, password))
    assert len(calls) == 1
    assert store.lookups == ([username] if check_username_ok(username) else [])  # no lookup of a bad name


def check_username_ok(username: str) -> bool:
    try:
        check_username(username)
    except InvalidField:
        return False
    return True


def test_login_with_a_72_byte_password_prefix_does_not_match_a_longer_attempt(auth: Authenticator) -> None:
    password = "p" * 72
    asyncio.run(auth.register("alice", password))
    assert asyncio.run(auth.login("alice", password)).token
    with pytest.raises(InvalidCredentials):
        asyncio.run(auth.login("alice", password + "extra"))


@pytest.mark.parametrize(
    ("username", "password"), [("", "pw"), ("alice", ""), (None, "correct horse"), ("alice", 12345678)]
)
def test_login_with_missing_fields_raises_invalid_field(
    auth: Authenticator, username: object, password: object
) -> None:
    with pytest.raises(
        InvalidField, match="^Fields 'username' and 'password' are required non-empty strings$"
    ):
        asyncio.run(auth.login(username, password))


def test_logins_beyond_the_pending_limit_are_refused_with_busy(
    store: FakeUserStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of logins gets 503 at once instead of an unbounded bcrypt queue."""
    from vault import auth as auth_module

    monkeypatch.setattr(auth_module, "MAX_PENDING_HASHES", 2)
    gate = threading.Event()
    real_checkpw = bcrypt.checkpw

    def slow_checkpw(password: bytes, hashed: bytes) -> bool:
        gate.wait(10)
        return bool(real_checkpw(password, hashed))

    monkeypatch.setattr(bcrypt, "checkpw", slow_checkpw)

    async def scenario() -> list[BaseException | None]:
        with ThreadPoolExecutor(2) as pool:
            throttled = authenticator(cast(Store, store), pool)
            first = [asyncio.ensure_future(throttled.login("nobody1", "password1")) for _ in range(2)]
            for _ in range(1000):  # until both wait for bcrypt (loop turns, not time)
                if throttled.pending_hashes == 2:
                    break
                await asyncio.sleep(0)
            assert throttled.pending_hashes == 2
            outcome: list[BaseException | None] = []
            try:
                await throttled.login("nobody2", "password2")
                outcome.append(None)
            except Busy as exc:
                outcome.append(exc)
            gate.set()
            outcome += [
                r if isinstance(r, BaseException) else None
                for r in await asyncio.gather(*first, return_exceptions=True)
            ]
            return outcome

    busy, *rest = asyncio.run(scenario())
    assert isinstance(busy, Busy) and busy.message == "Too many logins at once: retry shortly"
    assert all(isinstance(r, InvalidCredentials) for r in rest)


# --- on the real core (tests/incore.py): registration modes, invites, admin commands -----------
# Registration, invite codes, reset-password and disable were tested only over HTTP (a server
# process), which mutation testing cannot see; these run the same rules in-process.

PASSWORD = "correct horse battery"


on_core = incore.run


async def invite_row(core: Core, code: str) -> tuple[int, float, float | None]:
    """(key_id, expires, used) of the invite stored for ``code``."""
    with edit(core.settings.data_dir / "vault.db") as con:
        row = con.execute(
            "SELECT key_id, expires, used FROM invites WHERE code_hash = ?",
            (invite_hash(core.keyring, code),),
        ).fetchone()
    assert row is not None, "no invite stored under the code's keyed hash"
    return int(row[0]), float(row[1]), row[2]


def test_invite_hash_is_the_row_tag_of_the_code_under_the_primary_key() -> None:
    ring = Keyring.of(2, {1: bytes(32), 2: bytes(range(32))})
    code = "A" * 24
    assert invite_hash(ring, code) == row_tag(ring, 2, b"invite", code)
    assert invite_hash(ring, code) != row_tag(ring, 1, b"invite", code)
    assert invite_hash(ring, code) != row_tag(ring, 2, b"link", code)
    assert invite_hash(ring, code) != invite_hash(ring, "B" * 24)


def test_an_invite_is_24_url_safe_characters_stored_keyed_until_its_ttl(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        before = time.time()
        code = await core.auth.make_invite(3600)
        after = time.time()
        assert INVITE_RE.fullmatch(code), code
        key_id, expires, used = await invite_row(core, code)
        assert key_id == core.keyring.primary and used is None
        assert before + 3600 <= expires <= after + 3600
        assert await core.auth.make_invite(3600) != code

    on_core(tmp_path, scenario, registration="invite")


def test_invite_registration_uses_up_a_valid_code_once(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        code = await core.auth.make_invite(3600)
        await core.auth.sign_up("alice", PASSWORD, code)
        assert (await core.auth.login("alice", PASSWORD)).token
        assert (await invite_row(core, code))[2] is not None
        with pytest.raises(Forbidden, match="^Invite code unknown, used or expired$"):
            await core.auth.sign_up("bob", PASSWORD, code)
        assert await core.auth.find_user("bob") is None

    on_core(tmp_path, scenario, registration="invite")


@pytest.mark.parametrize("invite", [None, "A" * 23, "A" * 25, "A" * 23 + "!", "A" * 23 + "="])
def test_invite_registration_without_a_well_formed_code_is_refused(
    tmp_path: Path, invite: str | None
) -> None:
    async def scenario(core: Core) -> None:
        with pytest.raises(Forbidden, match=r"^Registration needs an invite code \(field 'invite'\)$"):
            await core.auth.sign_up("alice", PASSWORD, invite)
        assert await core.auth.find_user("alice") is None

    on_core(tmp_path, scenario, registration="invite")


@pytest.mark.parametrize("registration", ["open", "invite", "closed"])
@pytest.mark.parametrize("invite", [1, b"A" * 24, ["A" * 24]])
def test_an_invite_that_is_not_a_string_is_invalid_in_every_mode(
    tmp_path: Path, registration: str, invite: object
) -> None:
    async def scenario(core: Core) -> None:
        with pytest.raises(InvalidField, match="^Field 'invite' must be a string$"):
            await core.auth.sign_up("alice", PASSWORD, invite)

    on_core(tmp_path, scenario, registration=registration)


@pytest.mark.parametrize("invite", [None, "A" * 24])
def test_open_registration_needs_no_invite(tmp_path: Path, invite: str | None) -> None:
    async def scenario(core: Core) -> None:
        await core.auth.sign_up("alice", PASSWORD, invite)
        assert (await core.auth.login("alice", PASSWORD)).token

    on_core(tmp_path, scenario, registration="open")


def test_closed_registration_refuses_even_a_valid_invite(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        code = await core.auth.make_invite(3600)
        with pytest.raises(Forbidden, match="^Registration is closed: ask an administrator for an account$"):
            await core.auth.sign_up("alice", PASSWORD, code)
        assert await core.auth.find_user("alice") is None
        assert (await invite_row(core, code))[2] is None

    on_core(tmp_path, scenario, registration="closed")


def test_reset_password_replaces_the_password_and_ends_every_session(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        await core.auth.register("alice", PASSWORD)
        await core.auth.register("bob", PASSWORD)
        old = await core.auth.login("alice", PASSWORD)
        bob = await core.auth.login("bob", PASSWORD)
        await core.auth.reset_password("alice", "a new password")
        with pytest.raises(InvalidCredentials):
            await core.auth.login("alice", PASSWORD)
        with pytest.raises(RevokedToken):
            await core.auth.authenticate(old.token)
        row = await core.store.get_refresh(refresh_id(old.refresh_token))
        assert row is not None and row.revoked is not None  # the row itself, not only the epoch
        with pytest.raises(RevokedToken):
            await core.auth.refresh(old.refresh_token)
        new = await core.auth.login("alice", "a new password")
        assert (await core.auth.authenticate(new.token)).epoch == 1
        assert (await core.auth.authenticate(bob.token)).identity.username == "bob"  # no one else's
        assert (await core.auth.refresh(bob.refresh_token)).token

    on_core(tmp_path, scenario)


def test_reset_password_of_an_unknown_user_or_to_a_bad_password_changes_nothing(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        await core.auth.register("alice", PASSWORD)
        with pytest.raises(NotFound, match="^User not found$"):
            await core.auth.reset_password("mallory", "a new password")
        with pytest.raises(InvalidField, match="at least 8"):
            await core.auth.reset_password("alice", "short")
        assert (await core.auth.login("alice", PASSWORD)).token

    on_core(tmp_path, scenario)


def test_a_disabled_account_cannot_log_in_or_refresh_and_its_tokens_die(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        await core.auth.register("alice", PASSWORD)
        await core.auth.register("bob", PASSWORD)
        old = await core.auth.login("alice", PASSWORD)
        bob = await core.auth.login("bob", PASSWORD)
        await core.auth.set_disabled("alice", True)
        user = await core.auth.find_user("alice")
        assert user is not None and user.disabled == 1 and user.token_epoch == 1
        with pytest.raises(Forbidden, match="^Account disabled: ask an administrator$"):
            await core.auth.login("alice", PASSWORD)
        with pytest.raises(RevokedToken):
            await core.auth.authenticate(old.token)
        with pytest.raises(RevokedToken):
            await core.auth.refresh(old.refresh_token)
        assert (await core.auth.authenticate(bob.token)).identity.username == "bob"
        await core.auth.set_disabled("alice", False)
        user = await core.auth.find_user("alice")
        assert user is not None and user.disabled == 0 and user.token_epoch == 2
        again = await core.auth.login("alice", PASSWORD)
        assert (await core.auth.authenticate(again.token)).epoch == 2
        with pytest.raises(RevokedToken):  # enabling again does not revive the old session
            await core.auth.refresh(old.refresh_token)

    on_core(tmp_path, scenario)


def test_disabling_an_unknown_user_is_not_found(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        with pytest.raises(NotFound, match="^no user 'mallory'$"):
            await core.auth.set_disabled("mallory", True)

    on_core(tmp_path, scenario)


# --- sessions, epochs and tampered rows on the real core --------------------------------------


class Watched(SQLiteStore):
    """The real SQLite store, with two hooks a test sets: ``reads`` counts the account reads by
    id (what the epoch cache saves), and ``before_replace`` runs inside a compare-and-set of an
    account row before it is tried, standing for another process changing the row just then;
    ``refresh_lookups`` and ``revoked_since`` record what the refresh tokens read."""

    reads = 0
    before_replace: Callable[[User], Awaitable[None]] | None = None
    refresh_lookups = 0
    revoked_since: list[float] = []

    async def get_user_by_id(self, user_id: int) -> User | None:
        self.reads += 1
        return await super().get_user_by_id(user_id)

    async def get_refresh(self, token_id: bytes) -> RefreshToken | None:
        self.refresh_lookups += 1
        return await super().get_refresh(token_id)

    async def revoked_families(self, since: float) -> list[tuple[str, float]]:
        self.revoked_since = [*self.revoked_since, since]
        return await super().revoked_families(since)

    async def replace_user(self, old: User, new: User) -> bool:
        if self.before_replace is not None:
            await self.before_replace(old)
        return await super().replace_user(old, new)


def on_watched(tmp_path: Path, scenario: Callable[[Core, Watched], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        db = tmp_path / "vault.db"
        store = await Watched.open(db)
        assert isinstance(store, Watched)
        try:
            settings = Settings(data_dir=tmp_path, bcrypt_rounds=4)
            async with open_core(settings, store, keyring=incore.keyring(), environ={}) as core:
                return await scenario(core, store)
        finally:
            await store.close()

    return asyncio.run(main())


identity = incore.identity


def integrity_errors(caplog: pytest.LogCaptureFixture, user_id: int) -> int:
    return sum(
        r.name == "vault.auth"
        and r.levelno == logging.ERROR
        and r.getMessage() == f"account row {user_id} failed its integrity check"
        for r in caplog.records
    )


def test_an_account_row_whose_epoch_was_set_back_revives_no_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database writer sets the epoch back after "log out everywhere" and deletes the revoked
    refresh rows (no key needed for either), so that only the epoch check stands between the
    old access token and the account: the row no longer verifies, so the token is refused
    (issue 18: only /login was checked), and the password (here the very one the dummy hash is
    made of) no longer logs in."""

    async def before(core: Core) -> tuple[str, int]:
        await core.auth.register("alice", "dummy password")
        old = await core.auth.login("alice", "dummy password")
        alice = await identity(core, "alice")
        await core.auth.logout_all(alice)
        return old.token, alice.user_id

    old, user_id = on_core(tmp_path, before)
    with edit(tmp_path / "vault.db") as con:
        con.execute("UPDATE users SET token_epoch = 0 WHERE id = ?", (user_id,))
        con.execute("DELETE FROM refresh_tokens WHERE user_id = ?", (user_id,))

    async def after(core: Core) -> None:  # a fresh process: nothing cached
        with pytest.raises(InvalidToken) as refused:
            await core.auth.authenticate(old)
        assert refused.type is InvalidToken  # not RevokedToken: the family check did not see it
        assert integrity_errors(caplog, user_id) == 1
        with pytest.raises(InvalidCredentials, match="^Invalid username or password$"):
            await core.auth.login("alice", "dummy password")
        assert integrity_errors(caplog, user_id) == 2
        assert await core.auth.find_user("alice") is None

    caplog.set_level(logging.ERROR, logger="vault.auth")
    on_core(tmp_path, after)


def test_an_account_row_with_a_swapped_password_hash_is_refused_everywhere(tmp_path: Path) -> None:
    async def before(core: Core) -> tuple[TokenPair, Identity]:
        await core.auth.register("alice", PASSWORD)
        return await core.auth.login("alice", PASSWORD), await identity(core, "alice")

    pair, alice = on_core(tmp_path, before)
    forged = bcrypt.hashpw(b"attacker password", bcrypt.gensalt(4))
    with edit(tmp_path / "vault.db") as con:
        con.execute("UPDATE users SET password_hash = ? WHERE id = ?", (forged, alice.user_id))

    async def after(core: Core) -> None:
        with pytest.raises(InvalidCredentials):
            await core.auth.login("alice", "attacker password")
        with pytest.raises(RevokedToken):
            await core.auth.refresh(pair.refresh_token)
        with pytest.raises(InvalidToken) as refused:
            await core.auth.authenticate(pair.token)
        assert refused.type is InvalidToken
        with pytest.raises(InvalidToken):
            await core.auth.change_password(alice, "attacker password", "another password")
        with pytest.raises(InvalidToken):
            await core.auth.logout_all(alice)
        assert await core.auth.user_by_id(alice.user_id) is None

    on_core(tmp_path, after)


def test_reset_password_of_a_row_that_fails_its_check_is_refused_and_seals_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database writer sets the epoch back after "log out everywhere"; an administrator then
    resets the password. Sealing the row again would make the writer's edit authentic (the old
    access token alive again): the reset is refused and the row stays refused everywhere."""

    async def before(core: Core) -> tuple[str, int]:
        await core.auth.register("alice", PASSWORD)
        old = await core.auth.login("alice", PASSWORD)
        alice = await identity(core, "alice")
        await core.auth.logout_all(alice)
        return old.token, alice.user_id

    old, user_id = on_core(tmp_path, before)
    with edit(tmp_path / "vault.db") as con:
        assert con.execute("UPDATE users SET token_epoch = 0 WHERE id = ?", (user_id,)).rowcount == 1

    async def after(core: Core) -> None:
        with pytest.raises(IntegrityError):
            await core.auth.reset_password("alice", "a new password")
        assert integrity_errors(caplog, user_id) == 1
        assert await core.auth.find_user("alice") is None  # not sealed again
        with pytest.raises(InvalidCredentials):
            await core.auth.login("alice", "a new password")
        with pytest.raises(InvalidToken):
            await core.auth.authenticate(old)

    caplog.set_level(logging.ERROR, logger="vault.auth")
    on_core(tmp_path, after)


def test_reset_password_racing_another_change_keeps_it(tmp_path: Path) -> None:
    """Another process disables the account between the reset's read and its write: the reset
    is a compare-and-set, so it reads the row again and the account stays disabled (a plain
    write of the row read before would enable it again)."""

    async def scenario(core: Core, store: Watched) -> tuple[int, str]:
        await core.auth.register("alice", PASSWORD)
        tries = 0

        async def disabled_meanwhile(old: User) -> None:
            nonlocal tries
            tries += 1
            if tries == 1:
                store.before_replace = None
                await core.auth.set_disabled("alice", True)
                store.before_replace = disabled_meanwhile

        store.before_replace = disabled_meanwhile
        await core.auth.reset_password("alice", "a new password")
        store.before_replace = None
        with pytest.raises(Forbidden) as refused:
            await core.auth.login("alice", "a new password")  # the new password, still disabled
        return tries, refused.value.message

    assert on_watched(tmp_path, scenario) == (2, "Account disabled: ask an administrator")


def test_the_epoch_cache_is_read_again_once_its_age_reaches_the_bound(tmp_path: Path) -> None:
    """An account's token epoch is cached for less than EPOCH_CACHE_SECONDS: one instant
    before the bound the cache answers, at the bound the row is read again (the clock is the
    Authenticator's own, held still here)."""

    async def scenario(core: Core, store: Watched) -> list[int]:
        now = [1000.0]
        await core.auth.register("alice", PASSWORD)
        with ThreadPoolExecutor(1) as pool:
            auth = authenticator(store, pool, keyring=core.keyring, clock=lambda: now[0])
            pair = await auth.login("alice", PASSWORD)
            reads = []
            for at in (1000.0, 1000.0 + EPOCH_CACHE_SECONDS - 0.25, 1000.0 + EPOCH_CACHE_SECONDS):
                now[0] = at
                before = store.reads
                await auth.authenticate(pair.token)
                reads.append(store.reads - before)
            return reads

    assert on_watched(tmp_path, scenario) == [1, 0, 1]


def test_a_refresh_token_of_an_older_epoch_is_refused_and_refreshes_keep_the_epoch(tmp_path: Path) -> None:
    """A login that read the account just before "log out everywhere" stores its refresh row
    after the revocation, under the old epoch: the refresh path's epoch check alone stops it
    (issue 18). A refresh after the change keeps the current epoch, and every pair gives the
    configured lifetimes."""

    async def scenario(core: Core) -> None:
        await core.auth.register("alice", PASSWORD)
        alice = await identity(core, "alice")
        await core.auth.logout_all(alice)
        late = RefreshTokens(core.store, core.keyring, ttl=100, access_ttl=10)
        stale, _ = await late.start(alice.user_id, 0)
        with pytest.raises(RevokedToken):
            await core.auth.refresh(stale)
        pair = await core.auth.login("alice", PASSWORD)
        assert (pair.expires_in, pair.refresh_expires_in) == (
            core.settings.token_ttl,
            core.settings.refresh_ttl,
        )
        renewed = await core.auth.refresh(pair.refresh_token)
        assert (renewed.expires_in, renewed.refresh_expires_in) == (
            core.settings.token_ttl,
            core.settings.refresh_ttl,
        )
        assert (await core.auth.authenticate(renewed.token)).epoch == 1

    on_core(tmp_path, scenario)


def test_logout_ends_the_named_refresh_session_of_the_caller_only(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        await core.auth.register("alice", PASSWORD)
        await core.auth.register("bob", PASSWORD)
        one, two, three = [await core.auth.login("alice", PASSWORD) for _ in range(3)]
        bob = await core.auth.login("bob", PASSWORD)
        await core.auth.logout(await core.auth.authenticate(one.token), two.refresh_token)
        for ended in (one, two):
            with pytest.raises(RevokedToken):
                await core.auth.authenticate(ended.token)
            with pytest.raises(RevokedToken):
                await core.auth.refresh(ended.refresh_token)
        assert (await core.auth.authenticate(three.token)).identity.username == "alice"
        # another user's refresh token, and one that is no one's, leave everything alone
        four = await core.auth.login("alice", PASSWORD)
        await core.auth.logout(await core.auth.authenticate(three.token), bob.refresh_token)
        await core.auth.logout(await core.auth.authenticate(four.token), "no such refresh token")
        assert (await core.auth.authenticate(bob.token)).identity.username == "bob"
        assert (await core.auth.refresh(bob.refresh_token)).token

    on_core(tmp_path, scenario)


def test_log_out_everywhere_revokes_every_refresh_row(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        await core.auth.register("alice", PASSWORD)
        pairs = [await core.auth.login("alice", PASSWORD) for _ in range(2)]
        await core.auth.logout_all(await identity(core, "alice"))
        for pair in pairs:
            row = await core.store.get_refresh(refresh_id(pair.refresh_token))
            assert row is not None and row.revoked is not None

    on_core(tmp_path, scenario)


def test_change_password_refuses_bad_fields_by_name(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        await core.auth.register("alice", PASSWORD)
        alice = await identity(core, "alice")
        for old in (None, "", 12345678, b"correct horse battery"):
            with pytest.raises(
                InvalidField, match="^Field 'old_password' is required and must be a non-empty string$"
            ):
                await core.auth.change_password(alice, old, "a new password")
        with pytest.raises(InvalidField, match="^Field 'new_password' must be at least 8 characters$"):
            await core.auth.change_password(alice, PASSWORD, "short")
        with pytest.raises(
            InvalidCredentials, match="^Wrong password: 'old_password' is not the current one$"
        ):
            await core.auth.change_password(alice, "not the password", "a new password")
        assert (await core.auth.login("alice", PASSWORD)).token

    on_core(tmp_path, scenario)


def test_a_disabled_accounts_token_is_refused_even_at_its_current_epoch(tmp_path: Path) -> None:
    """No token at the epoch a disable set can be issued (login and refresh refuse it), but if
    one were, another process (nothing cached) still refuses it: disabled means no epoch."""

    async def before(core: Core) -> str:
        await core.auth.register("alice", PASSWORD)
        await core.auth.set_disabled("alice", True)
        return core.auth.issue(await identity(core, "alice"), epoch=1).token  # a session never revoked

    token = on_core(tmp_path, before)

    async def after(core: Core) -> None:
        with pytest.raises(InvalidToken) as refused:
            await core.auth.authenticate(token)
        assert refused.type is InvalidToken

    on_core(tmp_path, after)


@pytest.mark.parametrize("change", ["logout_all", "set_disabled"])
def test_an_account_changed_under_every_attempt_gives_busy(tmp_path: Path, change: str) -> None:
    """Another process changes the row between each read and compare-and-set: after
    CHANGE_ATTEMPTS tries the change gives up with Busy, and the other process's changes stand."""

    async def scenario(core: Core, store: Watched) -> None:
        await core.auth.register("alice", PASSWORD)
        alice = await identity(core, "alice")
        tries = 0

        async def other_process(old: User) -> None:
            nonlocal tries
            tries += 1
            await SQLiteStore.update_user(
                store, USER.seal(core.keyring, replace(old, token_epoch=old.token_epoch + 1))
            )

        store.before_replace = other_process
        with pytest.raises(Busy, match="^The account is changing: retry shortly$"):
            if change == "logout_all":
                await core.auth.logout_all(alice)
            else:
                await core.auth.set_disabled("alice", True)
        store.before_replace = None
        assert tries == CHANGE_ATTEMPTS
        user = await core.auth.find_user("alice")
        assert user is not None and (user.token_epoch, user.disabled) == (CHANGE_ATTEMPTS, 0)

    on_watched(tmp_path, scenario)


def test_the_epoch_is_read_once_per_cache_period_and_set_at_once_by_a_change(tmp_path: Path) -> None:
    async def scenario(core: Core, store: Watched) -> None:
        await core.auth.register("alice", PASSWORD)
        alice = await identity(core, "alice")
        token = core.auth.issue(alice, epoch=0).token  # its session is never revoked: the epoch decides
        store.reads = 0
        for _ in range(3):
            await core.auth.authenticate(token)
        assert store.reads == 1  # then from the cache
        await core.auth.logout_all(alice)
        store.reads = 0
        with pytest.raises(RevokedToken):
            await core.auth.authenticate(token)
        assert store.reads == 0  # the change put the new epoch in the cache itself

    on_watched(tmp_path, scenario)


def test_an_epoch_read_that_a_change_overtook_is_not_cached(tmp_path: Path) -> None:
    """A request reads the epoch while "log out everywhere" runs: what it read may be the old
    epoch, so it is used for that request alone and not cached, and the next request with the
    old token is refused. For two accounts one after the other, so that the count of changes
    is seen to move at each change (the second is this Authenticator's second change)."""

    async def scenario(core: Core, store: Watched) -> None:
        for name in ("alice", "bob"):
            await core.auth.register(name, PASSWORD)
            user = await identity(core, name)
            old = core.auth.issue(user, epoch=0).token  # its session is never revoked: the epoch decides
            reading, overtaken = asyncio.Event(), asyncio.Event()

            async def slow_read(
                user_id: int, reading: asyncio.Event = reading, overtaken: asyncio.Event = overtaken
            ) -> User | None:
                row = await SQLiteStore.get_user_by_id(store, user_id)
                reading.set()
                await overtaken.wait()
                return row

            store.get_user_by_id = slow_read  # type: ignore[method-assign]
            request = asyncio.ensure_future(core.auth.authenticate(old))
            reader = asyncio.ensure_future(reading.wait())
            await asyncio.wait({request, reader}, return_when=asyncio.FIRST_COMPLETED)
            assert reading.is_set(), f"the request did not read the account: {request}"
            await reader
            del store.get_user_by_id
            await core.auth.logout_all(user)
            overtaken.set()
            assert (await request).epoch == 0  # read before the change: this request passes
            with pytest.raises(RevokedToken):
                await core.auth.authenticate(old)

    on_watched(tmp_path, scenario)


def test_link_secrets_over_72_bytes_or_with_nul_never_match(tmp_path: Path) -> None:
    async def scenario(core: Core) -> None:
        short = await core.auth.hash_secret(b"open sesame")
        assert await core.auth.check_secret(b"open sesame", short)
        assert not await core.auth.check_secret(b"open sesame\x00", short)
        assert not await core.auth.check_secret(b"\x00open sesame", short)
        longest = b"s" * 72
        full = await core.auth.hash_secret(longest)
        assert await core.auth.check_secret(longest, full)
        assert not await core.auth.check_secret(longest + b"s", full)
        assert not await core.auth.check_secret(longest + b"\x00", full)

    on_core(tmp_path, scenario)


def test_bcrypt_runs_on_the_authenticators_own_pool_and_the_queue_empties(
    auth: Authenticator, store: FakeUserStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every bcrypt call runs on the executor given (the server's bcrypt pool, so that logins
    never stall transfers), and a finished call leaves the login queue's depth at 0."""
    threads: list[str] = []
    real_hashpw, real_checkpw = bcrypt.hashpw, bcrypt.checkpw

    def hashpw(password: bytes, salt: bytes) -> bytes:
        threads.append(threading.current_thread().name)
        return real_hashpw(password, salt)

    def checkpw(password: bytes, hashed: bytes) -> bool:
        threads.append(threading.current_thread().name)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "hashpw", hashpw)
    monkeypatch.setattr(bcrypt, "checkpw", checkpw)
    asyncio.run(auth.register("alice", "correct horse"))
    asyncio.run(auth.login("alice", "correct horse"))
    assert auth.pending_hashes == 0
    with pytest.raises(InvalidCredentials):
        asyncio.run(auth.login("alice", "wrong password"))
    assert auth.pending_hashes == 0
    assert len(threads) == 3 and all(name.startswith("test-bcrypt") for name in threads), threads


def test_find_user_looks_up_no_name_that_is_not_a_valid_username(
    auth: Authenticator, store: FakeUserStore
) -> None:
    asyncio.run(auth.register("alice", "correct horse"))
    for name in ("x", "bad name!", "alice\n"):
        assert asyncio.run(auth.find_user(name)) is None
    assert store.lookups == []
    assert asyncio.run(auth.find_user("alice")) is not None


@pytest.mark.parametrize(("bits", "user_id"), [(0, 1), (2**62 - 1, 2**62)])
def test_account_ids_are_62_random_bits_plus_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bits: int, user_id: int
) -> None:
    """Ids run from 1 to 2**62 (never 0, and within a signed 64-bit column)."""
    asked: list[int] = []

    def randbits(k: int) -> int:
        asked.append(k)
        return bits

    monkeypatch.setattr("vault.auth.secrets.randbits", randbits)

    async def scenario(core: Core) -> None:
        await core.auth.register("alice", PASSWORD)
        assert (await identity(core, "alice")).user_id == user_id

    on_core(tmp_path, scenario)
    assert asked == [USER_ID_BITS] == [62]


def test_registrations_beyond_the_waiting_limit_are_refused_with_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAX_PENDING_REGISTRATIONS wait, one hashing at a time (the core has two bcrypt threads);
    the next gets 503 at once; and once they are done the same number may wait again. bcrypt is
    held by an event, not time."""
    gate = threading.Event()
    gate.set()  # open while the core starts (its dummy hash)
    real_hashpw = bcrypt.hashpw
    lock = threading.Lock()
    running = [0, 0]  # now, most at once

    def held_hashpw(password: bytes, salt: bytes) -> bytes:
        with lock:
            running[0] += 1
            running[1] = max(running)
        try:
            gate.wait(60)
            return real_hashpw(password, salt)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(bcrypt, "hashpw", held_hashpw)

    async def scenario(core: Core) -> None:
        for round_ in ("a", "b"):
            gate.clear()
            waiting = [
                asyncio.ensure_future(core.auth.register(f"user-{round_}{i}", PASSWORD))
                for i in range(MAX_PENDING_REGISTRATIONS + 1)
            ]
            try:
                await asyncio.sleep(0)  # each has counted itself: the last, one too many, is refused
                assert [task.done() for task in waiting] == [False] * MAX_PENDING_REGISTRATIONS + [True]
                with pytest.raises(Busy, match="^Too many registrations at once: retry shortly$"):
                    await waiting.pop()
            finally:
                gate.set()  # never left held, whatever failed
                await asyncio.gather(*waiting, return_exceptions=True)
            await asyncio.gather(*waiting)
            for i in range(MAX_PENDING_REGISTRATIONS):
                assert await core.auth.find_user(f"user-{round_}{i}") is not None
            assert await core.auth.find_user(f"user-{round_}{MAX_PENDING_REGISTRATIONS}") is None

    on_core(tmp_path, scenario)
    assert running[1] == 1


def test_a_login_records_its_time_on_the_account_and_a_failed_one_does_not(tmp_path: Path) -> None:
    """What ``run.py admin list-users`` shows as the last login."""

    async def scenario(core: Core) -> None:
        await core.auth.register("alice", PASSWORD)
        with pytest.raises(InvalidCredentials):
            await core.auth.login("alice", "not the password")
        assert [a.last_login for a in await core.store.accounts()] == [None]
        before = time.time()
        await core.auth.login("alice", PASSWORD)
        after = time.time()
        [account] = await core.store.accounts()
        assert account.username == "alice"
        assert account.last_login is not None and before <= account.last_login <= after

    on_core(tmp_path, scenario)


def test_a_refresh_token_longer_than_256_characters_is_not_even_looked_up(tmp_path: Path) -> None:
    async def scenario(core: Core, store: Watched) -> None:
        tokens = RefreshTokens(store, core.keyring, ttl=100, access_ttl=10)
        assert await tokens.find("x" * MAX_REFRESH_CHARS) is None
        assert store.refresh_lookups == 1
        assert await tokens.find("x" * (MAX_REFRESH_CHARS + 1)) is None
        assert store.refresh_lookups == 1

    on_watched(tmp_path, scenario)


def test_each_poll_reads_the_revocations_since_its_last_look_less_the_overlap(tmp_path: Path) -> None:
    """The first read covers one access lifetime; each poll after it only the time since the
    last look, and POLL_OVERLAP before it (a revocation is stamped before it commits)."""

    async def scenario(core: Core, store: Watched) -> None:
        now = [1_000_000.0]
        tokens = RefreshTokens(store, core.keyring, ttl=100, access_ttl=900, clock=lambda: now[0], poll=1.0)
        assert not await tokens.family_revoked("0" * 32)
        now[0] += 1
        assert not await tokens.family_revoked("0" * 32)
        now[0] += 3
        assert not await tokens.family_revoked("0" * 32)
        assert store.revoked_since == [
            1_000_000.0 - 900,
            1_000_000.0 - POLL_OVERLAP,
            1_000_001.0 - POLL_OVERLAP,
        ]

    on_watched(tmp_path, scenario)


def test_with_several_processes_a_logout_in_one_reaches_the_other(tmp_path: Path) -> None:
    """Two Authenticators of a server run by several processes (``shared``), each on its own
    connection to one database: a logout in one ends the session in the other once it polls
    (SHARED_POLL). The test waits for that on the real condition; the deadline only ends a hang
    (a process that never polls again)."""

    async def main() -> None:
        db = tmp_path / "vault.db"
        stores = [await SQLiteStore.open(db), await SQLiteStore.open(db)]
        with ThreadPoolExecutor(2) as pool:
            try:
                here, there = (authenticator(store, pool, shared=True) for store in stores)
                await there.register("alice", PASSWORD)
                pair = await there.login("alice", PASSWORD)
                await here.authenticate(pair.token)  # here has read the revoked sessions
                await there.logout(await there.authenticate(pair.token))
                deadline = time.monotonic() + 10
                while True:
                    try:
                        await here.authenticate(pair.token)
                    except RevokedToken:
                        break
                    assert time.monotonic() < deadline, "the other process never saw the logout"
                    await asyncio.sleep(0.05)
            finally:
                for store in stores:
                    await store.close()

    asyncio.run(main())
