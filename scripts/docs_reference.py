"""The docs' reference pages, generated from the code so that they cannot go stale.

- `config_markdown()`: every config group, option and key of `conf/`, with its default as written and
  the comment beside it (the house rule gives every key one; tests/test_config.py checks it).
- `metric_names()` / `metrics_markdown()`: every metric name the package logs or reads, found by an
  AST scan of `rlhf_exp/`: string literals and f-strings of the form `stage/group/name`, their parts
  resolved where the code binds them to constants (a local variable, a loop over literals, a dict's
  keys, the keys of the dicts a method returns). A part decided only at run time is shown as `<part>`.
  Meanings come from `scripts/metric_meanings.yaml`; a name without one is still listed.

MkDocs calls this at build time through `scripts/docs_hooks.py`; `python scripts/docs_reference.py
config|metrics` prints a page. It reads files only: nothing of rlhf_exp is imported.
"""
from __future__ import annotations

import ast
import fnmatch
import itertools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
PACKAGE = ROOT / "rlhf_exp"
MEANINGS = Path(__file__).resolve().parent / "metric_meanings.yaml"

# ---------------------------------------------------------------------------------------------- config

KEY = re.compile(r"^(\s*)([A-Za-z_][\w]*)\s*:(.*)$")
ITEM = re.compile(r"^(\s*)-\s*(.*)$")


@dataclass
class Row:
    """One key of an option (`path` as it is overridden, e.g. `algorithm.clip_eps`), or a section
    comment (`path` None) that heads the keys after it."""
    path: str | None
    default: str
    meaning: str
    line: int


@dataclass
class Option:
    group: str                  # `algorithm`, `hydra/launcher`; "" for conf/config.yaml
    name: str                   # the file's stem: `group=name` picks it
    file: str                   # conf/…/name.yaml
    about: str = ""             # the comment at the top of the file
    builds: str | None = None   # the node's `_target_`
    package: str = ""           # the prefix of its keys ("" for `# @package _global_`)
    defaults: list[tuple[str, str]] = field(default_factory=list)  # its `defaults:` entries, with comments
    rows: list[Row] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return (self.group.replace("/", "-") + "-" + self.name) if self.group else "root"

    def keys(self) -> list[str]:
        return [r.path for r in self.rows if r.path is not None]


def split_comment(text: str) -> tuple[str, str]:
    """`value  # comment` -> (value, comment); a `#` inside quotes or `${…}` is part of the value."""
    quote, depth = None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        elif ch == "#" and depth == 0 and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip(), text[i + 1:].strip()
    return text.strip(), ""


