"""Writes the fixtures in this folder with the real Argilla SDK (argilla==2.8.0), offline.

Not run by the tests (argilla is not a dependency of rlhf-exp). To regenerate:
    python -m venv /tmp/argvenv && /tmp/argvenv/bin/pip install argilla==2.8.0 requests
    /tmp/argvenv/bin/python tests/data/argilla/generate.py
- export/: `rg.Dataset.to_disk` layout: .argilla/settings.json (`Settings.to_json`),
  .argilla/dataset.json (`DatasetModel.model_dump()`), records.json (`Record.to_dict()` per record).
- annotated_api.json: records as the API returns them (`RecordModel.model_dump(mode="json")`),
  ranking answers with their ranks (ties = equal ranks) and each response's status.
- annotated_sdk.json: `Record.to_dict()` of the same responses, plus the "status" key that
  `Record.from_dict` accepts (to_dict leaves it out).
- sdk_stripped.json: what `Record.to_dict()` gives for a record read from the server: the SDK drops
  the ranks and the status (argilla-io/argilla#5712); the importer must refuse it.
"""
import hashlib
import json
import shutil
import uuid
from pathlib import Path

import argilla as rg
from argilla._api._client import APIClient
from argilla._models import DatasetModel, RecordModel, UserResponseModel
from argilla._models._record._metadata import MetadataModel
from argilla.records._io._json import JsonIO

APIClient._validate_connection = lambda self: None  # there is no server: build objects only
client = rg.Argilla(api_url="http://localhost:6900", api_key="offline")
HERE = Path(__file__).parent
K = 3
INSTRUCTIONS = "Rank the completions from best (1) to worst. Flag nonsense."

SETS = [
    {"prompt": "Name a prime number.", "completions": ["7", "9", "banana"], "set_id": 0, "extra": {}},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
     "completions": ["6", "Six.", "33"], "set_id": 1, "extra": {"topic": "math"}},
    {"prompt": "Say hi.", "completions": ["Hi!", "Hello.", "Bye."], "set_id": None, "extra": {}},
]
USERS = {name: str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.example")) for name in ("alice", "bob", "carol")}


def options():
    return {f"completion_{i}": f"Completion {i + 1}" for i in range(K)}


def settings(client):
    fields = [rg.ChatField(name="prompt", title="Prompt", use_markdown=False, _client=client)]
    fields += [rg.TextField(name=f"completion_{i}", title=f"Completion {i + 1}", use_markdown=False,
                            client=client) for i in range(K)]
    return rg.Settings(
        guidelines=INSTRUCTIONS, fields=fields,
        questions=[rg.RankingQuestion(name="ranking", values=options(), client=client,
                                      title="Rank the completions (1 = best; put equally good ones on the same rank)"),
                   rg.MultiLabelQuestion(name="flags", labels=options(), required=False, client=client,
                                         title="Flag nonsensical, confusing or irrelevant completions (optional)")],
        metadata=[rg.IntegerMetadataProperty(name="set_id", visible_for_annotators=False, client=client)],
        allow_extra_metadata=True, distribution=rg.TaskDistribution(min_submitted=2), _dataset=None)


def record_id(s):
    if s["set_id"] is not None:
        return f"set-{s['set_id']}"
    content = json.dumps([s["prompt"], s["completions"]], ensure_ascii=False)
    return "sha-" + hashlib.sha256(content.encode()).hexdigest()[:16]


def fields_and_metadata(s):
    chat = s["prompt"] if isinstance(s["prompt"], list) else [{"role": "user", "content": s["prompt"]}]
    fields = {"prompt": chat, **{f"completion_{i}": c for i, c in enumerate(s["completions"])}}
    meta = {"rlhf_exp": json.dumps({"prompt": s["prompt"], "set_id": s["set_id"], "extra": s["extra"]},
                                   ensure_ascii=False)}
    if s["set_id"] is not None:
        meta["set_id"] = s["set_id"]
    return fields, meta


def ranking(*ranks):
    return [{"value": f"completion_{i}", "rank": r} for i, r in enumerate(ranks)]


# (record index, user, status, ranking ranks, flags)
ANSWERS = [
    (0, "alice", "submitted", (1, 2, 3), ["completion_2"]),
    (0, "bob", "submitted", (1, 1, 3), []),                 # a tie between the first two
    (0, "carol", "discarded", (3, 2, 1), None),
    (1, "alice", "submitted", (2, 1, 3), None),             # no flags answer at all
    (1, "bob", "submitted", (2, 2, 2), ["completion_2"]),   # all tied, last one flagged
    (1, "carol", "draft", (1, 2, 3), None),
]


def main():
    out = HERE / "export"
    shutil.rmtree(out, ignore_errors=True)
    (out / ".argilla").mkdir(parents=True)
    settings(client).to_json(out / ".argilla" / "settings.json")
    (out / ".argilla" / "dataset.json").write_text(json.dumps(DatasetModel(name="rlhf-feedback").model_dump()))
    plain = []
    for s in SETS:
        fields, meta = fields_and_metadata(s)
        plain.append(rg.Record(id=record_id(s), fields=fields, metadata=meta))
    JsonIO.to_json(plain, out / "records.json")

    api, sdk, models = [], [], []
    for n, s in enumerate(SETS):
        fields, meta = fields_and_metadata(s)
        mine = [a for a in ANSWERS if a[0] == n]
        responses = [UserResponseModel(values={"ranking": {"value": ranking(*r)},
                                               **({"flags": {"value": f}} if f is not None else {})},
                                       status=st, user_id=uuid.UUID(USERS[u])) for _, u, st, r, f in mine]
        model = RecordModel(external_id=record_id(s), fields=fields, responses=responses,
                            metadata=[MetadataModel(name=k, value=v) for k, v in meta.items()])
        models.append(model)
        api.append(model.model_dump(mode="json"))
        rec = rg.Record(id=record_id(s), fields=fields, metadata=meta, responses=[
            rg.Response(q, v, user_id=uuid.UUID(USERS[u]), status=st)
            for _, u, st, r, f in mine for q, v in (("ranking", ranking(*r)), ("flags", f)) if v is not None])
        d = rec.to_dict()
        status = {USERS[u]: st for _, u, st, _r, _f in mine}
        for answers in d["responses"].values():
            for a in answers:
                a["status"] = status[a["user_id"]]
        sdk.append(d)
    (HERE / "annotated_api.json").write_text(json.dumps(api, indent=1, ensure_ascii=False) + "\n")
    (HERE / "annotated_sdk.json").write_text(json.dumps(sdk, indent=1, ensure_ascii=False) + "\n")

    # A record read back from a server goes through Record.from_model, which strips the ranks.
    dataset = rg.Dataset(name="rlhf-feedback", settings=settings(client), client=client)
    stripped = [rg.Record.from_model(m, dataset=dataset).to_dict() for m in models[:2]]
    (HERE / "sdk_stripped.json").write_text(json.dumps(stripped, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
