"""Export a trained DeepSpeech2 for deployment, and check the export against the checkpoint.

MindIR (`mindspore.export`) keeps the batch and time axes dynamic: one file serves any batch
size and any number of frames. ONNX from MindSpore 2.10 is static only, so it is exported for one
input shape (batch 1, `onnx_frames` frames; pad shorter inputs, since the masked model does not
depend on padding, and cut longer ones into chunks as mindaudio/inference.py does). MindSpore
writes the ONNX convolutions' `pads` in its own (top, bottom, left, right) order where ONNX wants
(top, left, bottom, right); with the DeepSpeech2 convolutions' asymmetric padding the file would
not even load, so the attribute is rewritten (needs the `onnx` package).

Both exported models take (features (B, 1, F, T) float32, lengths (B,) int32) and return
(logits (T', B, C) float32, output_lengths (B,) int32), as `DeepSpeechModel` does. The check runs
the checkpoint's model and the exported file (MindIR through `mindspore.load` + `nn.GraphCell`,
ONNX through onnxruntime) on the same features and reports the largest logit difference.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import mindspore as ms
from mindspore import nn

from mindaudio.checkpoint import load_model_weights
from mindaudio.config import Config, UserError
from mindaudio.data.features import num_freq_bins
from mindaudio.inference import seconds_per_output_frame
from mindaudio.models.build import build_model
from mindaudio.models.deepspeech2 import DeepSpeechModel

# Largest logit difference accepted between the checkpoint and an export: float32 noise from a
# different operator order is ~1e-6 on logits of size ~10.
DEFAULT_TOLERANCE = 1e-4


class ExportError(UserError):
    """An export that cannot be made or does not give the checkpoint's outputs; the message names
    the file."""


@dataclass
class ExportCheck:
    file: str
    shapes: List[Tuple[int, ...]]  # feature shapes compared
    max_abs_diff: float
    lengths_equal: bool

    def passed(self, tolerance: float) -> bool:
        return self.lengths_equal and self.max_abs_diff <= tolerance


@dataclass
class ExportReport:
    files: Dict[str, str] = field(default_factory=dict)  # format -> path
    checks: List[ExportCheck] = field(default_factory=list)


def export_mindir(model: DeepSpeechModel, freq_bins: int, path_stem: str) -> str:
    """Write `<path_stem>.mindir` with dynamic batch and time axes; returns its path."""
    model.set_train(False)
    features = ms.Tensor(shape=[None, 1, freq_bins, None], dtype=ms.float32)
    lengths = ms.Tensor(shape=[None], dtype=ms.int32)
    return _export_replacing(model, (features, lengths), path_stem, "MINDIR", ".mindir")


def _export_replacing(model, inputs, path_stem: str, file_format: str, suffix: str) -> str:
    """`mindspore.export` to a temporary name, then rename over `<path_stem><suffix>`: MindSpore
    leaves an existing (read-only) file in place without saying so."""
    tmp_stem = f"{path_stem}.partial"
    ms.export(model, *inputs, file_name=tmp_stem, file_format=file_format)
    path = path_stem + suffix
    os.replace(tmp_stem + suffix, path)
    return path


def fix_onnx_conv_pads(path: str) -> int:
    """Rewrite the Conv nodes' `pads` of a MindSpore-exported ONNX file from MindSpore's
    (top, bottom, left, right) order to ONNX's (top, left, bottom, right). Returns the number of
    nodes changed."""
    try:
        import onnx
    except ImportError as err:
        raise ExportError(f"ONNX export needs the 'onnx' package to correct MindSpore's convolution "
                          f"padding ({err}); pip install onnx") from None
    graph = onnx.load(path)
    changed = 0
    for node in graph.graph.node:
        if node.op_type != "Conv":
            continue
        for attribute in node.attribute:
            if attribute.name == "pads" and len(attribute.ints) == 4:
                top, bottom, left, right = list(attribute.ints)
                del attribute.ints[:]
                attribute.ints.extend([top, left, bottom, right])
                changed += 1
    onnx.checker.check_model(graph)
    tmp = path + ".tmp"
    onnx.save(graph, tmp)
    os.replace(tmp, path)
    return changed


def export_onnx(model: DeepSpeechModel, freq_bins: int, frames: int, path_stem: str) -> str:
    """Write `<path_stem>.onnx` for inputs of exactly (1, 1, freq_bins, frames); returns its path."""
    model.set_train(False)
    features = ms.Tensor(np.zeros((1, 1, freq_bins, frames), np.float32))
    lengths = ms.Tensor(np.array([frames], np.int32))
    path = _export_replacing(model, (features, lengths), path_stem, "ONNX", ".onnx")
    if fix_onnx_conv_pads(path) == 0:
        raise ExportError(f"{path}: no convolution found to correct")
    return path


def _reference(model: DeepSpeechModel, features: np.ndarray, lengths: np.ndarray):
    logits, out_lengths = model(ms.Tensor(features), ms.Tensor(lengths))
    return logits.asnumpy(), out_lengths.asnumpy()


def _compare(reference, exported, lengths_out) -> Tuple[float, bool]:
    ref_logits, ref_lengths = reference
    got_logits, got_lengths = exported
    if got_logits.shape != ref_logits.shape:
        return float("inf"), False
    # Frames beyond an utterance's output length are padding: only valid frames are compared.
    diff = 0.0
    for b, length in enumerate(lengths_out):
        diff = max(diff, float(np.abs(got_logits[:length, b] - ref_logits[:length, b]).max()))
    return diff, bool(np.array_equal(np.asarray(got_lengths), np.asarray(ref_lengths)))


def check_mindir(model: DeepSpeechModel, path: str, inputs: Sequence[Tuple[np.ndarray, np.ndarray]]
                 ) -> ExportCheck:
    """Run the MindIR file and the model on each (features, lengths) pair; largest difference."""
    graph = nn.GraphCell(ms.load(path))
    worst, lengths_ok = 0.0, True
    for features, lengths in inputs:
        reference = _reference(model, features, lengths)
        logits, out_lengths = graph(ms.Tensor(features), ms.Tensor(lengths))
        diff, same = _compare(reference, (logits.asnumpy(), out_lengths.asnumpy()), reference[1])
        worst, lengths_ok = max(worst, diff), lengths_ok and same
    return ExportCheck(path, [tuple(f.shape) for f, _ in inputs], worst, lengths_ok)


def check_onnx(model: DeepSpeechModel, path: str, inputs: Sequence[Tuple[np.ndarray, np.ndarray]]
               ) -> ExportCheck:
    """As `check_mindir`, through onnxruntime."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ExportError(f"checking {path} needs onnxruntime ({err}); pip install onnxruntime") from None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [tensor.name for tensor in session.get_inputs()]
    worst, lengths_ok = 0.0, True
    for features, lengths in inputs:
        reference = _reference(model, features, lengths)
        logits, out_lengths = session.run(None, {names[0]: features, names[1]: lengths})
        diff, same = _compare(reference, (logits, out_lengths), reference[1])
        worst, lengths_ok = max(worst, diff), lengths_ok and same
    return ExportCheck(path, [tuple(f.shape) for f, _ in inputs], worst, lengths_ok)


