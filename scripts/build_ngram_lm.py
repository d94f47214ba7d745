"""Build an ARPA n-gram language model from a text file, in pure Python (no KenLM tools needed).

    python scripts/build_ngram_lm.py TEXT OUT.arpa [--order 3] [-c deepspeech2.yaml]

TEXT has one sentence a line, e.g. the training transcripts or LibriSpeech's LM corpus
(librispeech-lm-norm.txt; that one is 800 M words: use KenLM's lmplz for it, or a part of it).
Words are upper-cased and characters outside the config's labels removed, as the acoustic model
spells them. The estimate is interpolated modified Kneser-Ney (see mindaudio/decoding/ngram.py).
Use the result as EvalConfig.lm_path with EvalConfig.decoder_type 'beam'.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindaudio.config import ConfigError, load_config  # noqa: E402
from mindaudio.decoding.ngram import NgramError, build_arpa  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text", help="UTF-8 text, one sentence a line")
    parser.add_argument("arpa", help="output ARPA file")
    parser.add_argument("--order", type=int, default=3, help="n-gram order (default: %(default)s)")
    parser.add_argument("-c", "--config", default=None,
                        help="yaml whose labels define the alphabet (default: the original's 29 labels)")
    args = parser.parse_args(argv)
    try:
        if args.config:
            labels = load_config(args.config).labels
        else:
            from mindaudio.config import DEFAULT_LABELS
            labels = DEFAULT_LABELS
        alphabet = [label for label in labels[:-1] if label != " "]  # the last label is the blank
        start = time.perf_counter()
        summary = build_arpa(args.text, args.arpa, order=args.order, alphabet=alphabet, progress=True)
    except (ConfigError, NgramError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.describe())
    print("discounts D1, D2, D3+ per order: "
          + "; ".join(", ".join(f"{d:.3f}" for d in ds) for ds in summary.discounts))
    print(f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
