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


# Under pytest-xdist (`make test` runs two workers with --dist loadgroup) each test module stays on one
# worker, so its module-scoped fixtures (a tiny model on disk, a real demo run) are built once, and the
# modules that use the vLLM server share a worker, so one server starts.
VLLM_MODULES = {"test_api_judge", "test_vllm_generation"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        item.add_marker(pytest.mark.xdist_group("vllm" if module in VLLM_MODULES else module))
