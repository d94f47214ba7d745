"""Manifests: which audio files and transcripts make up a data set.

Two forms are read:
- the original's JSON object `{"root_path": R, "samples": [{"wav_path", "txt_path", "duration"}]}`,
  paths relative to R (R itself relative to the working directory, as the original opened them),
  the transcript being the first line of the text file;
- NeMo-style JSON lines, one `{"audio_filepath", "text", "duration"}` per line, relative audio
  paths resolved against the manifest's directory.
`duration` may be absent in either; it is then read from the audio header.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Mapping, Tuple, Union

from mindaudio.data.audio import AudioError, audio_duration


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the manifest and what is wrong."""


@dataclass(frozen=True)
class Utterance:
    id: str  # audio file name without extension, e.g. "1089-134686-0000"
    audio_path: str  # absolute
    transcript: str
    duration: float  # seconds


def read_manifest(path) -> List[Utterance]:
    """All utterances of a manifest in file order."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as handle:
            content = handle.read()
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
        audio_path = _existing_file(os.path.join(root, sample["wav_path"]), where, "audio")
        text_path = _existing_file(os.path.join(root, sample["txt_path"]), where, "transcript")
        with open(text_path, "r", encoding="utf-8") as handle:
            transcript = handle.readline().strip()
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
        audio_path = _existing_file(os.path.join(base, entry["audio_filepath"]), where, "audio")
        utterances.append(_utterance(audio_path, str(entry["text"]).strip(),
                                     entry.get("duration"), where))
    if not utterances:
        raise ManifestError(f"manifest {manifest} lists no utterances")
    return utterances


def _existing_file(path: str, where: str, kind: str) -> str:
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ManifestError(f"{where}: {kind} file {path} does not exist")
    return path


def _utterance(audio_path: str, transcript: str, duration, where: str) -> Utterance:
    if duration is None:
        try:
            duration = audio_duration(audio_path)
        except AudioError as err:
            raise ManifestError(f"{where}: {err}") from err
    elif not isinstance(duration, (int, float)) or isinstance(duration, bool) or duration < 0:
        raise ManifestError(f"{where}: 'duration' must be a non-negative number, "
                            f"got {duration!r}")
    utterance_id = os.path.splitext(os.path.basename(audio_path))[0]
    return Utterance(id=utterance_id, audio_path=audio_path, transcript=transcript,
                     duration=float(duration))


def write_manifest(path, root_path, samples: Iterable[Mapping]) -> None:
    """Write the original's manifest form atomically (temporary file, then os.replace).

    samples: mappings with 'wav_path' and 'txt_path' (relative to `root_path` or absolute) and
    optionally 'duration' in seconds. `root_path` is stored absolute so the manifest does not
    depend on the directory it is later read from.
    """
    path = os.fspath(path)
    entries = []
    for index, sample in enumerate(samples):
        if "wav_path" not in sample or "txt_path" not in sample:
            raise ValueError(f"sample {index} for manifest {path} needs 'wav_path' and "
                             f"'txt_path'")
        entry = {"wav_path": os.fspath(sample["wav_path"]),
                 "txt_path": os.fspath(sample["txt_path"])}
        if sample.get("duration") is not None:
            entry["duration"] = float(sample["duration"])
        entries.append(entry)
    document = {"root_path": os.path.abspath(os.fspath(root_path)), "samples": entries}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=directory,
                                         prefix=os.path.basename(path) + ".", suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            json.dump(document, handle, indent=1)
        # NamedTemporaryFile creates the file private (0600); a manifest is ordinary data.
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        if os.path.exists(handle.name):
            os.unlink(handle.name)
        raise


def write_manifest_with_transcripts(directory, utterances: Iterable[Tuple[str, Union[str, os.PathLike], str]],
                                    name: str = "manifest.json") -> Path:
    """A manifest in the original's form over audio files that stay where they are.

    utterances: (id, audio path, transcript) triples. Each transcript is written to
    `directory/txt/<id>.txt`; the manifest `directory/name` stores the audio paths absolute and
    each duration (seconds) from its audio header. Returns the manifest's path.
    """
    directory = Path(directory)
    txt_dir = directory / "txt"
    txt_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for utterance_id, audio, transcript in utterances:
        (txt_dir / f"{utterance_id}.txt").write_text(transcript + "\n", encoding="utf-8")
        audio_path = str(Path(audio).resolve())
        samples.append({"wav_path": audio_path, "txt_path": f"txt/{utterance_id}.txt",
                        "duration": audio_duration(audio_path)})
    path = directory / name
    write_manifest(path, directory.resolve(), samples)
    return path
