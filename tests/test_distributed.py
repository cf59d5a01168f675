"""torchrun DDP for the four training stages, the runtime switches, and the rectified-flow objective and sampler.

The DDP test starts real 2-process gloo runs (`torchrun --standalone`) on the tiny phantom:
both ranks must end with bit-identical weights (their digests land in metrics.json), the
rank-0 checkpoint must hold those weights, and a run stopped at step 4 must resume there
and end exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import workdir_with_slices
from monai.networks.schedulers import RFlowScheduler

from brainspade.diffusion.objectives import make_scheduler, noisy_latents_and_target, schedule_table
from brainspade.diffusion.samplers import SAMPLERS, rflow_step, sampling_timesteps
from brainspade.engine import distributed
from brainspade.engine.checkpoint import CHECKPOINT_NAME
from brainspade.engine.runtime import Runtime
from brainspade.errors import BrainspadeError
from brainspade.generation.labels import LabelSampler
from brainspade.models.label_diffusion_unet import ConditionedDiffusionUNet
from brainspade.models.label_vae import LabelVAE
from brainspade.settings import LabelSamplingSettings, RuntimeSettings
from brainspade.training.label_ldm import ldm_training_step

REPO = Path(__file__).resolve().parents[1]
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
    return Runtime.create(RuntimeSettings(**runtime), "cpu")


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
    auto = RuntimeSettings()
    assert Runtime.create(auto, "cuda").bf16
    assert not Runtime.create(auto, "cuda", auto_bf16=False).bf16  # the image generator's choice
    assert Runtime.create(RuntimeSettings(precision="bf16"), "cuda", auto_bf16=False).bf16  # asked for: honoured


# ---------------------------------------------------------------- rectified flow

RFLOW = {"objective": "rflow", "num_train_timesteps": 1000}
CHANNELS, SIZE = ["background", "csf", "gm", "wm", "tumour"], (32, 48)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy 2-core machine a second thread mostly waits (see benchmarks/RESULTS.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_models() -> tuple[LabelVAE, ConditionedDiffusionUNet]:
    torch.manual_seed(0)
    vae = LabelVAE(len(CHANNELS), channels=(8, 16, 16), num_res_blocks=1, latent_channels=3, norm_num_groups=4)
    unet = ConditionedDiffusionUNet(3, 1, channels=(16, 32, 32), attention_levels=(False, False, True),
                                    num_res_blocks=1, num_head_channels=8, norm_num_groups=8, condition_dim=16)
    return vae, unet


def test_rflow_noises_on_the_straight_path_and_targets_the_velocity():
    scheduler = make_scheduler(RFLOW)
    assert isinstance(scheduler, RFlowScheduler)
    torch.manual_seed(0)
    latents, noise = torch.randn(6, 3, 4, 6), torch.randn(6, 3, 4, 6)
    noisy, timesteps, target = noisy_latents_and_target(scheduler, latents, noise)
    level = (timesteps.float() / 1000).view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, (1 - level) * latents + level * noise)
    torch.testing.assert_close(target, latents - noise)
    assert timesteps.dtype == torch.long and ((timesteps >= 0) & (timesteps < 1000)).all()


def test_rflow_steps_match_monai_and_the_true_velocity_lands_on_the_clean_sample():
    scheduler = make_scheduler(RFLOW)
    schedule = schedule_table(scheduler)
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 6), torch.randn(2, 3, 4, 6)
    timesteps = sampling_timesteps(1000, 8, "rflow")
    scheduler.set_timesteps(8)
    assert timesteps == scheduler.timesteps.tolist()
    sample = noise.clone()
    for index, timestep in enumerate(timesteps):
        prev = timesteps[index + 1] if index + 1 < len(timesteps) else -1
        velocity = torch.randn_like(sample)
        monai_next, _ = scheduler.step(velocity, timestep, sample, max(prev, 0))
        torch.testing.assert_close(rflow_step(sample, velocity, timestep, prev, schedule, None), monai_next)
        # On the straight path the exact velocity is x0 - noise at every point: Euler is exact.
        sample = rflow_step(sample, x0 - noise, timestep, prev, schedule, None)
    torch.testing.assert_close(sample, x0, atol=1e-5, rtol=0)


def test_samplers_share_one_signature():
    signatures = {name: list(inspect.signature(step).parameters) for name, (step, _) in SAMPLERS.items()}
    assert len({tuple(s) for s in signatures.values()}) == 1, signatures
    assert signatures["rflow"] == ["sample", "model_output", "timestep", "prev_timestep", "schedule", "noise", "eta"]


def test_label_sampler_follows_the_checkpoint_objective_and_refuses_a_mismatched_sampler(one_thread):
    vae, unet = tiny_models()
    sampler = LabelSampler(vae, unet, make_scheduler(RFLOW), 1.0, CHANNELS, ["tumour"], SIZE, torch.device("cpu"))
    conditions = torch.tensor([[0.0, 0.3], [0.05, 0.5], [0.02, 0.6]])
    batch = sampler.sample(conditions, [1, 2, 3], LabelSamplingSettings(steps=4))  # auto -> rflow
    alone = sampler.sample(conditions[1:2], [2], LabelSamplingSettings(steps=4, sampler="rflow"))
    assert batch.shape == (3, len(CHANNELS), *SIZE)
    torch.testing.assert_close(alone[0], batch[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.sum(dim=1), torch.ones(3, *SIZE), atol=1e-3, rtol=0)
    with pytest.raises(BrainspadeError, match="needs an LDM trained with objective ddpm"):
        sampler.sample(conditions, [1, 2, 3], LabelSamplingSettings(steps=4, sampler="ddim"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_rflow_training_steps_reduce_the_loss_on_a_fixed_batch(precision, one_thread):
    _, unet = tiny_models()
    runtime = runtime_config(precision=precision)
    scheduler = make_scheduler(RFLOW)
    optimizer = torch.optim.Adam(unet.parameters(), lr=2e-3)
    latents, conditions = torch.randn(8, 3, 8, 12), torch.rand(8, 2)
    losses = []
    for step in range(30):
        torch.manual_seed(step % 3)  # the same three (timestep, noise) draws over and over
        losses.append(ldm_training_step(unet, optimizer, scheduler, latents, conditions, 0.0, "mse", 1.0,
                                        runtime.autocast))
    assert all(p.dtype == torch.float32 for p in unet.parameters())  # autocast leaves the weights fp32
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
