"""Synthetic (image, label) pairs written as an nnU-Net v2 raw data set: the work of `brainspade sample`.

Streaming, deterministic, resumable and sharded:
- ids are grouped in fixed blocks of `sampling.batch_size`; a block is made as one batch, so
  its numbers never depend on which run, shard or restart made it;
- a block's record file (blocks/block_NNNNNN.csv) is written after all its case files, so an
  interrupted run (even kill -9) redoes only blocks without a record, writing only missing files;
- `shard=(i, k)` takes every k-th block starting at i; under torchrun each rank takes its own;
- a block's files are written by a writer thread while the next block is computed (`BlockWriter`),
  its cases on several threads at once (`case_writer_threads`); at most one finished block waits
  for it, so nothing accumulates in memory across blocks.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import dataclasses
import io
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from brainspade.data.datasets import generator_label_indices
from brainspade.data.slice_cache import SliceCache
from brainspade.engine.atomic import (
    atomic_path,
    remove_stale_temporaries,
    write_json_atomic,
    write_text_atomic,
)
from brainspade.engine.logging import progress
from brainspade.engine.runtime import select_device, uses_bf16
from brainspade.engine.stage import StageFolder, config_fingerprint, finished_fingerprint
from brainspade.errors import BrainspadeError
from brainspade.generation.images import ImageGenerator, ModalityClassifier
from brainspade.generation.labels import LabelSampler, condition_drawer, label_conditions
from brainspade.generation.pairs import PairBatch, PairSynthesiser, check_style_modality
from brainspade.generation.site_look import LookStore, SiteLook, fit_site_look, look_applies
from brainspade.generation.styles import StyleBank, style_bank_from_cache, style_bank_from_folder
from brainspade.settings import LabelSamplingSettings, SamplingSettings

BLOCKS = "blocks"
LABEL_KEY = "label_key.txt"
SITE_LOOK_RECORD = "site_look.json"  # the fitted site look of the set, for the record


@dataclass(frozen=True)
class GeneratorFolders:
    """The finished stage folders a sample set is made from."""

    slices: Path
    label_vae: Path
    label_ldm: Path
    image_generator: Path
    modality_classifier: Path | None  # None: no modality filter
    site_looks: Path  # fitted scanner models kept for reuse (`LookStore`)

    def fingerprints(self) -> list[str]:
        return [finished_fingerprint(p) for p in (self.label_vae, self.label_ldm, self.image_generator)]


@dataclass(frozen=True)
class StyleSource:
    """Where style images come from: train slices of a data set of the workdir, or a folder of NIfTI volumes."""

    dataset: str | None
    modality: str
    folder: str | None = None

    def default_name(self, conditions: str) -> str:
        source = self.dataset if self.folder is None else Path(self.folder).name
        return f"{source}_{self.modality}" + ("" if conditions == "healthy" else f"_{conditions}")

    def bank(self, cache: SliceCache) -> StyleBank:
        if self.folder:
            return style_bank_from_folder(Path(self.folder).expanduser().resolve(), self.modality, cache.size)
        if self.dataset is None:
            raise BrainspadeError("no style source: set style.dataset=NAME (a data set of the workdir) or "
                                  "style.folder=PATH")
        return style_bank_from_cache(cache, self.dataset, self.modality)


def make_sample_set(
    folder: Path,
    generators: GeneratorFolders,
    style: StyleSource,
    n: int,
    *,
    sampling: SamplingSettings,
    labels: LabelSamplingSettings,
    sources: Sequence[str],
    conditions: str = "healthy",
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    force: bool = False,
    device: str = "auto",
    precision: str = "auto",
) -> Path:
    """Make (or finish) the sample set in `folder`; return it once every block exists (or this shard's blocks do).

    Args:
        folder: the set's folder (W/samples/<name>); its siblings may share their label maps with it.
        generators: the finished label VAE, label LDM, image generator and (for the filter) classifier.
        style: the style images' source.
        n: number of pairs.
        sampling: how pairs are made (blocks, the modality filter, the site look).
        labels: how PV maps are drawn from the label LDM.
        sources: the generators' source data sets (train-split label maps, conditions, the site look's references).
        conditions: healthy | lesion | as_training | ranges (generation.labels.CONDITION_MODES).
        seed: seeds every pair (pair i depends on seed and i only).
        shard: (i, k): make every k-th block starting at i.
        force: redo a set made with other settings instead of refusing it.
        device: auto | cpu | cuda.
        precision: `runtime.precision` (auto | fp32 | bf16): bf16 runs the networks under bf16 autocast; "auto" is
            bf16 on a CUDA GPU that supports it and fp32 on a CPU. A bf16 set is another set (its own fingerprint).
    """
    if n <= 0:
        raise BrainspadeError(f"n={n}: ask for at least one sample, e.g. --n 100")
    shard_index, shard_count = shard
    torch_device = select_device(device)
    bf16 = uses_bf16(precision, torch_device)
    model_fingerprints = generators.fingerprints()
    settings = {
        "n": n, "seed": seed, "style_dataset": style.dataset, "style_modality": style.modality,
        "style_folder": style.folder, "conditions": conditions,
        "sampling": _sampling_keys(sampling, None if style.folder else style.dataset, sources),
        "label_sampling": dataclasses.asdict(labels),
        "models": model_fingerprints,
    }
    if bf16:  # other numbers than fp32's; fp32 sets keep the settings (and fingerprint) they always had
        settings["precision"] = "bf16"
    stage = StageFolder(folder, config_fingerprint(settings))
    if stage.is_up_to_date() and not force:
        _reopen_blocks_with_missing_cases(stage, n, sampling.batch_size)
    if stage.reusable(force):
        print(f"[sample] {folder} is up to date")
        return folder
    # Models first: a style the filter can never accept is refused before anything is written.
    cache = SliceCache.open(generators.slices)
    image_generator = ImageGenerator.from_folder(generators.image_generator, torch_device, cache.channels, bf16)
    classifier = (ModalityClassifier.from_folder(generators.modality_classifier, torch_device, cache.channels, bf16)
                  if sampling.modality_filter else None)
    warning = check_style_modality(style.modality, classifier.modalities if classifier else None,
                                   image_generator.modality_input, image_generator.appearance_input)
    if warning:
        print(f"[sample] warning: {warning}", flush=True)
    bank = style.bank(cache)
    _check_same_run(folder, settings, force)
    store = LookStore(generators.site_looks, model_fingerprints[2])
    site_look = _fit_site_look(image_generator, cache, bank, sources, seed, sampling, store)
    # Everything the label maps depend on; runs that differ only in style share their maps.
    label_key = config_fingerprint({k: settings[k] for k in ("seed", "conditions", "label_sampling", "precision")
                                    if k in settings},
                                   model_fingerprints[:2], sampling.batch_size,
                                   finished_fingerprint(generators.slices), list(sources))
    write_text_atomic(folder / LABEL_KEY, label_key + "\n")
    for sub in ("imagesTr", "labelsTr", "pv", BLOCKS):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)  # an earlier run killed mid-write leaves only these behind
    if site_look is not None:
        write_json_atomic(folder / SITE_LOOK_RECORD, site_look.as_dict())

    shared = SharedLabelMaps(folder, label_key) if sampling.share_label_maps else None
    label_sampler = LabelSampler.from_folders(generators.label_vae, generators.label_ldm, torch_device, cache.channels,
                                              bf16)
    synthesiser = PairSynthesiser(
        label_sampler=label_sampler,
        image_generator=image_generator,
        style_bank=bank,
        draw_conditions=label_condition_drawer(conditions, cache, label_sampler, labels, sources),
        seed=seed,
        label_settings=labels,
        classifier=classifier,
        max_retries=sampling.max_retries,
        device=torch_device,
        known_label_maps=shared.load if shared else None,
        site_look=site_look,
    )
    batch_size = sampling.batch_size
    total_blocks = _block_count(n, batch_size)
    blocks = [b for b in range(total_blocks) if b % shard_count == shard_index]
    missing = [b for b in blocks if not _block_record(folder, b).is_file()]
    bar = progress(total=len(missing) * batch_size, desc=f"sample {folder.name}", unit="pair")
    with (ThreadPoolExecutor(case_writer_threads(), thread_name_prefix="sample-case") as pool,
          BlockWriter(lambda block, batch: _write_block(folder, block, batch, pool)) as writer):
        for block in missing:
            ids = list(range(block * batch_size, min((block + 1) * batch_size, n)))
            writer.put(block, synthesiser.make(ids))
            release_freed_memory()
            bar.update(len(ids))
    bar.close()

    done = sum(_block_record(folder, b).is_file() for b in range(total_blocks))
    if done < total_blocks:
        print(f"[sample] shard {shard_index}/{shard_count} finished; {total_blocks - done} block(s) await other shards")
        return folder
    _finish(stage, n, total_blocks, cache.channels, style.modality)
    return folder


class BlockWriter:
    """Writes finished blocks on a thread of its own, in order, while the caller computes the next one.

    `put` waits while `depth` blocks already wait to be written, so memory stays bounded; a block's
    files and then its record are written exactly as a serial run writes them, so resume and shards
    see the same folder. An error of the writer is raised in the caller, at its next `put` or at the
    end of the `with` block; leaving that block waits for the queued blocks to be written.
    """

    def __init__(self, write: Callable[[int, PairBatch], None], depth: int = 1):
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sample-writer", daemon=True)

    def __enter__(self) -> BlockWriter:
        self._thread.start()
        return self

    def put(self, block: int, batch: PairBatch) -> None:
        self._raise_error()
        self._queue.put((block, batch))

    def __exit__(self, kind, error, traceback) -> None:
        self._queue.put(None)
        self._thread.join()
        if error is None:
            self._raise_error()

    def _run(self) -> None:
        for item in iter(self._queue.get, None):
            if self._error is None:  # after an error, blocks leave the queue unwritten: the caller never waits
                try:
                    self._write(*item)
                except BaseException as error:  # raised again in the caller's thread
                    self._error = error

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


def _sampling_keys(sampling: SamplingSettings, style_dataset: str | None, sources: Sequence[str]) -> dict:
    """The sampling keys a sample set depends on: the site look's keys only when it is on and applies to the style
    source (a set it does not touch does not depend on them)."""
    keys = dataclasses.asdict(sampling)
    if not (sampling.site_look.enabled and look_applies(sampling.site_look, style_dataset, sources)):
        del keys["site_look"]
    return keys


def _fit_site_look(image_generator: ImageGenerator, cache: SliceCache, bank: StyleBank, sources: Sequence[str],
                   seed: int, sampling: SamplingSettings, store: LookStore) -> SiteLook | None:
    """The style site's look fitted on reference images (sampling.site_look) or reused from `store`, or None."""
    look = fit_site_look(image_generator.generate, cache, sources, bank, sampling.site_look, seed, sampling.batch_size,
                         store)
    if look is not None:
        print(f"[sample] appearance transfer fitted on {sampling.site_look.reference_images} style slices: "
              f"{look.describe()}", flush=True)
    elif sampling.site_look.enabled:
        print(f"[sample] no appearance transfer for {bank.dataset}: a source site keeps the look the generator learnt "
              "from it", flush=True)
    return look


