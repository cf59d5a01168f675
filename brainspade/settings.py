"""Typed settings: one frozen dataclass per concern, built once by a stage and passed to every consumer.

Each class mirrors one section of the Hydra config (`configs/stage/<section>.yaml`) and holds its
types and ranges only: every value, default included, is written once, in the commented YAML. The stages
turn the composed config into these objects (`brainspade.stages.config`), so nothing below
`stages/` sees a config object, and a key cannot reach only some of its consumers. Types are
checked by OmegaConf's structured-config merge; ranges and choices come from each field's
metadata and are checked here for every field alike (`_check_field`), not by hand per key.

Model nodes (`LabelVAESettings.model`, ...) are plain dicts holding exactly the keyword
arguments of the network's constructor (those the data decides, such as the channel count, are
added when the network is built); the checkpoint stores the full set, so a saved folder
rebuilds its networks with nothing else.
"""

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from brainspade.errors import BrainspadeError


def bounded(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
            choices: tuple | None = None, interval: bool = False) -> Any:
    """A dataclass field with the range / choices its values must respect (its value comes from the YAML).

    `interval`: the value is a [low, high] pair with low <= high (a range random values are drawn from).
    """
    return field(metadata={"ge": ge, "gt": gt, "le": le, "choices": choices, "interval": interval})


def _non_finite(value: Any) -> bool:
    """Whether a value, or any number inside its lists and dicts (a model node's arguments too), is NaN or infinite."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_non_finite(item) for item in value)
    return False


def _check_field(name: str, value: Any, rules: dict) -> None:
    if value is None:
        return
    # NaN passes every comparison below (each is False), so it is refused first, for every field alike.
    if _non_finite(value):
        raise BrainspadeError(f"{name}={value!r}: must be a finite number (not nan or inf)")
    if rules.get("interval") and (len(value) != 2 or value[0] > value[1]):
        raise BrainspadeError(f"{name}={value!r}: give [low, high] with low <= high")
    values = value if isinstance(value, list) else [value]
    choices = rules.get("choices")
    for item in values:
        text = str(item).lower() if isinstance(item, bool) else item
        if choices is not None and text not in choices:
            raise BrainspadeError(f"{name}={value!r}: use one of {', '.join(map(str, choices))}")
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if rules.get("ge") is not None and item < rules["ge"]:
                raise BrainspadeError(f"{name}={value!r}: must be >= {rules['ge']}")
            if rules.get("gt") is not None and item <= rules["gt"]:
                raise BrainspadeError(f"{name}={value!r}: must be > {rules['gt']}")
            if rules.get("le") is not None and item > rules["le"]:
                raise BrainspadeError(f"{name}={value!r}: must be <= {rules['le']}")


class Checked:
    """Base of every settings class: checks each field's metadata rules when built."""

    def __post_init__(self) -> None:
        for spec in fields(self):  # type: ignore[arg-type]
            _check_field(spec.name, getattr(self, spec.name), dict(spec.metadata))


# ---------------------------------------------------------------- every command


