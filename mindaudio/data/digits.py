"""The bundled spoken-digits recipe's data: manifests of the shipped FSDD corpus, whole speakers held out.

Run from the repo root:

    python mindaudio/data/digits.py --root_path DIR [--corpus data/digits] [--test_speakers theo]
    python mindaudio/data/digits.py --build_corpus_from FSDD  # maintainers: FSDD WAVs -> data/digits FLACs

(WER/CER per speaker of an eval.py report: `python scripts/digits_report.py REPORT.json`.)

The corpus (`data/digits/`, Free Spoken Digit Dataset, CC BY-SA 4.0) holds 2,500 recordings of one
spoken digit each: 5 speakers x 10 digits x 50 takes, 8 kHz mono 16-bit FLAC, listed in `labels.tsv`.
Preparing writes, for each split `train`, `val`, `test`:

    DIR/<split>/txt/<id>.txt                      the transcript (ZERO ... NINE), one line
    DIR/<split>/digits_<split>_manifest.json      the original's {"root_path", "samples"} form

The manifests point at the shipped FLACs (absolute paths); `load_audio` resamples them from 8 kHz
to the features' rate when batches are built, so nothing is converted here. Splits:

- test: every take of the held-out speakers (default theo; scripts/digits_loso.py holds out each
  speaker in turn): voices the model never hears in training, which is what a recogniser meets
  in use;
- val: takes 0-4 of the other speakers (the dataset's own test takes);
- train: takes 5-49 of the other speakers.

With five speakers, none can be spared for validation without leaving training too few voices, so
validation (checkpoint choice) uses unseen takes of the training speakers; the test speakers then
influence no training decision at all. Running again rewrites nothing that is already right
and removes the transcripts another choice of test speakers left in a split.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    import _script_setup  # noqa: F401  (puts the repo root on sys.path; see that module)

import argparse
import csv
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import soundfile as sf
from tqdm import tqdm

from mindaudio.errors import UserError, report_user_errors
from mindaudio.data.manifest import SplitSummary, write_manifest, write_text_if_changed

__all__ = ["DEFAULT_CORPUS", "DEFAULT_TEST_SPEAKERS", "SPLITS", "SOURCE_SAMPLE_RATE", "CorpusError",
           "DigitRecording", "DigitsSummary", "read_labels", "speaker_of", "split_of",
           "split_recordings", "prepare_digits", "build_corpus", "main"]

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "data" / "digits"
DEFAULT_TEST_SPEAKERS = ("theo",)
SPLITS = ("train", "val", "test")
SOURCE_SAMPLE_RATE = 8000
LABEL_COLUMNS = ("id", "speaker", "digit", "transcript", "index", "official_split", "frames_8k", "duration_s")
# Recording ids are <digit>_<speaker>_<take>, e.g. 7_theo_12.
_ID_PATTERN = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)$")


class CorpusError(UserError, RuntimeError):
    """The shipped corpus is incomplete or inconsistent; the message names the file at fault."""


@dataclass(frozen=True)
class DigitRecording:
    id: str            # <digit>_<speaker>_<take>
    speaker: str
    transcript: str    # ZERO ... NINE
    take: int          # 0-49
    official_split: str  # the dataset's own: 'test' for takes 0-4, else 'train'
    frames: int        # samples at 8 kHz

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / SOURCE_SAMPLE_RATE


@dataclass
class DigitsSummary:
    root_path: str
    test_speakers: List[str]
    splits: List[SplitSummary] = field(default_factory=list)
    wall_seconds: float = 0.0

    def report(self) -> str:
        lines = [f"spoken digits prepared in {self.root_path} ({self.wall_seconds:.1f} s); "
                 f"held-out test speakers: {', '.join(self.test_speakers)}"]
        for split in self.splits:
            lines.append(f"  {split.split}: {split.utterances} utterances, {split.audio_seconds / 60:.1f} min, "
                         f"speakers {', '.join(split.speakers)} ({split.texts_written} transcripts written now)"
                         f" -> {split.manifest}")
        return "\n".join(lines)


def speaker_of(utterance_id: str) -> str:
    """The speaker of a recording id: '7_theo_12' -> 'theo'."""
    match = _ID_PATTERN.match(utterance_id)
    if match is None:
        raise ValueError(f"{utterance_id!r} is not a spoken-digit id (<digit>_<speaker>_<take>)")
    return match.group(2)


def read_labels(corpus_dir) -> List[DigitRecording]:
    """Every recording listed in `<corpus_dir>/labels.tsv`, in file order."""
    path = Path(corpus_dir) / "labels.tsv"
    if not path.is_file():
        raise CorpusError(f"{path} not found: the spoken-digits corpus is missing")
    recordings = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [column for column in LABEL_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise CorpusError(f"{path}: missing column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                recording = DigitRecording(id=row["id"], speaker=row["speaker"], transcript=row["transcript"],
                                           take=int(row["index"]), official_split=row["official_split"],
                                           frames=int(row["frames_8k"]))
                if speaker_of(recording.id) != recording.speaker:
                    raise ValueError(f"id {recording.id} names another speaker than {recording.speaker}")
            except (ValueError, TypeError) as err:
                raise CorpusError(f"{path}, line {line}: {err}") from None
            recordings.append(recording)
    ids = [recording.id for recording in recordings]
    if len(set(ids)) != len(ids):
        raise CorpusError(f"{path}: duplicate ids")
    if not recordings:
        raise CorpusError(f"{path} lists no recordings")
    return recordings


def split_of(recording: DigitRecording, test_speakers: Sequence[str]) -> str:
    """'test' for a held-out speaker; otherwise 'val' for the dataset's test takes, else 'train'."""
    if recording.speaker in test_speakers:
        return "test"
    return "val" if recording.official_split == "test" else "train"


