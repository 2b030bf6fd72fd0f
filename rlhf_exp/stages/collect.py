"""`stage=collect`: K completions per prompt from a policy, ranked by the simulated labelers (who
also give each completion a thumbs up or down, thumbs.jsonl) or written out for people to rank
(with labeling instructions)."""
from __future__ import annotations

import time
from statistics import mean
from typing import Annotated, Literal

from pydantic import Field

from rlhf_exp.config import ConfigError, schema
from rlhf_exp.feedback.formats import RankedSet, binary_to_json, ranked_to_json
from rlhf_exp.labeling.instructions import GUIDE, GUIDE_NAME, WHERE
from rlhf_exp.files import write_jsonl
from rlhf_exp.models.generation import sample
from rlhf_exp.stages.context import StageContext


@schema
class CollectSettings:
    """`stage=collect` (conf/collect/default.yaml gives each its default and meaning); K is data.n_completions."""
    policy: str | None          # policy dir; null = this pipeline's sft/
    sets_per_prompt: Annotated[int, Field(ge=1)]
    heldout_sets: Annotated[int, Field(ge=0)]        # sets per held-out prompt (unlabeled, for evaluation)
    temperature: Annotated[float, Field(ge=0)]
    top_p: Annotated[float, Field(gt=0, le=1)]
    max_new_tokens: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]          # prompts per generate call (× K sequences)
    labelers: Literal["simulated", "human"]


def run(ctx: StageContext) -> None:
    s: CollectSettings = ctx.built.collect
    data = ctx.built.data
    simulated = s.labelers == "simulated"
    if simulated and not data.simulated:
        raise ConfigError("collect.labelers = 'simulated': expected 'human' with data=files or data=hf "
                          "(only the simulated worlds, data=synthetic and data=chat, have simulated labelers)")
    prompts = [p for p in data.train_prompts() for _ in range(s.sets_per_prompt)]  # read (and checked) before
    heldout = [p for p in data.heldout_prompts() for _ in range(s.heldout_sets)]   # any model loads
    spec = ctx.model_spec(s.policy, "policy", "collect.policy")  # the directory given, this pipeline's sft/, or the model group
    tokenizer = spec.tokenizer()
    policy = spec.causal_lm(tokenizer).to(ctx.device())
    gen = dict(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
               batch_size=s.batch_size)

    t0 = time.perf_counter()
    out = sample(policy, tokenizer, prompts, data.n_completions, **gen)
    held = sample(policy, tokenizer, heldout, data.n_completions, **gen) if heldout else None
    seconds = time.perf_counter() - t0

    sets = list(zip(prompts, out.texts))
    gold = data.gold_scores(sets) if data.simulated else None
    records = data.rank(sets, "collect", gold) if simulated else \
        [RankedSet(p, c, {}, set_id=i) for i, (p, c) in enumerate(sets)]
    ctx.save("feedback", write_jsonl(ctx.run_dir / "feedback.jsonl", map(ranked_to_json, records)))
    if simulated:  # the same completions with a thumbs up or down each, for a classifier reward
        ctx.save("thumbs", write_jsonl(ctx.run_dir / "thumbs.jsonl", map(binary_to_json, data.thumbs(sets, gold))))
    if not simulated:
        ctx.save_text("labeling_guide", GUIDE_NAME, GUIDE + WHERE)
    if held is not None:
        rows = ({"prompt": p, "completions": c} for p, c in zip(heldout, held.texts))
        ctx.save("heldout", write_jsonl(ctx.run_dir / "heldout.jsonl", rows))

    texts = [t for ts in out.texts for t in ts]
    metrics = {"collect/data/sets": len(sets), "collect/data/completions": len(texts),
               "collect/response/len_mean": mean(n for ns in out.lengths for n in ns),
               "collect/response/eos_rate": mean(e for es in out.has_eos for e in es),
               "collect/perf/generate_s": seconds,
               "collect/perf/sequences_per_s": (len(texts) + (len(heldout) * data.n_completions)) / seconds}
    if gold is not None:
        for k in ("overall", "helpfulness", "toxicity", "coherence"):
            if hasattr(gold[0][0], k):
                metrics[f"collect/gold/{k}"] = mean(getattr(g, k) for gs in gold for g in gs)
    ctx.run.log_metrics(metrics)
    source = getattr(spec, "name_or_path", "the model group")
    print(f"collect: {len(sets)} sets of {data.n_completions} from {source} in {seconds:.1f} s; "
          f"{'ranked by the simulated labelers' if simulated else 'LABELING.md written for people'}")
