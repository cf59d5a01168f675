"""Gradient accumulation of the label VAE and LDM (label_vae.accumulate, label_ldm.accumulate).

k micro-batches must give the gradient, losses and update of one batch of k times the size: then the
paper's batch of 256 trains on one GPU with a micro-batch's activation memory.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import run_cli, settings_of
from monai.networks.nets import PatchDiscriminator
from test_label_generator import CHANNELS, SCHEDULER, disc_pv_maps, tiny_unet, tiny_vae

from brainspade.errors import BrainspadeError
from brainspade.generation.labels import make_scheduler
from brainspade.losses.label_perceptual import make_label_perceptual_loss
from brainspade.settings import fingerprinted
from brainspade.training.label_batches import micro_batches
from brainspade.training.label_ldm import ldm_training_step
from brainspade.training.label_vae import vae_training_step

WEIGHTS = {"kl": 1e-3, "perceptual": 0.1, "adversarial": 0.05, "cross_entropy": 0.5}


def test_micro_batches_cover_the_batch_once_with_shares_that_sum_to_one():
    parts = micro_batches(10, 4)
    assert [(p.start, p.stop) for p, _ in parts] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert sum(share for _, share in parts) == pytest.approx(1.0)
    assert len(micro_batches(3, 8)) == 3  # never an empty micro-batch


def vae_step(vae, discriminator, accumulate: int) -> dict[str, float]:
    optimisers = [torch.optim.SGD(net.parameters(), lr=0.1) for net in (vae, discriminator)]
    torch.manual_seed(1)
    return vae_training_step(vae, discriminator, make_label_perceptual_loss("random_conv"), *optimisers,
                             disc_pv_maps(6), WEIGHTS, adversarial=True, grad_clip=1e6, accumulate=accumulate)


@pytest.mark.parametrize("accumulate", [2, 4])  # 6 slices in 4 parts: micro-batches of 2, 2, 1, 1
def test_vae_step_over_micro_batches_is_the_step_of_the_whole_batch(accumulate):
    torch.manual_seed(0)
    # Instance norm: a batch-norm discriminator sees other statistics per micro-batch (documented, not tested).
    networks = (tiny_vae(), PatchDiscriminator(spatial_dims=2, in_channels=len(CHANNELS), out_channels=1, channels=8,
                                               num_layers_d=2, norm="INSTANCE"))
    whole = copy.deepcopy(networks)
    split = copy.deepcopy(networks)
    losses_whole = vae_step(*whole, accumulate=1)
    losses_split = vae_step(*split, accumulate=accumulate)
    assert losses_split == pytest.approx(losses_whole, rel=1e-4, abs=1e-7)
    for one, other in zip(whole, split, strict=True):
        for (name, a), b in zip(one.named_parameters(), other.parameters(), strict=True):
            assert a.grad is not None and b.grad is not None, name
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-6, msg=name)
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)  # the update (SGD) too
    moved = sum(float((a - b).detach().abs().sum()) for a, b in zip(networks[0].parameters(), whole[0].parameters(),
                                                            strict=True))
    assert moved > 0  # the step did change the weights that both runs agree on


def test_ldm_step_over_micro_batches_is_the_step_of_the_whole_batch():
    torch.manual_seed(0)
    unet = tiny_unet()
    latents = torch.randn(6, 3, 8, 12)
    conditions = torch.rand(6, 2)
    scheduler = make_scheduler(SCHEDULER)
    results = {}
    for accumulate in (1, 3):
        model = copy.deepcopy(unet)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(2)  # the same noise, timesteps and dropped conditions for both
        loss = ldm_training_step(model, optimiser, scheduler, latents, conditions, 0.5, "l1", 1e6,
                                 accumulate=accumulate)
        results[accumulate] = (loss, model)
    (loss_whole, whole), (loss_split, split) = results[1], results[3]
    assert loss_split == pytest.approx(loss_whole, rel=1e-5)
    for (name, a), b in zip(whole.named_parameters(), split.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-6, msg=name)
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)


def test_accumulate_is_checked_and_not_part_of_what_is_trained():
    for section in ("label_vae", "label_ldm"):
        with pytest.raises(BrainspadeError, match="accumulate=0: must be >= 1"):
            settings_of(section, accumulate=0)
        with pytest.raises(BrainspadeError, match="accumulate=64: must be <= batch_size=32"):
            settings_of(section, accumulate=64, batch_size=32)
        one, eight = settings_of(section, accumulate=1), settings_of(section, accumulate=8)
        assert fingerprinted(one) == fingerprinted(eight)  # a run resumes with another accumulate


@pytest.mark.parametrize("value", ["nan", "two", "1.5", "0"])
def test_a_bad_accumulate_is_refused_in_one_line_naming_its_key(capsys, tmp_path, value):
    code, _, err = run_cli(capsys, "train-label-ldm", f"label_ldm.accumulate={value}", f"workdir={tmp_path / 'w'}",
                           "profile=tiny")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "label_ldm.accumulate" in err and "Traceback" not in err, err
    assert not (tmp_path / "w").exists()


def test_the_paper_profile_reaches_the_published_batch_through_accumulation():
    from brainspade.stages.config import compose, section

    cfg = compose("train-label-vae", ["profile=paper"])
    for name, largest_micro_batch in (("label_vae", 32), ("label_ldm", 64)):  # what fit one GPU (benchmarks/GPU.md)
        settings = section(cfg, name)
        assert settings.batch_size == 256
        assert settings.batch_size / settings.accumulate <= largest_micro_batch
