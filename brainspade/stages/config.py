"""The composed Hydra config -> typed settings (`brainspade.settings`) and workdir paths.

This is the one place that reads config sections; everything below `stages/` takes the
settings objects built here. A wrong type or value fails with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from brainspade import settings as typed
from brainspade.commands import CONFIG_DIR
from brainspade.engine.stage import StageFolder
from brainspade.errors import BrainspadeError

if TYPE_CHECKING:
    from brainspade.generation.sample_set import GeneratorFolders
    from brainspade.segmentation.arms import ArmSpec

T = TypeVar("T")

# Config section -> its settings class; `check_config` builds every section a command has.
SECTIONS: dict[str, type] = {
    "runtime": typed.RuntimeSettings,
    "phantom": typed.PhantomSettings,
    "slices": typed.SliceSettings,
    "data": typed.DataSettings,
    "label_vae": typed.LabelVAESettings,
    "label_ldm": typed.LabelLDMSettings,
    "label_sampling": typed.LabelSamplingSettings,
    "modisc": typed.ModiscSettings,
    "image_generator": typed.ImageGeneratorSettings,
    "sampling": typed.SamplingSettings,
    "randomisation": typed.RandomisationSettings,
    "segmentation": typed.SegmentationSettings,
    "experiments": typed.ExperimentSettings,
    "evaluation": typed.EvaluationSettings,
}


def section(cfg: DictConfig, key: str, cls: type[T] | None = None) -> T:
    """The config section `key` as its frozen settings object, type- and range-checked."""
    cls = cls or SECTIONS[key]
    node = cfg if key == "" else OmegaConf.select(cfg, key)
    if node is None:
        raise BrainspadeError(f"{key}: missing from the config")
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        if key == "":  # the top-level keys shared by every command
            node = {name: cfg[name] for name in names}
        else:  # resolved here, where interpolations such as ${workdir} still find their root
            node = OmegaConf.to_container(node, resolve=True)
        merged = OmegaConf.merge(_writable_schema(cls), node)
        built = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        full_key = f"{key}.{error.full_key}" if key and getattr(error, "full_key", None) else (error.full_key or key)
        message = str(error).strip().splitlines()[0]
        if "not in struct" in message or "Key '" in message and "not in" in message:
            message = f"unknown key (the section takes {', '.join(sorted(names))})"
        elif "missing mandatory value" in message:
            message = "has no value; set it in the YAML or pass it as key=VALUE"
        raise BrainspadeError(f"{full_key}: {message}") from None
    except BrainspadeError as error:
        message = str(error)
        path = _field_path(cls, message.split("=")[0].split(":")[0])
        raise BrainspadeError(f"{key}.{path}{message[len(path.split('.')[-1]):]}" if key else message) from None
    return built


def _field_path(cls: type, name: str, nested: bool = False) -> str:
    """Where field `name` sits in a (nested) settings class, e.g. "augment.bias_field" in ModiscSettings."""
    for spec in dataclasses.fields(cls):
        if spec.name == name:
            return name
    for spec in dataclasses.fields(cls):
        if isinstance(spec.type, type) and dataclasses.is_dataclass(spec.type):
            found = _field_path(spec.type, name, nested=True)
            if found:
                return f"{spec.name}.{found}"
    return "" if nested else name


def _writable_schema(cls: type) -> DictConfig:
    """The structured config of a settings class, every value missing until the YAML fills it.

    Frozen dataclasses make read-only nodes, which the merge could not fill; nested classes get their own
    writable schema (a missing nested node would otherwise be made read-only by the merge).
    """
    schema = OmegaConf.structured(cls)
    OmegaConf.set_readonly(schema, False)
    for spec in dataclasses.fields(cls):
        if isinstance(spec.type, type) and dataclasses.is_dataclass(spec.type):
            schema[spec.name] = _writable_schema(spec.type)
    return schema


def compose(command: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config of `brainspade COMMAND OVERRIDES...` as Hydra composes it, without running anything."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=command, overrides=list(overrides))


def run_settings(cfg: DictConfig) -> typed.RunSettings:
    return section(cfg, "", typed.RunSettings)


def check_config(cfg: DictConfig) -> None:
    """Build every settings object the command's config has, so any bad value fails before work starts."""
    run = run_settings(cfg)
    if run.device == "cuda":  # checked here so that no stage starts work on a machine it cannot finish on
        from brainspade.engine.runtime import select_device

        select_device(run.device)
    check_workdir(Path(str(cfg.workdir)).expanduser())
    for key in SECTIONS:
        if key in cfg:
            section(cfg, key)
    if "n" in cfg:
        count(cfg)
    if "model" in cfg and "input" in cfg:
        section(cfg, "", typed.SegmentSettings)
    if "bids_root" in cfg:
        section(cfg, "", typed.BidsSettings)
    if "evaluation_split" in cfg and cfg.evaluation_split not in ("test", "dev"):
        raise BrainspadeError(f"evaluation_split={cfg.evaluation_split!r}: choose test (the report) or dev "
                              "(scores for choosing settings)")
    if "experiments" in cfg:
        _, arms = experiment_plan(section(cfg, "experiments"), None)
        if "segmentation" in cfg:
            for arm in arms.values():
                arm_segmentation(cfg, arm)
        if "data" in cfg:
            check_site_model_arms(arms.values(), section(cfg, "data").source_datasets)


