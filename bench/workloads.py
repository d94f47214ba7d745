"""Benchmark corpora: LibriSpeech length mixes made of real speech.

The length listings of `data/reference/librispeech_lengths` give every utterance's duration
(train-clean-5 for training, test-clean for evaluation). A manifest lists one audio file per
listed utterance; the files start empty and `materialize` writes real speech into the ones a
benchmark actually reads: the 14 LibriSpeech recordings of `data/librispeech_mini` joined into one
signal, cut (or looped) to exactly the listed duration, as 16 kHz 16-bit WAV like the preparer's.
Manifests and batching then go through the project's own `load_split` and samplers.
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import soundfile

from mindaudio.data.audio import load_audio
from mindaudio.data.manifest import Utterance

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"
LENGTHS_DIR = DATA_DIR / "reference" / "librispeech_lengths"
LIBRISPEECH_MINI = DATA_DIR / "librispeech_mini" / "LibriSpeech"
SAMPLE_RATE = 16000


def read_lengths(split: str) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """(ids, durations seconds float64, transcript characters int64) of a listed split."""
    path = LENGTHS_DIR / f"{split}.tsv"
    ids, durations, chars = [], [], []
    with open(path, encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            uid, duration, count = line.rstrip("\n").split("\t")
            ids.append(uid)
            durations.append(float(duration))
            chars.append(int(count))
    return ids, np.asarray(durations), np.asarray(chars, dtype=np.int64)


def transcripts_of_length(chars: Sequence[int]) -> List[str]:
    """Real English text (train-clean-5's transcripts, looped) cut to each requested length."""
    text = " ".join((LENGTHS_DIR / "train-clean-5.transcripts.txt").read_text().split())
    out, position = [], 0
    for count in chars:
        if position + count > len(text):
            position = 0
        piece = text[position:position + count].strip() or "A"
        out.append(piece)
        position += count
    return out


def speech_signal() -> np.ndarray:
    """All recordings of the bundled LibriSpeech sample joined: float32 (samples,) at 16 kHz."""
    paths = sorted(LIBRISPEECH_MINI.rglob("*.flac"))
    if not paths:
        raise FileNotFoundError(f"no LibriSpeech recordings under {LIBRISPEECH_MINI}")
    return np.concatenate([load_audio(path, SAMPLE_RATE) for path in paths])


def speech_clip(signal: np.ndarray, duration: float, offset_seed: int) -> np.ndarray:
    """round(duration * 16000) samples of `signal`, from a seeded offset, looping at its end."""
    samples = max(1, int(round(duration * SAMPLE_RATE)))
    start = int(np.random.default_rng(offset_seed).integers(0, signal.size))
    reps = -(-(start + samples) // signal.size)
    return np.tile(signal, reps)[start:start + samples]


def write_length_mix(directory: Path, split: str, max_utterances: int = 0) -> Path:
    """A JSON-lines manifest of the listed split, one placeholder audio file per utterance.

    Transcripts: train-clean-5's own where listed, else real text of the listed length.
    max_utterances > 0 keeps an evenly spaced subset (quick runs).
    """
    ids, durations, chars = read_lengths(split)
    keep = np.arange(len(ids))
    if max_utterances and max_utterances < len(ids):
        keep = np.linspace(0, len(ids) - 1, max_utterances).round().astype(int)
    if split == "train-clean-5":
        lines = (LENGTHS_DIR / "train-clean-5.transcripts.txt").read_text().splitlines()
        texts = [lines[i] for i in range(len(ids))]
    else:
        texts = transcripts_of_length(chars)
    audio_dir = directory / split
    audio_dir.mkdir(parents=True, exist_ok=True)
    manifest = directory / f"{split}.jsonl"
    with open(manifest, "w", encoding="utf-8") as handle:
        for i in keep:
            path = audio_dir / f"{ids[i]}.wav"
            path.touch()
            handle.write(json.dumps({"audio_filepath": str(path), "text": texts[i],
                                     "duration": float(durations[i])}) + "\n")
    return manifest


def materialize(utterances: Sequence[Utterance], signal: np.ndarray) -> float:
    """Write real speech of each utterance's exact duration into its (placeholder) file.

    Returns the seconds of audio written. Files already holding audio are left alone.
    """
    written = 0.0
    for utterance in utterances:
        if os.path.getsize(utterance.audio_path) > 0:
            continue
        seed = zlib.crc32(utterance.id.encode())
        clip = speech_clip(signal, utterance.duration, seed)
        soundfile.write(utterance.audio_path, clip, SAMPLE_RATE, subtype="PCM_16")
        written += utterance.duration
    return written
