"""Segmentation units: nnU-Net raw data sets, metrics, paired tests, stacking slices into volumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, settings_of

from brainspade.data.datasets import real_training_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.engine.stage import StageFolder
from brainspade.errors import BrainspadeError
from brainspade.segmentation import nnunet, raw_dataset
from brainspade.segmentation.arms import ArmSpec, RealSource, SyntheticSource, ensure_arm
from brainspade.segmentation.evaluation import Evaluation, stack_volumes
from brainspade.segmentation.nnunet import link_raw_dataset

CHANNELS = ["background", "csf", "gm", "wm", "tumour", "edema"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> SliceCache:
    from brainspade.cli import main

    workdir = tmp_path_factory.mktemp("cache")
    assert main(["prepare-data", f"workdir={workdir}", "profile=tiny"]) == 0
    return SliceCache.open(workdir / "slices")


def _write_toy_dataset(folder, n=3, bad_label=False):
    rng = np.random.default_rng(0)
    for k in range(n):
        pv = rng.dirichlet(np.ones(len(CHANNELS)), size=(12, 16)).transpose(2, 0, 1)
        label = raw_dataset.labels_from_pv(pv)
        if bad_label and k == 1:
            label[0, 0] = 9  # not a label id of dataset.json
        raw_dataset.write_case(folder, f"case_{k:03d}", rng.normal(size=(12, 16)).astype(np.float32), label)
    raw_dataset.write_dataset_json(folder, CHANNELS, "T1", n)


def test_raw_dataset_passes_nnunet_integrity_check_and_reads_back_2d(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    _write_toy_dataset(tmp_path / "good")
    verify_dataset_integrity(str(tmp_path / "good"), 1)
    # nnU-Net reads a case as one 2D slice (1, 1, H, W) whose through-plane spacing marks it as 2D.
    data, properties = SimpleITKIO().read_images([str(raw_dataset.image_path(tmp_path / "good", "case_000"))])
    assert data.shape == (1, 1, 12, 16) and properties["spacing"] == [999.0, 1.0, 1.0]
    image, label = raw_dataset.read_case(tmp_path / "good", "case_000")
    np.testing.assert_allclose(data[0, 0], image)
    assert label.dtype == np.uint8 and label.shape == (12, 16)
    # Only finished files are in the folders nnU-Net lists.
    assert sorted(p.name for p in (tmp_path / "good" / "imagesTr").iterdir()) == [
        f"case_{k:03d}_0000.nii.gz" for k in range(3)
    ]
    header = json.loads((tmp_path / "good" / "dataset.json").read_text())
    assert header["labels"] == {name: k for k, name in enumerate(CHANNELS)} and header["numTraining"] == 3

    _write_toy_dataset(tmp_path / "bad", bad_label=True)
    with pytest.raises(RuntimeError, match="unexpected labels"):
        verify_dataset_integrity(str(tmp_path / "bad"), 1)


def test_labels_from_pv_is_the_argmax_for_single_maps_and_batches():
    pv = np.zeros((2, 3, 2, 2), dtype=np.float32)
    pv[0, 2] = 1.0  # first map: every pixel channel 2
    pv[1, 0] = 1.0  # second map: background, except one pixel that is mostly channel 1
    pv[1, 0, 0, 0], pv[1, 1, 0, 0] = 0.4, 0.6
    labels = raw_dataset.labels_from_pv(pv)
    assert labels.dtype == np.uint8 and labels.shape == (2, 2, 2)
    assert (labels[0] == 2).all() and labels[1, 0, 0] == 1 and (labels[1].ravel()[1:] == 0).all()
    np.testing.assert_array_equal(raw_dataset.labels_from_pv(pv[0]), labels[0])
    with pytest.raises(ValueError):
        raw_dataset.labels_from_pv(np.zeros((4, 4)))


def test_write_case_refuses_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="same"):
        raw_dataset.write_case(tmp_path, "x", np.zeros((4, 5)), np.zeros((4, 4), dtype=np.uint8))


def test_export_real_slices_writes_the_cache_slices_and_their_argmax_labels(cache, tmp_path):
    indices = cache.image_indices(split="train", datasets=["siteA"])[:4]
    cases = raw_dataset.export_real_slices(cache, indices, tmp_path, cache.channels)
    assert cases == raw_dataset.case_ids(tmp_path)
    for case, index in zip(cases, indices, strict=True):
        image, label = raw_dataset.read_case(tmp_path, case)
        np.testing.assert_array_equal(image, cache.image(index))
        expected = raw_dataset.labels_from_pv(cache.pv_map(int(cache.image_table["label_index"][index])))
        np.testing.assert_array_equal(label, expected)


def test_few_volume_arm_uses_only_the_first_train_volumes(cache):
    chosen = real_training_indices(cache, "siteB", "T1", volumes=1)
    table = cache.image_table
    assert set(table["split"][chosen]) == {"train"}
    assert set(table["subject"][chosen]) == {"siteB_train_000"}
    everything = real_training_indices(cache, "siteB", "T1", volumes=None)
    assert set(table["subject"][everything]) == {"siteB_train_000", "siteB_train_001"}
    with pytest.raises(BrainspadeError, match="between 1 and 2"):
        real_training_indices(cache, "siteB", "T1", volumes=3)


def test_arm_sources_must_share_labels(tmp_path):
    _write_toy_dataset(tmp_path / "a")
    _write_toy_dataset(tmp_path / "b")
    header = json.loads((tmp_path / "b" / "dataset.json").read_text())
    header["labels"] = {"background": 0, "brain": 1}
    (tmp_path / "b" / "dataset.json").write_text(json.dumps(header))
    with pytest.raises(BrainspadeError, match="labels"):
        link_raw_dataset([tmp_path / "a", tmp_path / "b"], tmp_path / "raw" / "Dataset001_x")


def test_stack_volumes_orders_slices_by_subject_and_index():
    slices = [np.full((2, 2), value) for value in (30, 10, 20, 11, 12)]
    subjects = ["b", "a", "b", "a", "a"]
    slice_indices = [3, 0, 1, 7, 4]
    volumes = stack_volumes(slices, subjects, slice_indices)
    assert list(volumes) == ["a", "b"]
    volume, order = volumes["a"]
    assert volume.shape == (3, 2, 2) and order.tolist() == [0, 4, 7]
    assert volume[:, 0, 0].tolist() == [10, 12, 11]
    assert volumes["b"][0][:, 0, 0].tolist() == [20, 30]
    with pytest.raises(ValueError, match="twice"):
        stack_volumes(slices[:2], ["a", "a"], [1, 1])


def test_run_experiment_needs_the_slice_cache(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run-experiment", "iod", f"workdir={tmp_path}", "profile=tiny")
    assert code == 1 and "prepare-data" in err and err.count("\n") == 1


@pytest.mark.slow
def test_planning_and_preprocessing_use_threads_not_spawned_processes(cache, tmp_path, monkeypatch):
    # A spawned nnU-Net worker imports torch and nnunetv2 afresh (3-5 s each here) before reading one 2D slice.
    import io
    import multiprocessing

    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
    from nnunetv2.preprocessing.preprocessors import default_preprocessor

    from brainspade.segmentation import nnunet

    contexts = []
    get_context = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context", lambda method=None: contexts.append(method) or get_context(method))
    raw_dataset.export_real_slices(cache, cache.image_indices(split="train", datasets=["siteA"])[:6],
                                   tmp_path / "real", cache.channels)
    root = tmp_path / "nnunet"
    with nnunet.nnunet_environment(root):
        nnunet.link_raw_dataset([tmp_path / "real"], root / "raw" / nnunet.dataset_name("arm"))
        nnunet.plan_and_preprocess(root, 2, io.StringIO())
    preprocessed = root / "preprocessed" / nnunet.dataset_name("arm")
    assert (preprocessed / "nnUNetPlans.json").is_file() and (preprocessed / "dataset_fingerprint.json").is_file()
    assert len(list((preprocessed / "nnUNetPlans_2d").glob("*.pkl"))) == 6  # every case preprocessed
    assert contexts == []  # no process pool was started
    assert fingerprint_extractor.multiprocessing is multiprocessing  # nnU-Net's modules are left as they were
    assert default_preprocessor.multiprocessing is multiprocessing


def test_interrupted_nnunet_training_resumes_at_its_last_epoch(cache, tmp_path, monkeypatch):
    import io

    import torch

    from brainspade.segmentation import nnunet
    from brainspade.segmentation.trainer import BrainspadeTrainer

    raw_dataset.export_real_slices(cache, cache.image_indices(split="train", datasets=["siteA"])[:8],
                                   tmp_path / "real", cache.channels)
    settings = settings_of("segmentation", epochs=2, iterations_per_epoch=2, val_iterations_per_epoch=1, batch_size=2,
                           test_time_mirroring=False, processes=1, augmentation_processes=0)
    root, log = tmp_path / "nnunet", io.StringIO()
    finish_epoch = BrainspadeTrainer.on_epoch_end

    def crash_after_first_epoch(self):
        finish_epoch(self)
        raise KeyboardInterrupt  # as if the run were stopped after epoch 0 was saved

    with nnunet.nnunet_environment(root):
        nnunet.link_raw_dataset([tmp_path / "real"], root / "raw" / nnunet.dataset_name("arm"))
        nnunet.plan_and_preprocess(root, 1, log)
        monkeypatch.setattr(BrainspadeTrainer, "on_epoch_end", crash_after_first_epoch)
        with pytest.raises(KeyboardInterrupt):
            nnunet.train(root, "arm", settings, torch.device("cpu"), log, tmp_path)
        final = nnunet.final_checkpoint(root, "arm")
        assert not final.is_file() and final.with_name("checkpoint_latest.pth").is_file()
        assert not final.with_name("progress.png").is_file()  # drawn every 10 epochs and at the last only
        epochs_run = []

        def count_epochs(self):
            epochs_run.append(self.current_epoch)
            finish_epoch(self)

        monkeypatch.setattr(BrainspadeTrainer, "on_epoch_end", count_epochs)
        assert nnunet.train(root, "arm", settings, torch.device("cpu"), log, tmp_path) == final
    assert epochs_run == [1]  # the resumed run trained only the missing epoch
    assert final.with_name("progress.png").is_file()  # the last epoch draws nnU-Net's progress plot
    checkpoint = torch.load(final, map_location="cpu", weights_only=False)
    # The loss history continues the interrupted run's (one epoch before the stop, one after).
    assert checkpoint["current_epoch"] == 2
    assert len(checkpoint["logging"]["train_losses"]) == 2
    segmenter = nnunet.Segmenter(root, "arm", torch.device("cpu"), settings)
    labels = segmenter.segment_slices(cache.image(0)[None])[0]
    assert labels.shape == cache.size and labels.dtype == np.uint8 and labels.max() < len(cache.channels)


def test_slices_segmented_in_batches_get_the_labels_each_slice_gets_alone(cache, tmp_path):
    # Experiments, evaluate-generators and `segment` run the network on batches of slices: every slice must get what
    # nnU-Net's own one-slice prediction gives (crop, normalise, pad, half-precision logits, revert), mirroring
    # included. The network's sums may differ in their last bits with the batch size, which can move a half-precision
    # logit by one step: probabilities agree to that step, labels everywhere but at such a near-tie.
    import io

    import torch

    from brainspade.segmentation import nnunet

    raw_dataset.export_real_slices(cache, cache.image_indices(split="train", datasets=["siteA"])[:8],
                                   tmp_path / "real", cache.channels)
    settings = settings_of("segmentation", epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1, batch_size=2,
                           test_time_mirroring=True, processes=1, augmentation_processes=0)
    root = tmp_path / "nnunet"
    with nnunet.nnunet_environment(root):
        nnunet.link_raw_dataset([tmp_path / "real"], root / "raw" / nnunet.dataset_name("arm"))
        nnunet.plan_and_preprocess(root, 1, io.StringIO())
        nnunet.train(root, "arm", settings, torch.device("cpu"), io.StringIO(), tmp_path)
    segmenter = nnunet.Segmenter(root, "arm", torch.device("cpu"), settings)
    images = np.stack([cache.image(i) for i in cache.image_indices(split="test")[:37]]).astype(np.float32)
    images[3] = 0.0  # nothing to crop to
    images[4, :, : images.shape[2] // 2] = 0.0  # a crop off-centre in the tile

    def alone(image, probabilities=False):  # nnU-Net's own prediction of one slice
        return segmenter.predictor.predict_single_npy_array(image[None, None], {"spacing": list(nnunet.SPACING_2D)},
                                                            None, None, probabilities)

    one_at_a_time = np.stack([np.reshape(alone(image), image.shape) for image in images])
    assert len(np.unique(one_at_a_time)) > 1
    labels = segmenter.segment_slices(images, batch_size=16)
    assert labels.dtype == np.uint8 and np.mean(labels != one_at_a_time) < 1e-3
    softmax = np.stack([np.moveaxis(alone(image, True)[1][:, 0], 0, -1) for image in images])
    batched = segmenter.slice_probabilities(images, batch_size=16)
    assert batched.shape == (*images.shape, len(cache.channels))
    assert np.abs(batched - softmax).max() < 0.01  # a step of a half-precision logit near 4 moves a probability < 0.004
    assert np.array_equal(batched.argmax(axis=-1), labels)
    wider = np.pad(images[:3], ((0, 0), (0, 0), (0, 24)), constant_values=float(images.min()))  # more than one tile
    assert np.array_equal(segmenter.segment_slices(wider), np.stack([np.reshape(alone(image), image.shape) for image in wider]))


def test_demo_prints_each_evaluations_tables_without_models_or_figures(tmp_path):
    from brainspade.stages.demo import result_tables

    report = tmp_path / "report.md"
    report.write_text("\n".join([
        "# Experiment iod", "", "## Models", "", "| arm | trained on |", "|---|---|", "| R_iod | real |", "",
        "## iod: tested on siteA T1", "", "| arm | csf |", "|---|---|", "| R_iod | 0.9 ± 0.1 |", "",
        "![iod: per-volume scores](figures/iod_scores.png)", "## n-ood: tested on siteB T1", "| S | 0.8 |",
    ]))
    printed = result_tables(report)
    assert printed.startswith("## iod: tested on siteA T1")
    assert "| R_iod | 0.9 ± 0.1 |" in printed and "| S | 0.8 |" in printed
    assert "real |" not in printed and "![" not in printed


def test_the_demo_plan_gives_each_stage_ahead_its_recorded_minutes_for_this_machine_kind(tmp_path, monkeypatch):
    from brainspade.stages import demo
    from brainspade.stages.config import compose

    cfg = compose("demo", [f"workdir={tmp_path}", "profile=tiny", "+demo_minutes={train-label-vae: 20, ood: 30}"])
    (tmp_path / "slices").mkdir()
    (tmp_path / "slices" / "manifest.json").write_text("{}")  # a finished slice cache
    monkeypatch.setattr(demo, "machine_kind", lambda: ("2 CPU cores with AVX-512", demo.FAST_KIND))
    lines = demo.plan(cfg)
    assert lines[0] == "[demo] plan (profile tiny, 2 CPU cores with AVX-512):"
    rows = {line.split()[1] if "run-experiment" not in line else " ".join(line.split()[1:3]): line for line in lines[1:]}
    assert rows["prepare-data"].endswith("reused (finished)")
    assert rows["train-label-vae"].endswith("~10 min") and rows["run-experiment ood"].endswith("~15 min")
    assert rows["train-label-ldm"].endswith("no recorded time")
    assert lines[-1].split()[:4] == ["[demo]", "expected", "in", "all"] and "~25 min" in lines[-1]
    monkeypatch.setattr(demo, "machine_kind", lambda: ("GPU: the recorded CPU times do not apply", None))
    assert all("~" not in line for line in demo.plan(cfg))


def test_segmentation_imports_neither_stages_nor_config_objects_and_trainer_not_nnunet():
    """arms.py once imported `brainspade.stages` (upward) and nnunet.py / trainer.py imported each other."""
    code = (
        "import sys\n"
        "import brainspade.segmentation.trainer as trainer\n"
        "assert 'brainspade.segmentation.nnunet' not in sys.modules, 'trainer imports nnunet'\n"
        "import brainspade.segmentation.arms, brainspade.segmentation.experiment\n"
        "from brainspade.segmentation import nnunet\n"
        "assert nnunet.TRAINER == trainer.BrainspadeTrainer.__name__\n"
        "print(sorted(m for m in sys.modules if m.startswith('brainspade.stages')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    package = Path(__file__).parents[2] / "brainspade" / "segmentation"
    for source in package.glob("*.py"):
        text = source.read_text()
        assert "omegaconf" not in text and "DictConfig" not in text, source


def test_arm_and_evaluation_specs_parse_plain_config_and_refuse_malformed_ones(cache):
    both = {"real": {"dataset": "siteT", "modality": "FLAIR", "volumes": None},
            "synthetic": {"samples": "S_les", "style_dataset": "siteT", "style_modality": "FLAIR",
                          "conditions": "lesion", "synthesis": "published"}}
    spec = ArmSpec.from_dict("H_les", both)
    assert spec.real == RealSource("siteT", "FLAIR") and spec.synthetic.conditions == "lesion"
    assert spec.as_dict() == both  # the arm's fingerprint sees the config as written (trained arms stay valid)
    assert ArmSpec.from_dict("R", {"real": both["real"]}).as_dict() == {"real": both["real"]}
    with pytest.raises(BrainspadeError, match=r"experiments.arms.X: give `real` and/or one of `synthetic`"):
        ArmSpec.from_dict("X", {"reel": {}})
    with pytest.raises(BrainspadeError, match=r"experiments.arms.X.real: give dataset, modality, volumes"):
        ArmSpec.from_dict("X", {"real": {"dataset": "siteA", "modality": "T1", "subjects": 2}})
    longer = ArmSpec.from_dict("R_les", {"real": both["real"], "segmentation": {"epochs": 40}})
    assert longer.segmentation == {"epochs": 40} and longer.as_dict()["segmentation"] == {"epochs": 40}
    with pytest.raises(BrainspadeError, match=r"experiments.arms.X.segmentation: an arm may set .*; got processes"):
        ArmSpec.from_dict("X", {"real": both["real"], "segmentation": {"processes": 4}})
    with pytest.raises(BrainspadeError, match=r"experiments.arms.X: give `real`"):
        ArmSpec.from_dict("X", {"segmentation": {"epochs": 4}})  # training keys, but nothing to train on

    node = {"name": "iod", "test": {"dataset": "siteA", "modality": "T1"}, "arms": ["R_iod", "S_iod"],
            "classes": ["csf", "gm"], "lesion_metrics": False}
    evaluation = Evaluation.from_dict(node)
    assert evaluation.arms == ("R_iod", "S_iod") and evaluation.metrics == ["dice"]
    evaluation.check_classes(cache.channels)
    with pytest.raises(BrainspadeError, match="not foreground channels"):
        Evaluation.from_dict({**node, "classes": ["background"]}).check_classes(cache.channels)
    with pytest.raises(BrainspadeError, match="lacks 'test'"):
        Evaluation.from_dict({k: v for k, v in node.items() if k != "test"})


def test_ensure_arm_reuses_a_finished_arm_and_force_retrains_it_from_scratch(cache, tmp_path, monkeypatch):
    """The typed arm API end to end, with nnU-Net's preprocessing and training replaced by stand-ins."""
    import torch

    from brainspade.segmentation import nnunet

    trained = []

    def fake_train(root, arm, settings, device, log, tensorboard_folder):
        assert (root / "raw" / nnunet.dataset_name(arm) / "dataset.json").is_file()
        final = nnunet.final_checkpoint(root, arm)
        assert not final.is_file()  # a forced run never sees the previous run's checkpoint
        final.parent.mkdir(parents=True)
        final.write_bytes(b"weights")
        trained.append(settings.epochs)
        return final

    monkeypatch.setattr(nnunet, "plan_and_preprocess", lambda root, processes, log, **widths: None)
    monkeypatch.setattr(nnunet, "train", fake_train)
    spec = ArmSpec("R", real=RealSource("siteB", "T1", volumes=1))
    settings = settings_of("segmentation", epochs=3)

    def no_samples(source: SyntheticSource) -> Path:
        raise AssertionError("a real arm needs no synthetic samples")

    def ensure(force: bool):
        return ensure_arm(spec, tmp_path / "R", cache, settings, no_samples, seed=0, force=force,
                          device=torch.device("cpu"), config_yaml="seed: 0\n")

    first = ensure(force=False)
    assert trained == [3] and first.training["real"]["volumes"] == ["siteB_train_000"]
    assert (tmp_path / "R" / "config.yaml").read_text() == "seed: 0\n"
    assert ensure(force=False).fingerprint == first.fingerprint and trained == [3]  # reused
    assert ensure(force=True).fingerprint == first.fingerprint and trained == [3, 3]  # retrained


