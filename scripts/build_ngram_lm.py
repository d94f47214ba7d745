"""Build an ARPA n-gram language model from a text file, in pure Python (no KenLM tools needed).

    python scripts/build_ngram_lm.py TEXT OUT.arpa [--order 3] [-c deepspeech2.yaml]

TEXT has one sentence a line, e.g. the training transcripts or LibriSpeech's LM corpus
(librispeech-lm-norm.txt; that one is 800 M words: use KenLM's lmplz for it, or a part of it).
Words are upper-cased and characters outside the config's labels removed, as the acoustic model
spells them. The estimate is interpolated modified Kneser-Ney (see mindaudio/decoding/ngram.py).
Use the result as EvalConfig.lm_path with EvalConfig.decoder_type 'beam'.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindaudio.cli import parse_command_line, run_cli  # noqa: E402


def own_arguments(parser) -> None:
    parser.add_argument("text", help="UTF-8 text, one sentence a line")
    parser.add_argument("arpa", help="output ARPA file")
    parser.add_argument("--order", type=int, default=3, help="n-gram order (default: %(default)s)")


def main(argv=None) -> int:
    # The config only supplies the labels (the alphabet): without -c, the original's 29.
    config, args = parse_command_line(argv, __doc__, own_arguments, single_process=True, runs_model=False,
                                      config_default=None)
    from mindaudio.decoding.ngram import build_arpa

    alphabet = [label for label in config.labels[:-1] if label != " "]  # the last label is the blank
    start = time.perf_counter()
    summary = build_arpa(args.text, args.arpa, order=args.order, alphabet=alphabet, progress=True)
    print(summary.describe())
    print("discounts D1, D2, D3+ per order: "
          + "; ".join(", ".join(f"{d:.3f}" for d in ds) for ds in summary.discounts))
    print(f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    run_cli(main)
