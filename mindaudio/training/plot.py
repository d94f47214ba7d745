"""A PNG of the training curves (loss per step, validation WER per epoch) next to the log."""
import json
import os
from typing import Optional


def read_log(path: str):
    """(step records, epoch records) of a JSON-lines training log."""
    steps, epochs = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            (steps if record.get("kind") == "step" else epochs).append(record)
    return steps, epochs


def plot_training_log(log_path: str, png_path: Optional[str] = None) -> Optional[str]:
    """Draw loss against step and validation WER/CER against epoch; returns the PNG path
    (None when the log is empty)."""
    if not os.path.isfile(log_path):
        return None
    steps, epochs = read_log(log_path)
    if not steps and not epochs:
        return None
    import matplotlib
    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    png_path = png_path or os.path.splitext(log_path)[0] + ".png"
    fig, (ax_loss, ax_wer) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, label="train (per step)")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("CTC loss")
    ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    val = [r for r in epochs if "val_wer" in r]
    if val:
        x = [r["epoch"] + 1 for r in val]
        ax_wer.plot(x, [r["val_wer"] for r in val], "o-", label="WER")
        ax_wer.plot(x, [r["val_cer"] for r in val], "s--", label="CER")
        ax_wer.legend()
    else:
        ax_wer.text(0.5, 0.5, "no validation manifest", ha="center", va="center", transform=ax_wer.transAxes)
    ax_wer.set_xlabel("epoch")
    ax_wer.set_ylabel("validation error (%)")
    ax_wer.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path