def split_recordings(recordings: Sequence[DigitRecording], test_speakers: Sequence[str]
                     ) -> Dict[str, List[DigitRecording]]:
    """Recordings of each split, sorted by id. Every test speaker must exist and one must remain
    for training."""
    speakers = sorted({recording.speaker for recording in recordings})
    unknown = sorted(set(test_speakers) - set(speakers))
    if unknown:
        raise CorpusError(f"unknown test speaker(s) {', '.join(unknown)}; the corpus has {', '.join(speakers)}")
    if not set(speakers) - set(test_speakers):
        raise CorpusError("every speaker is held out for testing: none is left to train on")
    splits: Dict[str, List[DigitRecording]] = {split: [] for split in SPLITS}
    for recording in sorted(recordings, key=lambda r: r.id):
        splits[split_of(recording, test_speakers)].append(recording)
    return splits


def _check_audio(corpus_dir: Path, recordings: Sequence[DigitRecording]) -> None:
    """Every listed FLAC exists with the rate and length labels.tsv gives (headers only: fast)."""
    for recording in recordings:
        path = corpus_dir / "recordings" / f"{recording.id}.flac"
        try:
            info = sf.info(str(path))
        except (RuntimeError, OSError) as err:
            raise CorpusError(f"{path}: cannot read ({err})") from None
        if info.samplerate != SOURCE_SAMPLE_RATE or info.frames != recording.frames or info.channels != 1:
            raise CorpusError(f"{path}: {info.channels} channel(s), {info.frames} frames at {info.samplerate} Hz; "
                              f"labels.tsv says 1 channel, {recording.frames} frames at {SOURCE_SAMPLE_RATE} Hz")


