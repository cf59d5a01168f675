"""Reliability: the corpus of bad input, planted files and failing machines a demanding user tries.

Each case ends in one line naming the key or file and the fix, a non-zero exit, and nothing
half-written; or it is accepted where it is valid. The kill -9 resume checks live beside the
stages they interrupt (test_sample.py, test_label_stages.py, test_segmentation.py).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import shutil
import subprocess
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import folder_overrides, run_cli, settings_of

from brainspade.engine.atomic import atomic_folder, atomic_path
from brainspade.engine.checkpoint import load_checkpoint, load_nnunet_checkpoint, save_checkpoint
from brainspade.errors import BrainspadeError
from brainspade.generation.pairs import check_style_modality

# ------------------------------------------------------------------ planted checkpoints


class _RunsAShellCommand:
    """Pickles to `os.system(command)`: what a planted checkpoint would run when unpickled."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": _RunsAShellCommand(f"touch {marker}")}, path)
    return path


def test_a_planted_brainspade_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    planted = _plant(tmp_path / "label_vae" / "checkpoint.pt", marker)
    with pytest.raises(BrainspadeError, match=r"checkpoint\.pt: not a readable brainspade checkpoint \(it would import"):
        load_checkpoint(planted)
    assert not marker.exists()


def test_a_planted_nnunet_checkpoint_runs_no_code_in_prediction(tmp_path):
    from brainspade.segmentation.nnunet import Segmenter, final_checkpoint

    marker = tmp_path / "pwned"
    root = tmp_path / "models" / "S_iod" / "nnunet"
    planted = _plant(final_checkpoint(root, "S_iod"), marker)
    with pytest.raises(BrainspadeError, match="checkpoint_final.pth: not a readable nnU-Net checkpoint") as refused:
        Segmenter(root, "S_iod", torch.device("cpu"), settings_of("segmentation"))
    assert str(planted) in str(refused.value) and "retrain" in str(refused.value)
    assert not marker.exists()


def test_a_planted_nnunet_checkpoint_runs_no_code_when_training_resumes(tmp_path):
    from brainspade.segmentation.trainer import BrainspadeTrainer

    marker = tmp_path / "pwned"
    planted = _plant(tmp_path / "fold_all" / "checkpoint_latest.pth", marker)
    trainer = types.SimpleNamespace(device=torch.device("cpu"))  # refused before nnU-Net's own loader is reached
    with pytest.raises(BrainspadeError, match="not a readable nnU-Net checkpoint"):
        BrainspadeTrainer.load_checkpoint(trainer, str(planted))
    assert not marker.exists()


def test_nnunet_checkpoints_as_nnunet_writes_them_still_load(tmp_path):
    # nnU-Net stores its logged Dice values as numpy scalars next to the weights.
    state = {"network_weights": {"w": torch.ones(2)}, "_best_ema": np.float32(0.5),
             "logging": {"mean_fg_dice": [np.float32(0.4), np.float64(0.6)]}, "current_epoch": 3,
             "init_args": {"configuration": "2d", "fold": "all"}, "inference_allowed_mirroring_axes": (0, 1)}
    torch.save(state, tmp_path / "checkpoint_final.pth")
    loaded = load_nnunet_checkpoint(tmp_path / "checkpoint_final.pth")
    assert loaded["_best_ema"] == np.float32(0.5) and loaded["current_epoch"] == 3
    assert torch.equal(loaded["network_weights"]["w"], torch.ones(2))


# ------------------------------------------------------------------ bad config values


@pytest.mark.parametrize(
    ("command", "override", "words"),
    [
        ("train-label-vae", "seed=abc", "seed"),
        ("train-label-vae", "seed=1.5", "seed"),
        ("train-label-vae", "label_vae.steps=abc", "label_vae.steps"),
        ("train-label-vae", "label_vae.steps=-5", "label_vae.steps=-5: must be >= 1"),
        ("train-label-vae", "label_vae.steps=0", "label_vae.steps=0: must be >= 1"),
        ("train-label-vae", "label_vae.lr=fast", "label_vae.lr"),
        ("train-label-vae", "label_vae.lr=0", "label_vae.lr=0"),
        ("train-modisc", "modisc.augment.bias_field=-1", "modisc.augment.bias_field"),
        ("sample", "--n=abc", "n='abc'"),
        ("sample", "--n=2.5", "n=2.5"),
        ("sample", "--n=0", "n=0"),
        ("train-label-vae", "device=tpu", "device"),
    ],
)
def test_a_bad_value_fails_in_one_line_naming_its_key_before_any_work(capsys, tmp_path, command, override, words):
    args = [command, *override.split("=", 1)] if override.startswith("--") else [command, override]
    code, out, err = run_cli(capsys, *args, f"workdir={tmp_path / 'w'}", "profile=tiny")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()  # not even Hydra's logs: nothing ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_a_gpu_is_refused_before_work(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train-label-vae", "device=cuda", f"workdir={tmp_path / 'w'}", "profile=tiny")
    assert code == 2 and "device=cuda" in err and "device=cpu" in err


