"""An incremental multipart/form-data parser (RFC 7578) that never holds a whole part.

Feed it the body in chunks of any size; it returns events in order: :class:`PartStart` with
the part's headers, :class:`PartData` with body bytes, :class:`PartEnd`, and finally
:class:`BodyEnd` after the closing delimiter. At most one delimiter's worth of bytes, or one
part's header block (bounded by ``max_header_bytes``), is held back between calls.
"""

import re
import urllib.parse
from dataclasses import dataclass

from vault.errors import MalformedUpload

# RFC 2046: 1-70 characters, the last not a space
_BOUNDARY_RE = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # noqa: S105 (RFC 9110 token characters)
_PARAM_RE = re.compile(rf';\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_CHARSETS = frozenset({"utf-8", "iso-8859-1"})  # RFC 8187's two
_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _DONE = range(5)


@dataclass(frozen=True)
class PartStart:
    headers: dict[str, str]

    @property
    def disposition(self) -> dict[str, str]:
        return parse_disposition(self.headers.get("content-disposition", ""))


@dataclass(frozen=True)
class PartData:
    data: bytes | memoryview  # a view of the chunk fed, which the caller may keep


@dataclass(frozen=True)
class PartEnd:
    pass


@dataclass(frozen=True)
class BodyEnd:
    pass


Event = PartStart | PartData | PartEnd | BodyEnd


def parse_disposition(value: str) -> dict[str, str]:
    """Parameters of a Content-Disposition value, with the type under the key ``""``.

    An extended parameter (``filename*=UTF-8''...``, RFC 5987) wins over the plain one.
    """
    kind, _, rest = value.partition(";")
    plain: dict[str, str] = {}
    extended: dict[str, str] = {}
    for match in _PARAM_RE.finditer(";" + rest):
        key, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) > 1:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if key.endswith("*"):
            charset, _, tail = raw.partition("'")
            _, _, encoded = tail.partition("'")
            if charset.lower() not in _CHARSETS:
                raise MalformedUpload(f"Malformed multipart upload: unsupported charset in {key}")
            try:
                extended[key[:-1]] = urllib.parse.unquote(
                    encoded, encoding=charset or "utf-8", errors="strict"
                )
            except (LookupError, UnicodeDecodeError):
                raise MalformedUpload(f"Malformed multipart upload: bad {key} parameter") from None
        else:
            plain.setdefault(key, raw)
    return {"": kind.strip().lower(), **plain, **extended}


def boundary_from_content_type(content_type: str) -> bytes:
    """The boundary of a multipart/form-data Content-Type, or MalformedUpload."""
    kind, _, rest = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise MalformedUpload("Expected Content-Type multipart/form-data with a boundary")
    for match in _PARAM_RE.finditer(";" + rest):
        if match.group(1).lower() == "boundary":
            raw = match.group(2).strip()
            value = raw[1:-1] if raw.startswith('"') else raw
            if value.isascii() and _BOUNDARY_RE.fullmatch(value.encode("ascii")):
                return value.encode("ascii")
            break
    raise MalformedUpload("Malformed multipart upload: missing or invalid boundary")


class MultipartParser:
    def __init__(self, boundary: bytes, max_header_bytes: int = 16 * 1024) -> None:
        if not _BOUNDARY_RE.fullmatch(boundary):
            raise MalformedUpload("Malformed multipart upload: invalid boundary")
        self._delimiter = b"\r\n--" + boundary
        # A virtual CRLF lets the first delimiter stand at the very start of the body.
        self._buf = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self._max_header_bytes = max_header_bytes

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes | bytearray) -> list[Event]:
        """The events ``data`` completes. A part's body comes as views of ``data`` where it
        can (never copied), so the caller hands ``data`` over and does not change it."""
        if self._state == _DONE:
            return []  # the epilogue is ignored
        if self._state == _BODY:
            body = self._pass_body(data)
            if body is not None:
                return [PartData(body)]
        self._buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> None:
        """Call at the end of the body: raises unless the closing delimiter was seen."""
        if self._state != _DONE:
            raise MalformedUpload("Malformed multipart upload: the body ended before the closing boundary")

    def _pass_body(self, data: bytes | bytearray) -> memoryview | None:
        """Within a part's body, a chunk with no delimiter in it and nothing held back from the
        one before (so none across its start): a view of all of it but its last bytes if they
        may begin a delimiter, which are held back. None: the general path (``_step``), which
        copies the chunk into the buffer, for the chunk that ends the part (and when the
        last one ended with the start of a delimiter)."""
        if self._buf or len(data) < len(self._delimiter) or data.find(self._delimiter) >= 0:
            return None
        end = self._held_back(data)
        self._buf += data[end:]
        return memoryview(data)[:end]

    def _held_back(self, data: bytes | bytearray) -> int:
        """Where the end of ``data`` that may begin a delimiter starts (``len(data)``: none).
        Every delimiter begins with CR: the earliest CR of the last ``len(delimiter) - 1``
        bytes whose rest is the start of a delimiter, if any."""
        delim = self._delimiter
        at = data.find(b"\r", max(0, len(data) - len(delim) + 1))
        while at >= 0 and not delim.startswith(data[at:]):
            at = data.find(b"\r", at + 1)
        return len(data) if at < 0 else at

    def _step(self, events: list[Event]) -> bool:
        """Consume what the buffer allows; return True while progress is possible."""
        buf, delim = self._buf, self._delimiter
        if self._state in (_PREAMBLE, _BODY):
            index = buf.find(delim)
            if index < 0:
                cut = self._held_back(buf)
                if cut:
                    if self._state == _BODY:
                        events.append(PartData(bytes(buf[:cut])))
                    del buf[:cut]
                return False
            if self._state == _BODY:
                if index:
                    events.append(PartData(bytes(buf[:index])))
                events.append(PartEnd())
            del buf[: index + len(delim)]
            self._state = _AFTER_DELIMITER
            return True
        if self._state == _AFTER_DELIMITER:
            return self._after_delimiter(events)
        return self._headers(events)

    def _after_delimiter(self, events: list[Event]) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        if buf[:2] == b"--":
            self._state = _DONE
            buf.clear()
            events.append(BodyEnd())
            return False
        line_end = buf.find(b"\r\n")
        if line_end < 0:
            if len(buf) > 1024:
                raise MalformedUpload("Malformed multipart upload: garbage after a boundary")
            return False
        if buf[:line_end].strip(b" \t"):
            raise MalformedUpload("Malformed multipart upload: garbage after a boundary")
        del buf[: line_end + 2]
        self._state = _HEADERS
        return True

    def _headers(self, events: list[Event]) -> bool:
        buf = self._buf
        if buf[:2] == b"\r\n":
            end, block = 2, b""
        else:
            index = buf.find(b"\r\n\r\n")
            if index < 0:
                if len(buf) > self._max_header_bytes:
                    raise MalformedUpload("Malformed multipart upload: part headers too large")
                return False
            end, block = index + 4, bytes(buf[:index])
        if end > self._max_header_bytes:
            raise MalformedUpload("Malformed multipart upload: part headers too large")
        headers: dict[str, str] = {}
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedUpload("Malformed multipart upload: part headers must be UTF-8") from None
        for line in text.split("\r\n") if text else []:
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise MalformedUpload("Malformed multipart upload: bad part header line")
            headers[name.strip().lower()] = value.strip()
        del buf[:end]
        events.append(PartStart(headers))
        self._state = _BODY
        return True
