"""Evaluation: the original's printed lines, utterances that cannot be scored, the report's output
location, and the layers evaluation sits on. A tiny DeepSpeech2 with fixed random weights runs
on real LibriSpeech audio: its transcripts are meaningless, so the tests check what must hold for
any weights (bad files named and left out, the others scored exactly as without them)."""
import io
import json
import os
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import mindaudio  # noqa: F401  (before mindspore)
import mindspore as ms

from corpus import small_config_dict
from edit_distance import levenshtein
from mindaudio.config import ConfigError, UserError, config_from_dict
from mindaudio.data.dataset import load_split
from mindaudio.data.librispeech import extracted_utterances
from mindaudio.data.text import CharTokenizer
from mindaudio.evaluation import (EvalResult, EvaluationError, check_report_writable,
                                  evaluate_split, finish_evaluation, format_summary, format_utterance,
                                  run_evaluation, score)
from mindaudio.metrics import char_error_rate, word_error_rate
from mindaudio.models.build import build_model

GOOD_IDS = ("1089-134686-0001", "1089-134691-0000", "1988-24833-0001")


# ---------------------------------------------------------------- the original's printed lines


def original_lines(reference: str, transcript: str) -> str:
    """What the original's eval.py prints for one utterance, written as it does it: print() with
    several arguments, the rates as plain float division."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        print("Ref:", reference.lower())
        print("Hyp:", transcript.lower())
        print("WER:", float(levenshtein(reference.split(), transcript.split())) / len(reference.split()),
              "CER:", float(levenshtein(reference.replace(" ", ""), transcript.replace(" ", "")))
              / len(reference.replace(" ", "")), "\n")
    return buffer.getvalue()


@pytest.mark.parametrize("reference,hypothesis", [
    ("HE HOPED THERE WOULD BE STEW", "HE HOPE THERE WOULD BE STEW"),
    ("STUFF IT INTO YOU", "STUFF IT INTO YOU"),
    ("SOMEHOW OR OTHER CAT HAS TAUGHT THEM", "SOME HOW OTHER KAT HAS TAUGHT THEM THEM"),
    ("A", ""),
])
def test_utterance_lines_are_the_originals(reference, hypothesis):
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        print(format_utterance(reference, hypothesis))
    assert buffer.getvalue() == original_lines(reference, hypothesis)


def test_summary_line_is_the_originals():
    wer, cer = 10.2412, 3.46149
    # The original's statement: "Test Summary \t" "Average WER {wer:.3f}\t" "Average CER {cer:.3f}\t"
    assert format_summary(wer, cer) == "Test Summary \tAverage WER 10.241\tAverage CER 3.461\t"


def test_scoring_leaves_out_the_excluded_and_lists_them():
    from mindaudio.data.manifest import Utterance
    utterances = [Utterance(f"u{i}", f"/audio/u{i}.wav", "", 1.0 + i) for i in range(4)]
    refs = ["THE CAT", "SAT ON", "THE MAT", "A DOG"]
    hyps = {0: "THE CAT", 1: "SAT IN", 3: "A DOG DOG"}
    result = score(utterances, hyps, refs, excluded={2: "cannot read audio file"})
    assert [row["id"] for row in result.utterances] == ["u0", "u1", "u3"]
    assert result.excluded == [{"id": "u2", "path": "/audio/u2.wav", "reason": "cannot read audio file"}]
    assert result.wer == pytest.approx(word_error_rate([refs[i] for i in (0, 1, 3)], [hyps[i] for i in (0, 1, 3)]))
    assert result.audio_seconds == pytest.approx(1.0 + 2.0 + 4.0)
    with pytest.raises(EvaluationError, match="none of the 1 utterances could be scored: /audio/u0.wav: bad"):
        score(utterances[:1], {}, refs[:1], excluded={0: "bad"})


# ---------------------------------------------------------------- where the report goes


def test_an_unwritable_report_location_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"cfg.yaml: EvalConfig.save_output: cannot write the report "
                                          r".*a_file/report.json"):
        check_report_writable(str(blocker / "report"), "cfg.yaml")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(ConfigError, match=r"EvalConfig.save_output: .*dir.json.*directory"):
        check_report_writable(str(tmp_path / "dir"), "cfg.yaml")
    with pytest.raises(ConfigError, match=r"cfg.yaml: EvalConfig.save_output is empty"):
        check_report_writable("", "cfg.yaml")
    # A usable location: its folder is created and nothing is left behind.
    assert check_report_writable(str(tmp_path / "new" / "report"), "cfg.yaml") == str(tmp_path / "new" / "report.json")
    assert os.listdir(tmp_path / "new") == []


def test_scores_are_printed_before_a_failing_report_write(tmp_path):
    result = EvalResult(wer=12.5, cer=4.25, utterances=[{"id": "u", "reference": "A B", "hypothesis": "A"}],
                        audio_seconds=2.0)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = io.StringIO()
    with pytest.raises(EvaluationError, match=r"cfg.yaml: EvalConfig.save_output: the scores above were not "
                                              r"saved: cannot write .*a_file/r.json") as caught:
        finish_evaluation(result, str(blocker / "r"), "cfg.yaml", out)
    assert isinstance(caught.value, UserError)
    printed = out.getvalue().splitlines()
    assert "Test Summary \tAverage WER 12.500\tAverage CER 4.250\t" in printed
    assert printed[:3] == ["Ref: a b", "Hyp: a", "WER: 0.5 CER: 0.5 "]


# ---------------------------------------------------------------- evaluating real manifests


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config dict, checkpoint path) of a hidden-32 DeepSpeech2 with seeded random weights."""
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    work = tmp_path_factory.mktemp("tiny")
    data = small_config_dict(work / "unused.json", work / "ckpt")
    model = build_model(config_from_dict(data, source="tiny"), seed=4)
    checkpoint = work / "tiny.ckpt"
    ms.save_checkpoint(model, str(checkpoint))
    return data, checkpoint