def check_site_model_arms(arms, sources: Sequence[str]) -> None:
    """A site-model arm must be styled by a target site: a source site keeps the generator's look (no model is
    fitted to it), so its set would be the published one under another name."""
    for arm in arms:
        synthetic = arm.synthetic
        if synthetic and synthetic.synthesis in ("site_model", "site_model_render") and synthetic.style_dataset in sources:
            raise BrainspadeError(
                f"experiments.arms.{arm.name}.synthetic.synthesis={synthetic.synthesis}: {synthetic.style_dataset} is a "
                "source data set, whose styles keep the generator's look; use synthesis=published or a target's styles")


def experiment_plan(settings: typed.ExperimentSettings, name: str | None) -> tuple[list, dict]:
    """The evaluations of experiment `name` (every experiment's when None) and the arms they use, parsed.

    A malformed arm or evaluation, or one naming an arm that is not defined, fails here in one line.
    """
    from brainspade.segmentation.arms import ArmSpec
    from brainspade.segmentation.evaluation import Evaluation

    if name is not None and name not in settings.evaluations:
        raise BrainspadeError(f"experiment={name!r} is not defined; choose one of {sorted(settings.evaluations)}")
    names = [name] if name is not None else list(settings.evaluations)
    unknown = sorted(set(settings.skip_arms) - set(settings.arms))
    if unknown:
        raise BrainspadeError(f"experiments.skip_arms: {', '.join(unknown)} is not an arm; experiments.arms has "
                              f"{sorted(settings.arms)}")
    evaluations = [Evaluation.from_dict(without_arms(node, settings.skip_arms))
                   for key in names for node in settings.evaluations[key]]
    arms = {}
    for arm in dict.fromkeys(arm for evaluation in evaluations for arm in evaluation.arms):
        if arm not in settings.arms:
            raise BrainspadeError(f"arm {arm!r} is not defined; experiments.arms has {sorted(settings.arms)}")
        arms[arm] = ArmSpec.from_dict(arm, settings.arms[arm])
    return evaluations, arms


def without_arms(evaluation: dict, skipped: Sequence[str]) -> dict:
    """An evaluation of `experiments.evaluations` without the `skipped` arms and the relation rows naming them."""
    if not skipped:
        return evaluation
    return {**evaluation, "arms": [arm for arm in evaluation["arms"] if arm not in skipped],
            "relations": [relation for relation in evaluation.get("relations") or ()
                          if relation["better"] not in skipped and relation["worse"] not in skipped]}


