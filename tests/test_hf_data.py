"""data=hf: local Hugging Face datasets in every supported shape and file type, read through
`datasets`; bad rows named with their index and column; prepare's pairs.parquet read back."""
import json

import datasets
import pytest

from rlhf_exp.feedback.formats import RankedSet, load_pairs
from rlhf_exp.feedback.hf import competition_ranks
from rlhf_exp.feedback.prompts import Conversation
from rlhf_exp.files import FileError

from tests.conftest import settings

STANDARD = [{"prompt": "How do I boil an egg?", "chosen": "Boil it for 8 minutes.", "rejected": "No."},
            {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}]
CONVERSATIONAL = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                   "chosen": [{"role": "assistant", "content": "Hello!"}],
                   "rejected": [{"role": "assistant", "content": "Go away."}]}]
HH = [{"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4\n\nHuman: And 3+3?\n\nAssistant: 6",
       "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 4\n\nHuman: And 3+3?\n\nAssistant: fish"},
      {"chosen": "\n\nHuman: Hello\n\nAssistant: Hi there", "rejected": "\n\nHuman: Hello\n\nAssistant: What?"}]
ULTRA = [{"instruction": "Name a fruit.", "source": "test", "completions": [
    {"model": "a", "response": "Apple.", "annotations": {"helpfulness": {"Rating": "5", "Rationale": "ok"},
                                                         "honesty": {"Rating": "4", "Rationale": "ok"}}},
    {"model": "b", "response": "A car.", "annotations": {"helpfulness": {"Rating": "1", "Rationale": "no"},
                                                         "honesty": {"Rating": "N/A", "Rationale": "?"}}},
    {"model": "c", "response": "Pear.", "annotations": {"helpfulness": {"Rating": "5", "Rationale": "ok"},
                                                        "honesty": {"Rating": "2", "Rationale": "hm"}}}]}]
ULTRA_COLUMNS = {"prompt": "instruction", "ratings": "annotations"}


def write(tmp_path, rows, kind: str):
    """The rows saved as a dataset of the given kind (a file, or a save_to_disk directory)."""
    ds = None if kind in ("jsonl", "json") else datasets.Dataset.from_list(rows)
    path = tmp_path / {"jsonl": "d.jsonl", "json": "d.json", "parquet": "d.parquet", "csv": "d.csv",
                       "disk": "d_disk", "dict": "d_dict"}[kind]
    if kind in ("jsonl", "json"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif kind == "parquet":
        ds.to_parquet(str(path))
    elif kind == "csv":
        ds.to_csv(str(path), index=False)
    elif kind == "disk":
        ds.save_to_disk(str(path))
    else:
        datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(path))
    return str(path)


def hf(tmp_path, columns=None, **overrides):
    if columns:
        overrides["columns"] = {**vars(settings("data", "hf").columns), **columns}
    return settings("data", "hf", cache_dir=str(tmp_path / "cache"), **overrides)


def feedback(tmp_path, **overrides):
    return hf(tmp_path, **overrides).load().feedback


def bad_rows(tmp_path, **overrides):
    with pytest.raises(FileError) as err:
        hf(tmp_path, **overrides).load()
    return err.value


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "disk", "dict"])
def test_standard_preference_from_every_file_type(tmp_path, kind):
    fb = feedback(tmp_path, feedback=write(tmp_path, STANDARD, kind))
    assert fb.kind == "pairwise"
    assert [(p.prompt, p.chosen, p.rejected, p.set_id) for p in fb.records] == [
        ("How do I boil an egg?", "Boil it for 8 minutes.", "No.", 0), ("Name a colour.", "Blue.", "Seven.", 1)]
    if kind in ("jsonl", "parquet", "csv"):  # converted by `datasets` into data.cache_dir, not ~/.cache
        assert any((tmp_path / "cache").rglob("*.arrow"))


def test_a_dataset_directory_split_is_chosen_by_data_split(tmp_path):
    path = write(tmp_path, STANDARD, "dict")
    assert len(feedback(tmp_path, feedback=path, split="test").records) == 1
    err = bad_rows(tmp_path, feedback=path, split="validation")
    assert err.problems == ["no split 'validation' (data.split); it has train, test"]


