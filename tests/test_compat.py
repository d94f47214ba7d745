"""The original's scheme as a configuration: fixed 1250/3500-frame padding, cropping, unmasked LSTM."""
import json

import mindaudio  # noqa: F401  (sets the oneDNN ISA before mindspore is imported)
import numpy as np
import pytest
import soundfile

import mindspore as ms

from mindaudio.cli import parse_command_line
from mindaudio.config import Config, ConfigError, config_from_dict, load_config
from mindaudio.data.dataset import PaddedBatchSource, load_split, make_sampler
from mindaudio.data.features import log_spectrogram
from mindaudio.models.deepspeech2 import output_length
from mindaudio.data.text import CharTokenizer
from mindaudio.models.build import build_model

COMPAT_FLAGS = ["--TrainingConfig.fixed_frames", "1250", "--EvalConfig.fixed_frames", "3500",
                "--ModelConfig.masked", "false"]


@pytest.fixture(scope="module")
def manifest(librispeech_mini, tmp_path_factory):
    rows = []
    for listing in sorted(librispeech_mini.glob("*/*/*/*.trans.txt")):
        for line in listing.read_text().splitlines():
            utterance_id, text = line.split(" ", 1)
            rows.append({"audio_filepath": str(listing.parent / f"{utterance_id}.flac"), "text": text})
    path = tmp_path_factory.mktemp("compat") / "mini.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def config():
    return config_from_dict({})


@pytest.fixture(scope="module")
def tokenizer(config):
    return CharTokenizer(config.labels)


def spectrogram_of(path, spect):
    signal, rate = soundfile.read(str(path), dtype="float32")
    assert rate == spect.sample_rate
    return log_spectrogram(signal, spect)


def test_the_recipe_yaml_scores_as_the_original_and_the_defaults_are_ours(repo_root):
    # deepspeech2.yaml is the original's recipe, used with its published checkpoint: the model
    # computes as the original's and evaluation pads to 3500 frames as the original's did, while
    # training never crops. Without the yaml (configs/digits.yaml, a Config()) the padding-exact
    # model and length buckets are the defaults.
    config = load_config(str(repo_root / "deepspeech2.yaml"))
    assert config.TrainingConfig.fixed_frames == 0
    assert config.EvalConfig.fixed_frames == 3500
    assert config.ModelConfig.masked is False
    defaults = Config()
    assert defaults.ModelConfig.masked is True
    assert (defaults.TrainingConfig.fixed_frames, defaults.EvalConfig.fixed_frames) == (0, 0)
    assert load_config(str(repo_root / "configs" / "digits.yaml")).ModelConfig.masked is True


def test_compat_flags_select_the_original_scheme(repo_root):
    config, _ = parse_command_line(["-c", str(repo_root / "deepspeech2.yaml")] + COMPAT_FLAGS, "test")
    assert (config.TrainingConfig.fixed_frames, config.EvalConfig.fixed_frames) == (1250, 3500)
    assert config.ModelConfig.masked is False
    model = build_model(config, seed=0)
    assert model.masked is False
    assert all(layer.masked is False for layer in model.RNN.lstms)


@pytest.mark.parametrize("key", ["TrainingConfig", "EvalConfig"])
def test_negative_fixed_frames_is_an_error_naming_the_key(key):
    with pytest.raises(ConfigError, match=f"{key}.fixed_frames"):
        config_from_dict({key: {"fixed_frames": -1}}, source="compat.yaml")


def test_fixed_training_frames_pad_every_batch_and_crop_longer_clips(manifest, config, tokenizer):
    spect = config.SpectConfig
    frames = 300  # 3 s: most of the real clips are longer and must be cropped
    split = load_split(manifest, tokenizer, spect, bucket_boundaries=[4.0, 8.0],
                       max_duration=35.0, fixed_frames=frames)
    assert split.bucket_frames == (frames,) and len(split.edges) == 1
    batches = make_sampler(split, 4, train=True, seed=1).batches(1)
    source = PaddedBatchSource(split, spect, batches, tokenizer.blank_id)
    cropped = 0
    for item, batch in enumerate(batches):
        features, lengths, labels, label_lengths, indices = source[item]
        assert features.shape[3] == frames
        again = source[item][0]
        np.testing.assert_array_equal(features, again)  # the random crop is reproducible
        for row, index in enumerate(indices):
            full = spectrogram_of(split.utterances[index].audio_path, spect)
            length = int(lengths[row])
            assert length == min(full.shape[1], frames)
            window = features[row, 0, :, :length]
            if full.shape[1] > frames:
                cropped += 1
                # The crop is a contiguous window of the whole clip's (normalised) spectrogram.
                offsets = [o for o in range(full.shape[1] - frames + 1)
                           if np.array_equal(full[:, o:o + frames], window)]
                assert len(offsets) == 1
            else:
                np.testing.assert_array_equal(window, full)
                assert not features[row, 0, :, length:].any()
            # The transcript is kept whole, as in the original.
            assert label_lengths[row] == len(split.labels[index])
            assert tokenizer.decode(labels[row, :label_lengths[row]]) == tokenizer.decode(split.labels[index])
    assert cropped >= 5


