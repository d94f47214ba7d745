"""The tiny DeepSpeech2 configuration of the tests that train.

The bundled LibriSpeech sample (data/librispeech_mini) is read with `mindaudio.data.librispeech.extracted_utterances` and
written to manifests with `mindaudio.data.manifest.write_manifest_with_transcripts`.
"""
from pathlib import Path
from typing import Optional

# Four short LibriSpeech utterances (2.7-5.5 s) of the bundled sample: tests that train stay at
# seconds per step.
SHORT_IDS = ("1089-134686-0001", "1089-134686-0037", "1988-24833-0000", "1988-24833-0001")


def small_config_dict(train_manifest: Path, ckpt_dir: Path, val_manifest: Optional[Path] = None,
                      **sections) -> dict:
    """A tiny DeepSpeech2 (hidden 32, 1 layer) for fast tests; `sections` update keys per section."""
    data = {
        "TrainingConfig": {"epochs": 1, "batch_size": 2, "train_manifest": str(train_manifest),
                           "val_manifest": str(val_manifest or ""), "seed": 3, "num_workers": 1,
                           "bucket_boundaries": [4.0, 8.0, 12.0], "max_duration": 17.0, "log_interval": 1},
        "ModelConfig": {"hidden_size": 32, "hidden_layers": 1},
        "OptimConfig": {"learning_rate": 0.001},
        "CheckpointConfig": {"ckpt_path": str(ckpt_dir), "save_checkpoint_steps": 1, "keep_checkpoint_max": 3},
        "EvalConfig": {"batch_size": 4, "test_manifest": str(val_manifest or train_manifest),
                       "save_output": str(ckpt_dir / "eval_report")},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data
