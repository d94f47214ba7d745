"""Manifests: which audio files and transcripts make up a data set. Read, written and checked here.

Two forms are read:
- the original's JSON object `{"root_path": R, "samples": [{"wav_path", "txt_path", "duration"}]}`,
  paths relative to R (R itself relative to the working directory, as the original opened them),
  the transcript being the first line of the text file;
- NeMo-style JSON lines, one `{"audio_filepath", "text", "duration"}` per line, relative audio
  paths resolved against the manifest's directory.
`duration` may be absent in either; it is then read from the audio header. Every mistake in a
manifest (malformed JSON, a missing or non-string field, a non-finite or negative duration, a
transcript that is not UTF-8, a missing file) is a ManifestError naming the manifest and the line.

Both preparers (`librispeech.py`, `digits.py`) write the original's form with `write_manifest`, one
sample a line, atomically and only when the content changes.

Checking a manifest's audio up front (every file decoded; NaN, truncated, empty or mislabelled
lengths reported), exit status 1 when anything is wrong:

    python -m mindaudio.data.manifest --check MANIFEST [MANIFEST ...]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Mapping, NamedTuple, Optional, Sequence, Union

from mindaudio.config import UserError
from mindaudio.data.audio import AudioError, audio_duration, read_audio

PathLike = Union[str, os.PathLike]

# Seconds by which a file's decoded length may differ from the manifest's `duration` (rounding in
# the manifest, a resampler's rounding); more means the manifest or the file is wrong.
DURATION_TOLERANCE = 0.05


class ManifestError(UserError, ValueError):
    """A manifest that cannot be used; the message names the manifest, the line and what is wrong."""


class Utterance(NamedTuple):
    """One recording and its transcript."""
    id: str  # audio file name without extension, e.g. "1089-134686-0000"
    audio_path: str  # absolute
    transcript: str  # as written in the source, not yet normalised (see `text.CharTokenizer`)
    duration: Optional[float] = None  # seconds; None until known (an extracted tree read in place)
    source: str = ""  # where it was listed, e.g. "manifest m.json, line 3", for messages


@dataclass(frozen=True)
class Problem:
    """One utterance or file that could not be used, and why."""
    kind: str
    path: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.path}: {self.detail}"


@dataclass
class SplitSummary:
    """What preparing one split wrote: its manifest and what went into it."""
    split: str
    manifest: str
    utterances: int = 0  # in the manifest
    audio_seconds: float = 0.0
    converted: int = 0  # audio files converted by this run (the rest were already there)
    texts_written: int = 0  # transcript files (re)written by this run
    speakers: List[str] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)  # left out of the manifest


# ---------------------------------------------------------------------------------------------
# Reading

def read_manifest(path) -> List[Utterance]:
    """All utterances of a manifest in file order."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ManifestError(f"manifest {path} is a directory, not a manifest file")
    try:
        with open(path, "r", encoding="utf-8") as handle:
            content = handle.read()
    except UnicodeDecodeError as err:
        raise ManifestError(f"manifest {path} is not UTF-8 text (byte {err.start}: "
                            f"{err.reason})") from None
    except OSError as err:
        raise ManifestError(f"cannot read manifest {path}: {err.strerror or err}") from err
    try:
        document = json.loads(content)
    except json.JSONDecodeError:
        document = None  # maybe JSON lines: parsed below, with line numbers in errors
    if isinstance(document, dict) and "samples" in document:
        return _read_original_form(path, document)
    return _read_json_lines(path, content)


def _read_original_form(manifest: str, document: Mapping) -> List[Utterance]:
    root = document.get("root_path", "")
    samples = document["samples"]
    if not isinstance(root, str) or not isinstance(samples, list):
        raise ManifestError(f"manifest {manifest}: 'root_path' must be a string and "
                            f"'samples' a list")
    utterances = []
    for index, sample in enumerate(samples):
        where = f"manifest {manifest}, samples[{index}]"
        if not isinstance(sample, dict) or "wav_path" not in sample or "txt_path" not in sample:
            raise ManifestError(f"{where}: needs 'wav_path' and 'txt_path'")
        audio_path = _existing_file(root, sample["wav_path"], where, "wav_path", "audio")
        text_path = _existing_file(root, sample["txt_path"], where, "txt_path", "transcript")
        try:
            with open(text_path, "r", encoding="utf-8") as handle:
                transcript = handle.readline().strip()
        except UnicodeDecodeError as err:
            raise ManifestError(f"{where}: transcript file {text_path} is not UTF-8 text "
                                f"(byte {err.start}: {err.reason})") from None
        except OSError as err:
            raise ManifestError(f"{where}: cannot read transcript file {text_path}: "
                                f"{err.strerror or err}") from None
        utterances.append(_utterance(audio_path, transcript, sample.get("duration"), where))
    if not utterances:
        raise ManifestError(f"manifest {manifest} lists no utterances")
    return utterances


