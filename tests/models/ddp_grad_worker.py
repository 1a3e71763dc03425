"""A DDP worker for tests/models/test_won_models.py: kept free of the CLI and test helpers so the
two spawned processes import little (torch and the model zoo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def reduce_gradients(rank: int, port: int, out: str, models: dict[str, dict[str, Any]]) -> None:
    """One step of each model in ``models`` (name: kwargs) under DDP on gloo, world size 2,
    each rank its own data; saves every parameter's gradient to ``out/rank<N>.npz``."""
    import torch.distributed as dist  # deferred: in the spawned process only

    from audiocnn.models import create_model  # deferred: as above

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    grads = {}
    for name, kwargs in models.items():
        torch.manual_seed(0)
        model = create_model(name, 3, "single-label", **kwargs).train()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        x = torch.randn(2, model.input_length, generator=torch.Generator().manual_seed(rank)) * 0.1
        torch.nn.functional.cross_entropy(ddp(x), torch.tensor([rank, 2])).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters()]).numpy()
    np.savez(Path(out) / f"rank{rank}.npz", **grads)
    dist.destroy_process_group()
