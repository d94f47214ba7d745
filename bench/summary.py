"""Turning sampled step times into epoch figures (pure Python: no MindSpore import)."""
from __future__ import annotations

from typing import Dict, List


def summarize_throughput(parts: List[Dict]) -> Dict:
    """Merge the results of one benchmark run as several processes (one per sampled batch) into
    epoch figures.

    Epoch time = the sample's seconds per padded frame x the padded frames of the whole epoch
    plan (a ratio estimator: step time is close to proportional to batch x padded frames, and
    this removes most of the error of a small sample of the length mix); throughput = audio the
    model sees in the epoch / epoch time. `epoch_s_by_mean` is the plain estimate, batches x
    mean step time. Compile time per input shape is the mean over the sampled shapes; an epoch
    compiles every shape of its plan once.
    """
    first = parts[0]
    samples = [sample for part in parts for sample in part["samples"]]
    steps = [sample["step_s"] for sample in samples]
    sample_padded = sum(sample["padded_frames"] for sample in samples)
    epoch_time = sum(steps) / sample_padded * first["plan_padded_frames"]
    epoch_by_mean = first["batches"] * sum(steps) / len(steps)
    sample_audio = sum(sample["audio_s"] for sample in samples)
    by_shape: Dict[int, float] = {}
    for sample in samples:
        by_shape.setdefault(sample["frames"], sample["compile_s"])
    compile_per_shape = sum(by_shape.values()) / len(by_shape)
    summary = {key: first[key] for key in ("batch_size", "utterances", "batches", "epoch_audio_s",
                                           "cropped_s", "padded_over_audio", "shapes_in_epoch",
                                           "flops_per_audio_s")}
    summary["batch_frames"] = first.get("batch_frames", 0)
    throughput = first["epoch_audio_s"] / epoch_time
    summary.update(
        sampled_batches=len(samples), throughput=throughput, epoch_s=epoch_time,
        epoch_s_by_mean=epoch_by_mean, throughput_by_mean=first["epoch_audio_s"] / epoch_by_mean,
        sample_throughput=sample_audio / sum(steps), step_s=steps,
        sample_frames=[sample["frames"] for sample in samples],
        compile_per_shape_s=compile_per_shape,
        compile_epoch_s=compile_per_shape * first["shapes_in_epoch"] + first["optimizer_compile_s"],
        data_cpu_s_per_audio_s=sum(sample["data_cpu_s"] for sample in samples) / sample_audio,
        achieved_gflops=first["flops_per_audio_s"] * throughput / 1e9,
        peak_rss_mb=max(part["peak_rss_mb"] for part in parts),
        peak_rss_mb_by_process=[part["peak_rss_mb"] for part in parts])
    return summary
