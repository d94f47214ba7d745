"""Data-parallel training: launcher detection, rank shards with gradient accumulation, exact
count reductions, and real 2-process runs under mpirun and msrun on real LibriSpeech audio.

The launched runs compare against one process that accumulates the same micro-batches: N ranks
of micro-batch b and K = N accumulated micro-batches of b must end with the same weights.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from corpus import small_config_dict
from mindaudio.data.librispeech import extracted_utterances
from mindaudio.data.manifest import write_manifest_with_transcripts
from mindaudio.data.sampler import plan_epoch
from mindaudio.metrics import char_error_rate, word_error_rate
from mindaudio.runtime import launcher
from mindaudio.runtime.collectives import from_digits, to_digits
from mindaudio.runtime.launcher import LaunchError, detect_launch, scheduler_host, scheduler_port
from mindaudio.training.validation import error_counts, rates_from_counts

# Eight utterances of 2.1-5.4 s: one padding bucket, two steps of 2 x 2 utterances per epoch.
TRAIN_IDS = ("1089-134686-0001", "1089-134686-0037", "1089-134691-0000", "1089-134691-0001",
             "1988-24833-0000", "1988-24833-0002", "1988-24833-0003", "2412-153948-0002")
VAL_IDS = ("1089-134691-0000", "2412-153948-0002")
EPOCHS = 2
STEPS = 4
WORLD = 2
# Trainable weights after STEPS steps must agree this closely (float32 summation order).
WEIGHT_TOLERANCE = 1e-5
# A killed rank must end the whole run within this many seconds.
DEAD_RANK_BOUND = 90.0

ROOT_FLAGS = ["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
EDGES = (2.0, 4.0, 6.0, 10.0)


# ---------------------------------------------------------------- launcher detection


OMPI_RANK1 = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
              "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_MCA_ess_base_jobid": "1111556097"}


def test_a_plain_process_is_never_distributed():
    assert detect_launch({}) == launcher.Launch()
    assert not detect_launch({"PATH": "/usr/bin", "RANK_ID": "3", "DEVICE_ID": "1"}).distributed
    # mpirun -n 1 has nothing to share.
    one = dict(OMPI_RANK1, OMPI_COMM_WORLD_SIZE="1", OMPI_COMM_WORLD_RANK="0")
    assert detect_launch(one) == launcher.Launch()


def test_mpirun_environments_give_rank_size_and_local_rank():
    ompi = detect_launch(OMPI_RANK1)
    assert (ompi.kind, ompi.rank, ompi.world_size, ompi.local_rank) == (launcher.MPI, 1, 2, 1)
    mpich = detect_launch({"PMI_SIZE": "4", "PMI_RANK": "3", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"})
    assert (mpich.kind, mpich.rank, mpich.world_size, mpich.local_rank, mpich.local_size) == (
        launcher.MPI, 3, 4, 1, 2)
    with pytest.raises(LaunchError, match="rank 5 outside a job of 2"):
        detect_launch(dict(OMPI_RANK1, OMPI_COMM_WORLD_RANK="5"))
    with pytest.raises(LaunchError, match="OMPI_COMM_WORLD_RANK='x'"):
        detect_launch(dict(OMPI_RANK1, OMPI_COMM_WORLD_RANK="x"))


def test_msrun_roles_are_recognised():
    worker = detect_launch({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "8", "MS_NODE_ID": "5"})
    assert (worker.kind, worker.rank, worker.world_size) == (launcher.MSRUN, 5, 8)
    assert detect_launch({"MS_ROLE": "MS_SCHED", "MS_WORKER_NUM": "8"}).kind == launcher.SCHEDULER
    with pytest.raises(LaunchError, match="MS_ROLE='MS_PSERVER'"):
        detect_launch({"MS_ROLE": "MS_PSERVER"})


def test_scheduler_port_is_shared_by_the_ranks_of_a_job_and_differs_between_jobs():
    rank0 = detect_launch(dict(OMPI_RANK1, OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_LOCAL_RANK="0"))
    rank1 = detect_launch(OMPI_RANK1)
    other_job = detect_launch(dict(OMPI_RANK1, OMPI_MCA_ess_base_jobid="1111621633"))
    port = scheduler_port(rank0, {}, parent_pid=100)
    assert port == scheduler_port(rank1, {}, parent_pid=100)
    assert port != scheduler_port(other_job, {}, parent_pid=100)
    assert launcher.PORT_BASE <= port < launcher.PORT_BASE + launcher.PORT_SPAN
    assert scheduler_port(rank1, {"MS_SCHED_PORT": "23456"}, parent_pid=100) == 23456
    with pytest.raises(LaunchError, match="MS_SCHED_PORT=70000"):
        scheduler_port(rank1, {"MS_SCHED_PORT": "70000"}, parent_pid=100)


def test_ranks_on_several_hosts_need_the_scheduler_host():
    spread = detect_launch(dict(OMPI_RANK1, OMPI_COMM_WORLD_SIZE="4", OMPI_COMM_WORLD_LOCAL_SIZE="2"))
    with pytest.raises(LaunchError, match="MS_SCHED_HOST"):
        scheduler_host(spread, {})
    assert scheduler_host(spread, {"MS_SCHED_HOST": "10.1.2.3"}) == "10.1.2.3"
    assert scheduler_host(detect_launch(OMPI_RANK1), {}) == "127.0.0.1"


def test_a_busy_scheduler_port_is_refused_with_the_variable_to_set(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(LaunchError, match="MS_SCHED_PORT"):
            launcher.start_scheduler("127.0.0.1", port, 2, str(tmp_path / "s.log"), {})
    assert not (tmp_path / "s.log").exists()


def test_an_mpi_rank_becomes_a_mindspore_worker_once(tmp_path):
    environ = dict(OMPI_RANK1, PATH="/usr/bin")
    # Not rank 0: no scheduler to start, only the variables MindSpore's CPU cluster reads.
    launch = detect_launch(environ)
    assert launcher.prepare_cpu_cluster(launch, environ, str(tmp_path), wait=False) is None
    port = scheduler_port(detect_launch(OMPI_RANK1), {}, os.getppid())
    want = {"MS_ROLE": "MS_WORKER", "MS_NODE_ID": "1", "MS_WORKER_NUM": "2", "MS_SCHED_HOST": "127.0.0.1",
            "MS_SCHED_PORT": str(port)}
    assert {name: environ[name] for name in want} == want
    # Still seen as the MPI rank it is, and a second preparation changes nothing.
    launch = detect_launch(environ)
    assert (launch.kind, launch.rank, launch.world_size) == (launcher.MPI, 1, 2)
    before = dict(environ)
    assert launcher.prepare_cpu_cluster(launch, environ, str(tmp_path), wait=False) is None
    assert environ == before
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- shards with accumulation


def durations_for(count, seed=7):
    return np.round(np.random.default_rng(seed).uniform(0.5, 10.0, size=count), 3)


@pytest.mark.parametrize("count,batch_size", [(103, 4), (37, 3), (9, 1)])
@pytest.mark.parametrize("epoch,sortagrad", [(0, True), (1, True), (2, False)])
def test_n_ranks_see_the_micro_batches_one_process_accumulates(count, batch_size, epoch, sortagrad):
    durations = durations_for(count)
    for ranks in (2, 3):
        single = plan_epoch(durations, EDGES, batch_size, epoch=epoch, seed=4, sortagrad=sortagrad,
                            accumulation_steps=ranks)
        shards = [plan_epoch(durations, EDGES, batch_size, epoch=epoch, seed=4, sortagrad=sortagrad,
                             rank=rank, world_size=ranks) for rank in range(ranks)]
        assert all(len(shard) == len(single) // ranks for shard in shards)
        # Step s of the single process is micro-batches s*N .. s*N+N-1; rank r holds the r-th.
        interleaved = [shards[rank][step] for step in range(len(shards[0])) for rank in range(ranks)]
        assert interleaved == single


@pytest.mark.parametrize("world_size,accumulation", [(1, 3), (2, 2), (3, 2), (4, 1)])
def test_every_utterance_once_per_epoch_with_accumulation(world_size, accumulation):
    durations = durations_for(61, seed=11)
    plans = [plan_epoch(durations, EDGES, 3, epoch=1, seed=2, rank=rank, world_size=world_size,
                        accumulation_steps=accumulation) for rank in range(world_size)]
    seen = [index for plan in plans for indices, _ in plan for index in indices]
    assert sorted(seen) == list(range(61))
    assert len({len(plan) for plan in plans}) == 1
    assert len(plans[0]) % accumulation == 0
    # All micro-batches of one optimizer step, on every rank, share a bucket (one padded shape).
    for step in range(len(plans[0]) // accumulation):
        window = slice(step * accumulation, (step + 1) * accumulation)
        assert len({bucket for plan in plans for _, bucket in plan[window]}) == 1


# ---------------------------------------------------------------- exact reductions


def test_digits_round_trip_and_sum_exactly_beyond_float32():
    values = [0, 1, 4095, 4096, 16_777_217, 2 ** 40 + 12345]
    digits = to_digits(values)
    assert digits.dtype == np.float32 and digits.max() < 4096
    assert from_digits(digits).tolist() == values
    # Summing digit-wise over 3 "ranks", as the all-reduce does, then carrying, is exact.
    total = from_digits(to_digits(values) * 3)
    assert total.tolist() == [3 * v for v in values]
    with pytest.raises(ValueError):
        to_digits([-1])


def test_summed_shard_counts_give_the_error_rates_of_the_whole_set():
    rng = np.random.default_rng(0)
    words = ["THE", "A", "CAT", "SAT", "ON", "MAT", "DOG", "RAN"]

    def sentence(n):
        return " ".join(rng.choice(words, size=n))

    references = [sentence(rng.integers(1, 9)) for _ in range(23)]
    hypotheses = [sentence(rng.integers(0, 9)) if i % 3 else ref for i, ref in enumerate(references)]
    shards = [slice(0, 9), slice(9, 10), slice(10, 23)]
    counts = sum(error_counts(references[s], hypotheses[s]) for s in shards)
    wer, cer = rates_from_counts(counts)
    assert wer == pytest.approx(word_error_rate(references, hypotheses), abs=1e-9)
    assert cer == pytest.approx(char_error_rate(references, hypotheses), abs=1e-9)


# ---------------------------------------------------------------- real 2-process runs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_env() -> dict:
    env = dict(os.environ)
    # msrun starts `python` from PATH: make it this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(cmd, cwd, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=launch_env())
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def mpirun_command(*args) -> list:
    return ["mpirun", *ROOT_FLAGS, "-n", str(WORLD), sys.executable, *args]


def msrun_command(log_dir: Path, *args) -> list:
    return [str(Path(sys.executable).parent / "msrun"), f"--worker_num={WORLD}", f"--local_worker_num={WORLD}",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}", f"--log_dir={log_dir}", "--join=True",
            *args]


needs_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None,
                                  reason="mpirun not installed (Debian: apt-get install openmpi-bin)")


@pytest.fixture(scope="module")
def corpus(librispeech_mini, tmp_path_factory):
    utterances = extracted_utterances(librispeech_mini)
    root = tmp_path_factory.mktemp("dp_corpus")
    train = write_manifest_with_transcripts(root, [u for u in utterances if u[0] in TRAIN_IDS], "train.json")
    val = write_manifest_with_transcripts(root, [u for u in utterances if u[0] in VAL_IDS], "val.json")
    return train, val


def write_config(directory: Path, corpus, accumulation: int, epochs: int = EPOCHS, validate: bool = False,
                 **training) -> Path:
    """Validation leaves the trainable weights alone, so runs with and without it compare."""
    train, val = corpus
    data = small_config_dict(train, directory / "ckpt", val if validate else None,
                             TrainingConfig=dict({"epochs": epochs, "accumulation_steps": accumulation,
                                                  "bucket_boundaries": [6.0], "max_duration": 6.0}, **training),
                             CheckpointConfig={"save_checkpoint_steps": 0})
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def final_checkpoint_path(config: Path) -> str:
    from mindaudio.checkpoint import CheckpointManager

    ckpt = yaml.safe_load(config.read_text())["CheckpointConfig"]
    latest = CheckpointManager(ckpt["ckpt_path"], "DeepSpeech", 3).latest()
    assert latest is not None, f"no checkpoint in {ckpt['ckpt_path']}"
    return latest


def final_checkpoint(config: Path):
    from mindaudio.checkpoint import load_checkpoint

    values, state = load_checkpoint(final_checkpoint_path(config))
    return {name: value.asnumpy() for name, value in values.items()}, state


def log_records(config: Path) -> list:
    ckpt = Path(yaml.safe_load(config.read_text())["CheckpointConfig"]["ckpt_path"])
    return [json.loads(line) for line in (ckpt / "train_log.jsonl").read_text().splitlines()]


def trainable(values: dict) -> dict:
    # Adam keeps one moment per trainable weight: that names the trainable weights.
    return {name[len("moment1."):]: values[name[len("moment1."):]] for name in values
            if name.startswith("moment1.")}


@pytest.fixture(scope="module")
def accumulated(corpus, tmp_path_factory, repo_root):
    """One process accumulating WORLD micro-batches per step: the reference."""
    config = write_config(tmp_path_factory.mktemp("accumulated"), corpus, accumulation=WORLD)
    run([sys.executable, "train.py", "-c", str(config)], repo_root)
    values, state = final_checkpoint(config)
    assert state.global_step == STEPS
    return trainable(values)


def assert_same_weights(got: dict, want: dict) -> float:
    assert set(got) == set(want) and len(want) > 10
    worst = max(float(np.max(np.abs(got[name] - want[name]))) for name in want)
    print(f"max |w_data_parallel - w_accumulated| over {len(want)} trainable tensors: {worst:.2e}")
    assert worst <= WEIGHT_TOLERANCE
    return worst


def check_rank0_outputs(config: Path, validated: bool):
    """One log line per step and per epoch (rank 0 alone writes), validation once per epoch."""
    records = log_records(config)
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, STEPS + 1))
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(EPOCHS))
    assert all(np.isfinite(r["train_loss"]) for r in epochs)
    assert all(("val_wer" in r) == validated for r in epochs)


@pytest.mark.slow
@needs_mpirun
def test_mpirun_two_ranks_equal_one_process_accumulating(corpus, accumulated, tmp_path, repo_root):
    config = write_config(tmp_path, corpus, accumulation=1, validate=True)
    start = time.monotonic()
    proc = run(mpirun_command("train.py", "-c", str(config)), repo_root)
    print(f"mpirun -n {WORLD}: {time.monotonic() - start:.1f} s for {STEPS} steps")
    values, state = final_checkpoint(config)
    assert state.global_step == STEPS and state.epoch == EPOCHS
    assert_same_weights(trainable(values), accumulated)
    check_rank0_outputs(config, validated=True)
    # Rank 0 started MindSpore's scheduler and kept its log beside the checkpoints.
    assert list((tmp_path / "ckpt").glob("scheduler_*.log"))
    # Rank 0 alone validates aloud, once per epoch.
    assert [proc.stdout.count(f"epoch {epoch + 1}: train loss") for epoch in range(EPOCHS)] == [1] * EPOCHS
    # The validation the ranks shared equals one process scoring the whole set with the saved model.
    last = final_checkpoint_path(config)
    run([sys.executable, "eval.py", "-c", str(config), "--pre_trained_model_path", last], repo_root)
    report = json.loads((tmp_path / "ckpt" / "eval_report.json").read_text())
    assert report["num_utterances"] == len(VAL_IDS)
    logged = [r for r in log_records(config) if r["kind"] == "epoch"][-1]
    assert (logged["val_wer"], logged["val_cer"]) == pytest.approx((report["wer"], report["cer"]), abs=1e-9)


@pytest.mark.slow
def test_msrun_two_ranks_equal_one_process_accumulating(corpus, accumulated, tmp_path, repo_root):
    config = write_config(tmp_path, corpus, accumulation=1)
    run(msrun_command(tmp_path / "msrun_log", "train.py", "-c", str(config)), repo_root)
    values, state = final_checkpoint(config)
    assert state.global_step == STEPS
    assert_same_weights(trainable(values), accumulated)
    check_rank0_outputs(config, validated=False)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def children(pid: int) -> list:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and parent_of(int(entry.name)) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def rank_processes(launcher_pid: int) -> dict:
    """OMPI rank -> pid of the processes mpirun started."""
    found = {}
    for pid in children(launcher_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"OMPI_COMM_WORLD_RANK="):
                found[int(item.split(b"=", 1)[1])] = pid
    return found


@pytest.mark.slow
@needs_mpirun
def test_a_killed_rank_ends_the_run_with_an_error_not_a_hang(corpus, tmp_path, repo_root):
    from mindaudio.checkpoint import CheckpointManager

    config = write_config(tmp_path, corpus, accumulation=1, epochs=50)
    data = yaml.safe_load(config.read_text())
    data["CheckpointConfig"]["save_checkpoint_steps"] = 1
    config.write_text(yaml.safe_dump(data))
    manager = CheckpointManager(str(tmp_path / "ckpt"), "DeepSpeech", 3)
    proc = subprocess.Popen(mpirun_command("train.py", "-c", str(config)), cwd=repo_root, env=launch_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    schedulers = []
    try:
        deadline = time.monotonic() + 400
        while manager.latest() is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None and manager.latest(), "training did not get under way"
        ranks = rank_processes(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        schedulers = [pid for pid in children(ranks[0]) if b"mindaudio.runtime.launcher" in cmdline(pid)]
        assert len(schedulers) == 1, "rank 0 did not start one scheduler"
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        output, _ = proc.communicate(timeout=DEAD_RANK_BOUND)
        ended = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # The orphaned scheduler ends by itself after MindSpore's node timeout (about 30 s);
        # the test does not wait for that.
        for pid in schedulers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    print(f"rank 1 killed: the run ended {ended:.1f} s later with code {proc.returncode}")
    assert proc.returncode != 0
    assert "rank 1" in output and ("signal 9" in output or "Killed" in output), output[-3000:]
    # No rank outlives the run.
    assert not [pid for pid in ranks.values() if running(pid)]


def running(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "zombie" not in state