def test_arms_trained_two_at_a_time_finish_as_when_trained_alone_and_are_then_reused(cache, tmp_path, monkeypatch):
    """`experiments.parallel_arms=2`: two real arms train in worker processes, one thread each; a re-run reuses both."""
    import torch

    from brainspade.segmentation import arms as arms_module

    settings = settings_of("segmentation", epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1, batch_size=2,
                           base_features=4, max_features=8)
    specs = [ArmSpec("R1", real=RealSource("siteB", "T1", volumes=1)), ArmSpec("R2", real=RealSource("siteA", "T1"))]

    def ensure(at_once: int):
        return arms_module.ensure_arms(specs, tmp_path / "models", cache, {"R1": settings, "R2": settings},
                                       lambda source: None, seed=0, force=False, device=torch.device("cpu"),
                                       at_once=at_once)

    trained = ensure(at_once=2)
    assert list(trained) == ["R1", "R2"]
    for arm in trained.values():
        assert StageFolder(arm.folder, arm.fingerprint).is_complete()
        assert nnunet.final_checkpoint(arm.nnunet_root, arm.name).is_file()
    assert trained["R1"].training["real"]["volumes"] == ["siteB_train_000"]
    monkeypatch.setattr(arms_module.nnunet, "train", lambda *args, **kwargs: pytest.fail("a finished arm was retrained"))
    assert {name: arm.fingerprint for name, arm in ensure(at_once=2).items()} == \
        {name: arm.fingerprint for name, arm in trained.items()}


