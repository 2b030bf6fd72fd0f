"""Property-based tests (hypothesis): whatever a feedback, pairs, thumbs, prompts or demonstrations
file holds, loading it gives well-typed records or one FileError naming its bad lines (never a
traceback of another kind); `stage=prepare` on such a file either writes its pairs whole or writes
nothing; and the config checker either accepts an override or refuses it with a ConfigError."""
import functools
import json
import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_exp.feedback import formats
from rlhf_exp.feedback.prompts import Conversation
from rlhf_exp.files import FileError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = (st.none() | st.booleans() | st.integers(-2, 6) | st.integers() | st.floats() | st.text(max_size=6)
           | st.just("F") | st.sampled_from(["user", "assistant", "system"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(["role", "content", "a", "1"]) | st.text(max_size=4),
                                        inner, max_size=3), max_leaves=8)
VALID = {
    "ranked": {"prompt": "p", "completions": ["a", "b", "c"], "rankings": {"l1": [1, 2, "F"], "l2": [2, 1, 3]}},
    "pairwise": {"prompt": [{"role": "user", "content": "p"}], "chosen": "a", "rejected": "b", "margin": 0.5},
    "binary": {"prompt": "p", "completion": "a", "label": 1},
    "demonstration": {"prompt": "p", "completion": "a"},
}


@st.composite
def record(draw, kind):
    """A valid record of `kind` with fields replaced, removed or added at random."""
    obj = json.loads(json.dumps(VALID[kind]))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(obj) + ["set_id", "agreement", "label", "rankings", "extra"]))
        action = draw(st.sampled_from(["replace", "remove"]))
        if action == "remove":
            obj.pop(key, None)
        else:
            obj[key] = draw(values)
    return obj


def lines(kind):
    one = (record(kind).map(lambda o: json.dumps(o, allow_nan=True))
           | st.text(max_size=20) | st.just("") | st.just("[1, 2]") | st.just('{"prompt": "p"'))
    return st.lists(one, min_size=0, max_size=5)


def write(tmp_path, body) -> "Path":
    path = tmp_path / "input.jsonl"
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text("\n".join(body) + "\n", encoding="utf-8")
    return path


def prompt_ok(p) -> bool:
    return isinstance(p, str) or isinstance(p, Conversation)


def finite_or_none(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and math.isfinite(v))


def loads_or_names_lines(load, path):
    """The load's records, or None after a FileError that names a line (or says the file is empty)."""
    try:
        return load(path)
    except FileError as err:
        assert err.problems and all(p.startswith("line ") or "no records" in p or "not UTF-8" in p
                                    for p in err.problems), err.problems
        return None


@FUZZ
@given(kind=st.sampled_from(["ranked", "pairwise", "binary"]), data=st.data())
def test_any_feedback_file_loads_well_typed_or_names_every_bad_line(tmp_path, kind, data):
    fb = loads_or_names_lines(formats.load_feedback, write(tmp_path, data.draw(lines(kind))))
    if fb is None:
        return
    for r in fb.records:
        assert prompt_ok(r.prompt)
        if fb.kind == "ranked":
            assert len(r.completions) >= 2 and all(isinstance(c, str) for c in r.completions)
            assert all(len(ranks) == len(r.completions) and all(x == "F" or (type(x) is int and x >= 1) for x in ranks)
                       for ranks in r.rankings.values())
        elif fb.kind == "pairwise":
            assert isinstance(r.chosen, str) and isinstance(r.rejected, str)
            assert finite_or_none(r.margin) and (r.agreement is None or 0 <= r.agreement <= 1)
        else:
            assert isinstance(r.completion, str) and r.label in (0, 1) and type(r.label) is int


@FUZZ
@given(data=st.data())
def test_any_pairs_thumbs_or_demonstrations_file_loads_well_typed_or_names_every_bad_line(tmp_path, data):
    load, kind = data.draw(st.sampled_from([(formats.load_pairs, "pairwise"), (formats.load_thumbs, "binary"),
                                            (formats.load_demonstrations, "demonstration"),
                                            (formats.load_prompts, "demonstration")]))
    records = loads_or_names_lines(load, write(tmp_path, data.draw(lines(kind))))
    for r in records or []:
        if load is formats.load_pairs:
            assert finite_or_none(r.margin) and isinstance(r.chosen, str) and prompt_ok(r.prompt)
        elif load is formats.load_demonstrations:
            assert prompt_ok(r["prompt"]) and isinstance(r["completion"], str)
        elif load is formats.load_prompts:
            assert prompt_ok(r)


@FUZZ
@given(body=st.binary(max_size=40))
def test_any_bytes_at_all_load_or_are_refused_with_a_file_error(tmp_path, body):
    for load in (formats.load_feedback, formats.load_pairs, formats.load_demonstrations):
        loads_or_names_lines(load, write(tmp_path, b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n' + body))


def leaves(cfg, prefix=""):
    from omegaconf import OmegaConf
    for key in cfg:
        path = f"{prefix}{key}"
        if OmegaConf.is_dict(cfg[key]):
            if key not in ("hydra", "paths"):
                yield from leaves(cfg[key], f"{path}.")
        elif not str(key).startswith("_"):
            yield path


@functools.cache
def composed(algorithm: str):
    from tests.conftest import compose
    return compose(f"algorithm={algorithm}")


@FUZZ
@given(data=st.data(), value=values)
def test_any_value_for_any_setting_is_accepted_or_refused_with_a_config_error(data, value):
    """A setting given a value of any type or range: validate_config builds the run or raises one
    ConfigError that names the setting; never another exception."""
    from omegaconf import OmegaConf

    from rlhf_exp.config import ConfigError
    from rlhf_exp.stages.checks import validate_config
    algorithm = data.draw(st.sampled_from(["ppo", "dpo", "grpo"]))
    cfg = composed(algorithm).copy()
    key = data.draw(st.sampled_from(sorted(leaves(cfg))))
    try:
        OmegaConf.update(cfg, key, value, force_add=True)
    except Exception:  # OmegaConf itself refuses a value its node cannot hold (Hydra reports these)
        return
    try:
        validate_config(cfg, {"algorithm": algorithm})
    except ConfigError as err:
        assert key.split(".")[-1] in str(err) or key.split(".")[0] in str(err), (key, str(err))
