"""Leave-one-speaker-out table of the spoken-digits recipe: every speaker held out once.

    python scripts/digits_loso.py [--speakers george jackson ...] [--runs_dir runs/digits_loso]
        [--data_dir data_digits_loso] [--fresh] [--Section.key VALUE ...]

For each speaker S, runs `scripts/run_digits.sh --test_speaker S` (train on the other four, choose
the checkpoint on their unseen takes, evaluate S greedy and with beam search + the bigram LM) with
its manifests in DATA_DIR/S and its run in RUNS_DIR/S; a fold already trained is reused unless
--fresh. Other arguments go to run_digits.sh (and from there to train.py and eval.py). Prints the
WER/CER of each held-out speaker, the mean over speakers and the worst one, and writes the same
table to RUNS_DIR/loso_table.md. One fold takes as long as the recipe (~10-15 minutes here).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindaudio.errors import UserError, report_user_errors  # noqa: E402
from mindaudio.data.digits import DEFAULT_CORPUS, read_labels  # noqa: E402
from mindaudio.data.manifest import write_text_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The reports run_digits.sh writes in its run directory, by decoder.
REPORTS = {"greedy": "digits_test_output.json", "beam + LM": "digits_test_output_beam_lm.json"}


class FoldError(UserError):
    """A fold whose recipe run failed or left no report; the message names its log."""


def run_fold(speaker: str, data_dir: Path, runs_dir: Path, fresh: bool, extra: Sequence[str]) -> Path:
    """Run the recipe with `speaker` held out; returns its run directory. Output goes to run.log."""
    run_dir = runs_dir / speaker
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DS2_DIGITS_DATA=str(data_dir / speaker), DS2_DIGITS_RUN=str(run_dir))
    command = ["bash", str(REPO / "scripts" / "run_digits.sh"), "--test_speaker", speaker]
    command += (["--fresh"] if fresh else []) + list(extra)
    log = run_dir / "run.log"
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise FoldError(f"the fold holding out {speaker} failed (exit {done.returncode}); see {log}")
    return run_dir


def fold_rates(run_dir: Path, speaker: str) -> Dict[str, Dict[str, float]]:
    """{decoder: {'wer', 'cer'}} of the held-out speaker, from the reports of one fold."""
    rates = {}
    for decoder, name in REPORTS.items():
        path = run_dir / name
        try:
            rates[decoder] = json.loads(path.read_text(encoding="utf-8"))["per_speaker"][speaker]
        except (OSError, ValueError, KeyError) as err:
            raise FoldError(f"{path}: no per-speaker result for {speaker} ({err})") from None
    return rates


def format_table(results: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """Markdown: one row per held-out speaker, then the mean over speakers and the worst one."""
    decoders = list(REPORTS)
    header = "| held-out speaker | " + " | ".join(f"{d} WER % | {d} CER %" for d in decoders) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(decoders))]

    def row(name: str, values: List[float]) -> str:
        return f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |"

    columns = {(d, m): [results[s][d][m] for s in results] for d in decoders for m in ("wer", "cer")}
    for speaker in results:
        lines.append(row(speaker, [results[speaker][d][m] for d in decoders for m in ("wer", "cer")]))
    lines.append(row("**mean**", [sum(columns[d, m]) / len(results) for d in decoders for m in ("wer", "cer")]))
    worst = {d: max(results, key=lambda s: results[s][d]["wer"]) for d in decoders}
    lines.append("| **worst** | " + " | ".join(
        f"{results[worst[d]][d]['wer']:.1f} ({worst[d]}) | {results[worst[d]][d]['cer']:.1f}" for d in decoders) + " |")
    return "\n".join(lines)


@report_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Leave-one-speaker-out table of the spoken-digits recipe.")
    speakers = sorted({recording.speaker for recording in read_labels(DEFAULT_CORPUS)})
    parser.add_argument("--speakers", nargs="+", default=speakers, choices=speakers, metavar="SPEAKER",
                        help="the speakers to hold out, one fold each (default: all: %(default)s)")
    parser.add_argument("--runs_dir", default="runs/digits_loso", help="one run per fold under it")
    parser.add_argument("--data_dir", default="data_digits_loso", help="one set of manifests per fold under it")
    parser.add_argument("--fresh", action="store_true", help="train every fold again from scratch")
    args, extra = parser.parse_known_args(argv)
    runs_dir, data_dir = (REPO / args.runs_dir).resolve(), (REPO / args.data_dir).resolve()
    results = {}
    for number, speaker in enumerate(args.speakers, start=1):
        started = time.monotonic()
        print(f"fold {number}/{len(args.speakers)}: {speaker} held out ...", flush=True)
        run_dir = run_fold(speaker, data_dir, runs_dir, args.fresh, extra)
        results[speaker] = fold_rates(run_dir, speaker)
        print(f"  greedy WER {results[speaker]['greedy']['wer']:.1f}%, beam + LM WER "
              f"{results[speaker]['beam + LM']['wer']:.1f}% ({time.monotonic() - started:.0f} s; "
              f"log: {run_dir / 'run.log'})", flush=True)
    table = format_table(results)
    write_text_atomic(runs_dir / "loso_table.md", table + "\n")
    print(table)
    print(f"written to {runs_dir / 'loso_table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
