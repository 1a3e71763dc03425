"""Commands that only print (help, the model zoo, the datasets, the pretrained catalogue)
start without importing torch, which costs seconds before anything is shown."""

from __future__ import annotations

import json
import subprocess
import sys

TORCH_FREE_COMMANDS = [["--help"], ["tag", "--help"], ["models"], ["datasets"], ["pretrained", "list"]]

# One process runs the commands in order and names the first one after which torch is loaded.
_CHILD = """
import json, sys
from audiocnn.cli.main import run
for argv in json.loads(sys.argv[1]):
    code = run(argv)
    if code != 0:
        sys.exit(f"audiocnn {' '.join(argv)} exited with {code}")
    if "torch" in sys.modules:
        sys.exit(f"audiocnn {' '.join(argv)} imported torch")
print("no torch", file=sys.stderr)
"""


def test_printing_commands_do_not_import_torch(tmp_path, cache_dir, data_dir):
    args = [sys.executable, "-c", _CHILD, json.dumps(TORCH_FREE_COMMANDS)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]
    assert done.stderr.strip().endswith("no torch")
    assert "musicnn-mtt (default)" in done.stdout and "shortchunk-resnet" in done.stdout
