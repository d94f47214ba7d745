"""bench/librispeech_scale.py at a small size: its manifests hold what the length list says, its
measurements describe the pipeline they ran (the first batch is the planned one, real audio of the
listed lengths, plans cover every utterance), and its growth fit tells linear from quadratic.
No timing is asserted."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import librispeech_scale as scale  # noqa: E402
from bench import workloads  # noqa: E402

LISTING = REPO_ROOT / "data" / "reference" / "librispeech_lengths"
SIZE = 400


def _listing():
    """id -> (duration s, transcript), read here independently of the bench."""
    rows = (LISTING / "train-clean-5.tsv").read_text(encoding="utf-8").splitlines()[1:]
    texts = (LISTING / "train-clean-5.transcripts.txt").read_text(encoding="utf-8").splitlines()
    assert len(rows) == len(texts) == 1519
    return {row.split("\t")[0]: (float(row.split("\t")[1]), text) for row, text in zip(rows, texts)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return scale.write_corpus(tmp_path_factory.mktemp("scale"))


@pytest.fixture(scope="module")
def manifest(corpus):
    return scale.write_scale_manifest(corpus, SIZE, seed=0)


def test_manifest_repeats_listed_utterances_with_their_durations_and_transcripts(corpus, manifest):
    from mindaudio.data.manifest import read_manifest

    listing = _listing()
    document = json.loads(manifest.read_text(encoding="utf-8"))
    assert Path(document["root_path"]) == corpus.resolve()
    utterances = read_manifest(manifest)
    assert len(utterances) == SIZE
    for utterance in utterances:
        duration, text = listing[utterance.id]
        assert utterance.duration == duration
        assert utterance.transcript == text
        assert Path(utterance.audio_path) == corpus.resolve() / "wav" / f"{utterance.id}.wav"
    # Draws with replacement from the whole list: repeats, and more than a handful of ids.
    ids = [utterance.id for utterance in utterances]
    assert len(set(ids)) < SIZE
    assert len(set(ids)) > SIZE // 4
    # Seeded: the same size and seed give the same manifest, another seed another one.
    assert scale.draws(SIZE, 0).tolist() == scale.draws(SIZE, 0).tolist()
    assert scale.draws(SIZE, 0).tolist() != scale.draws(SIZE, 1).tolist()


def test_measure_size_runs_the_pipeline_it_reports(manifest):
    listing = _listing()
    result = scale.measure_size(manifest, batch_size=16, batch_frames=4000, num_workers=1)
    assert result["utterances"] + result["dropped"] == SIZE
    assert result["dropped"] == 0  # train-clean-5 lasts 1.87-17.3 s, all labelled
    hours = sum(listing[Path(json.loads(line.rstrip(",\n"))["wav_path"]).stem][0]
                for line in manifest.read_text(encoding="utf-8").splitlines()[2:-1]) / 3600.0
    assert math.isclose(result["audio_hours"], hours, rel_tol=1e-12)

    # The first batch out of the dataset is the planned one: SortaGrad's shortest (at most 16: the
    # shortest bucket may hold fewer), real audio of the listed length (a placeholder left empty
    # would give a NaN row).
    assert result["first_batch_indices"] == result["first_batch_planned"]
    assert result["first_batch_finite"]
    assert 1 <= result["first_batch_shape"][0] == len(result["first_batch_indices"]) <= 16
    assert result["first_batch_shape"][3] == result["first_batch_frames"]
    from mindaudio.data.manifest import read_manifest

    utterances = read_manifest(manifest)
    durations = np.array([u.duration for u in utterances])
    first = result["first_batch_indices"]
    assert sorted(durations[first]) == sorted(np.sort(durations)[:len(first)])
    for index, frames in zip(first, result["first_batch_feature_lengths"]):
        samples = soundfile.info(utterances[index].audio_path).frames
        assert samples == round(durations[index] * workloads.SAMPLE_RATE)
        # 10 ms hop, centred frames: samples // 160 + 1.
        assert frames == samples // 160 + 1
    for index, length in zip(first, result["first_batch_label_lengths"]):
        assert 0 < length <= len(utterances[index].transcript)

    # Both plans hold every utterance once; the frame plan keeps each batch within the budget.
    assert result["count_plan_covers_all"] and result["frames_plan_covers_all"]
    assert result["count_plan_max_batch"] == 16
    assert result["batches_count"] >= math.ceil(SIZE / 16)
    assert result["frames_plan_max_padded"] <= 4000
    assert 1 <= result["shapes_count"] <= result["batches_count"]
    assert 1 <= result["shapes_frames"] <= result["batches_frames"]
    for key in ("load_cpu_s", "sampler_cpu_s", "first_batch_cpu_s", "plan_count_cpu_s",
                "plan_frames_cpu_s"):
        assert result[key] >= 0
    assert result["first_batch_cpu_s"] >= result["load_cpu_s"]
    assert result["peak_mb"] >= result["held_mb"] - 1.0  # sampled peak: one page-count apart at most


def test_growth_exponent_tells_linear_from_quadratic():
    sizes = [1000, 2000, 4000, 8000]
    assert scale.growth_exponent(sizes, [3.0 * n for n in sizes]) == pytest.approx(1.0)
    assert scale.growth_exponent(sizes, [1e-6 * n * n for n in sizes]) == pytest.approx(2.0)
    assert scale.growth_exponent(sizes, [n * math.log(n) for n in sizes]) < scale.SLOPE_LIMIT
    # A fixed cost plus a linear one grows more slowly than linearly.
    assert scale.growth_exponent(sizes, [500 + n for n in sizes]) < 1.0
    assert scale.growth_exponent(sizes[:1], [1.0]) is None
    assert scale.growth_exponent(sizes[:2], [0.0, 1.0]) is None


def test_table_marks_superlinear_figures_fail():
    sizes = [1000, 2000, 4000, 8000]
    results = []
    for n in sizes:
        row = {key: 1e-3 * n for _, key, _, _ in scale.FIGURES}
        row["plan_count_cpu_s"] = 1e-7 * n * n  # quadratic
        row.update(size=n, utterances=n, audio_hours=n / 300.0, batches_count=n // 64,
                   batches_frames=n // 60, shapes_count=20, shapes_frames=13)
        results.append(row)
    lines = scale.table(results)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert rows["plan an epoch, batch 64 (s)"].endswith("| 2.00 | FAIL |")
    assert rows["load_split (s)"].endswith("| 1.00 | PASS |")
    assert sum(line.endswith("| FAIL |") for line in lines) == 1
