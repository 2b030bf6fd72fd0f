import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


@contextmanager
def once_per_session(tmp_path_factory, name: str):
    """A directory shared by every worker of this test session (`make test` runs `pytest -n 2`) and held
    under a file lock: the first worker to get it makes what it holds, the others find it made."""
    from filelock import FileLock
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's directory above each worker's own
    where = shared / f"shared_{name}"
    with FileLock(str(where) + ".lock"):
        where.mkdir(exist_ok=True)
        yield where


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One tokenizer cache for the whole session (training it once costs a second or two)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cli(tmp_path, cache_dir):
    """Run `python -m rlhf_exp ARGS` in a fresh working directory (outside the checkout); returns
    CompletedProcess. `python=`: another interpreter, e.g. the core install's (`core_python`)."""
    def run(*args, check=True, timeout=300, python=sys.executable):
        env = {**os.environ, "RLHF_EXP_CACHE": str(cache_dir), "HYDRA_FULL_ERROR": "1"}
        flags = [a for a in args if a.startswith("-")]  # argparse wants flags before overrides
        overrides = [a for a in args if not a.startswith("-")]
        proc = subprocess.run([str(python), "-m", "rlhf_exp", *flags, "hydra.run.dir=outputs/run", *overrides],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc
    return run


@pytest.fixture(scope="session")
def core_python(tmp_path_factory):
    """The interpreter of a core install as a user makes one: `make core` (which `make test` runs)
    installs the wheel with no extras into .venv-core; here this checkout's wheel is built and put
    in its place, so the tests run the code under test, not the code of the last `make core`."""
    python = ROOT / ".venv-core" / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"no core install at {python.parent.parent}: run `make core` (`make test` does)")
    def check(*cmd):
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stderr[-3000:]}"
    with once_per_session(tmp_path_factory, "core_install") as shared:  # pytest -n 2: one worker installs
        if not (shared / "done").exists():
            wheels = shared / "wheel"
            check(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, ROOT)
            check(python, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", *wheels.glob("rlhf_exp-*.whl"))
            (shared / "done").touch()
    return python


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, cache_dir):
    """One smoke-sized pipeline run (no tracking), made once per session for the tests that start
    from its sft/, pairs and reward model; nothing may write into it."""
    with once_per_session(tmp_path_factory, "smoke") as where:  # pytest -n 2: made by one worker, read by both
        if not (where / "run" / "done").exists():
            env = {**os.environ, "RLHF_EXP_CACHE": str(cache_dir)}
            proc = subprocess.run([sys.executable, "-m", "rlhf_exp", "experiment=smoke", "logger=none", "hydra.run.dir=run"],
                                  cwd=where, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
            (where / "run" / "done").touch()
    return where / "run"


@pytest.fixture
def base(tmp_path, smoke_run):
    """The session's smoke run, seen as outputs/base in this test's working directory."""
    (tmp_path / "outputs").mkdir(exist_ok=True)
    (tmp_path / "outputs" / "base").symlink_to(smoke_run, target_is_directory=True)
    return tmp_path / "outputs" / "base"


def compose(*overrides):
    """Compose conf/config.yaml with overrides (no Hydra runtime, so output_dir is set by hand)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=["paths.output_dir=/tmp/rlhf-exp-test", *overrides],
                             return_hydra_config=False)


TINY = dict(n_layer=1, n_head=2, n_embd=32, n_positions=128, vocab_size=512, dropout=0.1)


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory):
    """The tiny GPT-2 of the unit tests: conf/model/tiny.yaml at smaller sizes, its tokenizer trained
    once; `tiny_spec(dropout=0.0)` for a variant with the same tokenizer, `tiny_spec(llama=True)` for
    the tiny Llama with a chat template."""
    tokenizer_dir = str(tmp_path_factory.mktemp("tok"))

    def spec(llama: bool = False, **overrides):
        target = {"_target_": "rlhf_exp.models.factory.TinyLlama"} if llama else {}
        return settings("model", "tiny", **{**TINY, "tokenizer_dir": tokenizer_dir, **target, **overrides})
    return spec


@pytest.fixture(scope="session")
def tiny(tiny_spec):
    """(spec, tokenizer) of the tiny model with dropout 0.1."""
    spec = tiny_spec()
    return spec, spec.tokenizer()


def settings(group: str, option: str = "default", **overrides):
    """A group's settings as the YAML gives them, with overrides, checked as in a run."""
    from rlhf_exp.config import option as build_option
    return build_option(group, option, **overrides)


@pytest.fixture
def browser():
    """Debian's chromium, headless, driven by selenium through Debian's chromedriver (the Makefile
    installs both); never a browser downloaded at run time."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()