def test_conversational_preference_keeps_the_conversation(tmp_path):
    (pair,) = feedback(tmp_path, feedback=write(tmp_path, CONVERSATIONAL, "parquet")).records
    assert pair.prompt == Conversation((("system", "Be brief."), ("user", "Hi")))
    assert (pair.chosen, pair.rejected) == ("Hello!", "Go away.")


def test_columns_are_mapped(tmp_path):
    rows = [{"question": r["prompt"], "response_j": r["chosen"], "response_k": r["rejected"]} for r in STANDARD]
    fb = feedback(tmp_path, feedback=write(tmp_path, rows, "jsonl"),
                  columns={"prompt": "question", "chosen": "response_j", "rejected": "response_k"})
    assert [p.chosen for p in fb.records] == ["Boil it for 8 minutes.", "Blue."]


def test_hh_rlhf_dialogues_split_into_prompt_and_final_assistant_turns(tmp_path):
    first, second = feedback(tmp_path, feedback=write(tmp_path, HH, "parquet"), format="hh_rlhf").records
    assert first.prompt == Conversation((("user", "What is 2+2?"), ("assistant", "4"), ("user", "And 3+3?")))
    assert (first.chosen, first.rejected) == ("6", "fish")
    assert (second.prompt, second.chosen, second.rejected) == ("Hello", "Hi there", "What?")


def test_hh_rlhf_as_message_lists(tmp_path):
    turns = [{"role": "user", "content": "Hello"}]
    rows = [{"chosen": turns + [{"role": "assistant", "content": "Hi!"}],
             "rejected": turns + [{"role": "assistant", "content": "Bye."}]}]
    (pair,) = feedback(tmp_path, feedback=write(tmp_path, rows, "jsonl"), format="hh_rlhf").records
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Hello", "Hi!", "Bye.")


def test_competition_ranks_by_hand():
    assert competition_ranks([5, 3, 5, 1]) == [1, 3, 1, 4]
    assert competition_ranks([2.0, 2.0]) == [1, 1]
    assert competition_ranks([1, 2, 3]) == [3, 2, 1]


def test_ultrafeedback_ratings_become_rankings_with_each_aspect_a_labeler(tmp_path):
    fb = feedback(tmp_path, feedback=write(tmp_path, ULTRA, "jsonl"), format="ratings", columns=ULTRA_COLUMNS)
    assert fb.kind == "ranked"
    # honesty left one completion unrated ("N/A"): it ranks none of this set
    assert fb.records == [RankedSet("Name a fruit.", ["Apple.", "A car.", "Pear."], {"helpfulness": [1, 3, 1]}, 0)]
    rated = [{**ULTRA[0], "completions": [{**c, "annotations": {"honesty": {"Rating": r, "Rationale": ""},
                                                                 "helpfulness": {"Rating": "3", "Rationale": ""}}}
                                          for c, r in zip(ULTRA[0]["completions"], ["2", "5", "2"])]}]
    (s,) = feedback(tmp_path, feedback=write(tmp_path, rated, "parquet"), format="ratings",
                    columns=ULTRA_COLUMNS).records
    assert s.rankings == {"helpfulness": [1, 1, 1], "honesty": [2, 1, 2]}


def test_ratings_by_raters_as_plain_numbers(tmp_path):
    rows = [{"prompt": "p", "completions": [{"response": "a", "ratings": {"ann": 2, "bob": 1}},
                                            {"response": "b", "ratings": {"ann": 7, "bob": 1}}]}]
    (s,) = feedback(tmp_path, feedback=write(tmp_path, rows, "jsonl"), format="ratings").records
    assert s.rankings == {"ann": [2, 1], "bob": [1, 1]}


def test_ratings_go_through_agreement_and_pairs_unchanged(tmp_path):
    from rlhf_exp.feedback.consensus import prepare_pairs
    rows = [{"prompt": f"p{i}", "completions": [{"response": t, "ratings": {"ann": s, "bob": s, "eve": -s}}
                                                for t, s in (("good", 3), ("fair", 2), ("bad", 1))]}
            for i in range(4)]
    prepared = prepare_pairs(feedback(tmp_path, feedback=write(tmp_path, rows, "jsonl"), format="ratings"),
                             min_agreement=0.2, flag_quorum=0.5)
    assert [lab for lab, st in prepared.labelers.items() if st.set_aside] == ["eve"]
    assert {(p.chosen, p.rejected) for p in prepared.pairs} == {("good", "fair"), ("good", "bad"), ("fair", "bad")}
    assert len(prepared.pairs) == 12   # 4 sets x 3 choose 2