def check_inputs(freq_bins: int, shapes: Sequence[Tuple[int, Sequence[int]]], seed: int = 0,
                 real_features: Optional[np.ndarray] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(features, lengths) pairs for the checks: for each (frames, lengths) a batch padded to
    `frames` whose utterance b has lengths[b] frames: standard-normal values (the features are
    normalised), or `real_features` (F, T) when given (repeated if too short), zero beyond each length."""
    rng = np.random.default_rng(seed)
    pairs = []
    for frames, lengths in shapes:
        batch = np.zeros((len(lengths), 1, freq_bins, frames), np.float32)
        for b, length in enumerate(lengths):
            if real_features is not None:
                # Repeated along time when the recording is shorter than the length wanted.
                repeats = -(-length // real_features.shape[1])
                batch[b, 0, :, :length] = np.tile(real_features, (1, repeats))[:, :length]
            else:
                batch[b, 0, :, :length] = rng.standard_normal((freq_bins, length))
        pairs.append((batch, np.asarray(lengths, np.int32)))
    return pairs


def export_model(config: Config, checkpoint: str, output_stem: str, formats: Sequence[str] = ("MINDIR", "ONNX"),
                 onnx_frames: int = 2400, check_features: Optional[np.ndarray] = None,
                 tolerance: float = DEFAULT_TOLERANCE) -> ExportReport:
    """Export `checkpoint`'s model to each of `formats` as `<output_stem>.<ext>`, check every
    file against the checkpoint, and write `<output_stem>.json` describing the inputs.

    Raises ExportError when an export's logits differ from the checkpoint's by more than
    `tolerance` (the file is kept for inspection)."""
    model = build_model(config)
    load_model_weights(model, checkpoint)
    model.set_train(False)
    freq = num_freq_bins(config.SpectConfig)
    report = ExportReport()
    directory = os.path.dirname(os.path.abspath(output_stem))
    os.makedirs(directory, exist_ok=True)
    for fmt in (f.upper() for f in formats):
        if fmt == "MINDIR":
            path = export_mindir(model, freq, output_stem)
            # Two shapes: a padded batch of two lengths, and a single utterance of another length.
            inputs = check_inputs(freq, [(300, [300, 180]), (137, [137])], real_features=check_features)
            check = check_mindir(model, path, inputs)
        elif fmt == "ONNX":
            path = export_onnx(model, freq, onnx_frames, output_stem)
            inputs = check_inputs(freq, [(onnx_frames, [onnx_frames]), (onnx_frames, [max(1, onnx_frames // 3)])],
                                  real_features=check_features)
            check = check_onnx(model, path, inputs)
        else:
            raise ExportError(f"unknown export format {fmt!r}; choose MINDIR or ONNX")
        report.files[fmt] = path
        report.checks.append(check)
        if not check.passed(tolerance):
            raise ExportError(f"{path}: logits differ from the checkpoint's by {check.max_abs_diff:g} "
                              f"(tolerance {tolerance:g}) or output lengths differ "
                              f"(equal: {check.lengths_equal})")
    spect = config.SpectConfig
    description = {
        "checkpoint": os.path.abspath(checkpoint),
        "files": report.files,
        "inputs": {"features": ["batch", 1, freq, "frames"], "lengths": ["batch"]},
        "onnx_input_shape": [1, 1, freq, onnx_frames] if "ONNX" in report.files else None,
        "outputs": {"logits": ["frames_out", "batch", len(config.labels)], "output_lengths": ["batch"]},
        "labels": config.labels,
        "blank_id": len(config.labels) - 1,
        "features": asdict(spect),
        "seconds_per_output_frame": seconds_per_output_frame(spect),
        "checks": [asdict(check) for check in report.checks],
    }
    with open(output_stem + ".json", "w", encoding="utf-8") as handle:
        json.dump(description, handle, indent=1)
    return report
