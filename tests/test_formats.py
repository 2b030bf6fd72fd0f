"""Feedback files: kinds detected from fields; every bad line reported with line, field, expectation."""
import json

import pytest

from rlhf_exp.feedback.formats import Pair, load_demonstrations, load_feedback, load_pairs, load_prompts, parse_lines
from rlhf_exp.feedback.prompts import Conversation
from rlhf_exp.files import FileError, write_jsonl


def lines(*objs):
    return [o if isinstance(o, str) else json.dumps(o) for o in objs]


RANKED = {"prompt": "p", "completions": ["a", "b", "c"], "rankings": {"x": [1, "F", 2]}}


def problems(*objs):
    with pytest.raises(FileError) as err:
        parse_lines(lines(*objs), source="fb.jsonl")
    return err.value.problems


def test_kinds_are_detected_from_fields():
    assert parse_lines(lines(RANKED)).kind == "ranked"
    assert parse_lines(lines({"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2})).kind == "pairwise"
    assert parse_lines(lines({"prompt": "p", "completion": "a", "label": 1})).kind == "binary"


def test_ranked_record_keeps_flags_and_extra_fields():
    fb = parse_lines(lines({**RANKED, "id": 7}, ""))
    assert fb.records[0].rankings == {"x": [1, "F", 2]}
    assert fb.records[0].extra == {"id": 7}


def test_bad_json_names_line_and_column():
    assert problems(RANKED, "{not json") == ["line 2: bad JSON (Expecting property name enclosed in double quotes at column 2)"]


def test_missing_field():
    assert problems({"prompt": "p", "chosen": "a"}) == ["line 1: field 'rejected': missing (expected a string)"]
    assert problems({"completions": ["a", "b"], "rankings": {}}) == [
        "line 1: field 'prompt': missing (expected a string or a list of role/content turns)"]


def test_ranking_of_the_wrong_length():
    bad = {**RANKED, "rankings": {"x": [1, 2]}}
    assert problems(bad) == ["line 1: field 'rankings.x': expected 3 ranks (one per completion), got 2"]


def test_rank_out_of_range_and_bad_flag():
    bad = {**RANKED, "rankings": {"x": [0, 4, "f"], "y": [1, True, 2]}}
    assert problems(bad) == [
        "line 1: field 'rankings.x[0]': expected an integer rank 1..3 or \"F\", got 0",
        "line 1: field 'rankings.x[1]': expected an integer rank 1..3 or \"F\", got 4",
        "line 1: field 'rankings.x[2]': expected an integer rank 1..3 or \"F\", got 'f'",
        "line 1: field 'rankings.y[1]': expected an integer rank 1..3 or \"F\", got True",
    ]


def test_unknown_kind_and_non_object():
    out = problems({"text": "hello"}, [1, 2])
    assert out[0].startswith("line 1: unknown kind of feedback (fields ['text'])")
    assert out[1] == "line 2: expected a JSON object, got list"


def test_binary_label_and_pairwise_margin_types():
    assert problems({"prompt": "p", "completion": "a", "label": 2}) == [
        "line 1: field 'label': expected 0 (thumbs down) or 1 (thumbs up), got 2"]
    assert problems({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}) == [
        "line 1: field 'margin': expected a number, got 'big'"]


def test_wrong_types_and_too_few_completions():
    assert problems({"prompt": 3, "completions": ["a"], "rankings": {}}) == [
        "line 1: field 'prompt': expected a string or a list of {\"role\", \"content\"} turns (system, user, "
        "assistant) ending with a user turn, got 3",
        "line 1: field 'completions': expected a list of at least 2 strings"]


def test_mixed_kinds_in_one_file():
    out = problems(RANKED, {"prompt": "p", "chosen": "a", "rejected": "b"})
    assert out == ["line 2: a pairwise record in a ranked file (kind set by line 1); one kind per file"]


def test_every_bad_line_is_reported_not_only_the_first():
    out = problems("oops", RANKED, {"x": 1}, {**RANKED, "rankings": {"x": [1]}})
    assert [p.split(":")[0] for p in out] == ["line 1", "line 3", "line 4"]


def test_empty_file_and_missing_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(FileError, match="the file is empty"):
        load_feedback(empty)
    with pytest.raises(FileError, match="no such file"):
        load_feedback(tmp_path / "nope.jsonl")


def test_error_message_names_the_file(tmp_path):
    path = tmp_path / "fb.jsonl"
    path.write_text("{}\n")
    with pytest.raises(FileError) as err:
        load_feedback(path)
    assert str(err.value).startswith(f"{path}: 1 bad line(s)")


def test_write_jsonl_leaves_no_temporary_file(tmp_path):
    out = write_jsonl(tmp_path / "x.jsonl", [{"a": 1}, {"a": 2}])
    assert out.read_text() == '{"a": 1}\n{"a": 2}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]


def test_prompt_and_demonstration_files_are_checked_line_by_line(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "q"}\n[1]\n')
    with pytest.raises(FileError) as err:
        load_demonstrations(path)
    assert err.value.problems == ["line 2: field 'completion': missing (expected a string)",
                                  "line 3: expected a JSON object, got list"]
    path.write_text('{"prompt": "p", "completion": "c"}\n')
    assert load_demonstrations(path) == [{"prompt": "p", "completion": "c"}]


def test_a_pairs_file_is_checked_line_by_line_with_its_optional_fields(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a"}\n'
                    '{"prompt": "p", "chosen": "a", "rejected": 3}\n'
                    '{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big", "set_id": 1.5}\n'
                    '{"prompt": "p", "chosen": "a", "rejected": "b", "agreement": 2}\n'
                    'not json\n')
    with pytest.raises(FileError) as err:
        load_pairs(path)
    assert err.value.problems == [
        "line 1: field 'rejected': missing (expected a string)",
        "line 2: field 'rejected': expected a string, got int",
        "line 3: field 'margin': expected a number, got 'big'",
        "line 3: field 'set_id': expected an integer, got 1.5",
        "line 4: field 'agreement': expected a number in [0, 1], got 2",
        "line 5: bad JSON (Expecting value at column 1)"]
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1, "agreement": 0.5, "set_id": 7, '
                    '"labeler": "x"}\n')
    pair = load_pairs(path)[0]
    assert pair == Pair("p", "a", "b", margin=1, agreement=0.5, set_id=7, extra={"labeler": "x"})
    assert pair.to_json() == {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1, "agreement": 0.5,
                              "set_id": 7, "labeler": "x"}


def test_a_prompt_may_be_a_conversation_and_is_written_back_as_it_was_read(tmp_path):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "My house is too hot."}]
    path = tmp_path / "fb.jsonl"
    path.write_text(json.dumps({"prompt": turns, "completions": ["a", "b"], "rankings": {"x": [1, 2]}}) + "\n"
                    + json.dumps({"prompt": "plain", "completions": ["a", "b"], "rankings": {"x": [2, 1]}}) + "\n")
    records = load_feedback(path).records
    assert records[0].prompt == Conversation.of(turns) and str(records[0].prompt) == "My house is too hot."
    assert records[1].prompt == "plain"
    out = write_jsonl(tmp_path / "out.jsonl", [{"prompt": r.prompt} for r in records])
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == [turns, "plain"]
    assert len({r.prompt for r in records}) == 2  # hashable: prompts are keys of splits and sets


