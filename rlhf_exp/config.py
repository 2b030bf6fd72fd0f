"""Config checking: every group node names a constructor (`_target_`); composing the config builds
the cheap ones (plain dataclasses of settings) so that unknown keys, wrong types and out-of-range
values are refused with one message listing every problem, before any weights load or data is read.

Ranges are declared beside each field with `setting(...)`, so the check and its documentation sit
in one place; the default values themselves live in the YAML files under `conf/`.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any, Iterable

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlhf_exp.errors import UserError


class ConfigError(UserError):
    """A config the user must fix; the message says where and what was expected."""


def setting(*, ge=None, gt=None, le=None, lt=None, choices: Iterable | None = None,
            default=dataclasses.MISSING, doc: str = ""):
    """A dataclass field with a declared range; `settings()` checks it on construction."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, doc=doc).items() if v not in (None, "")}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=meta)


def _violation(name: str, value: Any, meta: dict) -> str | None:
    if value is None:
        return None
    if "choices" in meta and value not in meta["choices"]:
        return f"{name} = {value!r}: expected one of {', '.join(map(repr, meta['choices']))}"
    bounds = [("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
              ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b)]
    wanted = [f"{sym} {meta[k]}" for k, sym, ok in bounds if k in meta]
    if wanted and not all(ok(value, meta[k]) for k, _, ok in bounds if k in meta):
        return f"{name} = {value!r}: expected a value {' and '.join(wanted)}"
    return None


def check_settings(obj) -> None:
    """Check every declared range of a settings dataclass; raise one ValueError naming them all."""
    problems = [p for f in dataclasses.fields(obj)
                if (p := _violation(f.name, getattr(obj, f.name), f.metadata))]
    if problems:
        raise ValueError("; ".join(problems))


def settings(cls):
    """Decorator: a keyword-only dataclass whose declared ranges are checked when it is built."""
    own_post_init = cls.__dict__.get("__post_init__")

    def __post_init__(self):
        check_settings(self)
        if own_post_init is not None:
            own_post_init(self)

    cls.__post_init__ = __post_init__  # set before dataclass() so its __init__ calls it
    return dataclasses.dataclass(kw_only=True)(cls)


def _unknown_keys(keys: Iterable[str], known: Iterable[str]) -> list[str]:
    known = list(known)
    out = []
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            out.append(f"unknown key '{key}'{hint}; known keys: {', '.join(sorted(known))}")
    return out


def build_node(node: DictConfig, where: str) -> Any:
    """Build one group node from its `_target_`.

    A settings dataclass is constructed (types and ranges checked). Any other callable (e.g.
    `pytorch_lightning.Trainer`) is only checked against its signature here and built later by the
    stage that needs it; the node itself is returned.
    """
    def at(p: str, sep: str = ".") -> str:
        return f"{where}{sep}{p}" if where else p

    target_path = node.get("_target_")
    if not target_path:
        raise ConfigError(f"{where}: missing '_target_' (the constructor this node configures)")
    try:
        target = get_object(target_path)
    except Exception as err:  # hydra raises ImportError/ValueError variants
        raise ConfigError(f"{where}._target_ = {target_path!r}: cannot be imported ({err})") from None
    keys = [k for k in node.keys() if k != "_target_"]
    if dataclasses.is_dataclass(target):
        fields = {f.name: f for f in dataclasses.fields(target)}
        unknown = [at(p, ": ") for p in _unknown_keys(keys, fields)]
        missing = [at(f"missing key '{name}'", ": ") for name, f in fields.items()
                   if name not in keys and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        missing += [at(f"{name}: no value given (expected one, e.g. on the command line: "
                       f"{at(name)}=...)") for name in keys if OmegaConf.is_missing(node, name)]
        if missing:
            raise ConfigError("\n".join(unknown + missing))
        try:  # types (via OmegaConf's structured configs), then ranges (the dataclass's checks)
            container = OmegaConf.to_container(node, resolve=True)
            values = {k: v for k, v in container.items() if k in fields}
            built = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(target), values))
            invalid = []
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
            invalid = [f"{at(key)}: {str(err).splitlines()[0]}"]
        except ValueError as err:
            invalid = [at(p) for p in str(err).split("; ")]
        if unknown or invalid:
            raise ConfigError("\n".join(unknown + invalid))
        return built
    params = inspect.signature(target).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        problems = _unknown_keys(keys, [n for n in params if n != "self"])
        if problems:
            raise ConfigError("\n".join(at(p, ": ") for p in problems))
    return node


@settings
class Paths:
    """Where a run writes (`output_dir`, the Hydra run dir) and where offline caches live."""
    output_dir: str
    cache_dir: str


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """Nested dicts/lists -> {"a.b.c": leaf}; `_target_` keys are left out."""
    out: dict[str, object] = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        if key == "_target_":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
