"""vault: the core of an encrypted file-sharing server (no HTTP here; see docs/ARCHITECTURE.md)."""

__version__ = "0.1.0"  # the package version (pyproject.toml says the same; a test checks)
