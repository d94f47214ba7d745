"""Word and character error rates over a corpus, in percent."""
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
