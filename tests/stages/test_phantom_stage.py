"""make-phantom and prepare-data through the CLI on the embedded phantom (profile=tiny)."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from conftest import run_cli

from brainspade.data.phantom import PHANTOM_SITES
from brainspade.data.slice_cache import SliceCache
from brainspade.stages.config import compose, section


@pytest.fixture(scope="module")
def phantom_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("w")


def test_make_phantom_writes_the_user_layout(capsys, phantom_workdir):
    code, out, err = run_cli(capsys, "make-phantom", f"workdir={phantom_workdir}", "profile=tiny")
    assert code == 0, err
    root = phantom_workdir / "phantom"
    assert out.strip().splitlines()[-1] == str(root)
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    # Target sites have dev subjects (for choosing settings) beside train and test; source sites need none.
    assert {(r["dataset"], r["split"]) for r in rows} == {
        *((site, split) for site in ("siteA", "siteT") for split in ("train", "test")),
        *((site, split) for site in ("siteB", "siteC", "siteN") for split in ("train", "dev", "test")),
    }
    assert {r["modality"] for r in rows if r["dataset"] == "siteN"} == {"T1"}
    for row in rows[:: max(1, len(rows) // 6)]:
        image = nib.load(str(root / row["image"]))
        labels = nib.load(str(root / row["labels"])).get_fdata()
        assert image.ndim == 3 and labels.shape == image.shape + (6,)
        np.testing.assert_allclose(labels.sum(axis=-1), 1, atol=1e-3)
        lesion = labels[..., 4:].sum()
        assert (lesion > 0) == (row["dataset"] == "siteT")
    assert (root / "overview.png").stat().st_size > 10_000


@pytest.mark.parametrize("profile", ["tiny", "cpu", "bench", "paper"])
def test_every_profile_gives_each_target_site_dev_subjects(profile):
    cfg = compose("make-phantom", [f"profile={profile}"])
    counts = section(cfg, "phantom").subjects_per_site
    assert set(counts) == set(PHANTOM_SITES)
    for site in section(cfg, "data").target_datasets:
        n_train, n_dev, n_test = counts[site]
        assert n_train > 0 and n_dev > 0 and n_test > 0, (profile, site, counts[site])


def test_prepare_data_caches_the_phantom(capsys, phantom_workdir):
    code, out, err = run_cli(capsys, "prepare-data", f"workdir={phantom_workdir}", "profile=tiny")
    assert code == 0, err
    cache = SliceCache.open(phantom_workdir / "slices")
    assert cache.channels == ["background", "csf", "gm", "wm", "tumour", "edema"]
    assert cache.images.shape[1:] == (48, 64)
    lesion = cache.label_table["lesion_tumour"] + cache.label_table["lesion_edema"]
    datasets = cache.label_table["dataset"]
    assert lesion[datasets != "siteT"].max() == 0
    assert lesion[datasets == "siteT"].max() > 0.01
    # siteT's T1 and FLAIR rows share their PV slices.
    t_rows = cache.image_indices(datasets=["siteT"])
    assert len(np.unique(cache.image_table["label_index"][t_rows])) * 2 == len(t_rows)
