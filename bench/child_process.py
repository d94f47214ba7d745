"""Benchmark child processes: run a command in a fresh process and collect the marked lines it prints.

A benchmark measures in a process of its own so that its peak RSS and compiled graphs are its own. The
child reports on stdout, one line per report: a mark, then the payload, JSON (`print_marked`) or text
(the RSS watchdog's `STOP_MARK` line, bench/process_memory.py); its other output is ignored.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

# A child's result: this mark, then the result as JSON, on one stdout line.
RESULT_MARK = "BENCH_RESULT "
# How much of a failed child's stderr its parent keeps for the message, in characters (the end: the error).
STDERR_TAIL = 3000


@dataclass
class ChildRun:
    """What a finished child left: `lines`, the (mark, rest of the line) of each marked stdout line in
    order; its exit code; the last STDERR_TAIL characters of its stderr ("" when stderr was not captured,
    going straight to this process's stderr). A line's rest is decoded as JSON when read, except for the
    marks in `text_marks`, so lines nobody reads are never decoded."""

    lines: List[Tuple[str, str]]
    returncode: int
    stderr_tail: str
    text_marks: FrozenSet[str]

    def _payload(self, mark: str, rest: str) -> Any:
        return rest if mark in self.text_marks else json.loads(rest)

    def payloads(self, mark: str) -> List[Any]:
        """The payloads of the lines with `mark`, in order."""
        return [self._payload(line_mark, rest) for line_mark, rest in self.lines if line_mark == mark]

    def first(self, *marks: str) -> Tuple[Optional[str], Any]:
        """(mark, payload) of the first line with any of `marks`; (None, None) when there is none."""
        for mark, rest in self.lines:
            if mark in marks:
                return mark, self._payload(mark, rest)
        return None, None


def print_marked(mark: str, payload: Any) -> None:
    """Report `payload` to the parent: `mark` + its JSON on one stdout line, flushed at once (a watchdog
    may end the process with os._exit right after, which flushes nothing)."""
    print(mark + json.dumps(payload), flush=True)


def run_child(command: Sequence[str], cwd, json_marks: Sequence[str] = (RESULT_MARK,),
              text_marks: Sequence[str] = (), env: Optional[Dict[str, str]] = None,
              capture_stderr: bool = True) -> ChildRun:
    """Run `command` in a fresh process in `cwd` (with `env`, default this one's), wait for it to end and
    return its marked stdout lines (`json_marks`, `text_marks`), exit code and stderr tail. With
    `capture_stderr` false the child's stderr (e.g. its progress) goes straight to this process's."""
    proc = subprocess.run(list(command), cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE if capture_stderr else None, text=True)
    marks = list(json_marks) + list(text_marks)
    lines = []
    for line in proc.stdout.splitlines():
        mark = next((mark for mark in marks if line.startswith(mark)), None)
        if mark is not None:
            lines.append((mark, line[len(mark):]))
    return ChildRun(lines, proc.returncode, proc.stderr[-STDERR_TAIL:] if capture_stderr else "",
                    frozenset(text_marks))
