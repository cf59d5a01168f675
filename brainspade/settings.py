"""Typed settings: one frozen dataclass per concern, built once by a stage and passed to every consumer.

Each class mirrors one section of the Hydra config (`configs/stage/<section>.yaml`). The stages
turn the composed config into these objects (`brainspade.stages.config`), so nothing below
`stages/` sees a config object, and a key cannot reach only some of its consumers. Types are
checked by OmegaConf's structured-config merge; ranges and choices come from each field's
metadata and are checked here for every field alike (`_check_field`), not by hand per key.

Model nodes (`LabelVAESettings.model`, ...) are plain dicts holding exactly the keyword
arguments of the network's constructor (those the data decides, such as the channel count, are
added when the network is built); the checkpoint stores the full set, so a saved folder
rebuilds its networks with nothing else.
"""

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from brainspade.errors import BrainspadeError


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            choices: tuple | None = None, interval: bool = False) -> Any:
    """A dataclass field with a default and the range / choices its values must respect.

    `interval`: the value is a [low, high] pair with low <= high (a range random values are drawn from).
    """
    factory = {"default_factory": (lambda: list(default))} if isinstance(default, list) else {"default": default}
    return field(metadata={"ge": ge, "gt": gt, "le": le, "choices": choices, "interval": interval}, **factory)


