"""`audiocnn models`: the model zoo."""

from __future__ import annotations

import typer

from audiocnn.cli import common
from audiocnn.cli.app import app
from audiocnn.cli.common import print_json
from audiocnn.errors import UsageError
from audiocnn.zoo import zoo_rows


def _human(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


@app.command("models")
def models(
    fmt: common.TableOrJson = typer.Option(common.TableOrJson.table, "--format", help="table or json."),
    num_outputs: int = typer.Option(50, "--outputs", help="Output size used to count parameters."),
) -> None:
    """List the model zoo: input kind and length, parameters, paper."""
    if num_outputs < 1:
        raise UsageError(f"--outputs must be >= 1, got {num_outputs}")
    rows = zoo_rows(num_outputs)  # the zoo as data: no torch, no network built
    if fmt is common.TableOrJson.json:
        print_json(rows)
        return

    header = ("name", "input", "samples", "seconds", "Hz", "length", "params", "paper")
    lines = [header]
    for r in rows:
        policy = r["length_policy"] or "-"
        if policy == "adaptive":
            policy = f">={r['min_input_length']}"
        lines.append(
            (
                r["name"],
                r["input_kind"],
                str(r["input_length"]),
                f"{r['input_seconds']:.2f}",
                str(r["sample_rate"]),
                policy,
                _human(r["parameters"]),
                r["reference"].split(",")[0],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    right = {2, 3, 4, 6}
    for line in lines:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
        typer.echo("  ".join(cells + [line[-1]]))
    typer.echo(f"(parameters for {num_outputs} outputs; full references: audiocnn models --format json)")
