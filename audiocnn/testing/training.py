"""Tiny datasets and training runs for tests and benchmarks.

Run as ``python -m audiocnn.testing.training ARGS`` it is the `audiocnn` CLI with the test
models registered, which is what the torchrun-launched DDP workers execute.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml

from audiocnn.cli.main import run
from audiocnn.datasets.manifest import Clip, Manifest, write_manifest
from audiocnn.testing.models import SR

SINGLE_LABELS = ["low", "mid", "high"]
SINGLE_FREQS = {"low": 250.0, "mid": 800.0, "high": 2500.0}
MULTI_LABELS = ["bass", "tenor", "alto", "noise"]
MULTI_FREQS = {"bass": 200.0, "tenor": 600.0, "alto": 1800.0}


def _clip_audio(labels: list[str], freqs: dict[str, float], seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = 0.02 * rng.standard_normal(t.shape)
    for lab in labels:
        if lab == "noise":
            y = y + 0.3 * rng.standard_normal(t.shape)
        else:
            y = y + 0.3 * np.sin(2 * np.pi * freqs[lab] * (1 + 0.02 * rng.standard_normal()) * t + rng.uniform(0, 6))
    return (y / max(1.0, np.abs(y).max())).astype(np.float32)


def write_audio_folder(
    src: Path, task: str, *, n_train: int = 8, n_valid: int = 4, n_test: int = 4, seconds: float = 1.5
) -> tuple[Path, Path, list[tuple[str, list[str], str]]]:
    """Synthetic tones whose labels are learnable, plus a ``path,labels,split`` CSV."""
    rows = []
    rng = np.random.default_rng(1 if task == "single-label" else 2)
    splits = ["train"] * n_train + ["valid"] * n_valid + ["test"] * n_test
    for i, split in enumerate(splits):
        if task == "single-label":
            labels = [SINGLE_LABELS[i % 3]]
            freqs = SINGLE_FREQS
        else:
            k = i % 4
            labels = [MULTI_LABELS[k]] + ([MULTI_LABELS[(k + 1) % 4]] if rng.random() < 0.5 else [])
            freqs = MULTI_FREQS
        rel = f"{split}-{i:03d}.wav"
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), _clip_audio(labels, freqs, seconds, seed=i), SR)
        rows.append((rel, labels, split))
    csv_path = src.parent / f"{src.name}-labels.csv"
    csv_path.write_text("path,labels,split\n" + "".join(f"{r},{';'.join(labs)},{s}\n" for r, labs, s in rows))
    return src, csv_path, rows


def prepare_folder(data_dir: Path, src: Path, labels_csv: Path, name: str, task: str) -> int:
    """`audiocnn --data-dir DATA prepare folder --source SRC --labels CSV --name NAME --task TASK -j 1`."""
    args = ["--source", str(src), "--labels", str(labels_csv), "--name", name, "--task", task, "-j", "1"]
    return run(["--data-dir", str(data_dir), "prepare", "folder", *args])


def make_dataset(data_dir: Path, name: str, task: str, **kw) -> Path:
    """A prepared dataset: `audiocnn prepare folder --source DIR --labels CSV --name NAME`
    when this build has it, else the same manifest written directly."""
    src, csv_path, rows = write_audio_folder(Path(data_dir).parent / f"{name}-audio", task, **kw)
    code = prepare_folder(data_dir, src, csv_path, name, task)
    if code == 0:
        return Path(data_dir) / name
    assert code == 2, f"prepare folder failed with exit code {code}"  # 2: not in this build
    clips = [
        Clip(
            id=rel[:-4],
            path=rel,
            duration=1.5,
            sample_rate=SR,
            labels=labs,
            split=split,
            integrity={"size": (src / rel).stat().st_size},
        )
        for rel, labs, split in rows
    ]
    labels = sorted({lab for _r, labs, _s in rows for lab in labs})
    root = Path(data_dir) / name
    write_manifest(
        Manifest(name=name, dataset="folder", task=task, labels=labels, clips=clips, audio_root=str(src.resolve())),
        root,
    )
    return root


def write_config(path: Path, **values) -> Path:
    base = {
        "epochs": 2,
        "batch_size": 4,
        "optimizer": "adam",
        "lr": 0.01,
        "seed": 0,
        "workers": 0,
        "eval_chunks": 3,
        "eval_batch_size": 2,
        "amp": "none",
        "tensorboard": False,
    }
    base.update(values)
    path.write_text(yaml.safe_dump(base))
    return path


def train_both_tasks(root: Path) -> dict[str, tuple[Path, Path, str]]:
    """A 2-epoch multi-label waveform run and single-label mel run under ``root`` through
    ``audiocnn train``: {task: (data_dir, run_dir, dataset)}."""
    data = root / "data"
    data.mkdir()
    out = {}
    for task, dataset, model in (("multi-label", "tags", "test-tiny-wave"), ("single-label", "tones", "test-tiny-mel")):
        make_dataset(data, dataset, task)
        cfg = write_config(root / f"{dataset}.yaml", dataset=dataset, model=model, epochs=2)
        run_dir = root / f"run-{dataset}"
        assert run(["--data-dir", str(data), "train", str(cfg), "--run-dir", str(run_dir), "--device", "cpu"]) == 0
        out[task] = (data, run_dir, dataset)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(run(sys.argv[1:]))
