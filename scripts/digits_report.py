"""WER/CER per speaker of an eval.py report on the spoken digits; the result is also added to the report.

    python scripts/digits_report.py REPORT.json [REPORT.json ...]

Prints one table per report (speaker, utterances, WER %, CER %, then `all`) and stores it in the
report as `per_speaker`. The speaker is read from each utterance id (`<digit>_<speaker>_<take>`).
"""
import json
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindaudio.errors import UserError, report_user_errors  # noqa: E402
from mindaudio.data.digits import speaker_of  # noqa: E402
from mindaudio.data.manifest import write_text_atomic  # noqa: E402
from mindaudio.metrics import error_rates, error_rates_by_group  # noqa: E402


class ReportError(UserError):
    """A file that is not an eval.py report; the message names it."""


def per_speaker_report(rows: Sequence[Mapping[str, str]]) -> Dict[str, Dict[str, float]]:
    """WER/CER (percent) and utterance count per speaker of eval report rows ({id, reference,
    hypothesis}), plus 'all' for the whole set."""
    references = [row["reference"] for row in rows]
    hypotheses = [row["hypothesis"] for row in rows]
    result = error_rates_by_group(references, hypotheses, [speaker_of(row["id"]) for row in rows])
    result["all"] = dict(error_rates(references, hypotheses), utterances=len(rows))
    return result


def format_per_speaker(per_speaker: Mapping[str, Mapping[str, float]]) -> str:
    lines = [f"{'speaker':<10} {'utterances':>10} {'WER %':>7} {'CER %':>7}"]
    for speaker, rates in per_speaker.items():
        lines.append(f"{speaker:<10} {int(rates['utterances']):>10d} {rates['wer']:>7.2f} {rates['cer']:>7.2f}")
    return "\n".join(lines)


def add_per_speaker(report_path) -> Dict[str, Dict[str, float]]:
    """Score an eval.py JSON report by speaker and store the result in it as `per_speaker`."""
    path = Path(report_path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        rows = report["utterances"]
        per_speaker = per_speaker_report(rows)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReportError(f"{path}: not an eval.py report of the spoken digits ({err})") from None
    report["per_speaker"] = per_speaker
    write_text_atomic(path, json.dumps(report, indent=1))
    return per_speaker


@report_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths or any(path.startswith("-") for path in paths):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for path in paths:
        print(format_per_speaker(add_per_speaker(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
