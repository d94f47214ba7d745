"""Export DeepSpeech2 for deployment: python export.py -c CONFIG --checkpoint CKPT [--output STEM]

Writes STEM.mindir (dynamic batch and time), STEM.onnx (batch 1, --onnx_frames frames) and
STEM.json (inputs, outputs, labels, feature settings, check results), and checks that each
exported model gives the checkpoint's logits (exit status 1 if not). --check_audio FILE uses that
recording's features for the check instead of random ones.
"""
import os
import sys
from typing import Optional, Sequence

from mindaudio.cli import (add_checkpoint_argument, checkpoint_override, parse_command_line,
                           require_model_weights, run_cli)
from mindaudio.config import check_writable_dir

DESCRIPTION = "Export DeepSpeech2 to MindIR and ONNX and check the exports against the checkpoint."


def own_arguments(parser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("--output", default="export/deepspeech2", help="output path stem (default: %(default)s)")
    parser.add_argument("--formats", nargs="+", default=["MINDIR", "ONNX"], choices=["MINDIR", "ONNX"],
                        type=str.upper)
    parser.add_argument("--onnx_frames", type=int, default=2400,
                        help="feature frames of the static ONNX input (default: %(default)s = 24 s)")
    parser.add_argument("--check_audio", default=None, help="audio file whose features drive the check")
    parser.add_argument("--tolerance", type=float, default=None, help="largest logit difference accepted")


def main(argv: Optional[Sequence[str]] = None) -> int:
    config, args = parse_command_line(argv, DESCRIPTION, own_arguments, single_process=True,
                                      derived_overrides=checkpoint_override)
    require_model_weights(config)
    check_writable_dir(os.path.dirname(os.path.abspath(args.output)), "--output")
    from mindaudio.export import DEFAULT_TOLERANCE, ExportError, export_model
    from mindaudio.runtime.device import setup_runtime

    setup_runtime(config.runtime, config.TrainingConfig.seed)
    features = None
    if args.check_audio:
        from mindaudio.data.audio import load_audio
        from mindaudio.data.features import log_spectrogram
        features = log_spectrogram(load_audio(args.check_audio, config.SpectConfig.sample_rate),
                                   config.SpectConfig)
    tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE
    try:
        report = export_model(config, config.Pretrained_model, args.output, args.formats, args.onnx_frames,
                              check_features=features, tolerance=tolerance)
    except ExportError as err:
        print(f"export check failed: {err}", file=sys.stderr)
        return 1
    for check in report.checks:
        print(f"{check.file}: max |logit difference| {check.max_abs_diff:.3g} over inputs "
              f"{', '.join('x'.join(map(str, s)) for s in check.shapes)}; output lengths equal: "
              f"{check.lengths_equal}")
    print(f"description: {args.output}.json")
    return 0


if __name__ == "__main__":
    run_cli(main)