def parse_option(path: Path, conf: Path = CONF) -> Option:
    """One YAML file of conf/, line by line, keeping each key's comment (a YAML loader drops them)."""
    rel = path.relative_to(conf)
    group = str(rel.parent) if str(rel.parent) != "." else ""
    opt = Option(group=group, name=path.stem, file=f"conf/{rel}", package=group.replace("/", "."))
    lines = path.read_text(encoding="utf-8").splitlines()
    header, i = [], 0
    while i < len(lines) and (lines[i].lstrip().startswith("#") or not lines[i].strip()):
        text = lines[i].strip().lstrip("#").strip()
        if text.startswith("@package"):
            package = text.split(None, 1)[1]
            opt.package = "" if package == "_global_" else package
        elif text:
            header.append(text)
        i += 1
    opt.about = " ".join(header)
    stack: list[tuple[int, str]] = []      # (indent, key) of the nodes the next key may sit in
    last: Row | None = None               # the key a comment line may continue
    last_indent = -1
    in_defaults = None                    # the indent of `defaults:` while reading its list
    for n, line in enumerate(lines[i:], start=i + 1):
        if not line.strip():
            last = None
            continue
        indent = len(line) - len(line.lstrip())
        if line.lstrip().startswith("#"):
            text = line.strip().lstrip("#").strip()
            if last is not None and indent > last_indent:   # a comment that continues the key above
                last.meaning = f"{last.meaning} {text}".strip()
            elif in_defaults is None and text:
                opt.rows.append(Row(None, "", text, n))
                last = None
            continue
        if in_defaults is not None:
            item = ITEM.match(line)
            if item and len(item.group(1)) > in_defaults or (item and len(item.group(1)) == in_defaults):
                value, comment = split_comment(item.group(2))
                opt.defaults.append((value, comment))
                continue
            in_defaults = None
        m = KEY.match(line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        value, comment = split_comment(m.group(3))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if key == "defaults" and not stack:
            in_defaults = indent
            continue
        dotted = ".".join([k for _, k in stack] + [key])
        if key == "_target_" and not stack:
            opt.builds = value
            last = None
            continue
        full = f"{opt.package}.{dotted}" if opt.package else dotted
        last, last_indent = Row(full, value, comment, n), indent
        opt.rows.append(last)
        if not value:
            stack.append((indent, key))
    return opt


def options(conf: Path = CONF) -> list[Option]:
    """Every YAML file under conf/, the root config first, then the groups in the order of its
    defaults list, then the others (experiments, launchers)."""
    root = parse_option(conf / "config.yaml", conf)
    order = [g.split(":")[0].strip().removeprefix("optional ").strip() for g, _ in root.defaults if ":" in g]
    paths = sorted(p for p in conf.rglob("*.yaml") if p != conf / "config.yaml")
    def rank(p: Path):
        group = str(p.relative_to(conf).parent)
        top = group.split("/")[0]
        return (order.index(top) if top in order else len(order), group, p.stem != "default", p.stem)
    return [root] + [parse_option(p, conf) for p in sorted(paths, key=rank)]


def cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, line breaks removed, and outside code spans the
    angle brackets escaped (`<stage>` is no HTML tag)."""
    parts = re.split(r"(`[^`]*`)", text.replace("\n", " "))
    parts = [p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in parts]
    return "".join(parts).replace("|", "\\|")


def code(text: str) -> str:
    """A table cell's inline code (backticks that survive the text inside)."""
    if not text:
        return ""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text.replace('|', chr(92) + '|')}{pad}{fence}"


def key_table(rows: list[Row]) -> list[str]:
    out, open_table = [], False
    for row in rows:
        if row.path is None:
            out += ["", f"*{cell(row.meaning)}*", ""]
            open_table = False
            continue
        if not open_table:
            out += ["| key | default | meaning |", "|---|---|---|"]
            open_table = True
        meaning = row.meaning or ("what the node builds" if row.path.endswith("._target_") else "")
        out.append(f"| {code(row.path)} | {code(row.default)} | {cell(meaning)} |")
    return out


