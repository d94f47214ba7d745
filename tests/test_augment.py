"""Training-time augmentation on real LibriSpeech audio: SpecAugment bounds, speed, gain, noise SNR,
reproducibility, and that switching it off (or evaluating) changes nothing."""
import math

import mindaudio  # noqa: F401  (sets the oneDNN ISA before mindspore is imported)
from pathlib import Path

import numpy as np
import pytest
import soundfile

from corpus import small_config_dict
from mindaudio.config import DEFAULT_LABELS, AugmentationConfig, ConfigError, SpectConfig, config_from_dict
from mindaudio.data.augment import (AugmentError, Augmentation, NoiseBank, SpecAugmentPolicy, apply_gain,
                                    draw_masks, list_noise_files, mix_at_snr, snr_of_noise_level,
                                    spec_augment, speed_perturb, vtlp_source_positions, vtlp_warp)
from mindaudio.data.dataset import (DatasetError, PaddedBatchSource, bucket_frames, build_dataset,
                                    load_split, make_sampler)
from mindaudio.data.features import log_spectrogram, num_frames
from mindaudio.data.rules import check_data_config
from mindaudio.data.librispeech import extracted_utterances
from mindaudio.data.manifest import write_manifest_with_transcripts
from mindaudio.data.sampler import Batch
from mindaudio.data.text import CharTokenizer

SPECT = SpectConfig()
RATE = SPECT.sample_rate
BOUNDARIES = [4.0, 8.0, 12.0]
# Four short utterances of three speakers (2.7-5.5 s).
SHORT_IDS = ("1089-134686-0001", "1089-134686-0037", "1988-24833-0000", "1988-24833-0001")


@pytest.fixture(scope="module")
def utterances(librispeech_mini):
    found = [u for u in extracted_utterances(librispeech_mini) if u[0] in SHORT_IDS]
    assert len(found) == len(SHORT_IDS)
    return found


@pytest.fixture(scope="module")
def manifest(utterances, tmp_path_factory):
    return write_manifest_with_transcripts(tmp_path_factory.mktemp("corpus"), utterances)


@pytest.fixture(scope="module")
def speech(utterances):
    signal, rate = soundfile.read(str(utterances[0][1]), dtype="float32")
    assert rate == RATE
    return signal


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory, librispeech_mini):
    """Real files of two kinds: 8 kHz coloured noise (resampled when drawn, shorter than most
    utterances so it must repeat) and a 16 kHz FLAC of real speech from a speaker outside
    SHORT_IDS (babble)."""
    directory = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(7)
    hum = np.cumsum(rng.normal(size=8000 * 2)).astype(np.float32)
    hum = 0.05 * (hum - hum.mean()) / np.abs(hum - hum.mean()).max()
    soundfile.write(str(directory / "brown_8k.wav"), hum, 8000, subtype="PCM_16")
    (directory / "sub").mkdir()
    babble = sorted(librispeech_mini.glob("train-clean-100/*/*/*.flac"))[0]
    signal, rate = soundfile.read(str(babble), dtype="float32")
    soundfile.write(str(directory / "sub" / "babble.flac"), signal, rate)
    (directory / "readme.txt").write_text("not audio")
    return directory


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer(DEFAULT_LABELS)


def augmentation(seed=5, **keys) -> Augmentation:
    aug = Augmentation.from_config(AugmentationConfig(**keys), RATE, seed)
    assert aug is not None
    return aug


def items(source, order=None):
    order = range(len(source)) if order is None else order
    return {i: source[i] for i in order}


def snr_db(clean, mixed) -> float:
    """Independent measurement: clean energy over the energy of what was added, in dB."""
    clean = np.asarray(clean, dtype=np.float64)
    added = np.asarray(mixed, dtype=np.float64) - clean
    return 10.0 * math.log10(np.sum(clean ** 2) / np.sum(added ** 2))


# ---------------------------------------------------------------- off means off