def test_ctc_fit_check_uses_the_cropped_length(manifest, config, tokenizer):
    spect = config.SpectConfig
    whole = load_split(manifest, tokenizer, spect, max_duration=35.0,
                       output_frames=output_length)
    cropped = load_split(manifest, tokenizer, spect, max_duration=35.0,
                         output_frames=output_length, fixed_frames=100)
    # 100 frames give 50 output frames: every real transcript here is longer than 50 labels.
    longest_fit = max(len(label) for label in cropped.labels)
    assert longest_fit <= 50
    assert whole.drops.label_too_long == 0
    assert cropped.drops.label_too_long == len(whole.utterances) - len(cropped.utterances) > 0


def test_fixed_evaluation_frames_pad_everything_without_cropping(manifest, config, tokenizer):
    spect = config.SpectConfig
    split = load_split(manifest, tokenizer, spect, bucket_boundaries=[4.0, 8.0], fixed_frames=3500)
    batches = make_sampler(split, 5, train=False).batches(0)
    source = PaddedBatchSource(split, spect, batches, tokenizer.blank_id)
    seen = []
    for item in range(len(batches)):
        features, lengths, _, _, indices = source[item]
        assert features.shape[3] == 3500
        for row, index in enumerate(indices):
            full = spectrogram_of(split.utterances[index].audio_path, spect)
            assert lengths[row] == full.shape[1]
            np.testing.assert_array_equal(features[row, 0, :, :lengths[row]], full)
            assert not features[row, 0, :, lengths[row]:].any()
            seen.append(int(index))
    assert sorted(seen) == list(range(len(split.utterances)))


def test_unmasked_model_depends_on_padding_as_the_original_did(config):
    """The compat model's logits for an utterance change with the padding after it; ours do not."""
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    rng = np.random.default_rng(0)
    frames, extra = 60, 40
    utterance = rng.standard_normal((1, 1, 161, frames)).astype(np.float32)
    padded = np.concatenate([utterance, np.zeros((1, 1, 161, extra), np.float32)], axis=3)
    lengths = ms.Tensor(np.array([frames], np.int32))
    out_frames = (frames - 1) // 2 + 1
    difference = {}
    for masked in (True, False):
        small = config_from_dict({"ModelConfig": {"hidden_size": 16, "hidden_layers": 1,
                                                  "masked": masked}})
        model = build_model(small, seed=3)
        model.set_train(False)
        short, _ = model(ms.Tensor(utterance), lengths)
        long, _ = model(ms.Tensor(padded), lengths)
        difference[masked] = float(np.abs(short.asnumpy()[:out_frames]
                                          - long.asnumpy()[:out_frames]).max())
    assert difference[True] < 1e-4
    assert difference[False] > 1e-3


def test_the_original_text_handling_is_on_in_the_recipe_and_off_for_the_digits(repo_root):
    recipe = CharTokenizer.from_config(load_config(str(repo_root / "deepspeech2.yaml")))
    digits = CharTokenizer.from_config(load_config(str(repo_root / "configs" / "digits.yaml")))
    assert recipe.normalise("Don't stop").text == "DONT STOP"  # scored as the published 10.24
    assert recipe.drop_apostrophes and not digits.drop_apostrophes


def test_compat_features_pad_the_edges_with_zeros(manifest):
    # A signal of silence then a tone: zero padding keeps the first frame quiet, while reflection
    # would mirror the signal's start into it. Zero padding is what the original computed.
    rate = 16000
    signal = np.zeros(rate, np.float32)
    signal[160:] = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate - 160) / rate)
    spect = config_from_dict({}).SpectConfig
    features = log_spectrogram(signal, spect)
    padded = np.pad(signal, 160)  # zeros
    first = np.log1p(np.abs(np.fft.rfft(padded[:320] * np.hanning(321)[:-1])))
    whole = np.log1p(np.abs(np.stack([np.fft.rfft(padded[i:i + 320] * np.hanning(321)[:-1])
                                      for i in range(0, len(padded) - 319, 160)], axis=1)))
    np.testing.assert_allclose(features[:, 0], (first - whole.mean()) / whole.std(), atol=1e-4)
