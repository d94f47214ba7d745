"""CTC prefix beam search with an optional KenLM n-gram language model and hotwords (pyctcdecode).

pyctcdecode (pure Python) scores each prefix as
    log p_ctc(prefix) + alpha * ln p_lm(words) + beta * len(words) + hotword bonuses,
so `alpha` weighs the LM against the acoustic model and `beta` rewards each word (an LM alone
favours short transcripts). The LM is an ARPA file (e.g. from scripts/build_ngram_lm.py) or a
KenLM binary. pyctcdecode and kenlm are imported only here, only when the beam decoder is built,
so greedy decoding works without them.
"""
from __future__ import annotations

import importlib
import os
from typing import Iterable, List, Optional, Sequence

import numpy as np

from mindaudio.config import ConfigError
from mindaudio.decoding.hypothesis import Hypothesis, WordTiming, log_softmax
from mindaudio.decoding.ngram import read_arpa_unigrams

# pyctcdecode's defaults for the two pruning thresholds (natural-log units): beams more than
# 10 below the best are dropped; characters below log p = -5 are not tried unless they are a
# frame's best.
BEAM_PRUNE_LOGP = -10.0
TOKEN_MIN_LOGP = -5.0
# What KenLM writes at the start of its binary files.
_KENLM_BINARY_MAGIC = b"mmap lm "


def _import(module: str, key: str, source: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f"{source}: {key}: {purpose} needs the Python package '{module}', which is not installed "
            f"({err}); install it with `pip install pyctcdecode kenlm` (kenlm compiles from source and "
            f"needs a C++ compiler), or use EvalConfig.decoder_type 'greedy'") from None


def is_kenlm_binary(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(_KENLM_BINARY_MAGIC)) == _KENLM_BINARY_MAGIC


def read_word_list(path: str) -> List[str]:
    """Whitespace-separated words of a text file (a binary LM's vocabulary)."""
    with open(path, encoding="utf-8") as handle:
        return handle.read().split()


def lm_unigrams(lm_path: str, unigrams_path: str = "") -> Optional[List[str]]:
    """The LM's words, which the decoder needs to tell partial words from unknown ones: read from
    an ARPA file itself, or for a binary one from `unigrams_path` (None when not given)."""
    if unigrams_path:
        return read_word_list(unigrams_path)
    if is_kenlm_binary(lm_path):
        return None
    return read_arpa_unigrams(lm_path)


