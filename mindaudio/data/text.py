"""Transcripts -> label ids for CTC, with the blank as the last label; the one owner of the text rules.

Normalisation (`CharTokenizer.normalise`), applied to training targets and evaluation references
alike, turns any transcript into the label alphabet without ever joining two words:

1. accents are folded (Unicode NFKD, combining marks removed): `ZÉRO` -> `ZERO`, `Ç` -> `C`;
2. upper case;
3. typographic apostrophes (’ ‘ ʼ) become `'`; with `drop_apostrophes` (the original's text handling,
   which scored "DON'T" as "DONT") every apostrophe is deleted, and so is one that is not a label;
4. every other character outside the labels (punctuation, dashes, symbols, tabs, letters of other
   alphabets) becomes a space: `ZERO—ONE` -> `ZERO ONE`; each such character is counted;
5. runs of spaces collapse to one, and leading and trailing spaces go.

Digits are not guessed at ("1984" has several spoken forms): a transcript with a digit is flagged
(`Normalised.has_digits`) and the data set drops that utterance, counted, naming its manifest line.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Set, Tuple

BLANK = "_"
APOSTROPHE = "'"
# Written for an apostrophe in typeset text; NFKD leaves them alone.
_APOSTROPHE_VARIANTS = {"\u2019": APOSTROPHE, "\u2018": APOSTROPHE, "\u02bc": APOSTROPHE}


def check_labels(labels: Sequence[str]) -> None:
    """ValueError unless `labels` is a usable CTC alphabet: single characters, no duplicates, the
    blank `_` last (the original model's output layout; `ops.CTCLoss` takes the last class as blank)."""
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


@dataclass(frozen=True)
class Normalised:
    """A transcript in the label alphabet, and what normalisation had to remove."""
    text: str  # only label characters (never the blank); single spaces between words
    removed: Tuple[str, ...]  # each character outside the labels replaced by a space or deleted
    has_digits: bool  # the transcript holds a digit: the utterance cannot be labelled


def fold_accents(text: str) -> str:
    """`text` in NFKD with the combining marks removed: É -> E, ﬁ -> fi, ² -> 2."""
    return "".join(char for char in unicodedata.normalize("NFKD", text)
                   if not unicodedata.combining(char))


class CharTokenizer:
    """Maps transcripts to ids in `labels` order; `_` is the CTC blank and must be last.

    drop_apostrophes: the original's text handling (its transcript parser dropped label id 0, the
    apostrophe): apostrophes are removed from every normalised transcript, so from training targets
    and evaluation references alike (`Config.drop_apostrophes`).
    """

    def __init__(self, labels: Sequence[str], drop_apostrophes: bool = False):
        check_labels(labels)
        self.labels: List[str] = list(labels)
        self.blank_id: int = len(self.labels) - 1
        self.drop_apostrophes = bool(drop_apostrophes)
        self._ids = {label: index for index, label in enumerate(self.labels[:-1])}

    @classmethod
    def from_config(cls, config) -> "CharTokenizer":
        """The tokenizer a `Config` asks for: its `labels` and `drop_apostrophes`."""
        return cls(config.labels, drop_apostrophes=config.drop_apostrophes)

    @property
    def vocab_size(self) -> int:
        """Number of output classes, blank included."""
        return len(self.labels)

    def normalise(self, text: str) -> Normalised:
        """`text` in the label alphabet by the module's rules (see the module docstring)."""
        if not isinstance(text, str):
            raise TypeError(f"a transcript must be a string, got {type(text).__name__}")
        folded = fold_accents(text).upper()
        keep_apostrophe = APOSTROPHE in self._ids and not self.drop_apostrophes
        chars: List[str] = []
        removed: List[str] = []
        has_digits = False
        for char in folded:
            char = _APOSTROPHE_VARIANTS.get(char, char)
            if char in self._ids and (char != APOSTROPHE or keep_apostrophe):
                chars.append(char)
            elif char == APOSTROPHE:
                if not self.drop_apostrophes:
                    removed.append(char)  # dropping it on purpose is not worth a warning
            else:
                if char.isdigit():
                    has_digits = True
                if not char.isspace():
                    removed.append(char)
                chars.append(" ")
        words = "".join(chars).split(" ")
        return Normalised(" ".join(word for word in words if word), tuple(removed), has_digits)

    def encode(self, text: str) -> Tuple[List[int], Set[str]]:
        """Normalise `text` and map it to ids; returns (ids, characters outside the labels).

        The blank character in a transcript is outside the labels too: it is never a target.
        A space that is not a label is left out of the ids.
        """
        normalised = self.normalise(text)
        return self.label_ids(normalised.text), set(normalised.removed)

    def label_ids(self, normalised_text: str) -> List[int]:
        """Ids of text already normalised (`normalise(...).text`); a space that is not a label
        is left out."""
        return [self._ids[char] for char in normalised_text if char in self._ids]

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
