"""Training a streaming model: the fixed feature statistics come from the training manifest, stay
untouched by the optimizer, are saved in the checkpoint, and the trained model streams exactly."""
import numpy as np
import pytest

import mindaudio  # noqa: F401

from corpus import small_config_dict
from mindaudio.checkpoint import load_checkpoint
from mindaudio.config import config_from_dict
from mindaudio.data.audio import load_audio
from mindaudio.data.features import log_spectrogram
from mindaudio.data.librispeech import extracted_utterances
from mindaudio.data.manifest import write_manifest_with_transcripts
from mindaudio.data.statistics import manifest_statistics
from mindaudio.decoding.hypothesis import log_softmax
from mindaudio.streaming import build_streaming_recogniser

SHORT_IDS = ("1089-134686-0001", "1988-24833-0000")


@pytest.mark.slow
def test_trained_streaming_model_keeps_the_manifest_statistics_and_streams_exactly(librispeech_mini, tmp_path):
    import mindspore as ms
    from mindaudio.training.trainer import Trainer

    utterances = [u for u in extracted_utterances(librispeech_mini) if u[0] in SHORT_IDS]
    manifest = write_manifest_with_transcripts(tmp_path / "corpus", utterances)
    data = small_config_dict(manifest, tmp_path / "ckpt", SpectConfig={"normalisation": "fixed"},
                             ModelConfig={"hidden_size": 32, "hidden_layers": 1, "bidirectional": False,
                                          "lookahead_context": 4})
    config = config_from_dict(data)
    mean, std = manifest_statistics(str(manifest), config.SpectConfig)
    trainer = Trainer(config, progress=False)
    np.testing.assert_array_equal(trainer.model.feature_mean.asnumpy(), mean)
    lookahead_before = trainer.model.lookahead.weight.asnumpy().copy()
    result = trainer.run()

    values, _ = load_checkpoint(result.last_checkpoint)
    np.testing.assert_array_equal(values["feature_mean"].asnumpy(), mean)
    np.testing.assert_array_equal(values["feature_std"].asnumpy(), std)
    assert not np.array_equal(values["lookahead.weight"].asnumpy(), lookahead_before)  # it is trained

    recogniser = build_streaming_recogniser(config, result.last_checkpoint)
    signal = load_audio(utterances[0][1], 16000)
    for start in range(0, signal.size, 2560):
        recogniser.feed(signal[start:start + 2560])
    recogniser.finish()
    features = log_spectrogram(signal, config.SpectConfig)
    logits, _ = recogniser.model(ms.Tensor(features[None, None]), ms.Tensor(np.array([features.shape[1]], np.int32)))
    np.testing.assert_allclose(recogniser.log_probs, log_softmax(logits.asnumpy()[:, 0]), atol=1e-5)
