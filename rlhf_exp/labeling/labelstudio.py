"""Label Studio (1.23) export and import of ranked feedback.

Label Studio's `<Ranker>` with `<Bucket>`s sorts the items of a `<List>` into named columns
(https://labelstud.io/tags/ranker, the "LLM Ranker" template). A ranked set becomes one task whose
list holds the K completions; the ranker has one bucket per rank, `rank_1` (best) .. `rank_K`, and a
bucket `F` for nonsense. Completions put in the same bucket are tied; a completion left in the list
(which Label Studio saves under the key `_`) is unranked, and an annotation that leaves one there
is refused on import (an empty bucket past a set's size is ignored: the UI saves every bucket of the
config). An annotation's result is `{"type": "ranker", "from_name": "rank",
"value": {"ranker": {"rank_1": [item id, ...], ..., "F": [...], "_": [...]}}}`.

- `label_config(k, instructions)`: the project's labeling config (XML) for sets of up to k completions.
- `tasks(sets)`: the tasks to import; each keeps the prompt (a conversation as its turns, plus a
  readable rendering), the completions with ids `c1`.., the set_id and any extra field, so that
- `rankings_from_export(rows, source)` rebuilds every set exactly from Label Studio's "JSON" export,
  each annotator a labeler, or raises one FileError naming every bad task and annotation.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

from rlhf_exp.feedback.formats import FLAG, RankedSet
from rlhf_exp.feedback.prompts import Conversation, check_prompt
from rlhf_exp.files import FileError

RANKER = "rank"          # the Ranker's name: `from_name` of the results it saves
LIST = "completions"     # the List's name and the task data key of its items
UNPLACED = "_"           # where Label Studio keeps the items left in the list (no default bucket)
FLAG_BUCKET = FLAG       # completions marked nonsense


def rank_bucket(rank: int) -> str:
    """The bucket name of a rank (1 = best)."""
    return f"rank_{rank}"


def item_id(index: int) -> str:
    """The stable id of a set's completion at `index` (0-based): c1, c2, ..."""
    return f"c{index + 1}"


def _attr(text: str) -> str:
    """Text as an XML attribute value: quotes and newlines escaped (a raw newline in an attribute
    would be read back as a space)."""
    return escape(text, {'"': "&quot;", "\n": "&#10;", "\r": ""})


def label_config(k: int, instructions: str) -> str:
    """A labeling config for ranking up to `k` completions of a prompt: the instructions, the
    prompt, and a Ranker with buckets `rank_1` .. `rank_k` and `F` over the list of completions."""
    if not (isinstance(k, int) and k >= 2):
        raise ValueError(f"k: expected an integer >= 2 (completions per set), got {k!r}")
    buckets = [f'    <Bucket name="{rank_bucket(r)}" title="{_attr(_rank_title(r, k))}"/>' for r in range(1, k + 1)]
    buckets.append(f'    <Bucket name="{FLAG_BUCKET}" title="F (nonsense)"/>')
    return "\n".join([
        "<View>",
        "  <Style>",
        "    .htx-text { white-space: pre-wrap; }",
        "    .htx-ranker-item p:last-child { display: none; }",  # the item id Label Studio prints last
        "  </Style>",
        '  <Header value="Instructions"/>',
        f'  <Text name="instructions" value="{_attr(instructions)}"/>',
        '  <Header value="Prompt"/>',
        '  <Text name="prompt" value="$prompt_text"/>',
        '  <Header value="Drag every completion into a rank (the same rank for a tie) or into F"/>',
        f'  <List name="{LIST}" value="${LIST}" title="Completions to rank"/>',
        f'  <Ranker name="{RANKER}" toName="{LIST}">',
        *buckets,
        "  </Ranker>",
        "</View>",
        "",
    ])


def _rank_title(rank: int, k: int) -> str:
    return f"Rank {rank}" + (" (best)" if rank == 1 else " (worst)" if rank == k else "")


