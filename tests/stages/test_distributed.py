"""torchrun DDP for the four training stages, and the runtime switches.

The DDP test starts real 2-process gloo runs (`torchrun --standalone`) on the tiny phantom:
both ranks must end with bit-identical weights (their digests land in metrics.json), the
rank-0 checkpoint must hold those weights, and a run stopped at step 4 must resume there
and end exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import settings_of, workdir_with_slices

from brainspade.engine import distributed
from brainspade.engine.checkpoint import CHECKPOINT_NAME
from brainspade.engine.runtime import Runtime
from brainspade.errors import BrainspadeError

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # = the torchrun command, without relying on PATH
TINY = "profile=tiny"
STAGES = {  # command -> (stage folder, models whose weights DDP keeps in sync)
    "train-label-vae": ("label_vae", ("vae", "discriminator")),
    "train-label-ldm": ("label_ldm", ("unet",)),
    "train-modisc": ("modisc", ("classifier",)),
    "train-image-generator": ("image_generator", ("style_encoder", "generator", "discriminator")),
}
STEPS = {"train-label-vae": "label_vae", "train-label-ldm": "label_ldm", "train-modisc": "modisc",
         "train-image-generator": "image_generator"}
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # per-rank statistics, not weights


def torchrun(*commands: str) -> str:
    """Run brainspade commands under `torchrun --nproc_per_node 2` (gloo, CPU); their combined output."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [*TORCHRUN, "--nproc_per_node", "2", "--standalone", str(REPO / "tests" / "torchrun_stages.py"), *commands],
        capture_output=True, text=True, env=env, timeout=400, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def command(name: str, workdir: Path, steps: int) -> str:
    section = STEPS[name]
    # The VAE's discriminator joins at step 2 (tiny: 20), so its second DDP module and the GAN path are covered;
    # the GAN stages run under bf16 autocast (the LDM stays fp32: its exact-resume check compares with fp32).
    extra = {"train-label-vae": " label_vae.adversarial_start=2 runtime.precision=bf16",
             "train-image-generator": " runtime.precision=bf16"}.get(name, "")
    return f"{name} workdir={workdir} {TINY} {section}.steps={steps} {section}.checkpoint_every=2{extra}"


def checkpoint_digest(folder: Path, models: tuple[str, ...]) -> tuple[int, str]:
    """(step, parameter digest) of a stage folder's rank-0 checkpoint, computed as the ranks compute theirs."""
    state = torch.load(folder / CHECKPOINT_NAME, weights_only=True)
    tensors = {f"{name}.{key}": value for name in models for key, value in state["models"][name].items()
               if not key.endswith(BN_BUFFERS)}
    return state["step"], distributed.parameter_digest(tensors)


def rank_digests(folder: Path) -> list[str]:
    runtime = json.loads((folder / "metrics.json").read_text())["runtime"]
    assert runtime["processes"] == 2 and runtime["device"] == "cpu"
    return runtime["weight_digests"]


@pytest.fixture(scope="module")
def tiny_workdir(tiny_slices, tmp_path_factory) -> Path:
    return workdir_with_slices(tiny_slices, tmp_path_factory.mktemp("ddp"))


@pytest.mark.slow
def test_every_training_stage_trains_and_resumes_under_torchrun_with_identical_rank_weights(tiny_workdir, tmp_path):
    # Speed lives in scripts/bench_train.py; this takes ~1 minute on 2 busy cores.
    torchrun(*(command(name, tiny_workdir, 4) for name in STAGES))
    first = {}
    for name, (stage, models) in STAGES.items():
        digests = rank_digests(tiny_workdir / stage)
        assert len(digests) == 2 and digests[0] == digests[1], f"{name}: ranks differ"
        assert checkpoint_digest(tiny_workdir / stage, models) == (4, digests[0]), f"{name}: checkpoint != ranks"
        first[name] = digests[0]
    # The reference for exact resume: the LDM trained 6 steps without interruption on the same VAE.
    reference = tmp_path / "uninterrupted"
    for folder in ("slices", "label_vae"):
        shutil.copytree(tiny_workdir / folder, reference / folder)

    # Interrupted runs: no manifest, a checkpoint at step 4, more steps asked. The VAE goes last, in a
    # second launch (the LDM needs a finished VAE), beside the uninterrupted 6-step LDM.
    for stage in ("label_ldm", "modisc", "image_generator"):
        (tiny_workdir / stage / "manifest.json").unlink()
    out = torchrun(*(command(name, tiny_workdir, 6) for name in ("train-label-ldm", "train-modisc",
                                                                 "train-image-generator")))
    (tiny_workdir / "label_vae" / "manifest.json").unlink()
    out += torchrun(command("train-label-vae", tiny_workdir, 6), command("train-label-ldm", reference, 6))
    for name, (stage, models) in STAGES.items():
        assert f"[{name}] resuming at step 4" in out
        digests = rank_digests(tiny_workdir / stage)
        assert digests[0] == digests[1] and digests[0] != first[name], f"{name}: ranks differ or nothing trained"
        assert checkpoint_digest(tiny_workdir / stage, models) == (6, digests[0])
    assert rank_digests(reference / "label_ldm") == rank_digests(tiny_workdir / "label_ldm"), "resume is not exact"


