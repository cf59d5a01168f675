"""`brainspade demo`: the whole method on the embedded phantom; a re-run skips finished stages.

make-phantom -> prepare-data -> the four generator trainings -> the three experiments (each
experiment makes the synthetic data sets its arms need with `brainspade sample`) -> evaluate-generators
(realism, diversity, consistency and memorisation of those sample sets).
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from omegaconf import DictConfig, open_dict

from brainspade.commands import COMMANDS
from brainspade.engine.logging import heartbeat
from brainspade.stages.config import workdir

PIPELINE = ("prepare-data", "train-label-vae", "train-label-ldm", "train-modisc", "train-image-generator")


def run(cfg: DictConfig) -> Path:
    started = time.monotonic()
    timings: list[tuple[str, float]] = []

    def timed(label: str, module: str, stage_cfg: DictConfig) -> Path:
        begin = time.monotonic()
        print(f"[demo] {label} ...", flush=True)
        with heartbeat(label):
            output = importlib.import_module(module).run(stage_cfg)
        timings.append((label, time.monotonic() - begin))
        print(f"[demo] {label} done in {timings[-1][1]:.0f} s -> {output}", flush=True)
        return output

    print("\n".join(plan(cfg)), flush=True)
    for command in PIPELINE:
        timed(command, COMMANDS[command].module, cfg)
    reports = []
    for experiment in cfg.demo_experiments:
        with open_dict(cfg):
            cfg.experiment = experiment
        reports.append(timed(f"run-experiment {experiment}", COMMANDS["run-experiment"].module, cfg))
    evaluation = timed("evaluate-generators", COMMANDS["evaluate-generators"].module, cfg)
    print(f"[demo] finished in {(time.monotonic() - started) / 60:.1f} min")
    for label, seconds in timings:
        print(f"[demo]   {label:<28} {seconds:7.0f} s")
    relations = [row for report in reports for row in relation_rows(Path(report) / "report.md")]
    if relations:
        print("\n[demo] the paper's findings, tested here:\n")
        print("\n".join([*RELATIONS_HEADER, *relations]))
    for report in reports:
        print(f"\n[demo] {Path(report) / 'report.md'}:\n")
        print(result_tables(Path(report) / "report.md"))
    print(f"\n[demo] {Path(evaluation) / 'summary.md'} (per set: {Path(evaluation)}/<set>/report.md):\n")
    print((Path(evaluation) / "summary.md").read_text().split("\n", 2)[2])
    return workdir(cfg)


FOLDERS = {"prepare-data": "slices", "train-label-vae": "label_vae", "train-label-ldm": "label_ldm",
           "train-modisc": "modisc", "train-image-generator": "image_generator"}
FAST_KIND = 0.5  # the 2-core kind with AVX-512 trains the same networks 2.0-2.3x faster (benchmarks/RESULTS.md)


def plan(cfg: DictConfig) -> list[str]:
    """The stages ahead, each with the minutes recorded for it at this profile (`demo_minutes`, by command and by
    experiment name: measured on the 2-core kind without AVX-512, halved on the kind with it) or "reused" when its
    folder is finished."""
    recorded = cfg.get("demo_minutes") or {}
    kind, scale = machine_kind()
    stages = [*PIPELINE, *(f"run-experiment {name}" for name in cfg.demo_experiments), "evaluate-generators"]
    lines = [f"[demo] plan (profile {cfg.get('profile_name', '?')}, {kind}):"]
    total = 0.0
    for stage in stages:
        key = stage.removeprefix("run-experiment ")  # an experiment's minutes go by its name
        if _finished(cfg, stage):
            expected = "reused (finished)"
        elif key in recorded and scale is not None:
            minutes = float(recorded[key]) * scale
            total += minutes
            expected = f"~{minutes:.0f} min" if minutes >= 10 else f"~{minutes:.1f} min"
        else:
            expected = "no recorded time"
        lines.append(f"[demo]   {stage:<28} {expected}")
    if total:
        lines.append(f"[demo]   {'expected in all':<28} ~{total:.0f} min (recorded alone on the machine: a shared "
                     "one is slower)")
    return lines


def machine_kind() -> tuple[str, float | None]:
    """This machine in words and the factor on the recorded CPU minutes (None: they do not apply)."""
    import os

    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}: the recorded CPU times do not apply", None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    more = "" if cores == 2 else " (recorded on 2: expect less with more)"
    if "avx512f" in flags:
        return f"{cores} CPU cores with AVX-512{more}", FAST_KIND
    return f"{cores} CPU cores without AVX-512{more}", 1.0


def _finished(cfg: DictConfig, stage: str) -> bool:
    """Whether the stage's folder holds a finished run (its config is checked when the stage runs)."""
    root = workdir(cfg)
    if stage in FOLDERS:
        folder = root / FOLDERS[stage]
    elif stage.startswith("run-experiment "):
        folder = root / "experiments" / stage.split(" ", 1)[1]
    else:
        return (root / "evaluation" / "summary.md").is_file()
    return (folder / "manifest.json").is_file()


RELATIONS_TITLE = "## The paper's findings, tested here"


def _section(lines: list[str], title: str) -> list[str]:
    if title not in lines:
        return []
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


RELATIONS_HEADER = ("| test set | the paper's finding | compared | difference [95% CI] | p (t / Wilcoxon) | n | here |",
                    "|---|---|---|---|---|---|---|")


def relation_rows(report: Path) -> list[str]:
    """The rows of a report's opening table of the paper's findings (one summary table across experiments)."""
    rows = [line for line in _section(report.read_text().splitlines(), RELATIONS_TITLE) if line.startswith("| ")]
    return rows[1:]  # without the header


def result_tables(report: Path) -> str:
    """The evaluation sections of a report (score tables and p-values), without the figure links."""
    lines = report.read_text().splitlines()
    models = lines.index("## Models") if "## Models" in lines else -1  # the findings table comes before it
    first = next((i for i, line in enumerate(lines) if line.startswith("## ") and i > models), len(lines))
    return "\n".join(line for line in lines[first:] if not line.startswith("!["))
