"""Train DeepSpeech2: python train.py -c deepspeech2.yaml [--Section.key value ...]

Data parallel: mpirun -n 8 python train.py -c deepspeech2.yaml (or msrun --worker_num=8 ...).
"""
from mindaudio.cli import parse_command_line, run_cli
from mindaudio.config import check_writable_dir

DESCRIPTION = "Train DeepSpeech2 with CTC on a manifest of utterances."


def main(argv=None) -> int:
    config, _ = parse_command_line(argv, DESCRIPTION)
    check_writable_dir(config.CheckpointConfig.ckpt_path, f"{config.source}: CheckpointConfig.ckpt_path")
    from mindaudio.training.trainer import train
    result = train(config)
    if not result.is_main:
        return 0
    print(f"finished: epoch {result.state.epoch}, step {result.state.global_step}, "
          f"{result.state.skipped_steps} skipped step(s)")
    if result.last_checkpoint:
        print(f"last checkpoint: {result.last_checkpoint}")
    if result.best_checkpoint:
        print(f"best checkpoint: {result.best_checkpoint} (validation WER {result.state.best_wer:.2f}%)")
    print(f"log: {result.log_path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
