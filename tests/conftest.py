"""Shared fixtures. The vLLM server starts once per test session, only when a test asks for it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can import tests/helpers


@pytest.fixture(scope="session")
def vllm_url(tmp_path_factory):
    """Base URL of a vLLM server. TRAITLOOP_TEST_VLLM_URL reuses one already running (for development)."""
    import os

    from helpers.vllm_server import start_server

    if os.environ.get("TRAITLOOP_TEST_VLLM_URL"):
        yield os.environ["TRAITLOOP_TEST_VLLM_URL"]
        return

    yield from start_server(tmp_path_factory.mktemp("vllm") / "server.log")
