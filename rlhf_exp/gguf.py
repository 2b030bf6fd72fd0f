"""GGUF files -> save_pretrained directories: one conversion that the `model` group's factories
(`models/factory.py`, `gguf_file`) and the judge of real text (`worlds/judge.py`, gemma-3-270m) share.
It sits low, beside `files.py` (it imports `errors` only), so that worlds and models may both use it.
`gguf` is an optional extra (the `models` extra); transformers reads the file with it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from rlhf_exp.errors import UserError, require


def dequantize_gguf(gguf: Path, out: Path) -> Path:
    """A GGUF file -> a save_pretrained directory (config, float weights, tokenizer with its chat
    template). transformers dequantizes the file; the model it gives carries GGUF's quantization
    marker, which save_pretrained refuses, so the weights go into a model built from the same config."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not gguf.is_file():
        raise UserError(f"model.gguf_file = {str(gguf)!r}: no such file (resolved to {gguf.resolve()})")
    require("gguf", f"reading the GGUF file {gguf.name}", "models")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = copy.deepcopy(loaded.config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