def config_markdown(conf: Path = CONF) -> str:
    opts = options(conf)
    root, rest = opts[0], opts[1:]
    groups: dict[str, list[Option]] = {}
    for o in rest:
        groups.setdefault(o.group, []).append(o)
    picked = {g.split(":")[0].strip().removeprefix("optional ").strip(): (g.split(":", 1)[1].strip(), c)
              for g, c in root.defaults if ":" in g}
    out = ["# Configuration reference", "",
           "Generated from `conf/` when the site is built (`scripts/docs_reference.py`): every group, every "
           "option and every key, with its default as written in the YAML file and the comment beside it. "
           "Pick an option with `group=option` (`algorithm=dpo`); set a key with `key=value` "
           "(`algorithm.clip_eps=0.1`). How the config is composed and checked: "
           "[the config](../concepts/config.md).", "",
           f"## The root config (`{root.file}`) {{#root}}", "", root.about, "",
           "**Groups.** `conf/config.yaml` picks one option of each group:", "",
           "| group | default | options | what it is |", "|---|---|---|---|"]
    for g, (default, comment) in picked.items():
        if g in groups:
            names = ", ".join(f"[`{o.name}`](#{o.anchor})" for o in groups[g])
        else:
            names = "(Hydra's own)"
        out.append(f"| `{g}` | `{cell(default)}` | {names} | {cell(comment)} |")
    for value, comment in root.defaults:
        if ":" not in value and value != "_self_":
            out.append(f"| {code(value)} | | | {cell(comment)} |")
    out += ["", "**Top-level keys:**", ""] + key_table(root.rows)
    for g, opts_of_g in groups.items():
        out += ["", f"## `{g}`" + (f": {cell(picked[g][1])}" if g in picked else ""), ""]
        for o in opts_of_g:
            out += [f"### `{o.group}={o.name}` {{#{o.anchor}}}", "", f"`{o.file}`. {o.about}".strip(), ""]
            facts = []
            if o.builds:
                facts.append(f"Builds `{o.builds}`.")
            extends = [(v, c) for v, c in o.defaults if v != "_self_"]
            if extends:
                facts.append("Its defaults list: " + "; ".join(f"`{v}`" + (f" ({cell(c)})" if c else "")
                                                              for v, c in extends) + ".")
            if not o.package and o.group:
                facts.append("Its keys are global (`# @package _global_`): a bundle of overrides.")
            if facts:
                out += [" ".join(facts), ""]
            out += key_table(o.rows) if o.rows else ["(No keys of its own.)"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------- metrics

NON_ALGORITHM_STAGES = ("sft", "collect", "prepare", "reward", "eval", "round")  # reward_model logs under reward/
CAP = 256                                   # at most this many values per expression


def algorithms() -> dict[str, str]:
    """Each algorithm (conf/algorithm/<name>.yaml) -> the module file of its settings class."""
    out = {}
    for path in sorted((CONF / "algorithm").glob("*.yaml")):
        target = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("_target_", "")
        out[path.stem] = "/".join(target.split(".")[:-1]) + ".py"
    return out


@dataclass
class DictVal:
    """What a dict may hold: each possible key with the possible values under it."""
    items: dict[str, list]


def label(expr: ast.AST) -> str:
    """`<part>` for a part of a name decided at run time: the last name of its expression."""
    if isinstance(expr, ast.Call):
        expr = expr.func
    text = ast.unparse(expr)
    words = re.findall(r"[A-Za-z_]\w*", text)
    return "<" + (words[-1] if words else "part") + ">"


class Module:
    """One source file, with each node's parent, so a name's bindings can be found around its use."""

    def __init__(self, path: Path, package: "Package", root: Path):
        self.path, self.package = path, package
        self.rel = str(path.relative_to(root.parent))   # rlhf_exp/modules/ppo.py
        self.tree = ast.parse(path.read_text(encoding="utf-8"))
        self.parent: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parent[child] = node

    def scope(self, node: ast.AST) -> ast.AST:
        while node in self.parent:
            node = self.parent[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return node
        return self.tree


class Package:
    """Possible values of expressions in rlhf_exp/, by a small constant propagation."""

    def __init__(self, root: Path = PACKAGE):
        self.modules = [Module(p, self, root) for p in sorted(root.rglob("*.py"))]
        self.functions: dict[str, list[tuple[Module, ast.AST]]] = {}
        for m in self.modules:
            for node in ast.walk(m.tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.functions.setdefault(node.name, []).append((m, node))
        self._busy: set = set()

    # the values of an expression: strings (with <part> where unknown) or DictVal
    def values(self, m: Module, e: ast.AST) -> list:
        key = (m.rel, id(e))
        if key in self._busy:
            return [label(e)]
        self._busy.add(key)
        try:
            out = self._values(m, e)
        finally:
            self._busy.discard(key)
        return out[:CAP] or [label(e)]

    def strings(self, m: Module, e: ast.AST) -> list[str]:
        return [v for v in self.values(m, e) if isinstance(v, str)] or [label(e)]

    def _values(self, m: Module, e: ast.AST) -> list:
        if isinstance(e, ast.Constant):
            return [e.value] if isinstance(e.value, str) else [label(e)]
        if isinstance(e, ast.JoinedStr):
            parts = []
            for v in e.values:
                if isinstance(v, ast.Constant):
                    parts.append([str(v.value)])
                elif isinstance(v, ast.FormattedValue) and v.format_spec is None and v.conversion == -1:
                    parts.append(self.strings(m, v.value))
                else:
                    parts.append([label(v)])
            return ["".join(p) for p in itertools.islice(itertools.product(*parts), CAP)]
        if isinstance(e, ast.IfExp):
            return self.values(m, e.body) + self.values(m, e.orelse)
        if isinstance(e, ast.BoolOp) and isinstance(e.op, ast.Or):
            return [v for x in e.values for v in self.values(m, x)]
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add):
            left, right = self.strings(m, e.left), self.strings(m, e.right)
            return [a + b for a, b in itertools.islice(itertools.product(left, right), CAP)]
        if isinstance(e, ast.Dict):
            items: dict[str, list] = {}
            for k, v in zip(e.keys, e.values):
                if k is None:      # {**other}
                    for d in self.values(m, v):
                        if isinstance(d, DictVal):
                            for kk, vv in d.items.items():
                                items.setdefault(kk, []).extend(vv)
                    continue
                for ks in self.strings(m, k):
                    items.setdefault(ks, []).append(v)
            return [DictVal(items)]
        if isinstance(e, ast.DictComp):
            items = {}
            for ks in self.strings(m, e.key):
                items.setdefault(ks, []).append(e.value)
            return [DictVal(items)]
        if isinstance(e, ast.Name):
            return self.name_values(m, e)
        if isinstance(e, ast.Subscript):
            s = e.slice
            out = []
            for d in self.values(m, e.value):
                if isinstance(d, DictVal):
                    keys = self.strings(m, s) if not isinstance(s, ast.Slice) else list(d.items)
                    for k in keys:
                        for v in d.items.get(k, [v for vs in d.items.values() for v in vs]):
                            out += self.values(m, v) if isinstance(v, ast.AST) else [v]
            return out or [label(e)]
        if isinstance(e, ast.Call):
            return self.returned(e) or [label(e)]
        return [label(e)]

    def returned(self, call: ast.Call) -> list:
        """What a call may return: what every function of that name in the package returns."""
        f = call.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        out = []
        for m, fn in self.functions.get(name, []) if name else []:
            for node in ast.walk(fn):
                if isinstance(node, ast.Return) and node.value is not None and m.scope(node) is fn:
                    out += [v for v in self.values(m, node.value) if isinstance(v, DictVal) or "<" not in v]
        return out

    def name_values(self, m: Module, use: ast.Name) -> list:
        """A name's values: from the innermost loop or comprehension around its use that binds it,
        else from every assignment to it in its function (keys added by `name[k] = …` included),
        else from the module's top level."""
        node = use
        while node in m.parent:
            parent = m.parent[node]
            gens = []
            if isinstance(parent, (ast.For, ast.AsyncFor)) and node in parent.body:
                gens = [(parent.target, parent.iter)]
            elif isinstance(parent, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
                gens = [(g.target, g.iter) for g in parent.generators]
            for target, it in gens:
                where = position(target, use.id)
                if where is not None:
                    return self.iterated(m, it, where)
            if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                break
            node = parent
        scope = m.scope(use)
        out = self.assigned(m, scope, use.id)
        if not out and scope is not m.tree:
            out = self.assigned(m, m.tree, use.id)
        return out or [label(use)]

    def assigned(self, m: Module, scope: ast.AST, name: str) -> list:
        out, keys = [], []
        for node in ast.walk(scope):
            if m.scope(node) is not scope and node is not scope:
                continue
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                    if isinstance(target, ast.Name) and target.id == name:
                        out += self.values(m, node.value)
                    elif isinstance(target, (ast.Tuple, ast.List)):
                        where = position(target, name)
                        if isinstance(where, int):
                            for option in tuples(node.value):
                                if len(option) == len(target.elts):
                                    out += self.values(m, option[where])
                    for sub in ast.walk(target):  # name[k] = …: a key it gets
                        if isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name) and sub.value.id == name:
                            keys += [(k, node.value) for k in self.strings(m, sub.slice)]
        if keys:
            dicts = [d for d in out if isinstance(d, DictVal)] or [DictVal({})]
            for d in dicts:
                for k, v in keys:
                    d.items.setdefault(k, []).append(v)
            out = [v for v in out if not isinstance(v, DictVal)] + dicts
        return out

    def iterated(self, m: Module, it: ast.AST, where) -> list:
        """The values a loop target (or element `where` of it) takes over `it`."""
        method = it.func.attr if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) else None
        if method in ("items", "keys", "values") and not it.args:
            entries = [(k, vs) for d in self.values(m, it.func.value) if isinstance(d, DictVal)
                       for k, vs in d.items.items()]
            if method == "keys" or method == "items" and where == 0:
                return [k for k, _ in entries]
            if method == "values" and where == "whole" or method == "items" and where == 1:
                return [x for _, vs in entries for v in vs
                        for x in (self.values(m, v) if isinstance(v, ast.AST) else [v])]
            return []
        if isinstance(it, ast.Name):   # a list bound to a name: each value assigned to it
            scope = m.scope(it)
            return [v for node in ast.walk(scope) if isinstance(node, ast.Assign) and m.scope(node) is scope
                    and any(isinstance(t, ast.Name) and t.id == it.id for t in node.targets)
                    for v in self.iterated(m, node.value, where)]
        if isinstance(it, ast.BinOp) and isinstance(it.op, ast.Add):
            return self.iterated(m, it.left, where) + self.iterated(m, it.right, where)
        if isinstance(it, ast.IfExp):
            return self.iterated(m, it.body, where) + self.iterated(m, it.orelse, where)
        if isinstance(it, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
            elt = it.elt
            if where == "whole" and not isinstance(elt, (ast.Tuple, ast.List)):
                return self.strings(m, elt)
            if isinstance(elt, (ast.Tuple, ast.List)) and isinstance(where, int) and where < len(elt.elts):
                return self.strings(m, elt.elts[where])
            return []
        if isinstance(it, (ast.Tuple, ast.List, ast.Set)):
            out = []
            for elt in it.elts:
                if isinstance(elt, ast.Starred):
                    out += self.iterated(m, elt.value, where)
                elif where == "whole" and not isinstance(elt, (ast.Tuple, ast.List, ast.Starred)):
                    out += self.strings(m, elt)
                elif isinstance(elt, (ast.Tuple, ast.List)) and isinstance(where, int) and where < len(elt.elts):
                    out += self.strings(m, elt.elts[where])
            return out
        return []


def tuples(e: ast.AST) -> list[list[ast.AST]]:
    """The literal tuples an expression may be: `(a, b)`, or either of `(a, b) if c else (d, e)`."""
    if isinstance(e, (ast.Tuple, ast.List)):
        return [e.elts]
    if isinstance(e, ast.IfExp):
        return tuples(e.body) + tuples(e.orelse)
    return []


def position(target: ast.AST, name: str):
    """Where `name` sits in a loop target: "whole" for the target itself, i for element i of a tuple
    (`for k, v in d.items()`: k is 0, v is 1); None where it is not bound there."""
    if isinstance(target, ast.Name):
        return "whole" if target.id == name else None
    if isinstance(target, (ast.Tuple, ast.List)):
        for i, elt in enumerate(target.elts):
            if isinstance(elt, ast.Name) and elt.id == name:
                return i
    return None


SEGMENT = r"(?:[a-z0-9_]|<[a-z_]+>)+"
NAME = re.compile(rf"^{SEGMENT}(?:/{SEGMENT})+$")


def metric_names() -> dict[str, set[str]]:
    """Every metric name in rlhf_exp/ -> the files that name it. A `<part>` stands for a part that is
    decided at run time; a first part decided at run time is `<algorithm>` or `<stage>`."""
    algos = algorithms()
    starts = set(NON_ALGORITHM_STAGES) | set(algos)
    pkg = Package()
    found: dict[str, set[str]] = {}
    for m in pkg.modules:
        owners = [a for a, f in algos.items() if m.rel == f]   # the algorithms whose settings live here
        for node in ast.walk(m.tree):
            concat = isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)
            text_node = isinstance(node, ast.JoinedStr) or isinstance(node, ast.Constant) and isinstance(node.value, str)
            if not (concat or text_node):
                continue
            up = m.parent.get(node)
            if isinstance(up, ast.JoinedStr) or isinstance(up, ast.BinOp) and isinstance(up.op, ast.Add):
                continue           # a piece of an f-string or of a concatenation, not a name
            read = isinstance(up, ast.Compare) or isinstance(up, ast.Subscript) and isinstance(up.ctx, ast.Load)
            for text in pkg.strings(m, node):
                if not isinstance(text, str) or not NAME.match(text) or text.endswith("_"):
                    continue
                if read and re.search(r"(^|/)<[a-z_]+>(/|$)", text.split("/", 1)[1]):
                    continue       # a look-up of names logged elsewhere (`…/heldout/<stop_on>`)
                first, rest = text.split("/", 1)
                if first.startswith("<"):
                    if "<" in rest.split("/")[0] or not m.rel.startswith(("rlhf_exp/modules/", "rlhf_exp/stages/")):
                        continue   # too little known to be a name
                    if first in ("<name>", "<stage>"):
                        firsts = ["<stage>"]
                    else:
                        firsts = owners or ["<algorithm>"]
                elif first in starts:
                    firsts = [first]
                else:
                    continue
                for f in firsts:
                    found.setdefault(f"{f}/{rest}", set()).add(m.rel)
    # a name that heads others (`dpo/train` of `dpo/train/loss`) is a group, not a metric
    heads = {n.rsplit("/", k)[0] for n in found for k in range(1, n.count("/") + 1)}
    return {n: files for n, files in sorted(found.items()) if n not in heads}


def name_pattern(name: str) -> re.Pattern:
    """A metric name as a pattern: each `<part>` matches any text without a slash."""
    return re.compile("^" + re.sub(r"<[^>]*>", "[^/]+", re.escape(name).replace(r"\<", "<").replace(r"\>", ">")) + "$")


def is_logged(name: str, names) -> bool:
    """Does a concrete name (`grpo/policy/clipfrac`) match a name or family of the reference?"""
    return name in names or any(name_pattern(n).match(name) for n in names if "<" in n)


def meanings() -> dict[str, str]:
    return yaml.safe_load(MEANINGS.read_text(encoding="utf-8")) or {}


def meaning_of(name: str, table: dict[str, str]) -> str:
    """The meaning of the most specific pattern (fewest wildcards, then longest) that fits the name;
    `…_se` is the standard error of the name without `_se`."""
    if name.endswith("_se"):
        base = meaning_of(name[:-3], table)
        return f"standard error of: {base}" if base else "a standard error"
    fits = [p for p in table if fnmatch.fnmatchcase(name, p)]
    if not fits:
        return ""
    return table[min(fits, key=lambda p: (p.count("*"), -len(p)))]


def metrics_markdown() -> str:
    names, table = metric_names(), meanings()
    by_stage: dict[str, list[str]] = {}
    for n in names:
        by_stage.setdefault(n.split("/", 1)[0], []).append(n)
    algos = list(algorithms())
    order = ["sft", "collect", "prepare", "reward", *algos, "<algorithm>", "eval", "round", "<stage>"]
    titles = {"sft": "`stage=sft`", "collect": "`stage=collect`", "prepare": "`stage=prepare`",
              "reward": "`stage=reward_model`", "eval": "`stage=eval`", "round": "`rounds=N` (a series)",
              "<algorithm>": "Every on-policy algorithm (`<algorithm>` is its name)",
              "<stage>": "Every stage (`<stage>` is its name)"}
    out = ["# Metrics reference", "",
           "Generated when the site is built (`scripts/docs_reference.py`) by scanning the source of `rlhf_exp/` "
           "for metric names: string literals and f-strings of the form `{stage}/{group}/{name}`, with their parts "
           "resolved where the code binds them to constants. A `<part>` is decided at run time: a labeler or group "
           "id (`L01`, `G1`), a taste, a reason, or the algorithm's name. Every mean that `eval` and the held-out "
           "evaluation report also has its standard error under the same name with `_se`. Meanings come from "
           "`scripts/metric_meanings.yaml`. The MLflow step is the iteration for on-policy algorithms, the "
           "optimizer step for the others, the round for a series.", ""]
    for stage in sorted(by_stage, key=lambda s: order.index(s) if s in order else len(order)):
        title = titles.get(stage, f"`algorithm={stage}`" if stage in algos else f"`{stage}`")
        anchor = {"<algorithm>": "on-policy", "<stage>": "every-stage"}.get(stage, stage)
        out += [f"## {title} {{#{anchor}}}", "", "| metric | meaning | named in |", "|---|---|---|"]
        for n in by_stage[stage]:
            files = ", ".join(f"`{f.removeprefix('rlhf_exp/')}`" for f in sorted(names[n]))
            out.append(f"| `{n}` | {cell(meaning_of(n, table))} | {files} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "metrics"
    print(config_markdown() if what == "config" else metrics_markdown())
