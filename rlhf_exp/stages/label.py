"""`stage=label`: a local web page where people rank the completion sets of a feedback file (what
`stage=collect collect=human` writes); each ranking is written into that file at once. A stage people
run on their own, not part of `stage=pipeline`: no tracked run, it serves until stopped (Ctrl+C)."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field

from rlhf_exp.config import ConfigError, schema
from rlhf_exp.errors import UserError
from rlhf_exp.labeling.instructions import guide_for
from rlhf_exp.stages.context import StageContext


@schema
class LabelSettings:
    """`stage=label` (conf/label/default.yaml gives each its default and meaning)."""
    feedback: str | None       # the ranked feedback file to label; required with stage=label
    instructions: str | None   # a text/markdown file shown first; null = LABELING.md beside `feedback`, else built in
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=0, le=65535)]  # 0 = a free port, printed


def check(s: LabelSettings) -> None:
    """With stage=label (only then: other stages do not read these settings): a feedback file is
    given and exists, and so does an instructions file when one is given."""
    if not s.feedback:
        raise ConfigError("label.feedback: no feedback file given; expected label.feedback=PATH (a ranked "
                          "feedback file, e.g. the feedback.jsonl of stage=collect collect=human)")
    problems = [f"label.{key} = {value!r}: no such file (resolved to {Path(value).resolve()})"
                for key, value in (("feedback", s.feedback), ("instructions", s.instructions))
                if value and not Path(value).is_file()]
    if problems:
        raise ConfigError("\n".join(problems))


def instructions_text(s: LabelSettings) -> str:
    """The instructions file given, else LABELING.md beside the feedback file, else the built-in text."""
    return guide_for(s.feedback, s.instructions)


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (port 0: one the system picks), or a UserError naming the setting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted server takes its port back at once
    try:
        sock.bind((host, port))
        sock.listen(128)  # connections wait in the backlog from now on: the address printed next is reachable at once
    except OSError as err:
        sock.close()
        raise UserError(f"label.host = {host!r}, label.port = {port}: cannot listen there ({err.strerror}); "
                        "expected a free port on an address of this machine (label.port=0 picks a free one)") from None
    return sock


def serve(app, sock: socket.socket) -> None:
    """Serve `app` on the bound socket with uvicorn until stopped (Ctrl+C, SIGTERM)."""
    import uvicorn
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


def run(ctx: StageContext) -> None:
    from rlhf_exp.labeling.app import make_app
    from rlhf_exp.labeling.store import LabelStore
    s: LabelSettings = ctx.built.label
    check(s)
    store = LabelStore(s.feedback)  # the file checked (every line) before anything is served
    app = make_app(store, instructions_text(s))
    sock = listen(s.host, s.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    sets = store.sets()
    print(f"label: {len(sets)} sets in {store.path.resolve()}; rankings are written there at once\n"
          f"labeling page: http://{shown}:{port}/  (give each labeler http://{shown}:{port}/?labeler=NAME; "
          "Ctrl+C stops)", flush=True)
    serve(app, sock)