def test_augmentation_off_is_none_and_features_are_bit_identical(manifest, utterances, tokenizer, noise_dir):
    assert Augmentation.from_config(AugmentationConfig(), RATE, 1) is None
    # The original yaml's values (noise_prob 0.4 but no noise_dir) and a noise_dir with
    # noise_prob 0 are off too.
    assert Augmentation.from_config(AugmentationConfig(noise_dir="", noise_prob=0.4), RATE, 1) is None
    assert Augmentation.from_config(AugmentationConfig(noise_dir=str(noise_dir), noise_prob=0.0), RATE, 1) is None

    split = load_split(manifest, tokenizer, SPECT, bucket_boundaries=BOUNDARIES, max_duration=17.0)
    assert split.bucket_frames == bucket_frames(split.edges, SPECT)
    batches = make_sampler(split, 2, train=True, seed=3).batches(1)
    dataset = build_dataset(split, SPECT, batches, tokenizer.blank_id, augmentation=None, epoch=1)
    paths = {str(Path(u.audio_path).resolve()): u.audio_path for u in utterances}
    for batch in dataset.create_dict_iterator(output_numpy=True, num_epochs=1):
        for row, index in enumerate(batch["indices"]):
            audio = paths[split.utterances[index].audio_path]
            reference = log_spectrogram(soundfile.read(str(audio), dtype="float32")[0], SPECT)
            length = batch["feature_lengths"][row]
            assert length == reference.shape[1]
            np.testing.assert_array_equal(batch["features"][row, 0, :, :length], reference)
            assert not batch["features"][row, 0, :, length:].any()


# ---------------------------------------------------------------- SpecAugment


def test_spec_augment_masks_stay_inside_the_true_length_and_the_bounds():
    policy = SpecAugmentPolicy(freq_masks=2, freq_mask_width=27, time_masks=3, time_mask_width=40,
                               time_mask_max_fraction=0.2)
    rng = np.random.default_rng(0)
    widest_time, widest_freq = 0, 0
    for length in (0, 1, 7, 50, 137, 600):
        cap = min(40, int(0.2 * length))
        for _ in range(300):
            freq_spans, time_spans = draw_masks(161, length, policy, rng)
            assert len(freq_spans) == 2 and len(time_spans) == 3
            for start, width in freq_spans:
                assert 0 <= width <= 27 and 0 <= start and start + width <= 161
                widest_freq = max(widest_freq, width)
            for start, width in time_spans:
                assert 0 <= width <= cap and 0 <= start and start + width <= length
                if length == 600:
                    widest_time = max(widest_time, width)
    # The bounds are reached, not just respected.
    assert widest_freq == 27 and widest_time == 40


def test_spec_augment_leaves_padding_and_unmasked_values_alone():
    rng = np.random.default_rng(1)
    frames, length = 300, 220
    spectrogram = rng.normal(size=(161, frames)).astype(np.float32) + 5.0  # never 0 by chance
    policy = SpecAugmentPolicy(freq_masks=2, freq_mask_width=30, time_masks=2, time_mask_width=40,
                               time_mask_max_fraction=0.5)
    masked = spec_augment(spectrogram, policy, np.random.default_rng(2), length=length)
    assert masked.shape == spectrogram.shape
    np.testing.assert_array_equal(masked[:, length:], spectrogram[:, length:])
    zero = masked == 0.0
    np.testing.assert_array_equal(masked[~zero], spectrogram[~zero])
    # Every zero lies in a fully zeroed row or a fully zeroed column of the true length.
    rows = zero[:, :length].all(axis=1)
    cols = zero[:, :length].all(axis=0)
    assert np.array_equal(zero[:, :length], rows[:, None] | cols[None, :])
    assert rows.sum() <= 60 and cols.sum() <= 80
    assert rows.any() or cols.any()


