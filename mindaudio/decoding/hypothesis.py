"""What every decoder returns, and the numeric helpers all of them share.

A decoder turns the log-probabilities of one utterance into a `Hypothesis`: its text (words
separated by single spaces) and where each word sits in the CTC output frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class WordTiming:
    """A word and the CTC output frames it spans: [start_frame, end_frame), end exclusive.

    The frames are those of the characters emitted for the word (a character's run of repeated
    frames included, blanks around it excluded).
    """
    word: str
    start_frame: int
    end_frame: int


@dataclass(frozen=True)
class Hypothesis:
    text: str
    words: Tuple[WordTiming, ...]


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax, float32, same shape as `logits`."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def normalise_spaces(text: str) -> str:
    """Single spaces between words, none at the ends (CTC can emit a space twice in a row)."""
    return " ".join(text.split())
