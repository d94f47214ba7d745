"""Beam search, the n-gram LM builder and the decoder choice, checked against independent references:
kenlm reading our ARPA files, hand-derived Kneser-Ney formulas, and greedy decoding."""
import collections
import itertools
import math
import sys

import numpy as np
import pytest

import mindaudio  # noqa: F401  (before mindspore)
from mindaudio.config import DEFAULT_LABELS, ConfigError, config_from_dict
from mindaudio.data.text import CharTokenizer
from mindaudio.decoding.greedy import GreedyDecoder, greedy_word_frames
from mindaudio.decoding.hypothesis import log_softmax
from mindaudio.decoding.ngram import (BOS, EOS, UNK, build_arpa, count_ngrams, discounts, kneser_ney,
                                      normalise_line, read_arpa_unigrams, write_arpa)

kenlm = pytest.importorskip("kenlm")
pytest.importorskip("pyctcdecode")
from mindaudio.decoding.beam import BeamSearchDecoder  # noqa: E402

LABELS = list(DEFAULT_LABELS)
BLANK = len(LABELS) - 1
SPACE = LABELS.index(" ")


def kenlm_conditional(model, history, word) -> float:
    """log10 p(word | <s> history) as kenlm computes it from the ARPA file."""
    state = kenlm.State()
    model.BeginSentenceWrite(state)
    for previous in history:
        out = kenlm.State()
        model.BaseScore(state, previous, out)
        state = out
    return model.BaseScore(state, word, kenlm.State())


# ---------------------------------------------------------------- n-gram language model


def test_bigram_kneser_ney_matches_the_formulas_by_hand(tmp_path):
    # Too small for estimated discounts, so the fallback D1, D2, D3+ = 0.5, 1, 1.5 applies.
    sentences = [["A", "B"], ["A", "C"], ["B", "C"], ["A", "B", "C"]]
    model = kneser_ney(count_ngrams(sentences, 2))
    assert model.fallback_orders == (1, 2)
    path = tmp_path / "tiny.arpa"
    write_arpa(model, str(path))
    lm = kenlm.Model(str(path))

    d = {1: 0.5, 2: 1.0, 3: 1.5}
    padded = [[BOS] + s + [EOS] for s in sentences]
    bigrams = collections.Counter((s[i], s[i + 1]) for s in padded for i in range(len(s) - 1))
    vocab = ["A", "B", "C", EOS, UNK]
    # Unigram continuation counts: distinct left neighbours.
    cont = {w: len({h for (h, x) in bigrams if x == w}) for w in vocab}
    total = sum(cont.values())
    gamma0 = sum(d[min(c, 3)] for c in cont.values() if c) / total
    p_uni = {w: (cont[w] - d[min(cont[w], 3)] if cont[w] else 0.0) / total + gamma0 / len(vocab)
             for w in vocab}
    assert math.isclose(sum(p_uni.values()), 1.0, rel_tol=1e-12)

    def p_bigram(h, w):
        following = {x: c for (g, x), c in bigrams.items() if g == h}
        n = sum(following.values())
        gamma = sum(d[min(c, 3)] for c in following.values()) / n
        c = following.get(w, 0)
        return (c - d[min(c, 3)] if c else 0.0) / n + gamma * p_uni[w]

    for h, w in [(BOS, "A"), (BOS, "B"), (BOS, "C"), ("A", "B"), ("A", "C"), ("A", EOS), ("B", "C"),
                 ("C", EOS), ("C", "A"), (BOS, EOS)]:
        expected = math.log10(p_bigram(h, w))
        # kenlm conditions on <s> h; a bigram model only sees h.
        got = kenlm_conditional(lm, [] if h == BOS else [h], w)
        assert got == pytest.approx(expected, abs=2e-6), (h, w)
    # A word never seen is <unk>, whose probability is the uniform share of the freed mass.
    assert kenlm_conditional(lm, ["C"], "ZEBRA") == pytest.approx(math.log10(p_bigram("C", UNK)), abs=2e-6)


