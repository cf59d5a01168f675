"""`segment` on a folder treats each scan on its own: a bad scan costs one line and one row of failed.csv.

The network and the registration are stood in for (a threshold "segmenter" behind `segment_scan`): what is
tested is the folder's bookkeeping, whatever the model. The real model's accuracy is tests/stages/test_segment.py's.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_cli

from brainspade.segmentation import native
from brainspade.segmentation.native import ModelCard, NativeSegmentation

CHANNELS = ["background", "csf", "gm", "wm"]


def _threshold_segmentation(data, affine, segmenter, card, min_similarity, path, seed=0, through_plane_sigma_mm=0.0):
    """Labels 0-3 by intensity quartile: a stand-in for registration and nnU-Net that any readable scan passes."""
    edges = np.quantile(data, [0.25, 0.5, 0.75])
    return NativeSegmentation(np.digitize(data, edges).astype(np.uint8), {"tissue_similarity": 0.9, "start": "moments"})


@pytest.fixture
def stand_in_model(tmp_path, monkeypatch):
    """A model folder (model.json) whose segmenter is the threshold above; returns its path."""
    import brainspade.stages.segment as segment_stage

    folder = tmp_path / "model"
    folder.mkdir()
    ModelCard("R_iod", CHANNELS, 4, [16, 16], 0.1).save(folder)
    monkeypatch.setattr(native, "segment_scan", _threshold_segmentation)
    monkeypatch.setattr(segment_stage, "Segmenter", lambda *args, **kwargs: None)
    return folder


def _scan(path: Path, seed: int, shape=(12, 12, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).random(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def _segment(capsys, tmp_path, model, scans, output, *extra):
    return run_cli(capsys, "segment", f"workdir={tmp_path / 'w'}", "profile=tiny", f"model={model}",
                   f"input={scans}", f"output={output}", *extra)


def _errors(err: str) -> list[str]:
    """stderr without the progress bar's lines."""
    return [line for line in err.strip().splitlines() if not line.startswith("[segment]")]


