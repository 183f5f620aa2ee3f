"""vault.auth without a server: username/password rules, token verification, register/login."""

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import bcrypt
import pytest

from vault.auth import Authenticator, Identity, check_password, check_username
from vault.errors import ExpiredToken, InvalidCredentials, InvalidField, InvalidToken, UserExists
from vault.keys import Keyring
from vault.store import RefreshToken, Store, User

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
    return Authenticator(
        cast(Store, store),
        SECRET,
        KEYRING,
        rounds=4,
        ttl=TTL,
        issuer=ISSUER,
        audience=AUDIENCE,
        executor=executor,
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
    with pytest.raises(InvalidField, match="username"):
        check_username(name)


@pytest.mark.parametrize("name", [None, 123, b"alice", ["alice"]])
def test_non_string_username_is_rejected(name: object) -> None:
    with pytest.raises(InvalidField, match="username"):
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
    with pytest.raises(InvalidField, match="at least 8"):
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
    other = Authenticator(
        cast(Store, FakeUserStore()),
        OTHER_SECRET,
        KEYRING,
        rounds=4,
        ttl=TTL,
        issuer=ISSUER,
        audience=AUDIENCE,
        executor=executor,
    )
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
    auth: Authenticator, monkeypatch: pytest.MonkeyPatch, username: str, password: str
) -> None:
    asyncio.run(auth.register("alice", "correct horse"))
    calls = count_checkpw(monkeypatch)
    with pytest.raises(InvalidCredentials, match="Invalid username or password"):
        asyncio.run(auth.login(username, password))
    assert len(calls) == 1


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
    with pytest.raises(InvalidField):
        asyncio.run(auth.login(username, password))


def test_logins_beyond_the_pending_limit_are_refused_with_busy(
    store: FakeUserStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of logins gets 503 at once instead of an unbounded bcrypt queue."""
    import threading

    from vault import auth as auth_module
    from vault.errors import Busy

    monkeypatch.setattr(auth_module, "MAX_PENDING_HASHES", 2)
    gate = threading.Event()
    real_checkpw = bcrypt.checkpw

    def slow_checkpw(password: bytes, hashed: bytes) -> bool:
        gate.wait(10)
        return bool(real_checkpw(password, hashed))

    monkeypatch.setattr(bcrypt, "checkpw", slow_checkpw)

    async def scenario() -> list[BaseException | None]:
        with ThreadPoolExecutor(2) as pool:
            authenticator = Authenticator(
                cast(Store, store),
                SECRET,
                KEYRING,
                rounds=4,
                ttl=TTL,
                issuer=ISSUER,
                audience=AUDIENCE,
                executor=pool,
            )
            first = [asyncio.ensure_future(authenticator.login("nobody1", "password1")) for _ in range(2)]
            for _ in range(1000):  # until both wait for bcrypt (loop turns, not time)
                if authenticator.pending_hashes == 2:
                    break
                await asyncio.sleep(0)
            assert authenticator.pending_hashes == 2
            outcome: list[BaseException | None] = []
            try:
                await authenticator.login("nobody2", "password2")
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