def test_case_sampling_gives_lesion_cases_the_asked_share_of_draws(tmp_path):
    from brainspade.segmentation import nnunet

    raw_dir = tmp_path / "raw" / nnunet.dataset_name("arm")
    rng = np.random.default_rng(0)
    for k in range(10):
        label = np.ones((12, 16), np.uint8)
        if k < 2:
            label[3:5, 3:5] = 4  # a lesion (label id 4) in 2 of 10 cases
        raw_dataset.write_case(raw_dir, f"case_{k:03d}", rng.normal(size=(12, 16)).astype(np.float32), label)
    probabilities = nnunet.write_case_sampling(tmp_path, "arm", [4, 5], 0.5)
    assert sum(probabilities.values()) == pytest.approx(1)
    assert probabilities["case_000"] + probabilities["case_001"] == pytest.approx(0.5)
    assert json.loads((tmp_path / nnunet.CASE_SAMPLING).read_text()) == probabilities
    assert nnunet.write_case_sampling(tmp_path, "arm", [4, 5], None) is None
    assert not (tmp_path / nnunet.CASE_SAMPLING).exists()  # uniform again: nothing left to mislead a resume
    assert nnunet.write_case_sampling(tmp_path, "arm", [7], 0.5) is None  # no case shows label 7


@pytest.mark.slow
def _siteT_trainer(cache, root, raw, settings, lesion_share=None):
    """An initialised BrainspadeTrainer on the cache's siteT FLAIR train slices, and its case probabilities."""
    import io

    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from brainspade.segmentation import nnunet
    from brainspade.segmentation.trainer import BrainspadeTrainer

    indices = cache.image_indices(split="train", datasets=["siteT"], modalities=["FLAIR"])
    raw_dataset.export_real_slices(cache, indices, raw, cache.channels)
    lesion_ids = [cache.channels.index(c) for c in cache.lesion_channels]
    with nnunet.nnunet_environment(root), nnunet.environment(nnUNet_n_proc_DA="0"):
        nnunet.link_raw_dataset([raw], root / "raw" / nnunet.dataset_name("arm"))
        probabilities = nnunet.write_case_sampling(root, "arm", lesion_ids, lesion_share)
        nnunet.plan_and_preprocess(root, 1, io.StringIO())
        preprocessed = root / "preprocessed" / nnunet.dataset_name("arm")
        plans = {**load_json(str(preprocessed / "nnUNetPlans.json")), "continue_training": False}
        trainer = BrainspadeTrainer(plans, "2d", "all", load_json(str(preprocessed / "dataset.json")),
                                    torch.device("cpu"))
        trainer.configure(settings, None, probabilities)
        trainer.initialize()
    return trainer, probabilities


