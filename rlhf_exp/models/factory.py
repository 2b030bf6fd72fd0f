"""The `model` group: how the policy (a causal LM), a reward model and their tokenizer are made,
how a stage trains them (`Training`: LoRA, gradient checkpointing), and how every later stage loads
a model directory with the same settings (`from_dir`).

`TinyGPT2` and `TinyLlama` build small models from their config (random init, no download) with
the world's BPE tokenizer (TinyLlama's with a chat template); `HFModel` loads any causal LM and
tokenizer from a local directory, made once from a GGUF file when `gguf_file` is set. Every
tokenizer has a PAD distinct from EOS and pads on the left, for batched generation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.gguf import dequantize_gguf
from rlhf_exp.models.training import Training

Dtype = Literal["float32", "bfloat16", "float16", "auto"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")  # ChatML, as SmolLM2 and many instruct models use (without a default system turn)


def _ready_for_generation(tokenizer):
    """Left padding, and a PAD token distinct from EOS (added when the checkpoint has none): the one
    PAD policy of every model this project loads, policies and classifiers alike."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return tokenizer


def _torch_dtype(name: str):
    import torch
    return None if name in ("auto", "float32") else getattr(torch, name)


@schema
class TinyGPT2(Training):
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
        dtype = _torch_dtype(self.dtype)
        return model if dtype is None else model.to(dtype)

    def causal_lm(self, tokenizer=None):
        from transformers import GPT2LMHeadModel
        tokenizer = tokenizer or self.tokenizer()
        model = GPT2LMHeadModel(self.gpt2_config(tokenizer))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        return self._typed(model)

    def sequence_classifier(self, tokenizer=None, labels: list[str] | None = None):
        """A fresh GPT-2 with a one-output head (a reward model that starts from scratch), or one
        output per class of `labels`."""
        from transformers import GPT2ForSequenceClassification
        tokenizer = tokenizer or self.tokenizer()
        config = self.gpt2_config(tokenizer, **label_config(labels))
        return self._typed(init_reward_head(GPT2ForSequenceClassification(config)))

    def from_dir(self, path) -> "HFModel":
        """A directory a stage saved (e.g. sft/), loaded and trained with this group's settings."""
        return HFModel(name_or_path=str(path), gguf_file=None, dtype=self.dtype, trust_remote_code=False,
                       **self.training_settings())


@schema
class TinyLlama(TinyGPT2):
    """A small Llama built from config whose tokenizer has a chat template (ChatML, with
    `<|im_start|>` and `<|im_end|>`, the end of a turn, as EOS): the chat path of a real instruct
    model, at the tiny model's size and speed."""

    def tokenizer(self):
        tok = super().tokenizer()
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.eos_token, tok.chat_template = "<|im_end|>", CHATML
        return tok

    def llama_config(self, tokenizer, **extra):
        from transformers import LlamaConfig
        return LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=self.n_embd, intermediate_size=4 * self.n_embd,
            num_hidden_layers=self.n_layer, num_attention_heads=self.n_head, max_position_embeddings=self.n_positions,
            attention_dropout=self.dropout, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **extra)

    def causal_lm(self, tokenizer=None):
        from transformers import LlamaForCausalLM
        tokenizer = tokenizer or self.tokenizer()
        model = LlamaForCausalLM(self.llama_config(tokenizer))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        return self._typed(model)

    def sequence_classifier(self, tokenizer=None, labels: list[str] | None = None):
        from transformers import LlamaForSequenceClassification
        tokenizer = tokenizer or self.tokenizer()
        config = self.llama_config(tokenizer, **label_config(labels))
        return self._typed(init_reward_head(LlamaForSequenceClassification(config)))