class SharedLabelMaps:
    """PV maps that sibling sample sets (W/samples/*) made with the same label key.

    S_iod, S_n-ood and S_f-ood differ only in their style source: with the same seed and
    conditions their label maps are the same, so only the first run samples them (the LDM is
    most of the cost of a pair), and the arms then differ in style alone.
    """

    def __init__(self, own_folder: Path, label_key: str):
        self.folders = [
            sibling for sibling in sorted(own_folder.parent.iterdir())
            if sibling != own_folder and (sibling / LABEL_KEY).is_file()
            and (sibling / LABEL_KEY).read_text().strip() == label_key
        ]

    def load(self, ids: Sequence[int]) -> torch.Tensor | None:
        """The maps of all `ids` from one sibling that has every one of them, else None."""
        for folder in self.folders:
            files = [folder / "pv" / f"{case_id(i)}.npy" for i in ids]
            if all(f.is_file() for f in files):  # written atomically: present means complete
                return torch.from_numpy(np.stack([np.load(f) for f in files]).astype(np.float32))
        return None


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS after each block.

    glibc keeps freed blocks of every batch's temporaries, so peak RSS otherwise creeps up with N.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def parse_shard(shard: str) -> tuple[int, int]:
    """'i/k' -> (i, k); under torchrun (RANK/WORLD_SIZE set) each rank takes its own shard."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and shard == "0/1":
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        index, count = (int(part) for part in shard.split("/"))
    except ValueError as error:
        raise BrainspadeError(f"shard={shard!r}: write it as i/k, e.g. shard=0/4") from error
    if not 0 <= index < count:
        raise BrainspadeError(f"shard={shard!r}: need 0 <= i < k")
    return index, count


def _check_same_run(path: Path, settings: dict, force: bool) -> None:
    """Blocks left by an interrupted run are reused only if that run had the same settings."""
    settings_file = path / "settings.yaml"
    text = yaml.safe_dump(settings, sort_keys=False)
    if settings_file.is_file() and settings_file.read_text() != text and not force:
        raise BrainspadeError(
            f"{path}: holds an unfinished run with other settings; re-run with its settings, pass force=true, "
            "or choose another name=..."
        )
    if force and settings_file.is_file() and settings_file.read_text() != text:
        for record in (path / BLOCKS).glob("*.csv"):
            record.unlink()
    path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(settings_file, text)


def label_condition_drawer(mode: str, cache: SliceCache, label_sampler: LabelSampler,
                           settings: LabelSamplingSettings, sources: Sequence[str]):
    """Per-sample conditions of `mode` (generation.labels.CONDITION_MODES), shared by sample and sample-labels."""
    training = label_conditions(cache, generator_label_indices(cache, list(sources)))
    return condition_drawer(mode, label_sampler.lesion_channels, settings, training)


def _block_count(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def _block_record(path: Path, block: int) -> Path:
    return path / BLOCKS / f"block_{block:06d}.csv"


def case_id(sample_id: int) -> str:
    return f"syn_{sample_id:06d}"


def case_writer_threads() -> int:
    """Threads that write one block's cases at once: half the CPU cores, at most 8.

    Compressing a paper-size case takes about 15-20 ms of one core (SimpleITK releases the GIL), so one
    thread caps a run near 50-70 pairs/s; the other half of the cores is left to the sampling itself.
    """
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _write_block(path: Path, block: int, batch: PairBatch, pool: Executor | None = None) -> None:
    """Write the block's missing case files (on `pool`'s threads when given), then its record (the block's
    completion mark)."""
    from brainspade.segmentation.raw_dataset import image_path, labels_from_pv, write_case

    def write(k: int) -> None:
        case = case_id(batch.ids[k])
        pv = batch.pv_maps[k].numpy()
        pv_file = path / "pv" / f"{case}.npy"
        if not pv_file.is_file():
            with atomic_path(pv_file) as tmp:
                np.save(tmp, pv.astype(np.float16))
        if not image_path(path, case).is_file():  # the image is written last, so it marks a whole case
            write_case(path, case, batch.images[k, 0].numpy().astype(np.float32), labels_from_pv(pv))

    cases = range(len(batch.ids))
    list(pool.map(write, cases) if pool is not None else map(write, cases))  # list(): a case's error is raised here
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(batch.records[0]))
    writer.writeheader()
    writer.writerows(batch.records)
    write_text_atomic(_block_record(path, block), buffer.getvalue())


def _reopen_blocks_with_missing_cases(folder: StageFolder, n: int, batch_size: int) -> None:
    """A finished set whose case files were deleted since is reopened: the run remakes just those blocks.

    Checked by name only (a stat per file); files are written atomically, so present means whole.
    """
    from brainspade.segmentation.raw_dataset import image_path, label_path

    lost_blocks = sorted({
        i // batch_size for i in range(n)
        if not all(f.is_file() for f in (image_path(folder.path, case_id(i)), label_path(folder.path, case_id(i)),
                                        folder.path / "pv" / f"{case_id(i)}.npy"))
    })
    if not lost_blocks:
        return
    print(f"[sample] {folder.path}: case files of {len(lost_blocks)} block(s) are missing; remaking them")
    folder.manifest_path.unlink()
    for block in lost_blocks:
        _block_record(folder.path, block).unlink(missing_ok=True)


def _finish(folder: StageFolder, n: int, total_blocks: int, channels: Sequence[str], modality: str) -> None:
    """Assemble samples.csv from the block records and write dataset.json, then the manifest."""
    from brainspade.segmentation.raw_dataset import PARTIAL, write_dataset_json

    lines: list[str] = []
    for block in range(total_blocks):
        block_lines = _block_record(folder.path, block).read_text().splitlines()
        lines.extend(block_lines if not lines else block_lines[1:])
    write_text_atomic(folder.path / "samples.csv", "\n".join(lines) + "\n")
    write_dataset_json(folder.path, list(channels), modality, n)
    with contextlib.suppress(OSError):  # only when empty: a live shard may still be writing into it
        (folder.path / PARTIAL).rmdir()
    retries = [int(row["retries"]) for row in csv.DictReader(io.StringIO("\n".join(lines)))]
    folder.finish(
        {"dataset": "dataset.json", "samples": "samples.csv", "pv_maps": "pv/"},
        n=n,
        retried=sum(r > 0 for r in retries),
        total_retries=sum(retries),
    )
    print(f"[sample] {n} pairs in {folder.path} ({sum(r > 0 for r in retries)} regenerated by the modality filter)")
