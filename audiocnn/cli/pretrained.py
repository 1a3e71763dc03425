"""`audiocnn pretrained list` and `audiocnn pretrained import musicnn [--from PATH]`.

The catalogue is torch-free, so ``pretrained list`` starts fast; only converting
(:func:`audiocnn.pretrained.import_musicnn`) loads torch, inside the call.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from audiocnn.cli import common
from audiocnn.errors import UsageError
from audiocnn.pretrained import import_musicnn, list_pretrained, pretrained_dir
from audiocnn.pretrained.catalog import MUSICNN_MODELS, installed_package_dir

pretrained_app = typer.Typer(
    help="Pretrained models: list them, import them from the musicnn package.",
    no_args_is_help=True,
    add_completion=False,
)


@pretrained_app.command("list")
def list_cmd(
    fmt: common.TableOrJson = typer.Option(common.TableOrJson.table, "--format", help="table or json."),
) -> None:
    """List the pretrained models and whether they are imported into the cache folder."""
    rows = list_pretrained()
    if fmt is common.TableOrJson.json:
        common.print_json(rows)
        return
    table = Table(show_edge=False)
    for col in ("name", "model", "trained on", "imported"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        name = r["name"] + (" (default)" if r["default"] else "")
        table.add_row(name, r["model"], r["dataset"], "yes" if r["imported"] else "no")
    common.out_console().print(table)
    if all(r["imported"] for r in rows):
        return
    if installed_package_dir() is None:
        common.log("the musicnn package is not installed: pip install --no-deps musicnn==0.1.0")
    else:
        common.log(
            f"a model not imported yet imports itself into {pretrained_dir()} the first time it is used "
            "(once for every project)"
        )


@pretrained_app.command("import")
def import_cmd(
    package: str = typer.Argument(..., help="Package to import from: musicnn."),
    source: Optional[str] = typer.Option(
        None,
        "--from",
        help="musicnn package folder (installed or unpacked) or its downloaded wheel/sdist "
        "file; default: the installed package.",
        show_default=False,
    ),
    names: Optional[list[str]] = typer.Option(
        None, "--name", help="Import only this pretrained model (repeatable); default: all.", show_default=False
    ),
    fmt: common.TableOrJson = typer.Option(common.TableOrJson.table, "--format", help="table or json."),
) -> None:
    """Convert a package's pretrained TensorFlow models into audiocnn checkpoints."""
    if package != "musicnn":
        raise UsageError(f"unknown package {package!r}; pretrained models can be imported from: musicnn")
    common.log(f"importing musicnn models into {pretrained_dir()}")
    wanted = list(names) if names else list(MUSICNN_MODELS)
    with common.flags(source="--from"):
        paths = import_musicnn(source, wanted)
    if fmt is common.TableOrJson.json:
        common.print_json([{"name": n, "path": str(p)} for n, p in zip(wanted, paths)])
        return
    for n, p in zip(wanted, paths):
        typer.echo(f"{n}\t{p}")
