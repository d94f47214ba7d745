"""Test fixtures: the real speech and reference listings shipped in `data/`, and MindSpore's execution mode.

Everything the tests read lives inside the repository (`data/librispeech_mini`, `data/digits`,
`data/reference`), so `bash scripts/test.sh` passes in a fresh clone with nothing beside it.
"""
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """`data/reference`: parameter lists of the original model and LibriSpeech listings."""
    return DATA_DIR / "reference"


@pytest.fixture(scope="session")
def librispeech_mini() -> Path:
    """The extracted `LibriSpeech/` tree with 14 real utterances in three subsets."""
    return DATA_DIR / "librispeech_mini" / "LibriSpeech"


@pytest.fixture(scope="module")
def short_manifest(librispeech_mini, tmp_path_factory) -> Path:
    """A manifest of the four short utterances `corpus.SHORT_IDS`, for tests that train."""
    from corpus import SHORT_IDS
    from mindaudio.data.librispeech import extracted_utterances
    from mindaudio.data.manifest import write_manifest_with_transcripts

    utterances = [u for u in extracted_utterances(librispeech_mini) if u.id in SHORT_IDS]
    assert len(utterances) == len(SHORT_IDS)
    return write_manifest_with_transcripts(tmp_path_factory.mktemp("corpus"), utterances)


@pytest.fixture(scope="session")
def digits_corpus() -> Path:
    """The shipped spoken-digits corpus: `labels.tsv` and `recordings/*.flac` (8 kHz mono)."""
    return DATA_DIR / "digits"


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
