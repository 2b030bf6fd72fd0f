"""stage=label: the labeling store (atomic writes, validation, next set, progress, concurrent
labelers), its web API, its config wiring, and the page itself driven in headless chromium."""
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rlhf_exp.config import ConfigError
from rlhf_exp.errors import UserError
from rlhf_exp.labeling import store as labeling
from rlhf_exp.labeling.instructions import GUIDE
from rlhf_exp.labeling.store import LabelStore, RankingError, UnknownSet, rank_problems
from rlhf_exp.files import FileError
from tests.conftest import compose

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
SETS = [
    {"prompt": "What is 2+2?", "completions": ["4", "5", "a fish", "four"], "rankings": {}, "set_id": 10},
    {"prompt": CONVERSATION, "completions": ["red", "blue", "table"], "rankings": {"bob": [1, 2, "F"]},
     "set_id": 11, "source": "collect"},
    {"prompt": "Capital of France?", "completions": ["Paris", "Lyon"], "rankings": {}, "set_id": 12},
]


def write_sets(path: Path, sets=SETS) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in sets), encoding="utf-8")
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def feedback(tmp_path) -> Path:
    return write_sets(tmp_path / "feedback.jsonl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the store -------------------------------------------------------------------------------------

def test_a_ranking_is_written_at_once_under_its_labeler_and_nothing_else_changes(feedback):
    store = LabelStore(feedback)
    assert store.submit("alice", [2, 1, "F", 2], index=0) == 0
    after = rows(feedback)
    assert after[0]["rankings"] == {"alice": [2, 1, "F", 2]}
    assert after[1:] == SETS[1:]  # other sets, other labelers, extra fields: as they were
    assert store.submit("alice", [1, 1, "F"], set_id=11) == 1  # by set_id; bob's ranking kept beside it
    assert rows(feedback)[1]["rankings"] == {"bob": [1, 2, "F"], "alice": [1, 1, "F"]}
    assert store.submit("alice", [3, 1, 2, 4], index=0, set_id=10) == 0  # a re-submit replaces that set only
    after = rows(feedback)
    assert after[0]["rankings"] == {"alice": [3, 1, 2, 4]} and after[1]["rankings"]["alice"] == [1, 1, "F"]
    assert after[1]["prompt"] == CONVERSATION and after[1]["source"] == "collect"
    assert sorted(p.name for p in feedback.parent.iterdir()) == ["feedback.jsonl", "feedback.jsonl.lock"]


def test_a_write_that_fails_half_way_leaves_the_file_as_it_was(feedback, monkeypatch):
    before = feedback.read_bytes()
    real, calls = labeling.ranked_to_json, []

    def fail_on_second_row(s):
        calls.append(s)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(s)
    monkeypatch.setattr(labeling, "ranked_to_json", fail_on_second_row)
    with pytest.raises(OSError, match="disk full"):
        LabelStore(feedback).submit("alice", [1, 2, 3, 4], index=0)
    assert feedback.read_bytes() == before and len(calls) == 2  # it had begun writing; nothing of it shows
    assert not [p for p in feedback.parent.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("ranks,problem", [
    ([1, 2, 3], "ranks: expected 4 ranks (one per completion"),
    ([1, 2, 3, 4, 5], "got 5"),
    ([0, 1, 2, 3], "ranks[0]: expected an integer rank 1..4 or \"F\", got 0"),
    ([1, 2, 3, 5], "ranks[3]: expected an integer rank 1..4 or \"F\", got 5"),
    ([1, "G", 2, 3], "ranks[1]: expected an integer rank 1..4 or \"F\", got 'G'"),
    ([True, 1, 2, 3], "ranks[0]: expected an integer rank 1..4 or \"F\", got True"),
    ([1.0, 2, 3, 4], "ranks[0]: expected an integer rank 1..4 or \"F\", got 1.0"),
    ("1234", "ranks: expected a list of 4 ranks"),
])
def test_bad_ranks_are_refused_by_name_and_nothing_is_written(feedback, ranks, problem):
    before = feedback.read_bytes()
    with pytest.raises(RankingError) as err:
        LabelStore(feedback).submit("alice", ranks, index=0)
    assert any(problem in p for p in err.value.problems), err.value.problems
    assert feedback.read_bytes() == before


def test_rank_rules_accept_ties_and_flags():
    assert rank_problems([1, 1, "F", 4], 4) == [] and rank_problems(["F", "F"], 2) == []


def test_bad_labelers_and_unknown_sets_are_refused(feedback):
    store = LabelStore(feedback)
    for bad in ("", "two words", "-x", "a" * 65, None):
        with pytest.raises(RankingError, match="labeler = "):
            store.submit(bad, [1, 2, 3, 4], index=0)
    with pytest.raises(UnknownSet, match=r"index = 3: expected 0..2 \(the file holds 3 sets\)"):
        store.submit("alice", [1, 2], index=3)
    with pytest.raises(UnknownSet, match="set_id = 99: no set of the file has it"):
        store.submit("alice", [1, 2], set_id=99)
    with pytest.raises(UnknownSet, match="index = 0 holds set_id 10, not 12"):
        store.submit("alice", [1, 2], index=0, set_id=12)
    with pytest.raises(UnknownSet, match="expected a set index or a set_id"):
        store.submit("alice", [1, 2])
    assert rows(feedback) == SETS


def test_next_set_and_progress_follow_each_labeler(feedback):
    store = LabelStore(feedback)
    assert store.next_set("alice")[0] == 0 and store.next_set("bob")[0] == 0
    assert store.progress("bob").to_json() == {"labeler": "bob", "ranked": 1, "total": 3}
    store.submit("alice", [1, 2], index=2)  # out of order: the first set without her ranking is still 0
    assert store.next_set("alice")[0] == 0
    store.submit("alice", [1, 2, 3, 4], index=0)
    assert store.next_set("alice")[0] == 1 and store.progress("alice").ranked == 2
    store.submit("alice", [1, 2, 3], index=1)
    assert store.next_set("alice") is None and store.progress("alice").to_json()["ranked"] == 3
    assert store.next_set("bob")[0] == 0  # bob's place is his own


def test_a_file_that_is_not_ranked_feedback_is_refused_with_its_name_and_line(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(FileError, match="a pairwise feedback file: expected ranked sets"):
        LabelStore(pairs)
    broken = write_sets(tmp_path / "broken.jsonl", [SETS[0], {**SETS[2], "rankings": {"x": [1]}}])
    with pytest.raises(FileError, match=r"(?s)broken.jsonl: .*line 2: field 'rankings.x': expected 2 ranks"):
        LabelStore(broken)
    with pytest.raises(FileError, match="no such file"):
        LabelStore(tmp_path / "missing.jsonl")


def many_sets(n: int) -> list[dict]:
    return [{"prompt": f"prompt {i}", "completions": ["a", "b", "c"], "rankings": {}, "set_id": i} for i in range(n)]


def slow_writes() -> None:
    """Every write of the store waits a moment after its read: without the locks, two labelers' read
    and write would interleave, and one ranking would overwrite the other's (this makes sure of it)."""
    write = labeling.write_jsonl

    def slow(path, rows):
        time.sleep(0.003)
        return write(path, rows)
    labeling.write_jsonl = slow


def post_all(path: str, labeler: str, n: int, start=None) -> None:
    """One labeler ranking sets 0..n-1 through their own store, in a process of its own."""
    slow_writes()
    store = LabelStore(path)
    if start is not None:
        start.wait()
    for i in range(n):
        store.submit(labeler, [1 + (i % 3), 1 + ((i + 1) % 3), "F"], index=i)


def expected_ranks(n: int) -> list:
    return [[1 + (i % 3), 1 + ((i + 1) % 3), "F"] for i in range(n)]


def test_two_threads_posting_at_once_lose_nothing(tmp_path, monkeypatch):
    path = write_sets(tmp_path / "feedback.jsonl", many_sets(20))
    store = LabelStore(path)  # one store, as one server's threads share it
    monkeypatch.setattr(labeling, "write_jsonl", labeling.write_jsonl)  # restored after the test
    slow_writes()
    start = threading.Barrier(2)

    def labeler(name):
        start.wait()
        for i in range(20):
            store.submit(name, [1 + (i % 3), 1 + ((i + 1) % 3), "F"], index=i)
    threads = [threading.Thread(target=labeler, args=(name,)) for name in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r["rankings"] for r in rows(path)] == [{"alice": r, "bob": r} for r in expected_ranks(20)]


def test_two_processes_posting_at_once_lose_nothing(tmp_path):
    """Two servers on one file: each has its own thread lock, so only the file lock keeps them apart."""
    path = write_sets(tmp_path / "feedback.jsonl", many_sets(20))
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=post_all, args=(str(path), name, 20, start)) for name in ("alice", "bob")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [r["rankings"] for r in rows(path)] == [{"alice": r, "bob": r} for r in expected_ranks(20)]


# -- the API ---------------------------------------------------------------------------------------

@pytest.fixture
def client(feedback):
    from fastapi.testclient import TestClient

    from rlhf_exp.labeling.app import make_app
    return TestClient(make_app(LabelStore(feedback), "Rank by helpfulness."))


def test_the_api_serves_the_page_and_the_next_set_and_takes_rankings(client, feedback):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/label.js">' in page.text
    assert client.get("/static/label.js").status_code == 200 and client.get("/static/label.css").status_code == 200
    assert client.get("/api/instructions").json() == {"text": "Rank by helpfulness."}
    first = client.get("/api/next", params={"labeler": "bob"}).json()
    assert first["progress"] == {"labeler": "bob", "ranked": 1, "total": 3}
    assert first["set"] == {"index": 0, "set_id": 10, "turns": [{"role": "user", "content": "What is 2+2?"}],
                            "completions": SETS[0]["completions"], "ranks": None}
    posted = client.post("/api/rankings", json={"labeler": "bob", "index": 0, "set_id": 10, "ranks": [2, 1, "F", 2]})
    assert posted.status_code == 200, posted.text
    body = posted.json()
    assert body["saved"] == {"index": 0, "set_id": 10, "ranks": [2, 1, "F", 2]}
    assert body["progress"]["ranked"] == 2 and body["next"]["index"] == 2  # set 1 holds bob's ranking already
    assert rows(feedback)[0]["rankings"] == {"bob": [2, 1, "F", 2]}
    again = client.get("/api/next", params={"labeler": "bob"}).json()  # reopening: where bob stopped
    assert again["set"]["index"] == 2
    conv = client.get("/api/sets/1", params={"labeler": "bob"}).json()
    assert conv["turns"] == CONVERSATION and conv["ranks"] == [1, 2, "F"]
    client.post("/api/rankings", json={"labeler": "bob", "set_id": 12, "ranks": [1, 1]})
    done = client.get("/api/next", params={"labeler": "bob"}).json()
    assert done == {"progress": {"labeler": "bob", "ranked": 3, "total": 3}, "set": None}


@pytest.mark.parametrize("body,status,problem", [
    ({"labeler": "bob", "index": 0, "ranks": [1, 2, 3]}, 422, "ranks: expected 4 ranks"),
    ({"labeler": "bob", "index": 0, "ranks": [1, 2, 3, 7]}, 422, "ranks[3]: expected an integer rank 1..4"),
    ({"labeler": "bob", "index": 0, "ranks": [1, "2", 3, 4]}, 422, "ranks[1]: expected an integer rank or \"F\", got '2'"),
    ({"labeler": "b o b", "index": 0, "ranks": [1, 2, 3, 4]}, 422, "labeler: String should match pattern"),
    ({"labeler": "bob", "ranks": [1, 2, 3, 4]}, 422, "expected the set's index or its set_id"),
    ({"labeler": "bob", "index": 0, "ranks": [1, 2, 3, 4], "colour": 1}, 422, "colour: Extra inputs"),
    ({"labeler": "bob", "index": 7, "ranks": [1, 2]}, 404, "index = 7: expected 0..2"),
    ({"labeler": "bob", "index": 1, "set_id": 10, "ranks": [1, 2, 3]}, 404, "index = 1 holds set_id 11, not 10"),
])
def test_the_api_refuses_bad_rankings_with_named_json_errors(client, feedback, body, status, problem):
    res = client.post("/api/rankings", json=body)
    assert res.status_code == status
    assert any(problem in p for p in res.json()["problems"]), res.json()
    assert rows(feedback) == SETS
    assert client.get("/api/next", params={"labeler": "no spaces please"}).status_code == 422


def test_a_feedback_file_broken_while_serving_is_named_and_nothing_is_written(client, feedback):
    feedback.write_text(feedback.read_text() + "{not json\n")
    res = client.post("/api/rankings", json={"labeler": "bob", "index": 0, "ranks": [1, 2, 3, 4]})
    assert res.status_code == 409 and "feedback.jsonl" in res.json()["error"]
    assert res.json()["problems"] == ["line 4: bad JSON (Expecting property name enclosed in double quotes at column 2)"]


# -- config wiring ---------------------------------------------------------------------------------

def label_context(tmp_path, *overrides):
    from rlhf_exp.stages.context import StageContext
    from rlhf_exp.stages.checks import validate_config
    from rlhf_exp.tracking.tracker import NullRun
    cfg = compose("logger=none", "stage=label", *overrides)
    return StageContext(cfg, validate_config(cfg, {"label": "default"}), tmp_path, NullRun())


def test_stage_label_composes_and_is_not_part_of_the_pipeline(feedback):
    from rlhf_exp.stages.checks import validate_config
    from rlhf_exp.stages.runner import STAGES, stages_to_run
    built = validate_config(compose("stage=label", f"label.feedback={feedback}"))
    assert built.run.stage == "label" and built.label.feedback == str(feedback)
    assert (built.label.host, built.label.port, built.label.instructions) == ("127.0.0.1", 8765, None)
    assert "label" not in STAGES and "label" not in stages_to_run({})
    validate_config(compose())  # other stages do not need label.feedback


def test_stage_label_without_a_feedback_file_is_refused_naming_the_setting(tmp_path):
    from rlhf_exp.stages.checks import validate_config
    with pytest.raises(ConfigError, match=r"label.feedback: no feedback file given; expected label.feedback=PATH"):
        validate_config(compose("stage=label"))
    with pytest.raises(ConfigError) as err:
        validate_config(compose("stage=label", f"label.feedback={tmp_path}/nope.jsonl",
                                f"label.instructions={tmp_path}/nope.md"))
    assert "label.feedback = " in str(err.value) and "label.instructions = " in str(err.value)
    with pytest.raises(ConfigError, match=r"label.port = 70000: expected a value >= 0 and <= 65535"):
        validate_config(compose("label.port=70000"))


def test_label_host_port_and_instructions_reach_the_server(tmp_path, feedback, monkeypatch, capsys):
    import rlhf_exp.labeling.app as label_app
    from rlhf_exp.stages import label
    served, apps = [], []
    monkeypatch.setattr(label, "serve", lambda app, sock: served.append(sock.getsockname()) or sock.close())
    real_make_app = label_app.make_app
    monkeypatch.setattr(label_app, "make_app", lambda store, text: apps.append((store.path, text)) or
                        real_make_app(store, text))
    port = free_port()
    label.run(label_context(tmp_path, f"label.feedback={feedback}", "label.host=127.0.0.2", f"label.port={port}"))
    assert served == [("127.0.0.2", port)] and apps == [(feedback, GUIDE)]
    assert f"http://127.0.0.2:{port}/" in capsys.readouterr().out

    (feedback.parent / "LABELING.md").write_text("the guide collect wrote")  # beside the feedback: shown
    label.run(label_context(tmp_path, f"label.feedback={feedback}", "label.port=0"))
    assert served[-1][0] == "127.0.0.1" and served[-1][1] not in (0, 8765)  # port 0: one picked, and printed
    assert f"http://127.0.0.1:{served[-1][1]}/" in capsys.readouterr().out
    assert apps[-1][1] == "the guide collect wrote"
    mine = tmp_path / "mine.md"
    mine.write_text("my own instructions")
    label.run(label_context(tmp_path, f"label.feedback={feedback}", f"label.instructions={mine}", "label.port=0"))
    assert apps[-1][1] == "my own instructions"

    with socket.socket() as busy:  # a port in use: the setting named, no traceback
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"label.port = {taken}: cannot listen there"):
            label.run(label_context(tmp_path, f"label.feedback={feedback}", f"label.port={taken}"))


# -- the page, in a browser ------------------------------------------------------------------------

class LabelServer:
    """`rlhf-exp stage=label` as a subprocess in its own process group, on a port it picks."""

    def __init__(self, cwd: Path, feedback: Path):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlhf_exp", "stage=label", f"label.feedback={feedback}", "label.port=0",
             "logger=none", "hydra.run.dir=outputs/label"], cwd=cwd, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if line.startswith("labeling page: "):
                self.url = line.split()[2]
                return
        self.stop()
        raise AssertionError("the server did not start:\n" + "".join(self.lines))

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def post(url: str, body: dict) -> dict:
    import urllib.request
    req = urllib.request.Request(url + "api/rankings", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())