class BeamSearchDecoder:
    """Beam search over CTC outputs, optionally with a KenLM language model and hotwords.

    Args:
        labels: the model's output alphabet; `labels[blank_id]` is the CTC blank and " " separates words.
        beam_width: prefixes kept after each frame; 1 without an LM or hotwords is greedy decoding.
        lm_path: ARPA or KenLM binary n-gram file, words spelt in `labels` (e.g. upper case); None = no LM.
        alpha, beta: LM weight and word bonus (used only with an LM).
        hotwords: words (or phrases) to favour, in the labels' spelling; they need not be in the LM.
        hotword_weight: their bonus per character, natural-log units.
        unigrams: the LM's vocabulary; by default read from an ARPA LM (a binary LM has none).
        config_source: the yaml the settings came from, for error messages.
    """

    def __init__(self, labels: Sequence[str], blank_id: int, beam_width: int = 64,
                 lm_path: Optional[str] = None, alpha: float = 0.5, beta: float = 1.5,
                 hotwords: Iterable[str] = (), hotword_weight: float = 10.0,
                 unigrams: Optional[Sequence[str]] = None, config_source: str = "<arguments>"):
        if beam_width < 1:
            raise ConfigError(f"{config_source}: EvalConfig.beam_width: must be >= 1, got {beam_width}")
        pyctcdecode = _import("pyctcdecode", "EvalConfig.decoder_type", config_source,
                              "decoder_type 'beam'")
        self.labels = list(labels)
        self.blank_id = int(blank_id)
        self.beam_width = int(beam_width)
        self.lm_path = lm_path or None
        self.hotwords = [word.upper() for word in hotwords if word.strip()]
        self.hotword_weight = float(hotword_weight)
        unknown = sorted({char for word in self.hotwords for char in word
                          if char not in self.labels or char == self.labels[self.blank_id]})
        if unknown:
            raise ConfigError(f"{config_source}: EvalConfig.hotwords: characters {unknown} are not "
                              f"labels the model can emit")
        if self.lm_path is not None:
            _import("kenlm", "EvalConfig.lm_path", config_source, "a language model")
            if not os.path.isfile(self.lm_path):
                raise ConfigError(f"{config_source}: EvalConfig.lm_path: file not found: {self.lm_path}")
            if unigrams is None:
                unigrams = lm_unigrams(self.lm_path)
        # pyctcdecode's alphabet: the blank is the empty string.
        alphabet = ["" if i == self.blank_id else label for i, label in enumerate(self.labels)]
        try:
            self._decoder = pyctcdecode.build_ctcdecoder(
                alphabet, kenlm_model_path=self.lm_path,
                unigrams=list(unigrams) if unigrams is not None else None, alpha=alpha, beta=beta)
        except (OSError, RuntimeError, ValueError) as err:
            raise ConfigError(f"{config_source}: EvalConfig.lm_path: cannot load {self.lm_path}: "
                              f"{err}") from None
        self.alpha, self.beta = float(alpha), float(beta)

    @classmethod
    def from_config(cls, config, blank_id: int) -> "BeamSearchDecoder":
        """From `config.EvalConfig`: beam_width, lm_path, lm_unigrams, alpha, beta, hotwords, hotword_weight."""
        settings = config.EvalConfig
        unigrams = None
        if settings.lm_path and settings.lm_unigrams:
            if not os.path.isfile(settings.lm_unigrams):
                raise ConfigError(f"{config.source}: EvalConfig.lm_unigrams: file not found: "
                                  f"{settings.lm_unigrams}")
            unigrams = read_word_list(settings.lm_unigrams)
        return cls(config.labels, blank_id, beam_width=settings.beam_width,
                   lm_path=settings.lm_path or None, alpha=settings.alpha, beta=settings.beta,
                   hotwords=settings.hotwords, hotword_weight=settings.hotword_weight,
                   unigrams=unigrams, config_source=config.source)

    @property
    def has_lm(self) -> bool:
        return self.lm_path is not None

    def set_lm_weights(self, alpha: float, beta: float) -> None:
        """Change alpha and beta without reloading the LM (for tuning)."""
        self._decoder.reset_params(alpha=alpha, beta=beta)
        self.alpha, self.beta = float(alpha), float(beta)

    def decode(self, log_probs: np.ndarray) -> Hypothesis:
        """log_probs: (frames, classes) float log-probabilities (or raw logits) of one utterance."""
        log_probs = log_softmax(np.asarray(log_probs, dtype=np.float32))
        if log_probs.shape[0] == 0:
            return Hypothesis("", ())
        beams = self._decoder.decode_beams(
            log_probs, beam_width=self.beam_width, beam_prune_logp=BEAM_PRUNE_LOGP,
            token_min_logp=TOKEN_MIN_LOGP, prune_history=True,
            hotwords=self.hotwords or None, hotword_weight=self.hotword_weight)
        text, word_frames = beams[0][0], beams[0][2]
        words = tuple(WordTiming(word, int(start), int(end)) for word, (start, end) in word_frames)
        return Hypothesis(text, words)

    def decode_batch(self, logits: np.ndarray, output_lengths: Sequence[int]) -> List[str]:
        """logits: (T', B, C) time-major network outputs; output_lengths: (B,) valid frames."""
        logits = np.asarray(logits)
        return [self.decode(logits[: int(length), b]).text for b, length in enumerate(output_lengths)]

    def describe(self) -> str:
        text = f"beam search (width {self.beam_width}"
        if self.has_lm:
            text += f", LM {self.lm_path}, alpha {self.alpha:g}, beta {self.beta:g}"
        if self.hotwords:
            text += f", hotwords {' '.join(self.hotwords)} (weight {self.hotword_weight:g})"
        return text + ")"

    def close(self) -> None:
        """Free the LM (pyctcdecode keeps it in a class-level table until told otherwise)."""
        self._decoder.cleanup()
