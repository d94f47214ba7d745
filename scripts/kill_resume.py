"""Kill a training run with SIGKILL at random moments, resume it each time, and check that it ends
with exactly the values of a run that was never interrupted.

    python scripts/kill_resume.py --kills 20 [--seed 0] [--epochs 10] [--workdir DIR]

A tiny DeepSpeech2 (hidden 32, 1 LSTM layer) trains on a few recordings of the bundled spoken
digits (data/digits), with speed/gain perturbation and SpecAugment on (so the augmentation's
random state must resume exactly too), a checkpoint after every step and a validation after every
epoch. First one uninterrupted run; then a run that is killed `--kills` times and resumed after
each kill. Each kill picks a moment at random: inside a training step, inside a checkpoint write,
inside a validation, or during start-up, at a random delay into it (the training process reports
its phases to this script through a pipe; the kill itself is an ordinary SIGKILL from outside).
`--exact best,record` first adds one kill at each of two exact moments of the first epoch's end,
where timing would rarely land: just after the best checkpoint is written, and just after the
epoch's log record is written (both before the checkpoint a resumed run starts from). The process
sends itself the SIGKILL there.

Checked: after every resume, the newest checkpoint the resumed run wrote equals the uninterrupted
run's checkpoint of the same epoch and step bit for bit (every parameter, BatchNorm statistic,
Adam moment and train-state value); at the end, the final checkpoint, the best checkpoint and
every epoch's logged train loss equal the uninterrupted run's. Prints one line per kill and a
JSON summary; exits 1 when anything differs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PHASES = ("step", "save", "validate", "start")
# Exact moments at the end of the first epoch, where the training process kills itself.
EXACT_MEANING = {"best": "best checkpoint was written", "record": "epoch's log record was written"}
EXACT_MOMENTS = tuple(EXACT_MEANING)
PREFIX = "DeepSpeech"


# ---------------------------------------------------------------- the training process


def child(config_path: str, fd: int, die_at: str = "") -> int:
    """Train from `config_path`, writing `begin <phase>` / `end <phase>` lines to `fd`. With `die_at`
    'best' or 'record', SIGKILL itself just after the first best checkpoint or epoch record is written."""
    import mindaudio  # noqa: F401  (before mindspore)
    import mindspore as ms

    import mindaudio.training.trainer as trainer_module
    from mindaudio.config import load_config

    out = os.fdopen(fd, "w", buffering=1)

    def mark(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    def traced(phase: str, fn):
        def wrapper(*args, **kwargs):
            mark(f"begin {phase}")
            try:
                return fn(*args, **kwargs)
            finally:
                mark(f"end {phase}")
        return wrapper

    # Checkpoints are written through mindspore.save_checkpoint (looked up at call time).
    ms.save_checkpoint = traced("save", ms.save_checkpoint)
    trainer_module.evaluate_split = traced("validate", trainer_module.evaluate_split)
    config = load_config(config_path)
    trainer = trainer_module.Trainer(config, progress=False)
    if die_at:
        def die() -> None:
            mark(f"died at {die_at}")
            os.kill(os.getpid(), signal.SIGKILL)

        save, write = trainer._save, trainer.log.write

        def save_then_die(best: bool = False) -> str:
            path = save(best=best)
            if best and die_at == "best":
                die()
            return path

        def write_then_die(**record) -> None:
            write(**record)
            if record.get("kind") == "epoch" and die_at == "record":
                die()

        trainer._save, trainer.log.write = save_then_die, write_then_die
    update = trainer.update
    update.add_micro_batch = traced("step", update.add_micro_batch)
    update.finish = traced("step", update.finish)
    mark("begin train")
    trainer.run()
    mark("done")
    return 0


# ---------------------------------------------------------------- set-up


def write_config(workdir: Path, name: str, epochs: int, utterances: int) -> Path:
    """A tiny digits run writing into workdir/<name>; returns its yaml."""
    import yaml

    from mindaudio.data.digits import prepare_digits

    data_root = workdir / "digits"
    summary = prepare_digits(data_root, REPO / "data" / "digits", verbose=False)
    manifests = {split.split: Path(split.manifest) for split in summary.splits}
    small = {}
    for split, count in (("train", utterances), ("val", 6)):
        document = json.loads(manifests[split].read_text())
        document["samples"] = document["samples"][:count]
        small[split] = workdir / f"{split}_small.json"
        small[split].write_text(json.dumps(document))
    data = yaml.safe_load((REPO / "configs" / "digits.yaml").read_text())
    data["TrainingConfig"].update(epochs=epochs, batch_size=4, train_manifest=str(small["train"]),
                                  val_manifest=str(small["val"]), num_workers=2, log_interval=1)
    data["ModelConfig"] = dict(data.get("ModelConfig") or {}, hidden_size=32, hidden_layers=1)
    data["AugmentationConfig"].update(speed_volume_perturb=True, spec_augment=True)
    data["CheckpointConfig"] = dict(data.get("CheckpointConfig") or {}, ckpt_path=str(workdir / name),
                                    save_checkpoint_steps=1, keep_checkpoint_max=1000, resume=True,
                                    resume_from="", ckpt_file_name_prefix=PREFIX)
    data["EvalConfig"] = dict(data.get("EvalConfig") or {}, batch_size=6, test_manifest=str(small["val"]),
                              save_output=str(workdir / name / "eval_report"))
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Segment:
    """One launch of the training process, optionally killed at a chosen moment."""

    def __init__(self, config: Path, log_path: Path, die_at: str = ""):
        read_fd, write_fd = os.pipe()
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", str(config), "--fd", str(write_fd)]
                                     + (["--die_at", die_at] if die_at else []),
                                     cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, pass_fds=(write_fd,))
        os.close(write_fd)
        self.pipe = os.fdopen(read_fd, "r")
        self.started = time.monotonic()
        self.open_phases: List[str] = []  # what the process was inside when it was last heard of
        self.history: List[str] = []
        self.durations: Dict[str, List[float]] = {}
        self._began: Dict[str, float] = {}

    def _record(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        self.history.append(line)
        kind, _, phase = line.partition(" ")
        if kind == "begin":
            self.open_phases.append(phase)
            self._began[phase] = time.monotonic()
        elif kind == "end" and phase in self.open_phases:
            self.open_phases.remove(phase)
            self.durations.setdefault(phase, []).append(time.monotonic() - self._began.pop(phase, time.monotonic()))

    def next_line(self, timeout: float) -> Optional[str]:
        ready, _, _ = select.select([self.pipe], [], [], timeout)
        if not ready:
            return None
        line = self.pipe.readline()
        if line == "":
            return ""  # the process closed the pipe (ended)
        self._record(line)
        return line.strip()

    def run_to_end(self, timeout: float = 1800.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.next_line(1.0)
            if line == "":
                break
        return self.finish()

    def kill_at(self, phase: str, occurrence: int, delay: float, timeout: float = 1800.0) -> Optional[str]:
        """SIGKILL `delay` s after the `occurrence`-th start of `phase` (after launch for "start").
        Returns what the process was doing when it died, or None if it finished first."""
        deadline = time.monotonic() + timeout
        seen = 0
        if phase == "start":
            end = self.started + delay
            while time.monotonic() < end:
                if self.next_line(max(0.0, end - time.monotonic())) == "":
                    self.finish()
                    return None
        else:
            while time.monotonic() < deadline:
                line = self.next_line(1.0)
                if line == "":
                    self.finish()
                    return None
                if line == f"begin {phase}":
                    seen += 1
                    if seen == occurrence:
                        break
            end = time.monotonic() + delay
            while time.monotonic() < end:
                if self.next_line(max(0.0, end - time.monotonic())) == "":
                    self.finish()
                    return None
        if self.proc.poll() is not None:
            self.finish()
            return None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        # Everything it reported before dying is in the pipe: read it to know where it died.
        while self.next_line(0.0) not in ("", None):
            pass
        inside = [phase for phase in self.open_phases if phase != "train"]
        if "begin train" not in self.history:
            where = "start-up" if not inside else f"start-up ({'+'.join(inside)})"
        else:
            where = "+".join(inside) if inside else "between phases"
        self.finish()
        return where

    def finish(self) -> int:
        code = self.proc.wait()
        self.pipe.close()
        self.log.close()
        return code


# ---------------------------------------------------------------- comparing


def checkpoint_values(path: Path) -> Dict[str, "object"]:
    import mindaudio  # noqa: F401
    import mindspore as ms

    return {name: value.asnumpy() if hasattr(value, "asnumpy") else value
            for name, value in ms.load_checkpoint(str(path)).items()}


def differences(got: Path, want: Path) -> List[str]:
    import numpy as np

    a, b = checkpoint_values(got), checkpoint_values(want)
    problems = [f"only in one: {name}" for name in sorted(set(a) ^ set(b))]
    for name in sorted(set(a) & set(b)):
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
            problems.append(name)
    return problems


def numbered(directory: Path) -> List[Path]:
    found = []
    for path in directory.glob(f"{PREFIX}-e*-s*.ckpt"):
        epoch, step = path.stem[len(PREFIX) + 2:].split("-s")
        found.append((int(step), int(epoch), path))
    return [path for _, _, path in sorted(found)]


def epoch_losses(directory: Path) -> Dict[int, float]:
    """The last logged train loss of each epoch (an epoch cut short by a kill is logged again)."""
    losses = {}
    log = directory / "train_log.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") == "epoch":
                losses[record["epoch"]] = record["train_loss"]
    return losses


def compare_new_checkpoints(workdir: Path, before: set):
    """After a killed segment: the partial files it left, the numbered checkpoints it wrote (not in
    `before`), and how the newest compares with the uninterrupted run's of the same name."""
    partials = sorted(p.name for p in (workdir / "killed").glob(".partial-*"))
    written = [p for p in numbered(workdir / "killed") if p.name not in before]
    verdict = "no new checkpoint"
    if written:
        newest = written[-1]
        reference_file = workdir / "straight" / newest.name
        if not reference_file.exists():
            verdict = f"{newest.name} has no counterpart in the uninterrupted run"
        else:
            diff = differences(newest, reference_file)
            verdict = "identical" if not diff else f"DIFFERS in {len(diff)} value(s): {', '.join(diff[:4])}"
    return partials, written, verdict


