"""The docs site (mkdocs.yml, docs/): it builds with `mkdocs build --strict` (no broken link, missing
page or anchor); its reference pages hold every key of conf/ and the metric names the code logs; the
names and source paths its pages mention exist; and a page renders in headless chromium."""
from __future__ import annotations

import ast
import fnmatch
import functools
import http.server
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tests.conftest import CONF, ROOT

pytestmark = pytest.mark.xdist_group("docs")  # pytest -n 2: one worker builds the site once for the module


def load_generator():
    """scripts/docs_reference.py, the module MkDocs calls to generate the reference pages."""
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "scripts" / "docs_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_reference"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gen = load_generator()
PAGES = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
         if "blind-2026-12-07" not in p.parts]  # a blinded read's data, not a page anyone maintains


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built as `make docs` builds it, into a directory of this test session (about 10 s: the
    tests that use it are marked e2e, so `make test-fast` leaves them out)."""
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.mark.e2e
def test_the_site_builds_strictly_and_needs_no_network_to_view(site):
    for page in ("index.html", "getting-started/index.html", "reference/config/index.html",
                 "reference/metrics/index.html", "contributing/architecture/index.html", "algorithms/ppo/index.html"):
        assert (site / page).is_file(), page
    assert (site / "sweeps" / "frontier.png").is_file()  # a picture taken from outside docs/ by the hooks
    for html in site.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        assert "fonts.googleapis.com" not in text and "fonts.gstatic.com" not in text, html  # theme.font: false


@pytest.mark.e2e
def test_no_list_is_swallowed_by_a_paragraph(site):
    """Python-Markdown ends a list at a paragraph that is not indented under it: what follows is text."""
    broken = [f"{html.relative_to(site)}: {p.strip()[:80]}" for html in site.rglob("*.html")
              for p in re.findall(r"<p>(.*?)</p>", html.read_text(encoding="utf-8"), flags=re.S)
              if re.search(r"\n(-|\d+\.) ", p)]  # a line of the paragraph that should have been a list item
    assert broken == []


def test_every_algorithm_has_a_page_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for path in sorted((CONF / "algorithm").glob("*.yaml")):
        assert (ROOT / "docs" / "algorithms" / f"{path.stem}.md").is_file(), f"no docs/algorithms/{path.stem}.md"
        assert f"algorithms/{path.stem}.md" in nav, f"algorithms/{path.stem}.md is not in mkdocs.yml's nav"


# --- the configuration reference ----------------------------------------------------------------------

def yaml_keys(node, prefix: str = "") -> list[str]:
    """Every key of a loaded YAML file, dotted, at any depth (Hydra's `defaults` and `_target_` aside)."""
    keys = []
    for key, value in (node or {}).items():
        if key in ("defaults", "_target_"):
            continue
        dotted = f"{prefix}.{key}" if prefix else str(key)
        keys.append(dotted)
        if isinstance(value, dict):
            keys += yaml_keys(value, dotted)
    return keys


def package_of(path: Path, conf: Path) -> str:
    """The prefix a file's keys are overridden with: its group's path, or its `# @package` line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# @package"):
            package = line.split()[-1]
            return "" if package == "_global_" else package
    group = path.relative_to(conf).parent
    return "" if str(group) == "." else str(group).replace("/", ".")


def sections(markdown: str) -> dict[str, str]:
    """The reference page cut at its headings' anchors: `{#algorithm-ppo}` -> that option's section."""
    parts = re.split(r"\{#([\w-]+)\}", markdown)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def anchor_of(path: Path, conf: Path) -> str:
    group = path.relative_to(conf).parent
    return "root" if str(group) == "." else f"{str(group).replace('/', '-')}-{path.stem}"


def missing_keys(conf: Path, markdown: str) -> list[str]:
    """`file: key` for every key of conf/ that the reference's section for its file does not list."""
    by_anchor, missing = sections(markdown), []
    for path in sorted(conf.rglob("*.yaml")):
        section = by_anchor.get(anchor_of(path, conf), "")
        prefix = package_of(path, conf)
        for key in yaml_keys(yaml.safe_load(path.read_text(encoding="utf-8"))):
            full = f"{prefix}.{key}" if prefix else key
            if f"| `{full}` |" not in section:
                missing.append(f"{path.relative_to(conf)}: {full}")
    return missing


@pytest.mark.e2e
def test_every_config_key_is_in_the_reference_with_its_meaning(site):
    markdown = gen.config_markdown()
    assert missing_keys(CONF, markdown) == []
    for option in gen.options():
        assert option.file in markdown
        for row in option.rows:
            assert row.path is None or row.meaning or row.path.endswith("._target_"), (option.file, row.path)
    html = (site / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    for key in ("algorithm.clip_eps", "data.n_labelers", "trainer.strategy.data_parallel_size",
                "hydra.launcher.partition", "series.reward_model", "paths.cache_dir", "nonfinite"):
        assert f"<code>{key}</code>" in html, key
    assert "ε: policy ratio clipped to [1 − ε, 1 + ε]" in html  # the comment beside the key, as its meaning


def test_a_key_added_to_conf_fails_until_the_reference_has_it(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    with open(conf / "algorithm" / "ppo.yaml", "a", encoding="utf-8") as f:
        f.write("new_knob: 3  # a knob added after the reference was made\n")
    stale = gen.config_markdown()                   # made from the repository's conf/
    assert missing_keys(conf, stale) == ["algorithm/ppo.yaml: algorithm.new_knob"]
    fresh = gen.config_markdown(conf)               # what the next build makes
    assert missing_keys(conf, fresh) == []
    assert "| `algorithm.new_knob` | `3` | a knob added after the reference was made |" in fresh


def test_the_reference_parser_keeps_nested_keys_continued_comments_and_packages(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "config.yaml").write_text("defaults:\n  - g: a  # the g group\n  - _self_\nseed: 0  # one seed\n")
    (tmp_path / "g" / "a.yaml").write_text(
        "# An option of g.\n_target_: x.Y\n# a section\nk: 1  # a key whose comment\n"
        "        # goes on here\nnode:  # a node\n  inner: '#not a comment'  # the inner key\nurl: ${a:b#c}  # kept\n")
    (tmp_path / "g" / "b.yaml").write_text("# @package _global_\n# A bundle.\ng:  # the group\n  k: 2  # set\n")
    a = gen.parse_option(tmp_path / "g" / "a.yaml", tmp_path)
    assert (a.about, a.builds, a.package) == ("An option of g.", "x.Y", "g")
    assert [(r.path, r.default, r.meaning) for r in a.rows] == [
        (None, "", "a section"), ("g.k", "1", "a key whose comment goes on here"), ("g.node", "", "a node"),
        ("g.node.inner", "'#not a comment'", "the inner key"), ("g.url", "${a:b#c}", "kept")]
    b = gen.parse_option(tmp_path / "g" / "b.yaml", tmp_path)
    assert b.package == "" and b.keys() == ["g", "g.k"]
    assert missing_keys(tmp_path, gen.config_markdown(tmp_path)) == []


# --- the metrics reference -----------------------------------------------------------------------------

@functools.cache
def logged() -> dict[str, set[str]]:
    return gen.metric_names()


@pytest.mark.e2e
def test_known_metrics_are_found_in_the_code(site):
    names = logged()
    for name in ("ppo/policy/clipfrac", "eval/judge/policy", "eval/gold/policy", "eval/gold/policy_se",
                 "grpo/policy/clipfrac", "rloo/reward/score_mean", "dpo/rewards/margin", "kto/train/kl",
                 "online_dpo/pairs/kept", "reward/gold/accuracy", "prepare/labelers/set_aside", "sft/val/loss",
                 "eval/kl/bon_ref", "eval/win_rate"):
        assert name in names, name
    for family in ("<algorithm>/heldout/win_rate", "<stage>/perf/seconds", "prepare/dropped/<k>"):
        assert family in names, family  # a part decided at run time is shown as <part>
    assert gen.is_logged("ppo/heldout/win_rate", names) and gen.is_logged("reward/val/accuracy_group_G1", names)
    assert not any(n in names for n in ("dpo/train", "eval/judge", "dpo/val/rewards"))  # prefixes, not metrics
    html = (site / "reference" / "metrics" / "index.html").read_text(encoding="utf-8")
    assert "<code>ppo/policy/clipfrac</code>" in html and "<code>eval/judge/policy</code>" in html
    assert "share of tokens whose ratio was clipped" in html


def test_the_metric_scan_follows_names_built_from_parts(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text('''
def step(stage, metrics, s):
    prefix = "dpo/train" if stage == "train" else "dpo/val"
    metrics[f"{prefix}/loss"] = 1
    for k in ("chosen", "rejected"):
        metrics[f"dpo/rewards/{k}"] = 2
    texts = {"ref": 1, "policy": 2}
    texts["bon"] = 3
    for k, by_name in {k: measures() for k, v in texts.items()}.items():
        for name, values in by_name.items():
            metrics[f"eval/{name}/{k}"] = 4
    metrics[f"{s.prefix}/heldout/{s.name}"] = 5
    return metrics[f"{prefix}/heldout/{s.stop_on}"]

def measures():
    return {"judge": [], "toxicity": []}
''')
    package = gen.Package(pkg)
    module = package.modules[0]
    found = {t for node in ast.walk(module.tree) if isinstance(node, ast.JoinedStr)
             for t in package.strings(module, node)}
    assert {"dpo/train/loss", "dpo/val/loss", "dpo/rewards/chosen", "dpo/rewards/rejected"} <= found
    assert {f"eval/{m}/{p}" for m in ("judge", "toxicity") for p in ("ref", "policy", "bon")} <= found
    assert "<prefix>/heldout/<name>" in found


def test_every_meaning_fits_a_metric_the_code_logs():
    names = logged()
    stale = [p for p in gen.meanings() if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    assert stale == [], f"scripts/metric_meanings.yaml: patterns that fit no logged metric: {stale}"


METRIC = re.compile(r"`([a-z][a-z0-9_]*(?:/[A-Za-z0-9_]+)+)`")


def test_every_metric_a_page_names_is_one_the_code_logs():
    names = logged()
    stages = {*gen.NON_ALGORITHM_STAGES, *gen.algorithms(), "align", "reward_model"}
    unknown = [f"{page.relative_to(ROOT)}: {name}" for page in PAGES
               for name in METRIC.findall(page.read_text(encoding="utf-8"))
               if name.split("/")[0] in stages and name.count("/") >= 1 and not gen.is_logged(name, names)]
    assert unknown == []


def test_the_readme_links_to_files_and_generated_pages_that_exist():
    generated = {"docs/reference/config.md", "docs/reference/metrics.md", "docs/contributing/architecture.md"}
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in link]
    assert links and [link for link in links if not (ROOT / link).exists() and link not in generated] == []
    assert len(text.splitlines()) <= 250  # the front door; the rest is the site


# --- the names and paths the pages mention --------------------------------------------------------------

PATH = re.compile(r"(?<![\w/.-])((?:rlhf_exp|tests|scripts|sweeps|conf)/[\w./-]*\w)([*<…{]?)")  # then a placeholder?
INSTALLED_ONLY = {"rlhf_exp/conf"}  # where the wheel puts conf/
MODULE = re.compile(r"python -m (rlhf_exp(?:\.\w+)*)(?!\.<)\b")


def test_source_files_and_modules_the_pages_name_exist():
    missing = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for path, placeholder in PATH.findall(text):
            if placeholder or path in INSTALLED_ONLY:
                continue  # `tests/test_core_*.py`, `conf/algorithm/<name>.yaml`: a pattern, not a file
            if not (ROOT / path).exists() and not (ROOT / path).with_suffix("").exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
        for module in MODULE.findall(text):
            where = ROOT / module.replace(".", "/")
            if not (where.with_suffix(".py").is_file() or (where / "__main__.py").is_file()):
                missing.append(f"{page.relative_to(ROOT)}: python -m {module}")
    assert missing == []


# --- the site in a browser -------------------------------------------------------------------------------

@pytest.fixture
def served(site):
    """The built site over http on 127.0.0.1 (a free port), as a reader's browser would load it."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.e2e
def test_a_page_renders_in_the_browser(served, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{served}/reference/metrics/")
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.TAG_NAME, "h1"))
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Metrics reference")
    codes = {c.text for c in browser.find_elements(By.CSS_SELECTOR, "article code")}
    assert {"ppo/policy/clipfrac", "eval/judge/policy"} <= codes
    assert browser.find_elements(By.CSS_SELECTOR, "nav.md-nav a")  # the Material theme's navigation is there
    shot = tmp_path / "metrics.png"
    assert browser.save_screenshot(str(shot))
    if os.environ.get("DOCS_SCREENSHOT"):
        shutil.copy(shot, os.environ["DOCS_SCREENSHOT"])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        assert image.size[0] >= 1000 and image.size[1] >= 600
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, tables and the theme, not a blank page
