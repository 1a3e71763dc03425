"""The model zoo as data, read without importing torch: what ``audiocnn models`` prints.

``audiocnn/models/zoo.json`` holds one row per built-in model: the fields of
:func:`audiocnn.models.registry.model_info`, with the parameter count as
``parameters_base + parameters_per_output * outputs`` (it is linear in the size of the
output layer). :func:`audiocnn.models.registry.write_zoo_table` writes it from the
registry, and a test checks that it equals what the registry builds, so it cannot go
stale. Listing the zoo this way takes a tenth of a second instead of importing torch and
building every network of the zoo (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ZOO_TABLE = Path(__file__).with_name("models") / "zoo.json"


def zoo_rows(num_outputs: int = 50) -> list[dict[str, Any]]:
    """One row per built-in model, sorted by name, for a head of ``num_outputs`` outputs
    (the rows :func:`audiocnn.models.registry.describe_models` builds)."""
    rows = []
    for entry in json.loads(ZOO_TABLE.read_text(encoding="utf-8")):
        row = dict(entry)
        base, per = row.pop("parameters_base"), row.pop("parameters_per_output")
        row["num_outputs"] = num_outputs
        row["parameters"] = base + per * num_outputs
        rows.append({key: row[key] for key in ZOO_KEYS})
    return rows


#: the keys of a row, in the order ``--format json`` prints them
ZOO_KEYS = (
    "name",
    "input_kind",
    "input_length",
    "input_seconds",
    "sample_rate",
    "input_frames",
    "length_policy",
    "min_input_length",
    "num_outputs",
    "parameters",
    "reference",
    "frontend",
)
