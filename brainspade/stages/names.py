"""Names a user gives for folders of the workdir (sample sets, arms, models) are names, never paths.

`samples=../phantom` would make `evaluate-generators` write its report into W/phantom, and
`name=../label_vae` would make `sample` write into a trained stage: each name is checked to be one
folder name inside its own folder kind (W/samples, W/segmentation/models) before any work.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from brainspade.errors import BrainspadeError

MODEL_CARD = "model.json"  # what makes a folder a model folder (segmentation.native.MODEL_CARD)


def folder_name(key: str, value: object, kind: str) -> str:
    """`value` as one folder name inside `kind` (e.g. W/samples), refused in one line naming `key` otherwise."""
    name = str(value)
    if (not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or "\0" in name
            or name != name.strip()):
        raise BrainspadeError(f"{key}={value!r}: give the name of a folder in {kind} (no '/', '..', leading '.' "
                              "or surrounding spaces), not a path")
    return name


def named_folder(parent: Path, key: str, value: object) -> Path:
    """The folder `parent/value`, `value` checked to be one name (so the folder stays inside `parent`)."""
    return parent / folder_name(key, value, str(parent))


def is_model_path(model: str) -> bool:
    """Whether `model=` names a model folder by path (one holding model.json) rather than an arm of the workdir."""
    return (Path(model).expanduser() / MODEL_CARD).is_file()


def check_names(cfg: DictConfig) -> None:
    """Every folder name of the command's config is a name inside its folder kind (checked before work)."""
    samples = "W/samples"
    for key in ("name", "labels_from", "samples"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not OmegaConf.is_missing(cfg, key):
            folder_name(key, value, samples)
    if "model" in cfg and "input" in cfg and not OmegaConf.is_missing(cfg, "model"):
        model = str(cfg.model)
        if not is_model_path(model):
            if "/" in model or "\\" in model or model.startswith("~"):
                raise BrainspadeError(f"model={model!r}: {Path(model).expanduser()} holds no {MODEL_CARD}, and an arm "
                                      "of W/segmentation/models is given by its name, not a path; give a folder made "
                                      "by `segment export=` (or an arm's folder), or an arm's name")
            folder_name("model", model, "W/segmentation/models")
    arm = OmegaConf.select(cfg, "evaluation.segmenter_arm", default=None)
    if arm is not None:
        folder_name("evaluation.segmenter_arm", arm, "W/segmentation/models")
    arms = OmegaConf.select(cfg, "experiments.arms", default=None)
    for arm_name, spec in (arms or {}).items():
        folder_name(f"experiments.arms.{arm_name}", arm_name, "W/segmentation/models")
        for source in ("synthetic", "randomised"):
            for key in ("samples", "labels_from"):
                value = OmegaConf.select(spec, f"{source}.{key}", default=None) if spec else None
                if value is not None:
                    folder_name(f"experiments.arms.{arm_name}.{source}.{key}", value, samples)
