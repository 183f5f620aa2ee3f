"""Markers shared by the test modules."""

import shutil

import pytest

# A test that runs the curl binary skips where it is not installed, instead of failing with
# FileNotFoundError (the suite runs on machines without it).
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="the curl binary is not installed")