def test_spec_augment_in_batches_zeroes_only_inside_each_utterance(manifest, tokenizer):
    split = load_split(manifest, tokenizer, SPECT, bucket_boundaries=BOUNDARIES, max_duration=17.0)
    batches = make_sampler(split, 2, train=True, seed=3).batches(2)
    aug = augmentation(spec_augment=True, time_mask_max_fraction=0.1)
    plain = items(PaddedBatchSource(split, SPECT, batches, tokenizer.blank_id))
    masked = items(PaddedBatchSource(split, SPECT, batches, tokenizer.blank_id, aug, epoch=2))
    for i in plain:
        for column in (1, 2, 3, 4):
            np.testing.assert_array_equal(masked[i][column], plain[i][column])
        for row, length in enumerate(plain[i][1]):
            before, after = plain[i][0][row, 0], masked[i][0][row, 0]
            changed = before != after
            assert changed.any()
            assert not changed[:, length:].any() and not after[:, length:].any()
            assert (after[changed] == 0).all()
            masked_columns = (after[:, :length] == 0).all(axis=0).sum()
            assert masked_columns <= 2 * min(40, int(0.1 * length))


# ---------------------------------------------------------------- speed and gain


def test_speed_changes_duration_and_pitch_by_the_factor(speech):
    for speed in (0.9, 1.1):
        out = speed_perturb(speech, speed, RATE)
        assert out.dtype == np.float32
        assert abs(out.size - speech.size / speed) <= 1
    # Independent check of what resampling does to content: a 1 kHz tone becomes 1.1 kHz.
    t = np.arange(RATE) / RATE
    tone = np.sin(2 * np.pi * 1000.0 * t).astype(np.float32)
    fast = speed_perturb(tone, 1.1, RATE)
    spectrum = np.abs(np.fft.rfft(fast * np.hanning(fast.size)))
    peak_hz = np.argmax(spectrum) * RATE / fast.size
    assert abs(peak_hz - 1100.0) < 2.0
    np.testing.assert_array_equal(speed_perturb(speech, 1.0, RATE), speech)


def test_gain_scales_amplitude_by_decibels(speech):
    louder = apply_gain(speech, 6.0)
    ratio = np.sqrt(np.sum(louder.astype(np.float64) ** 2) / np.sum(speech.astype(np.float64) ** 2))
    assert abs(20 * math.log10(ratio) - 6.0) < 1e-4


def test_speed_perturbed_batches_have_stretched_lengths_and_are_never_cropped(manifest, tokenizer, utterances):
    # The longest utterance sits at the top of its bucket: slowed to 0.9 it is longer than the
    # bucket's edge, and must still fit whole.
    slow = augmentation(speed_volume_perturb=True, speeds=[0.9])
    fast = augmentation(speed_volume_perturb=True, speeds=[1.1])
    longest = max(soundfile.info(str(u[1])).duration for u in utterances)
    edges = [longest]
    split = load_split(manifest, tokenizer, SPECT, bucket_boundaries=edges, max_duration=longest,
                       speed_range=(0.9, 1.1))
    assert split.bucket_frames == bucket_frames([longest / 0.9], SPECT)
    batches = [Batch((i,), 0, split.bucket_frames[0]) for i in range(len(split.utterances))]
    samples = [soundfile.info(u.audio_path).frames for u in split.utterances]
    for aug, speed in ((slow, 0.9), (fast, 1.1)):
        source = PaddedBatchSource(split, SPECT, batches, tokenizer.blank_id, aug, epoch=0)
        for i, count in enumerate(samples):
            lengths = source[i][1]
            assert lengths[0] == num_frames(int(round(count / speed)), SPECT)
    # A split whose buckets were not sized for the slowest speed is refused up front.
    unstretched = load_split(manifest, tokenizer, SPECT, bucket_boundaries=edges, max_duration=longest)
    with pytest.raises(DatasetError, match="speed_range"):
        PaddedBatchSource(unstretched, SPECT, batches, tokenizer.blank_id, slow)


