"""nnU-Net v2 (2D) driven through its Python API, every folder inside one model folder.

One model folder per arm holds nnU-Net's three trees (raw, preprocessed, results) with
one data set, `Dataset001_<arm>`, so arms never share nnU-Net state. The steps are
nnU-Net's own: fingerprint -> plan (ExperimentPlanner, 2D) -> preprocess -> train
(`BrainspadeTrainer`, fold 'all': every training case, the test split stays outside) ->
predict (`nnUNetPredictor.manual_initialization`).

Nothing here looks classes up by name (nnU-Net's trainer lookup imports every trainer
variant, some of which import torchvision, which fails on this CPU torch).
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing.pool
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from brainspade.engine.checkpoint import load_nnunet_checkpoint
from brainspade.errors import BrainspadeError
from brainspade.segmentation.model_files import read_dataset_json, read_plans
from brainspade.segmentation.raw_dataset import case_ids, image_path, label_path, read_2d
from brainspade.settings import SegmentationSettings

DATASET_ID = 1
CONFIGURATION = "2d"
PLANS = "nnUNetPlans"
FOLD = "all"
SPACING_2D = [999.0, 1.0, 1.0]  # what nnU-Net's SimpleITKIO reports for a 2D file of 1 x 1 pixels
PREDICTION_BATCH = 32  # slices per network pass in prediction
TRAINER = "BrainspadeTrainer"  # trainer.BrainspadeTrainer: nnU-Net names the results folder after the class


def dataset_name(arm: str) -> str:
    return f"Dataset{DATASET_ID:03d}_{''.join(c if c.isalnum() else '_' for c in arm)}"


def nnunet_environment(root: Path) -> contextlib.AbstractContextManager:
    """nnU-Net's path variables pointing inside `root` for the duration of the block.

    nnunetv2 >= 2.6 reads them when used, not at import; they are restored afterwards so
    that two models in one process never see each other's folders.
    """
    return environment(
        nnUNet_raw=str(root / "raw"),
        nnUNet_preprocessed=str(root / "preprocessed"),
        nnUNet_results=str(root / "results"),
        nnUNet_compile="false",  # compiling 2D nets on CPU crashes (nnU-Net's own note)
    )


@contextlib.contextmanager
def environment(**variables: str) -> Iterator[None]:
    """Set environment variables for the block, restoring the previous values after."""
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def link_raw_dataset(sources: Sequence[Path], raw_dir: Path) -> int:
    """Make nnU-Net's raw data set in `raw_dir` from the cases of one or more raw data sets.

    Cases are symbolic links (a 20,000-slice synthetic set is not copied per arm); all sources
    must share labels and modality. dataset.json is written last, so its presence marks a
    complete folder. Returns the number of cases.
    """
    if raw_dir.exists():
        shutil.rmtree(raw_dir)
    headers = [_read_dataset_json(source) for source in sources]
    for source, header in zip(sources[1:], headers[1:], strict=True):
        for key in ("labels", "channel_names", "file_ending"):
            if header[key] != headers[0][key]:
                raise BrainspadeError(f"{source}/dataset.json: {key} {header[key]} differs from {sources[0]}'s "
                                      f"{headers[0][key]}; an arm's sources must share labels and modality")
    seen: set[str] = set()
    for source in sources:
        for case in case_ids(source):
            if case in seen:
                raise BrainspadeError(f"{source}: case {case} also comes from another source of this arm")
            seen.add(case)
            for path in (image_path(source, case), label_path(source, case)):
                if not path.is_file():
                    raise BrainspadeError(f"{path}: missing; the raw data set {source} is incomplete")
            for made, target in ((image_path(raw_dir, case), image_path(source, case)),
                                 (label_path(raw_dir, case), label_path(source, case))):
                made.parent.mkdir(parents=True, exist_ok=True)
                made.symlink_to(target.resolve())
    if not seen:
        raise BrainspadeError(f"{[str(s) for s in sources]}: no training cases")
    header = {**headers[0], "numTraining": len(seen)}
    (raw_dir / "dataset.json").write_text(json.dumps(header, indent=2) + "\n")
    return len(seen)


CASE_SAMPLING = "case_sampling.json"  # per-case draw probabilities the trainer uses (absent: uniform)


def write_case_sampling(root: Path, arm: str, label_ids: Sequence[int], share: float | None) -> dict[str, float] | None:
    """Draw probabilities giving cases that show any of `label_ids` `share` of every training batch.

    Lesions cover a few percent of the slices of a lesion data set: drawn uniformly, a net sees
    too few of them in a CPU-length training to ever predict one. nnU-Net's loader takes per-case
    probabilities; they are written to `root/case_sampling.json` (read again when training resumes).
    Returns None (and writes nothing) when `share` is None or every case, or none, shows a lesion.
    """
    (root / CASE_SAMPLING).unlink(missing_ok=True)
    if share is None or not label_ids:
        return None
    raw_dir = root / "raw" / dataset_name(arm)
    cases = case_ids(raw_dir)
    flagged = {case: bool(np.isin(read_2d(label_path(raw_dir, case)), list(label_ids)).any()) for case in cases}
    n_flagged = sum(flagged.values())
    if n_flagged in (0, len(cases)):
        return None
    probabilities = {case: share / n_flagged if shows else (1 - share) / (len(cases) - n_flagged)
                     for case, shows in flagged.items()}
    (root / CASE_SAMPLING).write_text(json.dumps(probabilities) + "\n")
    return probabilities


def plan_and_preprocess(root: Path, processes: int, log: io.TextIOBase, *, base_features: int | None = None,
                        max_features: int | None = None) -> None:
    """Fingerprint, 2D plan and 2D preprocessing of Dataset001 under `root` (nnU-Net's API).

    `base_features` / `max_features` (None: nnU-Net's 32 / 512) narrow the planned U-Net: on a CPU a
    narrower net trains several times more iterations in the same minutes.
    """
    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.preprocessing.preprocessors import default_preprocessor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    # The planner sizes its thread pool from nnUNet_n_proc_DA, which must then be positive.
    with (contextlib.redirect_stdout(log), environment(nnUNet_n_proc_DA=str(max(1, processes))),
          thread_pools_in(fingerprint_extractor, default_preprocessor)):
        extractor = DatasetFingerprintExtractor(DATASET_ID, processes, verbose=False)
        extractor.show_progress_bar = False
        extractor.run(overwrite_existing=True)
        planner = ExperimentPlanner(DATASET_ID)
        if base_features is not None:
            planner.UNet_base_num_features = int(base_features)
        if max_features is not None:
            planner.UNet_max_features_2d = int(max_features)
        planner.plan_experiment()
        preprocessor = DefaultPreprocessor(verbose=False)
        preprocessor.show_progress_bar = False
        preprocessor.run(DATASET_ID, CONFIGURATION, PLANS, num_processes=processes)


class _ThreadPools:
    """Stands in for the `multiprocessing` module of nnU-Net's fingerprint extractor and preprocessor.

    Both call `multiprocessing.get_context("spawn").Pool(n)`: every spawned worker imports torch and nnunetv2
    afresh, 3-5 s on a 2-core machine before it reads one case, while an arm's cases are a few hundred
    small 2D slices (SimpleITK reads and numpy crops that release the GIL). Their polling loop reads `Pool._pool`
    and `is_alive()`, which a ThreadPool has too.
    """

    Pool = multiprocessing.pool.ThreadPool

    @staticmethod
    def get_context(method: str | None = None) -> type[_ThreadPools]:
        return _ThreadPools


@contextlib.contextmanager
def thread_pools_in(*modules) -> Iterator[None]:
    """The nnU-Net `modules` use worker threads instead of spawned processes for the block."""
    saved = [module.multiprocessing for module in modules]
    for module in modules:
        module.multiprocessing = _ThreadPools
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            module.multiprocessing = original


def results_folder(root: Path, arm: str) -> Path:
    return root / "results" / dataset_name(arm) / f"{TRAINER}__{PLANS}__{CONFIGURATION}"


def final_checkpoint(root: Path, arm: str) -> Path:
    return results_folder(root, arm) / f"fold_{FOLD}" / "checkpoint_final.pth"


def train(
    root: Path, arm: str, settings: SegmentationSettings, device: torch.device, log: io.TextIOBase,
    tensorboard_folder: Path,
) -> Path:
    """Train (or resume) the arm's 2D nnU-Net on every preprocessed case; return the final checkpoint.

    `settings` gives the length (epochs x iterations), the batch size (None: nnU-Net's plan) and
    the data-augmentation workers (0: in this process).
    """
    from brainspade.segmentation.trainer import BrainspadeTrainer

    final = final_checkpoint(root, arm)
    if final.is_file():
        return final
    preprocessed = root / "preprocessed" / dataset_name(arm)
    plans = read_plans(preprocessed / f"{PLANS}.json")  # checked as data before nnU-Net builds a network from it
    if settings.batch_size is not None:
        plans["configurations"][CONFIGURATION]["batch_size"] = int(settings.batch_size)
    latest = final.with_name("checkpoint_latest.pth")
    plans["continue_training"] = latest.is_file()  # nnU-Net's trainer pops this key (log appending)
    dataset_json = read_dataset_json(preprocessed / "dataset.json")
    with contextlib.redirect_stdout(log), environment(nnUNet_n_proc_DA=str(settings.augmentation_processes)):
        trainer = BrainspadeTrainer(plans, CONFIGURATION, FOLD, dataset_json, device)
        sampling = root / CASE_SAMPLING
        trainer.configure(settings, tensorboard_folder,
                          json.loads(sampling.read_text()) if sampling.is_file() else None, label=f"nnU-Net {arm}")
        if latest.is_file():
            trainer.load_checkpoint(str(latest))
        trainer.run_training()
    if not final.is_file():
        raise RuntimeError(f"{final}: nnU-Net finished without a final checkpoint")
    return final


class Segmenter:
    """A trained arm's nnU-Net, ready to segment 2D slices (test-time mirroring as `settings` say)."""

    def __init__(self, root: Path, arm: str, device: torch.device, settings: SegmentationSettings):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from brainspade.segmentation.trainer import BrainspadeTrainer

        folder = results_folder(root, arm)
        checkpoint_file = final_checkpoint(root, arm)
        if not checkpoint_file.is_file():
            raise BrainspadeError(f"{checkpoint_file}: no trained nnU-Net; re-run the experiment to train it")
        checkpoint = load_nnunet_checkpoint(checkpoint_file)
        # nnU-Net builds the network from names in the plans: checked as data before it sees them.
        plans_manager = PlansManager(read_plans(folder / "plans.json"))
        dataset_json = read_dataset_json(folder / "dataset.json")
        configuration = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
        network = BrainspadeTrainer.build_network_architecture(
            plans_manager,
            configuration,
            determine_num_input_channels(plans_manager, configuration, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
            enable_deep_supervision=False,
        )
        network.load_state_dict(checkpoint["network_weights"])
        with contextlib.redirect_stdout(io.StringIO()):
            self.predictor = nnUNetPredictor(
                use_mirroring=settings.test_time_mirroring, perform_everything_on_device=False, device=device,
                allow_tqdm=False,
            )
        self.predictor.manual_initialization(
            network, plans_manager, configuration, [checkpoint["network_weights"]], dataset_json,
            checkpoint["trainer_name"], checkpoint["inference_allowed_mirroring_axes"],
        )
        self.labels = dict(dataset_json["labels"])

    def segment_slices(self, images: np.ndarray, batch_size: int = PREDICTION_BATCH) -> np.ndarray:
        """Label ids (N, H, W) uint8 of slices (N, H, W), each segmented on its own, the network run on batches.

        Each slice is cropped, normalised and padded by nnU-Net's own preprocessing, and its logits are weighted,
        rounded to half precision and mapped back as nnU-Net's sliding window does for an image of one tile;
        only the network sees `batch_size` slices at once: on a 2-core CPU, 16 ms a slice instead of 35
        (benchmarks/demo.md). The network's sums may differ in their last bits with the batch size, which can
        move a half-precision logit by one step: a label can differ from nnU-Net's one-slice prediction
        (`predict_single_npy_array`) only at such a near-tie (none in 680 test slices measured). A slice bigger than one tile goes through nnU-Net's one-slice prediction.
        """
        labels = np.zeros(np.shape(images), dtype=np.uint8)
        for index, result in self._predict(images, batch_size, probabilities=False):
            labels[index] = np.asarray(result).reshape(labels.shape[1:])
        return labels

    def slice_probabilities(self, images: np.ndarray, batch_size: int = PREDICTION_BATCH) -> np.ndarray:
        """Softmax (N, H, W, C) float32 of slices (N, H, W): nnU-Net's one-slice softmax, in batches (`segment_slices`)."""
        images = np.asarray(images)
        probabilities = np.zeros((*images.shape, len(self.labels)), dtype=np.float32)
        for index, (_, result) in self._predict(images, batch_size, probabilities=True):
            probabilities[index] = np.moveaxis(np.asarray(result, dtype=np.float32).reshape(-1, *images.shape[1:]), 0, -1)
        return probabilities

    def _predict(self, images: np.ndarray, batch_size: int, probabilities: bool) -> Iterator[tuple[int, object]]:
        """(slice index, what nnU-Net's export gives: labels, or labels and probabilities) for every slice."""
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        predictor = self.predictor
        plans, configuration = predictor.plans_manager, predictor.configuration_manager
        patch = tuple(configuration.patch_size)
        preprocessor = configuration.preprocessor_class(verbose=False)
        gaussian = (compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=predictor.device)
                    if predictor.use_gaussian else 1)
        for start in range(0, len(images), batch_size):
            tiles, kept = [], []
            for index in range(start, min(start + batch_size, len(images))):
                data = np.asarray(images[index], dtype=np.float32)[None, None]
                prepared, _, properties = preprocessor.run_case_npy(data, None, {"spacing": list(SPACING_2D)}, plans,
                                                                    configuration, predictor.dataset_json)
                padded, revert = pad_nd_image(torch.from_numpy(prepared), patch, "constant", {"value": 0}, True, None)
                if tuple(padded.shape[2:]) != patch:
                    with contextlib.redirect_stdout(io.StringIO()):
                        alone = predictor.predict_single_npy_array(data, {"spacing": list(SPACING_2D)}, None, None,
                                                                   probabilities)
                    yield index, alone
                    continue
                tiles.append(padded[:, 0])
                kept.append((index, revert, properties))
            if not tiles:
                continue
            results = []
            with torch.inference_mode():
                predictor.network.eval()
                outputs = predictor._internal_maybe_mirror_and_predict(torch.stack(tiles).to(predictor.device))
                for output, (index, revert, properties) in zip(outputs, kept, strict=True):
                    logits = torch.zeros((len(output), 1, *patch), dtype=torch.half, device=predictor.device)
                    weights = torch.zeros((1, *patch), dtype=torch.half, device=predictor.device)
                    logits[:, 0] += output * gaussian
                    weights[0] += gaussian
                    torch.div(logits, weights, out=logits)
                    logits = logits[(slice(None), *revert[1:])].cpu()
                    results.append((index, convert_predicted_logits_to_segmentation_with_correct_shape(
                        logits, plans, configuration, predictor.label_manager, properties, probabilities)))
            yield from results


def _read_dataset_json(source: Path) -> dict:
    path = Path(source) / "dataset.json"
    if not path.is_file():
        raise BrainspadeError(f"{path}: missing; {source} is not a finished nnU-Net raw data set")
    return json.loads(path.read_text())