@pytest.fixture(scope="module")
def good(librispeech_mini):
    """(id, audio path, transcript) of three real utterances."""
    found = {u[0]: u for u in extracted_utterances(librispeech_mini)}
    return [(uid, str(found[uid][1]), found[uid][2]) for uid in GOOD_IDS]


def write_manifest(path: Path, entries) -> Path:
    """JSON-lines manifest of (audio path, transcript, duration) entries."""
    with open(path, "w", encoding="utf-8") as handle:
        for audio, text, duration in entries:
            handle.write(json.dumps({"audio_filepath": audio, "text": text, "duration": duration}) + "\n")
    return path


def good_entries(good):
    return [(audio, text, sf.info(audio).duration) for _, audio, text in good]


def evaluation_config(tiny, manifest: Path, save_output: Path):
    data, checkpoint = tiny
    data = dict(data, Pretrained_model=str(checkpoint))
    data["EvalConfig"] = dict(data["EvalConfig"], test_manifest=str(manifest), save_output=str(save_output))
    return config_from_dict(data, source="tiny.yaml")


def nan_recording(good, tmp_path: Path) -> Path:
    """The first good utterance with a stretch of NaN samples, as a float WAV."""
    signal, rate = sf.read(good[0][1], dtype="float32")
    signal[rate // 2: rate] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(str(path), signal, rate, subtype="FLOAT")
    return path


def test_evaluation_prints_the_originals_lines_and_reports(tiny, good, tmp_path):
    manifest = write_manifest(tmp_path / "good.json", good_entries(good))
    out = io.StringIO()
    result, report_path = run_evaluation(evaluation_config(tiny, manifest, tmp_path / "report"),
                                         progress=False, out=out)
    lines = out.getvalue().splitlines()
    assert report_path == str(tmp_path / "report.json") and lines[-1] == f"report: {report_path}"
    assert lines[-2] == format_summary(result.wer, result.cer)
    report = json.loads(Path(report_path).read_text())
    assert report["num_utterances"] == 3 and report["num_excluded"] == 0 and report["excluded"] == []
    refs = [row["reference"] for row in report["utterances"]]
    hyps = [row["hypothesis"] for row in report["utterances"]]
    assert report["wer"] == pytest.approx(word_error_rate(refs, hyps))
    assert report["cer"] == pytest.approx(char_error_rate(refs, hyps))
    # Each utterance's three lines and a blank one, in the report's order, as the original prints them.
    expected = "".join(original_lines(r, h) for r, h in zip(refs, hyps))
    # After the split's summary, the checkpoint and the compile line.
    assert re.fullmatch(r"model: \d+ graph\(s\) (compiled|loaded).* in [\d.]+ s", lines[2])
    assert out.getvalue().startswith("\n".join(lines[:3]) + "\n" + expected)
    assert sum(line.startswith("Ref: ") for line in lines) == 3

    quiet = io.StringIO()
    run_evaluation(evaluation_config(tiny, manifest, tmp_path / "report"), progress=False,
                   print_utterances=False, out=quiet)
    assert not any(line.startswith(("Ref:", "Hyp:", "WER:")) for line in quiet.getvalue().splitlines())
    assert format_summary(result.wer, result.cer) in quiet.getvalue().splitlines()


def test_unwritable_report_stops_evaluation_before_it_starts(tiny, good, tmp_path):
    manifest = write_manifest(tmp_path / "good.json", good_entries(good))
    (tmp_path / "blocker").write_text("")
    out = io.StringIO()
    with pytest.raises(ConfigError, match=r"tiny.yaml: EvalConfig.save_output: .*blocker/report.json"):
        run_evaluation(evaluation_config(tiny, manifest, tmp_path / "blocker" / "report"), progress=False, out=out)
    assert out.getvalue() == ""  # not even the manifest was read


def evaluate(tiny, manifest: Path):
    config = evaluation_config(tiny, manifest, manifest.with_suffix(".report"))
    tokenizer = CharTokenizer(config.labels)
    split = load_split(str(manifest), tokenizer, config.SpectConfig,
                       bucket_boundaries=config.TrainingConfig.bucket_boundaries)
    model = build_model(config)
    ms.load_param_into_net(model, ms.load_checkpoint(str(tiny[1])))
    return evaluate_split(model, split, config, tokenizer, progress=False)


def test_nan_audio_is_excluded_and_named_the_rest_scored_as_without_it(tiny, good, tmp_path):
    clean = evaluate(tiny, write_manifest(tmp_path / "clean.json", good_entries(good)))
    nan_path = nan_recording(good, tmp_path)
    entries = good_entries(good)
    mixed = evaluate(tiny, write_manifest(tmp_path / "mixed.json",
                                          entries[:2] + [(str(nan_path), good[0][2], entries[0][2])] + entries[2:]))
    assert mixed.utterances == clean.utterances
    assert (mixed.wer, mixed.cer) == (clean.wer, clean.cer)
    assert [row["path"] for row in mixed.excluded] == [str(nan_path)]
    # The dataset may name the reason itself (non-finite samples); otherwise the model's output does.
    assert "NaN" in mixed.excluded[0]["reason"]


def test_corrupt_and_empty_files_are_excluded_and_named(tiny, good, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + np.random.default_rng(0).bytes(3000))
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 16000)
    entries = good_entries(good)
    manifest = write_manifest(tmp_path / "mixed.json", [entries[0], (str(corrupt), "A CORRUPT FILE", 1.5), entries[1],
                                                        (str(empty), "AN EMPTY FILE", 0.0), entries[2]])
    clean = evaluate(tiny, write_manifest(tmp_path / "clean.json", entries))
    out = io.StringIO()
    result, report_path = run_evaluation(evaluation_config(tiny, manifest, tmp_path / "report"),
                                         progress=False, out=out)
    assert result.utterances == clean.utterances and (result.wer, result.cer) == (clean.wer, clean.cer)
    assert sorted(row["path"] for row in result.excluded) == sorted([str(corrupt), str(empty)])
    report = json.loads(Path(report_path).read_text())
    assert report["num_excluded"] == 2 and report["num_utterances"] == 3
    printed = out.getvalue().splitlines()
    assert "excluded 2 of 5 utterances (not scored):" in printed
    assert any(line.startswith(f"  {corrupt}: ") for line in printed)
    assert any(line.startswith(f"  {empty}: ") for line in printed)


