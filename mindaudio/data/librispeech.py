"""Prepare LibriSpeech for DeepSpeech2: download, verify, extract, convert to WAV, write manifests.

Run from the repo root:

    python mindaudio/data/librispeech.py --root_path DIR [--data_ready True] [--splits train val ...]
                                         [--workers N] [--base_url URL] [--keep_flac True]

The original script's flags work too: `--data_path DIR` is `--root_path DIR`, and `--download False`
is `--data_ready True` (the archives are already in DIR; `--download True` fetches them, the
default here).

Writes, for each requested split (`train`, `val`, `test_clean`, `test_other`):

    DIR/<split>/wav/<utt-id>.wav                16 kHz mono 16-bit PCM
    DIR/<split>/txt/<utt-id>.txt                the transcript, one line
    DIR/<split>/libri_<split>_manifest.json     {"root_path": ..., "samples": [...]}, sorted by id

Archives are kept in DIR and extracted to DIR/LibriSpeech/. Once every WAV of a subset is written and
checked against its FLAC, the subset's extracted FLAC tree is deleted (as the original did; about
60 GB for the full set) unless `--keep_flac True`; a `.<subset>.converted.json` record keeps what the
manifests need. Free disk space is checked before anything starts. Running again does nothing new:
verified archives, converted subsets, finished WAVs and unchanged text files are left alone, and an
interrupted run resumes where it stopped.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    import _script_setup  # noqa: F401  (puts the repo root on sys.path; see that module)

import argparse
import functools
import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from mindaudio.errors import UserError, report_user_errors
from mindaudio.data.archives import (ArchiveError, ChecksumError, download_archive, safe_extract,
                                     set_aside, verify_archive)
from mindaudio.data.manifest import (Problem, SplitSummary, Utterance, write_manifest,
                                     write_text_atomic, write_text_if_changed)

__all__ = ["ARCHIVES", "SPLITS", "OPENSLR_URL", "TARGET_SAMPLE_RATE", "LibriSpeechArchive",
           "PreparationError", "PreparationSummary", "flac_to_wav", "disk_space_needed",
           "collect_utterances", "extracted_utterances", "prepare_split", "prepare_librispeech", "parse_bool", "main"]

OPENSLR_URL = "https://www.openslr.org/resources/12"
TARGET_SAMPLE_RATE = 16000
SPLITS = ("train", "val", "test_clean", "test_other")


@dataclass(frozen=True)
class LibriSpeechArchive:
    name: str
    md5: str
    split: str

    @property
    def subset(self) -> str:
        """The folder the archive unpacks to under `LibriSpeech/`, e.g. `test-clean`."""
        return self.name[: -len(".tar.gz")]


# OpenSLR resource 12 and its published MD5 sums.
ARCHIVES = (
    LibriSpeechArchive("train-clean-100.tar.gz", "2a93770f6d5c6c964bc36631d331a522", "train"),
    LibriSpeechArchive("train-clean-360.tar.gz", "c0e676e450a7ff2f54aeade5171606fa", "train"),
    LibriSpeechArchive("train-other-500.tar.gz", "d1a0fd59409feb2c614ce4d30c387708", "train"),
    LibriSpeechArchive("dev-clean.tar.gz", "42e2234ba48799c1f50f24a7926300a1", "val"),
    LibriSpeechArchive("dev-other.tar.gz", "c8d0bcc9cca99d4f8b62fcc847357931", "val"),
    LibriSpeechArchive("test-clean.tar.gz", "32fa31d27d2e1cad72775fee3f4849a9", "test_clean"),
    LibriSpeechArchive("test-other.tar.gz", "fb5a50374b501bb3bac4815ee91d3135", "test_other"),
)


# Archive sizes in bytes as OpenSLR serves them, for the disk-space estimate before a run.
ARCHIVE_BYTES = {
    "train-clean-100.tar.gz": 6_387_309_499,
    "train-clean-360.tar.gz": 23_049_477_885,
    "train-other-500.tar.gz": 30_593_501_606,
    "dev-clean.tar.gz": 337_926_286,
    "dev-other.tar.gz": 314_305_928,
    "test-clean.tar.gz": 346_663_984,
    "test-other.tar.gz": 328_757_843,
}
# 16 kHz 16-bit WAV over LibriSpeech's FLAC: measured 1.8x (train-clean-100: 6.4 GB of archive,
# 11.6 GB of WAV); 2x leaves a margin.
WAV_BYTES_PER_ARCHIVE_BYTE = 2.0


class PreparationError(UserError, RuntimeError):
    """The preparation cannot start: an unknown split, or inputs missing in `data_ready` mode; or an
    extracted tree read in place (`extracted_utterances`) whose audio and transcripts do not pair up."""


@dataclass
class PreparationSummary:
    root_path: str
    splits: List[SplitSummary] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def problems(self) -> List[Problem]:
        return [problem for split in self.splits for problem in split.problems]

    @property
    def utterances(self) -> int:
        return sum(split.utterances for split in self.splits)

    @property
    def audio_seconds(self) -> float:
        return sum(split.audio_seconds for split in self.splits)

    def report(self) -> str:
        lines = [f"LibriSpeech preparation in {self.root_path} ({self.wall_seconds:.1f} s)"]
        for split in self.splits:
            lines.append(f"  {split.split}: {split.utterances} utterances ({split.converted} converted "
                         f"now), {split.audio_seconds:.1f} s = {split.audio_seconds / 3600:.2f} h of audio, "
                         f"{len(split.problems)} problems -> {split.manifest}")
        problems = self.problems
        lines.append(f"  problems: {len(problems)} (left out of the manifests)")
        lines.extend(f"    {problem}" for problem in problems)
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Audio

def _to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) int16 -> (frames,) int16; several channels are averaged, rounding to nearest."""
    if samples.shape[1] == 1:
        return samples[:, 0]
    return np.round(samples.astype(np.float64).mean(axis=1)).astype(np.int16)