def test_ctc_fit_check_allows_for_the_fastest_speed(utterances, tokenizer, tmp_path):
    from mindaudio.models.deepspeech2 import output_length

    utt_id, audio = utterances[0].id, utterances[0].audio_path  # 3.275 s: 328 frames, 163 CTC outputs at speed 1 (2-frame margin)
    samples = soundfile.info(str(audio)).frames
    at_speed = {speed: output_length(num_frames(int(round(samples / speed)), SPECT) - 2)
                for speed in (1.0, 1.1)}
    # A label without repeats needs one output frame per character: this one fits at speed 1
    # but not once the utterance is played 1.1 times faster.
    length = (at_speed[1.0] + at_speed[1.1]) // 2
    assert at_speed[1.1] < length <= at_speed[1.0]
    manifest = write_manifest_with_transcripts(tmp_path, [(utt_id, audio, ("AB" * length)[:length])])
    plain = load_split(manifest, tokenizer, SPECT, output_frames=output_length)
    assert len(plain.utterances) == 1
    with pytest.raises(DatasetError, match="dropped"):
        load_split(manifest, tokenizer, SPECT, output_frames=output_length, speed_range=(0.9, 1.1))


# ---------------------------------------------------------------- noise


def test_noise_mix_hits_the_requested_snr(speech, noise_dir):
    bank = NoiseBank.from_dir(str(noise_dir))
    assert len(bank) == 2
    rng = np.random.default_rng(3)
    for snr in (-5.0, 0.0, 6.0, 12.0, 20.0):
        noise = bank.segment(speech.size, RATE, rng)
        assert noise.shape == speech.shape and noise.dtype == np.float32
        assert abs(snr_db(speech, mix_at_snr(speech, noise, snr)) - snr) < 0.5
    assert snr_of_noise_level(0.5) == pytest.approx(6.0206, abs=1e-3)
    assert math.isinf(snr_of_noise_level(0.0))


def test_configured_noise_level_gives_its_snr_with_files_of_any_rate(speech, noise_dir):
    # noise_min == noise_max: every noisy utterance gets noise RMS = 0.25 x speech RMS (12.04 dB).
    aug = augmentation(noise_dir=str(noise_dir), noise_prob=1.0, noise_min=0.25, noise_max=0.25)
    for index in range(6):  # both files get drawn (the 8 kHz one repeats to cover the speech)
        noisy = aug.perturb_waveform(speech, aug.generators(0, index))
        assert noisy.shape == speech.shape
        assert abs(snr_db(speech, noisy) - 12.04) < 0.5
    # noise_prob is a probability per utterance.
    half = augmentation(noise_dir=str(noise_dir), noise_prob=0.5)
    short = speech[:4000]
    noisy = [not np.array_equal(half.perturb_waveform(short, half.generators(0, i)), short) for i in range(200)]
    assert 70 <= sum(noisy) <= 130


