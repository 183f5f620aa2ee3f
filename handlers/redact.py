"""Link secrets never reach a log: ``safe_path`` for what handlers log, and a logging filter
for every other line (Tornado's own warnings name the request URI, tracebacks may quote it)."""

import logging
import re

SECRET_MASK = "/s/[secret]"  # noqa: S105 (what replaces a secret, not one)
_LINK_SECRET = re.compile(r"/s/[^/?#\s'\"\\]+")


def safe_path(path: str) -> str:
    """A request path fit for logs: the secret of a public link (after /s/) is never written."""
    return _LINK_SECRET.sub(SECRET_MASK, path)


class RedactSecrets(logging.Filter):
    """Rewrites each record's message, and its traceback text, with link secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = safe_path(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = safe_path(record.exc_text)
        if record.stack_info:
            record.stack_info = safe_path(record.stack_info)
        return True


def redact_logs() -> None:
    """Put the filter on every handler of the root logger (call after configuring logging)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())