def _read_json_lines(manifest: str, content: str) -> List[Utterance]:
    base = os.path.dirname(os.path.abspath(manifest))
    utterances = []
    for line_number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"manifest {manifest}, line {line_number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{where}: malformed JSON ({err.msg})") from err
        if not isinstance(entry, dict) or "audio_filepath" not in entry or "text" not in entry:
            raise ManifestError(f"{where}: expected the original's {{'root_path', 'samples'}} "
                                f"object or JSON lines with 'audio_filepath' and 'text'")
        text = entry["text"]
        if not isinstance(text, str):
            raise ManifestError(f"{where}: 'text' must be a string, got {json.dumps(text)}")
        audio_path = _existing_file(base, entry["audio_filepath"], where, "audio_filepath", "audio")
        utterances.append(_utterance(audio_path, text.strip(), entry.get("duration"), where))
    if not utterances:
        raise ManifestError(f"manifest {manifest} lists no utterances")
    return utterances


def _existing_file(base: str, value, where: str, key: str, kind: str) -> str:
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: '{key}' must be a non-empty path string, "
                            f"got {json.dumps(value)}")
    path = os.path.abspath(os.path.join(base, value))
    if os.path.isdir(path):
        raise ManifestError(f"{where}: {kind} path {path} is a directory, not a file")
    if not os.path.isfile(path):
        raise ManifestError(f"{where}: {kind} file {path} does not exist")
    return path


def _utterance(audio_path: str, transcript: str, duration, where: str) -> Utterance:
    if duration is None:
        try:
            duration = audio_duration(audio_path)
        except AudioError as err:
            raise ManifestError(f"{where}: {err}") from err
    elif (not isinstance(duration, (int, float)) or isinstance(duration, bool)
          or not math.isfinite(duration) or duration < 0):
        raise ManifestError(f"{where}: 'duration' must be a finite non-negative number of "
                            f"seconds, got {duration!r}")
    utterance_id = os.path.splitext(os.path.basename(audio_path))[0]
    return Utterance(id=utterance_id, audio_path=audio_path, transcript=transcript,
                     duration=float(duration), source=where)


# ---------------------------------------------------------------------------------------------
# Writing

