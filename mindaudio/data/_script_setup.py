"""Run a data module as a script (`python mindaudio/data/librispeech.py ...`): import this first.

Python then puts the script's folder first on sys.path, where sibling modules could shadow
top-level ones, and not the repository root, which the package imports need. Importing this module
(found as a top-level module through that very folder) swaps the one for the other.
"""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
if str(_HERE.parents[1]) not in sys.path:
    sys.path.insert(0, str(_HERE.parents[1]))
