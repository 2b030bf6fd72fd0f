"""The labeling page's web app (FastAPI): the page itself (page/), and a small JSON API over a
`LabelStore`.

- `GET  /api/instructions`            -> {"text"}: what labelers read before the first set
- `GET  /api/next?labeler=ID`         -> {"progress", "set"}: the first set ID has not ranked (null when done)
- `GET  /api/sets/{index}?labeler=ID` -> one set, with ID's ranks when they gave some
- `POST /api/rankings` {"labeler", "index" and/or "set_id", "ranks"} -> {"saved", "progress", "next"}

Refusals are JSON `{"error", "problems": [sentence, ...]}`: 422 for a bad request or ranking, 404
for a set the file does not hold, 409 when the file itself went bad while the page was open.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from rlhf_exp.labeling.store import LABELER_PATTERN, LabelStore, RankingError, UnknownSet, set_json
from rlhf_exp.files import FileError

PAGE_DIR = Path(__file__).resolve().parent / "page"  # index.html, label.js, label.css (package data)

Labeler = Annotated[str, Field(pattern=LABELER_PATTERN, description="the labeler's id (name)")]


class RankingIn(BaseModel):
    """One labeler's ranking of one set: a rank 1..K or "F" per completion, in file order."""
    model_config = ConfigDict(extra="forbid")
    labeler: Labeler
    index: Annotated[int, Field(ge=0)] | None = None  # the set's position in the file (0-based)
    set_id: int | None = None                          # or its set_id; with both, they must agree
    ranks: list[StrictInt | Literal["F"]]              # StrictInt: "2", 2.0 or true are not ranks

    @model_validator(mode="after")
    def _names_a_set(self):
        if self.index is None and self.set_id is None:
            raise ValueError("expected the set's index or its set_id")
        return self


def _field(loc: tuple) -> str:
    """pydantic's error location as a field name: ('body', 'ranks', 2, 'int') -> 'ranks[2]' (the
    last part, naming which branch of a union failed, dropped)."""
    name = ""
    for part in loc[1:]:
        if isinstance(part, int):
            name += f"[{part}]"
        elif not name or not name.endswith("]"):
            name += f".{part}" if name else str(part)
    return name or "request"


def _refusal(status: int, error: str, problems: list[str]) -> JSONResponse:
    return JSONResponse({"error": error, "problems": problems}, status_code=status)


def make_app(store: LabelStore, instructions: str) -> FastAPI:
    """The app serving `store`; `instructions` (text or markdown) is shown before the first set."""
    app = FastAPI(title="rlhf-exp labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        seen, problems = set(), []
        for err in exc.errors():
            field = _field(tuple(err["loc"]))
            if field in seen:  # a union reports each of its branches; one sentence per field is enough
                continue
            seen.add(field)
            got = f", got {err['input']!r}" if "input" in err and not isinstance(err["input"], dict) else ""
            wanted = 'expected an integer rank or "F"' if field.startswith("ranks[") else err["msg"]
            problems.append(f"{field}: {wanted}{got}")
        return _refusal(422, "invalid request", problems)

    @app.exception_handler(RankingError)
    async def bad_ranking(request: Request, exc: RankingError):
        return _refusal(422, exc.kind, exc.problems)

    @app.exception_handler(UnknownSet)
    async def unknown_set(request: Request, exc: UnknownSet):
        return _refusal(404, exc.kind, [str(exc)])

    @app.exception_handler(FileError)
    async def bad_file(request: Request, exc: FileError):
        return _refusal(409, f"the feedback file {exc.source} cannot be read; nothing was written", exc.problems)

    # plain `def` endpoints run in FastAPI's thread pool: the store's lock keeps concurrent posts apart
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(PAGE_DIR / "index.html")

    @app.get("/api/instructions")
    def get_instructions():
        return {"text": instructions}

    @app.get("/api/next")
    def next_set(labeler: Annotated[str, Query(pattern=LABELER_PATTERN)]):
        sets = store.sets()  # one read: progress and the next set agree
        found = store.next_set(labeler, sets)
        return {"progress": store.progress(labeler, sets).to_json(),
                "set": set_json(*found, labeler) if found else None}

    @app.get("/api/sets/{index}")
    def one_set(index: int, labeler: Annotated[str | None, Query(pattern=LABELER_PATTERN)] = None):
        sets = store.sets()
        i = store.find(sets, index=index)
        return set_json(i, sets[i], labeler)

    @app.post("/api/rankings")
    def post_ranking(ranking: RankingIn):
        i = store.submit(ranking.labeler, ranking.ranks, ranking.index, ranking.set_id)
        sets = store.sets()
        found = store.next_set(ranking.labeler, sets)
        return {"saved": {"index": i, "set_id": sets[i].set_id, "ranks": sets[i].rankings.get(ranking.labeler)},
                "progress": store.progress(ranking.labeler, sets).to_json(),
                "next": set_json(*found, ranking.labeler) if found else None}

    return app
