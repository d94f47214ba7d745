"""The command line of every entry point: one parse of argv into (Config, own flags), one error wrapper.

Each entry point (train.py, eval.py, transcribe.py, export.py, scripts/*.py) declares the flags of
its own with `own_arguments` and calls `parse_command_line`, which returns the validated Config
(the yaml given by `-c`, then the `--Section.key VALUE` overrides, then the original's flags
`--device_target`, `--device_id`, `--mode`, `--is_distributed`, `--pre_trained_model_path`) and
the entry point's own namespace. `run_cli(main)` runs the entry point: a `UserError` (a mistake the
user can fix: a missing file, an unknown key, a bad value, an unusable device) ends in one line
`error: <message>` on stderr and exit status 2, Ctrl-C in one line and 130; anything else is a bug
and keeps its traceback.

Exit statuses: 0 success, 1 the work ran but part of it failed (transcribe.py: a file could not be
transcribed; export.py: an export does not match the checkpoint), 2 a user mistake, 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# MindSpore logs every graph-compiler warning to stderr by default (GLOG_v=2), which buries the
# progress bars and the one-line errors; the command lines show MindSpore's errors only unless the
# user asked for more. Set before anything imports mindspore; the library itself leaves it alone.
os.environ.setdefault("GLOG_v", "3")

import mindaudio  # noqa: E402,F401  (must precede mindspore: sets ONEDNN_MAX_CPU_ISA)
from mindaudio.config import Config, ConfigError, check_files, load_config  # noqa: E402
from mindaudio.errors import EXIT_USER_ERROR, UserError, run_cli  # noqa: E402,F401  (run_cli: the entry points' wrapper)

DEFAULT_CONFIG = "deepspeech2.yaml"

# The original's flags and the keys they set (argparse destination -> "Section.key").
ORIGINAL_FLAGS = {
    "device_target": "RuntimeConfig.device_target",
    "device_id": "RuntimeConfig.device_id",
    "mode": "RuntimeConfig.mode",
    "is_distributed": "RuntimeConfig.is_distributed",
    "pre_trained_model_path": "Pretrained_model",
}


class CommandLineError(UserError):
    """A command line argparse cannot read (unknown flag, missing value, bad number)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors raised as `CommandLineError` so they end like every other mistake
    (for scripts with no config; the others get theirs from `build_parser`)."""

    def error(self, message: str):  # noqa: D401  (argparse's hook)
        raise CommandLineError(f"{self.prog}: {message} (see {self.prog} --help)")


OwnArguments = Callable[[argparse.ArgumentParser], None]


def build_parser(description: str, own_arguments: Optional[OwnArguments] = None,
                 single_process: bool = False, config_default: Optional[str] = DEFAULT_CONFIG
                 ) -> argparse.ArgumentParser:
    """`-c`, the original's flags, and the entry point's own flags (added by `own_arguments`).

    single_process: no `--is_distributed` (export.py, transcribe.py and scripts run in one process).
    config_default: the yaml when `-c` is not given; None: no yaml, the built-in defaults.
    """
    parser = ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any yaml key can be set as --Section.key VALUE (e.g. --TrainingConfig.epochs 3, "
               "--CheckpointConfig.resume_from ''), or --key VALUE for a top-level key (--labels, "
               "--Pretrained_model, --drop_apostrophes).")
    parser.add_argument("-c", "--config", default=config_default,
                        help="yaml config (default: %s)" % (config_default or "none: the built-in defaults"))
    original = parser.add_argument_group("the original's flags")
    original.add_argument("--device_target", default=None, metavar="{auto,CPU,GPU,Ascend}",
                          help="sets RuntimeConfig.device_target; auto (the default): Ascend, else GPU, else CPU")
    original.add_argument("--device_id", default=None, metavar="N", help="device number (ignored on CPU)")
    original.add_argument("--mode", default=None, metavar="{GRAPH,PYNATIVE,0,1}",
                          help="GRAPH (0, the default) or PYNATIVE (1)")
    if not single_process:
        original.add_argument("--is_distributed", default=None, nargs="?", const="true", metavar="{true,false}",
                              help="data-parallel training (detected automatically under mpirun/msrun)")
    original.add_argument("--pre_trained_model_path", default=None, metavar="CKPT",
                          help="checkpoint whose weights to load (sets Pretrained_model)")
    if own_arguments is not None:
        own_arguments(parser)
    return parser


def _top_level_keys() -> Tuple[str, ...]:
    """Config keys outside any section (`Pretrained_model`, `labels`, ...), settable as --key VALUE."""
    hints = typing.get_type_hints(Config)
    return tuple(name for name, tp in hints.items() if name != "source" and not dataclasses.is_dataclass(tp))


def split_overrides(argv: Sequence[str]) -> Tuple[Dict[str, str], List[str]]:
    """Take the config overrides out of `argv`: `--Section.key VALUE`, `--Section.key=VALUE`, and
    `--key VALUE` for a top-level key. Returns ({"Section.key": "VALUE"}, the other arguments).

    Done before argparse sees the rest, so an override's value is never taken for an entry point's
    positional argument (transcribe.py's files). VALUE may be empty (`--EvalConfig.lm_path ''`).
    """
    top_level = set(_top_level_keys())
    overrides: Dict[str, str] = {}
    rest: List[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token[2:].split("=", 1)[0] if token.startswith("--") else ""
        if name and ("." in name or name in top_level):
            if "=" in token:
                value = token.split("=", 1)[1]
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise CommandLineError(f"--{name} needs a value (use --{name} '' for the empty string)")
            overrides[name] = value
        else:
            rest.append(token)
        i += 1
    return overrides, rest


def parse_command_line(argv: Optional[Sequence[str]], description: str,
                       own_arguments: Optional[OwnArguments] = None, *,
                       derived_overrides: Optional[Callable[[argparse.Namespace], Dict[str, Any]]] = None,
                       single_process: bool = False, runs_model: bool = True,
                       config_default: Optional[str] = DEFAULT_CONFIG) -> Tuple[Config, argparse.Namespace]:
    """Parse `argv` (default: sys.argv[1:]) once into the validated Config and the entry point's namespace.

    own_arguments: adds the entry point's own flags to the parser.
    derived_overrides: config keys set by the entry point's own flags ({"EvalConfig.lm_path": ...}
    from tune_lm's --lm); applied after the command line's overrides.
    runs_model: also check what the model and MindSpore need (frame geometry, device), before any
    work starts; False for commands that only read the config (build_ngram_lm.py).
    config_default: the yaml read when `-c` is not given (None: the built-in defaults).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = split_overrides(argv)
    parser = build_parser(description, own_arguments, single_process, config_default)
    args = parser.parse_intermixed_args(rest)
    for flag, key in ORIGINAL_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if derived_overrides is not None:
        overrides.update(derived_overrides(args))
    config = load_config(args.config, overrides)
    check_config(config, runs_model=runs_model)
    return config, args


def check_config(config: Config, runs_model: bool = True) -> None:
    """The checks whose rules live above `mindaudio.config`, asked of their owners: the data layer's
    (window names, frame geometry, labels, noise files) and the device's."""
    from mindaudio.data.rules import check_data_config

    check_data_config(config)
    if runs_model:
        from mindaudio.runtime.device import choose_device

        choose_device(config.runtime.device_target)




def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """`--checkpoint`, for entry points that run a trained model (it sets `Pretrained_model`)."""
    parser.add_argument("--checkpoint", default=None,
                        help="model weights: a file or an http(s) URL (default: Pretrained_model from the config)")


def checkpoint_override(args: argparse.Namespace) -> Dict[str, Any]:
    """The config key `--checkpoint` sets: pass as `derived_overrides` to `parse_command_line`."""
    return {"Pretrained_model": args.checkpoint} if args.checkpoint else {}


def require_model_weights(config: Config, *other_files: str) -> None:
    """ConfigError unless `Pretrained_model` (from `--checkpoint` or the yaml) names existing weights;
    `other_files`: further config keys naming input files to check at the same time."""
    if not config.Pretrained_model:
        raise ConfigError(f"{config.source}: no model weights: give --checkpoint or set Pretrained_model")
    check_files(config, ["Pretrained_model", *other_files])
