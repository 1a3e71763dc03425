"""`audiocnn export MODEL --format onnx`: write a model for ONNX Runtime and verify it.

Parsing and printing only; the work is :func:`audiocnn.tagging.export.export_onnx`.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from audiocnn.cli.app import app
from audiocnn.cli.tag import _progress  # one plain line per message on stderr, as tag prints them


class ExportFormat(str, Enum):
    onnx = "onnx"


ModelArg = Annotated[
    str,
    typer.Argument(
        help="Pretrained model name (see `audiocnn pretrained list`), a .safetensors checkpoint or a run folder "
        "of `audiocnn train`."
    ),
]
FormatOpt = Annotated[ExportFormat, typer.Option("--format", "-f", help="Export format: onnx.")]
OutputOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        show_default=False,
        help="The .onnx file [default: MODEL.onnx here]; mel models also get <stem>.frontend.onnx next to it.",
    ),
]
AudioOpt = Annotated[
    Optional[Path],
    typer.Option("--audio", show_default=False, help="A song for the real-input check [default: the shipped example]."),
]


@app.command("export")
def export(
    model: ModelArg,
    fmt: FormatOpt = ExportFormat.onnx,
    output: OutputOpt = None,
    audio: AudioOpt = None,
) -> None:
    """Export a model to ONNX (dynamic batch axis, labels and config in the metadata) and
    check it against torch with onnxruntime on random and real input."""
    if output is not None and output.suffix.lower() != ".onnx":
        raise typer.BadParameter(f"{output}: the file name must end in .onnx", param_hint="--output")
    from audiocnn.tagging.export import export_onnx  # deferred: torch and onnx, only once there is work to do

    rep = export_onnx(model, output, audio=audio, report=_progress)
    _progress(f"largest difference {rep.max_abs_diff:.2e} <= {1e-4:g}: the export reproduces the torch model")
    for p in (rep.model, rep.frontend, rep.frames):
        if p is not None:
            sys.stdout.write(f"{p}\n")
