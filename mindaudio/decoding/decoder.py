"""The decoders behind one interface, chosen by `EvalConfig.decoder_type`.

Every decoder turns the log-probabilities of one utterance into a `Hypothesis`: its text (words
separated by single spaces) and where each word sits in the CTC output frames. `GreedyDecoder`
needs nothing beyond numpy; `BeamSearchDecoder` (mindaudio/decoding/beam.py) needs pyctcdecode,
and kenlm when a language model is given, and is imported only when asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from mindaudio.decoding.greedy import greedy_ids


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
    """Best-path decoding: the arg-max label of every frame, repeats collapsed, blanks dropped."""

    name = "greedy"

    def __init__(self, labels: Sequence[str], blank_id: int):
        self.labels = list(labels)
        self.blank_id = int(blank_id)

    def decode(self, log_probs: np.ndarray) -> Hypothesis:
        """log_probs: (frames, classes) of one utterance (any monotonic transform of them works)."""
        best = np.asarray(log_probs).argmax(axis=-1)
        text = "".join(self.labels[i] for i in greedy_ids(best, self.blank_id))
        return Hypothesis(normalise_spaces(text), greedy_word_frames(best, self.labels, self.blank_id))

    def decode_batch(self, logits: np.ndarray, output_lengths: Sequence[int]) -> List[str]:
        """logits: (T', B, C) time-major network outputs; output_lengths: (B,) valid frames."""
        best = np.asarray(logits).argmax(axis=-1)
        texts = []
        for b, length in enumerate(output_lengths):
            ids = greedy_ids(best[: int(length), b], self.blank_id)
            texts.append(normalise_spaces("".join(self.labels[i] for i in ids)))
        return texts

    def describe(self) -> str:
        return "greedy"


def build_decoder(config, progress: bool = False):
    """The decoder `config.EvalConfig` asks for: `GreedyDecoder` or `BeamSearchDecoder`.

    Raises `ConfigError` naming the key when the beam decoder's packages or files are missing.
    """
    from mindaudio.data.text import CharTokenizer

    tokenizer = CharTokenizer(config.labels)
    settings = config.EvalConfig
    if settings.decoder_type == "greedy":
        return GreedyDecoder(config.labels, tokenizer.blank_id)
    from mindaudio.decoding.beam import BeamSearchDecoder

    return BeamSearchDecoder.from_config(config, tokenizer.blank_id)
