"""rlhf-exp-labels: a feedback file exported for Label Studio and Argilla, and their exports read back
into it (each annotator a labeler, merged set by set), on the tools' real fixtures."""
import dataclasses
import json
from pathlib import Path

from rlhf_exp.labeling import argilla, labelstudio
from rlhf_exp.tools.exchange import main
from rlhf_exp.feedback.formats import RankedSet, load_feedback, ranked_to_json
from rlhf_exp.labeling.instructions import GUIDE
from rlhf_exp.files import write_jsonl

DATA = Path(__file__).parent / "data"


def unlabeled(path: Path, sets) -> Path:
    """The sets as stage=collect collect=human writes them: no rankings yet."""
    return write_jsonl(path, (ranked_to_json(dataclasses.replace(s, rankings={})) for s in sets))


def test_label_studio_out_and_back_into_the_feedback_file(tmp_path, capsys):
    labeled = load_feedback(DATA / "labelstudio" / "feedback.jsonl").records
    feedback = unlabeled(tmp_path / "feedback.jsonl", labeled)
    assert main(["export", "labelstudio", str(feedback), str(tmp_path / "ls")]) == 0
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert tasks == labelstudio.tasks(load_feedback(feedback).records)
    assert (tmp_path / "ls" / "label_config.xml").read_text() == labelstudio.label_config(4, GUIDE)

    (tmp_path / "LABELING.md").write_text("Rank by helpfulness.")  # a study's own guide, beside the file
    main(["export", "labelstudio", str(feedback), str(tmp_path / "ls")])
    assert "Rank by helpfulness." in (tmp_path / "ls" / "label_config.xml").read_text()

    assert main(["import", "labelstudio", str(DATA / "labelstudio" / "export.json"), str(feedback)]) == 0
    back = load_feedback(feedback).records
    imported = labelstudio.rankings_from_export(json.loads((DATA / "labelstudio" / "export.json").read_text()), "x")
    assert [s.rankings for s in back] == [s.rankings for s in imported] and any(s.rankings for s in back)
    assert [dataclasses.replace(s, rankings={}) for s in back] == [dataclasses.replace(s, rankings={}) for s in labeled]


def test_an_import_replaces_only_that_labelers_ranking_of_each_set(tmp_path):
    sets = [RankedSet("p", ["a", "b"], {"ann": [1, 2], "zed": [2, 1]}, 0), RankedSet("q", ["c", "d"], {"ann": [2, 1]}, 1)]
    feedback = write_jsonl(tmp_path / "feedback.jsonl", map(ranked_to_json, sets))
    export = [{"id": 1, "data": labelstudio.tasks([sets[0]])[0]["data"], "annotations": [
        {"id": 9, "completed_by": {"id": 2, "email": "ann"}, "was_cancelled": False,
         "result": [{"type": "ranker", "from_name": "rank", "to_name": "completions",
                     "value": {"ranker": {"rank_1": ["c1", "c2"]}}}]}]}]
    (tmp_path / "export.json").write_text(json.dumps(export))
    assert main(["import", "labelstudio", str(tmp_path / "export.json"), str(feedback)]) == 0
    assert [s.rankings for s in load_feedback(feedback).records] == [{"ann": [1, 1], "zed": [2, 1]}, {"ann": [2, 1]}]


def test_argilla_out_and_back(tmp_path):
    sets = [RankedSet("Name a prime number.", ["7", "9", "banana"], {}, 0),
            RankedSet("Say hi.", ["Hi!", "Hello.", "Bye."], {}, 1)]
    feedback = unlabeled(tmp_path / "feedback.jsonl", sets)
    assert main(["export", "argilla", str(feedback), str(tmp_path / "ds"), "--labelers-per-set", "2"]) == 0
    settings = json.loads((tmp_path / "ds" / ".argilla" / "settings.json").read_text())
    assert settings == argilla.dataset_settings(3, GUIDE, 2)
    records = json.loads((tmp_path / "ds" / "records.json").read_text())
    assert records == argilla.records(sets)
    # two labelers answer as the server stores it: a tie for alice, an F from bob
    for rec, (a, b) in zip(records, [([1, 1, 3], [2, 1, 3]), ([1, 2, 3], [3, 2, 1])]):
        rec["responses"] = {"ranking": [{"value": [{"value": f"completion_{i}", "rank": r} for i, r in enumerate(ranks)],
                                         "user_id": user, "status": "submitted"} for user, ranks in (("alice", a), ("bob", b))],
                            "flags": [{"value": ["completion_2"], "user_id": "bob", "status": "submitted"}]}
    (tmp_path / "records.json").write_text(json.dumps(records))
    assert main(["import", "argilla", str(tmp_path / "records.json"), str(feedback)]) == 0
    assert [s.rankings for s in load_feedback(feedback).records] == [
        {"alice": [1, 1, 3], "bob": [2, 1, "F"]}, {"alice": [1, 2, 3], "bob": [3, 2, "F"]}]


def test_bad_exports_and_unknown_sets_are_named_and_nothing_is_written(tmp_path, capsys):
    feedback = unlabeled(tmp_path / "feedback.jsonl", [RankedSet("p", ["a", "b"], {}, 0)])
    before = feedback.read_bytes()
    (tmp_path / "bad.json").write_text('[{"data": 3}')
    assert main(["import", "labelstudio", str(tmp_path / "bad.json"), str(feedback)]) == 2
    assert "bad.json: 1 bad line(s); nothing was written\n  line 1: bad JSON" in capsys.readouterr().err
    other = labelstudio.tasks([RankedSet("other", ["x", "y"], {}, 5)])[0]
    (tmp_path / "other.json").write_text(json.dumps([{"id": 1, **other, "annotations": []}]))
    assert main(["import", "labelstudio", str(tmp_path / "other.json"), str(feedback)]) == 2
    assert "set 0 (set_id 5): not in the feedback file" in capsys.readouterr().err
    assert feedback.read_bytes() == before
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert main(["export", "argilla", str(pairs), str(tmp_path / "out")]) == 2
    assert "a pairwise feedback file: expected ranked sets" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
