"""Synthetic PV label maps from the trained label VAE + label LDM (brainSPADE's label generator).

`LabelSampler.sample` draws every random number of sample i (initial latent and the noise
of each step) from its own generator seeded with `noise_seeds[i]`, so a sample depends only
on its seed, its condition and the models, never on the batch it is drawn in.
`sample_label_maps` is the label half of `brainspade sample` and all of `sample-labels`:
one seed derivation, one condition vocabulary, one post-processing path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

from brainspade.data.slice_cache import SliceCache
from brainspade.diffusion.objectives import make_scheduler, objective_of, schedule_table
from brainspade.diffusion.samplers import DEFAULT_SAMPLER, SAMPLERS, sampling_timesteps
from brainspade.engine.checkpoint import build_model
from brainspade.engine.runtime import bf16_autocast
from brainspade.engine.seeding import derived_seed
from brainspade.engine.stage import finished_fingerprint, load_stage_checkpoint
from brainspade.errors import BrainspadeError
from brainspade.models.label_diffusion_unet import ConditionedDiffusionUNet
from brainspade.models.label_vae import LabelVAE
from brainspade.settings import LabelSamplingSettings

# What each derived seed of a sample is for; a new purpose gets a new number, never a reused one.
CONDITION, LABEL_NOISE, STYLE_CHOICE, IMAGE_NOISE, APPEARANCE_NOISE = 0, 1, 2, 3, 4
# Which conditions the label LDM is given: the one vocabulary of `sample` and `sample-labels`.
CONDITION_MODES = ("healthy", "lesion", "as_training", "ranges")


def postprocess_pv_maps(pv_maps: torch.Tensor, background_index: int = 0, threshold: float = 0.075) -> torch.Tensor:
    """The paper's post-processing: clamp to [0, 1], background where no tissue exceeds `threshold`, renormalise."""
    pv_maps = pv_maps.clamp(0, 1).clone()
    tissue = torch.cat([pv_maps[:, :background_index], pv_maps[:, background_index + 1 :]], dim=1)
    empty = tissue.amax(dim=1) <= threshold
    pv_maps[:, background_index][empty] = 1.0
    for channel in range(pv_maps.shape[1]):
        if channel != background_index:
            pv_maps[:, channel][empty] = 0.0
    return pv_maps / pv_maps.sum(dim=1, keepdim=True).clamp_min(1e-8)


def load_label_vae(folder: Path, channels: Sequence[str] | None = None) -> LabelVAE:
    """The VAE of a finished `train-label-vae` folder; with `channels`, one of another schema is refused."""
    state = load_stage_checkpoint(folder, "label VAE", "train-label-vae", channels=channels)
    return build_model(state, "vae", LabelVAE)


