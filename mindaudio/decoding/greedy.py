"""Greedy (best-path) CTC decoding: pure numpy, runs on the host."""
from typing import List, Sequence

import numpy as np


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


def greedy_decode(logits: np.ndarray, output_lengths: Sequence[int], labels: Sequence[str],
                  blank_id: int) -> List[str]:
    """Best-path transcripts of a batch.

    logits: (T', B, C) float, time-major network outputs (any monotonic transform of the class
        probabilities: raw logits, log-probs or probabilities give the same result).
    output_lengths: (B,) valid frames of each utterance; frames beyond are ignored.
    """
    best = np.asarray(logits).argmax(axis=-1)  # (T', B)
    texts = []
    for b, length in enumerate(output_lengths):
        ids = greedy_ids(best[: int(length), b], blank_id)
        texts.append("".join(labels[i] for i in ids))
    return texts
