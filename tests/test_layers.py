"""Imports go one way (DESIGN.md, rule 12): every import of rlhf_exp by rlhf_exp, read with `ast` wherever
it stands (at the top of a file or inside a function, absolute or relative), goes to the importer's own
layer or a lower one, and no packages or modules import each other in a circle. Imports of anything
outside rlhf_exp (torch, peft, gguf, ...) are not counted."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rlhf_exp"

# The layers, lowest first; ARCHITECTURE.md ("The layers") says the same in words. A unit is a package
# of rlhf_exp or a module at its top (`__init__` is rlhf_exp's own). A unit may import units of its own
# layer (without a cycle) and of the layers below it, never of a layer above.
LAYERS = [
    ("core",),                                   # pure torch math: imports no other part of rlhf_exp
    ("__init__", "errors"),                      # the version; errors meant for people
    ("files", "config", "distributed", "gguf"),  # files, settings schemas, ranks, a GGUF file -> a model dir
    ("feedback",),                               # what feedback is: formats, agreement, consensus, rank -> pairs
    ("worlds", "labeling"),                      # where feedback comes from: simulated worlds, people
    ("models",),                                 # loading, prompts, sampling, reward sources, the value head
    ("modules",),                                # LightningModules, their settings, the algorithm records
    ("tracking",),                               # MLflow, compare, the frontier (reads the records)
    ("stages",),                                 # one run(ctx) per stage, the pipeline
    ("tools", "__main__"),                       # the command lines; nothing imports them
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    where = PACKAGE.parent.joinpath(*name.split("."))
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def unit(module: str) -> str:
    """rlhf_exp.models.factory -> models; rlhf_exp.config -> config; rlhf_exp -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every import of rlhf_exp in the file, anywhere in it. `from P import name`
    counts as an import of P.name when that is a module, else of P."""
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source, filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and is_type_checking(block.test)
                 for stmt in block.body for n in ast.walk(stmt)}  # `if TYPE_CHECKING:` imports run never
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from ..models import factory` in rlhf_exp/worlds/x.py
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            names = [f"{stem}.{a.name}" if is_module(f"{stem}.{a.name}") else stem for a in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in dict.fromkeys(names) if n == "rlhf_exp" or n.startswith("rlhf_exp.")]
    return found


def edges() -> list[tuple[str, int, str, str]]:
    """(file, line, importer, imported) over the whole package, self-imports left out."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = module_name(path)
        rel = str(path.relative_to(PACKAGE.parent))
        out += [(rel, line, src, dst) for line, dst in imports(path) if dst != src]
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def described(component: list[str], key, suspect=lambda src, dst: True) -> list[str]:
    """The imports that tie a cycle's members together, as file:line: those `suspect` picks (for packages,
    the ones that do not go down a layer), or all of them when it picks none."""
    members = set(component)
    ties = [(f, line, src, dst) for f, line, src, dst in edges()
            if key(src) in members and key(dst) in members and key(src) != key(dst)]
    return [f"  {f}:{line}: {src} -> {dst}" for f, line, src, dst in
            ([t for t in ties if suspect(t[2], t[3])] or ties)]


def order() -> str:
    return " < ".join("{" + ", ".join(units) + "}" if len(units) > 1 else units[0] for units in LAYERS)


def test_the_reader_sees_imports_inside_functions_relative_ones_and_modules_named_by_from():
    source = ("import os\nimport rlhf_exp.config as c\nfrom . import chat\nfrom ..models import factory\n"
              "from ..errors import UserError\nfrom rlhf_exp.stages import eval, context\n"
              "def f():\n    from rlhf_exp.models.generation import sample\n    import peft\n"
              "class K:\n    def g(self):\n        from rlhf_exp import tools\n")
    got = imports(PACKAGE / "worlds" / "example.py", source)
    assert got == [(2, "rlhf_exp.config"), (3, "rlhf_exp.worlds.chat"), (4, "rlhf_exp.models.factory"),
                   (5, "rlhf_exp.errors"), (6, "rlhf_exp.stages.eval"), (6, "rlhf_exp.stages.context"),
                   (8, "rlhf_exp.models.generation"), (12, "rlhf_exp.tools")]
    init = imports(PACKAGE / "models" / "__init__.py", "from .factory import HFModel\nfrom .. import files\n")
    assert init == [(1, "rlhf_exp.models.factory"), (2, "rlhf_exp.files")]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    typed = ("from typing import TYPE_CHECKING\nimport typing\nif TYPE_CHECKING:\n    from rlhf_exp.stages import checks\n"
             "if typing.TYPE_CHECKING:\n    import rlhf_exp.tools\nif True:\n    from rlhf_exp import files\n")
    assert imports(PACKAGE / "stages" / "x.py", typed) == [(8, "rlhf_exp.files")]  # type-only imports never run


def test_every_package_and_top_module_has_a_layer():
    units = {unit(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert not units - set(LAYER), f"not in LAYERS (tests/test_layers.py), so unchecked: {sorted(units - set(LAYER))}"
    assert not set(LAYER) - units, f"in LAYERS but not in rlhf_exp: {sorted(set(LAYER) - units)}"


def test_no_import_runs_up_a_layer():
    up = [f"{f}:{line}: {src} ({unit(src)}, layer {LAYER[unit(src)]}) imports {dst} "
          f"({unit(dst)}, layer {LAYER[unit(dst)]}), a higher layer"
          for f, line, src, dst in edges() if LAYER.get(unit(dst), -1) > LAYER.get(unit(src), len(LAYERS))]
    assert not up, f"imports that run up a layer (the layers, lowest first: {order()}):\n" + "\n".join(up)


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for _, _, src, dst in edges():
        if unit(src) != unit(dst):
            graph.setdefault(unit(src), set()).add(unit(dst))
    found = cycles(graph)
    assert not found, "packages that import each other in a circle:\n" + "\n".join(
        " <-> ".join(c) + "\n" + "\n".join(described(c, unit, lambda a, b: LAYER[unit(b)] >= LAYER[unit(a)]))
        for c in found)


def test_no_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    for _, _, src, dst in edges():
        graph.setdefault(src, set()).add(dst)
    found = cycles(graph)
    assert not found, "modules that import each other in a circle:\n" + "\n".join(
        " <-> ".join(c) + "\n" + "\n".join(described(c, lambda m: m)) for c in found)