def test_a_workdir_that_is_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "w").write_text("not a folder")
    code, _, err = run_cli(capsys, "make-phantom", f"workdir={tmp_path / 'w'}", "profile=tiny")
    assert code == 2 and "is a file" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ data that would corrupt results


def _rows(root: Path) -> list[list[str]]:
    with (root / "manifest.csv").open(newline="") as handle:
        return list(csv.reader(handle))


def _write_rows(root: Path, rows: list[list[str]], encoding: str = "utf-8") -> None:
    with (root / "manifest.csv").open("w", newline="", encoding=encoding) as handle:
        csv.writer(handle).writerows(rows)


def _duplicate_row(root):
    rows = _rows(root)
    _write_rows(root, [*rows, rows[1]])


def _subject_in_two_splits(root):
    rows = _rows(root)
    extra = [*rows[1][:3], "test", rows[1][4], rows[1][5]]
    extra[0:3] = rows[1][0:3]
    extra[4] = "sub0_T1_copy.nii.gz"
    shutil.copy(root / "sub0_T1.nii.gz", root / "sub0_T1_copy.nii.gz")
    _write_rows(root, [*rows, extra])


def _constant_image(root):
    image = nib.load(str(root / "sub1_T1.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.float32), image.affine), str(root / "sub1_T1.nii.gz"))


def _other_voxel_size(root):
    for name in ("sub1_T1.nii.gz", "sub1_labels.nii.gz"):
        image = nib.load(str(root / name))
        affine = image.affine.copy()
        affine[:3, :3] /= 2  # 1 mm voxels among 2 mm ones: another field of view for the same slice size
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), str(root / name))


def _no_test_rows(root):
    rows = _rows(root)
    _write_rows(root, [rows[0], *[[*r[:3], "train", *r[4:]] for r in rows[1:]]])


def _only_test_rows(root):
    rows = _rows(root)
    _write_rows(root, [rows[0], *[[*r[:3], "test", *r[4:]] for r in rows[1:]]])


def _latin1_manifest(root):
    rows = _rows(root)
    rows[1][0] = "suj\u00e9t0"
    _write_rows(root, rows, encoding="latin-1")


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (_duplicate_row, "already listed on line 2"),
        (_subject_in_two_splits, "subject sub0 of mysite is test here but train on line 2"),
        (_constant_image, "sub1_T1.nii.gz: image is constant"),
        (_other_voxel_size, "sub1_T1.nii.gz has 1x1x1 mm voxels"),
        (_no_test_rows, "data set mysite has no test rows"),
        (_only_test_rows, "data set mysite has no train rows"),
        (_latin1_manifest, "not UTF-8"),
    ],
)
def test_data_that_would_corrupt_results_is_refused_and_keeps_the_old_cache(capsys, folder_dataset, tmp_path,
                                                                             damage, words):
    workdir = tmp_path / "w"
    assert run_cli(capsys, "prepare-data", *folder_overrides(folder_dataset, workdir))[0] == 0
    before = (workdir / "slices" / "images.npy").read_bytes()
    damage(folder_dataset)
    code, _, err = run_cli(capsys, "prepare-data", *folder_overrides(folder_dataset, workdir), "force=true")
    assert code == 1 and words in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (workdir / "slices" / "images.npy").read_bytes() == before
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".slices")] == []


def test_a_manifest_saved_with_a_byte_order_mark_is_read(capsys, folder_dataset, tmp_path):
    text = (folder_dataset / "manifest.csv").read_text()
    (folder_dataset / "manifest.csv").write_text(text, encoding="utf-8-sig")
    code, _, err = run_cli(capsys, "prepare-data", *folder_overrides(folder_dataset, tmp_path / "w"))
    assert code == 0, err
    from brainspade.data.slice_cache import SliceCache

    # The mark does not stick to the first column: every subject arrives, in the split the manifest gives it.
    table = SliceCache.open(tmp_path / "w" / "slices").image_table
    assert sorted(set(table["subject"].tolist())) == ["sub0", "sub1", "sub2"]
    assert set(table["subject"][table["split"] == "test"].tolist()) == {"sub2"}


