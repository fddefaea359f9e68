"""Shared fixtures. The vLLM server starts once per test session, only when a test asks for it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can import tests/helpers

# pytest-xdist's workers start with COLUMNS=80 and LINES=24 set, which would fix the width of the rich consoles
# traitloop creates at import and wrap the tables tests read: drop them, as in a plain pytest run.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)


@pytest.fixture(scope="session")
def vllm_url(tmp_path_factory):
    """Base URL of a vLLM server. TRAITLOOP_TEST_VLLM_URL reuses one already running (for development)."""

    from helpers.vllm_server import start_server

    if os.environ.get("TRAITLOOP_TEST_VLLM_URL"):
        yield os.environ["TRAITLOOP_TEST_VLLM_URL"]
        return

    yield from start_server(tmp_path_factory.mktemp("vllm") / "server.log")


# Under pytest-xdist (`make test` runs two workers) each test module runs whole on one worker, so its
# module-scoped fixtures (a tiny model on disk, a real demo run) are built once, and the modules that use
# the vLLM server share one worker, so one server starts.
VLLM_MODULES = {"test_api_judge", "test_vllm_generation"}


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "vllm" if Path(module).stem in VLLM_MODULES else module

    config.option.loadscopereorder = False  # keep LONGEST_FIRST's order, not "most tests first"
    return ModuleScheduling(config, log)


# The longest modules start first, so neither worker is left with a long one at the end.
LONGEST_FIRST = [
    "test_integration",
    "test_integration_settings",
    "test_api_judge",
    "test_vllm_generation",
    "test_crash_matrix",
    "test_ray_executor",
    "test_reproduce",
    "test_tracking",
    "test_security",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(item.nodeid.split("::", 1)[0]).stem, len(rank)))
