"""The MindSpore input pipeline on real LibriSpeech files: shapes, padding, lengths, labels."""
import json
import logging

import mindaudio  # noqa: F401  (sets the oneDNN ISA before mindspore is imported)
import numpy as np
import pytest
import soundfile

from mindaudio.config import DEFAULT_LABELS, SpectConfig
from mindaudio.data.dataset import (COLUMNS, FRAME_MARGIN, DatasetError, PaddedBatchSource,
                                    bucket_frames, build_dataset, duration_frames,
                                    label_pad_lengths, load_split, make_sampler)
from mindaudio.data.features import log_spectrogram
from mindaudio.data.sampler import Batch
from mindaudio.models.deepspeech2 import output_length
from mindaudio.data.text import CharTokenizer

SPECT = SpectConfig()
BOUNDARIES = [4.0, 8.0, 12.0]


def librispeech_entries(librispeech_dir):
    """(flac path, transcript) of every utterance, read straight from the trans.txt files."""
    entries = []
    for listing in sorted(librispeech_dir.glob("*/*/*/*.trans.txt")):
        for line in listing.read_text().splitlines():
            utterance_id, text = line.split(" ", 1)
            entries.append((listing.parent / f"{utterance_id}.flac", text))
    return entries


def write_json_lines(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def entries(librispeech_mini):
    found = librispeech_entries(librispeech_mini)
    assert len(found) == 14
    return found


@pytest.fixture(scope="module")
def manifest(entries, tmp_path_factory):
    path = tmp_path_factory.mktemp("manifest") / "mini.jsonl"
    return write_json_lines(path, [{"audio_filepath": str(audio), "text": text}
                                   for audio, text in entries])


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer(DEFAULT_LABELS)


def true_seconds(path):
    info = soundfile.info(str(path))
    return info.frames / info.samplerate


def reference_spectrogram(path):
    signal, rate = soundfile.read(str(path), dtype="float32")
    assert rate == SPECT.sample_rate
    return log_spectrogram(signal, SPECT)


def iterate(dataset):
    return list(dataset.create_dict_iterator(output_numpy=True, num_epochs=1))


# ---------------------------------------------------------------- pure helpers


def test_duration_frames_counts_centred_hops():
    # 16 kHz, 10 ms hop, centred frames: 1 + samples // 160.
    assert duration_frames(1.0, SPECT) == 101
    assert duration_frames(2.085, SPECT) == 1 + 33360 // 160
    assert bucket_frames([2.0, 4.0], SPECT) == (201 + FRAME_MARGIN, 401 + FRAME_MARGIN)


def test_label_pad_is_a_running_maximum_rounded_to_eight():
    buckets = [0, 0, 1, 2, 2, 3]
    lengths = [5, 17, 9, 30, 2, 1]
    # bucket 0 max 17 -> 24; bucket 1 max(17, 9) -> 24; bucket 2 -> 32; bucket 3 keeps 32;
    # bucket 4 is empty and still covers everything shorter.
    assert label_pad_lengths(buckets, lengths, 5) == (24, 24, 32, 32, 32)
    assert label_pad_lengths([0], [0], 1) == (8,)


# ---------------------------------------------------------------- load_split


def test_evaluation_split_keeps_everything(manifest, entries, tokenizer):
    split = load_split(manifest, tokenizer, SPECT, bucket_boundaries=BOUNDARIES)
    assert len(split.utterances) == len(entries)
    assert split.drops.total == 0
    longest = max(true_seconds(audio) for audio, _ in entries)
    assert split.edges == (4.0, 8.0, 12.0, pytest.approx(longest))
    assert [u.audio_path for u in split.utterances] == [str(audio) for audio, _ in entries]


def test_training_split_drops_and_counts(manifest, entries, tokenizer):
    max_duration = 10.0
    ctc_budget = 60  # output frames allowed whatever the length: drops the wordy utterances

    def needed_frames(text):
        return len(text) + sum(a == b for a, b in zip(text, text[1:]))

    expected_too_long = sum(true_seconds(audio) > max_duration for audio, _ in entries)
    expected_label = sum(true_seconds(audio) <= max_duration and needed_frames(text) > ctc_budget
                         for audio, text in entries)
    assert expected_too_long > 0 and expected_label > 0

    split = load_split(manifest, tokenizer, SPECT, bucket_boundaries=BOUNDARIES,
                       max_duration=max_duration, output_frames=lambda frames: ctc_budget)
    assert split.drops.too_long == expected_too_long
    assert split.drops.label_too_long == expected_label
    assert split.drops.empty_label == 0
    assert len(split.utterances) == len(entries) - expected_too_long - expected_label
    assert split.edges == (4.0, 8.0, 10.0)
    assert f"{split.drops.total} dropped" in split.summary()


def test_real_model_output_frames_keep_real_speech(manifest, entries, tokenizer):
    split = load_split(manifest, tokenizer, SPECT, bucket_boundaries=BOUNDARIES,
                       max_duration=30.0, output_frames=output_length)
    assert len(split.utterances) == len(entries)


def test_transcripts_are_normalised_and_digits_dropped_with_their_line(tmp_path, entries, tokenizer,
                                                                       caplog):
    (audio, _), (audio2, _), (audio3, _) = entries[:3]
    manifest = write_json_lines(tmp_path / "odd.jsonl", [
        {"audio_filepath": str(audio), "text": "café—au lait!"},
        {"audio_filepath": str(audio2), "text": "one 42 two"},
        {"audio_filepath": str(audio3), "text": "ZÉRO—ONE, don't"},
    ])
    with caplog.at_level(logging.WARNING, logger="mindaudio.data.dataset"):
        split = load_split(manifest, tokenizer, SPECT)
    assert split.references == ("CAFE AU LAIT", "ZERO ONE DON'T")
    assert [tokenizer.decode(label) for label in split.labels] == list(split.references)
    assert [u.audio_path for u in split.utterances] == [str(audio), str(audio3)]
    assert split.drops.digits == 1 and split.drops.total == 1
    assert split.unknown_chars == {"—": 2, "!": 1, ",": 1}
    assert "1 with digits in the transcript" in split.summary()
    warnings = [record.getMessage() for record in caplog.records]
    assert any("odd.jsonl, line 2" in message and "digits" in message for message in warnings)
    assert sum("is not a label" in message for message in warnings) == 3


def test_a_zero_sample_file_is_dropped_as_empty_audio_not_as_a_long_label(tmp_path, entries, tokenizer,
                                                                         caplog):
    empty = tmp_path / "empty.wav"
    soundfile.write(str(empty), np.zeros(0, np.int16), 16000, subtype="PCM_16")
    audio, text = entries[0]
    manifest = write_json_lines(tmp_path / "with_empty.jsonl", [
        {"audio_filepath": str(audio), "text": text}, {"audio_filepath": str(empty), "text": "HELLO"}])
    with caplog.at_level(logging.WARNING, logger="mindaudio.data.dataset"):
        split = load_split(manifest, tokenizer, SPECT, max_duration=30.0, output_frames=output_length)
    assert [u.audio_path for u in split.utterances] == [str(audio)]
    assert split.drops.empty_audio == 1 and split.drops.label_too_long == 0
    assert "1 with empty audio" in split.summary()
    assert any("with_empty.jsonl, line 2" in r.getMessage() and "empty.wav" in r.getMessage()
               for r in caplog.records)


def test_drop_apostrophes_reaches_targets_and_references(tmp_path, entries):
    audio, _ = entries[0]
    manifest = write_json_lines(tmp_path / "apostrophes.jsonl", [
        {"audio_filepath": str(audio), "text": "DON'T YOU KNOW IT'S TRUE"}])
    kept = load_split(manifest, CharTokenizer(DEFAULT_LABELS), SPECT)
    dropped = load_split(manifest, CharTokenizer(DEFAULT_LABELS, drop_apostrophes=True), SPECT)
    assert kept.references == ("DON'T YOU KNOW IT'S TRUE",)
    assert dropped.references == ("DONT YOU KNOW ITS TRUE",)
    assert 0 in kept.labels[0] and 0 not in dropped.labels[0]  # id 0: the apostrophe
    assert len(dropped.labels[0]) == len(kept.labels[0]) - 2


@pytest.mark.parametrize("text", [None, 3, ["A"]])
def test_a_non_string_transcript_is_a_manifest_error_naming_the_line(tmp_path, entries, tokenizer, text):
    from mindaudio.data.manifest import ManifestError
    audio, good = entries[0]
    manifest = write_json_lines(tmp_path / "typed.jsonl", [
        {"audio_filepath": str(audio), "text": good}, {"audio_filepath": str(audio), "text": text}])
    with pytest.raises(ManifestError, match=r"typed\.jsonl, line 2: 'text' must be a string"):
        load_split(manifest, tokenizer, SPECT)


def test_a_split_with_nothing_left_is_an_error(tmp_path, entries, tokenizer):
    audio, _ = entries[0]
    manifest = write_json_lines(tmp_path / "empty.jsonl",
                                [{"audio_filepath": str(audio), "text": "1234"}])
    with pytest.raises(DatasetError, match="empty.jsonl: all 1 utterances were dropped"):
        load_split(manifest, tokenizer, SPECT, max_duration=30.0,
                   output_frames=output_length)


# ---------------------------------------------------------------- batches


@pytest.fixture(scope="module")
def eval_batches(manifest, tokenizer):
    split = load_split(manifest, tokenizer, SPECT, bucket_boundaries=BOUNDARIES)
    batches = make_sampler(split, 4, train=False).batches(0)
    return split, batches, iterate(build_dataset(split, SPECT, batches, tokenizer.blank_id))


def test_batches_have_bucket_shapes_and_dtypes(eval_batches, tokenizer):
    split, batches, rows = eval_batches
    assert len(rows) == len(batches)
    for batch, row in zip(batches, rows):
        assert list(row) == list(COLUMNS)
        size = len(batch.indices)
        label_pad = split.label_pad[batch.bucket]
        assert row["features"].shape == (size, 1, 161, split.bucket_frames[batch.bucket])
        assert row["features"].dtype == np.float32
        assert row["labels"].shape == (size, label_pad)
        for column in ("feature_lengths", "labels", "label_lengths", "indices"):
            assert row[column].dtype == np.int32
        assert row["indices"].tolist() == list(batch.indices)


def test_features_equal_the_direct_spectrogram_and_are_zero_padded(eval_batches):
    split, _, rows = eval_batches
    seen = []
    for row in rows:
        for features, length, index in zip(row["features"], row["feature_lengths"],
                                           row["indices"]):
            reference = reference_spectrogram(split.utterances[index].audio_path)
            assert length == reference.shape[1]
            np.testing.assert_array_equal(features[0, :, :length], reference)
            assert not features[0, :, length:].any()
            seen.append(int(index))
    assert sorted(seen) == list(range(len(split.utterances)))


def test_labels_decode_to_the_transcripts(eval_batches, entries, tokenizer):
    split, _, rows = eval_batches
    transcripts = {str(audio): text for audio, text in entries}
    for row in rows:
        for labels, length, index in zip(row["labels"], row["label_lengths"], row["indices"]):
            audio_path = split.utterances[index].audio_path
            assert tokenizer.decode(labels[:length]) == transcripts[audio_path]
            assert (labels[length:] == tokenizer.blank_id).all()


def test_parallel_workers_give_the_same_batches_in_order(manifest, tokenizer):
    split = load_split(manifest, tokenizer, SPECT, bucket_boundaries=BOUNDARIES,
                       max_duration=20.0)
    batches = make_sampler(split, 3, train=True, seed=5).batches(2)[:4]
    serial = iterate(build_dataset(split, SPECT, batches, tokenizer.blank_id, num_workers=1))
    for multiprocessing in (False, True):
        parallel = iterate(build_dataset(split, SPECT, batches, tokenizer.blank_id,
                                         num_workers=2, multiprocessing=multiprocessing))
        assert len(parallel) == len(serial)
        for one, other in zip(serial, parallel):
            for column in COLUMNS:
                np.testing.assert_array_equal(one[column], other[column])


@pytest.fixture(scope="module")
def poisoned(entries, tmp_path_factory):
    """A manifest of 4 good utterances and 3 bad ones: undecodable, NaN samples, and a real
    length far beyond the manifest's duration. Returns (manifest, {bad path: reason fragment})."""
    folder = tmp_path_factory.mktemp("poisoned")
    rows = [{"audio_filepath": str(audio), "text": text} for audio, text in entries[:4]]
    corrupt = folder / "corrupt.flac"
    corrupt.write_bytes(b"this is not a flac file" * 50)
    signal, rate = soundfile.read(str(entries[4][0]), dtype="float32")
    signal[rate // 2] = np.nan
    nan_wav = folder / "nan.wav"
    soundfile.write(str(nan_wav), signal, rate, subtype="FLOAT")
    short = round(true_seconds(entries[5][0]) - 1.0, 2)  # the real audio is 1 s longer
    rows += [{"audio_filepath": str(corrupt), "text": "HELLO", "duration": 1.5},
             {"audio_filepath": str(nan_wav), "text": entries[4][1]},
             {"audio_filepath": str(entries[5][0]), "text": entries[5][1], "duration": short}]
    reasons = {str(corrupt): "", str(nan_wav): "NaN or infinite",
               str(entries[5][0]): f"differs from the manifest's duration {short:.3f} s"}
    return write_json_lines(folder / "poisoned.jsonl", rows), reasons


@pytest.mark.parametrize("workers", [1, 2, 64])  # 64: more than this machine has, clamped
def test_bad_audio_fills_its_row_with_nan_and_is_named_never_ending_the_epoch(poisoned, tokenizer,
                                                                              workers):
    manifest, reasons = poisoned
    split = load_split(manifest, tokenizer, SPECT, bucket_boundaries=[2.0, 8.0, 20.0],
                       max_duration=30.0, output_frames=output_length)
    assert len(split.utterances) == 7
    batches = make_sampler(split, 2, train=True, seed=3).batches(0)
    dataset = build_dataset(split, SPECT, batches, tokenizer.blank_id, num_workers=workers)
    rows = iterate(dataset)
    assert len(rows) == len(batches)  # every batch arrives, in the planned shapes
    seen = set()
    for batch, row in zip(batches, rows):
        assert row["features"].shape[0] == len(batch.indices)
        for features, length, label_length, index in zip(row["features"], row["feature_lengths"],
                                                         row["label_lengths"], row["indices"]):
            path = split.utterances[index].audio_path
            seen.add(path)
            assert 0 < length <= batch.frames and label_length == len(split.labels[index])
            if path in reasons:
                assert np.isnan(features).all(), path
            else:
                reference = reference_spectrogram(path)
                np.testing.assert_array_equal(features[0, :, :length], reference)
                assert not features[0, :, length:].any()
    assert len(seen) == 7
    named = dict(split.problems.items())
    assert set(named) == set(reasons) and dataset.problems is split.problems
    for path, fragment in reasons.items():
        assert fragment in named[path]
    assert "corrupt.flac" in split.summary() and "3 unusable audio file(s)" in split.summary()
    # A second epoch meets the same files again: each stays recorded once.
    iterate(build_dataset(split, SPECT, make_sampler(split, 2, train=True, seed=3).batches(1),
                          tokenizer.blank_id))
    assert len(split.problems) == 3


def test_the_problem_log_survives_pickling_for_worker_processes(poisoned, tokenizer):
    import pickle
    manifest, reasons = poisoned
    split = load_split(manifest, tokenizer, SPECT)
    source = PaddedBatchSource(split, SPECT, make_sampler(split, 7, train=False).batches(0),
                               tokenizer.blank_id)
    source[0]
    copy = pickle.loads(pickle.dumps(source))
    assert copy.problems.items() == split.problems.items() and len(copy.problems) == 3
    copy.problems.record("elsewhere.wav", "why")
    assert len(split.problems) == 3  # the copy is a worker's own


def test_audio_a_little_off_its_duration_is_accepted(tmp_path, entries, tokenizer):
    audio, text = entries[0]
    manifest = write_json_lines(tmp_path / "close.jsonl", [
        {"audio_filepath": str(audio), "text": text, "duration": round(true_seconds(audio), 2) - 0.01}])
    split = load_split(manifest, tokenizer, SPECT)
    features = PaddedBatchSource(split, SPECT, make_sampler(split, 1, train=False).batches(0),
                                 tokenizer.blank_id)[0][0]
    assert np.isfinite(features).all() and len(split.problems) == 0


def test_empty_plan_is_an_error(manifest, tokenizer):
    split = load_split(manifest, tokenizer, SPECT)
    with pytest.raises(DatasetError, match="no batches"):
        build_dataset(split, SPECT, [], tokenizer.blank_id)


def test_source_pads_labels_with_blank_for_a_handmade_batch(manifest, entries, tokenizer):
    split = load_split(manifest, tokenizer, SPECT, bucket_boundaries=BOUNDARIES)
    last = len(split.edges) - 1
    batch = Batch((0, 1), last, split.bucket_frames[last])
    features, feature_lengths, labels, label_lengths, indices = PaddedBatchSource(
        split, SPECT, [batch], tokenizer.blank_id)[0]
    assert indices.tolist() == [0, 1]
    for row in range(2):
        text = entries[row][1]
        assert label_lengths[row] == len(text)
        assert tokenizer.decode(labels[row, :len(text)]) == text
        assert (labels[row, len(text):] == len(DEFAULT_LABELS) - 1).all()
        assert feature_lengths[row] == reference_spectrogram(entries[row][0]).shape[1]
