"""The Slurm batch scripts of docs/cluster.md parse, and name the variables they rely on."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

SLURM = Path(__file__).resolve().parents[1] / "examples" / "slurm"


@pytest.mark.parametrize("name", ["tag", "features", "train"])
def test_batch_script_parses_and_says_what_it_needs(name):
    script = SLURM / f"{name}.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    head = text.split("set -euo pipefail")[0]
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", text))
    assert used and all(var in head for var in used), f"{script}: say in its comments which variables it uses"
    assert "audiocnn" in text and "#SBATCH" in text
