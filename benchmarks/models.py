"""Model zoo benchmark: parameters, MACs per input, training and inference throughput.

Not a test: prints a markdown table (and optionally JSON) to re-run and compare.

    .venv/bin/python benchmarks/models.py                      # every model, CPU (+ GPU if present)
    .venv/bin/python benchmarks/models.py --models samplecnn,fcn --iters 5
    .venv/bin/python benchmarks/models.py --device cuda --batch 32 --json out.json

For each model and precision (CPU: fp32, bf16 autocast; CUDA: fp32, bf16, fp16 autocast):

* train samples/s: forward + BCE loss + backward + SGD step on a batch of native-length
  random waveforms, end to end (front-end included);
* infer samples/s: forward under ``torch.inference_mode`` in eval mode.

MACs per input are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one
native-length example (FLOPs / 2): convolutions, matmuls (incl. the mel filterbank);
the FFT of the STFT is not counted by the flop counter. harmonic-cnn computes its STFT as
a real-DFT matmul (so that it exports to ONNX), which is counted (82M of its 4.38G).

2-D (mel) models run channels-last on CUDA (``--channels-last auto``), where cuDNN
prefers it; on CPU they stay contiguous unless ``--channels-last on``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

from audiocnn.models import create_model, get_model_class, list_models
from audiocnn.models.base import count_parameters

PRECISIONS = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16", "fp16")}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def count_macs(model: torch.nn.Module, length: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    x = torch.zeros(1, length)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


def autocast(device: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=DTYPES[precision])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def throughput(fn, batch: int, iters: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return batch * iters / (time.perf_counter() - start)


def bench_model(name: str, device: str, args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=50, task="multi-label").to(device)
    channels_last = args.channels_last == "on" or (
        args.channels_last == "auto" and device == "cuda" and model.spec.input_kind == "mel"
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = 0.1 * torch.randn(args.batch, model.input_length, device=device)
    y = (torch.rand(args.batch, 50, device=device) < 0.1).float()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rows = []
    for precision in PRECISIONS[device]:
        if args.precisions and precision not in args.precisions:
            continue
        if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            continue

        def train_step(precision=precision):
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = loss_fn(model(x).float(), y)
            loss.backward()
            opt.step()

        def infer_step(precision=precision):
            with torch.inference_mode(), autocast(device, precision):
                model(x)

        model.train()
        train = throughput(train_step, args.batch, args.iters, args.warmup, device)
        model.eval()
        infer = throughput(infer_step, args.batch, args.iters, args.warmup, device)
        rows.append(
            {
                "model": name,
                "device": device,
                "precision": precision,
                "channels_last": channels_last,
                "train_samples_per_s": round(train, 2),
                "infer_samples_per_s": round(infer, 2),
            }
        )
        print(f"  {name:18s} {device:4s} {precision:4s} train {train:9.1f}/s  infer {infer:9.1f}/s", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated names (default: the whole zoo)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations before each measurement")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = CPU, plus CUDA when present"
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--precisions", default="", help="subset of fp32,bf16,fp16 (default: all for the device)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    args.precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]

    zoo = [n for n in list_models() if get_model_class(n).__module__.startswith("audiocnn.")]
    names = [n.strip() for n in args.models.split(",") if n.strip()] or zoo
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(zoo)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    elif args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible to torch")
    else:
        devices = [args.device]

    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if "cuda" in devices else None,
        "batch": args.batch,
        "iters": args.iters,
    }
    print(f"# {json.dumps(info)}")

    static = {}
    rows = []
    for name in names:
        model = create_model(name, num_classes=50)
        static[name] = {
            "params": count_parameters(model),
            "macs": count_macs(model, model.input_length),
            "seconds": model.input_length / model.sample_rate,
        }
        del model
        for device in devices:
            rows.extend(bench_model(name, device, args))

    header = "| model | input s | params | MACs/input | device | precision | train samples/s | infer samples/s |"
    print(header)
    print("|---|---:|---:|---:|---|---|---:|---:|")
    for r in rows:
        s = static[r["model"]]
        print(
            f"| {r['model']} | {s['seconds']:.2f} | {s['params'] / 1e6:.2f}M | {s['macs'] / 1e9:.2f}G | "
            f"{r['device']}{' (CL)' if r['channels_last'] else ''} | {r['precision']} | "
            f"{r['train_samples_per_s']:.1f} | {r['infer_samples_per_s']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"info": info, "static": static, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