# ---------------------------------------------------------------- layers


def test_evaluation_inference_and_decoding_import_only_downwards():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("mindaudio")
    for module in ("mindaudio.evaluation", "mindaudio.inference", "mindaudio.export"):
        for upper in ("mindaudio.training", "mindaudio.cli"):
            if upper in graph.modules:
                assert not graph.chain_exists(importer=module, imported=upper, as_packages=True), (module, upper)
    decoding = sorted(m for m in graph.modules if m.startswith("mindaudio.decoding."))
    for a in decoding:
        for b in decoding:
            if a != b and graph.direct_import_exists(importer=a, imported=b):
                assert not graph.chain_exists(importer=b, imported=a), f"import cycle {a} <-> {b}"
    for upper in ("mindaudio.evaluation", "mindaudio.inference", "mindaudio.training"):
        assert not graph.chain_exists(importer="mindaudio.decoding", imported=upper, as_packages=True), upper


def test_drop_apostrophes_scores_references_without_them_and_leaves_hypotheses_alone(tiny, good, tmp_path):
    manifest = write_manifest(tmp_path / "good.json", good_entries(good))
    assert any("'" in text for _, _, text in good)  # HE'S
    reports = {}
    for drop in (False, True):
        config = evaluation_config(tiny, manifest, tmp_path / f"report_{drop}")
        config.drop_apostrophes = drop
        reports[drop], _ = run_evaluation(config, progress=False, out=io.StringIO())
    kept, dropped = reports[False].utterances, reports[True].utterances
    assert any("'" in row["reference"] for row in kept)
    assert [row["reference"] for row in dropped] == [row["reference"].replace("'", "") for row in kept]
    # The model's output is scored as it is: an apostrophe it emits stays (random weights emit many).
    assert [row["hypothesis"] for row in dropped] == [row["hypothesis"] for row in kept]
    assert any("'" in row["hypothesis"] for row in dropped)
