"""Reliability of what a user shares and names: model folders, names inside the workdir, numbers and headers.

A shared model folder's nnU-Net files are data (no name in them reaches code nnU-Net does not ship); a name
given for a folder of the workdir stays in its own folder kind; every float is finite and every count that
sizes memory is bounded by what the data holds; a NIfTI header is checked before its voxels are allocated.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import run_cli, settings_of

from brainspade.errors import BrainspadeError
from brainspade.segmentation.model_files import read_dataset_json, read_plans
from brainspade.segmentation.native import ModelCard
from brainspade.segmentation.nnunet import PLANS, dataset_name, final_checkpoint, results_folder

ARM = "S_iod"
CHANNELS = ["background", "csf", "gm", "wm"]

# ------------------------------------------------------------------ planted plans


def _architecture() -> dict:
    """The architecture node nnU-Net's 2D planner writes (a small PlainConvUNet)."""
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv2d",
            "kernel_sizes": [[3, 3], [3, 3]], "strides": [[1, 1], [2, 2]], "n_conv_per_stage": [1, 1],
            "n_conv_per_stage_decoder": [1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _plans(architecture: dict) -> dict:
    return {"dataset_name": dataset_name(ARM), "plans_name": PLANS, "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "original_median_spacing_after_transp": [999.0, 1.0, 1.0],
            "original_median_shape_after_transp": [1, 16, 16],
            "configurations": {"2d": {
                "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
                "patch_size": [16, 16], "spacing": [1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
                "architecture": architecture}}}


def _hub_architecture(hub: Path, marker: Path) -> dict:
    """What a planted plans file names instead of a U-Net: torch.hub.load of a local hubconf.py that writes `marker`."""
    hub.mkdir(parents=True, exist_ok=True)
    (hub / "hubconf.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n\n\n"
                                    "def entry(**kwargs):\n    return None\n")
    return {"network_class_name": "torch.hub.load",
            "arch_kwargs": {"repo_or_dir": str(hub), "model": "entry", "source": "local", "trust_repo": True},
            "_kw_requires_import": []}


DATASET_JSON = {"channel_names": {"0": "T1"}, "labels": {name: i for i, name in enumerate(CHANNELS)},
                "file_ending": ".nii.gz", "numTraining": 1}


def _model_folder(folder: Path, architecture: dict) -> Path:
    """A model folder as `segment export=` writes it (model.json, plans, dataset.json, weights-only checkpoint)."""
    results = results_folder(folder / "nnunet", ARM)
    results.mkdir(parents=True)
    (results / "plans.json").write_text(json.dumps(_plans(architecture)))
    (results / "dataset.json").write_text(json.dumps(DATASET_JSON))
    checkpoint = final_checkpoint(folder / "nnunet", ARM)
    checkpoint.parent.mkdir(parents=True)
    torch.save({"network_weights": {}, "init_args": {"configuration": "2d"}, "trainer_name": "BrainspadeTrainer",
                "inference_allowed_mirroring_axes": (0, 1)}, checkpoint)
    ModelCard(ARM, CHANNELS, 4, [16, 16], 0.1).save(folder)
    return folder


def test_a_planted_plans_file_runs_no_code_in_prediction(tmp_path):
    from brainspade.segmentation.nnunet import Segmenter

    marker = tmp_path / "pwned"
    folder = _model_folder(tmp_path / "shared_model", _hub_architecture(tmp_path / "hub", marker))
    with pytest.raises(BrainspadeError, match=r"plans\.json: configurations\.2d\.architecture\.network_class_name="
                                              r"'torch\.hub\.load' is not an architecture nnU-Net plans"):
        Segmenter(folder / "nnunet", ARM, torch.device("cpu"), settings_of("segmentation"))
    assert not marker.exists()


def test_a_planted_plans_file_is_refused_by_segment_and_export_before_any_copy(capsys, tmp_path):
    marker = tmp_path / "pwned"
    folder = _model_folder(tmp_path / "shared_model", _hub_architecture(tmp_path / "hub", marker))
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(scan))
    code, _, err = run_cli(capsys, "segment", f"workdir={tmp_path / 'w'}", "profile=tiny", f"model={folder}",
                           f"input={scan}", f"output={tmp_path / 'out'}", f"export={tmp_path / 'exported'}")
    assert code == 1 and "plans.json" in err and "network_class_name='torch.hub.load'" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "exported").exists()  # a folder that could not be used is not passed on


