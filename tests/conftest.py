"""Shared test fixtures: where the real speech in ../shared/data lives, and MindSpore's execution mode."""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI clones the project with shared/ beside it; a developer's checkout has the same layout.
SHARED_DIR = Path(os.environ.get("DS2_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.fail(f"shared material not found at {SHARED_DIR} (set DS2_SHARED_DIR)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def librispeech_mini(shared_dir) -> Path:
    """The extracted `LibriSpeech/` tree with 14 real utterances in three splits."""
    return shared_dir / "data" / "librispeech_mini" / "LibriSpeech"


@pytest.fixture(scope="session")
def fsdd_dir(shared_dir) -> Path:
    return shared_dir / "data" / "fsdd"


@pytest.fixture(params=["graph", "pynative"])
def execution_mode(request):
    """Runs the test once in graph mode and once in PyNative mode; the previous mode is restored after."""
    # Imported here: most tests never load MindSpore, and mindaudio must come first (it sets
    # ONEDNN_MAX_CPU_ISA before MindSpore loads).
    import mindaudio  # noqa: F401
    import mindspore as ms

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=previous)
