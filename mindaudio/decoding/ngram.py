"""Word n-gram language models in ARPA format, estimated in pure Python.

KenLM's estimator (`lmplz`) does not come with the `kenlm` Python package, so this module builds
the LM the beam decoder needs from a plain text file: interpolated modified Kneser-Ney smoothing
(Chen & Goodman 1998, the estimate `lmplz` makes), written as an ARPA file with backoff weights
that KenLM and pyctcdecode load directly.

The estimate, for order n and an n-gram h w (context h, word w):
  - adjusted counts a(h w): the raw count at the highest order and for n-grams that begin with
    <s> (which cannot be extended to the left); elsewhere the number of distinct words seen
    immediately before h w (continuation counts);
  - three discounts D1, D2, D3+ per order from the counts of adjusted counts t1..t4:
    Y = t1 / (t1 + 2 t2), Dk = k - (k + 1) Y t(k+1) / tk; when the corpus is too small for them
    (some tk = 0 or a discount outside (0, k)) the fallback discounts are used, as lmplz's
    --discount_fallback does;
  - p(w | h) = (a(h w) - D(a(h w))) / sum_x a(h x) + gamma(h) p(w | h'), where h' drops h's
    first word and gamma(h) = (D1 N1(h) + D2 N2(h) + D3+ N3+(h)) / sum_x a(h x) is the mass the
    discounts freed (Nk(h): words following h with adjusted count k, 3 meaning 3 or more);
  - unigrams interpolate with the uniform distribution over the vocabulary V (every word seen,
    </s> and <unk>; <s> is never predicted), so <unk> gets gamma(empty) / |V|.
Each distribution p(. | h) over V sums to one. In the ARPA file, a seen n-gram carries its
interpolated log10 p(w | h) and a context carries log10 gamma(h) as its backoff weight, which
makes the backoff lookup of an unseen h w equal gamma(h) p(w | h'): the same model.

Memory grows with the number of distinct n-grams (about 1 GB per 5 M), so this suits corpora up
to tens of millions of words; for all of LibriSpeech's 800 M-word LM corpus use KenLM's `lmplz`.
"""
from __future__ import annotations

import collections
import functools
import math
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from tqdm import tqdm

from mindaudio.config import UserError
from mindaudio.data.text import BLANK, CharTokenizer

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
# lmplz's --discount_fallback defaults: D1, D2, D3+.
DEFAULT_FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
# What ARPA files conventionally give <s>, which is only ever a context.
_LOG10_NEVER = -99.0

Ngram = Tuple[str, ...]


class NgramError(UserError, ValueError):
    """A corpus or setting from which no language model can be built."""


@functools.lru_cache(maxsize=8)
def _tokenizer(alphabet: Tuple[str, ...]) -> CharTokenizer:
    letters = [char for char in dict.fromkeys(alphabet) if char not in (" ", BLANK)]
    return CharTokenizer(letters + [" ", BLANK])


def normalise_line(line: str, alphabet: Optional[Iterable[str]] = None) -> List[str]:
    """Words of one transcript line as the acoustic model spells them.

    alphabet: the characters words may hold (the model's labels without the blank; space always
    separates words). The line is normalised by the same rules as training targets and
    evaluation references (`CharTokenizer`, their one owner), so the LM's words are the
    references' words. With `alphabet=None` it is only upper-cased.
    """
    if alphabet is None:
        return line.upper().split()
    tokenizer = _tokenizer(tuple(alphabet))
    # Tabs and newlines separate words in a text corpus, where a transcript has only spaces.
    ids, _ = tokenizer.encode(" ".join(line.split()))
    return tokenizer.decode(ids).split()


def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> List[Dict[Ngram, int]]:
    """Raw counts of every n-gram of order 1..`order` in the sentences padded with <s> and </s>.

    Returns a list indexed by order - 1. Each sentence contributes the windows of
    [<s>, words..., </s>]; the unigram <s> is counted once per sentence.
    """
    if order < 1:
        raise NgramError(f"order must be >= 1, got {order}")
    counts: List[collections.Counter] = [collections.Counter() for _ in range(order)]
    for words in sentences:
        padded = (BOS, *words, EOS)
        for n in range(1, order + 1):
            table = counts[n - 1]
            for start in range(len(padded) - n + 1):
                table[padded[start:start + n]] += 1
    return [dict(table) for table in counts]


def adjusted_counts(raw: List[Dict[Ngram, int]]) -> List[Dict[Ngram, int]]:
    """Kneser-Ney adjusted counts per order (see the module docstring)."""
    order = len(raw)
    adjusted: List[Dict[Ngram, int]] = [dict() for _ in range(order)]
    adjusted[-1] = dict(raw[-1])
    for n in range(order - 1, 0, -1):  # orders order-1 .. 1, reading order n+1 (index n)
        continuation: collections.Counter = collections.Counter()
        for longer in raw[n]:
            continuation[longer[1:]] += 1
        table = adjusted[n - 1]
        for ngram, count in raw[n - 1].items():
            table[ngram] = count if ngram[0] == BOS else continuation[ngram]
    return adjusted


