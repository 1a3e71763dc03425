"""Pick the torch device for ``--device``: auto = cuda, then mps, then cpu.

Asking for an accelerator that is not there is an error, never a silent fallback to the
CPU: a user who typed ``--device cuda`` wants to know their CUDA setup is broken.
"""

from __future__ import annotations

import logging

import torch

from audiocnn.errors import DeviceError

log = logging.getLogger("audiocnn")

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` -> an available ``torch.device``.

    ``auto`` logs the accelerator it chose (the CPU, the usual case, only at debug level).
    Raises :class:`DeviceError` when the requested device does not exist on this machine.
    """
    raw = str(name).strip().lower()
    kind, _, index = raw.partition(":")
    if kind == "auto" and not index:
        if torch.cuda.is_available():
            dev = torch.device("cuda")
            log.info("device: cuda (%s)", torch.cuda.get_device_name(0))
        elif _mps_available():
            dev = torch.device("mps")
            log.info("device: mps")
        else:
            dev = torch.device("cpu")
            log.debug("device: cpu (no cuda or mps device found)")  # the usual case: said at -v only
        return dev
    if kind == "cpu" and not index:
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(
                f"--device {name}: CUDA is not available ({why}, torch {torch.__version__})",
                hint="use --device auto or --device cpu",
            )
        if index:
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise DeviceError(
                    f"--device {name}: no such CUDA device "
                    f"({torch.cuda.device_count()} visible: cuda:0..cuda:{torch.cuda.device_count() - 1})",
                    hint="use --device cuda",
                )
            return torch.device("cuda", int(index))
        return torch.device("cuda")
    if kind == "mps" and not index:
        if not _mps_available():
            raise DeviceError(
                f"--device {name}: Apple MPS is not available on this machine",
                hint="use --device auto or --device cpu",
            )
        return torch.device("mps")
    raise DeviceError(f"--device {name!r}: expected one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