def test_every_bad_row_is_named_with_index_and_column(tmp_path):
    rows = [STANDARD[0], {"prompt": "q", "chosen": None, "rejected": "x"}, {"prompt": None, "chosen": "a", "rejected": "b"}]
    err = bad_rows(tmp_path, feedback=write(tmp_path, rows, "jsonl"), columns={"chosen": "chosen"})
    assert "2 bad row(s); nothing was written" in str(err)
    assert err.problems == [
        "row 1: column 'chosen': expected a string or a list of one assistant message, got None",
        "row 2: column 'prompt': expected a string or a list of {\"role\", \"content\"} turns (system, user, "
        "assistant) ending with a user turn, got None"]


def test_a_missing_column_is_named_on_every_row(tmp_path):
    err = bad_rows(tmp_path, feedback=write(tmp_path, STANDARD, "parquet"), columns={"prompt": "question"})
    assert err.problems[0] == "row 0: column 'question': missing (expected a string or a list of role/content turns)"
    assert len(err.problems) == 2


def test_bad_hh_and_ratings_rows(tmp_path):
    hh = [HH[1], {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"},
          {"chosen": "no markers", "rejected": "\n\nHuman: A\n\nAssistant: y"}]
    err = bad_rows(tmp_path, feedback=write(tmp_path, hh, "jsonl"), format="hh_rlhf")
    assert err.problems == [
        "row 1: columns 'chosen' and 'rejected': expected the same dialogue up to the last assistant turn "
        "(they differ before it)",
        "row 2: column 'chosen': expected a dialogue of \"\\n\\nHuman: ...\" and \"\\n\\nAssistant: ...\" turns, "
        "got 'no markers'"]
    ratings = [{"prompt": "p", "completions": [{"response": "a", "ratings": {"ann": "great"}},
                                               {"response": None, "ratings": {"ann": 1}}]},
               {"prompt": "p", "completions": [{"response": "a", "ratings": {"ann": 1}}]}]
    err = bad_rows(tmp_path, feedback=write(tmp_path, ratings, "jsonl"), format="ratings")
    assert err.problems[:2] == [
        "row 0: column 'completions[0].ratings.ann': expected a number, a numeric string, \"N/A\" or "
        "{'Rating': number}, got 'great'",
        "row 0: column 'completions[1].response': expected the completion's text, got None"]
    assert err.problems[2].startswith("row 1: column 'completions': expected a list of at least 2 objects")


def test_files_the_library_cannot_read_are_named(tmp_path):
    assert "no such file or directory" in bad_rows(tmp_path, feedback=str(tmp_path / "nope.jsonl")).problems[0]
    (tmp_path / "d.txt").write_text("x")
    assert bad_rows(tmp_path, feedback=str(tmp_path / "d.txt")).problems[0].startswith("unknown file type '.txt'")
    (tmp_path / "mixed.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": 3, "chosen"\n')
    err = bad_rows(tmp_path, feedback=str(tmp_path / "mixed.jsonl"))
    assert err.problems[0].startswith("not readable as a dataset") and str(tmp_path / "mixed.jsonl") in str(err)


def test_prompts_and_demonstrations(tmp_path):
    prompts = write(tmp_path, [{"prompt": "a"}, {"prompt": "b"}], "csv")
    demos = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
             {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                           {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you."}]}]
    data = hf(tmp_path, prompts=prompts, demonstrations=write(tmp_path, demos, "parquet"))
    assert data.train_prompts() == ["a", "b"] and data.heldout_prompts() == []
    assert data.sft_rows("helpful", 1) == [
        {"prompt": "Hi", "completion": "Hello!"},
        {"prompt": Conversation((("user", "Hi"), ("assistant", "Yo"), ("user", "Bye"))), "completion": "See you."}]
    plain = write(tmp_path, [{"prompt": "q", "completion": "a"}], "jsonl")
    assert hf(tmp_path, demonstrations=plain).sft_rows("helpful", 1) == [{"prompt": "q", "completion": "a"}]


def test_without_a_prompts_dataset_the_feedback_prompts_are_used(tmp_path):
    rows = STANDARD + [{**STANDARD[0], "chosen": "Eight minutes."}]
    data = hf(tmp_path, feedback=write(tmp_path, rows, "jsonl"))
    assert data.train_prompts() == ["How do I boil an egg?", "Name a colour."]
    with pytest.raises(Exception, match="data.demonstrations: no dataset given; stage=sft needs it"):
        data.sft_rows("helpful", 1)


def as_format(fmt: str, pairs: list[dict], sets: list[dict]) -> list[dict]:
    """The smoke run's feedback in one of the dataset shapes: its pairs, or (ratings) its ranked sets
    with each labeler's ranks turned into ratings (flags left unrated)."""
    turn = lambda role, text: [{"role": role, "content": text}]  # noqa: E731
    if fmt == "standard":
        return [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
    if fmt == "conversational":
        return [{"prompt": turn("user", p["prompt"]), "chosen": turn("assistant", p["chosen"]),
                 "rejected": turn("assistant", p["rejected"])} for p in pairs]
    if fmt == "hh_rlhf":
        return [{side: f"\n\nHuman: {p['prompt']}\n\nAssistant: {p[side]}" for side in ("chosen", "rejected")}
                for p in pairs]
    k = len(sets[0]["completions"])
    return [{"instruction": s["prompt"], "completions": [
        {"response": text, "annotations": {lab: {"Rating": "N/A" if r[i] == "F" else str(k + 1 - r[i])}
                                           for lab, r in s["rankings"].items()}}
        for i, text in enumerate(s["completions"])]} for s in sets]


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", ["standard", "conversational", "hh_rlhf", "ratings"])
def test_each_format_goes_through_prepare_and_trains_a_reward_model_in_one_command(cli, tmp_path, base, fmt):
    from mlflow.tracking import MlflowClient
    pairs = [json.loads(line) for line in (base / "pairs.jsonl").read_text().splitlines()]
    sets = [json.loads(line) for line in (base / "feedback.jsonl").read_text().splitlines()]
    path = write(tmp_path, as_format(fmt, pairs, sets), "parquet")
    data = ["data=ultrafeedback"] if fmt == "ratings" else ["data=hf", f"data.format={'hh_rlhf' if fmt == 'hh_rlhf' else 'preference'}"]
    tiny = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "reward_model.epochs=1", "prepare.min_agreement=-1",
            "trainer.enable_progress_bar=false"]
    cli("stage=[prepare,reward_model]", *data, f"data.feedback={path}", *tiny)
    out = tmp_path / "outputs" / "run"
    made = load_pairs(out / "pairs.jsonl")
    assert (out / "reward_model" / "config.json").is_file()
    table = datasets.load_dataset("parquet", data_files=str(out / "pairs.parquet"), split="train")
    assert table.num_rows == len(made)
    if fmt == "conversational":  # the pairs as a dataset: prompts as messages, read back by data=hf as the same pairs
        assert table[0]["prompt"] == [{"role": "user", "content": pairs[0]["prompt"]}]
        again = feedback(tmp_path, feedback=str(out / "pairs.parquet")).records
        assert [(p.prompt, p.chosen, p.rejected, p.set_id) for p in again] == \
            [(p.prompt, p.chosen, p.rejected, p.set_id) for p in made]
    if fmt == "ratings":  # each labeler of the smoke run became an aspect, ranking as before (less its flagged sets)
        from rlhf_exp.feedback.consensus import labeler_agreement
        report = json.loads((out / "labelers.json").read_text())["labelers"]
        unflagged = [RankedSet(s["prompt"], s["completions"], {lab: competition_ranks([-x for x in r])
                                                                for lab, r in s["rankings"].items() if "F" not in r})
                     for s in sets]  # ratings give competition ranks: 1, 1, 2 is read back as 1, 1, 3
        expected = labeler_agreement(unflagged)
        assert {lab: r["agreement"] for lab, r in report.items()} == \
            {lab: round(st.agreement, 4) for lab, st in expected.items() if st.sets_ranked}
    else:
        assert len(made) == len(pairs)
        assert {(str(p.prompt), p.chosen, p.rejected) for p in made} == \
            {(p["prompt"], p["chosen"], p["rejected"]) for p in pairs}
    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert {"prepare", "reward_model"} <= set(by_name) and all(r.info.status == "FINISHED" for r in runs)
    assert by_name["prepare"].data.metrics["prepare/data/pairs"] == len(made)
    assert "reward/norm/std" in by_name["reward_model"].data.metrics