def prepare_digits(root_path, corpus_dir=DEFAULT_CORPUS, test_speakers: Sequence[str] = DEFAULT_TEST_SPEAKERS,
                   verbose: bool = True) -> DigitsSummary:
    """Write transcripts and the three manifests under `root_path`; returns (and prints) a summary."""
    started = time.monotonic()
    corpus = Path(corpus_dir).resolve()
    root = Path(root_path).resolve()
    recordings = read_labels(corpus)
    splits = split_recordings(recordings, list(test_speakers))
    _check_audio(corpus, recordings)
    summary = DigitsSummary(root_path=str(root), test_speakers=sorted(test_speakers))
    for split, members in splits.items():
        split_dir = root / split
        (split_dir / "txt").mkdir(parents=True, exist_ok=True)
        written = 0
        samples = []
        for recording in members:
            written += write_text_if_changed(split_dir / "txt" / f"{recording.id}.txt", recording.transcript + "\n")
            samples.append({"wav_path": str(corpus / "recordings" / f"{recording.id}.flac"),
                            "txt_path": f"txt/{recording.id}.txt", "duration": recording.duration})
        # Another choice of test speakers left other speakers' transcripts here: they would join
        # this split's text (the recipe builds its LM from train/txt).
        current = {f"{recording.id}.txt" for recording in members}
        for stale in (split_dir / "txt").glob("*.txt"):
            if stale.name not in current and _ID_PATTERN.match(stale.stem):
                stale.unlink()
        manifest = split_dir / f"digits_{split}_manifest.json"
        write_manifest(manifest, split_dir, samples)
        summary.splits.append(SplitSummary(
            split=split, manifest=str(manifest), utterances=len(members),
            speakers=sorted({recording.speaker for recording in members}),
            audio_seconds=sum(recording.duration for recording in members), texts_written=written))
    summary.wall_seconds = time.monotonic() - started
    if verbose:
        print(summary.report())
    return summary


def build_corpus(fsdd_dir, corpus_dir=DEFAULT_CORPUS, progress: bool = True) -> int:
    """Convert FSDD's `recordings/*.wav` losslessly to 16-bit FLAC in `<corpus_dir>/recordings/` and copy
    `labels.tsv`. FLACs already there with the right length are kept. Returns how many were written."""
    source, corpus = Path(fsdd_dir), Path(corpus_dir)
    recordings = read_labels(source)
    (corpus / "recordings").mkdir(parents=True, exist_ok=True)
    written = 0
    for recording in tqdm(recordings, desc="WAV -> FLAC", unit="file", disable=not progress):
        target = corpus / "recordings" / f"{recording.id}.flac"
        if target.is_file() and sf.info(str(target)).frames == recording.frames:
            continue
        wav = source / "recordings" / f"{recording.id}.wav"
        samples, rate = sf.read(str(wav), dtype="int16")
        if rate != SOURCE_SAMPLE_RATE or samples.ndim != 1 or samples.shape[0] != recording.frames:
            raise CorpusError(f"{wav}: expected {recording.frames} mono frames at {SOURCE_SAMPLE_RATE} Hz")
        partial = target.with_name(f".{target.name}.tmp")
        sf.write(str(partial), samples, rate, format="FLAC", subtype="PCM_16")
        os.replace(partial, target)
        written += 1
    shutil.copyfile(source / "labels.tsv", corpus / "labels.tsv")
    return written


# ---------------------------------------------------------------------------------------------
# Command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Spoken-digits recipe data: write manifests with whole speakers held out for testing.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--root_path", help="folder for the transcripts and manifests")
    action.add_argument("--build_corpus_from", metavar="FSDD_DIR",
                        help="(maintainers) convert FSDD's recordings/*.wav and labels.tsv into --corpus")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS),
                        help="the shipped corpus: labels.tsv and recordings/*.flac (default: %(default)s)")
    parser.add_argument("--test_speakers", nargs="+", default=list(DEFAULT_TEST_SPEAKERS), metavar="SPEAKER",
                        help="speakers held out for testing (default: %(default)s)")
    return parser


@report_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.root_path:
        prepare_digits(args.root_path, args.corpus, args.test_speakers)
    else:
        written = build_corpus(args.build_corpus_from, args.corpus)
        print(f"{written} FLAC file(s) written to {Path(args.corpus) / 'recordings'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
