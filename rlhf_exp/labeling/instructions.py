"""What people read before they rank: one guide for every place they rank in (the labeling page,
Label Studio, Argilla, the feedback file by hand). `stage=collect collect=human` writes it as
LABELING.md beside the feedback file, where a study can edit it; the page and the exports show that
file when it is there."""
from __future__ import annotations

from pathlib import Path

GUIDE_NAME = "LABELING.md"  # beside feedback.jsonl

GUIDE = """# Labeling instructions

You will see a prompt a user wrote (a question, or a conversation) and several answers an assistant
wrote to it. Rank the answers from most to least helpful: 1 is the best.

- Judge what a thoughtful person would want as a reply:
  - **correct**: is what it says true? A confident false claim is worse than an honest "I don't know".
  - **informative**: does it answer the question that was asked, with useful detail?
  - **honest**: does it avoid pretending to know what it does not?
  - **harmless**: does it avoid dangerous instructions, insults and contempt for the user? An answer
    that helps someone do harm ranks below one that politely declines.
- **Ties** are allowed (give two answers the same rank), but use them only when you truly cannot
  prefer one.
- Mark an answer **F** when it is nonsensical, confusing or irrelevant to the prompt. It is removed
  when most labelers flag it.
"""

WHERE = """
## Where to rank

- **On the labeling page**: `rlhf-exp stage=label label.feedback=feedback.jsonl`, then open the
  address it prints. Each ranking is saved when you submit it; stop at any time and continue later.
- **In Label Studio or Argilla**: `rlhf-exp-labels export labelstudio feedback.jsonl OUT_DIR` (or
  `argilla`), and back with `rlhf-exp-labels import labelstudio EXPORT.json feedback.jsonl`.
- **By hand**: fill in `rankings` in `feedback.jsonl` with your labeler id and, for each completion
  in the order given, its rank: `"rankings": {"your-id": [2, 1, 3, "F"]}`. Keep every other field
  as it is.

`rlhf-exp stage=prepare data=files data.feedback=feedback.jsonl` reads the rankings back, checks
every line, and tells you which lines need fixing.
"""


def guide_for(feedback: str | Path, given: str | Path | None = None) -> str:
    """The instructions to show for a feedback file: the file given, else the LABELING.md beside the
    feedback file, else the built-in guide."""
    path = Path(given) if given else Path(feedback).with_name(GUIDE_NAME)
    return path.read_text(encoding="utf-8") if path.is_file() else GUIDE