# ---------------------------------------------------------------- units (one process)


def test_a_global_batch_is_split_over_ranks_and_too_small_a_batch_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    shares = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        shares.append(distributed.local_batch_size(8, "label_vae.batch_size"))
    assert shares == [3, 3, 2]
    with pytest.raises(BrainspadeError, match="label_vae.batch_size=2 is smaller than the 3 torchrun processes"):
        distributed.local_batch_size(2, "label_vae.batch_size")


def test_each_rank_draws_its_own_batches_reproducibly_at_every_step(monkeypatch):
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)

    def draws(rank: int, step: int) -> torch.Tensor:
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        distributed.seed_step(0, step)
        return torch.randint(0, 10_000, (8,))

    assert torch.equal(draws(1, 5), draws(1, 5))  # a resumed run redraws what the uninterrupted one drew
    assert not torch.equal(draws(0, 5), draws(1, 5))  # ranks see different samples
    assert not torch.equal(draws(0, 5), draws(0, 6))


def test_single_process_runs_unchanged_without_torchrun_environment():
    assert os.environ.get("WORLD_SIZE") is None
    assert not distributed.is_distributed() and distributed.is_main() and distributed.world_size() == 1
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model
    assert distributed.mean_over_ranks({"loss": 2.0}) == {"loss": 2.0}
    assert len(distributed.weight_digests({"m": model})) == 1


def runtime_config(**runtime) -> Runtime:
    return Runtime.create(settings_of("runtime", **runtime), "cpu")


def test_runtime_auto_is_fp32_on_cpu_and_bf16_is_switchable():
    plain = runtime_config()
    assert (plain.bf16, plain.channels_last, plain.compile) == (False, False, False)
    mixed = runtime_config(precision="bf16", channels_last=True)
    assert mixed.bf16 and mixed.channels_last
    batch = mixed.inputs(torch.zeros(2, 3, 8, 8))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    with mixed.autocast():
        assert torch.nn.Linear(4, 4)(torch.zeros(1, 4)).dtype == torch.bfloat16
    with pytest.raises(BrainspadeError, match="precision='fp16': use one of auto, fp32, bf16"):
        runtime_config(precision="fp16")


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bf16_warns(native, monkeypatch, capsys):
    monkeypatch.setattr("brainspade.engine.runtime.cpu_has_native_bf16", lambda: native)
    assert runtime_config(precision="bf16").bf16  # the user's choice stands, with a warning where it is slow
    warned = "runtime.precision=bf16 on a CPU without native bf16" in capsys.readouterr().err
    assert warned == (not native)
    runtime_config()  # auto never warns: it is fp32 on the CPU
    assert capsys.readouterr().err == ""


def test_runtime_auto_on_a_bf16_gpu_is_bf16_except_where_a_stage_opts_out(monkeypatch):
    # No GPU here: stand in a CUDA device (Runtime.create only resolves settings; nothing runs on it).
    monkeypatch.setattr("brainspade.engine.runtime.select_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    auto = settings_of("runtime", precision="auto")
    assert Runtime.create(auto, "cuda").bf16
    assert not Runtime.create(auto, "cuda", auto_bf16=False).bf16  # the image generator's choice
    assert Runtime.create(settings_of("runtime", precision="bf16"), "cuda", auto_bf16=False).bf16  # asked for: honoured


# ---------------------------------------------------------------- rectified flow