def render_prompt(prompt) -> str:
    """A prompt as text for people: a string as it is, a conversation as `role: content` turns."""
    if isinstance(prompt, Conversation):
        return "\n\n".join(f"{role}: {content}" for role, content in prompt.turns)
    return prompt


def tasks(sets: list[RankedSet]) -> list[dict]:
    """Label Studio import tasks, one per set, in order: `{"data": {"prompt", "prompt_text",
    "completions": [{"id", "title", "body"}], "set_id", "extra"}}`. `prompt` is the prompt as the
    feedback file holds it (a string or the list of turns) so that it round trips exactly;
    existing rankings are not exported."""
    out = []
    for s in sets:
        data = {
            "prompt": s.prompt.to_json() if isinstance(s.prompt, Conversation) else s.prompt,
            "prompt_text": render_prompt(s.prompt),
            LIST: [{"id": item_id(i), "title": f"Completion {i + 1}", "body": c} for i, c in enumerate(s.completions)],
            "set_id": s.set_id,
            "extra": dict(s.extra),
        }
        out.append({"data": data})
    return out


def _labeler(completed_by, problems: list[str]) -> str | None:
    """The labeler id of an annotation's `completed_by`: the annotator's email, else
    `labelstudio-<user id>` (the export gives the user as an object, or as a bare id)."""
    if isinstance(completed_by, dict):
        email = completed_by.get("email")
        if isinstance(email, str) and email.strip():
            return email.strip()
        completed_by = completed_by.get("id")
    if isinstance(completed_by, int) and not isinstance(completed_by, bool):
        return f"labelstudio-{completed_by}"
    problems.append(f"field 'completed_by': expected the annotator (an object with 'email' or 'id', or a user id), "
                    f"got {completed_by!r}")
    return None


def _completions(data: dict, problems: list[str]) -> tuple[list[str], list[str]] | None:
    """(item ids, completion texts) of a task's `data.completions`, checked."""
    items = data.get(LIST)
    expected = (f"field 'data.{LIST}': expected a list of at least 2 items "
                '{"id": string, "body": string} with distinct ids')
    if not (isinstance(items, list) and len(items) >= 2 and all(
            isinstance(it, dict) and isinstance(it.get("id"), str) and isinstance(it.get("body"), str)
            for it in items)):
        problems.append(f"{expected}, got {items!r}"[:300])
        return None
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        problems.append(f"{expected}, got ids {ids}")
        return None
    return ids, [it["body"] for it in items]


def _ranks(value, ids: list[str], problems: list[str]) -> list | None:
    """The rank of each completion ("F" for flagged) from a ranker value {bucket: [item id, ...]}."""
    n = len(ids)
    buckets = value.get("ranker") if isinstance(value, dict) else None
    if not (isinstance(buckets, dict) and all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in buckets.values())):
        problems.append("field 'value.ranker': expected an object {bucket name: [completion id, ...]}, "
                        f"got {buckets!r}"[:300])
        return None
    known = {rank_bucket(r): r for r in range(1, n + 1)} | {FLAG_BUCKET: FLAG}
    bad: list[str] = []
    ranks: dict[str, object] = {}
    for bucket, members in buckets.items():
        # the list's leftovers (`_`) are reported below as unranked; empty buckets are skipped, since
        # the UI saves every bucket of the config (an empty rank_4 for a set of 3 too)
        if bucket == UNPLACED or not members:
            continue
        if bucket not in known:
            bad.append(f"field 'value.ranker.{bucket}': unknown bucket; expected one of "
                       f"{', '.join(known)} ({n} completions)")
            continue
        for member in members:
            if member not in ids:
                bad.append(f"field 'value.ranker.{bucket}': unknown completion id {member!r}; expected one of {ids}")
            elif member in ranks:
                bad.append(f"field 'value.ranker.{bucket}': completion {member!r} is in two buckets; "
                           "expected each completion in exactly one")
            else:
                ranks[member] = known[bucket]
    unranked = [i for i in ids if i not in ranks]
    if unranked:
        bad.append(f"field 'value.ranker': completions {unranked} were left unranked; expected every completion "
                   f"in a rank bucket ({rank_bucket(1)}..{rank_bucket(n)}) or in {FLAG_BUCKET}")
    problems += bad
    return None if bad else [ranks[i] for i in ids]