def write_text_atomic(path: PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` so that readers see the old file or the whole new one, never a part.

    The bytes go to `.<name>.tmp` beside it, renamed over `path` when complete; a killed writer
    leaves only that hidden file, which the preparers delete on their next run. There is no fsync
    (it would only add power-loss safety) because this is called once per utterance on hundreds
    of thousands of files.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_if_changed(path: PathLike, text: str) -> bool:
    """`write_text_atomic` unless the file already holds exactly `text` (so reruns touch nothing).
    Returns whether it wrote."""
    try:
        if Path(path).read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    write_text_atomic(path, text)
    return True


def manifest_text(root_path: PathLike, samples: Iterable[Mapping]) -> str:
    """The original's manifest form with one sample a line: one JSON document, diffable and greppable.

    samples: mappings with 'wav_path' and 'txt_path' (relative to `root_path` or absolute) and
    optionally 'duration' in seconds; `root_path` is stored absolute so the manifest does not
    depend on the directory it is later read from.
    """
    rows = []
    for index, sample in enumerate(samples):
        if "wav_path" not in sample or "txt_path" not in sample:
            raise ValueError(f"sample {index} needs 'wav_path' and 'txt_path'")
        entry = {"wav_path": os.fspath(sample["wav_path"]), "txt_path": os.fspath(sample["txt_path"])}
        if sample.get("duration") is not None:
            entry["duration"] = float(sample["duration"])
        rows.append("  " + json.dumps(entry))
    root = json.dumps(os.path.abspath(os.fspath(root_path)))
    body = ",\n".join(rows)
    return f'{{"root_path": {root},\n "samples": [\n' + (body + "\n" if body else "") + " ]}\n"


def write_manifest(path: PathLike, root_path: PathLike, samples: Iterable[Mapping]) -> bool:
    """Write `manifest_text(root_path, samples)` to `path` atomically, creating its folder, unless
    it already holds exactly that. Returns whether it wrote."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_if_changed(path, manifest_text(root_path, samples))


def write_manifest_with_transcripts(directory, utterances: Iterable[Sequence],
                                    name: str = "manifest.json") -> Path:
    """A manifest in the original's form over audio files that stay where they are.

    utterances: `Utterance`s or (id, audio path, transcript) triples. Each transcript is written
    to `directory/txt/<id>.txt`; the manifest `directory/name` stores the audio paths absolute and
    each duration (seconds) from its audio header. Returns the manifest's path.
    """
    directory = Path(directory)
    txt_dir = directory / "txt"
    txt_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for item in utterances:
        utterance_id, audio, transcript = item[0], item[1], item[2]
        write_text_if_changed(txt_dir / f"{utterance_id}.txt", transcript + "\n")
        audio_path = str(Path(audio).resolve())
        samples.append({"wav_path": audio_path, "txt_path": f"txt/{utterance_id}.txt",
                        "duration": audio_duration(audio_path)})
    path = directory / name
    write_manifest(path, directory.resolve(), samples)
    return path


# ---------------------------------------------------------------------------------------------
# Checking the audio up front

def length_problem(samples: int, sample_rate: int, duration: float,
                   tolerance: float = DURATION_TOLERANCE) -> Optional[str]:
    """Why `samples` decoded at `sample_rate` Hz disagree with a manifest `duration` (seconds)
    by more than `tolerance` seconds, or None when they agree."""
    real = samples / sample_rate
    if abs(real - duration) <= tolerance:
        return None
    return (f"decoded length {real:.3f} s differs from the manifest's duration {duration:.3f} s "
            f"(tolerance {tolerance} s)")


def check_utterance(utterance: Utterance, tolerance: float = DURATION_TOLERANCE) -> Optional[Problem]:
    """Decode one utterance's audio; the Problem that would spoil its features, or None."""
    try:
        data, rate = read_audio(utterance.audio_path)
    except AudioError as err:
        return Problem("unusable audio", utterance.audio_path, err.reason)
    if utterance.duration is not None:
        mismatch = length_problem(data.shape[0], rate, utterance.duration, tolerance)
        if mismatch is not None:
            return Problem("wrong duration", utterance.audio_path, mismatch)
    return None


def check_manifest(path, tolerance: float = DURATION_TOLERANCE, progress: bool = False
                   ) -> List[Problem]:
    """Every problem the audio of a manifest has, reading every file in full: files that cannot be
    decoded, are truncated or empty, hold NaN or infinite samples, or whose decoded length differs
    from the manifest's duration by more than `tolerance` seconds. Raises ManifestError when the
    manifest itself cannot be read."""
    from tqdm import tqdm  # only the check shows progress

    utterances = read_manifest(path)
    problems = []
    for utterance in tqdm(utterances, desc=f"check {os.path.basename(os.fspath(path))}",
                          unit=" file", disable=not progress, leave=False):
        problem = check_utterance(utterance, tolerance)
        if problem is not None:
            problems.append(problem)
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`--check`: print each manifest's audio problems; exit 1 if any (or a manifest is unreadable)."""
    parser = argparse.ArgumentParser(
        prog="python -m mindaudio.data.manifest",
        description="Check that every audio file of a manifest decodes to finite samples of the "
                    "length the manifest says.")
    parser.add_argument("--check", nargs="+", required=True, metavar="MANIFEST")
    parser.add_argument("--tolerance", type=float, default=DURATION_TOLERANCE,
                        help="seconds a file's length may differ from its duration "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    status = 0
    for manifest in args.check:
        try:
            problems = check_manifest(manifest, args.tolerance, progress=sys.stderr.isatty())
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        for problem in problems:
            print(f"{manifest}: {problem}")
        print(f"{manifest}: {len(problems)} problem(s)")
        if problems:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