class LabelSampler:
    """Label VAE decoder + EMA denoiser: conditions and seeds in, post-processed PV maps out.

    `bf16`: the denoiser and the decoder run under bf16 autocast; the sampler's update, the noise and the
    post-processing stay in fp32, so maps are fp32 and sum to 1 either way.
    """

    def __init__(
        self,
        vae: LabelVAE,
        unet: ConditionedDiffusionUNet,
        scheduler: DDPMScheduler | RFlowScheduler,
        scale_factor: float,
        channels: Sequence[str],
        lesion_channels: Sequence[str],
        size: Sequence[int],
        device: torch.device,
        bf16: bool = False,
    ):
        self.vae = vae.to(device).eval()
        self.unet = unet.to(device).eval()
        self.objective = objective_of(scheduler)  # which samplers fit the network's output (ε or velocity)
        self.schedule = schedule_table(scheduler).to(device)
        self.num_train_timesteps = int(scheduler.num_train_timesteps)
        self.scale_factor = float(scale_factor)
        self.channels = list(channels)
        self.lesion_channels = list(lesion_channels)
        self.size = (int(size[0]), int(size[1]))
        self.device = device
        self.bf16 = bf16
        self.background_index = self.channels.index("background") if "background" in self.channels else 0
        self.latent_shape = (vae.latent_channels, self.size[0] // vae.downsampling, self.size[1] // vae.downsampling)

    @classmethod
    def from_folders(cls, vae_folder: Path, ldm_folder: Path, device: torch.device,
                     channels: Sequence[str] | None = None, bf16: bool = False) -> LabelSampler:
        """Rebuild both networks from their finished stage folders (the LDM's EMA weights).

        With `channels` (the data's schema), a generator made for other channels is refused in one line.
        """
        vae = load_label_vae(vae_folder, channels)
        ldm_state = load_stage_checkpoint(ldm_folder, "label LDM", "train-label-ldm", channels=channels)
        if ldm_state["signature"].get("vae_fingerprint") != finished_fingerprint(vae_folder):
            raise BrainspadeError(
                f"{ldm_folder}: this label LDM was trained on another label VAE than {vae_folder}; "
                "re-run `brainspade train-label-ldm force=true`"
            )
        signature, extra = ldm_state["signature"], ldm_state["extra"]
        return cls(
            vae, build_model(ldm_state, "unet", ConditionedDiffusionUNet, ema=True),
            make_scheduler(extra["scheduler"]), extra["scale_factor"], signature["channels"],
            signature["lesion_channels"], signature["size"], device, bf16,
        )

    @torch.no_grad()
    def sample(
        self,
        conditions: torch.Tensor,
        noise_seeds: Sequence[int],
        settings: LabelSamplingSettings,
    ) -> torch.Tensor:
        """Post-processed PV maps (B, C, H, W) for conditions (B, L+1) = [lesion proportions..., slice position].

        `settings` hold the sampler, its steps, eta, guidance scale and the background threshold;
        `sampler="auto"` takes the one matching the LDM's training objective (ddim for ddpm, rflow for rflow).
        """
        steps, eta, guidance_scale = settings.steps, settings.eta, settings.guidance_scale
        sampler = DEFAULT_SAMPLER[self.objective] if settings.sampler == "auto" else settings.sampler
        if sampler not in SAMPLERS:
            raise BrainspadeError(f"sampler={sampler!r}: use auto or one of {sorted(SAMPLERS)}")
        step_function, objective = SAMPLERS[sampler]
        if objective != self.objective:
            fitting = sorted(name for name, (_, needs) in SAMPLERS.items() if needs == self.objective)
            raise BrainspadeError(
                f"sampler={sampler!r} needs an LDM trained with objective {objective}, this one was trained with "
                f"{self.objective}; use sampler=auto or one of {fitting}"
            )
        if conditions.ndim != 2 or conditions.shape[1] != len(self.lesion_channels) + 1:
            raise BrainspadeError(
                f"conditions of shape {tuple(conditions.shape)}: expected (B, {len(self.lesion_channels) + 1}) = "
                f"proportions of {self.lesion_channels} + slice position"
            )
        if len(noise_seeds) != len(conditions):
            raise BrainspadeError(f"{len(noise_seeds)} noise seeds for {len(conditions)} conditions")
        generators = [torch.Generator().manual_seed(int(seed)) for seed in noise_seeds]
        conditions = conditions.to(self.device, torch.float32)
        latents = self._noise(generators)
        timesteps = sampling_timesteps(self.num_train_timesteps, steps, sampler)
        for index, timestep in enumerate(timesteps):
            prev_timestep = timesteps[index + 1] if index + 1 < len(timesteps) else -1
            with bf16_autocast(self.device, self.bf16):
                prediction = self._guided_noise(latents, timestep, conditions, guidance_scale).float()
            stochastic = sampler == "ddpm" or (sampler == "ddim" and eta > 0)
            noise = self._noise(generators) if prev_timestep >= 0 and stochastic else None
            latents = step_function(latents, prediction, timestep, prev_timestep, self.schedule, noise, eta)
        with bf16_autocast(self.device, self.bf16):
            pv_maps = self.vae.decode(latents / self.scale_factor).float()
        return postprocess_pv_maps(pv_maps, self.background_index, settings.background_threshold).cpu()

    def _noise(self, generators: list[torch.Generator]) -> torch.Tensor:
        # Drawn on the CPU, one generator per sample, so results do not depend on batch or device.
        return torch.stack([torch.randn(self.latent_shape, generator=g) for g in generators]).to(self.device)

    def _guided_noise(self, latents: torch.Tensor, timestep: int, conditions: torch.Tensor, guidance_scale: float):
        """Classifier-free guidance (Ho & Salimans 2022): ε_null + s (ε_cond − ε_null); s = 1 is plain conditional.

        The same combination applies to a velocity output (rflow): both are linear in the score.
        """
        batch = len(latents)
        timesteps = torch.full((batch,), timestep, device=self.device, dtype=torch.long)
        if guidance_scale == 1.0:
            return self.unet(latents, timesteps, conditions)
        dropped = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)]).to(self.device)
        both = self.unet(torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), conditions.repeat(2, 1), dropped)
        conditional, unconditional = both[:batch], both[batch:]
        return unconditional + guidance_scale * (conditional - unconditional)


