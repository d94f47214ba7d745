"""Test corpora made from the real speech in ../shared/data (manifests written to a tmp dir)."""
import json
from pathlib import Path
from typing import List, Optional


def librispeech_utterances(librispeech_dir: Path, splits=("test-clean", "dev-clean", "train-clean-100")):
    """(id, flac path, transcript) of the shared LibriSpeech sample, sorted by id."""
    found = []
    for split in splits:
        for trans in sorted((librispeech_dir / split).glob("*/*/*.trans.txt")):
            for line in trans.read_text().splitlines():
                utt_id, text = line.split(" ", 1)
                found.append((utt_id, trans.parent / f"{utt_id}.flac", text))
    return sorted(found)


def write_manifest(out_dir: Path, utterances, name: str = "manifest.json") -> Path:
    """A manifest in the original's form whose audio entries point at the given files."""
    import soundfile as sf

    txt_dir = out_dir / "txt"
    txt_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for utt_id, audio, text in utterances:
        (txt_dir / f"{utt_id}.txt").write_text(text + "\n")
        samples.append({"wav_path": str(Path(audio).resolve()), "txt_path": f"txt/{utt_id}.txt",
                        "duration": sf.info(str(audio)).duration})
    path = out_dir / name
    path.write_text(json.dumps({"root_path": str(out_dir.resolve()), "samples": samples}, indent=1))
    return path


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
