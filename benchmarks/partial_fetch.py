"""What `prepare fma-small --max-clips N` transfers: bytes and requests against a local
HTTP server serving an FMA-layout fixture (tracks.csv with the two-row header, one zip of
MP3 members), and the time it takes; then completing the dataset from the partial copy.

Re-run: `.venv/bin/python benchmarks/partial_fetch.py --per-genre 400 --clips 50 200 800`.
Nothing leaves 127.0.0.1. Byte counts are exact and machine-independent; times are not.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pytest

from audiocnn.datasets import prepare_dataset
from audiocnn.testing.datasets import fma_fixture, patch_remotes
from audiocnn.testing.server import FixtureServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-genre", type=int, default=400, help="tracks per genre added to the fixture (8 genres)")
    ap.add_argument("--clips", type=int, nargs="+", default=[50, 200, 800])
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    fx = fma_fixture(extra_per_genre=args.per_genre)
    zip_size = len(fx.files["fma_small.zip"])
    mp = pytest.MonkeyPatch()
    patch_remotes(mp, "fma-small", fx.files)
    srv = FixtureServer()
    base = srv.add_files("/fma", fx.files)
    path = "/fma/fma_small.zip"
    print(f"fma_small.zip fixture: {zip_size / 2**20:.1f} MiB, {len(fx.expected['tracks'])} tracks")
    print(f"{'run':<26}{'clips':>7}{'MiB sent':>10}{'% of zip':>10}{'requests':>10}{'seconds':>9}")
    try:
        for n in args.clips:
            with tempfile.TemporaryDirectory() as tmp:
                for label, max_clips in ((f"--max-clips {n}", n), ("then complete it", None)):
                    sent0 = srv.bytes_served(path)
                    req0 = sum(1 for r in srv.requests if r["path"] == path)
                    t0 = time.perf_counter()
                    m = prepare_dataset(
                        "fma-small", tmp, source=base, jobs=args.jobs, progress=False, max_clips=max_clips
                    )
                    dt = time.perf_counter() - t0
                    sent = srv.bytes_served(path) - sent0
                    reqs = sum(1 for r in srv.requests if r["path"] == path) - req0
                    print(
                        f"{label:<26}{len(m.clips):>7}{sent / 2**20:>10.2f}{100 * sent / zip_size:>10.1f}"
                        f"{reqs:>10}{dt:>9.2f}"
                    )
    finally:
        srv.close()
        mp.undo()


if __name__ == "__main__":
    main()
