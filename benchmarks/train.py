"""Training throughput of the audiocnn loop from a feature store (not a test).

    .venv/bin/python benchmarks/train.py [--models samplecnn,musicnn] [--steps 6]
        [--workers 0,2] [--clips 24] [--seconds 12] [--device auto] [--threads N]

Builds a synthetic dataset (noise clips, already at each model's sample rate), extracts
the model's own features into the store (not timed), then runs ``audiocnn.training.train``
for one epoch capped at ``--steps`` steps per configuration and reads back what the loop
itself measured: training samples/s and the fraction of the training time spent waiting
for the next batch (``data_wait`` in metrics.csv). The first step (warm-up) is included,
so use enough steps for the number to settle. Batch sizes are the papers' (SampleCNN 23,
musicnn 32). On a GPU each model also runs with AMP (bf16 where supported, else fp16).

Prints one table. Numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

BATCH = {"samplecnn": 23, "musicnn": 32}


def make_dataset(root: Path, name: str, sample_rate: int, clips: int, seconds: float) -> Path:
    from audiocnn.datasets.manifest import Clip, Manifest, write_manifest

    ds = root / name
    raw = ds / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = [f"tag{i}" for i in range(10)]
    items = []
    n_valid = 2
    for i in range(clips + n_valid):
        y = (0.1 * rng.standard_normal(int(seconds * sample_rate))).astype(np.float32)
        path = raw / f"{i:04d}.wav"
        sf.write(str(path), y, sample_rate, subtype="PCM_16")
        tags = sorted({labels[i % 10], labels[(i * 7) % 10]})
        items.append(
            Clip(
                id=f"{i:04d}",
                path=path.name,
                duration=seconds,
                sample_rate=sample_rate,
                labels=tags,
                split="train" if i < clips else "valid",
                integrity={"size": path.stat().st_size},
            )
        )
    write_manifest(Manifest(name=name, dataset="folder", task="multi-label", labels=labels, clips=items), ds)
    return ds


def bench_one(data: Path, model: str, workers: int, device: str, amp: str, steps: int, run_root: Path) -> dict:
    from audiocnn.training.config import config_from_mapping
    from audiocnn.training.loop import train

    cfg = config_from_mapping(
        {
            "dataset": model,
            "model": model,
            "epochs": 1,
            "batch_size": BATCH.get(model, 16),
            "workers": workers,
            "max_steps_per_epoch": steps,
            "eval_chunks": 1,
            "eval_batch_size": 1,
            "amp": amp,
            "tensorboard": False,
            "optimizer": "sgd" if model == "samplecnn" else "adam",
            "lr": 0.01 if model == "samplecnn" else 1e-3,
        }
    )
    run_dir = run_root / f"{model}-w{workers}-{amp}-{time.time_ns()}"
    res = train(cfg, run_dir, data_dir=data, device=device, progress=False)
    row = res.history[-1]
    return {"samples_per_s": row["samples_per_s"], "data_wait": row["data_wait"], "samples": steps * cfg.batch_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="samplecnn,musicnn")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)

    import torch

    from audiocnn.devices import resolve_device
    from audiocnn.models.registry import create_model
    from audiocnn.training.data import open_dataset_store

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    amps = ["none"] + (["auto"] if dev.type == "cuda" else [])
    workers = [int(w) for w in args.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="audiocnn-bench-train-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        for name in args.models.split(","):
            m = create_model(name, num_classes=10, task="multi-label")
            ds = make_dataset(
                data, name, m.sample_rate, args.clips, max(args.seconds, 1.5 * m.input_length / m.sample_rate)
            )
            open_dataset_store(ds, m.frontend_config, progress=False)
            for amp in amps:
                for w in workers:
                    r = bench_one(data, name, w, args.device, amp, args.steps, tmp / "runs")
                    amp_name = "off" if amp == "none" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
                    rows.append(
                        (
                            name,
                            dev.type,
                            amp_name,
                            w,
                            BATCH.get(name, 16),
                            r["samples"],
                            r["samples_per_s"],
                            100 * r["data_wait"],
                        )
                    )
                    print(f"  done: {rows[-1]}", file=sys.stderr)
    desc = torch.cuda.get_device_name(0) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\ntraining throughput ({desc}; torch {torch.__version__}; steps per config: {args.steps})\n")
    print(
        f"| {'model':<10} | {'device':<6} | {'amp':<4} | {'workers':>7} | {'batch':>5} | {'samples':>7} "
        f"| {'samples/s':>9} | {'waiting for data':>16} |"
    )
    print(f"|{'-' * 12}|{'-' * 8}|{'-' * 6}|{'-' * 9}|{'-' * 7}|{'-' * 9}|{'-' * 11}|{'-' * 18}|")
    for name, d, amp, w, b, n, sps, wait in rows:
        print(f"| {name:<10} | {d:<6} | {amp:<4} | {w:>7} | {b:>5} | {n:>7} | {sps:>9.1f} | {wait:>15.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