def test_bad_conversations_are_named_line_by_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": [{"role": "user", "content": "ok"}]},
        {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"prompt": [{"role": "wizard", "content": "x"}]},
        {"prompt": []},
        {"prompt": 3},
    ]) + "\n")
    with pytest.raises(FileError) as err:
        load_prompts(path)
    assert [p.split(":")[0] for p in err.value.problems] == ["line 2", "line 3", "line 4", "line 5"]
    assert all("expected a string or a list of {\"role\", \"content\"} turns" in p for p in err.value.problems)
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "ok"}]}) + "\n")
    assert load_prompts(path) == [Conversation((("user", "ok"),))]


def test_bytes_that_are_not_utf8_and_numbers_that_are_not_finite_are_named_bad_lines(tmp_path):
    """Found by tests/test_fuzz.py: a byte that is not UTF-8 ended in a UnicodeDecodeError traceback,
    and `"margin": NaN` (which Python's json reads) was loaded as a margin."""
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
                     b'{"prompt": "p\x80", "chosen": "a", "rejected": "b"}\n'
                     b'{"prompt": "p", "chosen": "a", "rejected": "b", "margin": NaN}\n'
                     b'{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1e999}\n')
    with pytest.raises(FileError) as err:
        load_pairs(path)
    assert err.value.problems == ["line 2: not UTF-8 text (byte 0x80 at column 14)",
                                  "line 3: NaN is not a JSON number (expected a finite number)",
                                  "line 4: 1e999 is too large for a number (expected a finite number)"]
    with pytest.raises(FileError, match="line 2: not UTF-8"):
        load_feedback(path)
