"""Public functions take at most three positional parameters; the rest are keyword-only.

A call such as ``step(state, measured, caps, now=now, settings=s)`` says what each value
is, and a new parameter cannot shift the meaning of an old call. Exempt: the typer
commands (their parameters are the command line, registered in ``powercap/commands``) and
methods of Protocols (their implementations must keep the protocol's shape).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("placement", "extender", "powercap", "e2e", "benchmarks")
MAX_POSITIONAL = 3


def _is_protocol(cls: ast.ClassDef) -> bool:
    return any(
        (base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")) == "Protocol"
        for base in cls.bases
    )


def _is_typer_command(fn: ast.FunctionDef | ast.AsyncFunctionDef, path: Path) -> bool:
    # A command's parameters are typer options: Annotated[..., typer.Option(...)] or the
    # shared aliases in powercap/options.py (…Opt, …Arg).
    if "commands" not in path.parts:
        return False
    texts = [ast.unparse(a.annotation) for a in fn.args.args if a.annotation is not None]
    return any("typer." in t or t.endswith(("Opt", "Arg")) for t in texts)


def _offenders(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out: list[str] = []
    # (node, name of the enclosing class or None)
    scopes: list[tuple[ast.AST, str | None]] = [(node, None) for node in tree.body]
    while scopes:
        node, owner = scopes.pop()
        if isinstance(node, ast.ClassDef):
            if not _is_protocol(node):
                scopes.extend((child, node.name) for child in node.body)
            continue
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        private = owner if node.name == "__init__" and owner is not None else node.name
        if private.startswith("_"):
            continue
        if node.args.vararg is not None or _is_typer_command(node, path):
            continue
        positional = [*node.args.posonlyargs, *node.args.args]
        if owner is not None and positional and positional[0].arg in ("self", "cls"):
            positional = positional[1:]
        if len(positional) > MAX_POSITIONAL:
            rel = path.relative_to(ROOT)
            out.append(f"{rel}:{node.lineno} {node.name}() has {len(positional)} positional")
    return out


def test_public_functions_take_at_most_three_positional_parameters() -> None:
    offenders = [
        line
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "tests" not in path.relative_to(ROOT).parts
        for line in _offenders(path)
    ]
    assert not offenders, (
        "make the parameters after the third keyword-only (put `*,` before them) and name "
        "them at the call sites:\n" + "\n".join(offenders)
    )
