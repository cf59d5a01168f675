"""Engine: atomic writes, checkpoints that resume exactly, stage folders."""

from __future__ import annotations

import pytest
import torch

from brainspade.engine.atomic import atomic_path, remove_stale_temporaries, write_text_atomic
from brainspade.engine.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
from brainspade.engine.stage import StageFolder
from brainspade.errors import BrainspadeError


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    target = tmp_path / "table.csv"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def _train(model, optimizer, steps):
    for _ in range(steps):
        loss = model(torch.randn(4, 3)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_resume_continues_at_the_saved_step_with_the_same_optimiser_state(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, optimizer, 5)
    save_checkpoint(tmp_path / "c.pt", step=5, models={"net": model}, optimizers={"net": optimizer},
                    signature={"channels": ["bg", "wm"]})
    saved_moment = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    _train(model, optimizer, 3)  # the uninterrupted run goes on

    resumed = torch.nn.Linear(3, 2)
    optimizer_r = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    state = load_checkpoint(tmp_path / "c.pt", expected_signature={"channels": ["bg", "wm"]})
    step = restore_training_state(state, models={"net": resumed}, optimizers={"net": optimizer_r})
    assert step == 5
    assert optimizer_r.state_dict()["state"][0]["step"] == 5
    torch.testing.assert_close(optimizer_r.state_dict()["state"][0]["exp_avg"], saved_moment)
    _train(resumed, optimizer_r, 3)  # the RNG state was restored too, so the same batches are drawn
    torch.testing.assert_close(resumed.weight, model.weight)


def test_resume_with_another_learning_rate_keeps_the_moments_and_uses_the_new_rate(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, optimizer, 5)
    save_checkpoint(tmp_path / "c.pt", step=5, models={"net": model}, optimizers={"net": optimizer}, signature={})
    resumed = torch.nn.Linear(3, 2)
    lowered = torch.optim.Adam(resumed.parameters(), lr=1e-3)  # the rerun's config lowers the rate
    restore_training_state(load_checkpoint(tmp_path / "c.pt"), models={"net": resumed}, optimizers={"net": lowered})
    assert lowered.param_groups[0]["lr"] == 1e-3
    torch.testing.assert_close(lowered.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_checkpoint_for_another_schema_is_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / "c.pt", step=1, models={"net": model}, signature={"channels": ["bg", "wm"]})
    with pytest.raises(BrainspadeError, match="channels"):
        load_checkpoint(tmp_path / "c.pt", expected_signature={"channels": ["bg", "gm", "wm"]})


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    (tmp_path / "c.pt").write_bytes(b"garbage")
    with pytest.raises(BrainspadeError, match="not a readable"):
        load_checkpoint(tmp_path / "c.pt")


def test_stage_folder_is_complete_only_after_its_manifest(tmp_path):
    folder = StageFolder(tmp_path / "stage", "abc")
    assert folder.prepare() is True
    assert not folder.is_complete()
    (folder.path / "model.pt").write_bytes(b"weights")
    folder.finish({"model": "model.pt"})
    assert folder.is_complete() and folder.reusable(force=False)
    with pytest.raises(BrainspadeError, match="another config"):
        StageFolder(tmp_path / "stage", "other").reusable(force=False)


def test_a_finished_folder_whose_outputs_were_damaged_is_remade(tmp_path, capsys):
    folder = StageFolder(tmp_path / "stage", "abc")
    folder.prepare()
    (folder.path / "model.pt").write_bytes(b"weights")
    folder.finish({"model": "model.pt"})
    (folder.path / "model.pt").write_bytes(b"truncated")  # another size than when the stage finished
    assert not folder.reusable(force=False)
    (folder.path / "model.pt").unlink()
    assert not folder.reusable(force=False) and not folder.is_up_to_date()
    assert "model.pt missing or changed" in capsys.readouterr().out


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    import os

    dead = tmp_path / ".case.nii.gz.pid999999999.abc.tmp.nii.gz"
    live = tmp_path / f".case.nii.gz.pid{os.getpid()}.abc.tmp.nii.gz"
    dead.write_text("half")
    live.write_text("in progress")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not dead.exists() and live.exists()


def test_a_redirected_log_gets_progress_lines_with_rate_and_time_left():
    import io

    from brainspade.engine.logging import LogProgress

    log = io.StringIO()
    bar = LogProgress(total=4, desc="nnU-Net", unit="epoch", every=0.0, stream=log)
    for _ in range(4):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 4  # one per update, none repeated at the end; no carriage returns
    assert lines[1].startswith("[nnU-Net] 2/4 epoch (50%)") and " left" in lines[1] and "epoch" in lines[1]
    assert "0:00 left" in lines[-1]

    quiet = io.StringIO()
    slow = LogProgress(range(3), desc="sample", unit="pair", every=3600.0, stream=quiet)
    assert list(slow) == [0, 1, 2]
    ends = quiet.getvalue().splitlines()
    assert len(ends) == 1 and ends[0].startswith("[sample] 3/3 pair (100%)")  # within `every`, only the end


def test_the_heartbeat_names_the_innermost_activity_when_no_progress_line_comes(capsys):
    import time

    from brainspade.engine.logging import heartbeat

    with heartbeat("demo", every=0.2):
        with heartbeat("run-experiment ood", every=0.2):
            time.sleep(0.8)
    beats = [line for line in capsys.readouterr().err.splitlines() if line]
    assert beats and all(line.startswith("[run-experiment ood] still working") for line in beats)
    time.sleep(0.4)
    assert capsys.readouterr().err == ""  # the thread stops with the outermost block
