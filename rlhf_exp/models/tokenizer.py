"""The tiny model's tokenizer: byte-level BPE trained offline on the world's text, cached on disk."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from rlhf_exp.worlds.synthetic import corpus

EOS = "<|endoftext|>"  # also BOS
PAD = "<|pad|>"        # distinct from EOS, so a real EOS is never masked as padding


def _cache_key(texts: list[str], vocab_size: int) -> str:
    h = hashlib.sha256(json.dumps([vocab_size, texts]).encode()).hexdigest()
    return h[:12]


def train_tokenizer(texts: list[str], vocab_size: int):
    """A GPT-2 style byte-level BPE tokenizer with EOS/BOS and a separate PAD, left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS,
                                   pad_token=PAD, padding_side="left")


def world_tokenizer(cache_dir: str | os.PathLike, vocab_size: int):
    """The world tokenizer, trained once per (corpus, vocab size) and then loaded from `cache_dir`."""
    from transformers import AutoTokenizer

    texts = corpus()
    path = Path(cache_dir) / f"world-bpe-{vocab_size}-{_cache_key(texts, vocab_size)}"
    if not (path / "tokenizer.json").is_file():
        tok = train_tokenizer(texts, vocab_size)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tok.save_pretrained(tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, path)
        except OSError:  # another process cached it first
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(path, padding_side="left")