def flac_to_wav(source: Path, destination: Path, sample_rate: int = TARGET_SAMPLE_RATE) -> float:
    """Convert one audio file to mono 16-bit PCM WAV at `sample_rate`; returns its duration in seconds.

    Samples are read as int16 and written as int16, so a 16 kHz mono FLAC is copied sample-exactly;
    another rate is resampled with soxr. The WAV appears under its final name only when complete.
    """
    expected_frames = sf.info(str(source)).frames
    samples, rate = sf.read(str(source), dtype="int16", always_2d=True)
    if samples.shape[0] != expected_frames:
        raise ValueError(f"decoded {samples.shape[0]} of {expected_frames} frames (truncated file)")
    if samples.shape[0] == 0:
        raise ValueError("no audio frames")
    mono = _to_mono(samples)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    partial = destination.with_name(f".{destination.name}.tmp")
    try:
        sf.write(str(partial), mono, sample_rate, subtype="PCM_16", format="WAV")
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return mono.shape[0] / sample_rate


def _wav_duration(path: str) -> Optional[float]:
    """Duration of an existing WAV, or None if there is none or it cannot be read (then redo it)."""
    try:
        info = sf.info(path)
    except (OSError, RuntimeError):
        return None
    return info.frames / info.samplerate if info.frames > 0 else None


def _convert_task(task: Tuple[str, str, str]) -> Tuple[str, Optional[float], Optional[str]]:
    """Worker: convert one (id, flac, wav) task. Returns (id, duration or None, error or None)."""
    uid, flac, wav = task
    try:
        return uid, flac_to_wav(Path(flac), Path(wav)), None
    except Exception as error:  # one bad file must not stop the run: it is reported by name instead
        return uid, None, f"{type(error).__name__}: {error}"


