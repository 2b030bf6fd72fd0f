"""Label Studio export and import: tasks and a labeling config out, the JSON export back in as the
same ranked sets (ties, F, several annotators, a conversation prompt). The fixture
tests/data/labelstudio/export.json is a real export of Label Studio 1.23.2 (the snapshot export of
the project the end-to-end test builds from feedback.jsonl); the end-to-end test runs that round
trip against a real server started from .venv-labelstudio (`make test` installs it)."""
import copy
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from xml.etree import ElementTree

import pytest

from rlhf_exp.feedback.formats import FLAG, load_feedback
from rlhf_exp.labeling.labelstudio import label_config, rank_bucket, rankings_from_export, tasks
from rlhf_exp.feedback.prompts import Conversation
from rlhf_exp.files import FileError

DATA = Path(__file__).parent / "data" / "labelstudio"
ROOT = Path(__file__).resolve().parent.parent
LABEL_STUDIO = ROOT / ".venv-labelstudio" / "bin" / "label-studio"
MIGRATED = ROOT / ".venv-labelstudio" / "migrated" / "label_studio.sqlite3"  # made by `make labelstudio`
SKIPPED = {1: "bob@example.com"}  # set index -> an annotator who skipped it (a cancelled annotation)


def feedback_sets():
    return load_feedback(DATA / "feedback.jsonl").records


def unlabeled(sets):
    """The sets as `stage=collect collect=human` writes them: no rankings yet."""
    return [dataclasses.replace(s, rankings={}) for s in sets]


def ranker_value(ranks: list, k: int) -> dict:
    """The ranker value a labeler's ranks give in a project of `label_config(k)`, as the labeling UI
    saves it when each completion is dragged into its bucket: every bucket of the config, empty or
    not, {"_": [], "rank_1": [ids], ..., "rank_k": [ids], "F": [ids]}."""
    buckets = {"_": []} | {rank_bucket(r): [] for r in range(1, k + 1)} | {FLAG: []}
    for i, r in enumerate(ranks):
        buckets[FLAG if r == FLAG else rank_bucket(r)].append(f"c{i + 1}")
    return {"ranker": buckets}


def export_rows():
    return json.loads((DATA / "export.json").read_text(encoding="utf-8"))


# --- fixture round trips (no server) ---

def test_the_real_export_gives_back_every_set_exactly():
    sets = feedback_sets()
    rows = export_rows()
    assert [{"data": r["data"]} for r in rows] == tasks(unlabeled(sets))  # what was imported is what came back
    # a result holds every bucket of the config, as the UI saves it: rank_4 (empty) for a set of 2 too
    assert rows[2]["annotations"][1]["result"][0]["value"]["ranker"]["rank_4"] == []
    got = rankings_from_export(rows, "export.json")
    assert got == sets
    assert isinstance(got[1].prompt, Conversation) and got[2].set_id is None and got[0].extra == {"source": "smoke"}
    assert got[0].rankings["admin@example.com"] == [1, 2, 1, "F"]  # a tie at 1 and an F
    assert "bob@example.com" not in got[1].rankings  # his annotation of set 1 was cancelled (skipped)
    assert got[3].rankings == {}  # nobody annotated it


def test_a_user_given_by_id_only_is_labelstudio_and_the_id():
    """The project's direct export (GET /api/projects/ID/export) gives `completed_by` as a bare id."""
    rows = export_rows()
    emails = {}
    for task in rows:
        for ann in task["annotations"]:
            emails[ann["completed_by"]["id"]] = ann["completed_by"]["email"]
            ann["completed_by"] = ann["completed_by"]["id"]
    expected = [{f"labelstudio-{uid}": s.rankings[email] for uid, email in emails.items() if email in s.rankings}
                for s in feedback_sets()]
    assert [s.rankings for s in rankings_from_export(rows, "export.json")] == expected
    assert len(emails) == 3 and expected[0] and expected[1] and expected[2]


def test_tasks_carry_prompt_completions_and_set_id():
    sets = feedback_sets()
    out = tasks(sets)
    assert len(out) == 4
    conv = out[1]["data"]
    assert conv["prompt"] == sets[1].prompt.to_json()
    assert conv["prompt_text"].startswith("system: You are a terse assistant.\n\nuser: Name a prime.")
    assert conv["completions"][2] == {"id": "c3", "title": "Completion 3", "body": '13 <- prime & "odd"'}
    assert conv["set_id"] == 11 and out[2]["data"]["set_id"] is None
    assert json.loads(json.dumps(out)) == out  # plain JSON


