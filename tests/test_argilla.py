"""Argilla 2.x export/import of ranked feedback, on fixtures written by the real SDK
(tests/data/argilla/generate.py, argilla==2.8.0; no server)."""
import copy
import json
from pathlib import Path

import pytest

from rlhf_exp.labeling import argilla as A
from rlhf_exp.feedback.formats import FLAG, RankedSet
from rlhf_exp.feedback.prompts import Conversation
from rlhf_exp.files import FileError

DATA = Path(__file__).parent / "data" / "argilla"
INSTRUCTIONS = "Rank the completions from best (1) to worst. Flag nonsense."
ALICE, BOB = "964841d5-410c-5663-be48-e18166b2d2de", "51fe07e2-e69f-5eaf-9386-88a0d820a35e"
CONVERSATION = Conversation.of([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                                {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}])
SETS = [  # what generate.py exported, with empty rankings as `collect=human` writes them
    RankedSet("Name a prime number.", ["7", "9", "banana"], {}, 0, {}),
    RankedSet(CONVERSATION, ["6", "Six.", "33"], {}, 1, {"topic": "math"}),
    RankedSet("Say hi.", ["Hi!", "Hello.", "Bye."], {}, None, {}),
]
# The submitted answers in the annotated fixtures; carol's discarded and draft ones are left out.
EXPECTED_RANKINGS = [
    {ALICE: [1, 2, FLAG], BOB: [1, 1, 3]},
    {ALICE: [2, 1, 3], BOB: [2, 2, FLAG]},
    {},
]


def load(name):
    return json.loads((DATA / name).read_text())


def test_settings_are_what_the_sdk_writes():
    assert A.dataset_settings(3, INSTRUCTIONS, labelers_per_set=2) == load("export/.argilla/settings.json")
    assert A.dataset_json("rlhf-feedback") == load("export/.argilla/dataset.json")


def test_settings_follow_k_and_instructions():
    s = A.dataset_settings(5, "be fair")
    assert s["guidelines"] == "be fair"
    assert [f["name"] for f in s["fields"]] == ["prompt"] + [f"completion_{i}" for i in range(5)]
    (ranking,) = [q for q in s["questions"] if q["name"] == "ranking"]
    assert [o["value"] for o in ranking["settings"]["options"]] == [f"completion_{i}" for i in range(5)]
    assert s["distribution"]["min_submitted"] == 1
    with pytest.raises(ValueError):
        A.dataset_settings(1, "x")


def test_records_are_what_the_sdk_writes():
    # JSON round trip: the SDK's file has lists where a conversation is a tuple in memory
    assert json.loads(json.dumps(A.records(SETS))) == load("export/records.json")


def test_record_ids_are_stable_and_unique():
    twin = RankedSet("Say hi.", ["Hi!", "Hello.", "Bye."], {}, None, {})
    ids = [r["id"] for r in A.records(SETS + [twin])]
    assert ids[:3] == [r["id"] for r in A.records(SETS)]
    assert len(set(ids)) == 4 and ids[3].startswith(ids[2])


def test_records_need_one_k():
    bad = SETS + [RankedSet("p", ["a", "b"], {}, 9, {})]
    with pytest.raises(FileError) as e:
        A.records(bad, source="feedback.jsonl")
    assert e.value.source == "feedback.jsonl"
    assert len(e.value.problems) == 1 and "record 3" in e.value.problems[0] and "'completions'" in e.value.problems[0]


@pytest.mark.parametrize("name", ["annotated_api.json", "annotated_sdk.json"])
def test_rankings_round_trip(name):
    got = A.rankings_from_records(load(name), source=name)
    want = [RankedSet(s.prompt, s.completions, r, s.set_id, s.extra) for s, r in zip(SETS, EXPECTED_RANKINGS)]
    assert got == want
    assert isinstance(got[1].prompt, Conversation)  # the conversation comes back as one, not its last turn


