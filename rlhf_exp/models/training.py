"""How the `model` group trains a model: full fine-tuning or LoRA adapters (peft), and gradient
checkpointing; and how a trained model is saved (with LoRA: the adapter, and the merged model that
loads with `from_pretrained`)."""
from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path
from typing import Annotated

from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.errors import require


@schema
class Training:
    """Settings every `model` option has (conf/model/*.yaml gives each its default and meaning)."""
    lora_r: Annotated[int, Field(ge=0)]                # LoRA rank; 0 = full fine-tuning
    lora_alpha: Annotated[float, Field(gt=0)]          # LoRA scale α (the update is α/r · BA)
    lora_dropout: Annotated[float, Field(ge=0, lt=1)]
    lora_target_modules: str | list[str]               # "all-linear" or module names
    gradient_checkpointing: bool

    def training_settings(self) -> dict:
        """These settings by name (to carry them to another model directory)."""
        return {name: getattr(self, name) for name in Training.__pydantic_fields__}

    def trainable(self, model, task: str = "CAUSAL_LM"):
        """The model as a stage trains it: with LoRA adapters when lora_r > 0 (the base frozen; for a
        classifier, `SEQ_CLS`, its head trained too) and gradient checkpointing when asked."""
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not self.lora_r:
            return model
        peft = require("peft", f"LoRA (model.lora_r = {self.lora_r})", "models")
        config = peft.LoraConfig(task_type=task, r=self.lora_r, lora_alpha=self.lora_alpha,
                            lora_dropout=self.lora_dropout, target_modules=self.lora_target_modules)
        return peft.get_peft_model(model, config)


def is_adapted(model) -> bool:
    """Whether the model carries LoRA adapters. Only peft makes such a model, so without peft
    imported there is none (and a core install, without peft, never imports it)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def adapters_off(model):
    """A context in which a LoRA model is its base model (adapters disabled); nothing for others."""
    return model.disable_adapter() if is_adapted(model) else contextlib.nullcontext()


class AdaptersOff:
    """The reference policy of a LoRA policy: the same network with its adapters disabled (not a
    second copy in memory). Called like the model."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args, **kwargs):
        with adapters_off(self.model):
            return self.model(*args, **kwargs)


def reference(lm):
    """The frozen reference of a policy about to be trained: its adapters disabled (LoRA), else a copy."""
    if is_adapted(lm):
        return AdaptersOff(lm)
    return copy.deepcopy(lm).requires_grad_(False)


def save_trained(model, tokenizer, out: Path, state_dict: dict | None = None) -> list[Path]:
    """save_pretrained to `out`; with LoRA, the adapter to `out`_adapter and the merged model to `out`
    (a plain model that loads with from_pretrained). `state_dict`: the whole weights of a sharded
    model (models/sharding.full_state_dict), saved in place of its shards. Returns the directories written."""
    if state_dict is not None:
        model.save_pretrained(out, state_dict=state_dict)
        tokenizer.save_pretrained(out)
        return [out]
    written = []
    if is_adapted(model):
        adapter = out.with_name(out.name + "_adapter")
        model.save_pretrained(adapter)
        tokenizer.save_pretrained(adapter)
        written.append(adapter)
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return [out, *written]