def test_the_label_config_has_a_bucket_per_rank_and_f_over_the_completions():
    xml = label_config(4, 'Rank them; "F" = nonsense.\nTies are fine & <ok>.')
    root = ElementTree.fromstring(xml)
    ranker = root.find("Ranker")
    assert ranker.get("name") == "rank" and ranker.get("toName") == "completions"
    assert [b.get("name") for b in ranker.findall("Bucket")] == ["rank_1", "rank_2", "rank_3", "rank_4", "F"]
    assert root.find("List").get("value") == "$completions"
    assert root.find("Text[@name='prompt']").get("value") == "$prompt_text"
    assert root.find("Text[@name='instructions']").get("value") == 'Rank them; "F" = nonsense.\nTies are fine & <ok>.'
    with pytest.raises(ValueError):
        label_config(1, "x")


# --- bad exports ---

def problems(rows):
    with pytest.raises(FileError) as err:
        rankings_from_export(rows, "export.json")
    assert err.value.source == "export.json"
    return err.value.problems


def test_bad_tasks_and_annotations_are_all_named_with_index_and_field():
    rows = export_rows()
    del rows[0]["data"]["prompt"]
    rows[1]["annotations"][0]["result"][0]["value"]["ranker"]["rank_2"].append("c9")
    rows[2]["annotations"][1]["result"] = []
    rows[3]["data"]["completions"] = ["first", "second"]
    got = problems(rows)
    assert got[0].startswith("task 0 (id ") and "field 'data.prompt': missing" in got[0]
    assert got[1].startswith("task 1 (id ") and "annotation 0 (id " in got[1]
    assert "field 'value.ranker.rank_2': unknown completion id 'c9'" in got[1]
    assert "task 2 (id " in got[2] and "annotation 1 (id " in got[2] and \
        "field 'result': expected one result of type 'ranker' from 'rank', found 0" in got[2]
    assert got[3].startswith("task 3 (id ") and "field 'data.completions': expected a list of at least 2 items" in got[3]
    assert len(got) == 4


def test_a_completion_left_in_the_list_or_in_two_buckets_is_refused():
    rows = export_rows()
    value = rows[0]["annotations"][0]["result"][0]["value"]["ranker"]
    value["_"] = value.pop("F")  # the flagged completion never dragged out of the list
    value["rank_2"].append("c1")   # and c1 in two buckets
    got = problems(rows)
    assert any("field 'value.ranker.rank_2': completion 'c1' is in two buckets" in p for p in got)
    assert any("field 'value.ranker': completions ['c4'] were left unranked" in p for p in got)
    assert all(p.startswith("task 0 (id ") for p in got)


def test_a_rank_beyond_the_sets_size_and_a_bad_annotator_are_refused():
    rows = export_rows()
    ranker = rows[2]["annotations"][0]["result"][0]["value"]["ranker"]  # a set of 2 completions
    ranker["rank_3"] = ranker.pop("F")
    rows[2]["annotations"][1]["completed_by"] = "carol"
    assert problems(rows) == [
        "task 2 (id 3): annotation 0 (id 5): field 'value.ranker.rank_3': unknown bucket; expected one of "
        "rank_1, rank_2, F (2 completions)",
        "task 2 (id 3): annotation 0 (id 5): field 'value.ranker': completions ['c1', 'c2'] were left unranked; "
        "expected every completion in a rank bucket (rank_1..rank_2) or in F",
        "task 2 (id 3): annotation 1 (id 6): field 'completed_by': expected the annotator (an object with 'email' "
        "or 'id', or a user id), got 'carol'"]


def test_two_annotations_by_one_annotator_and_shapes_that_are_not_an_export():
    rows = export_rows()
    rows[0]["annotations"].append(copy.deepcopy(rows[0]["annotations"][0]))
    assert any("admin@example.com has another annotation of this task" in p for p in problems(rows))
    assert problems({"tasks": []}) == ["expected a list of tasks (Label Studio's JSON export), got dict"]
    assert problems([]) == ["no tasks: the export is empty"]
    assert problems([{"id": 5, "annotations": []}]) == [
        "task 0 (id 5): field 'data': expected an object (a task of Label Studio's JSON export)"]


# --- a real server ---

TOKEN = "rlhf0exp0labelstudio0test0token0000001"  # the admin's legacy API token, set at start
ADMIN = "admin@example.com"


