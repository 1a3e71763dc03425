"""Fixtures of the dataset tests: a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import pytest

from audiocnn.testing.datasets import no_slow_retries
from audiocnn.testing.server import FixtureServer


@pytest.fixture()
def http_server():
    srv = FixtureServer()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture()
def fast_retries(monkeypatch):
    """No retries and no back-off for downloads (use with ``pytest.mark.usefixtures``)."""
    no_slow_retries(monkeypatch, retries=0)
