"""Checks of the composed config beyond each value's type and range: names of workdir folders, memory bounds.

Names a user gives for folders of the workdir (sample sets, arms, models) are names, never paths:
`samples=../phantom` would make `evaluate-generators` write its report into W/phantom, and
`name=../label_vae` would make `sample` write into a trained stage. Each name is checked to be one folder
name inside its own folder kind (W/samples, W/segmentation/models) before any work.

Counts that size memory are checked against what the workdir's data and this machine can hold: the site look
is fitted on `sampling.site_look.reference_images` generated images held in memory at once, with as many
style slices, PV maps and baseline slices (100 million of them filled a machine's memory in a minute). Once
the workdir has its slice cache, the slice size and channel count give the need in bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from brainspade.data.nifti import available_memory_bytes
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


# Counts held in memory at once, with the slice planes each unit holds as float32 (C: the schema's channel count):
# a reference image of the site look holds its PV map, style slice, generated, baseline and fitted images; a
# validation sample of the label LDM its PV map, condition and floor PV map; an MS-SSIM pair two slices and
# the metric's five scales of each.
HELD_IN_MEMORY = {
    "sampling.site_look.reference_images": lambda channels: channels + 4,
    "label_ldm.eval_samples": lambda channels: 2 * channels + 1,
    "evaluation.ms_ssim_pairs": lambda channels: 12,
}
_SHARE_OF_AVAILABLE = 0.5  # the networks and the slice cache need the rest


def held_bytes(key: str, count: int, size: list[int], channels: int) -> int:
    return int(count) * int(size[0]) * int(size[1]) * HELD_IN_MEMORY[key](channels) * 4


def check_memory_bounds(cfg: DictConfig) -> None:
    """Each count of HELD_IN_MEMORY must fit in half the memory available, for the workdir's slices.

    Without a slice cache yet, each count's upper bound in the settings holds until the data exists.
    """
    schema_file = Path(str(cfg.workdir)).expanduser() / "slices" / "schema.json"
    if not schema_file.is_file():
        return
    schema = json.loads(schema_file.read_text())
    size, channels = schema["size"], len(schema["channels"])
    budget = int(available_memory_bytes() * _SHARE_OF_AVAILABLE)
    for key in HELD_IN_MEMORY:
        count = OmegaConf.select(cfg, key, default=None)
        if count is None:
            continue
        need = held_bytes(key, count, size, channels)
        if need > budget:
            raise BrainspadeError(
                f"{key}={count}: {count} of them on {size[0]}x{size[1]} slices with {channels} channels need about "
                f"{need / 2**30:.1f} GiB, and this machine has {budget * 2 / 2**30:.1f} GiB available; use at most "
                f"{budget // held_bytes(key, 1, size, channels)}")
