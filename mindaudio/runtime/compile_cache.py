"""Graphs compiled once per input shape across runs: MindSpore's compile cache, made safe to share.

MindSpore 2.10's compile cache (`set_context(enable_compile_cache=True, compile_cache_path=P)`)
saves the N-th graph a process compiles with the cache on as `P/rank_<r>/graph_cache/
compile_cache_N.mindir` and, in a later process whose entry script and local imports hash the
same (`compile_dependency.hash`), loads file N for that process's N-th compile *without checking
that it is the same graph*. Measured on CPU with 2.10.0: compiling two training-step shapes in
the other order, or a model of another hidden size, against the same directory loads the other
graph, which then fails inside a kernel ("Invalid seq_lengths", a Reshape size mismatch) or
could run. It also writes only into the first cache path a process gives it. A training run compiles in an order
that depends on the epoch plan, the resume point and skipped steps, so the raw cache is unsafe.

`CompileCache.compile_all` makes it safe:
- an entry is keyed by everything that defines its graphs: MindSpore's version, the device and
  mode, the source of the package and of MindSpore's own dependency files, the caller's
  description (the configuration sections that build the cells), and each graph's cell class,
  parameter shapes, training flags (training and evaluation compile different graphs) and input
  shapes, in order;
- the graphs of an entry are compiled in one go, with the cache on only for them, in the order of
  the list, so the entry's graph i is always the list's graph i;
- MindSpore numbers files by the process's count of cached compiles, not by ours, so an entry's
  files are copied into the process's own staging folder (in the temporary directory) under the
  process's numbers, and a new entry is published by renaming a complete folder into place: runs
  sharing the cache never see a partial entry and never write into a published one (the first
  publisher wins);
- after each group the files MindSpore wrote must be exactly one per compile, else the cache
  stays off for the rest of the process.
Graphs compiled outside `compile_all` do not use the cache. Only one process on the CPU is
supported (the cache was measured there); on other devices and with data parallelism
`compile_all` compiles without it.

The cache holds no parameter values (a loaded graph runs on the live parameters); an entry can be
deleted at any time.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import mindaudio  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
import mindspore as ms

from mindaudio.host import process_alive, user_cache_dir
from mindspore import Tensor, nn

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
_GRAPH_NAME = "graph_{:04d}.mindir"
_HASH_NAME = "compile_dependency.hash"
_MANIFEST_NAME = "entry.json"

# Cached compiles this process has made (MindSpore numbers the files by this count).
_cached_compiles = 0
# MindSpore's dependency hash of this process: it writes its hash file only once per process, so
# later entries are stored with the one remembered here.
_dependency_hash: Optional[bytes] = None
# The one folder MindSpore writes this process's cache into: it keeps the first compile_cache_path
# it is given for the whole process (measured), so every group goes through the same folder.
_staging: Optional[str] = None
_STAGING_PREFIX = "mindaudio-compile-"
# Set when MindSpore's numbering of cached compiles left ours (it wrote other files than one per
# graph): staged files could then meet the wrong compile, so the cache stays off in this process.
_out_of_step = ""
# Bytes of entries kept per cache folder (the least recently used go first; the newest is always
# kept). Entries differ in size by 400x: a digits-recipe entry of 13 training graphs takes about
# 50 MB, one forward graph of a transcribed length about 120 kB, so a count would either evict
# training's entries for a few dozen transcribed lengths or let training's grow without bound.
MAX_BYTES = 2 << 30
# A half-written entry of a run killed while storing it is removed after this long.
_STALE_PENDING_S = 3600.0


def default_cache_dir() -> Path:
    """`$MINDAUDIO_CACHE/compile`, else `$XDG_CACHE_HOME/mindaudio/compile`, else
    `~/.cache/mindaudio/compile` (beside the checkpoint download cache)."""
    return user_cache_dir() / "compile"


@dataclass(frozen=True)
class Graph:
    """One compile: `cell` called on tensors shaped like `inputs`; `label` names it in the entry."""
    label: str
    cell: nn.Cell
    inputs: Tuple[Tensor, ...]


@dataclass
class CompileReport:
    graphs: int
    seconds: float
    hit: bool  # the entry existed and its graphs were loaded instead of compiled
    entry: str = ""  # the entry directory ('' when nothing was stored or loaded)
    reason: str = ""  # why the cache was not used

    def describe(self) -> str:
        """One line for a log, e.g. '3 graph(s) loaded from the compile cache in 1.2 s'."""
        how = ("loaded from the compile cache" if self.hit else
               f"compiled ({self.reason})" if self.reason else "compiled and stored in the compile cache")
        return f"{self.graphs} graph(s) {how} in {self.seconds:.1f} s"


def _digest_files(paths: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(set(paths)):
        digest.update(path.encode())
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def _mindspore_dependency_files() -> List[str]:
    """The files MindSpore hashes to validate its cache (the entry script and its local imports).
    Raises when MindSpore cannot tell (no entry script: `python -c`, an interactive session)."""
    from mindspore.graph import api
    if not api.entry_script_path or not os.path.isfile(api.entry_script_path):
        raise RuntimeError("no entry script")
    return list(api._get_compile_cache_dep_files())  # pylint: disable=protected-access


def _package_files() -> List[str]:
    return [str(path) for path in PACKAGE_DIR.rglob("*.py")]


def _graph_identity(graph: Graph) -> dict:
    cls = type(graph.cell)
    return {"label": graph.label, "cell": f"{cls.__module__}.{cls.__qualname__}",
            # Training and evaluation compile different graphs (BatchNorm, dropout).
            "training": [(name, cell.training) for name, cell in graph.cell.cells_and_names()],
            "parameters": sorted((p.name, list(p.shape), str(p.dtype)) for p in graph.cell.get_parameters()),
            "inputs": [(list(x.shape), str(x.dtype)) for x in graph.inputs]}


def _graph_cache_dir(staging: str, rank_dir: str) -> str:
    # MindSpore's layout: <path>/rank_<rank>/graph_cache.
    return os.path.join(staging, rank_dir, "graph_cache")


def _process_staging() -> str:
    """This process's staging folder (in the temporary directory), created on first use and
    removed at exit; folders left by processes that no longer run are removed on the way."""
    global _staging
    if _staging is not None and os.path.isdir(_staging):
        return _staging
    temp = tempfile.gettempdir()
    for name in os.listdir(temp):
        if name.startswith(_STAGING_PREFIX):
            pid = name[len(_STAGING_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
                shutil.rmtree(os.path.join(temp, name), ignore_errors=True)
    _staging = tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-")
    atexit.register(shutil.rmtree, _staging, True)
    return _staging


class CompileCache:
    """Entries of compiled graphs under `root`, shared safely by concurrent runs.

    description: text naming everything besides the cells' parameters and inputs that shapes the
    graphs (e.g. the model and optimiser configuration, the number of data-parallel ranks).
    """

    def __init__(self, root, description: str):
        self.root = Path(root)
        self.description = description

    def _key(self, graphs: Sequence[Graph]) -> str:
        identity = {
            "mindspore": ms.__version__,
            "device": ms.get_context("device_target"),
            "mode": ms.get_context("mode"),
            "package": _digest_files(_package_files()),
            "mindspore_dependencies": _digest_files(_mindspore_dependency_files()),
            "description": self.description,
            "graphs": [_graph_identity(graph) for graph in graphs],
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:40]

    @staticmethod
    def _unusable() -> str:
        if ms.get_context("device_target") != "CPU":
            return "the compile cache is only supported on CPU"
        if ms.get_context("mode") != ms.GRAPH_MODE:
            return "PyNative mode compiles no graphs"
        if os.environ.get("MS_COMPILER_CACHE_ENABLE") or ms.get_context("enable_compile_cache"):
            return "MindSpore's own compile cache is switched on (MS_COMPILER_CACHE_ENABLE)"
        if ms.get_auto_parallel_context("parallel_mode") != ms.ParallelMode.STAND_ALONE:
            return "the compile cache is not used with data parallelism (not measured there)"
        return _out_of_step

    def compile_all(self, graphs: Sequence[Graph]) -> CompileReport:
        """Compile every graph (`Cell.compile`), loading them from the cache when an entry for
        exactly these graphs exists, else storing a new entry. Never raises for the cache's sake:
        when it cannot be used the graphs are compiled as usual (`reason` says why)."""
        start = time.perf_counter()
        with _one_collection():
            report = self._compile_all(list(graphs))
        report.seconds = time.perf_counter() - start
        return report

    def _compile_all(self, graphs: List[Graph]) -> CompileReport:
        """`compile_all` without the clock: its report's seconds are left at 0."""
        global _cached_compiles, _out_of_step
        reason = self._unusable()
        if not reason:
            try:
                entry = self.root / self._key(graphs)
                self.root.mkdir(parents=True, exist_ok=True)
                staging = _process_staging()
            except (OSError, RuntimeError, SyntaxError, ImportError) as err:
                reason = f"cache unavailable ({type(err).__name__}: {err})"
        if reason:
            for graph in graphs:
                graph.cell.compile(*graph.inputs)
            return CompileReport(len(graphs), 0.0, False, reason=reason)
        base = _cached_compiles
        try:
            hit = self._stage(entry, staging, base, len(graphs))
            try:
                ms.set_context(enable_compile_cache=True, compile_cache_path=staging)
                for graph in graphs:
                    _cached_compiles += 1
                    graph.cell.compile(*graph.inputs)
            finally:
                ms.set_context(enable_compile_cache=False)
            written = sorted(os.path.basename(path) for path in
                             glob.glob(os.path.join(staging, "rank_*", "graph_cache", "compile_cache_*.mindir")))
            expected = sorted(f"compile_cache_{base + index}.mindir" for index in range(len(graphs)))
            if written != expected:
                # A hit leaves exactly the staged files, a miss exactly one new file per graph.
                _out_of_step = (f"MindSpore's cache files {written} did not match the compiles "
                                f"{expected}: the cache is off for the rest of this process")
                logger.warning("compile cache: %s", _out_of_step)
                return CompileReport(len(graphs), 0.0, False, reason=_out_of_step)
            stored = hit or self._publish(entry, staging, base, graphs)
            try:
                if hit:
                    os.utime(entry)  # recently used: pruned last
                else:
                    self._prune()
            except OSError:
                pass  # pruned or pruning meanwhile by another run
        finally:
            # The graphs are in memory now; only the dependency hash stays for later groups.
            for path in glob.glob(os.path.join(staging, "rank_*", "graph_cache", "compile_cache_*.mindir")):
                os.remove(path)
        return CompileReport(len(graphs), 0.0, hit, str(entry) if stored else "",
                             reason="" if stored else "MindSpore stored no complete cache")

    @staticmethod
    def _stage(entry: Path, staging: str, base: int, count: int) -> bool:
        """Copy a published entry's graphs into `staging` under this process's numbers."""
        global _dependency_hash
        try:
            with open(entry / _MANIFEST_NAME, encoding="utf-8") as f:
                manifest = json.load(f)
            if manifest["graphs"] != count:
                return False
            dependency_hash = (entry / _HASH_NAME).read_bytes()
            if _dependency_hash is not None and dependency_hash != _dependency_hash:
                return False  # stored by a process whose files differ: MindSpore would refuse it
            target = Path(_graph_cache_dir(staging, manifest["rank_dir"]))
            target.mkdir(parents=True, exist_ok=True)
            copied = []
            try:
                for index in range(count):
                    copied.append(target / f"compile_cache_{base + index}.mindir")
                    shutil.copyfile(entry / _GRAPH_NAME.format(index), copied[-1])
            except OSError:
                for path in copied:  # pruned meanwhile: compile afresh
                    path.unlink(missing_ok=True)
                raise
            if not (target / _HASH_NAME).exists():
                (target / _HASH_NAME).write_bytes(dependency_hash)
            _dependency_hash = dependency_hash
            return True
        except (OSError, ValueError, KeyError, TypeError):
            return False  # absent or unreadable

    def _publish(self, entry: Path, staging: str, base: int, graphs: Sequence[Graph]) -> bool:
        """Copy what MindSpore wrote into a new entry, published atomically (an existing one is
        kept). Returns whether an entry for these graphs now exists."""
        global _dependency_hash
        written = glob.glob(os.path.join(staging, "rank_*", "graph_cache"))
        if len(written) != 1:
            logger.info("compile cache: nothing stored (MindSpore wrote %d cache folders)", len(written))
            return False
        source = Path(written[0])
        files = [source / f"compile_cache_{base + index}.mindir" for index in range(len(graphs))]
        if (source / _HASH_NAME).exists():
            _dependency_hash = _dependency_hash or (source / _HASH_NAME).read_bytes()
        if not all(path.is_file() for path in files) or _dependency_hash is None:
            logger.info("compile cache: nothing stored (found %s)", sorted(os.listdir(source)))
            return False
        pending = tempfile.mkdtemp(prefix=".pending-", dir=self.root)
        try:
            for index, path in enumerate(files):
                shutil.copyfile(path, os.path.join(pending, _GRAPH_NAME.format(index)))
            (Path(pending) / _HASH_NAME).write_bytes(_dependency_hash)
            manifest = {"graphs": len(graphs), "rank_dir": source.parent.name,
                        "mindspore": ms.__version__, "created": time.time(),
                        "description": self.description,
                        "identity": [_graph_identity(graph) for graph in graphs]}
            with open(os.path.join(pending, _MANIFEST_NAME), "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1)
            os.rename(pending, entry)  # atomic; fails when another run published it first
        except OSError:
            shutil.rmtree(pending, ignore_errors=True)
        return entry.is_dir()


    def _prune(self) -> None:
        """Keep the most recently used entries up to MAX_BYTES; remove stale half-written ones."""
        entries = []
        now = time.time()
        for path in self.root.iterdir():
            try:
                if path.name.startswith(".pending-"):
                    if now - path.stat().st_mtime > _STALE_PENDING_S:
                        shutil.rmtree(path, ignore_errors=True)
                elif not path.name.startswith("."):
                    size = sum(f.stat().st_size for f in path.iterdir())
                    entries.append((path.stat().st_mtime, size, path))
            except OSError:
                continue  # removed meanwhile by another run
        total = 0
        for index, (_, size, path) in enumerate(sorted(entries, reverse=True)):
            total += size
            if total > MAX_BYTES and index > 0:
                # A run staging from it meanwhile finds it gone and compiles afresh.
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _one_collection():
    """One full garbage collection for a group of compiles instead of one per compile.

    MindSpore collects all of Python's garbage before every graph it compiles (`gc.collect()` in
    `mindspore/graph/api.py`), which scans every live object: 44 ms per compile after importing
    MindSpore, 180 ms with a 281,241-utterance split loaded, 0.7 s of the 1.9 s a digits run took
    to load its 16 graphs from the cache. Collecting once and then freezing the survivors (moving
    them out of the collector's view until the group is done) leaves each compile's collection
    only what was allocated since.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def shapes_to_compile(cell: nn.Cell, shapes: List[tuple]) -> List[tuple]:
    """All of `shapes`, or only the first when `cell` was given dynamic inputs (`Cell.set_inputs`,
    `RuntimeConfig.dynamic_shapes`): its one graph then serves every shape."""
    return shapes[:1] if cell.get_inputs() is not None else shapes


class CompileOnFirstUse:
    """Compiles cells through a `CompileCache` the first time each input shape is met, for callers
    that cannot list their shapes ahead (transcription and serving pad every input to one of a few
    lengths). Each shape is an entry of its own, so a run loads every shape an earlier run met,
    whatever the order in which the files came.

    Call `before_call` just before every call of the cell; a cell must not be compiled for a
    shape by other means before (the cache would then see no file written and turn itself off
    for the process, which is safe but loses it). cache None: nothing is done, each shape is
    compiled at its first call as usual.
    """

    def __init__(self, cache: Optional[CompileCache], log: Callable[[str], None] = logger.info):
        self.cache = cache
        self.log = log
        self.reports: List[CompileReport] = []
        self._met: set = set()

    def before_call(self, label: str, cell: nn.Cell, inputs: Sequence[Tensor]) -> None:
        """Compile (or load) `cell` for `inputs`' shapes unless this object has done so already."""
        if self.cache is None:
            return
        key = (id(cell), cell.training, tuple((tuple(x.shape), str(x.dtype)) for x in inputs))
        if key in self._met:
            return
        self._met.add(key)
        report = self.cache.compile_all([Graph(label, cell, tuple(inputs))])
        self.reports.append(report)
        self.log(f"{label}: {report.describe()}")


def describe(*parts) -> str:
    """A description for `CompileCache` from dataclasses and plain values (JSON, keys sorted)."""
    return json.dumps([dataclasses.asdict(part) if dataclasses.is_dataclass(part) else part
                       for part in parts], sort_keys=True, default=str)


__all__ = ["CompileCache", "CompileOnFirstUse", "CompileReport", "Graph", "default_cache_dir", "describe",
           "shapes_to_compile"]