@schema
class HFModel(Training):
    """Any causal LM with its tokenizer, from a local directory written by save_pretrained; with
    `gguf_file`, that directory is made once from the GGUF file (dequantized by transformers)."""
    name_or_path: str
    gguf_file: str | None
    dtype: Dtype
    trust_remote_code: bool

    def _materialize(self) -> str:
        """The model directory, checked; made from `gguf_file` on first use (atomically: a crash
        leaves none)."""
        out = Path(self.name_or_path)
        if self.gguf_file and not (out / "config.json").is_file():
            dequantize_gguf(Path(self.gguf_file), out)
        check_model_dir(out)
        return str(out)

    def tokenizer(self):
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(self._materialize(), trust_remote_code=self.trust_remote_code)
        return _ready_for_generation(tok)

    def _load(self, auto_class, tokenizer, **kwargs):
        model = auto_class.from_pretrained(self._materialize(), dtype=self.dtype, use_safetensors=True,
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

    def sequence_classifier(self, tokenizer=None, labels: list[str] | None = None):
        """The checkpoint with a fresh one-output head (small normal init): a reward model to train;
        or one output per class of `labels` (a classifier to train)."""
        from transformers import AutoModelForSequenceClassification
        return init_reward_head(self._load(AutoModelForSequenceClassification, tokenizer or self.tokenizer(),
                                           **label_config(labels)))

    def classifier(self, tokenizer=None):
        """The sequence classifier saved here, head and labels as they are: a reward model written
        by stage=reward_model, or any classifier (e.g. hate speech)."""
        from transformers import AutoModelForSequenceClassification
        return self._load(AutoModelForSequenceClassification, tokenizer or self.tokenizer())

    def from_dir(self, path) -> "HFModel":
        """Another directory (a stage's output), loaded and trained with this group's settings."""
        return HFModel(name_or_path=str(path), gguf_file=None, dtype=self.dtype,
                       trust_remote_code=self.trust_remote_code, **self.training_settings())

    @classmethod
    def plain(cls, path) -> "HFModel":
        """A directory loaded as saved, in float32, for inference (where no `model` group is at hand)."""
        return cls(name_or_path=str(path), gguf_file=None, dtype="float32", trust_remote_code=False,
                   lora_r=0, lora_alpha=1.0, lora_dropout=0.0, lora_target_modules="all-linear",
                   gradient_checkpointing=False)


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


def check_model_dir(path: Path, field: str | None = None) -> None:
    """A model directory as save_pretrained writes it: config.json that is JSON, weights in
    safetensors (pickled weights can run code when loaded, and are refused), a tokenizer. Else a
    UserError naming the setting (`field`, when known), the path and what is missing, before
    transformers is asked."""
    import json

    from rlhf_exp.errors import UserError
    where = f"{field} = {path}" if field else f"model directory {str(path)!r}"
    where += f" (resolved to {Path(path).resolve()})"
    path = Path(path)
    if not path.exists():
        raise UserError(f"{where}: no such directory; expected one written by save_pretrained (a stage's "
                        "sft/, policy/ or reward_model/, or model=smollm2's cache)")
    if not path.is_dir():
        raise UserError(f"{where}: a file, not a directory; expected a directory written by save_pretrained")
    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"{where}: no config.json; expected a directory written by save_pretrained")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{where}: config.json is not JSON ({err})") from None
    if not any((path / w).is_file() for w in WEIGHTS):
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        raise UserError(f"{where}: no weights in safetensors ({', '.join(WEIGHTS[:2])})"
                        + (f"; {', '.join(pickled)} are pickled weights, which can run code when loaded and are "
                           "not loaded: save them again with save_pretrained (safetensors is its default)"
                           if pickled else ""))
    if not any((path / t).is_file() for t in TOKENIZER):
        raise UserError(f"{where}: no tokenizer ({' or '.join(TOKENIZER)}); save the tokenizer into it too")


def label_config(labels: list[str] | None) -> dict:
    """A sequence classifier's config keys: one output (a reward model), or one per named class."""
    if labels is None:
        return {"num_labels": 1}
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}}


def init_reward_head(model):
    """Re-initialise the classification head (one output, or one per class) with a small normal,
    std = 1/sqrt(hidden + 1), bias 0."""
    import torch

    from rlhf_exp.models.value import classification_head
    head = classification_head(model)
    torch.nn.init.normal_(head.weight, std=(head.in_features + 1) ** -0.5)
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    return model
