"""The leave-one-speaker-out driver of the digits recipe (scripts/digits_loso.py): its table, and one
real fold through scripts/run_digits.sh."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mindaudio.data.digits import prepare_digits
from mindaudio.data.manifest import read_manifest


def _load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


digits_loso = _load_script("digits_loso")


def test_table_has_a_row_per_speaker_the_mean_and_the_worst():
    results = {
        "george": {"greedy": {"wer": 30.0, "cer": 20.0}, "beam + LM": {"wer": 10.0, "cer": 8.0}},
        "theo": {"greedy": {"wer": 10.0, "cer": 5.0}, "beam + LM": {"wer": 12.0, "cer": 9.0}},
    }
    lines = digits_loso.format_table(results).splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert cells[2] == ["george", "30.0", "20.0", "10.0", "8.0"]
    assert cells[3] == ["theo", "10.0", "5.0", "12.0", "9.0"]
    assert cells[4] == ["**mean**", "20.0", "12.5", "11.0", "8.5"]
    # The worst speaker is chosen per decoder, by WER.
    assert cells[5] == ["**worst**", "30.0 (george)", "20.0", "12.0 (theo)", "9.0"]


def test_preparing_another_fold_leaves_no_transcript_of_the_old_one(repo_root, tmp_path):
    corpus = repo_root / "data" / "digits"
    prepare_digits(tmp_path, corpus, test_speakers=["george"], verbose=False)
    prepare_digits(tmp_path, corpus, test_speakers=["theo"], verbose=False)
    for split in ("train", "val", "test"):
        listed = {Path(u.audio_path).stem for u in
                  read_manifest(tmp_path / split / f"digits_{split}_manifest.json")}
        assert {p.stem for p in (tmp_path / split / "txt").glob("*.txt")} == listed
    assert not list((tmp_path / "train" / "txt").glob("*_theo_*.txt"))


@pytest.mark.slow
def test_one_fold_runs_the_recipe_and_tables_its_held_out_speaker(repo_root, tmp_path):
    """One epoch of the recipe with theo held out, end to end through run_digits.sh."""
    env = dict(os.environ, DS2_VENV=str(Path(sys.executable).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "scripts/digits_loso.py", "--speakers", "theo",
                           "--runs_dir", str(tmp_path / "runs"), "--data_dir", str(tmp_path / "data"),
                           "--TrainingConfig.epochs", "1"],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "theo"
    log = (run / "run.log").read_text()
    assert "6/6" in log and "held-out test speaker: theo" in log
    test = read_manifest(tmp_path / "data" / "theo" / "test" / "digits_test_manifest.json")
    assert {Path(u.audio_path).stem.split("_")[1] for u in test} == {"theo"} and len(test) == 500
    table = (tmp_path / "runs" / "loso_table.md").read_text().splitlines()
    theo = [cell.strip() for cell in table[2].strip("|").split("|")]
    for column, report in ((1, "digits_test_output.json"), (3, "digits_test_output_beam_lm.json")):
        rates = json.loads((run / report).read_text())["per_speaker"]["theo"]
        assert theo[column] == f"{rates['wer']:.1f}" and theo[column + 1] == f"{rates['cer']:.1f}"
    assert theo[0] == "theo" and table[2] in proc.stdout
