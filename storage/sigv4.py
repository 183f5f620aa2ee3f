"""AWS Signature Version 4 for S3 requests: the few lines a path-style S3 client needs.

The body is sent as ``UNSIGNED-PAYLOAD``: every segment is already sealed with its own MAC
(docs/FORMAT.md), so hashing it again for the signature would only cost CPU (about a third of
all a PUT costs here; README, Object storage). Headers, path and query are signed.
"""

import datetime
import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
_SAFE = "-_.~"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _quote(text: str, safe: str = _SAFE) -> str:
    return urllib.parse.quote(text, safe=safe)


def quote_path(path: str) -> str:
    return _quote(path, safe="/" + _SAFE)


def canonical_query(query: Mapping[str, str]) -> str:
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))


def signing_key(secret: str, day: str, region: str) -> bytes:
    return _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), day), region), "s3"), "aws4_request")


def sign(
    method: str,
    host: str,
    path: str,
    query: Mapping[str, str],
    *,
    access_key: str,
    secret_key: str,
    region: str,
    session_token: str = "",
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """The headers that authenticate this request (host is signed, and sent by the client)."""
    now = now or datetime.datetime.now(datetime.UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    headers = {"host": host, "x-amz-content-sha256": UNSIGNED, "x-amz-date": stamp}
    if session_token:
        headers["x-amz-security-token"] = session_token
    names = sorted(headers)
    signed = ";".join(names)
    canonical = "\n".join(
        [
            method,
            quote_path(path),
            canonical_query(query),
            "".join(f"{name}:{headers[name]}\n" for name in names),
            signed,
            UNSIGNED,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    signature = hmac.new(signing_key(secret_key, day, region), to_sign.encode(), hashlib.sha256).hexdigest()
    del headers["host"]
    headers["authorization"] = (
        f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return headers