def test_a_planted_plans_file_runs_no_code_when_training_resumes(tmp_path):
    from brainspade.segmentation.nnunet import train

    marker = tmp_path / "pwned"
    root = tmp_path / "models" / ARM / "nnunet"
    preprocessed = root / "preprocessed" / dataset_name(ARM)
    preprocessed.mkdir(parents=True)
    (preprocessed / f"{PLANS}.json").write_text(json.dumps(_plans(_hub_architecture(tmp_path / "hub", marker))))
    (preprocessed / "dataset.json").write_text(json.dumps(DATASET_JSON))
    with pytest.raises(BrainspadeError, match="network_class_name='torch.hub.load'"):
        train(root, ARM, settings_of("segmentation"), torch.device("cpu"), io.StringIO(), tmp_path / "tb")
    assert not marker.exists()


def _imports(layer: str, value: str) -> dict:
    architecture = _architecture()
    architecture["arch_kwargs"][layer] = value
    return architecture


def _extra_argument(name: str, value) -> dict:
    architecture = _architecture()
    architecture["arch_kwargs"][name] = value
    return architecture


def _imports_another_key(key: str) -> dict:
    architecture = _architecture()
    architecture["arch_kwargs"][key] = "os.system"
    architecture["_kw_requires_import"].append(key)
    return architecture


@pytest.mark.parametrize(("architecture", "words"), [
    (_imports("nonlin", "os.system"), "arch_kwargs.nonlin='os.system' is not a layer nnU-Net plans"),
    (_imports("conv_op", "torch.hub.load"), "arch_kwargs.conv_op='torch.hub.load' is not a layer"),
    (_extra_argument("source", "local"), "arch_kwargs.source: PlainConvUNet takes no such argument"),
    (_imports_another_key("features_per_stage"), "'features_per_stage' is not a layer nnU-Net imports by name"),
])
def test_a_plans_file_importing_anything_but_nnunet_layers_is_refused_by_key(tmp_path, architecture, words):
    (tmp_path / "plans.json").write_text(json.dumps(_plans(architecture)))
    with pytest.raises(BrainspadeError, match="plans.json: configurations.2d.") as refused:
        read_plans(tmp_path / "plans.json")
    assert words in str(refused.value)


def test_a_plans_file_naming_code_outside_nnunet_by_any_other_key_is_refused(tmp_path):
    plans = _plans(_architecture())
    plans["configurations"]["2d"]["preprocessor_name"] = "os.system"
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(BrainspadeError, match=r"configurations\.2d\.preprocessor_name='os\.system' is not the bare"):
        read_plans(tmp_path / "plans.json")
    header = {**DATASET_JSON, "overwrite_image_reader_writer": "subprocess.Popen"}
    (tmp_path / "dataset.json").write_text(json.dumps(header))
    with pytest.raises(BrainspadeError, match="dataset.json: overwrite_image_reader_writer='subprocess.Popen'"):
        read_dataset_json(tmp_path / "dataset.json")


def test_plans_as_nnunet_writes_them_are_accepted_and_build_the_network(tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from brainspade.segmentation.trainer import BrainspadeTrainer

    (tmp_path / "plans.json").write_text(json.dumps(_plans(_architecture())))
    manager = PlansManager(read_plans(tmp_path / "plans.json"))
    network = BrainspadeTrainer.build_network_architecture(manager, manager.get_configuration("2d"), 1, 4,
                                                           enable_deep_supervision=False)
    assert network(torch.zeros(1, 1, 16, 16)).shape == (1, 4, 16, 16)


def test_a_model_card_that_is_not_data_of_its_types_is_refused(tmp_path):
    ModelCard(ARM, CHANNELS, 4, [16, 16], 0.1).save(tmp_path)
    card = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**card, "min_brain_fraction": "nan"}))
    with pytest.raises(BrainspadeError, match="model.json: min_brain_fraction='nan' is not a valid value"):
        ModelCard.load(tmp_path)


# ------------------------------------------------------------------ names are names, not paths


@pytest.mark.parametrize(("command", "overrides", "key"), [
    ("evaluate-generators", ["samples=../samples/S_les"], "samples"),
    ("evaluate-generators", ["samples=../phantom"], "samples"),
    ("sample", ["--n=4", "name=../label_vae"], "name"),
    ("sample-randomised", ["labels_from=../phantom"], "labels_from"),
    ("sample-randomised", ["labels_from=S_iod", "name=../../elsewhere"], "name"),
    ("segment", ["model=../../label_vae", "input=scan.nii.gz"], "model"),
    ("evaluate-generators", ["evaluation.segmenter_arm=../../label_vae"], "evaluation.segmenter_arm"),
    ("run-experiment", ["experiments.arms.S_iod.synthetic.samples=../../label_vae"],
     "experiments.arms.S_iod.synthetic.samples"),
])
def test_a_name_that_is_a_path_is_refused_by_its_key_before_any_work(capsys, tmp_path, command, overrides, key):
    workdir = tmp_path / "w"
    code, _, err = run_cli(capsys, command, *overrides, f"workdir={workdir}", "profile=tiny")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and f"{key}=" in err and "not a path" in err
    assert not workdir.exists()  # nothing ran, not even Hydra's logs


