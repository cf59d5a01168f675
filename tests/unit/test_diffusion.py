"""The diffusion objectives and samplers: rectified flow against MONAI, one sampler signature, the LDM sampler."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import settings_of
from monai.networks.schedulers import RFlowScheduler

from brainspade.diffusion.objectives import make_scheduler, noisy_latents_and_target, schedule_table
from brainspade.diffusion.samplers import SAMPLERS, rflow_step, sampling_timesteps
from brainspade.engine.runtime import Runtime
from brainspade.errors import BrainspadeError
from brainspade.generation.labels import LabelSampler
from brainspade.models.label_diffusion_unet import ConditionedDiffusionUNet
from brainspade.models.label_vae import LabelVAE
from brainspade.training.label_ldm import ldm_training_step


def runtime_config(**runtime) -> Runtime:
    return Runtime.create(settings_of("runtime", **runtime), "cpu")


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
    batch = sampler.sample(conditions, [1, 2, 3], settings_of("label_sampling", steps=4))  # auto -> rflow
    alone = sampler.sample(conditions[1:2], [2], settings_of("label_sampling", steps=4, sampler="rflow"))
    assert batch.shape == (3, len(CHANNELS), *SIZE)
    torch.testing.assert_close(alone[0], batch[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.sum(dim=1), torch.ones(3, *SIZE), atol=1e-3, rtol=0)
    with pytest.raises(BrainspadeError, match="needs an LDM trained with objective ddpm"):
        sampler.sample(conditions, [1, 2, 3], settings_of("label_sampling", steps=4, sampler="ddim"))


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
