"""Greedy CTC decoding and WER/CER on strings whose answers are known by hand."""
import numpy as np
import pytest

from mindaudio.config import DEFAULT_LABELS
from mindaudio.decoding.greedy import greedy_decode, greedy_ids
from mindaudio.metrics import char_error_rate, error_rates, word_error_rate

BLANK = len(DEFAULT_LABELS) - 1


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
    assert greedy_decode(one_hot_logits(frames), [len(frames)], DEFAULT_LABELS, BLANK) == ["HELLO"]


def test_frames_beyond_the_output_length_are_ignored():
    frames = ids("A B") + ids("ZZZ")
    logits = np.concatenate([one_hot_logits(frames), one_hot_logits(frames)], axis=1)
    assert greedy_decode(logits, [3, 6], DEFAULT_LABELS, BLANK) == ["A B", "A BZ"]


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