def best_checkpoint_differences(workdir: Path) -> List[str]:
    """How the killed run's best checkpoint differs from the uninterrupted run's ([] when equal)."""
    got, want = workdir / "killed" / f"{PREFIX}-best.ckpt", workdir / "straight" / f"{PREFIX}-best.ckpt"
    if not want.exists():
        return ["only in the killed run"] if got.exists() else []
    if not got.exists():
        return ["missing in the killed run"]
    return differences(got, want)


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="chooses the moments of the kills")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--utterances", type=int, default=24, help="training recordings (4 per step)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"where kills may be aimed, comma-separated among {','.join(PHASES)}")
    parser.add_argument("--exact", default="",
                        help=f"exact moments to kill at first, comma-separated among {','.join(EXACT_MOMENTS)}")
    parser.add_argument("--workdir", default="", help="keep everything here (default: a temporary folder)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--die_at", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.fd, args.die_at)

    rng = random.Random(args.seed)
    phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown or not phases:
        parser.error(f"--phases: choose among {', '.join(PHASES)}")
    exact = [moment.strip() for moment in args.exact.split(",") if moment.strip()]
    if sorted(set(exact) - set(EXACT_MOMENTS)):
        parser.error(f"--exact: choose among {', '.join(EXACT_MOMENTS)}")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="kill_resume_"))
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("straight", "killed"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    straight_cfg = write_config(workdir, "straight", args.epochs, args.utterances)
    killed_cfg = write_config(workdir, "killed", args.epochs, args.utterances)

    started = time.monotonic()
    reference = Segment(straight_cfg, workdir / "straight.log")
    if reference.run_to_end() != 0:
        print(f"the uninterrupted run failed; see {workdir / 'straight.log'}", file=sys.stderr)
        return 1
    # Typical phase lengths, for the delays into a phase.
    typical = {phase: sorted(times)[len(times) // 2] for phase, times in reference.durations.items()}
    counts = {phase: len(times) for phase, times in reference.durations.items()}
    reference_seconds = time.monotonic() - started
    want = numbered(workdir / "straight")
    final_name = want[-1].name
    print(f"uninterrupted run: {len(want)} checkpoints, {counts.get('step', 0) // 2} steps, "
          f"{reference_seconds:.0f} s; typical step {typical.get('step', 0) * 1000:.0f} ms, "
          f"save {typical.get('save', 0) * 1000:.0f} ms, validation {typical.get('validate', 0) * 1000:.0f} ms")

    kills: List[Dict] = []
    finished_early = False

    def record(before: set, aimed_at: str, died_in: str, how: str, **details) -> None:
        """Compare what the killed segment wrote with the uninterrupted run; one line per kill."""
        partials, written, verdict = compare_new_checkpoints(workdir, before)
        kills.append({"aimed_at": aimed_at, **details, "died_in": died_in, "new_checkpoints": len(written),
                      "partial_files_left": partials,
                      "newest_checkpoint": written[-1].name if written else None, "verdict": verdict})
        print(f"kill {len(kills):2d}: {how}; "
              f"{len(written)} new checkpoint(s){', partial file left' if partials else ''}: {verdict}")

    for moment in exact:
        before = {p.name for p in numbered(workdir / "killed")}
        segment = Segment(killed_cfg, workdir / "killed.log", die_at=moment)
        segment.run_to_end()
        if f"died at {moment}" not in segment.history:
            print(f"the run never reached the exact moment '{moment}'", file=sys.stderr)
            return 1
        record(before, f"exact {moment}", f"exact {moment}", f"exactly after the first {EXACT_MEANING[moment]}")
    while len(kills) < args.kills + len(exact):
        phase = rng.choice(phases)
        if phase == "start":
            occurrence, delay = 0, rng.uniform(0.0, 15.0)
        else:
            # Near moments: each resumed run makes a little progress, so the kills spread over the run.
            occurrence = 1 if phase == "validate" else rng.randint(1, 3)
            delay = rng.uniform(0.0, typical.get(phase, 0.05))
        before = {p.name for p in numbered(workdir / "killed")}
        segment = Segment(killed_cfg, workdir / "killed.log")
        where = segment.kill_at(phase, occurrence, delay)
        if where is None:
            finished_early = True
            print(f"the run finished before kill {len(kills) + 1} could land (use more --epochs)")
            break
        record(before, phase, where, f"aimed at {phase} #{occurrence} +{delay * 1000:.0f} ms, died in {where}",
               occurrence=occurrence, delay_s=round(delay, 4))

    final = Segment(killed_cfg, workdir / "killed.log")
    code = final.run_to_end()
    got = workdir / "killed" / final_name
    if code != 0 or not got.exists():
        print(f"the last resume failed (exit {code}); see {workdir / 'killed.log'}", file=sys.stderr)
        return 1
    final_diff = differences(got, workdir / "straight" / final_name)
    best_diff = best_checkpoint_differences(workdir)
    losses_want, losses_got = epoch_losses(workdir / "straight"), epoch_losses(workdir / "killed")
    loss_diff = [epoch for epoch in losses_want if losses_got.get(epoch) != losses_want[epoch]]
    identical_segments = sum(1 for k in kills if k["verdict"] == "identical")
    compared = sum(1 for k in kills if k["verdict"] != "no new checkpoint")
    differing = [k for k in kills if k["verdict"].startswith("DIFFERS") or "no counterpart" in k["verdict"]]
    summary = {
        "kills": len(kills), "finished_before_all_kills": finished_early,
        "died_in": {where: sum(1 for k in kills if k["died_in"] == where) for where in sorted({k["died_in"] for k in kills})},
        "resumed_segments_compared": compared, "resumed_segments_identical": identical_segments,
        "final_checkpoint": final_name, "final_identical": not final_diff, "final_differences": final_diff[:10],
        "best_identical": not best_diff, "best_differences": best_diff[:10],
        "epoch_train_loss_identical": not loss_diff, "epochs_with_other_train_loss": loss_diff,
        "workdir": str(workdir),
    }
    print(json.dumps(summary, indent=1))
    ok = not final_diff and not best_diff and not loss_diff and not differing and not finished_early
    print(f"{'OK' if ok else 'FAILED'}: {len(kills)} kill(s); {identical_segments}/{compared} resumed segments' "
          f"checkpoints identical; final weights {'identical' if not final_diff else 'DIFFER'}")
    if ok and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