def test_discounts_follow_chen_goodman_from_counts_of_counts():
    rng = np.random.default_rng(0)
    words = [f"W{i}" for i in range(40)]
    # Zipf-like sentences: enough repeated trigrams for every count of counts t1..t4 to be > 0.
    probs = 1.0 / np.arange(1, 41)
    probs /= probs.sum()
    sentences = [list(rng.choice(words, size=rng.integers(3, 9), p=probs)) for _ in range(400)]
    raw = count_ngrams(sentences, 3)
    t = collections.Counter(min(c, 5) for c in raw[2].values())
    y = t[1] / (t[1] + 2 * t[2])
    expected = (1 - 2 * y * t[2] / t[1], 2 - 3 * y * t[3] / t[2], 3 - 4 * y * t[4] / t[3])
    values, fell_back = discounts(raw[2])
    assert not fell_back
    assert values == pytest.approx(expected, rel=1e-12)


@pytest.fixture(scope="module")
def train_clean_5_lm(reference_dir, tmp_path_factory):
    """A trigram LM of the 1,519 train-clean-5 transcripts (no test transcripts)."""
    text = reference_dir / "librispeech_lengths" / "train-clean-5.transcripts.txt"
    path = tmp_path_factory.mktemp("lm") / "train-clean-5.3gram.arpa"
    summary = build_arpa(str(text), str(path), order=3, alphabet=[c for c in LABELS[:-1] if c != " "])
    assert summary.sentences == 1519 and summary.fallback_orders == ()
    return path


def test_every_conditional_distribution_sums_to_one_under_kenlm(train_clean_5_lm):
    lm = kenlm.Model(str(train_clean_5_lm))
    vocab = read_arpa_unigrams(str(train_clean_5_lm)) + [EOS, UNK]
    assert len(vocab) == len(set(vocab)) > 7000
    for history in ([], ["THE"], ["OF", "THE"], ["I", "HAVE"], ["ZZZ"], ["THE", "ZZZ"]):
        total = sum(10.0 ** kenlm_conditional(lm, history, w) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-5), history


def test_arpa_backoff_lookup_agrees_with_kenlm(train_clean_5_lm, reference_dir):
    from mindaudio.decoding.ngram import read_sentences
    lm = kenlm.Model(str(train_clean_5_lm))
    corpus = read_sentences(str(reference_dir / "librispeech_lengths" / "train-clean-5.transcripts.txt"),
                            alphabet=[c for c in LABELS[:-1] if c != " "])
    model = kneser_ney(count_ngrams(corpus, 3))
    for sentence in ("HE HOPED THERE WOULD BE STEW FOR DINNER", "THE MAN WHO WAS NOT THERE",
                     "QUUX OF THE"):
        words = sentence.split() + [EOS]
        ours = sum(model.log10_prob(words[: i + 1], [BOS]) for i in range(len(words)))
        assert ours == pytest.approx(lm.score(sentence, bos=True, eos=True), abs=1e-4)