def test_segment_given_another_stage_folder_as_model_writes_nothing_into_it(capsys, trained_label_vae_like):
    workdir, label_vae = trained_label_vae_like
    for model in (str(label_vae), "../label_vae"):
        code, _, err = run_cli(capsys, "segment", f"workdir={workdir}", "profile=tiny", f"model={model}",
                               f"input={workdir / 'scan.nii.gz'}", f"output={workdir / 'out'}")
        assert code == 2 and "model=" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in label_vae.iterdir()) == ["checkpoint.pt", "manifest.json"]


@pytest.fixture
def trained_label_vae_like(tmp_path):
    """A workdir whose W/label_vae looks finished (a manifest), as `segment model=` might be pointed at."""
    workdir = tmp_path / "w"
    label_vae = workdir / "label_vae"
    label_vae.mkdir(parents=True)
    (label_vae / "manifest.json").write_text("{}")
    (label_vae / "checkpoint.pt").write_bytes(b"")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(workdir / "scan.nii.gz"))
    return workdir, label_vae


# ------------------------------------------------------------------ finite numbers, bounded counts


@pytest.mark.parametrize(("command", "override", "words"), [
    ("segment", "data.min_similarity=nan", "data.min_similarity=nan: must be a finite number"),
    ("evaluate-generators", "evaluation.memorisation_flag_share=nan", "evaluation.memorisation_flag_share=nan"),
    ("sample", "sampling.site_look.blurs=[nan]", "sampling.site_look.blurs=[nan]: must be a finite number"),
    ("sample", "sampling.site_look.generator_texture=nan", "sampling.site_look.generator_texture=nan"),
    ("train-label-vae", "label_vae.lr=inf", "label_vae.lr=inf: must be a finite number"),
    ("run-experiment", "segmentation.class_weights={tumour: nan}", "segmentation.class_weights="),
    ("train-label-vae", "+label_vae.model.dropout=nan", "label_vae.model="),
    ("sample", "sampling.site_look.blurs=[]", "sampling.site_look.blurs=[]: give one or more candidate blurs"),
    ("sample", "sampling.site_look.reference_images=100000000", "sampling.site_look.reference_images=100000000"),
])
def test_a_value_no_range_can_hold_is_refused_by_its_key_before_any_work(capsys, tmp_path, command, override, words):
    extra = ["model=R_iod", "input=scan.nii.gz"] if command == "segment" else []
    code, _, err = run_cli(capsys, command, override, *extra, f"workdir={tmp_path / 'w'}", "profile=tiny")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "w").exists()


def test_every_float_setting_is_refused_when_not_finite():
    # One check for every field of every settings class, nested ones included.
    for key, values in [("data", {"pv_tolerance": float("nan")}), ("label_sampling", {"eta": float("inf")}),
                        ("image_generator", {"weights": {"kl": float("nan")}}),
                        ("randomisation", {"tissue_mean": [0.0, float("nan")]})]:
        with pytest.raises(BrainspadeError, match="must be a finite number"):
            settings_of(key, **values)


def test_reference_images_beyond_the_memory_the_machine_has_are_refused_before_work(capsys, tmp_path, monkeypatch):
    from brainspade.stages import checks as bounds

    slices = tmp_path / "w" / "slices"
    slices.mkdir(parents=True)
    (slices / "schema.json").write_text(json.dumps({"channels": CHANNELS, "lesion_channels": [], "size": [64, 64]}))
    monkeypatch.setattr(bounds, "available_memory_bytes", lambda: 2**30)  # 1 GiB: half of it for the fit
    args = ["sample", "--n", "4", f"workdir={tmp_path / 'w'}", "profile=tiny"]
    # 64 x 64 slices with 4 channels: 128 KiB per reference image, so 4096 fit in 512 MiB and 5000 do not.
    code, _, err = run_cli(capsys, *args, "sampling.site_look.reference_images=5000")
    assert code == 2 and "sampling.site_look.reference_images=5000" in err and "use at most 4096" in err, err
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["slices"]
    bounds.check_memory_bounds(compose_config("sample", tmp_path / "w", "sampling.site_look.reference_images=4096"))
    # The label LDM's validation samples are held alike (a PV map, its condition and a floor PV map each).
    code, _, err = run_cli(capsys, "train-label-ldm", f"workdir={tmp_path / 'w'}", "profile=tiny",
                           "label_ldm.eval_samples=5000")
    assert code == 2 and "label_ldm.eval_samples=5000" in err and "use at most 3640" in err, err


