"""Score a streaming model streamed chunk by chunk, against its own offline evaluation.

    python scripts/stream_wer.py -c configs/digits_streaming.yaml --checkpoint CKPT \
        --report runs/digits_streaming/digits_test_output.json [--chunk_ms 160]

Streams every recording of EvalConfig.test_manifest through `mindaudio.streaming` in chunks of
--chunk_ms (greedy decoding), and prints the WER/CER of the streamed transcripts and of the
offline ones in eval.py's report (--report, the JSON eval.py wrote with this checkpoint and
greedy decoding), plus how many utterances' transcripts differ between the two (0 expected: the
streamed logits equal the offline forward).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindaudio.cli import (CommandLineError, add_checkpoint_argument, checkpoint_override,  # noqa: E402
                           parse_command_line, require_model_weights, run_cli)
from mindaudio.config import ConfigError  # noqa: E402

DESCRIPTION = "WER of a streaming model streamed chunk by chunk, next to its offline evaluation."


def own_arguments(parser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("--report", required=True, help="eval.py's JSON report of the same checkpoint (greedy)")
    parser.add_argument("--chunk_ms", type=float, default=160.0)


def main() -> int:
    config, args = parse_command_line(None, DESCRIPTION, own_arguments, single_process=True,
                                      derived_overrides=checkpoint_override)
    require_model_weights(config, "EvalConfig.test_manifest")
    try:
        with open(args.report, encoding="utf-8") as f:
            report = json.load(f)
        offline = {row["id"]: row for row in report["utterances"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CommandLineError(f"--report {args.report}: not an eval.py report ({err})") from None

    from mindaudio.data.audio import load_audio
    from mindaudio.data.manifest import read_manifest
    from mindaudio.decoding.greedy import GreedyDecoder
    from mindaudio.metrics import error_rates
    from mindaudio.runtime.device import setup_runtime
    from mindaudio.streaming import build_streaming_recogniser

    if config.EvalConfig.decoder_type != "greedy":
        raise ConfigError(f"{config.source}: EvalConfig.decoder_type: this comparison is for greedy decoding")
    setup_runtime(config.runtime, config.TrainingConfig.seed, log=lambda line: print(line, file=sys.stderr))
    recogniser = build_streaming_recogniser(config, config.Pretrained_model,
                                            decoder=GreedyDecoder(config.labels, len(config.labels) - 1))
    rate = config.SpectConfig.sample_rate
    chunk = max(1, int(round(args.chunk_ms / 1000 * rate)))
    references, streamed, offline_hyps, differ = [], [], [], 0
    for utterance in read_manifest(config.EvalConfig.test_manifest):
        if utterance.id not in offline:
            continue  # excluded by eval.py (e.g. too short), so not scored there either
        signal = load_audio(utterance.audio_path, rate)
        recogniser.reset()
        for start in range(0, signal.size, chunk):
            recogniser.feed(signal[start:start + chunk])
        text = recogniser.finish()
        row = offline[utterance.id]
        references.append(row["reference"])
        streamed.append(text)
        offline_hyps.append(row["hypothesis"])
        differ += text != row["hypothesis"]
    if not references:
        raise CommandLineError(f"--report {args.report}: no utterance of {config.EvalConfig.test_manifest} in it")
    stream_rates = error_rates(references, streamed)
    offline_rates = error_rates(references, offline_hyps)
    print(f"utterances: {len(references)}, chunks of {args.chunk_ms:g} ms")
    print(f"streamed: WER {stream_rates['wer']:.2f}% CER {stream_rates['cer']:.2f}%")
    print(f"offline (eval.py): WER {offline_rates['wer']:.2f}% CER {offline_rates['cer']:.2f}%")
    print(f"transcripts that differ: {differ}")
    return 0


if __name__ == "__main__":
    run_cli(main)