def _map_audio(tasks: Sequence[Tuple[str, str, str]], workers: int) -> Iterator:
    """Run `_convert_task` over `tasks` in order, in `workers` processes (in-process for <= 1).

    Processes are spawned, so a script calling this must guard its entry point with
    `if __name__ == "__main__":` (the usual multiprocessing rule).
    """
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_convert_task, tasks)
        return
    # spawn, not fork: the caller may have started threads (MindSpore does) that a fork would copy
    # in a locked state.
    context = multiprocessing.get_context("spawn")
    workers = min(workers, len(tasks))
    chunk = max(1, min(64, len(tasks) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(_convert_task, tasks, chunksize=chunk)


# ---------------------------------------------------------------------------------------------
# Transcripts and pairing

def _read_transcript_file(path: Path) -> Tuple[Dict[str, str], List[Problem]]:
    """Parse a LibriSpeech `<spk>-<chapter>.trans.txt` ("<utt-id> <TEXT>" a line) into {id: text}."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        return {}, [Problem("unreadable transcript", str(path), str(error))]
    texts: Dict[str, str] = {}
    problems = []
    for number, line in enumerate(lines, start=1):
        fields = line.split(maxsplit=1)
        if not fields:
            continue
        if len(fields) < 2:
            problems.append(Problem("malformed transcript line", str(path),
                                    f"line {number}: {fields[0]!r} has no text"))
        elif fields[0] in texts:
            problems.append(Problem("duplicate transcript line", str(path),
                                    f"line {number}: {fields[0]} appears twice"))
        else:
            texts[fields[0]] = " ".join(fields[1].split())
    return texts, problems


def collect_utterances(subset_dir: Path) -> Tuple[Dict[str, Utterance], List[Problem]]:
    """Pair the FLACs under an extracted subset (e.g. `LibriSpeech/test-clean`) with their transcripts.

    Returns ({utt-id: Utterance}, problems). A transcript line without audio, audio without a
    transcript line, and unreadable or malformed transcript files are problems, never dropped silently.
    """
    problems: List[Problem] = []
    audio: Dict[str, Path] = {}
    for flac in sorted(subset_dir.rglob("*.flac")):
        if flac.stem in audio:
            problems.append(Problem("duplicate audio", str(flac), f"{flac.stem} also at {audio[flac.stem]}"))
        else:
            audio[flac.stem] = flac
    texts: Dict[str, Tuple[str, Path]] = {}
    for transcript_file in sorted(subset_dir.rglob("*.trans.txt")):
        found, file_problems = _read_transcript_file(transcript_file)
        problems.extend(file_problems)
        for uid, text in found.items():
            if uid in texts:
                problems.append(Problem("duplicate transcript line", str(transcript_file),
                                        f"{uid} also in {texts[uid][1]}"))
            else:
                texts[uid] = (text, transcript_file)
    for uid in sorted(texts.keys() - audio.keys()):
        problems.append(Problem("transcript without audio", str(texts[uid][1]), f"no {uid}.flac"))
    for uid in sorted(audio.keys() - texts.keys()):
        problems.append(Problem("audio without transcript", str(audio[uid]), f"no line for {uid}"))
    utterances = {uid: Utterance(uid, str(audio[uid]), texts[uid][0])
                  for uid in sorted(audio.keys() & texts.keys())}
    return utterances, problems


def extracted_utterances(librispeech_dir: Path, subsets: Optional[Sequence[str]] = None) -> List[Utterance]:
    """Every utterance of an extracted `LibriSpeech/` tree, its FLAC left in place, sorted by id.

    subsets: folder names under `librispeech_dir` (e.g. "test-clean"); default every folder there.
    Raises PreparationError listing the problems when any audio or transcript line is unpaired or
    a transcript file is malformed: used in place, nothing may be left out silently.
    """
    librispeech_dir = Path(librispeech_dir)
    if not librispeech_dir.is_dir():
        raise PreparationError(f"no extracted LibriSpeech tree at {librispeech_dir}")
    if subsets is None:
        subsets = sorted(path.name for path in librispeech_dir.iterdir() if path.is_dir())
    utterances: List[Utterance] = []
    problems: List[Problem] = []
    for subset in subsets:
        found, subset_problems = collect_utterances(librispeech_dir / subset)
        utterances.extend(found.values())
        problems.extend(subset_problems)
    if problems:
        raise PreparationError(f"{librispeech_dir}: {len(problems)} problems:\n  "
                               + "\n  ".join(str(problem) for problem in problems))
    return sorted(utterances)


def _remove_partial_files(folder: Path) -> None:
    """Delete `.<name>.tmp` files a killed run left behind (finished files were renamed away from them)."""
    for leftover in folder.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# One split

def manifest_path(root_path: Path, split: str) -> Path:
    return Path(root_path) / split / f"libri_{split}_manifest.json"


def conversion_record(subset_dir: Path) -> Path:
    """Where the utterances of a converted subset are recorded: `LibriSpeech/.<subset>.converted.json`.
    Written once every WAV of the subset is checked; from then on the FLAC tree is not needed."""
    subset_dir = Path(subset_dir)
    return subset_dir.parent / f".{subset_dir.name}.converted.json"


def _read_record(record: Path) -> Optional[Dict[str, Tuple[float, str]]]:
    try:
        document = json.loads(record.read_text(encoding="utf-8"))
        return {uid: (float(duration), str(text))
                for uid, (duration, text) in document["utterances"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or damaged: convert from the FLAC tree again


def _wav_matches_flac(wav: Path, flac: str) -> bool:
    """The WAV's header promises the frames its FLAC holds (resampled where the rates differ)."""
    try:
        wav_info, flac_info = sf.info(str(wav)), sf.info(flac)
    except (OSError, RuntimeError):
        return False
    expected = round(flac_info.frames * wav_info.samplerate / flac_info.samplerate)
    return wav_info.frames > 0 and abs(wav_info.frames - expected) <= 1


def _convert_subset(subset_dir: Path, wav_dir: Path, taken: Mapping[str, object], workers: int,
                    progress: bool, summary: SplitSummary) -> Tuple[Dict[str, Tuple[float, str]], bool]:
    """Convert one extracted subset's utterances to WAV; returns ({id: (seconds, text)}, whether
    every one of them is converted and checked against its FLAC)."""
    found, problems = collect_utterances(subset_dir)
    summary.problems.extend(problems)
    utterances: Dict[str, Utterance] = {}
    for uid, utterance in found.items():
        if uid in taken:
            summary.problems.append(Problem("duplicate audio", utterance.audio_path,
                                            f"{uid} also in another subset of {summary.split}"))
        else:
            utterances[uid] = utterance
    # A WAV under its final name is complete (it was renamed there whole), so only missing or
    # unreadable ones are converted; a rerun starts no worker at all.
    converted: Dict[str, Tuple[float, str]] = {}
    tasks = []
    for uid in sorted(utterances):
        wav = wav_dir / f"{uid}.wav"
        duration = _wav_duration(str(wav)) if wav.exists() else None
        if duration is None:
            tasks.append((uid, utterances[uid].audio_path, str(wav)))
        else:
            converted[uid] = (duration, utterances[uid].transcript)
    failed = False
    for uid, duration, error in tqdm(_map_audio(tasks, workers), total=len(tasks), unit=" utt",
                                     desc=f"{summary.split} wav", disable=not progress):
        if error is None:
            converted[uid] = (duration, utterances[uid].transcript)
            summary.converted += 1
        else:
            failed = True
            summary.problems.append(Problem("unreadable audio", utterances[uid].audio_path, error))
    checked = not failed and not problems and all(
        _wav_matches_flac(wav_dir / f"{uid}.wav", utterances[uid].audio_path) for uid in converted)
    return converted, checked


def prepare_split(root_path: Path, split: str, subset_dirs: Sequence[Union[Path, Callable[[], Path]]],
                  workers: int = 1, progress: bool = True, delete_flac: Sequence[Path] = ()
                  ) -> SplitSummary:
    """Convert the utterances of the extracted `subset_dirs` into `root_path/<split>/` and its manifest.

    subset_dirs: folders such as `LibriSpeech/test-clean`, or callables that make one ready and
    return it (called in turn, so one subset is on disk at a time when FLAC trees are deleted).
    A subset whose `conversion_record` exists is taken from it without its FLAC tree. Once every
    utterance of a subset is converted and checked, the record is written, and if the folder is
    in `delete_flac`, its FLAC tree is deleted.
    """
    split_dir = Path(root_path).resolve() / split
    wav_dir, txt_dir = split_dir / "wav", split_dir / "txt"
    summary = SplitSummary(split=split, manifest=str(manifest_path(root_path, split).resolve()))
    deletable = {Path(path).resolve() for path in delete_flac}

    entries: Dict[str, Tuple[float, str]] = {}
    for position, source in enumerate(subset_dirs):
        subset_dir = Path(source() if callable(source) else source)
        if position == 0:  # only once an input is in hand, so a refused archive leaves no folders
            for folder in (wav_dir, txt_dir):
                folder.mkdir(parents=True, exist_ok=True)
                _remove_partial_files(folder)
        record = conversion_record(subset_dir)
        done = _read_record(record)
        if done is None:
            done, checked = _convert_subset(subset_dir, wav_dir, entries, workers, progress, summary)
            if checked and done:
                write_text_atomic(record, json.dumps({"split": split, "utterances": done}) + "\n")
        for uid, (duration, text) in sorted(done.items()):
            if _wav_duration(str(wav_dir / f"{uid}.wav")) is None:
                summary.problems.append(Problem(
                    "missing WAV", str(wav_dir / f"{uid}.wav"),
                    f"its FLAC was deleted after conversion; delete {record} to extract it again"))
            elif uid not in entries:
                entries[uid] = (duration, text)
        if record.exists() and subset_dir.resolve() in deletable and subset_dir.is_dir():
            shutil.rmtree(subset_dir)
    if not entries:
        summary.problems.append(Problem("empty split", split,
                                        "no utterance with both audio and transcript"))

    samples = []
    for uid in sorted(entries):
        duration, text = entries[uid]
        summary.texts_written += write_text_if_changed(txt_dir / f"{uid}.txt", text)
        samples.append({"wav_path": f"wav/{uid}.wav", "txt_path": f"txt/{uid}.txt",
                        "duration": duration})
        summary.audio_seconds += duration
    summary.utterances = len(samples)
    write_manifest(summary.manifest, split_dir, samples)
    return summary


# ---------------------------------------------------------------------------------------------
# Inputs: archives and extracted trees

def _extraction_marker(root: Path, archive: LibriSpeechArchive) -> Path:
    return root / "LibriSpeech" / f".{archive.subset}.extracted"


def _subset_dir(root: Path, archive: LibriSpeechArchive) -> Path:
    return root / "LibriSpeech" / archive.subset


def _verify_or_set_aside(path: Path, md5: str, data_ready: bool, progress: bool) -> None:
    if path.is_dir():
        raise PreparationError(f"{path} is a directory, not the archive {path.name}")
    try:
        verify_archive(path, md5, progress=progress)
    except ChecksumError as error:
        aside = set_aside(path)
        then = ("put a good copy of the archive there (or run without --data_ready True to download it)"
                if data_ready else "the next run downloads it again")
        raise ChecksumError(f"{error}; moved it to {aside.name}: {then}") from error


def _obtain_subset(root: Path, archive: LibriSpeechArchive, md5: str, data_ready: bool, base_url: str,
                   retries: int, progress: bool) -> Path:
    """Make `root/LibriSpeech/<subset>/` complete (download, verify, extract as needed); returns it.
    A subset already converted (its `conversion_record` exists) needs nothing."""
    subset_dir = _subset_dir(root, archive)
    marker = _extraction_marker(root, archive)
    if conversion_record(subset_dir).exists() or (marker.exists() and subset_dir.is_dir()):
        return subset_dir
    archive_path = root / archive.name
    if archive_path.exists():
        _verify_or_set_aside(archive_path, md5, data_ready, progress)
    elif data_ready:
        return subset_dir  # an extracted tree the user supplied (checked to exist beforehand)
    else:
        download_archive(f"{base_url.rstrip('/')}/{archive.name}", archive_path, md5,
                         retries=retries, progress=progress)
    safe_extract(archive_path, root, progress=progress)
    if not subset_dir.is_dir():
        raise ArchiveError(f"{archive_path}: holds no LibriSpeech/{archive.subset}/ folder")
    # Written last: a run killed mid-extraction has no marker and extracts again.
    write_text_atomic(marker, json.dumps({"archive": archive.name, "md5": md5}) + "\n")
    return subset_dir


def _missing_inputs(root: Path, archives: Iterable[LibriSpeechArchive]) -> List[str]:
    """For `data_ready`: each archive with neither the file, an extracted tree nor a finished
    conversion in `root`."""
    return [f"{root / archive.name} (or extracted {_subset_dir(root, archive)}/)"
            for archive in archives
            if not (root / archive.name).exists() and not _subset_dir(root, archive).is_dir()
            and not conversion_record(_subset_dir(root, archive)).exists()]


def _tree_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def disk_space_needed(root: Path, archives: Iterable[LibriSpeechArchive], keep_flac: bool,
                      archive_bytes: Optional[Mapping[str, int]] = None) -> int:
    """Bytes the preparation of `archives` may still add under `root` (an estimate from above).

    Per archive not yet converted: the download (unless the archive is there), the extracted FLAC
    tree (unless extracted; with FLAC deletion only the largest one counts, as one tree is on
    disk at a time) and its WAVs (WAV_BYTES_PER_ARCHIVE_BYTE x the archive). An archive's size is
    the file's when present, else its extracted tree's, else `archive_bytes` / ARCHIVE_BYTES.
    """
    sizes = dict(ARCHIVE_BYTES)
    sizes.update(archive_bytes or {})
    total = 0.0
    largest_tree = 0
    for archive in archives:
        subset_dir = _subset_dir(root, archive)
        if conversion_record(subset_dir).exists():
            continue
        archive_path = root / archive.name
        if archive_path.is_file():
            size = archive_path.stat().st_size
        elif subset_dir.is_dir():
            size = _tree_bytes(subset_dir)
        else:
            size = sizes.get(archive.name, 0)
            total += size
        tree = 0 if subset_dir.is_dir() else size
        if keep_flac:
            total += tree
        else:
            largest_tree = max(largest_tree, tree)
        total += WAV_BYTES_PER_ARCHIVE_BYTE * size
    return int(total + largest_tree)


def _check_disk_space(root: Path, needed: int) -> None:
    free = shutil.disk_usage(root).free
    if needed > free:
        raise PreparationError(
            f"not enough free disk space in {root}: the chosen splits need about {needed:,} bytes "
            f"({needed / 1e9:.1f} GB) more, {free:,} bytes ({free / 1e9:.1f} GB) are available; "
            f"free some space, choose fewer --splits, or use another --root_path")


def _normalise_splits(splits: Iterable[str]) -> List[str]:
    if isinstance(splits, str):
        splits = [splits]
    requested = []
    for entry in splits:
        for split in str(entry).replace(",", " ").split():
            if split not in SPLITS:
                raise PreparationError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
            if split not in requested:
                requested.append(split)
    if not requested:
        raise PreparationError(f"no split requested; choose from {', '.join(SPLITS)}")
    return requested


def prepare_librispeech(root_path, splits: Sequence[str] = SPLITS, data_ready: bool = False,
                        workers: Optional[int] = None, base_url: str = OPENSLR_URL, *,
                        archive_md5s: Optional[Mapping[str, str]] = None, retries: int = 5,
                        progress: bool = True, verbose: bool = True, keep_flac: bool = False,
                        archive_bytes: Optional[Mapping[str, int]] = None) -> PreparationSummary:
    """Prepare the requested LibriSpeech splits under `root_path`; returns (and prints) a summary.

    Only the archives feeding `splits` are fetched from `base_url`. With `data_ready` nothing is
    downloaded: each needed archive must be in `root_path`, or its extracted `LibriSpeech/<subset>/`
    tree, else `PreparationError` lists every missing one. `workers` processes convert audio
    (default: one per CPU). `archive_md5s` ({archive name: md5}) replaces published sums, for
    archives built locally. Bad utterances are listed in the summary, not raised.
    A subset extracted here from its archive has its FLAC tree deleted once its WAVs are written
    and checked, unless `keep_flac`; a tree the user supplied is never deleted. Before anything
    starts, PreparationError names the bytes needed when the disk lacks them (`disk_space_needed`;
    `archive_bytes` replaces the known archive sizes).
    """
    started = time.monotonic()
    root = Path(root_path).resolve()
    requested = _normalise_splits(splits)
    workers = (os.cpu_count() or 1) if workers is None else workers
    md5s = {archive.name: archive.md5 for archive in ARCHIVES}
    md5s.update(archive_md5s or {})
    needed = [archive for archive in ARCHIVES if archive.split in requested]
    if root.exists() and not root.is_dir():
        raise PreparationError(f"--root_path {root} is a file, not a folder")
    if data_ready:
        missing = _missing_inputs(root, needed)
        if missing:
            raise PreparationError("--data_ready True (--download False): nothing is downloaded, "
                                   "but these inputs are missing:\n  "
                                   + "\n  ".join(missing))
    root.mkdir(parents=True, exist_ok=True)
    _check_disk_space(root, disk_space_needed(root, needed, keep_flac, archive_bytes))

    summary = PreparationSummary(root_path=str(root))
    for split in requested:
        sources, deletable = [], []
        for archive in needed:
            if archive.split != split:
                continue
            # Only a tree extracted here from its archive may be deleted: it can be extracted again.
            if not keep_flac and ((root / archive.name).exists() or not data_ready):
                deletable.append(_subset_dir(root, archive))
            sources.append(functools.partial(_obtain_subset, root, archive, md5s[archive.name],
                                             data_ready, base_url, retries, progress))
        summary.splits.append(prepare_split(root, split, sources, workers, progress, deletable))
    summary.wall_seconds = time.monotonic() - started
    if verbose:
        print(summary.report())
    return summary


# ---------------------------------------------------------------------------------------------
# Command line

def parse_bool(text: str) -> bool:
    """The original's True/False flag values (also yes/no, 1/0), case-insensitive."""
    value = str(text).strip().lower()
    if value in ("true", "yes", "1", "y", "t"):
        return True
    if value in ("false", "no", "0", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Download LibriSpeech, convert it to 16 kHz WAV and write DeepSpeech2 manifests.")
    parser.add_argument("--root_path", default=None, help="folder for archives and prepared splits")
    parser.add_argument("--data_path", default=None,
                        help="the original script's name for --root_path")
    parser.add_argument("--data_ready", type=parse_bool, default=None, metavar="True|False",
                        help="use archives or an extracted LibriSpeech/ tree already in root_path; "
                             "no network (default: False)")
    parser.add_argument("--download", type=parse_bool, default=None, metavar="True|False",
                        help="the original script's flag: True downloads the archives (the default "
                             "here), False is --data_ready True")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), metavar="SPLIT",
                        help=f"splits to prepare (default: all of {' '.join(SPLITS)})")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes converting audio (default: one per CPU)")
    parser.add_argument("--base_url", default=OPENSLR_URL, help="where the archives are downloaded from")
    parser.add_argument("--retries", type=int, default=5, help="retries of a dropped download, each resuming")
    parser.add_argument("--keep_flac", type=parse_bool, default=False, metavar="True|False",
                        help="keep each subset's extracted FLAC tree after its WAVs are checked "
                             "(default: False, deleted)")
    return parser


def resolve_flags(args: argparse.Namespace) -> Tuple[str, bool]:
    """(root path, data_ready) from our flags and the original's `--data_path` / `--download`;
    PreparationError when they are missing or contradict each other."""
    paths = {value for value in (args.root_path, args.data_path) if value is not None}
    if not paths:
        raise PreparationError("--root_path (or the original's --data_path) is required")
    if len(paths) > 1:
        raise PreparationError(f"--root_path {args.root_path} and --data_path {args.data_path} "
                               f"name different folders; give one")
    data_ready = args.data_ready
    if args.download is not None:
        if data_ready is not None and data_ready == args.download:
            raise PreparationError(f"--download {args.download} contradicts --data_ready {data_ready}")
        data_ready = not args.download
    return paths.pop(), bool(data_ready)


@report_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (0 also when some utterances had problems;
    2 with one `error:` line for a user's mistake)."""
    args = build_parser().parse_args(argv)
    root_path, data_ready = resolve_flags(args)
    prepare_librispeech(root_path, splits=args.splits, data_ready=data_ready,
                        workers=args.workers, base_url=args.base_url, retries=args.retries,
                        keep_flac=args.keep_flac)
    return 0


if __name__ == "__main__":
    sys.exit(main())