def discounts(adjusted: Dict[Ngram, int], fallback: Sequence[float] = DEFAULT_FALLBACK_DISCOUNTS
              ) -> Tuple[Tuple[float, float, float], bool]:
    """Modified Kneser-Ney discounts (D1, D2, D3+) of one order; second value True when the
    fallback was used because the counts of counts cannot give valid ones."""
    count_of_counts = collections.Counter(
        min(count, 5) for ngram, count in adjusted.items() if ngram != (BOS,))
    t = [count_of_counts.get(k, 0) for k in (1, 2, 3, 4)]
    if min(t) > 0:
        y = t[0] / (t[0] + 2.0 * t[1])
        values = tuple(k - (k + 1) * y * t[k] / t[k - 1] for k in (1, 2, 3))
        if all(0.0 < d < k for k, d in zip((1, 2, 3), values)):
            return values, False
    return tuple(float(d) for d in fallback), True


@dataclass(frozen=True)
class NgramModel:
    """An n-gram LM in backoff form: per order, n-gram -> (log10 p(w | h), log10 backoff)."""
    order: int
    entries: Tuple[Dict[Ngram, Tuple[float, float]], ...]
    discounts: Tuple[Tuple[float, float, float], ...]  # per order
    fallback_orders: Tuple[int, ...]  # orders whose discounts came from the fallback

    def log10_prob(self, words: Sequence[str], history: Sequence[str]) -> float:
        """log10 p(words[-1] | history + words[:-1]) by the ARPA backoff rule, for checks."""
        context = tuple(history) + tuple(words[:-1])
        word = words[-1]
        if (word,) not in self.entries[0]:
            word = UNK
        context = context[max(0, len(context) - self.order + 1):]
        backoff = 0.0
        while True:
            ngram = context + (word,)
            hit = self.entries[len(ngram) - 1].get(ngram)
            if hit is not None:
                return hit[0] + backoff
            backoff += self.entries[len(context) - 1].get(context, (0.0, 0.0))[1]
            context = context[1:]


def kneser_ney(raw: List[Dict[Ngram, int]],
               fallback: Sequence[float] = DEFAULT_FALLBACK_DISCOUNTS) -> NgramModel:
    """Interpolated modified Kneser-Ney estimate from `count_ngrams`' raw counts."""
    order = len(raw)
    if not raw or not any(ngram != (BOS,) for ngram in raw[0]):
        raise NgramError("the corpus has no words")
    adjusted = adjusted_counts(raw)
    all_discounts, fallback_orders = [], []
    for n in range(1, order + 1):
        values, fell_back = discounts(adjusted[n - 1], fallback)
        all_discounts.append(values)
        if fell_back:
            fallback_orders.append(n)

    # Per order: for every context, the adjusted-count total and the freed mass (gamma's numerator).
    totals: List[Dict[Ngram, float]] = []
    freed: List[Dict[Ngram, float]] = []
    for n in range(1, order + 1):
        d = all_discounts[n - 1]
        total: Dict[Ngram, float] = collections.defaultdict(float)
        mass: Dict[Ngram, float] = collections.defaultdict(float)
        for ngram, count in adjusted[n - 1].items():
            if ngram == (BOS,):
                continue
            context = ngram[:-1]
            total[context] += count
            mass[context] += d[min(count, 3) - 1]
        totals.append(total)
        freed.append(mass)

    vocabulary = {ngram[0] for ngram in adjusted[0]} - {BOS}
    vocabulary |= {EOS, UNK}
    # Interpolated probabilities, lowest order first (each order reads the one below).
    probs: List[Dict[Ngram, float]] = []
    unigram_gamma = freed[0][()] / totals[0][()]
    d1 = all_discounts[0]
    unigrams: Dict[Ngram, float] = {}
    for word in vocabulary:
        count = adjusted[0].get((word,), 0)
        discounted = (count - d1[min(count, 3) - 1]) / totals[0][()] if count else 0.0
        unigrams[(word,)] = discounted + unigram_gamma / len(vocabulary)
    probs.append(unigrams)
    for n in range(2, order + 1):
        d = all_discounts[n - 1]
        table: Dict[Ngram, float] = {}
        for ngram, count in adjusted[n - 1].items():
            context = ngram[:-1]
            total = totals[n - 1][context]
            gamma = freed[n - 1][context] / total
            table[ngram] = (count - d[min(count, 3) - 1]) / total + gamma * probs[n - 2][ngram[1:]]
        probs.append(table)

    entries: List[Dict[Ngram, Tuple[float, float]]] = []
    for n in range(1, order + 1):
        gammas = {context: freed[n][context] / totals[n][context] for context in totals[n]} \
            if n < order else {}
        table = {}
        for ngram, prob in probs[n - 1].items():
            gamma = gammas.get(ngram)
            table[ngram] = (math.log10(prob), math.log10(gamma) if gamma else 0.0)
        entries.append(table)
    # <s> is only a context: never predicted, but it carries the backoff of sentence starts.
    start_gamma = freed[1][(BOS,)] / totals[1][(BOS,)] if order > 1 else None
    entries[0][(BOS,)] = (_LOG10_NEVER, math.log10(start_gamma) if start_gamma else 0.0)
    return NgramModel(order=order, entries=tuple(entries), discounts=tuple(all_discounts),
                      fallback_orders=tuple(fallback_orders))


