"""Whether this machine may have an accelerator torch could use, told without importing torch.

``tag`` picks its engine before loading anything: on a CPU-only machine the ONNX Runtime
engine (no torch); where a GPU may be there, torch decides (:mod:`audiocnn.devices`). The
signs read here are those the drivers leave: NVIDIA's device nodes (unless
``CUDA_VISIBLE_DEVICES`` hides every GPU), ROCm's ``/dev/kfd``, Apple silicon's MPS.
"""

from __future__ import annotations

import glob
import os
import platform
import sys


def visible_accelerator() -> str | None:
    """What accelerator may be visible (a few words naming its sign), or None."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip() in ("-1",) or (
        "CUDA_VISIBLE_DEVICES" in os.environ and not os.environ["CUDA_VISIBLE_DEVICES"].strip()
    )
    if not hidden:
        nodes = sorted(glob.glob("/dev/nvidia[0-9]*"))
        if nodes:
            return f"an NVIDIA GPU ({nodes[0]})"
        if os.path.exists("/dev/kfd"):
            return "an AMD GPU (/dev/kfd)"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "Apple silicon (MPS)"
    return None
