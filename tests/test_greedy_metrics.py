"""Greedy CTC decoding and WER/CER on strings whose answers are known by hand."""
import numpy as np
import pytest

from edit_distance import levenshtein
from mindaudio.config import DEFAULT_LABELS
from mindaudio.decoding.greedy import GreedyDecoder, greedy_ids
from mindaudio.metrics import ErrorCounts, char_error_rate, error_counts, error_rates, word_error_rate

BLANK = len(DEFAULT_LABELS) - 1
GREEDY = GreedyDecoder(DEFAULT_LABELS, BLANK)


def one_hot_logits(frame_labels, num_classes=len(DEFAULT_LABELS)):
    """(T, 1, C) logits whose arg-max at frame t is frame_labels[t]."""
    logits = np.zeros((len(frame_labels), 1, num_classes), np.float32)
    logits[np.arange(len(frame_labels)), 0, frame_labels] = 5.0
    return logits


def ids(text):
    return [DEFAULT_LABELS.index(c) for c in text]


def test_repeats_collapse_and_blanks_vanish():
    assert greedy_ids(np.array([BLANK, 3, 3, BLANK, 3, 4, 4, BLANK]), BLANK) == [3, 3, 4]
    assert greedy_ids(np.array([BLANK, BLANK]), BLANK) == []
    assert greedy_ids(np.array([], dtype=int), BLANK) == []


def test_a_blank_separates_double_letters():
    frames = ids("HE") + [ids("L")[0]] * 3 + [BLANK] + ids("LL") + [BLANK, ids("O")[0]]
    assert GREEDY.decode_batch(one_hot_logits(frames), [len(frames)]) == ["HELLO"]


def test_frames_beyond_the_output_length_are_ignored():
    frames = ids("A B") + ids("ZZZ")
    logits = np.concatenate([one_hot_logits(frames), one_hot_logits(frames)], axis=1)
    assert GREEDY.decode_batch(logits, [3, 6]) == ["A B", "A BZ"]


def test_batch_and_single_decoding_give_the_same_spaced_text():
    # Spaces emitted twice, or at the ends, become single spaces between words, in a batch as
    # for one utterance: what bench times is what evaluation and transcription run.
    frames = ids(" ") + [BLANK] + ids("A  ") + [BLANK] + ids(" B ")
    logits = one_hot_logits(frames)
    assert GREEDY.decode_batch(logits, [len(frames)]) == ["A B"]
    assert GREEDY.decode(logits[:, 0]).text == "A B"


def test_word_and_character_error_rates_on_known_strings():
    refs = ["THE CAT SAT", "ON THE MAT"]
    hyps = ["THE CAT SAT", "ON A MAT"]
    # One substituted word out of six.
    assert word_error_rate(refs, hyps) == pytest.approx(100 / 6)
    # Without spaces: "ONTHEMAT" -> "ONAMAT" is THE -> A, 3 edits over 9 + 8 = 17 reference characters.
    assert char_error_rate(refs, hyps) == pytest.approx(100 * 3 / 17)
    assert error_rates(["A B C D"], [""]) == {"wer": 100.0, "cer": 100.0}
    # Insertions can push WER past 100%.
    assert word_error_rate(["A"], ["A B C"]) == pytest.approx(200.0)


def test_mismatched_or_empty_inputs_are_errors():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["A", "B"], ["A"])
    with pytest.raises(ValueError, match="no utterances"):
        char_error_rate([], [])


def test_utterance_edit_counts_by_hand_and_by_the_textbook_distance():
    # CAT -> BAT substituted, SAT deleted; characters THECATSAT -> THEBAT: C->B, S, A, T deleted.
    assert error_counts("THE CAT SAT", "THE BAT") == ErrorCounts(2, 3, 4, 9)
    assert error_counts("THE CAT SAT", "THE BAT").wer == pytest.approx(2 / 3)
    rng = np.random.default_rng(2)
    words = ["A", "AN", "THE", "CAT", "DON'T", "SAT"]
    for _ in range(50):
        ref = " ".join(rng.choice(words, size=int(rng.integers(1, 8))))
        hyp = " ".join(rng.choice(words, size=int(rng.integers(0, 8))))
        counts = error_counts(ref, hyp)
        assert counts.word_edits == levenshtein(ref.split(), hyp.split())
        assert counts.char_edits == levenshtein(ref.replace(" ", ""), hyp.replace(" ", ""))
        assert (counts.reference_words, counts.reference_chars) == (len(ref.split()), len(ref.replace(" ", "")))


def test_summed_utterance_counts_give_the_corpus_rates():
    refs = ["HE HOPED THERE WOULD BE STEW", "FOR DINNER", "TURNIPS AND CARROTS"]
    hyps = ["HE HOPE THERE WOULD BE STEW STEW", "", "TURNIP AND CAROTS"]
    counts = [error_counts(r, h) for r, h in zip(refs, hyps)]
    words = sum(c.word_edits for c in counts) / sum(c.reference_words for c in counts)
    chars = sum(c.char_edits for c in counts) / sum(c.reference_chars for c in counts)
    assert 100 * words == pytest.approx(word_error_rate(refs, hyps))
    assert 100 * chars == pytest.approx(char_error_rate(refs, hyps))


def test_an_empty_reference_has_no_rate_to_divide_by():
    assert error_counts("", "").wer == 0.0
    assert error_counts("", "A B") == ErrorCounts(2, 0, 2, 0)
    assert error_counts("", "A B").wer == float("inf")
