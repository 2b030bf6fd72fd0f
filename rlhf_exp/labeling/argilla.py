"""Ranked feedback to and from Argilla 2.x, as plain JSON (no `argilla` import, no server).

Out: `dataset_settings` and `dataset_json` are what `rg.Dataset.to_disk` writes to
`.argilla/settings.json` and `.argilla/dataset.json`; `records` is its `records.json`
(`rg.Record.to_dict()` per record), so `rg.Dataset.from_disk(DIR)` loads all three. A record shows the
prompt in a chat field and each completion in a text field `completion_<i>`; the `ranking` question
(a RankingQuestion) ranks the completions, the optional `flags` question (a MultiLabelQuestion)
marks those that are nonsense. What is needed to rebuild the set exactly (the prompt as JSON, the
set id, any other field of the line) rides in the metadata.

Back: `rankings_from_records` reads records with their responses. A ranking response must carry its
ranks, `[{"value": "completion_0", "rank": 1}, ...]`, which is how the Argilla server stores it and
the only form that can say "tie" (two completions with the same rank). The 2.x SDK's
`Record.to_dict()` drops the ranks (and the response status), leaving the option names in option
order (argilla-io/argilla#5712), so that form is refused rather than misread.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter

from rlhf_exp.feedback.formats import FLAG, RankedSet
from rlhf_exp.feedback.prompts import check_prompt
from rlhf_exp.files import FileError

PROMPT_FIELD = "prompt"
RANKING = "ranking"
FLAGS = "flags"
META = "rlhf_exp"      # metadata key: JSON of {"prompt", "set_id", "extra"}, to rebuild the set
SET_ID = "set_id"      # metadata key: the set id, also as a filterable integer property
STATUSES = ("submitted", "draft", "discarded")


def completion_field(i: int) -> str:
    return f"completion_{i}"


def _base(**kw) -> dict:
    """A settings entry with the server-assigned keys the SDK writes as null."""
    return {"id": None, "inserted_at": None, "updated_at": None, **kw}


def _options(k: int) -> list[dict]:
    return [{"text": f"Completion {i + 1}", "value": completion_field(i)} for i in range(k)]


def dataset_settings(k: int, instructions: str, labelers_per_set: int = 1) -> dict:
    """The settings of a dataset ranking `k` completions per prompt, shaped as `rg.Settings.serialize()`
    (what `Dataset.to_disk` writes to `.argilla/settings.json`); `labelers_per_set` is how many
    submitted responses a record needs before Argilla counts it complete."""
    if k < 2:
        raise ValueError(f"k: expected at least 2 completions per prompt, got {k}")

    def field(name, type_, title):
        return _base(name=name, settings={"type": type_, "use_markdown": False}, title=title,
                     required=True, description=None, dataset_id=None, type=type_)

    fields = [field(PROMPT_FIELD, "chat", "Prompt")]
    fields += [field(completion_field(i), "text", f"Completion {i + 1}") for i in range(k)]
    questions = [
        _base(name=RANKING, settings={"type": "ranking", "options": _options(k)},
              title="Rank the completions (1 = best; put equally good ones on the same rank)",
              description=None, required=True, dataset_id=None, type="ranking"),
        _base(name=FLAGS, settings={"type": "multi_label_selection", "options": _options(k),
                                    "visible_options": k, "options_order": "natural"},
              title="Flag nonsensical, confusing or irrelevant completions (optional)",
              description=None, required=False, dataset_id=None, type="multi_label_selection"),
    ]
    # Annotators need not see the set id. The SDK (2.8) writes the property's top-level flag and
    # leaves the one inside settings at its default; kept byte-for-byte the same.
    metadata = [_base(name=SET_ID, settings={"visible_for_annotators": True, "min": None, "max": None,
                                             "type": "integer"},
                      title=SET_ID, visible_for_annotators=False, dataset_id=None)]
    return {"guidelines": instructions, "questions": questions, "fields": fields, "vectors": [],
            "metadata": metadata, "allow_extra_metadata": True,
            "distribution": {"strategy": "overlap", "min_submitted": labelers_per_set}, "mapping": None}


def dataset_json(name: str) -> dict:
    """`.argilla/dataset.json` as `Dataset.to_disk` writes it before the server assigns ids; the
    guidelines and distribution come from the settings file."""
    return {"id": None, "inserted_at": None, "updated_at": None, "name": name, "status": "draft",
            "guidelines": None, "allow_extra_metadata": True, "distribution": None, "workspace_id": None,
            "last_activity_at": None}


def _record_id(s: RankedSet, seen: Counter) -> str:
    """A stable id: the set id, else a digest of the prompt and completions. Logging a record whose id
    exists updates it, so repeats of the same content get a suffix instead of overwriting."""
    if s.set_id is not None:
        base = f"set-{s.set_id}"
    else:
        content = json.dumps([s.prompt, s.completions], ensure_ascii=False, default=lambda p: p.to_json())
        base = "sha-" + hashlib.sha256(content.encode()).hexdigest()[:16]
    seen[base] += 1
    return base if seen[base] == 1 else f"{base}-{seen[base]}"


def _prompt_json(prompt) -> str | list:
    return prompt if isinstance(prompt, str) else prompt.to_json()


def records(sets: list[RankedSet], source: str = "<feedback>") -> list[dict]:
    """One record per set, shaped as `rg.Record.to_dict()` (what `Dataset.to_disk` writes to
    `records.json`). Every set must have the same number of completions (the ranking question's
    options are fixed per dataset); existing rankings are not exported."""
    ks = Counter(len(s.completions) for s in sets)
    k = ks.most_common(1)[0][0] if ks else 0
    problems = [f"record {i}: field 'completions': expected {k} completions like most sets (an Argilla "
                f"ranking question has one fixed set of options), got {len(s.completions)}"
                for i, s in enumerate(sets) if len(s.completions) != k]
    if problems:
        raise FileError(source, problems)
    seen: Counter = Counter()
    out = []
    for s in sets:
        prompt = _prompt_json(s.prompt)
        chat = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        fields = {PROMPT_FIELD: chat, **{completion_field(i): c for i, c in enumerate(s.completions)}}
        meta = {META: json.dumps({"prompt": prompt, "set_id": s.set_id, "extra": s.extra}, ensure_ascii=False)}
        if s.set_id is not None:  # an integer property takes no null
            meta[SET_ID] = s.set_id
        out.append({"id": _record_id(s, seen), "fields": fields, "metadata": meta, "suggestions": {},
                    "responses": {}, "vectors": {}, "status": "pending", "_server_id": None})
    return out


# ---- back from Argilla ----------------------------------------------------------------------------

def _user_responses(responses, problems: list[str]) -> list[tuple[str, str, object, dict]]:
    """(where, user, status, {question: (value, where)}) per user, from either record shape: the SDK's
    `{question: [{"value", "user_id", "status"}]}` or the API's
    `[{"values": {question: {"value"}}, "status", "user_id"}]`. A "username" is used when present."""
    users: dict[str, dict] = {}

    def user_of(r: dict, where: str) -> str | None:
        name = r.get("username")
        if isinstance(name, str) and name:
            return name
        uid = r.get("user_id")
        if isinstance(uid, str) and uid:
            return uid
        problems.append(f"field '{where}.user_id': expected the id of the user who answered, got {uid!r}")
        return None

    def user_entry(user: str, where: str, status) -> dict:
        u = users.setdefault(user, {"where": where, "status": status, "values": {}})
        if u["status"] != status:
            problems.append(f"field '{where}.status': {status!r}, but {u['status']!r} in '{u['where']}' by "
                            f"the same user {user!r}; expected one status per user")
        return u

    def add(u: dict, user: str, question: str, value, where: str):
        if question in u["values"]:
            problems.append(f"field '{where}': a second {question!r} answer by user {user!r}; expected one")
        u["values"][question] = (value, where)

    if isinstance(responses, dict):  # Record.to_dict()
        for question, answers in responses.items():
            if not isinstance(answers, list):
                problems.append(f"field 'responses.{question}': expected a list of responses, got "
                                f"{type(answers).__name__}")
                continue
            for j, r in enumerate(answers):
                where = f"responses.{question}[{j}]"
                if not isinstance(r, dict):
                    problems.append(f"field '{where}': expected an object {{value, user_id, status}}")
                elif (user := user_of(r, where)) is not None:
                    add(user_entry(user, where, r.get("status")), user, question, r.get("value"), f"{where}.value")
    elif isinstance(responses, list):  # the API's record (RecordModel.model_dump())
        for j, r in enumerate(responses):
            where = f"responses[{j}]"
            values = r.get("values") if isinstance(r, dict) else None
            if not isinstance(r, dict) or not isinstance(values, (dict, type(None))):
                problems.append(f"field '{where}': expected an object {{values, status, user_id}}")
            elif (user := user_of(r, where)) is not None:
                u = user_entry(user, where, r.get("status"))
                for question, v in (values or {}).items():
                    if not (isinstance(v, dict) and "value" in v):
                        problems.append(f"field '{where}.values.{question}': expected {{\"value\": ...}}, got {v!r}")
                    else:
                        add(u, user, question, v["value"], f"{where}.values.{question}.value")
    elif responses is not None:
        problems.append(f"field 'responses': expected an object or a list, got {type(responses).__name__}")
    return [(u["where"], user, u["status"], u["values"]) for user, u in users.items()]


def _ranks(value, where: str, k: int, problems: list[str]) -> list | None:
    """The rank of each completion from a ranking answer `[{"value": "completion_i", "rank": r}, ...]`."""
    names = [completion_field(i) for i in range(k)]
    expected = (f"expected [{{\"value\": \"completion_0\", \"rank\": 1}}, ...] with each of the {k} "
                f"completions once and ranks 1..{k} (equal ranks for a tie)")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        problems.append(f"field '{where}': a list of option names without ranks ({value!r}); the 2.x SDK's "
                        f"Record.to_dict() drops the ranks (and ties); {expected}; export the records with "
                        "the API (see docs/guides/labeling.md)")
        return None
    ok = (isinstance(value, list) and all(isinstance(v, dict) and set(v) >= {"value", "rank"} for v in value)
          and sorted(v["value"] for v in value if isinstance(v["value"], str)) == sorted(names)
          and len(value) == k
          and all(isinstance(v["rank"], int) and not isinstance(v["rank"], bool) and 1 <= v["rank"] <= k
                  for v in value))
    if not ok:
        problems.append(f"field '{where}': {expected}, got {value!r}"[:400])
        return None
    by_name = {v["value"]: v["rank"] for v in value}
    return [by_name[n] for n in names]


def _flags(value, where: str, k: int, problems: list[str]) -> set[int]:
    """The completions a labeler flagged (a flags answer is a list of option names; absent = none)."""
    names = [completion_field(i) for i in range(k)]
    if value is None:
        return set()
    if not (isinstance(value, list) and all(v in names for v in value)):
        problems.append(f"field '{where}': expected a list of completion names ({', '.join(names)}), got {value!r}")
        return set()
    return {names.index(v) for v in value}


def _set_of(rec: dict, problems: list[str]) -> RankedSet | None:
    """The set a record was exported from, rankings still empty."""
    fields = rec.get("fields")
    if not isinstance(fields, dict):
        problems.append("field 'fields': expected an object {prompt, completion_0, completion_1, ...}")
        return None
    k = sum(1 for key in fields if key.startswith("completion_"))
    comps = [fields.get(completion_field(i)) for i in range(k)]
    if k < 2 or not all(isinstance(c, str) for c in comps):
        problems.append(f"field 'fields': expected text fields completion_0..completion_{max(k, 2) - 1}, "
                        f"got {sorted(fields)}")
        return None
    meta = rec.get("metadata")
    raw = meta.get(META) if isinstance(meta, dict) else None
    try:
        saved = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        saved = None
    if not (isinstance(saved, dict) and isinstance(saved.get("extra", {}), dict)
            and (saved.get("set_id") is None or (isinstance(saved["set_id"], int)
                                                  and not isinstance(saved["set_id"], bool)))):
        problems.append(f"field 'metadata.{META}': expected the JSON text written on export "
                        f"{{\"prompt\", \"set_id\", \"extra\"}}, got {raw!r}"[:300])
        return None
    prompt_problems: list[str] = []
    prompt = check_prompt(saved, prompt_problems)
    problems += [f"field 'metadata.{META}': {p}" for p in prompt_problems]
    if prompt is None:
        return None
    return RankedSet(prompt, comps, {}, saved.get("set_id"), saved.get("extra", {}))


def _parse_record(rec, problems: list[str]) -> RankedSet | None:
    if not isinstance(rec, dict):
        problems.append(f"expected a record object {{id, fields, metadata, responses}}, got {type(rec).__name__}")
        return None
    s = _set_of(rec, problems)
    user_answers = _user_responses(rec.get("responses"), problems)
    if s is None:
        return None
    k = len(s.completions)
    for where, user, status, values in user_answers:
        if status not in STATUSES:
            problems.append(f"field '{where}.status': expected one of {', '.join(STATUSES)}, got {status!r} "
                            "(Record.to_dict() leaves it out: export the records with the API, see docs/guides/labeling.md)")
            continue
        if status != "submitted":  # a draft may be unfinished and a discarded record was skipped
            continue
        if RANKING not in values:
            problems.append(f"field '{where}': a submitted response by {user!r} without a '{RANKING}' answer")
            continue
        ranks = _ranks(*values[RANKING], k, problems)
        flagged = _flags(*values.get(FLAGS, (None, "")), k, problems)
        if ranks is not None:
            s.rankings[user] = [FLAG if i in flagged else r for i, r in enumerate(ranks)]
    return s


def rankings_from_records(records: list[dict], source: str) -> list[RankedSet]:
    """The ranked sets back from Argilla records (`records.json` from `Dataset.to_disk`/`Record.to_dict()`
    with statuses and ranks kept, or the API's records), one labeler per user that submitted a
    response. Draft and discarded responses are skipped; a flagged completion's rank becomes "F".
    Raises one FileError naming every bad record and field."""
    if not isinstance(records, list):
        raise FileError(source, [f"expected a JSON list of records, got {type(records).__name__}"])
    problems: list[str] = []
    sets = []
    for i, rec in enumerate(records):
        rec_problems: list[str] = []
        s = _parse_record(rec, rec_problems)
        # the API's record has our id as external_id ("id" is the server's); the SDK's has it as id
        rid = (rec.get("external_id") or rec.get("id")) if isinstance(rec, dict) else None
        name = f"record {i}" + (f" (id {rid!r})" if rid is not None else "")
        problems += [f"{name}: {p}" for p in rec_problems]
        if s is not None:
            sets.append(s)
    if problems:
        raise FileError(source, problems)
    return sets