def test_missing_or_empty_noise_dir_is_an_error_naming_the_key(manifest, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here")
    for directory in (tmp_path / "missing", empty):
        data = small_config_dict(manifest, tmp_path / "ckpt",
                                 AugmentationConfig={"noise_dir": str(directory), "noise_prob": 0.4})
        with pytest.raises(ConfigError, match="AugmentationConfig.noise_dir"):
            check_data_config(config_from_dict(data, source="aug.yaml"))
        with pytest.raises(AugmentError, match=str(directory)):
            list_noise_files(str(directory))
    # Off (noise_prob 0): the directory is not needed.
    check_data_config(config_from_dict(small_config_dict(manifest, tmp_path / "ckpt", AugmentationConfig={
        "noise_dir": str(tmp_path / "missing"), "noise_prob": 0.0})))


@pytest.mark.parametrize("keys, bad", [
    ({"noise_min": 0.3, "noise_max": 0.1}, "noise_min"),
    ({"noise_prob": 1.5}, "noise_prob"),
    ({"speeds": []}, "speeds"),
    ({"speeds": [0.0, 1.0]}, "speeds"),
    ({"gain_min_db": 3.0, "gain_max_db": -3.0}, "gain_min_db"),
    ({"time_masks": -1}, "time_masks"),
    ({"time_mask_max_fraction": 0.0}, "time_mask_max_fraction"),
    ({"vtlp_min": 1.2, "vtlp_max": 1.1}, "vtlp_min"),
    ({"vtlp_min": 0.2}, "vtlp_min"),
])
def test_bad_augmentation_values_name_the_key(manifest, tmp_path, keys, bad):
    data = small_config_dict(manifest, tmp_path / "ckpt", AugmentationConfig=dict(keys, spec_augment=True))
    with pytest.raises(ConfigError, match=f"aug.yaml: AugmentationConfig.{bad}"):
        config_from_dict(data, source="aug.yaml")


# ---------------------------------------------------------------- VTLP


@pytest.mark.parametrize("alpha", [0.85, 0.9, 1.0, 1.1, 1.15])
def test_vtlp_warp_is_monotone_and_keeps_the_band_edges(alpha):
    source = vtlp_source_positions(41, alpha)
    assert source[0] == 0.0 and source[-1] == pytest.approx(40.0)
    assert np.all(np.diff(source) > 0)
    if alpha == 1.0:
        np.testing.assert_allclose(source, np.arange(41))


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_moves_a_tone_to_alpha_times_its_frequency(alpha):
    # A 1 kHz tone at 8 kHz, 20 ms Hamming frames: 81 bins of 50 Hz, peak on bin 20. Warped by
    # alpha, its peak (centroid of the five bins around the maximum) must sit at alpha kHz.
    time = np.arange(160) / 8000.0
    magnitude = np.abs(np.fft.rfft(np.sin(2 * np.pi * 1000.0 * time) * np.hamming(160)))
    magnitude = np.repeat(magnitude[:, None], 3, axis=1)  # (81 bins, 3 frames)
    warped = vtlp_warp(magnitude, alpha)

    def peak_hz(column):
        top = int(np.argmax(column))
        near = np.arange(max(top - 2, 0), top + 3)
        return float(np.sum(near * column[near]) / np.sum(column[near])) * 4000.0 / (column.size - 1)

    assert peak_hz(magnitude[:, 0]) == pytest.approx(1000.0, abs=15)
    assert peak_hz(warped[:, 0]) == pytest.approx(alpha * 1000.0, abs=20)
    assert warped.shape == magnitude.shape and warped.dtype == np.float32


def test_vtlp_in_training_features_draws_one_factor_per_utterance_from_its_own_stream(utterances):
    signal, _ = soundfile.read(str(utterances[0][1]), dtype="float32")
    plain = log_spectrogram(signal, SPECT)
    warped_aug = augmentation(vtlp=True, vtlp_min=0.9, vtlp_max=1.1, spec_augment=True)
    masked_only = augmentation(spec_augment=True)
    rngs = warped_aug.generators(epoch=2, index=7)
    alpha = float(np.random.default_rng([0x41554735, 5, 2, 7, 4]).uniform(0.9, 1.1))
    warp = warped_aug.magnitude_warp(rngs)
    features = log_spectrogram(signal, SPECT, magnitude_warp=warp)
    assert features.shape == plain.shape and not np.allclose(features, plain)
    from mindaudio.data.features import log_of_magnitude, magnitude_spectrogram, normalise
    expected = normalise(log_of_magnitude(vtlp_warp(magnitude_spectrogram(signal, SPECT), alpha), SPECT),
                         per_bin=not SPECT.original_compat)
    np.testing.assert_allclose(features, expected, atol=1e-5)
    # Switching VTLP on does not change SpecAugment's draws.
    np.testing.assert_array_equal(
        warped_aug.mask_spectrogram(plain, warped_aug.generators(2, 7)),
        masked_only.mask_spectrogram(plain, masked_only.generators(2, 7)))
    assert augmentation(spec_augment=True).magnitude_warp(rngs) is None


# ---------------------------------------------------------------- reproducibility


def test_same_seed_and_epoch_give_the_same_augmented_batches(manifest, tokenizer, noise_dir):
    keys = dict(speed_volume_perturb=True, spec_augment=True, noise_dir=str(noise_dir), noise_prob=0.5)
    split = load_split(manifest, tokenizer, SPECT, bucket_boundaries=BOUNDARIES, max_duration=17.0,
                       speed_range=augmentation(**keys).speed_range)
    sampler = make_sampler(split, 2, train=True, seed=3)
    batches = sampler.batches(1)

    def source(seed, epoch, start=0):
        return PaddedBatchSource(split, SPECT, batches[start:], tokenizer.blank_id,
                                 augmentation(seed, **keys), epoch)

    first = items(source(5, 1))
    again = items(source(5, 1), order=reversed(range(len(batches))))  # another worker order
    resumed = items(source(5, 1, start=1))  # a run resumed after batch 0
    for i in first:
        for a, b in zip(first[i], again[i]):
            np.testing.assert_array_equal(a, b)
    for i in resumed:
        for a, b in zip(first[i + 1], resumed[i]):
            np.testing.assert_array_equal(a, b)
    # Parallel workers through MindSpore give the same batches too.
    parallel = build_dataset(split, SPECT, batches, tokenizer.blank_id, num_workers=2,
                             augmentation=augmentation(5, **keys), epoch=1)
    for i, batch in enumerate(parallel.create_tuple_iterator(output_numpy=True, num_epochs=1)):
        np.testing.assert_array_equal(batch[0], first[i][0])
    # Another epoch or another seed draws differently.
    for other in (items(source(5, 2)), items(source(6, 1))):
        assert any(not np.array_equal(other[i][0], first[i][0]) for i in first)


# ---------------------------------------------------------------- training only


@pytest.mark.slow
def test_evaluation_never_augments_and_training_does(utterances, tmp_path, noise_dir):
    from mindaudio.evaluation import evaluate_split
    from mindaudio.training.trainer import Trainer

    # The two 3.3 s utterances: one bucket, one training step, one evaluation batch.
    manifest = write_manifest_with_transcripts(tmp_path, [u for u in utterances if u[0] in SHORT_IDS[::2]])

    strong = {"speed_volume_perturb": True, "spec_augment": True, "noise_dir": str(noise_dir),
              "noise_prob": 1.0, "noise_min": 1.0, "noise_max": 2.0, "time_mask_max_fraction": 1.0,
              "time_masks": 10}
    on = config_from_dict(small_config_dict(manifest, tmp_path / "on", manifest, AugmentationConfig=strong,
                                            CheckpointConfig={"resume": False}))
    off = config_from_dict(small_config_dict(manifest, tmp_path / "off", manifest,
                                             CheckpointConfig={"resume": False}))
    trainer = Trainer(on, progress=False)
    assert trainer.augmentation is not None and trainer.augmentation.speed_range == (0.9, 1.1)
    assert trainer.train_split.speed_range == (0.9, 1.1)
    assert trainer.val_split.speed_range == (1.0, 1.0)
    # The same model scores the validation split identically whatever the augmentation config.
    with_aug = evaluate_split(trainer.model, trainer.val_split, on, trainer.tokenizer, progress=False)
    without = evaluate_split(trainer.model, trainer.val_split, off, trainer.tokenizer, progress=False)
    assert with_aug.utterances == without.utterances
    assert any(row["hypothesis"] for row in without.utterances)  # a comparison of something
    trainer.model.set_train(True)
    # Training with every effect on runs and stays finite.
    result = trainer.run()
    assert result.state.global_step == 1 and result.state.skipped_steps == 0