def test_the_trainer_draws_lesion_slices_at_the_asked_share(cache, tmp_path):
    from brainspade.segmentation import nnunet
    from brainspade.segmentation.trainer import case_loader

    root = tmp_path / "nnunet"
    trainer, probabilities = _siteT_trainer(cache, root, tmp_path / "real",
                                            settings_of("segmentation", augmentation_processes=0), lesion_share=0.5)
    natural = sum(p > min(probabilities.values()) for p in probabilities.values()) / len(probabilities)
    assert natural < 0.4  # lesions are rare in the data itself
    with nnunet.nnunet_environment(root), nnunet.environment(nnUNet_n_proc_DA="0"):
        train, _ = trainer.get_dataloaders()
        lesion_cases = {case for case, p in probabilities.items() if p > min(probabilities.values())}
        np.random.seed(0)
        drawn = np.concatenate([case_loader(train).get_indices() for _ in range(300)])
    share = np.isin(drawn, list(lesion_cases)).mean()
    assert share == pytest.approx(0.5, abs=0.05)


def test_class_weights_make_a_missed_tumour_pixel_cost_more_in_the_cross_entropy_only(cache, tmp_path):
    import torch

    weighted, _ = _siteT_trainer(cache, tmp_path / "w", tmp_path / "real_w",
                                 settings_of("segmentation", augmentation_processes=0, class_weights={"tumour": 5.0}))
    plain, _ = _siteT_trainer(cache, tmp_path / "p", tmp_path / "real_p", settings_of("segmentation", augmentation_processes=0))
    labels = weighted.dataset_json["labels"]
    tumour = int(labels["tumour"])
    weights = weighted.loss.loss.ce.weight
    assert weights[tumour] == 5.0 and torch.all(weights[torch.arange(len(labels)) != tumour] == 1.0)
    assert plain.loss.loss.ce.weight is None  # nnU-Net's own loss when no weights are set
    # one tumour pixel predicted as background among background pixels predicted right
    logits = torch.full((1, len(labels), 2, 2), -4.0)
    logits[:, 0] = 4.0
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = tumour
    assert weighted.loss.loss.ce(logits, target) > 2 * plain.loss.loss.ce(logits, target)
    assert weighted.loss.loss.dc(logits, target) == pytest.approx(float(plain.loss.loss.dc(logits, target)))


def test_class_weights_naming_no_label_are_refused_before_any_training(cache, capsys):
    workdir = cache.folder.parent
    code, _, err = run_cli(capsys, "run-experiment", "iod", f"workdir={workdir}", "profile=tiny",
                           "segmentation.class_weights={tumor: 5}")
    assert code != 0 and "segmentation.class_weights: tumor is not a label" in err and err.count("\n") == 1
    assert not (workdir / "segmentation").exists()
    code, _, err = run_cli(capsys, "run-experiment", "iod", f"workdir={workdir}", "profile=tiny",
                           "segmentation.class_weights={tumour: 0}")
    assert code != 0 and "segmentation.class_weights={'tumour': 0.0}: every weight must be > 0" in err
