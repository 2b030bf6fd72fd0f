"""Every option of every group composes and passes the checks; typos and bad values are refused."""
import re

import pytest
from omegaconf import OmegaConf

from rlhf_exp.config import ConfigError
from rlhf_exp.stages.checks import validate_config
from rlhf_exp.stages.tracked import flatten
from tests.conftest import CONF, compose

GROUPS = ["algorithm", "model", "reward", "data", "trainer", "logger", "paths", "experiment", "sft", "collect",
          "prepare", "reward_model", "eval", "series"]
REQUIRED = {("model", "hf"): ["model.name_or_path=/tmp/m"],
            ("reward", "classifier"): ["reward.name_or_path=/tmp/c", "reward.positive_label=nothate"],
            ("trainer", "fsdp"): ["algorithm=dpo", "trainer.accelerator=gpu"],  # FSDP: SFT, RM, DPO; on GPUs
            ("trainer", "fsdp2"): ["stage=align"]}  # FSDP2: PPO, GRPO, RLOO


def options():
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            yield group, path.stem


def test_every_group_of_the_design_exists():
    assert all((CONF / g).is_dir() and list((CONF / g).glob("*.yaml")) for g in GROUPS + ["hydra"])


@pytest.mark.parametrize("group,option", list(options()))
def test_every_option_composes_and_validates(group, option):
    cfg = compose(f"{group}={option}", *REQUIRED.get((group, option), []))
    built = validate_config(cfg)
    stage = [o.partition("=")[2] for o in REQUIRED.get((group, option), []) if o.startswith("stage=")]
    assert built.run.stage == (stage[0] if stage else "pipeline")
    for name in ("data", "model", "reward", "logger", "algorithm", "sft", "collect", "prepare",
                 "reward_model", "eval"):
        assert not OmegaConf.is_config(getattr(built, name)), name  # a settings object, built and checked


def test_the_built_config_is_a_typed_object_with_a_field_per_node():
    """validate_config returns checks.Built: one typed field per node of conf/config.yaml, no dict."""
    import dataclasses
    from rlhf_exp.stages.checks import Built
    built = validate_config(compose())
    nodes = {k for k in compose() if OmegaConf.is_dict(compose()[k]) and k != "paths"}
    assert isinstance(built, Built) and {f.name for f in dataclasses.fields(Built)} == nodes | {"run"}
    assert type(built.algorithm).__name__ == "PPOSettings" and built.run.seed == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.seed = 1


def test_defaults():
    cfg = compose()
    assert cfg.stage == "pipeline" and cfg.experiment_name == "rlhf"
    assert cfg.logger.tracking_uri == "sqlite:///outputs/mlflow.db"
    assert cfg.algorithm._target_ == "rlhf_exp.modules.ppo.PPOSettings"
    assert "${" not in OmegaConf.to_yaml(cfg, resolve=True)


def test_every_problem_is_listed_with_its_file():
    cfg = compose("data.n_labelers=-2", "data.tie_rate=1.5", "prepare.pairs_from=votes", "stage=sfx")
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, {"data": "synthetic"})
    msg = str(err.value)
    assert "stage = 'sfx': expected one of 'pipeline', 'sft', 'collect', 'prepare', 'reward_model'" in msg
    assert "in 'data' (conf/data/synthetic.yaml):" in msg
    assert "data.n_labelers = -2: expected a value >= 1" in msg
    assert "data.tie_rate = 1.5: expected a value >= 0 and <= 1" in msg
    assert "prepare.pairs_from = 'votes': expected one of 'consensus', 'labeler'" in msg


def test_unknown_keys_are_refused_with_a_suggestion():
    cfg = compose("+data.n_labeler=3", "+trainer.max_epoch=2", "+colour=blue")
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert "data: unknown key 'n_labeler' (did you mean 'n_labelers'?)" in msg
    assert "trainer: unknown key 'max_epoch' (did you mean 'max_epochs'?)" in msg
    assert "unknown key 'colour'" in msg


def test_wrong_types_and_missing_values_are_refused():
    with pytest.raises(ConfigError, match="data.n_labelers = 'many': expected an integer"):
        validate_config(compose("data.n_labelers=many"))
    with pytest.raises(ConfigError, match=r"model.name_or_path: no value given .* model.name_or_path=\.\.\."):
        validate_config(compose("model=hf"))
    with pytest.raises(ConfigError, match="model.n_embd = 30: expected a multiple of n_head"):
        validate_config(compose("model.n_embd=30"))


