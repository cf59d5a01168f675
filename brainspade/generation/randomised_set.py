"""SynthSeg-style images on the label maps of a finished sample set: the work of `brainspade sample-randomised`.

The set holds the *same* cases, PV maps and labels as its source set and images made by domain
randomisation (`generation.randomisation`). The experiments' D arms train on it, so S and D differ only in
how images are made. Case i's image depends only on (seed, i, its PV map, the settings); case files are
written atomically and skipped when present, so an interrupted run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from brainspade.engine.atomic import atomic_path, remove_stale_temporaries, write_text_atomic
from brainspade.engine.logging import progress
from brainspade.engine.seeding import derived_seed
from brainspade.engine.stage import StageFolder, config_fingerprint, finished_fingerprint, require_complete
from brainspade.generation.randomisation import RANDOMISED_IMAGE, randomised_images
from brainspade.generation.sample_set import LABEL_KEY
from brainspade.segmentation.raw_dataset import image_path, labels_from_pv, write_case, write_dataset_json
from brainspade.settings import RandomisationSettings


def label_maps_fingerprint(source: Path) -> str:
    """What the label maps of a finished sample set depend on: its label key and case count when it has a key (so a
    new image generator or style path for the S arm does not redo the D arm), else the set's whole fingerprint."""
    key = source / LABEL_KEY
    if not key.is_file():
        return finished_fingerprint(source)
    return config_fingerprint(key.read_text().strip(), json.loads((source / "dataset.json").read_text())["numTraining"])


def make_randomised_set(folder: Path, source: Path, settings: RandomisationSettings, *, seed: int = 0,
                        force: bool = False, config_yaml: str | None = None) -> Path:
    """Make (or finish) the randomised set in `folder` from the PV maps of the finished sample set `source`.

    Args:
        folder: the set's folder (W/samples/<name>).
        source: the finished sample set whose label maps are used.
        settings: the randomisation's ranges.
        seed: seeds every image (image i depends on seed, i and its PV map only).
        force: redo a set made with other settings instead of refusing it.
        config_yaml: the run's resolved config, saved in the folder.
    """
    source = require_complete(source, f"sample set {source.name}", f"sample name={source.name}")
    stage = StageFolder(folder, config_fingerprint(settings, seed, label_maps_fingerprint(source)))
    if stage.reusable(force):
        print(f"[sample-randomised] {folder} is up to date")
        return folder
    header = json.loads((source / "dataset.json").read_text())
    channels = sorted(header["labels"], key=header["labels"].get)
    cases = sorted(path.stem for path in (source / "pv").glob("*.npy"))
    stage.prepare(config_yaml, force=force)
    (folder / "pv").mkdir(exist_ok=True)
    remove_stale_temporaries(folder)  # what a killed run was writing

    rows = ["id,seed,labels_from"]
    for case in progress(cases, desc=f"sample-randomised {folder.name}", unit="pair"):
        sample_id = int(case.rsplit("_", 1)[1])
        image_seed = derived_seed(seed, sample_id, RANDOMISED_IMAGE)
        rows.append(f"{sample_id},{seed},{source.name}")
        if image_path(folder, case).is_file():  # written last: a present image marks a whole case
            continue
        pv = np.load(source / "pv" / f"{case}.npy")
        with atomic_path(folder / "pv" / f"{case}.npy") as tmp:
            np.save(tmp, pv)
        image = randomised_images(pv[None], [image_seed], settings, background=channels.index("background"))[0]
        write_case(folder, case, image, labels_from_pv(pv.astype(np.float32)))
    write_text_atomic(folder / "samples.csv", "\n".join(rows) + "\n")
    # The source's channel name: nnU-Net normalises by it, and the D arm must be read as the S arm is.
    write_dataset_json(folder, channels, header["channel_names"]["0"], len(cases))
    print(f"[sample-randomised] {len(cases)} pairs in {folder} (label maps of {source.name})")
    return stage.finish({"dataset": "dataset.json", "samples": "samples.csv", "pv_maps": "pv/"}, n=len(cases),
                        labels_from=source.name)