def _format(value: float) -> str:
    return format(value, ".7g")


def write_arpa(model: NgramModel, path: str) -> None:
    """Write `model` as an ARPA file (atomically: a reader sees the old file or the whole new one)."""
    tmp = f"{path}.tmp"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as out:
        out.write("\\data\\\n")
        for n, table in enumerate(model.entries, start=1):
            out.write(f"ngram {n}={len(table)}\n")
        for n, table in enumerate(model.entries, start=1):
            out.write(f"\n\\{n}-grams:\n")
            for ngram in sorted(table):
                log_prob, log_backoff = table[ngram]
                line = f"{_format(log_prob)}\t{' '.join(ngram)}"
                if n < model.order and log_backoff != 0.0:
                    line += f"\t{_format(log_backoff)}"
                out.write(line + "\n")
        out.write("\n\\end\\\n")
    os.replace(tmp, path)


def read_sentences(text_path: str, alphabet: Optional[Iterable[str]] = None,
                   progress: bool = False) -> List[List[str]]:
    """Normalised word lists of every non-empty line of a UTF-8 text file."""
    if not os.path.isfile(text_path):
        raise NgramError(f"text file not found: {text_path}")
    alphabet = None if alphabet is None else tuple(alphabet)
    sentences = []
    with open(text_path, encoding="utf-8") as handle:
        for line in tqdm(handle, desc="read text", unit=" lines", disable=not progress, leave=False):
            words = normalise_line(line, alphabet)
            if words:
                sentences.append(words)
    if not sentences:
        raise NgramError(f"{text_path}: no words (after normalisation) to build a language model from")
    return sentences


@dataclass(frozen=True)
class BuildSummary:
    arpa_path: str
    order: int
    sentences: int
    words: int
    ngrams: Tuple[int, ...]  # entries per order in the ARPA
    discounts: Tuple[Tuple[float, float, float], ...]
    fallback_orders: Tuple[int, ...]

    def describe(self) -> str:
        parts = ", ".join(f"{n}-grams {count}" for n, count in enumerate(self.ngrams, start=1))
        text = (f"{self.arpa_path}: order {self.order} from {self.sentences} sentences "
                f"({self.words} words): {parts}")
        if self.fallback_orders:
            text += (f"; orders {', '.join(map(str, self.fallback_orders))} used the fallback "
                     f"discounts (too few n-grams to estimate them)")
        return text


def build_arpa(text_path: str, arpa_path: str, order: int = 3,
               alphabet: Optional[Iterable[str]] = None, progress: bool = False,
               fallback: Sequence[float] = DEFAULT_FALLBACK_DISCOUNTS) -> BuildSummary:
    """Estimate an order-`order` modified Kneser-Ney LM from `text_path` (one sentence a line)
    and write it to `arpa_path`."""
    if order < 1:
        raise NgramError(f"order must be >= 1, got {order}")
    sentences = read_sentences(text_path, alphabet, progress)
    model = kneser_ney(count_ngrams(sentences, order), fallback)
    write_arpa(model, arpa_path)
    return BuildSummary(arpa_path=arpa_path, order=order, sentences=len(sentences),
                        words=sum(len(words) for words in sentences),
                        ngrams=tuple(len(table) for table in model.entries),
                        discounts=model.discounts, fallback_orders=model.fallback_orders)


def read_arpa_unigrams(path: str) -> List[str]:
    """The words of an ARPA file's 1-gram section (without <s>, </s>, <unk>)."""
    words = []
    in_unigrams = False
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line == "\\1-grams:":
                in_unigrams = True
                continue
            if in_unigrams:
                if not line:
                    continue
                if line.startswith("\\"):
                    break
                fields = line.split()
                if len(fields) >= 2 and fields[1] not in (BOS, EOS, UNK):
                    words.append(fields[1])
    return words
