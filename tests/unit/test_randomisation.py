"""Domain randomisation (the D arms): images from label maps alone, their arms and sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import _sphere_pv, settings_of

from brainspade.errors import BrainspadeError
from brainspade.generation.randomisation import randomised_images
from brainspade.segmentation.arms import ArmSpec, RandomisedSource


def _pv_maps(n: int = 4) -> np.ndarray:
    pv = np.moveaxis(_sphere_pv((24, 32, 1), radius=10)[:, :, 0], 2, 0)  # (C, H, W)
    return np.repeat(pv[None], n, axis=0)


def test_randomised_images_are_zscored_in_the_brain_and_depend_only_on_their_seed():
    pv = _pv_maps()
    settings = settings_of("randomisation")
    images = randomised_images(pv, [1, 2, 3, 1], settings)
    assert images.shape == (4, 24, 32) and images.dtype == np.float32 and np.isfinite(images).all()
    brain = pv[0, 0] < 0.5
    for image in images:
        assert abs(image[brain].mean()) < 1e-4 and image[brain].std() == pytest.approx(1, abs=1e-3)
    np.testing.assert_array_equal(images[0], images[3])  # same seed, same map: same image, whatever its batch
    assert not np.allclose(images[0], images[1])
    alone = randomised_images(pv[:1], [2], settings)
    np.testing.assert_array_equal(alone[0], images[1])


def test_randomised_tissue_contrast_varies_across_images():
    pv = _pv_maps(12)
    images = randomised_images(pv, list(range(12)), settings_of("randomisation", bias_field=0, noise_std=[0, 0]))
    gm, wm = pv[0, 2] > 0.9, pv[0, 3] > 0.9
    contrast = [image[wm].mean() - image[gm].mean() for image in images]
    assert min(contrast) < 0 < max(contrast)  # no contrast is privileged: WM darker than GM in some, brighter in others


def test_a_randomised_arm_parses_and_may_not_be_mixed_with_a_synthetic_set():
    arm = ArmSpec.from_dict("D", {"randomised": {"samples": "D", "labels_from": "S_iod"}})
    assert arm.generated == RandomisedSource("D", "S_iod") and arm.as_dict() == {
        "randomised": {"samples": "D", "labels_from": "S_iod"}}
    with pytest.raises(BrainspadeError, match="experiments.arms.X: give `real` and/or one of"):
        ArmSpec.from_dict("X", {"randomised": {"samples": "D", "labels_from": "S"},
                                "synthetic": {"samples": "S", "style_dataset": "a", "style_modality": "T1",
                                              "conditions": "healthy"}})
    with pytest.raises(BrainspadeError, match="experiments.arms.D.randomised: give samples, labels_from"):
        ArmSpec.from_dict("D", {"randomised": {"samples": "D"}})


def test_a_randomised_set_depends_on_its_sources_label_maps_not_on_how_its_images_were_made(tmp_path):
    """Two S sets with the same label key and size (e.g. before and after a new style path) give the D set one
    fingerprint; another size, another; a set without a key falls back to its whole fingerprint."""
    import json

    from brainspade.engine.stage import StageFolder
    from brainspade.generation.randomised_set import label_maps_fingerprint

    def sample_set(name: str, fingerprint: str, n: int, key: str | None) -> Path:
        folder = StageFolder(tmp_path / name, fingerprint)
        folder.prepare("", force=True)
        (folder.path / "dataset.json").write_text(json.dumps({"numTraining": n}))
        if key is not None:
            (folder.path / "label_key.txt").write_text(key + "\n")
        return folder.finish({"dataset": "dataset.json"})

    plain, transferred = sample_set("a", "f1", 40, "k"), sample_set("b", "f2", 40, "k")
    assert label_maps_fingerprint(plain) == label_maps_fingerprint(transferred)
    assert label_maps_fingerprint(sample_set("c", "f1", 80, "k")) != label_maps_fingerprint(plain)
    assert label_maps_fingerprint(sample_set("d", "f1", 40, "k2")) != label_maps_fingerprint(plain)
    assert label_maps_fingerprint(sample_set("e", "f3", 40, None)) != label_maps_fingerprint(sample_set("g", "f4", 40, None))
