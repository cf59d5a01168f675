"""Shared test helpers: an in-process CLI runner and a small hand-made NIfTI data set."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from cache_reads import CacheReads, recording

from brainspade.cli import main
from brainspade.stages.config import compose, section

torch.set_num_threads(2)

FOLDER_CHANNELS = ["background", "csf", "gm", "wm"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `brainspade ARGS` in this process; return (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def settings_of(key: str, **values):
    """The typed settings of config section `key` as configs/ writes them (no profile), with `values` on top.

    Nested values are dicts merged key by key (`weights={"modality": 0.5}` keeps the other weights).
    """
    from omegaconf import OmegaConf, open_dict

    cfg = compose("sample", ["~profile"])  # configs/base.yaml holds every section
    with open_dict(cfg):
        cfg[key] = OmegaConf.merge(cfg[key], values)
    return section(cfg, key)


def disc_slice(noise: float = 0.02, seed: int = 0) -> torch.Tensor:
    """A z-scored disc 'brain' with three tissue levels on a zero background, plus noise inside."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    brain = (ys**2 + xs**2) < 0.7
    image = brain * (1.0 + (ys > 0) + 0.5 * (xs > 0.3))
    image = image + brain * noise * torch.randn(image.shape, generator=generator)
    values = image[brain]
    return ((image - values.mean()) / values.std())[None, None].float()


def _sphere_pv(shape: tuple[int, int, int], radius: float) -> np.ndarray:
    """Concentric tissue shells (csf outside, gm, wm core) with soft edges: a valid 4-channel PV map."""
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij"))
    distance = np.sqrt((grid**2).sum(axis=0))
    brain = np.clip(radius - distance + 0.5, 0, 1)
    wm = np.clip(radius * 0.5 - distance + 0.5, 0, 1)
    gm = np.clip(radius * 0.8 - distance + 0.5, 0, 1) - wm
    csf = brain - gm - wm
    pv = np.stack([1 - brain, csf, gm, wm], axis=-1).astype(np.float32)
    return pv / pv.sum(axis=-1, keepdims=True)


def write_folder_dataset(root: Path, n_subjects: int = 3, shape=(20, 20, 10)) -> Path:
    """Write a small valid data set (one site 'mysite', T1) in the user layout and return its root."""
    root.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    rows = []
    for i in range(n_subjects):
        pv = _sphere_pv(shape, radius=7 + i * 0.5)
        image = pv @ np.array([0.0, 0.2, 0.6, 1.0], dtype=np.float32)
        nib.save(nib.Nifti1Image(image, affine), str(root / f"sub{i}_T1.nii.gz"))
        nib.save(nib.Nifti1Image(pv, affine), str(root / f"sub{i}_labels.nii.gz"))
        split = "test" if i == n_subjects - 1 else "train"
        rows.append([f"sub{i}", "mysite", "T1", split, f"sub{i}_T1.nii.gz", f"sub{i}_labels.nii.gz"])
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "dataset", "modality", "split", "image", "labels"])
        writer.writerows(rows)
    return root


def folder_overrides(root: Path, workdir: Path) -> list[str]:
    return [
        f"workdir={workdir}",
        "data=folder",
        f"data.root={root}",
        "data.source_datasets=[mysite]",
        "slices.size=[16,16]",
        "slices.every=1",
        "profile=tiny",
    ]


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return write_folder_dataset(tmp_path / "data")


TRAINING_COMMANDS = ("train-label-vae", "train-label-ldm", "train-modisc", "train-image-generator")


def _run(command: str, workdir: Path) -> None:
    try:
        code = main([command, f"workdir={workdir}", "profile=tiny"])
    except SystemExit as exit_:
        code = exit_.code
    assert code in (0, None), f"{command} failed while preparing a shared tiny workdir"


@pytest.fixture(scope="session")
def tiny_slices(tmp_path_factory) -> Path:
    """A workdir holding the tiny phantom and its slice cache, made once per test session.

    Tests that train their own generators copy its `slices/` (`workdir_with_slices`) instead of
    rebuilding the phantom.
    """
    workdir = tmp_path_factory.mktemp("slices")
    _run("prepare-data", workdir)
    return workdir


def workdir_with_slices(tiny_slices: Path, workdir: Path) -> Path:
    """A new workdir with a copy of the shared slice cache (and phantom), ready for the training stages."""
    for name in ("phantom", "slices"):
        shutil.copytree(tiny_slices / name, workdir / name)
    return workdir


@pytest.fixture(scope="session")
def trained_workdir(tiny_slices, tmp_path_factory) -> Path:
    """A workdir with the phantom, its slice cache and all four generators trained at profile=tiny.

    Trained once per test session and shared by the sampling, experiment and stage-contract tests.
    """
    workdir = workdir_with_slices(tiny_slices, tmp_path_factory.mktemp("trained"))
    with recording(TRAINING_READS):  # what each training stage reads, for the data-access test
        for command in TRAINING_COMMANDS:
            TRAINING_READS.phase = command
            _run(command, workdir)
    return workdir


TRAINING_READS = CacheReads()


@pytest.fixture(scope="session")
def training_reads(trained_workdir) -> CacheReads:
    """The slice-cache rows each training stage of `trained_workdir` read (phases: the commands)."""
    return TRAINING_READS


def markdown_rows(report: str, title: str) -> list[list[str]]:
    """The cells of each row of the first markdown table after the heading `title` of a report."""
    lines = report[report.index(title):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def markdown_table(report: str, title: str) -> dict[str, list[str]]:
    """The same table as {first cell: other cells} (for tables whose first cells differ)."""
    return {cells[0]: cells[1:] for cells in markdown_rows(report, title)}
