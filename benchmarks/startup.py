"""Benchmark the start-up of `audiocnn` commands that only print: wall time of the whole
process, and whether it imported torch.

Each command runs as ``<venv>/bin/audiocnn ARGS`` (the console script a user types), a
fresh process each time; the median of ``--repeat`` runs is reported. Whether the command
imported torch is checked once per command in a separate process that calls the CLI
(``audiocnn.cli.main.run``) and then looks at ``sys.modules``. A reference row times
``python -c "import torch"`` alone: what any command that imports torch pays at least.

Usage::

    .venv/bin/python benchmarks/startup.py [--repeat 5] [--python .venv/bin/python]

Other benchmarks print the same table with ``from startup import print_startup_table,
startup_rows`` (this script's folder is on ``sys.path`` when one of them runs).

This is not a test; numbers depend on the machine, its disk cache and what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the commands timed, as typed after ``audiocnn``
STARTUP_COMMANDS = [["--version"], ["--help"], ["tag", "--help"], ["models"], ["datasets"], ["pretrained", "list"]]

# Runs the CLI in-process, then reports whether torch was loaded on the last stderr line.
_TORCH_CHECK = """
import sys
from audiocnn.cli.main import run
code = run(sys.argv[1:])
print(f"exit={code} torch={'torch' in sys.modules}", file=sys.stderr)
"""


def _wall_s(cmd: list[str], cwd: str, repeat: int) -> list[float]:
    """Wall seconds of ``repeat`` runs of ``cmd``, each a fresh process; a failing run stops."""
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
        walls.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"`{' '.join(cmd)}` failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return walls


def _imports_torch(python: str, args: list[str], cwd: str) -> bool:
    done = subprocess.run([python, "-c", _TORCH_CHECK, *args], capture_output=True, text=True, cwd=cwd)
    last = done.stderr.strip().splitlines()[-1:] or [""]
    if not last[0].startswith("exit=0 "):
        raise SystemExit(f"audiocnn {' '.join(args)} failed under {python}: {done.stderr[-500:]}")
    return last[0].endswith("torch=True")


def _row(label: str, walls: list[float], torch: bool) -> dict:
    return {"command": label, "wall_s": statistics.median(walls), "wall_min_s": min(walls), "torch": torch}


def startup_rows(python: str, repeat: int) -> list[dict]:
    """One dict per command (``command``, median ``wall_s``, ``wall_min_s``, ``torch``:
    whether it imported torch), then the reference row ``python -c "import torch"``."""
    script = Path(python).parent / "audiocnn"
    launcher = [str(script)] if script.is_file() else [python, "-m", "audiocnn"]
    rows = []
    with tempfile.TemporaryDirectory() as cwd:  # outside any data folder or checkout
        for args in STARTUP_COMMANDS:
            walls = _wall_s([*launcher, *args], cwd, repeat)
            rows.append(_row(f"audiocnn {' '.join(args)}", walls, _imports_torch(python, args, cwd)))
            print(f"  {rows[-1]['command']}: {rows[-1]['wall_s']:.2f} s", file=sys.stderr, flush=True)
        walls = _wall_s([python, "-c", "import torch"], cwd, repeat)
        rows.append(_row('python -c "import torch" (reference)', walls, True))
    return rows


def print_startup_table(rows: list[dict]) -> None:
    """``rows`` of :func:`startup_rows` as a markdown table on stdout."""
    print("| command | wall s (median) | wall s (min) | imports torch |")
    print("|---|---:|---:|---|")
    for r in rows:
        print(f"| `{r['command']}` | {r['wall_s']:.2f} | {r['wall_min_s']:.2f} | {'yes' if r['torch'] else 'no'} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per command (median reported)")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the venv to time (its bin/audiocnn)")
    opts = ap.parse_args(argv)
    rows = startup_rows(opts.python, opts.repeat)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\naudiocnn start-up: {os.cpu_count()} CPUs, load average {load:.1f} at the end, "
        f"median of {opts.repeat} runs, fresh process each\n"
    )
    print_startup_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