def label_conditions(cache: SliceCache, indices: np.ndarray) -> np.ndarray:
    """Real conditions (N, L+1) of PV slices: lesion proportions per lesion channel, then slice position."""
    proportions = np.stack([cache.label_table[c][indices] for c in cache.lesion_columns], axis=1) if cache.lesion_columns \
        else np.zeros((len(indices), 0))
    return np.concatenate([proportions, cache.label_table["slice_position"][indices][:, None]], axis=1).astype(np.float32)


def draw_conditions(
    seeds: Sequence[int],
    lesion_channels: Sequence[str],
    *,
    lesion_ranges: Mapping[str, Sequence[float]] | None = None,
    slice_range: Sequence[float] = (0.0, 1.0),
    training_conditions: np.ndarray | None = None,
) -> torch.Tensor:
    """Conditions (B, L+1), one per seed and depending only on it.

    With `training_conditions` (N, L+1), each seed picks one real row ("as in the training
    data"); otherwise each lesion proportion is uniform in its range (lesions not named in
    `lesion_ranges` get 0) and the slice position uniform in `slice_range`.
    """
    lesion_ranges = dict(lesion_ranges or {})
    unknown = sorted(set(lesion_ranges) - set(lesion_channels))
    if unknown:
        raise BrainspadeError(f"lesion ranges name {unknown}, which are not lesion channels {list(lesion_channels)}")
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(int(seed))
        if training_conditions is not None:
            if len(training_conditions) == 0:
                raise BrainspadeError("no training conditions to draw from (empty training split)")
            rows.append(np.asarray(training_conditions[rng.integers(len(training_conditions))], dtype=np.float32))
            continue
        low_high = [lesion_ranges.get(name, (0.0, 0.0)) for name in lesion_channels]
        proportions = [rng.uniform(float(low), float(high)) for low, high in low_high]
        rows.append(np.array([*proportions, rng.uniform(float(slice_range[0]), float(slice_range[1]))], dtype=np.float32))
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, len(lesion_channels) + 1)


def condition_drawer(mode: str, lesion_channels: Sequence[str], settings: LabelSamplingSettings,
                     training_conditions: np.ndarray) -> Callable[[Sequence[int]], torch.Tensor]:
    """Per-sample conditions from per-sample seeds, for one of CONDITION_MODES.

    healthy: no lesion, slice position in `settings.slice_range`; lesion: conditions of real
    lesion slices of the generators' training data (`training_conditions`); as_training:
    conditions of any training slice; ranges: `settings.lesion_range(s)` and `slice_range`.
    """
    if mode not in CONDITION_MODES:
        raise BrainspadeError(f"conditions={mode!r}: use one of {', '.join(CONDITION_MODES)}")
    lesions = list(lesion_channels)
    if mode in ("lesion", "as_training"):
        real = training_conditions
        if mode == "lesion":
            real = real[real[:, : len(lesions)].sum(axis=1) > 0]
            if len(real) == 0:
                raise BrainspadeError("conditions=lesion: the generators' training data has no lesion slice")
        return lambda seeds: draw_conditions(seeds, lesions, training_conditions=real)
    ranges = {} if mode == "healthy" else {
        name: list(settings.lesion_ranges.get(name, settings.lesion_range)) for name in lesions}
    unknown = sorted(set(settings.lesion_ranges) - set(lesions))
    if mode == "ranges" and unknown:
        raise BrainspadeError(f"label_sampling.lesion_ranges names {unknown}, which are not lesion channels {lesions}")
    return lambda seeds: draw_conditions(seeds, lesions, lesion_ranges=ranges, slice_range=settings.slice_range)


def sample_label_maps(sampler: LabelSampler, ids: Sequence[int], seed: int,
                      draw: Callable[[Sequence[int]], torch.Tensor],
                      settings: LabelSamplingSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditions (B, L+1) and PV maps (B, C, H, W) of samples `ids`, each from its own derived seeds."""
    conditions = draw([derived_seed(seed, i, CONDITION) for i in ids])
    pv_maps = sampler.sample(conditions, [derived_seed(seed, i, LABEL_NOISE) for i in ids], settings)
    return conditions, pv_maps