class LabelStudio:
    """The few calls of Label Studio's HTTP API the round trip needs (a legacy token: `Token ...`)."""

    def __init__(self, url: str):
        self.url = url

    def call(self, method: str, path: str, body=None, raw: bool = False):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                text = resp.read()
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{method} {path}: HTTP {err.code}: {err.read()[:2000]!r}") from None
        return text if raw else json.loads(text or b"null")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def label_studio(tmp_path):
    """A real Label Studio on 127.0.0.1 (its own process group, data under tmp_path) with an admin
    whose legacy API token is TOKEN; yields (client, seconds it took to answer /health)."""
    assert LABEL_STUDIO.is_file() and MIGRATED.is_file(), \
        f"{LABEL_STUDIO} or {MIGRATED} is missing: run `make test` (it installs Label Studio in its own " \
        "virtualenv, .venv-labelstudio, with an empty database ready)"
    (tmp_path / "ls-data").mkdir()
    shutil.copy(MIGRATED, tmp_path / "ls-data" / MIGRATED.name)  # a fresh database would migrate for ~20 s
    port = _free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "ls-data"),  # not ~/.local/share
           "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",  # nothing sent out
           "SECRET_KEY": "rlhf-exp-test", "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true"}
    log = (tmp_path / "label-studio.log").open("wb")
    start = time.monotonic()
    proc = subprocess.Popen([str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1",
                             "--port", str(port), "--username", ADMIN, "--password", "rlhf-exp-test-password",
                             "--user-token", TOKEN, "--enable-legacy-api-token"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            tail = (tmp_path / "label-studio.log").read_text(errors="replace")[-3000:]
            assert proc.poll() is None, f"label-studio exited with {proc.returncode}:\n{tail}"
            assert time.monotonic() - start < 180, f"label-studio did not answer /health within 180 s:\n{tail}"
            time.sleep(0.5)
        yield LabelStudio(url), time.monotonic() - start
    finally:  # the server and anything it started
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def build_project(ls: LabelStudio, sets) -> int:
    """A project of `sets` (their rankings left out of the tasks), then each labeler's ranking
    posted as that user's annotation and the SKIPPED sets as cancelled ones; returns its id."""
    k = max(len(s.completions) for s in sets)
    project = ls.call("POST", "/api/projects", {"title": "rlhf-exp round trip",
                                                "label_config": label_config(k, "Rank the answers: 1 is best.")})
    ls.call("POST", f"/api/projects/{project['id']}/import", tasks(unlabeled(sets)))
    listed = ls.call("GET", f"/api/tasks?project={project['id']}&page_size=100")["tasks"]
    task_ids = [t["id"] for t in sorted(listed, key=lambda t: t["inner_id"])]
    labelers = sorted({lab for s in sets for lab in s.rankings} | set(SKIPPED.values()))
    users = {ADMIN: ls.call("GET", "/api/current-user/whoami")["id"]}
    for email in labelers:
        if email not in users:
            users[email] = ls.call("POST", "/api/users/", {"email": email, "username": email.split("@")[0]})["id"]
    for task_id, s in zip(task_ids, sets):
        for labeler, ranks in s.rankings.items():
            ls.call("POST", f"/api/tasks/{task_id}/annotations/", {"completed_by": users[labeler], "result": [
                {"type": "ranker", "from_name": "rank", "to_name": "completions", "origin": "manual",
                 "value": ranker_value(ranks, k)}]})
    for index, labeler in SKIPPED.items():
        ls.call("POST", f"/api/tasks/{task_ids[index]}/annotations/",
                {"completed_by": users[labeler], "was_cancelled": True, "result": []})
    return project["id"]


def export_json(ls: LabelStudio, project: int) -> list:
    """The project's JSON export through an export snapshot, each annotator given as an object
    with their email (as `label-studio export PROJECT JSON` gives them)."""
    snap = ls.call("POST", f"/api/projects/{project}/exports/", {
        "title": "round trip", "serialization_options": {"annotations__completed_by": {"only_id": False}}})
    for _ in range(120):
        if ls.call("GET", f"/api/projects/{project}/exports/{snap['id']}")["status"] == "completed":
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the export snapshot did not complete within 60 s")
    return json.loads(ls.call("GET", f"/api/projects/{project}/exports/{snap['id']}/download?exportType=JSON", raw=True))


@pytest.mark.e2e
def test_a_round_trip_through_a_real_label_studio(label_studio):
    ls, startup_s = label_studio
    print(f"label-studio answered /health after {startup_s:.1f} s")
    sets = feedback_sets()
    project = build_project(ls, sets)
    saved = ls.call("GET", f"/api/projects/{project}")
    assert ElementTree.fromstring(saved["label_config"]).find("Ranker").get("name") == "rank"
    rows = export_json(ls, project)
    assert len(rows) == len(sets) and {a["completed_by"]["email"] for t in rows for a in t["annotations"]} == \
        {"admin@example.com", "bob@example.com", "carol@example.com"}
    assert rankings_from_export(rows, "export.json") == sets
    # the Export button's JSON (GET /api/projects/ID/export) names each annotator by user id only
    direct = json.loads(ls.call("GET", f"/api/projects/{project}/export?exportType=JSON&download_all_tasks=true",
                                raw=True))
    users = {a["completed_by"]["id"]: a["completed_by"]["email"] for t in rows for a in t["annotations"]}
    renamed = [{f"labelstudio-{uid}": s.rankings[email] for uid, email in users.items() if email in s.rankings}
               for s in sets]
    assert [s.rankings for s in rankings_from_export(direct, "direct.json")] == renamed
