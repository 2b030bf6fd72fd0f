"""The command-line tools, the top layer (ARCHITECTURE.md, "The layers"): `rlhf-exp` (`cli.py`, the Hydra
app), `rlhf-exp-compare` (`compare.py`), `rlhf-exp-labels` (`exchange.py`), `rlhf-exp-judge` (`judge_cli.py`),
and `python -m rlhf_exp.tools.<name>` for `judge_check`, `side_by_side` and `bench`. Nothing in rlhf_exp
imports them but `__main__` (`python -m rlhf_exp`, which runs `cli.py`)."""