def _check_field(name: str, value: Any, rules: dict) -> None:
    if value is None:
        return
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

    workdir: str = "./brainspade_work"
    seed: int = bounded(0, ge=0)
    force: bool = False
    device: str = bounded("auto", choices=("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class RuntimeSettings(Checked):
    """How the training stages run: precision, memory format and compilation ("auto": on for CUDA)."""

    precision: str = bounded("auto", choices=("auto", "fp32", "bf16"))
    channels_last: str = bounded("auto", choices=("auto", "true", "false"))
    compile: str = bounded("auto", choices=("auto", "true", "false"))

    def __post_init__(self) -> None:
        # YAML reads `true` as a boolean, which a str field keeps as "True".
        for name in ("channels_last", "compile"):
            object.__setattr__(self, name, str(getattr(self, name)).lower())
        super().__post_init__()


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class PhantomSettings(Checked):
    resolution_mm: int = bounded(2, choices=(1, 2, 4))
    subjects_per_site: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class SliceSettings(Checked):
    size: list[int] = bounded([96, 128], ge=4)
    min_brain_fraction: float = bounded(0.05, ge=0, le=1)
    every: int = bounded(1, ge=1)


@dataclass(frozen=True)
class DataSettings(Checked):
    name: str = "phantom"
    root: str = "???"
    channels: list[str] = field(default_factory=list)
    lesion_channels: list[str] = field(default_factory=list)
    label_values: Optional[dict[str, int]] = None
    source_datasets: list[str] = field(default_factory=list)
    target_datasets: list[str] = field(default_factory=list)
    pv_tolerance: float = bounded(1e-3, gt=0)
    label_format: str = bounded("pv", choices=("pv", "freesurfer", "synthseg", "synthseg_posteriors", "fast"))
    posterior_codes: Optional[list[int]] = None  # FreeSurfer code of each SynthSeg --post channel (None: SynthSeg 2.0's)
    extra_codes: Optional[dict[str, list[int]]] = None  # channel -> FreeSurfer codes the built-in grouping lacks
    register: str = bounded("none", choices=("none", "affine"))
    template_resolution_mm: int = bounded(2, choices=(1, 2, 4))
    min_similarity: float = bounded(0.3, ge=0, le=1)


# ---------------------------------------------------------------- label generator


@dataclass(frozen=True)
class LabelVAESettings(Checked):
    model: dict[str, Any] = field(default_factory=dict)  # LabelVAE arguments (num_channels comes from the data)
    discriminator: dict[str, Any] = field(default_factory=dict)  # MONAI PatchDiscriminator arguments
    steps: int = bounded(50000, ge=1)
    batch_size: int = bounded(256, ge=1)
    lr: float = bounded(5e-5, gt=0)
    discriminator_lr: float = bounded(1e-4, gt=0)
    grad_clip: float = bounded(1.0, gt=0)
    l1_channel_weights: Optional[str] = bounded(None, choices=("inverse_frequency",))
    cross_entropy_weight: float = bounded(0.0, ge=0)
    lesion_batch_fraction: float = bounded(0.0, ge=0, le=1)
    kl_weight: float = bounded(1e-6, ge=0)
    perceptual_weight: float = bounded(0.002, ge=0)
    perceptual_network: str = "random_conv"
    adversarial_weight: float = bounded(0.005, ge=0)
    adversarial_start: int = bounded(0, ge=0)
    eval_batch_size: int = bounded(64, ge=1)
    checkpoint_every: int = bounded(1000, ge=1)
    log_every: int = bounded(50, ge=1)
    image_every: int = bounded(1000, ge=1)


@dataclass(frozen=True)
class LabelLDMSettings(Checked):
    model: dict[str, Any] = field(default_factory=dict)  # ConditionedDiffusionUNet arguments (latent and lesion counts come from the data)
    objective: str = bounded("ddpm", choices=("ddpm", "rflow"))
    num_train_timesteps: int = bounded(1000, ge=1)
    schedule: str = "scaled_linear_beta"
    beta_start: float = bounded(0.0015, gt=0, le=1)
    beta_end: float = bounded(0.0195, gt=0, le=1)
    loss: str = bounded("l1", choices=("l1", "mse"))
    condition_dropout: float = bounded(0.2, ge=0, le=1)
    steps: int = bounded(100000, ge=1)
    batch_size: int = bounded(256, ge=1)
    lesion_batch_fraction: float = bounded(0.0, ge=0, le=1)
    lr: float = bounded(2.5e-5, gt=0)
    grad_clip: float = bounded(1.0, gt=0)
    ema_decay: float = bounded(0.999, ge=0, le=1)
    encode_batch_size: int = bounded(64, ge=1)
    checkpoint_every: int = bounded(1000, ge=1)
    log_every: int = bounded(50, ge=1)
    image_every: int = bounded(5000, ge=1)
    eval_samples: int = bounded(200, ge=1)
    eval_batch_size: int = bounded(50, ge=1)
    lesion_min_pixels: int = bounded(5, ge=1)
    lesion_eval_min_proportion: float = bounded(0.005, ge=0, le=1)

    @property
    def scheduler(self) -> dict[str, Any]:
        """The arguments of `diffusion.objectives.make_scheduler` (saved with the LDM)."""
        return {"objective": self.objective, "num_train_timesteps": self.num_train_timesteps,
                "schedule": self.schedule, "beta_start": self.beta_start, "beta_end": self.beta_end}


@dataclass(frozen=True)
class LabelSamplingSettings(Checked):
    """How PV maps are drawn from the label LDM: by `sample`, `sample-labels` and the LDM's validation alike."""

    sampler: str = bounded("auto", choices=("auto", "ddim", "ddpm", "rflow"))
    steps: int = bounded(50, ge=1)
    eta: float = bounded(1.0, ge=0)
    guidance_scale: float = bounded(1.0, ge=0)
    lesion_range: list[float] = bounded([0.0, 0.0], ge=0, le=1)
    lesion_ranges: dict[str, list[float]] = field(default_factory=dict)
    slice_range: list[float] = bounded([0.2, 0.8], ge=0, le=1)
    background_threshold: float = bounded(0.075, ge=0, le=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, pair in {"lesion_range": self.lesion_range, "slice_range": self.slice_range,
                           **{f"lesion_ranges.{k}": v for k, v in self.lesion_ranges.items()}}.items():
            if len(pair) != 2 or pair[0] > pair[1]:
                raise BrainspadeError(f"{name}={pair}: write it as [low, high] with low <= high")


# ---------------------------------------------------------------- image generator


@dataclass(frozen=True)
class IntensityAugmentation(Checked):
    bias_field: float = bounded(0.3, ge=0)
    gamma: float = bounded(0.3, ge=0)
    noise: float = bounded(0.05, ge=0)


@dataclass(frozen=True)
class ModiscSettings(Checked):
    model: dict[str, Any] = field(default_factory=dict)  # ModalityDatasetClassifier arguments (class counts come from the data)
    batch_size: int = bounded(32, ge=1)
    steps: int = bounded(5000, ge=1)
    lr: float = bounded(1e-4, gt=0)
    weight_decay: float = bounded(1e-5, ge=0)
    augment: IntensityAugmentation = field(default_factory=IntensityAugmentation)
    checkpoint_every: int = bounded(500, ge=1)
    log_every: int = bounded(50, ge=1)


@dataclass(frozen=True)
class LossWeights(Checked):
    adversarial: float = bounded(1.0, ge=0)
    feature_matching: float = bounded(0.25, ge=0)
    perceptual: float = bounded(1.5, ge=0)
    kl: float = bounded(5e-4, ge=0)
    modality: float = bounded(0.75, ge=0)
    dataset: float = bounded(0.3, ge=0)
    style_consistency: float = bounded(1.0, ge=0)
    reconstruction: float = bounded(0.0, ge=0)

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
    rotate: float = bounded(0.26, ge=0)
    scale: float = bounded(0.1, ge=0)
    translate: float = bounded(0.05, ge=0)


@dataclass(frozen=True)
class StyleNegatives(Checked):
    weight: float = bounded(0.0, ge=0)
    margin: float = bounded(0.0, ge=-1, le=1)


@dataclass(frozen=True)
class GeneratorEvaluation(Checked):
    max_images: int = bounded(256, ge=1)
    batch_size: int = bounded(16, ge=1)


@dataclass(frozen=True)
class AppearanceAugmentation(Checked):
    """One random scanner appearance per (target, style) training pair, the same for both slices."""

    probability: float = bounded(0.0, ge=0, le=1)
    curve: float = bounded(0.5, ge=0)
    bias_field: float = bounded(0.3, ge=0)
    log_gamma: list[float] = bounded([-0.3, 0.3], interval=True)
    blur_std: list[float] = bounded([0.0, 1.0], ge=0, interval=True)
    noise_std: list[float] = bounded([0.0, 0.05], ge=0, interval=True)


@dataclass(frozen=True)
class ImageGeneratorSettings(Checked):
    style_encoder: dict[str, Any] = field(default_factory=dict)  # StyleEncoder arguments
    generator: dict[str, Any] = field(default_factory=dict)  # SpadeGenerator arguments (label_channels, z_dim, size are derived)
    discriminator: dict[str, Any] = field(default_factory=dict)  # MultiScalePatchGAN arguments (in_channels is derived)
    sampled_code: bool = True
    style_modality_input: bool = False
    style_appearance_input: bool = False
    appearance_augmentation: AppearanceAugmentation = field(default_factory=AppearanceAugmentation)
    batch_size: int = bounded(8, ge=1)
    steps: int = bounded(100000, ge=1)
    lr_generator: float = bounded(1e-4, gt=0)
    lr_discriminator: float = bounded(4e-4, gt=0)
    betas: list[float] = bounded([0.0, 0.9], ge=0, le=1)
    ema_decay: float = bounded(0.999, ge=0, le=1)
    weights: LossWeights = field(default_factory=LossWeights)
    perceptual_network: str = "classifier"
    style_affine: StyleAffine = field(default_factory=StyleAffine)
    style_negatives: StyleNegatives = field(default_factory=StyleNegatives)
    checkpoint_every: int = bounded(1000, ge=1)
    log_every: int = bounded(50, ge=1)
    image_every: int = bounded(500, ge=1)
    evaluation: GeneratorEvaluation = field(default_factory=GeneratorEvaluation)

    @property
    def needs_classifier(self) -> bool:
        """Whether training needs the frozen modality / data-set classifier of train-modisc."""
        weights = self.weights
        return bool(weights.modality or weights.dataset or self.style_modality_input) or (
            weights.perceptual > 0 and self.perceptual_network == "classifier")


# ---------------------------------------------------------------- synthesis and segmentation


@dataclass(frozen=True)
class SamplingSettings(Checked):
    batch_size: int = bounded(32, ge=1)
    modality_filter: bool = True
    max_retries: int = bounded(3, ge=0)
    share_label_maps: bool = True
    appearance_transfer: bool = False  # put the style site's measured contrast and noise onto the images
    # quantile_map: pooled brain quantiles + noise (images only); site_model: a fitted scanner model of the site
    # (tissue levels, blur, bias, noise) applied with each image's label map (generation/site_model.py)
    appearance_transfer_method: str = bounded("quantile_map", choices=("quantile_map", "site_model"))
    appearance_transfer_levels: bool = True  # False: only the noise (quantile_map)
    appearance_reference_images: int = bounded(64, ge=8)  # reference images the transfer is fitted on
    appearance_transfer_blurs: list[float] = bounded([0.0], ge=0)  # candidate in-plane blurs (pixels; quantile_map); [0.0]: none
    # site_model: share of the generator's own texture (its image beyond its tissue levels) kept under the site's look
    appearance_generator_texture: float = bounded(1.0, ge=0.0, le=1.0)


@dataclass(frozen=True)
class RandomisationSettings(Checked):
    """SynthSeg-style domain randomisation (Billot et al. 2023): images made from label maps alone."""

    tissue_mean: list[float] = bounded([0.0, 1.0], interval=True)
    tissue_std: list[float] = bounded([0.01, 0.1], ge=0, interval=True)
    bias_field: float = bounded(0.5, ge=0)
    blur_std: list[float] = bounded([0.0, 1.0], ge=0, interval=True)
    anisotropy: list[float] = bounded([1.0, 3.0], ge=1, interval=True)
    log_gamma: list[float] = bounded([-0.3, 0.3], interval=True)
    noise_std: list[float] = bounded([0.0, 0.05], ge=0, interval=True)


@dataclass(frozen=True)
class SegmentationSettings(Checked):
    epochs: int = bounded(1000, ge=1)
    iterations_per_epoch: int = bounded(250, ge=1)
    val_iterations_per_epoch: int = bounded(50, ge=1)
    batch_size: Optional[int] = bounded(None, ge=1)
    lesion_case_share: Optional[float] = bounded(None, gt=0, le=1)
    base_features: Optional[int] = bounded(None, ge=4)
    max_features: Optional[int] = bounded(None, ge=4)
    class_weights: Optional[dict[str, float]] = None  # label name -> cross-entropy weight (others 1; Dice unchanged)
    test_time_mirroring: bool = True
    processes: int = bounded(2, ge=1)
    augmentation_processes: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(not weight > 0 for weight in (self.class_weights or {}).values()):
            raise BrainspadeError(f"class_weights={self.class_weights!r}: every weight must be > 0")


@dataclass(frozen=True)
class SegmentSettings(Checked):
    """`brainspade segment`: which trained model, which scans, where the labels go (top-level keys)."""

    model: str = "???"
    input: str = "???"
    output: str = "./brainspade_work/segment"
    export: Optional[str] = None


@dataclass(frozen=True)
class BidsSettings(Checked):
    """`brainspade make-manifest`: a BIDS-style folder and how its label files are found (top-level keys)."""

    bids_root: str = "???"
    derivatives: str = "derivatives"
    labels: str = "*aparc+aseg.mgz"
    label_format: str = bounded("freesurfer", choices=("pv", "freesurfer", "synthseg", "synthseg_posteriors", "fast"))
    dataset: str = "mysite"
    test_fraction: float = bounded(0.2, ge=0, le=1)


@dataclass(frozen=True)
class ExperimentSettings(Checked):
    """The segmentation experiments: arms (real / synthetic training data) and evaluations (test sets)."""

    n_synthetic: int = bounded(20000, ge=1)
    n_target_volumes: int = bounded(5, ge=1)
    lesion_segmentation: dict[str, Any] = field(default_factory=dict)  # the lesion arms' own nnU-Net keys
    randomised_segmentation: dict[str, Any] = field(default_factory=dict)  # the D arms' keys, on top of their own
    arms: dict[str, Any] = field(default_factory=dict)
    evaluations: dict[str, Any] = field(default_factory=dict)
    figure_slices: int = bounded(4, ge=0)


# ---------------------------------------------------------------- evaluation of the generators


@dataclass(frozen=True)
class StyleMatchSettings(Checked):
    """Whether each style source's look reaches the generated images (evaluation/style_match.py)."""

    enabled: bool = True
    max_images: int = bounded(128, ge=2)
    batch_size: int = bounded(16, ge=1)
    site_classifier: ModiscSettings = field(default_factory=ModiscSettings)


@dataclass(frozen=True)
class EvaluationSettings(Checked):
    """How `evaluate-generators` scores a sample set against the real slices it imitates."""

    max_samples: int = bounded(500, ge=2)
    max_real: int = bounded(1000, ge=2)
    feature_weights: Optional[str] = None
    feature_batch_size: int = bounded(64, ge=1)
    kid_subset_size: int = bounded(1000, ge=2)
    kid_subsets: int = bounded(100, ge=1)
    ms_ssim_pairs: int = bounded(200, ge=1)
    ms_ssim_kernel: int = bounded(7, ge=3)
    segmenter_arm: Optional[str] = None
    consistency_slices: int = bounded(500, ge=2)
    memorisation_flag_share: float = bounded(0.1, ge=0, le=1)
    figure_samples: int = bounded(8, ge=1)
    nearest_pairs_shown: int = bounded(6, ge=1)
    histogram_bins: int = bounded(50, ge=2)
    style_match: StyleMatchSettings = field(default_factory=StyleMatchSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ms_ssim_kernel % 2 == 0:
            raise BrainspadeError(f"ms_ssim_kernel={self.ms_ssim_kernel}: use an odd window size, e.g. 7")
