"""The `model` group: how the policy (a causal LM), a reward model and their tokenizer are made,
and how every later stage loads a model directory with the same settings (`from_dir`).

`TinyGPT2` builds a small GPT-2 from its config (random init, no download) with the world's BPE
tokenizer; `HFModel` loads any causal LM and tokenizer from a local directory. Both give a tokenizer
whose PAD differs from EOS and that pads on the left, for batched generation.
"""
from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import Field

from rlhf_exp.config import schema

Dtype = Literal["float32", "bfloat16", "float16", "auto"]


def _ready_for_generation(tokenizer):
    """Left padding, and a PAD token distinct from EOS (added when the checkpoint has none): the one
    PAD policy of every model this project loads, policies and classifiers alike."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return tokenizer


@schema
class TinyGPT2:
    """A small GPT-2 built from config; the default model, needs nothing from a hub."""
    n_layer: Annotated[int, Field(ge=1)]
    n_head: Annotated[int, Field(ge=1)]
    n_embd: Annotated[int, Field(ge=1)]
    n_positions: Annotated[int, Field(ge=8)]
    vocab_size: Annotated[int, Field(ge=300)]
    dropout: Annotated[float, Field(ge=0, lt=1)]
    dtype: Dtype
    tokenizer_dir: str

    @pydantic.model_validator(mode="after")
    def _heads_divide(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd = {self.n_embd}: expected a multiple of n_head ({self.n_head})")
        return self

    def tokenizer(self):
        from rlhf_exp.models.tokenizer import world_tokenizer
        return world_tokenizer(self.tokenizer_dir, self.vocab_size)

    def gpt2_config(self, tokenizer, **extra):
        from transformers import GPT2Config
        return GPT2Config(
            vocab_size=len(tokenizer), n_positions=self.n_positions, n_embd=self.n_embd,
            n_layer=self.n_layer, n_head=self.n_head, resid_pdrop=self.dropout,
            embd_pdrop=self.dropout, attn_pdrop=self.dropout,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **extra)

    def _typed(self, model):
        import torch
        return model if self.dtype in ("auto", "float32") else model.to(getattr(torch, self.dtype))

    def causal_lm(self, tokenizer=None):
        from transformers import GPT2LMHeadModel
        tokenizer = tokenizer or self.tokenizer()
        model = GPT2LMHeadModel(self.gpt2_config(tokenizer))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        return self._typed(model)

    def sequence_classifier(self, tokenizer=None):
        """A fresh GPT-2 with a one-output head (a reward model that starts from scratch)."""
        from transformers import GPT2ForSequenceClassification
        tokenizer = tokenizer or self.tokenizer()
        return self._typed(init_reward_head(GPT2ForSequenceClassification(self.gpt2_config(tokenizer, num_labels=1))))

    def from_dir(self, path) -> "HFModel":
        """A directory a stage saved (e.g. sft/), loaded with this group's dtype."""
        return HFModel(name_or_path=str(path), dtype=self.dtype, trust_remote_code=False)


@schema
class HFModel:
    """Any causal LM with its tokenizer, from a local directory written by save_pretrained."""
    name_or_path: str
    dtype: Dtype
    trust_remote_code: bool

    def tokenizer(self):
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(self.name_or_path, trust_remote_code=self.trust_remote_code)
        return _ready_for_generation(tok)

    def _load(self, auto_class, tokenizer, **kwargs):
        model = auto_class.from_pretrained(self.name_or_path, dtype=self.dtype,
                                           trust_remote_code=self.trust_remote_code, **kwargs)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id  # a classifier scores its last non-pad token
        return model

    def causal_lm(self, tokenizer=None):
        from transformers import AutoModelForCausalLM
        tokenizer = tokenizer or self.tokenizer()
        model = self._load(AutoModelForCausalLM, tokenizer)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model

    def sequence_classifier(self, tokenizer=None):
        """The checkpoint with a fresh one-output head (small normal init): a reward model to train."""
        from transformers import AutoModelForSequenceClassification
        return init_reward_head(self._load(AutoModelForSequenceClassification, tokenizer or self.tokenizer(),
                                           num_labels=1))

    def classifier(self, tokenizer=None):
        """The sequence classifier saved here, head and labels as they are: a reward model written
        by stage=reward_model, or any classifier (e.g. hate speech)."""
        from transformers import AutoModelForSequenceClassification
        return self._load(AutoModelForSequenceClassification, tokenizer or self.tokenizer())

    def from_dir(self, path) -> "HFModel":
        """Another directory (a stage's output), loaded with this group's settings."""
        return HFModel(name_or_path=str(path), dtype=self.dtype, trust_remote_code=self.trust_remote_code)


def init_reward_head(model):
    """Re-initialise the one-output head with a small normal, std = 1/sqrt(hidden + 1), bias 0."""
    import torch

    from rlhf_exp.models.value import one_output_head
    head = one_output_head(model)
    torch.nn.init.normal_(head.weight, std=(head.in_features + 1) ** -0.5)
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    return model