@pytest.mark.e2e
def test_people_rank_sets_on_the_page_with_keys_and_drag(tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    feedback = write_sets(tmp_path / "feedback.jsonl")
    (tmp_path / "LABELING.md").write_text("# Guide\nRank by helpfulness, 1 = best.")
    server = LabelServer(tmp_path, feedback)
    wait = WebDriverWait(browser, 20)
    visible = lambda css: wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))  # noqa: E731

    def text_is(css, text):
        wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))

    def cards():  # (completion index, badge) of each card, top to bottom
        return [(int(c.get_attribute("data-index")), c.find_element(By.CSS_SELECTOR, ".badge").text)
                for c in browser.find_elements(By.CSS_SELECTOR, "#completions .card")]

    def press(index, key):  # focus a card (as Tab would) and press a key on it
        browser.execute_script("document.querySelector(`.card[data-index='${arguments[0]}']`).focus()", index)
        ActionChains(browser).send_keys(key).perform()

    try:
        browser.get(server.url)
        visible("#labeler-id").send_keys("alice", Keys.ENTER)  # the id, once
        text_is("#instructions-text", "Rank by helpfulness, 1 = best.")  # LABELING.md beside the feedback
        assert "labeler=alice" in browser.current_url
        browser.switch_to.active_element.send_keys(Keys.ENTER)  # the focused "Start ranking" button
        text_is("#set-title", "Set 1")
        text_is("#progress", "0 of 3 sets ranked by alice")
        assert cards() == [(0, "–"), (1, "–"), (2, "–"), (3, "–")]

        # drag "four" (card 3) by its handle above "4" (card 0): every card is ranked in the new order
        handle, target = (browser.find_element(By.CSS_SELECTOR, f".card[data-index='{i}'] .handle") for i in (3, 0))
        top = -target.size["height"] // 2 + 3  # just below the top edge of card 0
        ActionChains(browser).click_and_hold(handle).pause(0.2).move_to_element_with_offset(target, 0, top) \
            .pause(0.2).release().perform()
        assert cards() == [(3, "1"), (0, "2"), (1, "3"), (2, "4")]

        # number keys: "5" is rank 1, "4" and "four" tie at 2, "a fish" is nonsense
        press(1, "1")
        press(0, "2")
        press(3, "2")
        press(2, "f")
        assert cards() == [(1, "1"), (0, "2"), (3, "2"), (2, "F")]
        browser.save_screenshot(str(tmp_path / "label_page.png"))
        if os.environ.get("LABEL_PAGE_SCREENSHOT"):  # make docs/label_page.png for the docs
            browser.save_screenshot(os.environ["LABEL_PAGE_SCREENSHOT"])
        browser.find_element(By.ID, "submit").send_keys(Keys.ENTER)
        text_is("#progress", "1 of 3 sets ranked by alice")
        text_is("#set-title", "Set 2")  # the next set without alice's ranking (bob's does not count)
        assert [t.text.split("\n")[0].lower() for t in browser.find_elements(By.CSS_SELECTOR, "#prompt .turn .role")] \
            == ["system", "user"]  # a conversation, shown turn by turn

        # another labeler posts every set while alice ranks set 2: nobody's ranking is lost
        carol = threading.Thread(target=lambda: [post(server.url, {"labeler": "carol", "index": i, "ranks": r})
                                                 for i, r in enumerate(([1, 2, 3, 4], [2, 1, 3], [1, 2]))])
        carol.start()
        press(0, "1")
        press(1, "2")
        browser.find_element(By.CSS_SELECTOR, ".card[data-index='1'] .tie").send_keys(Keys.SPACE)  # tie with "red"
        press(2, "F")
        assert cards() == [(0, "1"), (1, "1"), (2, "F")]
        browser.find_element(By.ID, "submit").send_keys(Keys.ENTER)
        text_is("#progress", "2 of 3 sets ranked by alice")
        carol.join(timeout=60)

        browser.refresh()  # reopening the page: the same labeler, at the set where she stopped
        visible("#start").send_keys(Keys.ENTER)
        text_is("#set-title", "Set 3")
        text_is("#progress", "2 of 3 sets ranked by alice")
    finally:
        server.stop()
    after = rows(feedback)
    assert [r["rankings"] for r in after] == [
        {"alice": [2, 1, "F", 2], "carol": [1, 2, 3, 4]},
        {"bob": [1, 2, "F"], "alice": [1, 1, "F"], "carol": [2, 1, 3]},
        {"carol": [1, 2]}]  # dicts compare without order: who wrote first does not matter
    assert [{k: v for k, v in r.items() if k != "rankings"} for r in after] == \
        [{k: v for k, v in r.items() if k != "rankings"} for r in SETS]


def test_the_printed_address_takes_connections_before_the_server_loop_starts():
    """The page's address is printed before uvicorn starts; a browser that connects at once waits in the
    socket's backlog instead of being refused (CI saw ERR_CONNECTION_REFUSED once)."""
    from rlhf_exp.stages.label import listen
    sock = listen("127.0.0.1", 0)
    try:
        socket.create_connection(sock.getsockname()[:2], timeout=5).close()
    finally:
        sock.close()