def test_flatten_gives_dotted_scalar_params():
    assert flatten({"a": {"b": 1, "_target_": "x", "c": [1, 2]}, "d": None}) == {
        "a.b": 1, "a.c.0": 1, "a.c.1": 2, "d": None}


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF)))
def test_every_setting_has_a_comment_giving_its_meaning(path):
    """House rule: a comment beside each config key, at any depth, gives its symbol and meaning
    (Hydra's own `defaults:` list and `_target_` excepted)."""
    bare = [line for line in path.read_text().splitlines()
            if re.match(r"\s*[A-Za-z]\w*\s*:", line) and "#" not in line
            and not re.match(r"\s*(defaults|_target_)\s*:", line)]
    assert bare == []


def test_bad_ppo_settings_are_refused_when_the_config_is_composed():
    cfg = compose("algorithm.clip_eps=0", "algorithm.kl_estimator=k2", "algorithm.target_kl=-1",
                  "algorithm.batch_size=1.5")
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, {"algorithm": "ppo"})
    msg = str(err.value)
    assert "(conf/algorithm/ppo.yaml)" in msg and "algorithm.clip_eps = 0.0: expected a value > 0" in msg
    assert "algorithm.kl_estimator = 'k2': expected one of 'k1', 'k3'" in msg
    assert "algorithm.target_kl = -1: expected a value > 0" in msg  # a bound inside an optional type
    assert "algorithm.batch_size = 1.5: expected an integer" in msg
    with pytest.raises(ConfigError, match="algorithm.minibatches = 64: expected at most batch_size"):
        validate_config(compose("algorithm.minibatches=64"))  # a check across fields, once each field is valid


def test_the_walk_of_clip_eps_in_architecture_md_points_at_the_lines_it_names():
    """ARCHITECTURE.md follows algorithm.clip_eps by file:line; each line named still holds it."""
    doc = (CONF.parent / "ARCHITECTURE.md").read_text()
    refs = re.findall(r"\[`([\w/.]+):(\d+)`\]", doc)
    assert len(refs) == 5 and len({path for path, _ in refs}) == 4  # 5 hops through 4 files
    for path, line in refs:
        text = (CONF.parent / path).read_text().splitlines()[int(line) - 1]
        assert "clip_eps" in text or "instantiate(" in text, (path, line, text)


def test_a_pipeline_reads_its_own_reward_model_with_the_source_made_for_it():
    with pytest.raises(ConfigError, match="expected reward_model.objective=classifier"):
        validate_config(compose("reward=classifier"))
    with pytest.raises(ConfigError, match="expected reward=classifier"):
        validate_config(compose("reward_model.objective=classifier"))
    validate_config(compose("reward=classifier", "reward_model.objective=classifier"))
    validate_config(compose("reward=classifier", "stage=align"))  # one stage: the classifier is given by path


def test_a_list_of_stages_runs_those_stages_in_pipeline_order():
    from rlhf_exp.stages.runner import planned
    built = validate_config(compose("stage=[prepare,reward_model]"))
    assert planned(built.run.stage) == ["prepare", "reward_model"] and planned("pipeline")[0] == "sft"
    for bad in ("stage=[reward_model,prepare]", "stage=[prepare,prepare]", "stage=[]", "stage=[prepare,label]"):
        with pytest.raises(ConfigError, match="expected stages of the pipeline in its order, each once"):
            validate_config(compose(bad))


def test_fsdp_is_refused_for_the_on_policy_algorithms_and_on_cpu():
    """Refused when the config is composed (before any work; exit 2 from the CLI like every ConfigError)."""
    for algorithm in ("grpo", "online_dpo"):  # every algorithm whose record says it generates while it trains
        with pytest.raises(ConfigError, match=f"algorithm={algorithm}: an algorithm that generates while it trains "
                                              "cannot under Lightning's FSDP"):
            validate_config(compose("trainer=fsdp", f"algorithm={algorithm}"))
    with pytest.raises(ConfigError, match="Lightning's FSDP runs on GPUs only"):  # this machine has no GPU
        validate_config(compose("trainer=fsdp", "trainer.accelerator=cpu", "stage=sft"))
    with pytest.raises(ConfigError, match="algorithm.batch_size = 8 over 3 processes"):
        validate_config(compose("trainer=ddp", "trainer.devices=3", "experiment=smoke"))
