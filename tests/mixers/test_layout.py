"""The package's shape: the server runs without torch, and the older import paths still work."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_server_and_the_algorithms_import_no_torch():
    """A mixer server machine needs no torch: nothing `sluice serve` loads imports it."""
    modules = ["mixers.server.flight", "mixers.server.cli", "mixers.cli", "mixers.algorithms", "mixers.tools.simulate"]
    code = f"import importlib, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
    code += "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
    code += "assert not loaded, loaded[:5]\n"
    r = _python("-c", code)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        ("mixers.client", "mixers.trainer.client", ["MixtureStream", "RecycledArrays", "train_tensors"]),
        ("mixers.trainer_utils", "mixers.trainer.utils", ["alignment_scores", "causal_lm_loss", "held_out_losses"]),
        ("mixers.train", "mixers.tools.train", ["GPT", "Trainer", "main", "save_figure"]),
        ("mixers.simulate", "mixers.tools.simulate", ["MixingLaw", "SimulatedTrainer", "run"]),
        ("mixers.cli", "mixers.server.cli", ["serve", "main"]),
    ],
)
def test_older_import_paths_re_export_the_moved_modules(old, new, names):
    old_mod, new_mod = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(old_mod, name) is getattr(new_mod, name)
    assert set(old_mod.__all__) <= set(dir(new_mod))


def test_python_dash_m_on_the_older_paths_runs_the_commands():
    r = _python("-m", "mixers.train", "--help")
    assert r.returncode == 0 and "usage: python -m mixers.train" in r.stdout and "--serve RUN" in r.stdout
    r = _python("-m", "mixers.cli", "--help")
    assert r.returncode == 0 and "--resume-from" in r.stdout
