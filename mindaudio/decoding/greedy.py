"""Greedy (best-path) CTC decoding: pure numpy, runs on the host.

`GreedyDecoder` is the one greedy decoder: evaluation, validation, transcription and the
benchmarks all use it, so what is timed is what is scored.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from mindaudio.decoding.hypothesis import Hypothesis, WordTiming, normalise_spaces


def greedy_ids(frame_ids: np.ndarray, blank_id: int) -> List[int]:
    """Collapse repeated frame labels, then drop blanks.

    frame_ids: (frames,) int, the arg-max label of each valid output frame.
    """
    ids = np.asarray(frame_ids)
    if ids.size == 0:
        return []
    keep = np.ones(ids.shape, dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    keep &= ids != blank_id
    return ids[keep].tolist()


def greedy_word_frames(frame_ids: np.ndarray, labels: Sequence[str], blank_id: int,
                       space: str = " ") -> Tuple[WordTiming, ...]:
    """Words of the best path and their frame spans.

    frame_ids: (frames,) int, the arg-max label of each output frame. A character starts at the
    frame where the path first emits it and ends after its last repeated frame; a word spans its
    first character's start to its last character's end.
    """
    ids = np.asarray(frame_ids).tolist()
    words: List[WordTiming] = []
    chars: List[str] = []
    start = end = -1
    previous = blank_id
    for frame, label_id in enumerate(ids):
        if label_id == previous and label_id != blank_id:
            end = frame + 1  # the same character held for another frame
        elif label_id != blank_id:
            char = labels[label_id]
            if char == space:
                if chars:
                    words.append(WordTiming("".join(chars), start, end))
                chars = []
            else:
                if not chars:
                    start = frame
                chars.append(char)
                end = frame + 1
        previous = label_id
    if chars:
        words.append(WordTiming("".join(chars), start, end))
    return tuple(words)


class GreedyDecoder:
    """Best-path decoding: the arg-max label of every frame, repeats collapsed, blanks dropped,
    spaces normalised (single spaces between words, none at the ends)."""

    def __init__(self, labels: Sequence[str], blank_id: int):
        self.labels = list(labels)
        self.blank_id = int(blank_id)

    def _text(self, frame_ids: np.ndarray) -> str:
        return normalise_spaces("".join(self.labels[i] for i in greedy_ids(frame_ids, self.blank_id)))

    def decode(self, log_probs: np.ndarray) -> Hypothesis:
        """log_probs: (frames, classes) of one utterance (any monotonic transform of them works)."""
        best = np.asarray(log_probs).argmax(axis=-1)
        return Hypothesis(self._text(best), greedy_word_frames(best, self.labels, self.blank_id))

    def decode_batch(self, logits: np.ndarray, output_lengths: Sequence[int]) -> List[str]:
        """Transcripts of a batch.

        logits: (T', B, C) float, time-major network outputs (raw logits, log-probs or
            probabilities give the same result); output_lengths: (B,) valid frames of each
            utterance, frames beyond are ignored.
        """
        best = np.asarray(logits).argmax(axis=-1)  # (T', B)
        return [self._text(best[: int(length), b]) for b, length in enumerate(output_lengths)]

    def describe(self) -> str:
        return "greedy"
