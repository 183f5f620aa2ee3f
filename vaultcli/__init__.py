"""The ``vault`` command-line client: speaks only vault's public HTTP API, imports nothing of
the server (vault/, handlers/, storage/), so it works against any vault server."""
