"""Word and character error rates: over a corpus in percent, and the edit counts of one utterance."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import jiwer


def _check(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no utterances to score")


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER in percent: total word edits over total reference words."""
    _check(references, hypotheses)
    return 100.0 * jiwer.wer(list(references), list(hypotheses))


def char_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus CER in percent over characters with spaces removed, as the original reports it."""
    _check(references, hypotheses)
    refs = [r.replace(" ", "") for r in references]
    hyps = [h.replace(" ", "") for h in hypotheses]
    return 100.0 * jiwer.cer(refs, hyps)


@dataclass(frozen=True)
class ErrorCounts:
    """Edits and reference lengths of one utterance.

    Words are whitespace-separated; characters are counted with spaces removed, as
    `char_error_rate` scores them.
    """
    word_edits: int = 0
    reference_words: int = 0
    char_edits: int = 0
    reference_chars: int = 0

    @property
    def wer(self) -> float:
        """Word edits per reference word, a fraction (not percent); an empty reference gives 0.0
        without edits and inf with them."""
        return _rate(self.word_edits, self.reference_words)

    @property
    def cer(self) -> float:
        """Character edits per reference character (spaces removed), a fraction."""
        return _rate(self.char_edits, self.reference_chars)


def _rate(edits: int, length: int) -> float:
    if length == 0:
        return 0.0 if edits == 0 else float("inf")
    return edits / length


def error_counts(reference: str, hypothesis: str) -> ErrorCounts:
    """Levenshtein edits (substitutions + deletions + insertions) between one reference and
    its hypothesis, over words and over characters without spaces."""
    words = jiwer.process_words(reference, hypothesis)
    chars = jiwer.process_characters(reference.replace(" ", ""), hypothesis.replace(" ", ""))
    return ErrorCounts(word_edits=words.substitutions + words.deletions + words.insertions,
                       reference_words=len(reference.split()),
                       char_edits=chars.substitutions + chars.deletions + chars.insertions,
                       reference_chars=len(reference.replace(" ", "")))


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> Dict[str, float]:
    return {"wer": word_error_rate(references, hypotheses), "cer": char_error_rate(references, hypotheses)}


def error_rates_by_group(references: Sequence[str], hypotheses: Sequence[str],
                         groups: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Corpus WER/CER (percent) and utterance count of each group (e.g. speaker), sorted by group.

    groups[i] names the group of utterance i; each group is scored as its own corpus.
    """
    _check(references, hypotheses)
    if len(groups) != len(references):
        raise ValueError(f"{len(references)} references but {len(groups)} group names")
    members: Dict[str, List[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    result = {}
    for group in sorted(members):
        refs = [references[i] for i in members[group]]
        hyps = [hypotheses[i] for i in members[group]]
        result[group] = dict(error_rates(refs, hyps), utterances=len(refs))
    return result