def _table(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_folder_of_twenty_scans_with_two_broken_ones_segments_eighteen(capsys, tmp_path, stand_in_model):
    scans = tmp_path / "scans"
    for index in range(20):
        _scan(scans / f"sub-{index:02d}_T1w.nii.gz", index)
    (scans / "sub-03_T1w.nii.gz").write_bytes(b"not a nifti file")  # a broken transfer
    nib.save(nib.Nifti1Image(np.zeros((12, 12, 12), np.float32), np.eye(4)), str(scans / "sub-11_T1w.nii.gz"))
    output = tmp_path / "out"
    code, out, err = _segment(capsys, tmp_path, stand_in_model, scans, output)

    assert code == 1
    assert len(_errors(err)) == 1 and "2 of 20 scan(s) failed" in err and "failed.csv" in err
    failed_lines = [line for line in out.splitlines() if line.startswith("[segment] failed:")]
    assert len(failed_lines) == 2 and "sub-03_T1w.nii.gz" in failed_lines[0] and "sub-11_T1w.nii.gz" in failed_lines[1]
    assert "every voxel is 0.0" in failed_lines[1] and "Traceback" not in out + err
    assert len(list(output.glob("*_seg.nii.gz"))) == 18
    volumes = _table(output / "volumes.csv")
    assert len(volumes) == 18 and {"sub-03_T1w", "sub-11_T1w"}.isdisjoint(row["scan"] for row in volumes)
    failed = _table(output / "failed.csv")
    assert [row["scan"] for row in failed] == ["sub-03_T1w", "sub-11_T1w"]
    assert (output / "qc.png").stat().st_size > 0 and len(list((output / "qc").glob("*.png"))) == 18


def test_runs_into_one_folder_merge_their_rows_by_scan_and_drop_stale_ones(capsys, tmp_path, stand_in_model):
    output = tmp_path / "out"
    first, second = _scan(tmp_path / "a" / "first.nii.gz", 1), _scan(tmp_path / "b" / "second.nii.gz", 2)
    assert _segment(capsys, tmp_path, stand_in_model, first, output)[0] == 0
    assert _segment(capsys, tmp_path, stand_in_model, second, output)[0] == 0
    assert [row["scan"] for row in _table(output / "volumes.csv")] == ["first", "second"]

    # The same scan segmented again replaces its row; a label file deleted by the user takes its row with it.
    before = _table(output / "volumes.csv")[1]
    assert _segment(capsys, tmp_path, stand_in_model, second, output)[0] == 0
    assert _table(output / "volumes.csv")[1] == before
    (output / "first_seg.nii.gz").unlink()
    assert _segment(capsys, tmp_path, stand_in_model, second, output)[0] == 0
    assert [row["scan"] for row in _table(output / "volumes.csv")] == ["second"]
    assert not (output / "failed.csv").exists()


def test_two_runs_merging_into_one_folder_at_once_lose_no_row(tmp_path, stand_in_model, monkeypatch):
    """Two `segment` runs finishing together: each reads the folder's tables, adds its scan and writes them back;
    the folder lock makes the second read what the first wrote."""
    import threading
    import time

    output = tmp_path / "out"
    output.mkdir()
    read = native.read_table

    def slow_read(path):  # widens the window between a run's read and its write
        rows = read(path)
        time.sleep(0.3)
        return rows

    monkeypatch.setattr(native, "read_table", slow_read)
    runs = [threading.Thread(target=native.segment_files,
                             args=([_scan(tmp_path / name / f"{name}.nii.gz", seed)], output, None,
                                   ModelCard.load(stand_in_model), 0.1))
            for seed, name in enumerate(("first", "second"))]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert [row["scan"] for row in _table(output / "volumes.csv")] == ["first", "second"]


def test_two_scans_that_would_write_one_label_file_are_refused_before_work(capsys, tmp_path, stand_in_model):
    scans = tmp_path / "scans"
    _scan(scans / "scan.nii", 1)
    _scan(scans / "scan.nii.gz", 2)
    code, _, err = _segment(capsys, tmp_path, stand_in_model, scans, tmp_path / "out")
    assert code == 1 and len(_errors(err)) == 1
    assert "scan.nii" in err and "scan.nii.gz" in err and "scan_seg.nii.gz" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_work(capsys, tmp_path, stand_in_model, monkeypatch):
    output = tmp_path / "out"
    output.mkdir()
    output.chmod(0o555)
    calls = []
    monkeypatch.setattr(native, "segment_scan", lambda *args, **kwargs: calls.append(args))
    try:
        code, _, err = _segment(capsys, tmp_path, stand_in_model, _scan(tmp_path / "scan.nii.gz", 1), output)
    finally:
        output.chmod(0o755)
    assert code == 1 and "not writable" in err and len(_errors(err)) == 1
    assert calls == []


def test_a_read_only_output_folder_is_found_before_any_scan_is_read(tmp_path, monkeypatch):
    output = tmp_path / "out"
    monkeypatch.setattr(native.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(native.BrainspadeError, match=r"output=.*out: .* is not writable"):
        native.check_output_folder(output)
    assert not output.exists()


@pytest.mark.parametrize(("output", "words"), [("", "output='': give a path"), ("FILE", "is a file")])
def test_an_empty_or_file_output_is_refused_in_one_line(capsys, tmp_path, stand_in_model, output, words):
    if output == "FILE":
        output = str(tmp_path / "results.txt")
        Path(output).write_text("a file the user keeps")
    code, _, err = _segment(capsys, tmp_path, stand_in_model, _scan(tmp_path / "scan.nii.gz", 1), output)
    assert code in (1, 2) and words in err and len(_errors(err)) == 1 and "Traceback" not in err
    assert not list(Path.cwd().glob("scan_seg.nii*"))


def test_one_broken_scan_given_alone_is_one_line_naming_it(capsys, tmp_path, stand_in_model):
    path = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((12, 12, 12), np.float32), np.eye(4)), str(path))
    code, _, err = _segment(capsys, tmp_path, stand_in_model, path, tmp_path / "out")
    assert code == 1 and len(_errors(err)) == 1
    assert "empty.nii.gz: every voxel is 0.0" in err and "Traceback" not in err


def test_a_scan_that_fails_on_a_rerun_keeps_the_row_of_its_earlier_labels(capsys, tmp_path, stand_in_model):
    scans, output = tmp_path / "scans", tmp_path / "out"
    _scan(scans / "a.nii.gz", 1)
    _scan(scans / "b.nii.gz", 2)
    assert _segment(capsys, tmp_path, stand_in_model, scans, output)[0] == 0
    (scans / "b.nii.gz").write_bytes(b"overwritten by a failed copy")
    code, _, err = _segment(capsys, tmp_path, stand_in_model, scans, output)
    assert code == 1 and "b.nii.gz" in err
    assert [row["scan"] for row in _table(output / "volumes.csv")] == ["a", "b"]  # b's labels are still there
    assert [row["scan"] for row in _table(output / "failed.csv")] == ["b"]
    _scan(scans / "b.nii.gz", 3)
    assert _segment(capsys, tmp_path, stand_in_model, scans, output)[0] == 0
    assert not (output / "failed.csv").exists()
