"""scripts/gpu_check.sh --dry-run: the GPU check's code paths at profile=tiny on the CPU.

The GPU check runs only when a task is lent a GPU; this keeps it from rotting in between.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = {"train-label-vae", "train-modisc", "train-label-ldm", "train-image-generator"}


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(
        # A generous budget: the dry run checks code paths, and a slow or busy CPU must not fail it.
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--budget", "900", "--out", str(out),
         "--work", str(tmp_path / "w")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    summary = (out / "results.md").read_text()
    assert results["mode"] == "dry-run" and (out / "logs.txt").is_file()
    assert set(results["stages"]) == STAGES
    for command, entry in results["stages"].items():
        run = entry.get("bf16") or entry.get("bf16_compile")  # the dry run compiles its first run of each stage
        assert run and run["status"] == "ok", (command, run)
        assert run["stage_steps_per_second"] > 0 and run["steady_steps_per_second"] > 0, (command, run)
        assert entry["resume"]["passed"], (command, entry["resume"])
        assert f"| {command} |" in summary
    for row in results["sampling"]:  # run when the time budget reached it (it does on an idle 2-core machine)
        if row["status"] == "ok":
            assert row["pairs_per_second"] > 0 and row["projected_20000_pairs_minutes"] > 0
    parts = {part["name"]: part["status"] for part in results["parts"]}
    reached = [name for name, status in parts.items() if status != "skipped"]
    assert reached == list(parts), f"the budget did not reach {sorted(set(parts) - set(reached))}"
    assert {row["precision"] for row in results["sampling"] if row["status"] == "ok"} == {"fp32", "bf16"}
    fidelity = results["sample_precision"]  # bf16 against the fp32 seed spread, every kind of distance
    assert set(fidelity["within_spread"]) == {"volume", "lesion_rate", "intensity"}
    assert all(error < 2e-3 for error in fidelity["pv_sum_error"].values())
    timed = {row["network"].split(" (")[0]: row for row in results["sample_compile"]["compile"]}
    assert {"LDM UNet, one sampler step", "SPADE generator"} <= set(timed)
    assert all(row["compiled_seconds"] > 0 and row["eager_seconds"] > 0 for row in timed.values())
    for command in ("train-label-vae", "train-label-ldm"):  # the paper's batch through accumulation
        run = results["paper_batch"][command]
        assert run["status"] == "ok" and run["accumulate"] > 1 and run["stage_steps_per_second"] > 0, run
    assert "## bf16 against fp32 sampling" in summary and "## torch.compile of the sampling networks" in summary