def arm_segmentation(cfg: DictConfig, arm: ArmSpec) -> typed.SegmentationSettings:
    """The profile's nnU-Net settings with the arm's own `segmentation` keys on top, typed and checked alike.

    A domain-randomised arm also gets `experiments.randomised_segmentation` on top of those (merged key by key,
    so D_les keeps the lesion arms' tumour weight and adds its own): random contrasts need longer, weighted training.
    """
    layers = [dict(arm.segmentation or {})]
    if arm.randomised:
        randomised = cfg.experiments.get("randomised_segmentation")
        layers.append(OmegaConf.to_container(randomised, resolve=True) if randomised else {})
    if not any(layers):
        return section(cfg, "segmentation")
    keys = OmegaConf.merge(*(OmegaConf.create(layer) for layer in layers))  # outside the struct: new weights may join
    node = OmegaConf.create({"segmentation": OmegaConf.merge(cfg.segmentation, keys)})
    try:
        return section(node, "segmentation")
    except BrainspadeError as error:
        raise BrainspadeError(f"experiments.arms.{arm.name}.{error}") from None


def count(cfg: DictConfig) -> int:
    """`n` (the number of samples a command makes) as a positive integer."""
    value = cfg.n
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BrainspadeError(f"n={value!r}: ask for a whole number of samples of at least 1, e.g. --n 100")
    return int(value)


def plain(node: Any) -> Any:
    """A config node as plain Python containers (resolved), for fingerprints and saved configs."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) or OmegaConf.is_config(node) \
        else node


def workdir(cfg: DictConfig) -> Path:
    """The run's workdir as an absolute path (created if missing)."""
    path = Path(str(cfg.workdir)).expanduser().resolve()
    check_workdir(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


MIN_FREE_BYTES = 1 << 20


def check_workdir(path: Path) -> None:
    """Refuse a workdir that is a file or that cannot be written, before Hydra writes its logs there."""
    path = path.resolve()
    if path.exists() and not path.is_dir():
        raise BrainspadeError(f"workdir={path}: is a file; set workdir=PATH to a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise BrainspadeError(f"workdir={path}: {existing} is a file; set workdir=PATH to a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BrainspadeError(f"workdir={path}: {existing} is not writable (read-only or not yours); "
                              "set workdir=PATH to a folder you can write")
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:  # Hydra writes its logs there before any stage can report a full disk in one line
        raise BrainspadeError(f"workdir={path}: only {free // 1024} KiB free on its disk; free space or set "
                              "workdir=PATH to another disk")


def stage_path(cfg: DictConfig, name: str) -> Path:
    """Where stage `name` keeps its folder inside the workdir."""
    return workdir(cfg) / name


def generator_folders(cfg: DictConfig, modality_filter: bool) -> GeneratorFolders:
    """The finished stage folders `sample` makes pairs from, each refused in one line when missing."""
    from brainspade.engine.stage import require_complete
    from brainspade.generation.sample_set import GeneratorFolders

    folders = GeneratorFolders(
        slices=require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data"),
        label_vae=require_complete(stage_path(cfg, "label_vae"), "label VAE", "train-label-vae"),
        label_ldm=require_complete(stage_path(cfg, "label_ldm"), "label LDM", "train-label-ldm"),
        image_generator=require_complete(stage_path(cfg, "image_generator"), "image generator",
                                         "train-image-generator"),
        modality_classifier=stage_path(cfg, "modisc") if modality_filter else None,
        site_looks=stage_path(cfg, "site_looks"),
    )
    if folders.modality_classifier is not None:
        require_complete(folders.modality_classifier, "modality classifier", "train-modisc")
    return folders


def data_root(cfg: DictConfig) -> Path:
    return Path(str(cfg.data.root)).expanduser().resolve()


def resolved_config(cfg: DictConfig) -> dict:
    """The whole resolved config as plain containers (saved in checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)


def resolved_yaml(cfg: DictConfig) -> str:
    """The whole resolved config as YAML (each stage folder's config.yaml)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def open_stage_folder(cfg: DictConfig, name: str, command: str, fingerprint: str) -> StageFolder | None:
    """The stage folder `name` ready for a run (force: from scratch), or None when a finished run is reused.

    Under torchrun, call it after `Runtime.create` (it waits for every rank).
    """
    folder = StageFolder(stage_path(cfg, name), fingerprint)
    if not folder.prepare(resolved_yaml(cfg), force=run_settings(cfg).force):
        print(f"[{command}] {folder.path} is up to date")
        return None
    return folder
