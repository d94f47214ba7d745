"""The package's import layers (pyproject.toml's import-linter contract) hold: imports point down only.

CLIs -> training -> evaluation | export -> inference -> decoding | metrics -> checkpoint | runtime
-> models -> data -> config; `|` marks independent siblings. Every module in mindaudio/ has a layer,
and no two sibling modules of a package import each other, even through others.
"""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_imports_point_down_the_layers_and_have_no_cycles():
    # lint-imports is installed beside this python (requirements.txt: import-linter).
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.is_file(), f"{lint_imports} not found: pip install import-linter"
    proc = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout and "2 kept" in proc.stdout
