"""Characters <-> label ids for CTC, with the blank as the last label."""
from __future__ import annotations

from typing import Iterable, List, Sequence, Set, Tuple

BLANK = "_"


class CharTokenizer:
    """Maps transcript characters to ids in `labels` order; `_` is the CTC blank and must be last.

    The blank being last matches the original model's output layout and `ops.CTCLoss`, which
    takes the last class as blank.
    """

    def __init__(self, labels: Sequence[str]):
        labels = list(labels)
        for position, label in enumerate(labels):
            if not isinstance(label, str) or len(label) != 1:
                raise ValueError(f"labels[{position}] must be one character, got {label!r}")
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"labels contain duplicates: {duplicates}")
        if BLANK not in labels:
            raise ValueError(f"labels must contain the blank {BLANK!r} (as the last label)")
        if labels[-1] != BLANK:
            raise ValueError(f"the blank {BLANK!r} must be the last label, found at position "
                             f"{labels.index(BLANK)} of {len(labels)}")
        self.labels: List[str] = labels
        self.blank_id: int = len(labels) - 1
        self._ids = {label: index for index, label in enumerate(labels[:-1])}

    @property
    def vocab_size(self) -> int:
        """Number of output classes, blank included."""
        return len(self.labels)

    def encode(self, text: str) -> Tuple[List[int], Set[str]]:
        """Upper-case `text` and map it to ids; returns (ids, characters dropped as unknown).

        The blank character in a transcript is unknown too: it is never a target.
        """
        ids: List[int] = []
        unknown: Set[str] = set()
        for char in text.upper():
            index = self._ids.get(char)
            if index is None:
                unknown.add(char)
            else:
                ids.append(index)
        return ids, unknown

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, skipping blanks (no CTC collapsing: that is the decoder's job)."""
        chars = []
        for index in ids:
            index = int(index)
            if not 0 <= index < len(self.labels):
                raise ValueError(f"label id {index} outside 0..{len(self.labels) - 1}")
            if index != self.blank_id:
                chars.append(self.labels[index])
        return "".join(chars)