def _annotation_ranks(ann, ids: list[str], problems: list[str]) -> tuple[str, list] | None:
    """(labeler, ranks) of one annotation, or None when it is cancelled (skipped) or bad."""
    if not isinstance(ann, dict):
        problems.append(f"expected an annotation object, got {type(ann).__name__}")
        return None
    if ann.get("was_cancelled"):
        return None
    labeler = _labeler(ann.get("completed_by"), problems)
    result = ann.get("result")
    if not isinstance(result, list):
        problems.append(f"field 'result': expected a list of results, got {result!r}"[:300])
        return None
    found = [r for r in result if isinstance(r, dict) and r.get("type") == "ranker" and r.get("from_name") == RANKER]
    if len(found) != 1:
        problems.append(f"field 'result': expected one result of type 'ranker' from '{RANKER}', found {len(found)}")
        return None
    ranks = _ranks(found[0].get("value"), ids, problems)
    return (labeler, ranks) if labeler is not None and ranks is not None else None


def _task_set(task, problems: list[str]) -> RankedSet | None:
    """The ranked set of one exported task, every problem added to `problems` (without the task)."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        problems.append("field 'data': expected an object (a task of Label Studio's JSON export)")
        return None
    data = task["data"]
    prompt_problems: list[str] = []
    prompt = check_prompt(data, prompt_problems)
    problems += [p.replace("field '", "field 'data.", 1) for p in prompt_problems]
    comps = _completions(data, problems)
    set_id = data.get("set_id")
    if set_id is not None and not (isinstance(set_id, int) and not isinstance(set_id, bool)):
        problems.append(f"field 'data.set_id': expected an integer or null, got {set_id!r}")
    extra = data.get("extra", {})
    if not isinstance(extra, dict):
        problems.append(f"field 'data.extra': expected an object, got {extra!r}"[:300])
    annotations = task.get("annotations")
    if not isinstance(annotations, list):
        problems.append(f"field 'annotations': expected a list, got {annotations!r}"[:300])
        return None
    if comps is None:
        return None
    ids, texts = comps
    rankings: dict[str, list] = {}
    for j, ann in enumerate(annotations):
        ann_problems: list[str] = []
        got = _annotation_ranks(ann, ids, ann_problems)
        where = f"annotation {j}" + (f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else "")
        problems += [f"{where}: {p}" for p in ann_problems]
        if got is None:
            continue
        labeler, ranks = got
        if labeler in rankings:
            problems.append(f"{where}: field 'completed_by': {labeler} has another annotation of this task; "
                            "expected one per annotator (delete or cancel the other)")
        rankings[labeler] = ranks
    if problems:
        return None
    return RankedSet(prompt, texts, rankings, set_id, dict(extra))


def rankings_from_export(rows: list[dict], source: str) -> list[RankedSet]:
    """The ranked sets of Label Studio's JSON export (a list of tasks with `data` and
    `annotations`), in task order, each non-cancelled annotation a labeler's ranking; a task
    nobody annotated gives a set with no rankings. Raises one FileError naming every bad task,
    annotation and field; nothing is returned partially."""
    if not isinstance(rows, list):
        raise FileError(source, [f"expected a list of tasks (Label Studio's JSON export), got {type(rows).__name__}"])
    problems: list[str] = []
    sets = []
    for i, task in enumerate(rows):
        task_problems: list[str] = []
        s = _task_set(task, task_problems)
        where = f"task {i}" + (f" (id {task['id']})" if isinstance(task, dict) and "id" in task else "")
        problems += [f"{where}: {p}" for p in task_problems]
        sets.append(s)
    if problems:
        raise FileError(source, problems)
    if not sets:
        raise FileError(source, ["no tasks: the export is empty"])
    return sets