def test_build_ngram_lm_script(tmp_path, repo_root):
    import subprocess
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat\nThe dog sat!\n\nthe cat ran\n")
    arpa = tmp_path / "out" / "lm.arpa"
    proc = subprocess.run([sys.executable, "scripts/build_ngram_lm.py", str(text), str(arpa), "--order", "2"],
                          cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "order 2 from 3 sentences (9 words)" in proc.stdout
    assert sorted(read_arpa_unigrams(str(arpa))) == ["CAT", "DOG", "RAN", "SAT", "THE"]
    assert kenlm.Model(str(arpa)).order == 2
    missing = subprocess.run([sys.executable, "scripts/build_ngram_lm.py", str(tmp_path / "none.txt"), str(arpa)],
                             cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "text file not found" in missing.stderr


def test_normalise_line_spells_words_as_the_labels():
    alphabet = [c for c in LABELS[:-1] if c != " "]
    assert normalise_line("It's  a\tman\n", alphabet) == ["IT'S", "A", "MAN"]
    assert normalise_line("It's  a\tman\n", [c for c in alphabet if c != "'"]) == ["ITS", "A", "MAN"]
    # Whatever the tokenizer does with characters outside the labels, the LM spells words as the
    # references it will be scored against.
    tokenizer = CharTokenizer(LABELS)
    for line in ["It's  a self-made man, 1999!\n", "ZÉRO—ONE", "don’t stop"]:
        assert normalise_line(line, alphabet) == tokenizer.decode(tokenizer.encode(line)[0]).split()


# ---------------------------------------------------------------- beam search


def peaked_logits(rng, frames: int, sharpness: float = 4.0) -> np.ndarray:
    """(frames, C) logits with a clear winner per frame, blanks and spaces frequent, like CTC output."""
    logits = rng.normal(0.0, 1.0, (frames, len(LABELS))).astype(np.float32)
    winners = rng.choice(len(LABELS), size=frames, p=_winner_probs())
    logits[np.arange(frames), winners] += sharpness
    return logits


def _winner_probs():
    p = np.full(len(LABELS), 0.3 / (len(LABELS) - 2))
    p[BLANK], p[SPACE] = 0.55, 0.15
    return p / p.sum()


def test_beam_width_one_without_lm_equals_greedy_words_and_frames():
    rng = np.random.default_rng(7)
    beam = BeamSearchDecoder(LABELS, BLANK, beam_width=1)
    greedy = GreedyDecoder(LABELS, BLANK)
    for trial in range(60):
        logits = peaked_logits(rng, int(rng.integers(1, 120)), sharpness=float(rng.uniform(0.5, 5.0)))
        # Best path written out independently: runs of the arg-max collapsed, blanks dropped.
        runs = [LABELS[k] for k, _ in itertools.groupby(logits.argmax(axis=-1).tolist()) if k != BLANK]
        expected = " ".join("".join(runs).split())
        got = beam.decode(logits)
        assert got.text == expected, trial
        # pyctcdecode's word frames are an independent implementation of the same spans.
        assert got.words == greedy.decode(logits).words, trial


def test_beam_batch_respects_output_lengths():
    rng = np.random.default_rng(3)
    logits = np.stack([peaked_logits(rng, 50), peaked_logits(rng, 50)], axis=1)  # (T', B, C)
    beam = BeamSearchDecoder(LABELS, BLANK, beam_width=1)
    texts = beam.decode_batch(logits, [50, 20])
    assert texts == [beam.decode(logits[:50, 0]).text, beam.decode(logits[:20, 1]).text]
    assert texts == GreedyDecoder(LABELS, BLANK).decode_batch(logits, [50, 20])


def test_greedy_word_frames_by_hand():
    ids = [LABELS.index(c) if c != "_" else BLANK for c in "_HH_I_  _YOO_AA_A"]
    words = greedy_word_frames(np.array(ids), LABELS, BLANK)
    # H at 1-2, I at 4 -> HI [1, 5); Y at 9, O at 10-11 -> YO [9, 12); A at 13-14, A again at 16.
    assert [(w.word, w.start_frame, w.end_frame) for w in words] == [("HI", 1, 5), ("YOAA", 9, 17)]


def spelled_log_probs(text: str, rng, misheard=None, frames_per_char: int = 1) -> np.ndarray:
    """(frames, C) log-probabilities of a CTC model that 'hears' `text`: each character spikes for
    `frames_per_char` frames then a blank. misheard: {position: (wrong char, its probability)}
    puts that probability on the wrong character at that position and the rest on the right one."""
    misheard = misheard or {}
    rows = []
    for position, char in enumerate(text):
        row = {LABELS.index(char): 1.0}
        if position in misheard:
            wrong, mass = misheard[position]
            row = {LABELS.index(char): 1.0 - mass, LABELS.index(wrong): mass}
        rows += [row] * frames_per_char + [{BLANK: 1.0}]
    probs = np.full((len(rows), len(LABELS)), 1e-4)
    for t, row in enumerate(rows):
        for k, v in row.items():
            probs[t, k] += v
    probs *= np.exp(rng.normal(0.0, 0.05, probs.shape))  # a little jitter, as real outputs have
    probs /= probs.sum(axis=1, keepdims=True)
    return np.log(probs).astype(np.float32)


def test_lm_repairs_acoustically_ambiguous_words(train_clean_5_lm):
    # The 'acoustic model' slightly prefers a wrong letter at a third of the vowels and T/D; the LM
    # (train-clean-5, which holds none of these sentences) knows the words. The references are
    # transcripts of the shared test-clean utterances.
    from mindaudio.metrics import word_error_rate

    rng = np.random.default_rng(11)
    references = ["HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS AND BRUISED POTATOES",
                  "THE MUSIC CAME NEARER AND HE RECALLED THE WORDS"]
    confusable = {"E": "A", "O": "U", "T": "D", "I": "E", "A": "E"}
    log_probs = []
    for reference in references:
        positions = [i for i, c in enumerate(reference) if c in confusable]
        chosen = rng.choice(positions, size=len(positions) // 3, replace=False)
        log_probs.append(spelled_log_probs(reference, rng, {int(i): (confusable[reference[i]], 0.6) for i in chosen}))
    greedy = GreedyDecoder(LABELS, BLANK)
    with_lm = BeamSearchDecoder(LABELS, BLANK, beam_width=32, lm_path=str(train_clean_5_lm), alpha=0.5, beta=1.0)
    greedy_wer = word_error_rate(references, [greedy.decode(lp).text for lp in log_probs])
    lm_wer = word_error_rate(references, [with_lm.decode(lp).text for lp in log_probs])
    with_lm.close()
    assert greedy_wer >= 30  # a third of the confusable letters misheard misspells many words
    assert lm_wer <= greedy_wer / 3


def test_hotword_wins_an_ambiguous_word():
    rng = np.random.default_rng(5)
    # The acoustics hear 'KATRIN' (60 %) or 'CATRIN' (40 %).
    log_probs = spelled_log_probs("KATRIN SAID", rng, {0: ("C", 0.4)})
    plain = BeamSearchDecoder(LABELS, BLANK, beam_width=16)
    assert plain.decode(log_probs).text == "KATRIN SAID"
    hot = BeamSearchDecoder(LABELS, BLANK, beam_width=16, hotwords=["catrin"], hotword_weight=5.0)
    assert hot.decode(log_probs).text == "CATRIN SAID"
    # A hotword the audio does not support at all changes nothing.
    assert BeamSearchDecoder(LABELS, BLANK, beam_width=16, hotwords=["BOAT"]).decode(log_probs).text == \
        "KATRIN SAID"


# ---------------------------------------------------------------- choosing the decoder


def small_config(**eval_keys):
    return config_from_dict({"ModelConfig": {"hidden_size": 32, "hidden_layers": 1}, "EvalConfig": eval_keys},
                            source="test.yaml")


def test_decoder_type_is_validated_with_the_key_named():
    with pytest.raises(ConfigError, match=r"test.yaml.*EvalConfig.decoder_type.*greedy, beam"):
        small_config(decoder_type="beams")
    with pytest.raises(ConfigError, match=r"EvalConfig.beam_width"):
        small_config(decoder_type="beam", beam_width=0)
    with pytest.raises(ConfigError, match=r"EvalConfig.alpha: must be >= 0"):
        small_config(decoder_type="beam", alpha=-0.5)
    with pytest.raises(ConfigError, match=r"EvalConfig.hotwords\[0\]: expected a string"):
        small_config(decoder_type="beam", hotwords=[3])


def test_build_decoder_follows_the_config(tmp_path, train_clean_5_lm):
    from mindaudio.decoding.select import build_decoder
    assert isinstance(build_decoder(small_config()), GreedyDecoder)
    decoder = build_decoder(small_config(decoder_type="beam", beam_width=8, lm_path=str(train_clean_5_lm),
                                         alpha=0.7, beta=2.0, hotwords=["stew"]))
    assert isinstance(decoder, BeamSearchDecoder)
    assert (decoder.beam_width, decoder.alpha, decoder.beta, decoder.hotwords) == (8, 0.7, 2.0, ["STEW"])
    with pytest.raises(ConfigError, match=r"EvalConfig.lm_path: file not found"):
        build_decoder(small_config(decoder_type="beam", lm_path=str(tmp_path / "missing.arpa")))
    with pytest.raises(ConfigError, match=r"EvalConfig.hotwords"):
        build_decoder(small_config(decoder_type="beam", hotwords=["CAFÉ"]))
    decoder.close()


def test_without_pyctcdecode_beam_names_the_key_and_greedy_still_works(monkeypatch):
    from mindaudio.decoding.select import build_decoder
    monkeypatch.setitem(sys.modules, "pyctcdecode", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"test.yaml: EvalConfig.decoder_type: .*pyctcdecode"):
        build_decoder(small_config(decoder_type="beam"))
    greedy = build_decoder(small_config())
    assert greedy.decode(log_softmax(np.eye(len(LABELS))[[8, BLANK, 9]])).text == "HI"


def test_without_kenlm_an_lm_names_the_lm_key(monkeypatch, train_clean_5_lm):
    monkeypatch.setitem(sys.modules, "kenlm", None)
    with pytest.raises(ConfigError, match=r"EvalConfig.lm_path: .*kenlm"):
        BeamSearchDecoder(LABELS, BLANK, lm_path=str(train_clean_5_lm), config_source="test.yaml")