@dataclass(frozen=True)
class RunSettings(Checked):
    """Keys every command shares (configs/base.yaml)."""

    workdir: str
    seed: int = bounded(ge=0)
    force: bool
    device: str = bounded(choices=("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class RuntimeSettings(Checked):
    """How the training stages run: precision, memory format and compilation ("auto": on for CUDA)."""

    precision: str = bounded(choices=("auto", "fp32", "bf16"))
    channels_last: str = bounded(choices=("auto", "true", "false"))
    compile: str = bounded(choices=("auto", "true", "false"))

    def __post_init__(self) -> None:
        # YAML reads `true` as a boolean, which a str field keeps as "True".
        for name in ("channels_last", "compile"):
            object.__setattr__(self, name, str(getattr(self, name)).lower())
        super().__post_init__()


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class OtherPhysicsSettings(Checked):
    """siteN's acquisition (data/other_physics.py): a monotone curve of the real T1 texture, then TorchIO's MR artefacts."""

    curve_input: list[float] = bounded(ge=0, le=1)  # knots on the template T1, relative to its brain 99th percentile
    curve_output: list[float] = bounded(ge=0)  # the curve's value at each knot
    bias_field: float = bounded(ge=0)  # largest coefficient of the polynomial bias field (RandomBiasField)
    bias_order: int = bounded(ge=1)
    slice_thickness_mm: list[float] = bounded(gt=0, interval=True)  # axial slice thickness (RandomAnisotropy)
    motion_degrees: float = bounded(ge=0)  # largest rotation of each head movement (RandomMotion)
    motion_translation_mm: float = bounded(ge=0)
    motion_movements: int = bounded(ge=1)
    ghosts: list[int] = bounded(ge=0, interval=True)  # number of ghosts (RandomGhosting)
    ghost_intensity: list[float] = bounded(ge=0, le=1, interval=True)
    ghost_axis: int = bounded(choices=(0, 1, 2))  # the phase-encoding axis the ghosts repeat along
    spikes: list[int] = bounded(ge=0, interval=True)  # k-space spikes (RandomSpike)
    spike_intensity: list[float] = bounded(ge=0, interval=True)
    noise_std: list[float] = bounded(ge=0, interval=True)  # Gaussian noise before the magnitude (RandomNoise)

    def __post_init__(self) -> None:
        super().__post_init__()
        knots_in, knots_out = self.curve_input, self.curve_output
        if len(knots_in) < 2 or len(knots_in) != len(knots_out):
            raise BrainspadeError(f"curve_input={knots_in}, curve_output={knots_out}: give two or more knots, "
                                  "as many outputs as inputs")
        increasing = all(a < b for a, b in zip(knots_in[:-1], knots_in[1:], strict=True))
        if not increasing or any(a > b for a, b in zip(knots_out[:-1], knots_out[1:], strict=True)):
            raise BrainspadeError(f"curve_input={knots_in}, curve_output={knots_out}: inputs must increase and "
                                  "outputs never decrease (a monotone curve keeps the tissue order)")


@dataclass(frozen=True)
class PhantomSettings(Checked):
    resolution_mm: int = bounded(choices=(1, 2, 4))
    subjects_per_site: dict[str, list[int]]  # site -> [train, dev, test]
    other_physics: OtherPhysicsSettings

    def __post_init__(self) -> None:
        super().__post_init__()
        for site, counts in self.subjects_per_site.items():
            if len(counts) != 3 or any(count < 0 for count in counts):
                raise BrainspadeError(f"subjects_per_site={{{site}: {counts}}}: give [train, dev, test] subject "
                                      "counts, each >= 0")


@dataclass(frozen=True)
class SliceSettings(Checked):
    size: list[int] = bounded(ge=4)
    min_brain_fraction: float = bounded(ge=0, le=1)
    every: int = bounded(ge=1)


@dataclass(frozen=True)
class DataSettings(Checked):
    name: str
    root: str
    channels: list[str]
    lesion_channels: list[str]
    label_values: Optional[dict[str, int]]
    source_datasets: list[str]
    target_datasets: list[str]
    pv_tolerance: float = bounded(gt=0)
    label_format: str = bounded(choices=("pv", "freesurfer", "synthseg", "synthseg_posteriors", "fast"))
    posterior_codes: Optional[list[int]]  # FreeSurfer code of each SynthSeg --post channel (None: SynthSeg 2.0's)
    extra_codes: Optional[dict[str, list[int]]]  # channel -> FreeSurfer codes the built-in grouping lacks
    register: str = bounded(choices=("none", "affine"))
    template_resolution_mm: int = bounded(choices=(1, 2, 4))
    min_similarity: float = bounded(ge=0, le=1)


# ---------------------------------------------------------------- label generator


def check_accumulate(accumulate: int, batch_size: int) -> None:
    """Each of the `accumulate` micro-batches of a step needs one slice at least."""
    if accumulate > batch_size:
        raise BrainspadeError(f"accumulate={accumulate}: must be <= batch_size={batch_size} (each step's batch is "
                              f"split into `accumulate` micro-batches); lower it or raise batch_size")


# Settings that never change what a finished stage holds, left out of stage fingerprints: `min_similarity` only
# refuses a scan or lets it through; `accumulate` splits each step's batch into micro-batches without changing the
# step, so a run may resume with another (e.g. on a smaller GPU).
UNFINGERPRINTED = ("min_similarity", "accumulate")


def fingerprinted(settings: Any) -> dict[str, Any]:
    """A settings object as stage fingerprints take it: all but its UNFINGERPRINTED keys."""
    return {key: value for key, value in asdict(settings).items() if key not in UNFINGERPRINTED}


@dataclass(frozen=True)
class LabelVAESettings(Checked):
    model: dict[str, Any]  # LabelVAE arguments (num_channels comes from the data)
    discriminator: dict[str, Any]  # MONAI PatchDiscriminator arguments
    steps: int = bounded(ge=1)
    batch_size: int = bounded(ge=1)
    accumulate: int = bounded(ge=1)  # micro-batches per optimiser step (gradient accumulation)
    lr: float = bounded(gt=0)
    discriminator_lr: float = bounded(gt=0)
    grad_clip: float = bounded(gt=0)
    l1_channel_weights: Optional[str] = bounded(choices=("inverse_frequency",))
    cross_entropy_weight: float = bounded(ge=0)
    lesion_batch_fraction: float = bounded(ge=0, le=1)
    kl_weight: float = bounded(ge=0)
    perceptual_weight: float = bounded(ge=0)
    perceptual_network: str
    adversarial_weight: float = bounded(ge=0)
    adversarial_start: int = bounded(ge=0)
    eval_batch_size: int = bounded(ge=1)
    checkpoint_every: int = bounded(ge=1)
    log_every: int = bounded(ge=1)
    image_every: int = bounded(ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_accumulate(self.accumulate, self.batch_size)


# Counts of slices held in memory at once, whatever the data: stages/checks.py bounds them by the machine's
# memory once the slice cache exists.
MAX_HELD_SLICES = 100_000


@dataclass(frozen=True)
class LabelLDMSettings(Checked):
    model: dict[str, Any]  # ConditionedDiffusionUNet arguments (latent and lesion counts come from the data)
    objective: str = bounded(choices=("ddpm", "rflow"))
    num_train_timesteps: int = bounded(ge=1)
    schedule: str
    beta_start: float = bounded(gt=0, le=1)
    beta_end: float = bounded(gt=0, le=1)
    loss: str = bounded(choices=("l1", "mse"))
    condition_dropout: float = bounded(ge=0, le=1)
    steps: int = bounded(ge=1)
    batch_size: int = bounded(ge=1)
    accumulate: int = bounded(ge=1)  # micro-batches per optimiser step (gradient accumulation)
    lesion_batch_fraction: float = bounded(ge=0, le=1)
    lr: float = bounded(gt=0)
    grad_clip: float = bounded(gt=0)
    ema_decay: float = bounded(ge=0, le=1)
    encode_batch_size: int = bounded(ge=1)
    checkpoint_every: int = bounded(ge=1)
    log_every: int = bounded(ge=1)
    image_every: int = bounded(ge=1)
    eval_samples: int = bounded(ge=1, le=MAX_HELD_SLICES)  # held in memory at once (stages/checks.py)
    eval_batch_size: int = bounded(ge=1)
    lesion_min_pixels: int = bounded(ge=1)
    lesion_eval_min_proportion: float = bounded(ge=0, le=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_accumulate(self.accumulate, self.batch_size)

    @property
    def scheduler(self) -> dict[str, Any]:
        """The arguments of `diffusion.objectives.make_scheduler` (saved with the LDM)."""
        return {"objective": self.objective, "num_train_timesteps": self.num_train_timesteps,
                "schedule": self.schedule, "beta_start": self.beta_start, "beta_end": self.beta_end}


@dataclass(frozen=True)
class LabelSamplingSettings(Checked):
    """How PV maps are drawn from the label LDM: by `sample`, `sample-labels` and the LDM's validation alike."""

    sampler: str = bounded(choices=("auto", "ddim", "ddpm", "rflow"))
    steps: int = bounded(ge=1)
    eta: float = bounded(ge=0)
    guidance_scale: float = bounded(ge=0)
    lesion_range: list[float] = bounded(ge=0, le=1)
    lesion_ranges: dict[str, list[float]]
    slice_range: list[float] = bounded(ge=0, le=1)
    background_threshold: float = bounded(ge=0, le=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, pair in {"lesion_range": self.lesion_range, "slice_range": self.slice_range,
                           **{f"lesion_ranges.{k}": v for k, v in self.lesion_ranges.items()}}.items():
            if len(pair) != 2 or pair[0] > pair[1]:
                raise BrainspadeError(f"{name}={pair}: write it as [low, high] with low <= high")


# ---------------------------------------------------------------- image generator


@dataclass(frozen=True)
class IntensityAugmentation(Checked):
    bias_field: float = bounded(ge=0)
    gamma: float = bounded(ge=0)
    noise: float = bounded(ge=0)


@dataclass(frozen=True)
class ModiscSettings(Checked):
    model: dict[str, Any]  # ModalityDatasetClassifier arguments (class counts come from the data)
    batch_size: int = bounded(ge=1)
    steps: int = bounded(ge=1)
    lr: float = bounded(gt=0)
    weight_decay: float = bounded(ge=0)
    augment: IntensityAugmentation
    checkpoint_every: int = bounded(ge=1)
    log_every: int = bounded(ge=1)


@dataclass(frozen=True)
class LossWeights(Checked):
    adversarial: float = bounded(ge=0)
    feature_matching: float = bounded(ge=0)
    perceptual: float = bounded(ge=0)
    kl: float = bounded(ge=0)
    modality: float = bounded(ge=0)
    dataset: float = bounded(ge=0)
    style_consistency: float = bounded(ge=0)
    reconstruction: float = bounded(ge=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        # METHOD.md: alpha_mod > alpha_dat, unless the modality/data-set loss is off (both 0).
        if (self.modality or self.dataset) and not self.modality > self.dataset:
            raise BrainspadeError(
                f"weights: modality={self.modality} must exceed dataset={self.dataset} "
                "(the paper uses 0.75 > 0.3); set both to 0 to switch the loss off"
            )


@dataclass(frozen=True)
class StyleAffine(Checked):
    rotate: float = bounded(ge=0)
    scale: float = bounded(ge=0)
    translate: float = bounded(ge=0)


@dataclass(frozen=True)
class StyleNegatives(Checked):
    weight: float = bounded(ge=0)
    margin: float = bounded(ge=-1, le=1)


@dataclass(frozen=True)
class GeneratorEvaluation(Checked):
    max_images: int = bounded(ge=1)
    batch_size: int = bounded(ge=1)


@dataclass(frozen=True)
class AppearanceAugmentation(Checked):
    """One random scanner appearance per (target, style) training pair, the same for both slices."""

    probability: float = bounded(ge=0, le=1)
    curve: float = bounded(ge=0)
    bias_field: float = bounded(ge=0)
    log_gamma: list[float] = bounded(interval=True)
    blur_std: list[float] = bounded(ge=0, interval=True)
    noise_std: list[float] = bounded(ge=0, interval=True)


@dataclass(frozen=True)
class ImageGeneratorSettings(Checked):
    style_encoder: dict[str, Any]  # StyleEncoder arguments
    generator: dict[str, Any]  # SpadeGenerator arguments (label_channels, z_dim, size are derived)
    discriminator: dict[str, Any]  # MultiScalePatchGAN arguments (in_channels is derived)
    sampled_code: bool
    style_modality_input: bool
    style_appearance_input: bool
    appearance_augmentation: AppearanceAugmentation
    batch_size: int = bounded(ge=1)
    steps: int = bounded(ge=1)
    lr_generator: float = bounded(gt=0)
    lr_discriminator: float = bounded(gt=0)
    betas: list[float] = bounded(ge=0, le=1)
    ema_decay: float = bounded(ge=0, le=1)
    weights: LossWeights
    perceptual_network: str
    style_affine: StyleAffine
    style_negatives: StyleNegatives
    checkpoint_every: int = bounded(ge=1)
    log_every: int = bounded(ge=1)
    image_every: int = bounded(ge=1)
    evaluation: GeneratorEvaluation

    @property
    def needs_classifier(self) -> bool:
        """Whether training needs the frozen modality / data-set classifier of train-modisc."""
        weights = self.weights
        return bool(weights.modality or weights.dataset or self.style_modality_input) or (
            weights.perceptual > 0 and self.perceptual_network == "classifier")


# ---------------------------------------------------------------- synthesis and segmentation


MAX_REFERENCE_IMAGES = 8192  # 128 times the default fit; beyond it more images only cost memory


@dataclass(frozen=True)
class SiteLookSettings(Checked):
    """The style site's look put onto generated images after the SPADE (generation/site_look)."""

    enabled: bool  # put the style site's measured look onto the images
    # quantile_map: pooled brain quantiles + noise (images only); site_model: a fitted scanner model of the site
    # (tissue levels, blur, bias, noise) applied with each image's label map
    method: str = bounded(choices=("quantile_map", "site_model"))
    levels: bool  # False: only the noise (quantile_map)
    # reference images the look is fitted on, all held in memory at once (stages/checks.py checks them against it)
    reference_images: int = bounded(ge=8, le=MAX_REFERENCE_IMAGES)
    blurs: list[float] = bounded(ge=0)  # candidate in-plane blurs (pixels; quantile_map); [0.0]: none
    # site_model: share of the generator's own texture (its image beyond its tissue levels) kept under the site's look
    generator_texture: float = bounded(ge=0.0, le=1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.blurs:
            raise BrainspadeError("blurs=[]: give one or more candidate blurs in pixels; [0.0] keeps the images as made")


@dataclass(frozen=True)
class SamplingSettings(Checked):
    batch_size: int = bounded(ge=1)
    modality_filter: bool
    max_retries: int = bounded(ge=0)
    share_label_maps: bool
    site_look: SiteLookSettings


@dataclass(frozen=True)
class RandomisationSettings(Checked):
    """SynthSeg-style domain randomisation (Billot et al. 2023): images made from label maps alone."""

    tissue_mean: list[float] = bounded(interval=True)
    tissue_std: list[float] = bounded(ge=0, interval=True)
    bias_field: float = bounded(ge=0)
    blur_std: list[float] = bounded(ge=0, interval=True)
    anisotropy: list[float] = bounded(ge=1, interval=True)
    log_gamma: list[float] = bounded(interval=True)
    noise_std: list[float] = bounded(ge=0, interval=True)


@dataclass(frozen=True)
class SegmentationSettings(Checked):
    epochs: int = bounded(ge=1)
    iterations_per_epoch: int = bounded(ge=1)
    val_iterations_per_epoch: int = bounded(ge=1)
    batch_size: Optional[int] = bounded(ge=1)
    lesion_case_share: Optional[float] = bounded(gt=0, le=1)
    base_features: Optional[int] = bounded(ge=4)
    max_features: Optional[int] = bounded(ge=4)
    class_weights: Optional[dict[str, float]]  # label name -> cross-entropy weight (others 1; Dice unchanged)
    test_time_mirroring: bool
    processes: int = bounded(ge=1)
    augmentation_processes: int = bounded(ge=0)
    through_plane_sigma_mm: float = bounded(ge=0, le=20)  # `segment`: probabilities smoothed across axial slices

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(not weight > 0 for weight in (self.class_weights or {}).values()):
            raise BrainspadeError(f"class_weights={self.class_weights!r}: every weight must be > 0")


@dataclass(frozen=True)
class SegmentSettings(Checked):
    """`brainspade segment`: which trained model, which scans, where the labels go (top-level keys)."""

    model: str
    input: str
    output: str
    export: Optional[str]

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("model", "input", "output", "export"):
            value = getattr(self, name)
            if value is not None and not str(value).strip():  # '' would be the current directory
                raise BrainspadeError(f"{name}={value!r}: give a path (an empty one would mean the current folder)")


@dataclass(frozen=True)
class BidsSettings(Checked):
    """`brainspade make-manifest`: a BIDS-style folder and how its label files are found (top-level keys)."""

    bids_root: str
    derivatives: str
    labels: str
    label_format: str = bounded(choices=("pv", "freesurfer", "synthseg", "synthseg_posteriors", "fast"))
    dataset: str
    test_fraction: float = bounded(ge=0, le=1)


@dataclass(frozen=True)
class ExperimentSettings(Checked):
    """The segmentation experiments: arms (real / synthetic training data) and evaluations (test sets)."""

    n_synthetic: int = bounded(ge=1)
    n_target_volumes: int = bounded(ge=1)
    skip_arms: list[str]  # arms left out of every evaluation, with the relation rows that name them
    parallel_arms: int = bounded(ge=1)  # arms trained at once on a CPU, each on its share of the threads
    lesion_segmentation: dict[str, Any]  # the lesion arms' own nnU-Net keys
    randomised_segmentation: dict[str, Any]  # the D arms' keys, on top of their own
    arms: dict[str, Any]
    evaluations: dict[str, Any]
    figure_slices: int = bounded(ge=0)


# ---------------------------------------------------------------- evaluation of the generators


@dataclass(frozen=True)
class StyleMatchSettings(Checked):
    """Whether each style source's look reaches the generated images (evaluation/style_match.py)."""

    enabled: bool
    max_images: int = bounded(ge=2)
    batch_size: int = bounded(ge=1)
    site_look_sites: Optional[list[str]]  # target sites also measured after the site look (None: every one)
    site_classifier: ModiscSettings


@dataclass(frozen=True)
class EvaluationSettings(Checked):
    """How `evaluate-generators` scores a sample set against the real slices it imitates."""

    max_samples: int = bounded(ge=2)
    max_real: int = bounded(ge=2)
    feature_weights: Optional[str]
    feature_batch_size: int = bounded(ge=1)
    kid_subset_size: int = bounded(ge=2)
    kid_subsets: int = bounded(ge=1)
    ms_ssim_pairs: int = bounded(ge=1, le=MAX_HELD_SLICES)  # held in memory at once (stages/checks.py)
    ms_ssim_kernel: int = bounded(ge=3)
    segmenter_arm: Optional[str]
    consistency_slices: int = bounded(ge=2)
    memorisation_flag_share: float = bounded(ge=0, le=1)
    figure_samples: int = bounded(ge=1)
    nearest_pairs_shown: int = bounded(ge=1)
    histogram_bins: int = bounded(ge=2)
    style_match: StyleMatchSettings

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ms_ssim_kernel % 2 == 0:
            raise BrainspadeError(f"ms_ssim_kernel={self.ms_ssim_kernel}: use an odd window size, e.g. 7")
