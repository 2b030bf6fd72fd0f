"""What decides whether a run repeats bit for bit, as tags on every run (`repeat.*`): the versions of
torch and transformers, the CUDA build, the device, the CPU threads and torch's
deterministic-algorithms mode. Two runs with the same config, seed and tags give the same metrics
(tests/test_repeatability.py); runs that differ in a tag may not, and `rlhf-exp-compare` says so
when it sets them side by side."""
from __future__ import annotations

PREFIX = "repeat."


def repeatability_tags(accelerator: str = "auto") -> dict[str, str]:
    """This process's `repeat.*` tags; the device as the trainer's accelerator resolves it."""
    import torch
    import transformers
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return {f"{PREFIX}torch": torch.__version__,
            f"{PREFIX}transformers": transformers.__version__,
            f"{PREFIX}cuda": torch.version.cuda or "none",
            f"{PREFIX}device": torch.cuda.get_device_name(0) if gpu and torch.cuda.is_available() else "cpu",
            f"{PREFIX}threads": str(torch.get_num_threads()),
            f"{PREFIX}deterministic": str(torch.are_deterministic_algorithms_enabled()).lower()}


def differences(tags: dict[str, dict[str, str]]) -> dict[str, dict[str, list[str]]]:
    """For runs' tags ({run: tags}), each `repeat.*` tag whose value is not the same in every run:
    {tag: {value: [runs]}} (a run without the tag, logged by an older version, counts as '?')."""
    keys = sorted({k for t in tags.values() for k in t if k.startswith(PREFIX)})
    out = {}
    for key in keys:
        by_value: dict[str, list[str]] = {}
        for run, t in tags.items():
            by_value.setdefault(t.get(key, "?"), []).append(run)
        if len(by_value) > 1:
            out[key] = by_value
    return out


def warning(tags: dict[str, dict[str, str]]) -> str | None:
    """One paragraph naming what differs between the runs, or None when nothing does."""
    diff = differences(tags)
    if not diff:
        return None
    parts = ["; ".join(f"{value} ({', '.join(runs)})" for value, runs in by_value.items())
             for by_value in diff.values()]
    return ("warning: these runs differ in what decides whether a run repeats, so a difference between them "
            "may come from the machine rather than the settings: "
            + " | ".join(f"{key[len(PREFIX):]}: {part}" for key, part in zip(diff, parts)))