def compose_config(command: str, workdir: Path, *overrides: str):
    from brainspade.stages.config import compose

    return compose(command, [f"workdir={workdir}", "profile=tiny", *overrides])


# ------------------------------------------------------------------ headers before allocation


def _lying_header(path: Path, shape=(2000, 2000, 2000)) -> Path:
    """A 1 KB .nii whose header claims `shape` float32 voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\0" * 4 + np.zeros(160, np.float32).tobytes())
    return path


def test_a_header_claiming_more_voxels_than_the_file_holds_is_refused_unread(tmp_path):
    import tracemalloc

    from brainspade.data.nifti import load_canonical
    from brainspade.segmentation.native import load_scan

    path = _lying_header(tmp_path / "sub0_T1.nii")
    assert path.stat().st_size < 1024
    tracemalloc.start()
    for load in (load_canonical, load_scan):
        with pytest.raises(BrainspadeError, match=r"sub0_T1\.nii: its header claims 2000x2000x2000 voxels"):
            load(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20  # refused from the header: the 32 GB it asks for were never allocated


def test_a_scan_larger_than_the_memory_available_is_refused_from_its_header(tmp_path, monkeypatch):
    from brainspade.data import nifti
    from brainspade.segmentation.native import load_scan

    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 40, 40)).astype(np.float32), np.eye(4)), str(path))
    monkeypatch.setattr(nifti, "available_memory_bytes", lambda: 200_000)  # 256 KB needed, 100 KB allowed
    with pytest.raises(BrainspadeError, match=r"scan\.nii\.gz: its 40x40x40 voxels need .* crop or resample"):
        load_scan(path)
    monkeypatch.undo()
    assert load_scan(path)[1].shape == (40, 40, 40)


# ------------------------------------------------------------------ make-manifest on BIDS folders


def _tiny_bids(root, visits, labels_in):
    """Small images for (subject, session) `visits` and a label file in each folder of `labels_in`."""
    for subject, session in visits:
        anat = root / subject / (session or "") / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        name = "_".join(p for p in (subject, session) if p)
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(anat / f"{name}_T1w.nii.gz"))
    for folder in labels_in:
        (root / "derivatives" / "freesurfer" / folder).mkdir(parents=True, exist_ok=True)
        (root / "derivatives" / "freesurfer" / folder / "aparc+aseg.mgz").write_bytes(b"")
    return root


def test_a_subject_label_in_any_script_is_kept(capsys, tmp_path):
    root = _tiny_bids(tmp_path / "bids", [("sub-\u00fc04", None), ("sub-05", None)],
                      ["sub-\u00fc04/mri", "sub-05/mri"])
    code, _, err = run_cli(capsys, "make-manifest", f"bids_root={root}", "test_fraction=0.5",
                           f"workdir={tmp_path / 'w'}")
    assert code == 0, err
    with (root / "manifest.csv").open(encoding="utf-8") as handle:
        assert sorted(r["subject"] for r in csv.DictReader(handle)) == ["sub-05", "sub-\u00fc04"]


def test_sessions_are_paired_with_their_own_labels(capsys, tmp_path):
    root = _tiny_bids(tmp_path / "bids", [("sub-01", "ses-1"), ("sub-01", "ses-2"), ("sub-02", "ses-1")],
                      ["sub-01/ses-1/mri", "sub-01/ses-2/mri", "sub-02/ses-1/mri"])
    code, _, err = run_cli(capsys, "make-manifest", f"bids_root={root}", "test_fraction=0.5",
                           f"workdir={tmp_path / 'w'}")
    assert code == 0, err
    with (root / "manifest.csv").open() as handle:
        rows = {r["subject"]: r for r in csv.DictReader(handle)}
    assert rows["sub-01_ses-2"]["labels"] == "derivatives/freesurfer/sub-01/ses-2/mri/aparc+aseg.mgz"
    assert rows["sub-01_ses-1"]["labels"] == "derivatives/freesurfer/sub-01/ses-1/mri/aparc+aseg.mgz"
    assert rows["sub-01_ses-1"]["split"] == rows["sub-01_ses-2"]["split"] == "train"  # one subject, one split


def test_a_session_without_its_own_labels_is_named_not_paired_with_another(capsys, tmp_path):
    root = _tiny_bids(tmp_path / "bids", [("sub-01", "ses-1"), ("sub-01", "ses-2")], ["sub-01/ses-1/mri"])
    code, _, err = run_cli(capsys, "make-manifest", f"bids_root={root}", f"workdir={tmp_path / 'w'}")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "sub-01 ses-2" in err and "each session needs its own label file" in err
    assert not (root / "manifest.csv").exists()


# ------------------------------------------------------------------ smaller items


def test_extra_codes_that_empty_a_channel_are_warned():
    from brainspade.data.freesurfer import emptied_channels

    channels = ["background", "csf", "gm", "wm"]
    # Every cerebral-WM code (and the codes that fall back to wm) moved to csf: wm would be zero everywhere.
    wm_codes = [2, 41, 85, 251, 252, 253, 254, 255, 77, 28, 60, 16, 7, 46]
    warning = emptied_channels(channels, {code: "csf" for code in wm_codes})
    assert warning is not None and "channel wm" in warning and "empty" in warning
    assert emptied_channels(channels, {2: "csf"}) is None  # wm keeps its other codes
    assert emptied_channels(channels, {9999: "gm"}) is None  # a new code maps, nothing moves


def test_prepare_data_prints_the_emptied_channel_warning(capsys, folder_dataset, tmp_path):
    from conftest import folder_overrides

    wm_codes = "[2,41,85,251,252,253,254,255,77,28,60,16,7,46]"
    code, out, err = run_cli(capsys, "prepare-data", *folder_overrides(folder_dataset, tmp_path / "w"),
                             f"+data.extra_codes={{csf: {wm_codes}}}")
    assert "warning: data.extra_codes moves every code of channel wm" in out, (out, err)


def _finished_sample_set(folder: Path, cases: int) -> Path:
    """A sample set as `brainspade sample` leaves it (manifest, settings, samples.csv, images, labels, PV maps)."""
    from brainspade.segmentation.raw_dataset import image_path, label_path

    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    (folder / "settings.yaml").write_text("style_dataset: siteA\nstyle_modality: T1\n")
    (folder / "samples.csv").write_text("id,slice_position\n" + "".join(f"{i},0.5\n" for i in range(cases)))
    for index in range(cases):
        case = f"syn_{index:06d}"
        for path in (image_path(folder, case), label_path(folder, case), folder / "pv" / f"{case}.npy"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    return folder


def test_evaluate_generators_refuses_a_sample_set_with_deleted_cases_before_work(capsys, tmp_path, monkeypatch):
    import brainspade.stages.evaluate_generators as evaluate_stage

    workdir = tmp_path / "w"
    (workdir / "slices").mkdir(parents=True)
    (workdir / "slices" / "manifest.json").write_text("{}")
    monkeypatch.setattr(evaluate_stage.SliceCache, "open", staticmethod(lambda folder: None))
    started = []
    monkeypatch.setattr(evaluate_stage, "style_match_report", lambda *args: started.append(args))
    samples = _finished_sample_set(workdir / "samples" / "S_iod", cases=3)
    (samples / "imagesTr" / "syn_000001_0000.nii.gz").unlink()
    for force in ("false", "true"):
        code, _, err = run_cli(capsys, "evaluate-generators", f"workdir={workdir}", "profile=tiny", f"force={force}")
        assert code == 1 and "S_iod: 1 file(s) of its cases are gone" in err and "syn_000001_0000.nii.gz" in err
        assert "brainspade sample name=S_iod" in err and "up to date" not in err
    assert started == [] and not (workdir / "evaluation" / "S_iod").exists()


def test_export_writes_a_model_folder_only_into_a_new_or_model_folder(tmp_path):
    from brainspade.segmentation.native import export_model

    folder = _model_folder(tmp_path / "arm", _architecture())
    card = ModelCard.load(folder)
    stage = tmp_path / "w" / "label_vae"
    stage.mkdir(parents=True)
    (stage / "manifest.json").write_text("{}")
    with pytest.raises(BrainspadeError, match=r"export=.*label_vae: already holds other files"):
        export_model(folder, card, stage)
    assert sorted(p.name for p in stage.iterdir()) == ["manifest.json"]
    exported = export_model(folder, card, tmp_path / "exported")
    assert ModelCard.load(exported) == card
    assert export_model(folder, card, exported) == exported  # an earlier export is refreshed
