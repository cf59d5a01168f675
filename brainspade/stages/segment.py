"""`brainspade segment model=ARM|FOLDER input=FILE|FOLDER`: a trained arm run on a lab's own scans.

Writes `<name>_seg.nii.gz` per scan (its shape and affine), `volumes.csv` and `qc.png` (from `qc/<name>.png`)
into `output`, each scan on its own: one that fails is one line and one row of `failed.csv`, the others are
segmented, and the command then exits non-zero. Colliding scan names and an output folder that cannot be
written are refused before any work. Given an arm name, the arm's folder in this workdir first gets its `model.json`
(schema, template resolution, slice geometry from the slice cache it was trained on);
`export=PATH` copies the model alone there, to be used elsewhere as `model=PATH`.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from brainspade.engine.runtime import select_device
from brainspade.engine.stage import require_complete
from brainspade.errors import BrainspadeError
from brainspade.segmentation.native import (
    FAILED,
    MODEL_CARD,
    VOLUMES,
    ModelCard,
    check_output_folder,
    check_scan_names,
    export_model,
    scan_files,
    segment_files,
)
from brainspade.segmentation.nnunet import Segmenter
from brainspade.settings import SegmentSettings
from brainspade.stages.checks import is_model_path, named_folder
from brainspade.stages.config import run_settings, section, stage_path


def run(cfg: DictConfig) -> Path:
    """Segment every scan of `input` with `model`; return the output folder."""
    settings: SegmentSettings = section(cfg, "", SegmentSettings)
    run_ = run_settings(cfg)
    files = scan_files(Path(settings.input).expanduser().resolve())
    output = Path(settings.output).expanduser().resolve()
    check_scan_names(files)  # before any work: colliding names and an output folder that cannot be written
    check_output_folder(output)
    folder = model_folder(cfg, settings.model)
    card = ModelCard.load(folder)
    if settings.export is not None:
        exported = export_model(folder, card, Path(settings.export).expanduser().resolve())
        print(f"[segment] model exported to {exported} (use it as model={exported})")
    segmentation = section(cfg, "segmentation")
    segmenter = Segmenter(folder / "nnunet", card.arm, select_device(run_.device), segmentation)
    done = segment_files(files, output, segmenter, card, section(cfg, "data").min_similarity, run_.seed,
                         segmentation.through_plane_sigma_mm)
    print(f"[segment] {len(done.rows)} scan(s) segmented with {card.arm}; volumes in {output / VOLUMES}")
    if len(done.failed) == 1 and len(files) == 1:
        raise BrainspadeError(f"{done.failed[0]['reason']} (listed in {output / FAILED})")
    if done.failed:
        names = ", ".join(Path(row["file"]).name for row in done.failed[:3]) + (" ..." if len(done.failed) > 3 else "")
        raise BrainspadeError(f"{len(done.failed)} of {len(files)} scan(s) failed ({names}: one line each above, "
                              f"listed in {output / FAILED}); the others are segmented in {output}")
    return output


def model_folder(cfg: DictConfig, model: str) -> Path:
    """A model folder: a path holding model.json, or an arm trained in this workdir (its card written if missing)."""
    if is_model_path(model):
        return Path(model).expanduser().resolve()
    # Otherwise an arm's name: a model card is written only into W/segmentation/models/<arm>, never elsewhere.
    arm_folder = named_folder(stage_path(cfg, "segmentation") / "models", "model", model)
    if not arm_folder.is_dir():
        raise BrainspadeError(f"model={model}: neither a model folder (with {MODEL_CARD}) nor an arm trained in "
                              f"{arm_folder.parent}; train it with run-experiment or give the folder's path")
    require_complete(arm_folder, f"arm {model}", "run-experiment")
    if not (arm_folder / MODEL_CARD).is_file():
        card_from_workdir(cfg, model).save(arm_folder)
    return arm_folder


def card_from_workdir(cfg: DictConfig, arm: str) -> ModelCard:
    """The card of an arm trained here: schema and slice geometry of the slice cache it trained on."""
    slices = require_complete(stage_path(cfg, "slices"), "slice cache", "prepare-data")
    schema = json.loads((slices / "schema.json").read_text())
    cache_config = OmegaConf.load(slices / "config.yaml")
    resolution = OmegaConf.select(cache_config, "data.template_resolution_mm")
    if resolution is None:  # a cache made before template_resolution_mm existed: the phantom's grid
        resolution = section(cfg, "data").template_resolution_mm
    return ModelCard(arm=arm, channels=list(schema["channels"]), template_resolution_mm=int(resolution),
                     slice_size=list(schema["size"]),
                     min_brain_fraction=float(OmegaConf.select(cache_config, "slices.min_brain_fraction")))
