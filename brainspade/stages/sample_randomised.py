"""`brainspade sample-randomised labels_from=NAME`: SynthSeg-style images on the label maps of a sample set.

Writes W/samples/<name> (default `D_<labels_from>`), an nnU-Net raw data set with the *same*
cases, PV maps and labels as W/samples/<labels_from> and images made by domain randomisation
(generation/randomisation.py). The experiments' D arms train on it, so S and D differ only in
how images are made. Case i's image depends only on (seed, i, its PV map, the settings); case
files are written atomically and skipped when present, so an interrupted run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from brainspade.engine.atomic import atomic_path, remove_stale_temporaries, write_text_atomic
from brainspade.engine.logging import progress
from brainspade.engine.seeding import derived_seed
from brainspade.engine.stage import StageFolder, config_fingerprint, finished_fingerprint, require_complete
from brainspade.generation.randomisation import RANDOMISED_IMAGE, randomised_images
from brainspade.segmentation.raw_dataset import image_path, labels_from_pv, write_case, write_dataset_json
from brainspade.stages.config import resolved_yaml, run_settings, section, stage_path
from brainspade.stages.sample import LABEL_KEY


def run(cfg: DictConfig) -> Path:
    return make_randomised_samples(cfg, name=cfg.name, labels_from=str(cfg.labels_from))


def label_maps_fingerprint(source: Path) -> str:
    """What the label maps of a finished sample set depend on: its label key and case count when it has a key (so a
    new image generator or style path for the S arm does not redo the D arm), else the set's whole fingerprint."""
    key = source / LABEL_KEY
    if not key.is_file():
        return finished_fingerprint(source)
    return config_fingerprint(key.read_text().strip(), json.loads((source / "dataset.json").read_text())["numTraining"])


def make_randomised_samples(cfg: DictConfig, *, name: str | None, labels_from: str) -> Path:
    """Make (or finish) W/samples/<name> from the PV maps of the finished sample set W/samples/<labels_from>."""
    run_ = run_settings(cfg)
    settings = section(cfg, "randomisation")
    source = require_complete(stage_path(cfg, "samples") / labels_from, f"sample set {labels_from}",
                              f"sample name={labels_from}")
    name = name or f"D_{labels_from}"
    folder = StageFolder(stage_path(cfg, "samples") / name,
                         config_fingerprint(settings, run_.seed, label_maps_fingerprint(source)))
    if folder.reusable(run_.force):
        print(f"[sample-randomised] {folder.path} is up to date")
        return folder.path
    header = json.loads((source / "dataset.json").read_text())
    channels = sorted(header["labels"], key=header["labels"].get)
    cases = sorted(path.stem for path in (source / "pv").glob("*.npy"))
    folder.prepare(resolved_yaml(cfg), force=run_.force)
    (folder.path / "pv").mkdir(exist_ok=True)
    remove_stale_temporaries(folder.path)  # what a killed run was writing

    rows = ["id,seed,labels_from"]
    for case in progress(cases, desc=f"sample-randomised {name}", unit="pair"):
        sample_id = int(case.rsplit("_", 1)[1])
        seed = derived_seed(run_.seed, sample_id, RANDOMISED_IMAGE)
        rows.append(f"{sample_id},{run_.seed},{labels_from}")
        if image_path(folder.path, case).is_file():  # written last: a present image marks a whole case
            continue
        pv = np.load(source / "pv" / f"{case}.npy")
        with atomic_path(folder.path / "pv" / f"{case}.npy") as tmp:
            np.save(tmp, pv)
        image = randomised_images(pv[None], [seed], settings, background=channels.index("background"))[0]
        write_case(folder.path, case, image, labels_from_pv(pv.astype(np.float32)))
    write_text_atomic(folder.path / "samples.csv", "\n".join(rows) + "\n")
    # The source's channel name: nnU-Net normalises by it, and the D arm must be read as the S arm is.
    write_dataset_json(folder.path, channels, header["channel_names"]["0"], len(cases))
    print(f"[sample-randomised] {len(cases)} pairs in {folder.path} (label maps of {labels_from})")
    return folder.finish({"dataset": "dataset.json", "samples": "samples.csv", "pv_maps": "pv/"}, n=len(cases),
                         labels_from=labels_from)
