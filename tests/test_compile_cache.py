"""The compile cache (mindaudio/runtime/compile_cache.py): a second compile of the same graphs loads
them and computes exactly what a fresh compile computes; any other graph (model size, shape order,
training vs evaluation mode) gets its own entry; concurrent publishers leave one complete entry."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mindaudio  # noqa: F401  (before mindspore)
import mindspore as ms
from mindspore import Tensor, nn

from mindaudio.config import RuntimeConfig
from mindaudio.runtime import compile_cache
from mindaudio.runtime.compile_cache import CompileCache, Graph, default_cache_dir
from mindaudio.runtime.device import compile_cache_root


def test_cache_root_follows_the_config_and_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MINDAUDIO_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "compile"
    assert compile_cache_root(RuntimeConfig(), "CPU") == str(tmp_path / "cache" / "compile")
    assert compile_cache_root(RuntimeConfig(compile_cache_dir=str(tmp_path / "mine")), "CPU") == str(tmp_path / "mine")
    assert compile_cache_root(RuntimeConfig(compile_cache=False), "CPU") == ""
    assert compile_cache_root(RuntimeConfig(mode="PYNATIVE"), "CPU") == ""
    assert compile_cache_root(RuntimeConfig(), "GPU") == ""


def _fake_staging(root, base, count, content):
    source = root / "rank_0" / "graph_cache"
    source.mkdir(parents=True)
    (source / "compile_dependency.hash").write_bytes(b"h" * 64)
    for index in range(count):
        (source / f"compile_cache_{base + index}.mindir").write_bytes(content)
    return str(root)


def test_the_first_publisher_wins_and_nothing_partial_is_left(tmp_path):
    cache = CompileCache(tmp_path / "cache", "test")
    cache.root.mkdir()
    graphs = [Graph("dense", nn.Dense(2, 3), (Tensor(np.zeros((1, 2), np.float32)),))]
    entry = cache.root / "entry"
    assert cache._publish(entry, _fake_staging(tmp_path / "a", 5, 1, b"first"), 5, graphs)
    assert cache._publish(entry, _fake_staging(tmp_path / "b", 9, 1, b"second"), 9, graphs)
    assert (entry / "graph_0000.mindir").read_bytes() == b"first"
    assert sorted(os.listdir(cache.root)) == ["entry"]
    # An entry is only used when it holds as many graphs as asked for.
    assert not CompileCache._stage(entry, str(tmp_path / "c"), 0, 2)


def test_least_recently_used_entries_beyond_the_byte_budget_and_stale_partial_ones_are_removed(
        tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "MAX_BYTES", 1000)
    cache = CompileCache(tmp_path, "test")
    now = 1_000_000_000.0
    for age, name, size in [(40, "oldest", 10), (30, "old", 100), (20, "middle", 600), (10, "new", 300),
                            (7200, ".pending-dead", 10), (5, ".pending-live", 10)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "graph_0000.mindir").write_bytes(b"g" * size)
        os.utime(tmp_path / name, (now - age, now - age))
    monkeypatch.setattr(compile_cache.time, "time", lambda: now)
    cache._prune()
    # new + middle = 900 bytes; old would make 1000 (kept: the budget is inclusive), oldest 1010.
    assert sorted(os.listdir(tmp_path)) == [".pending-live", "middle", "new", "old"]
    # The newest entry stays even when it alone is over the budget.
    monkeypatch.setattr(compile_cache, "MAX_BYTES", 100)
    cache._prune()
    assert sorted(os.listdir(tmp_path)) == [".pending-live", "new"]


def _step_inputs(batch, frames, label_len, freq):
    rng = np.random.default_rng(frames)
    return (Tensor(rng.standard_normal((batch, 1, freq, frames)).astype(np.float32)),
            Tensor(np.full(batch, frames - 3, np.int32)),
            Tensor(rng.integers(0, 27, (batch, label_len)).astype(np.int32)),
            Tensor(np.full(batch, 4, np.int32)))


@pytest.mark.slow
def test_a_cached_graph_computes_what_a_fresh_compile_does_and_other_graphs_miss(tmp_path, repo_root):
    # In a process of its own: MindSpore keeps one cache folder and one count of cached compiles
    # per process, and earlier tests of a suite have trained with the cache in this one (the
    # cache then rightly turns itself off here, and nothing could be asserted about hits). An
    # entry script, not `python -c`: MindSpore's cache hashes the script that runs.
    runner = tmp_path / "check_cached_graphs.py"
    runner.write_text("import sys\n"
                      f"sys.path[:0] = [{str(repo_root)!r}, {str(Path(__file__).resolve().parent)!r}]\n"
                      "import test_compile_cache\n"
                      f"test_compile_cache.check_cached_graphs({str(tmp_path / 'work')!r})\n")
    proc = subprocess.run([sys.executable, str(runner)], cwd=repo_root, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def check_cached_graphs(work_dir: str) -> None:
    """The checks of the test above, in a fresh process (assertions raise)."""
    from mindaudio.config import Config
    from mindaudio.data.features import num_freq_bins
    from mindaudio.models.build import build_model
    from mindaudio.training.train_step import build_update

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    try:
        freq = num_freq_bins(Config().SpectConfig)
        shapes = [(2, 60, 8), (3, 40, 8)]

        def train_step(hidden, order, cache):
            """Loss and gradient norm of one update from a fresh model of `hidden` units."""
            config = Config()
            config.ModelConfig.hidden_size, config.ModelConfig.hidden_layers = hidden, 1
            model = build_model(config, seed=5)
            update = build_update(model, config.OptimConfig)
            data = [_step_inputs(*shape, freq) for shape in (shapes if order == "ab" else shapes[::-1])]
            report = None
            if cache is not None:
                report = cache.compile_all([Graph("train", update.accumulate, inputs) for inputs in data])
            losses = [update.add_micro_batch(*inputs)[0] for inputs in data]
            return losses, update.finish(), report

        cache = CompileCache(Path(work_dir) / "cache", "test")
        fresh = train_step(32, "ab", None)
        cold = train_step(32, "ab", cache)
        warm = train_step(32, "ab", cache)
        assert not cold[2].hit and cold[2].entry and warm[2].hit and warm[2].entry == cold[2].entry
        assert cold[:2] == fresh[:2] and warm[:2] == fresh[:2]
        # MindSpore would load its N-th cached graph for the N-th compile whatever it is; here
        # another order or another model size is another entry, and computes what it should.
        reordered = train_step(32, "ba", cache)
        assert not reordered[2].hit and reordered[2].entry != cold[2].entry
        # (The model changes only at finish(), so the micro-batch losses come in reverse order and
        # the accumulated gradient, a sum of two, is the same.)
        assert reordered[:2] == (fresh[0][::-1], fresh[1])
        bigger = train_step(48, "ab", cache)
        assert not bigger[2].hit and bigger[2].entry not in (cold[2].entry, reordered[2].entry)
        assert bigger[:2] == train_step(48, "ab", None)[:2]

        # The same cell in evaluation mode is another graph (BatchNorm), hence another entry.
        config = Config()
        config.ModelConfig.hidden_size, config.ModelConfig.hidden_layers = 32, 1
        model = build_model(config, seed=5)
        forward = _step_inputs(*shapes[0], freq)[:2]
        model.set_train(True)
        training = cache.compile_all([Graph("forward", model, forward)])
        model.set_train(False)
        evaluation = cache.compile_all([Graph("forward", model, forward)])
        assert not evaluation.hit and evaluation.entry != training.entry
    finally:
        ms.set_context(mode=previous)
    assert compile_cache._staging is None or not os.listdir(os.path.join(
        compile_cache._staging, "rank_0", "graph_cache")) or os.listdir(os.path.join(
            compile_cache._staging, "rank_0", "graph_cache")) == ["compile_dependency.hash"]


def test_compiling_leaves_no_object_frozen_even_when_a_compile_fails(tmp_path):
    # compile_all freezes the heap around its compiles (MindSpore collects garbage before each);
    # objects left frozen would never be collected again.
    import gc
    cache = CompileCache(tmp_path / "cache", "test")
    dense = nn.Dense(2, 3)
    cache.compile_all([Graph("dense", dense, (Tensor(np.zeros((1, 2), np.float32)),))])
    assert gc.get_freeze_count() == 0
    with pytest.raises((ValueError, RuntimeError, TypeError)):
        cache.compile_all([Graph("dense, wrong width", dense, (Tensor(np.zeros((1, 5), np.float32)),))])
    assert gc.get_freeze_count() == 0