# ------------------------------------------------------------------ failing machines


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    """A small RAM disk at `path` (root only, where mounting is allowed); the test is skipped otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root and a kernel that allows it")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_read_only_workdir_is_refused_in_one_line(capsys, tmp_path):
    with _tmpfs(tmp_path / "disk", "size=1m,ro") as disk:
        code, _, err = run_cli(capsys, "make-phantom", f"workdir={disk / 'w'}", "profile=tiny")
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1


def test_a_full_disk_ends_in_one_line_and_leaves_nothing_half_written(capsys, tmp_path):
    with _tmpfs(tmp_path / "disk", "size=1200k") as disk:  # Hydra's logs fit, the phantom does not
        code, _, err = run_cli(capsys, "make-phantom", f"workdir={disk / 'w'}", "profile=tiny")
        left = sorted(p.name for p in (disk / "w").iterdir())
    assert code == 1 and "No space left on device" in err and "free space" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert left == ["logs"]  # the phantom was built in a temporary folder, removed on failure


def test_a_disk_that_fills_while_writing_the_cache_keeps_the_old_cache(capsys, folder_dataset, tmp_path, monkeypatch):
    workdir = tmp_path / "w"
    assert run_cli(capsys, "prepare-data", *folder_overrides(folder_dataset, workdir))[0] == 0
    before = (workdir / "slices" / "images.npy").read_bytes()

    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("brainspade.data.prepare.np.save", full_disk)
    code, _, err = run_cli(capsys, "prepare-data", *folder_overrides(folder_dataset, workdir), "force=true")
    assert code == 1 and "No space left on device" in err and "images.npy" in err
    assert (workdir / "slices" / "images.npy").read_bytes() == before


def test_a_checkpoint_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    def failed_write(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr("brainspade.engine.checkpoint.torch.save", failed_write)
    with pytest.raises(BrainspadeError, match="could not write the checkpoint.*disk full"):
        save_checkpoint(tmp_path / "checkpoint.pt", step=1, models={"m": torch.nn.Linear(1, 1)})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ outputs others can read


@pytest.mark.parametrize(("umask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_written_files_and_folders_honour_the_umask(tmp_path, umask, file_mode, folder_mode):
    previous = os.umask(umask)
    try:
        with atomic_path(tmp_path / "a.npy") as tmp:
            np.save(tmp, np.zeros(3))
        with atomic_folder(tmp_path / "stage") as building:
            (building / "x.txt").write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.npy").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "stage").stat().st_mode & 0o777 == folder_mode


# ------------------------------------------------------------------ styles the classifier does not know


def test_a_style_modality_the_filter_cannot_accept_is_refused_and_warned_without_the_filter():
    with pytest.raises(BrainspadeError, match=r"style.modality=T2: the modality classifier knows only \['T1', 'FLAIR'\]"):
        check_style_modality("T2", ["T1", "FLAIR"], [])
    warning = check_style_modality("T2", None, ["T1", "FLAIR"])
    assert "T2" in warning and "T1/FLAIR verdict" in warning
    assert check_style_modality("T2", None, []) is None  # a code-only generator conditions on the image alone
    assert check_style_modality("T1", ["T1", "FLAIR"], ["T1", "FLAIR"]) is None
    # With the appearance input the warning says what still reaches the generator from a T2 image.
    warning = check_style_modality("T2", None, ["T1", "FLAIR"], ["q50", "log_noise"])
    assert "T1/FLAIR verdict" in warning and "appearance statistics (q50, log_noise)" in warning


@pytest.mark.slow
def test_sample_refuses_an_unknown_style_modality_before_writing(capsys, trained_workdir):
    style_folder = trained_workdir / "phantom" / "siteA"
    code, _, err = run_cli(capsys, "sample", "--n", "4", f"workdir={trained_workdir}", "profile=tiny",
                           f"style.folder={style_folder}", "style.modality=T2", "name=t2_styles")
    assert code == 1 and "style.modality=T2" in err and "sampling.modality_filter=false" in err
    assert not (trained_workdir / "samples" / "t2_styles").exists()


@pytest.mark.slow
def test_a_finished_sample_set_with_deleted_cases_is_remade(capsys, trained_workdir):
    args = ["sample", "--n", "4", f"workdir={trained_workdir}", "profile=tiny", "name=damaged"]
    assert run_cli(capsys, *args)[0] == 0
    folder = trained_workdir / "samples" / "damaged"
    assert not (folder / ".partial").exists()
    image, pv = folder / "imagesTr" / "syn_000002_0000.nii.gz", folder / "pv" / "syn_000002.npy"
    originals = image.read_bytes(), pv.read_bytes()
    image.unlink()
    pv.unlink()
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "missing; remaking them" in out
    assert (image.read_bytes(), pv.read_bytes()) == originals
    assert (folder / "manifest.json").is_file()
