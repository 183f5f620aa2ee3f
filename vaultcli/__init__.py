"""The ``vault`` command-line client: speaks only vault's public HTTP API, imports nothing of
the server (vault/, handlers/, storage/), so it works against any vault server."""

import sys

# httpx imports its own command line (click, rich, pygments) whenever those happen to be
# installed: close to half of this client's start-up time, for nothing it uses. httpx falls
# back to a stub when that import fails.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
