"""Reading audiocnn's own source for the architecture tests: the strings that name a
command-line flag (which belong to the CLI, not the library)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")


def flag_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each string in ``path`` that names a ``--flag``: a string constant, or
    an f-string by its literal parts; docstrings aside."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    texts = []
    for n in ast.walk(tree):
        if isinstance(n, ast.JoinedStr):
            skip.update(id(v) for v in n.values)
            texts.append((n.lineno, "".join(v.value for v in n.values if isinstance(v, ast.Constant))))
    texts += [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
    ]
    return [(line, text) for line, text in texts if FLAG.search(text)]