def test_unlabeled_export_reads_back_as_the_sets():
    assert A.rankings_from_records(json.loads(json.dumps(A.records(SETS))), "r.json") == SETS


def test_username_names_the_labeler():
    recs = load("annotated_api.json")
    for r in recs[0]["responses"]:
        r["username"] = {ALICE: "alice", BOB: "bob"}.get(r["user_id"], "carol")
    got = A.rankings_from_records(recs, "r.json")
    assert got[0].rankings == {"alice": [1, 2, FLAG], "bob": [1, 1, 3]}


def test_sdk_stripped_ranks_are_refused():
    """Record.to_dict() of a record read from a server has neither ranks nor statuses."""
    with pytest.raises(FileError) as e:
        A.rankings_from_records(load("sdk_stripped.json"), "stripped.json")
    problems = e.value.problems
    assert all(p.startswith(("record 0 (id 'set-0')", "record 1 (id 'set-1')")) for p in problems)
    assert any("responses.ranking[0].status" in p for p in problems)
    recs = load("sdk_stripped.json")
    for answers in recs[0]["responses"].values():
        for a in answers:
            a["status"] = "submitted"
    with pytest.raises(FileError) as e:
        A.rankings_from_records(recs[:1], "stripped.json")
    assert any("responses.ranking[0].value" in p and "without ranks" in p for p in e.value.problems)


def _bad(mutate, name="annotated_api.json"):
    recs = load(name)
    mutate(recs)
    with pytest.raises(FileError) as e:
        A.rankings_from_records(recs, "bad.json")
    return e.value.problems


def test_bad_rank_named():
    def m(recs):
        recs[1]["responses"][0]["values"]["ranking"]["value"][2]["rank"] = 4
    (p,) = _bad(m)
    assert p.startswith("record 1 (id 'set-1'): field 'responses[0].values.ranking.value'") and "ranks 1..3" in p


def test_missing_and_duplicate_option_named():
    def m(recs):
        recs[0]["responses"][1]["values"]["ranking"]["value"][2]["value"] = "completion_0"
        del recs[1]["responses"][0]["values"]["ranking"]["value"][1]
    problems = _bad(m)
    assert [p.split(":")[0] for p in problems] == ["record 0 (id 'set-0')", "record 1 (id 'set-1')"]


def test_bad_flag_and_status_named():
    def m(recs):
        recs[0]["responses"]["flags"][0]["value"] = ["completion_7"]
        recs[1]["responses"]["ranking"][0]["status"] = "done"
    problems = _bad(m, "annotated_sdk.json")
    assert any(p.startswith("record 0 (id 'set-0'): field 'responses.flags[0].value'") for p in problems)
    assert any(p.startswith("record 1 (id 'set-1'): field 'responses.ranking[0].status'") for p in problems)


def test_submitted_without_ranking_and_bad_user_named():
    def m(recs):
        del recs[0]["responses"][0]["values"]["ranking"]
        recs[1]["responses"][1]["user_id"] = None
    problems = _bad(m)
    assert any(p.startswith("record 0 (id 'set-0'): field 'responses[0]'") and "'ranking'" in p for p in problems)
    assert any(p.startswith("record 1 (id 'set-1'): field 'responses[1].user_id'") for p in problems)


def test_bad_metadata_and_fields_named():
    def m(recs):
        recs[0]["metadata"]["rlhf_exp"] = "{not json"
        del recs[2]["fields"]["completion_1"]
    problems = _bad(m)
    assert problems[0].startswith("record 0 (id 'set-0'): field 'metadata.rlhf_exp'")
    assert problems[1].startswith("record 2 (id 'sha-") and "field 'fields'" in problems[1]


def test_not_a_list_or_not_records():
    with pytest.raises(FileError):
        A.rankings_from_records({"records": []}, "x.json")
    with pytest.raises(FileError) as e:
        A.rankings_from_records([copy.deepcopy(load("annotated_api.json")[0]), 7], "x.json")
    assert e.value.problems[0].startswith("record 1:")
