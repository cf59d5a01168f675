"""`sample`'s runtime: bf16 autocast of its networks (runtime.precision) and the writer thread beside the compute."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from conftest import settings_of
from test_image_generator import SIZE as IMAGE_SIZE
from test_image_generator import fake_batch, networks
from test_label_generator import CHANNELS, SCHEDULER, SIZE, tiny_unet, tiny_vae

from brainspade.engine.runtime import uses_bf16
from brainspade.generation.images import ImageGenerator, ModalityClassifier
from brainspade.generation.labels import LabelSampler, make_scheduler
from brainspade.generation.sample_set import BlockWriter
from brainspade.models.modality_classifier import ModalityDatasetClassifier

CPU = torch.device("cpu")


def output_dtypes(*modules: torch.nn.Module) -> list[torch.dtype]:
    """The dtypes of every tensor the modules return from now on (forward hooks)."""
    seen: list[torch.dtype] = []

    def hook(module, inputs, output):
        for item in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(item, torch.Tensor):
                seen.append(item.dtype)

    for module in modules:
        module.register_forward_hook(hook)
    return seen


@pytest.mark.parametrize("supported", [False, True])
def test_precision_auto_is_bf16_only_on_a_gpu_that_supports_it(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)  # no GPU here: nothing runs on it
    cuda = torch.device("cuda")
    assert uses_bf16("auto", cuda) == supported
    assert not uses_bf16("auto", CPU)
    assert not uses_bf16("fp32", CPU) and not uses_bf16("fp32", cuda)
    assert uses_bf16("bf16", CPU) and uses_bf16("bf16", cuda)


def label_samplers() -> tuple[LabelSampler, LabelSampler]:
    torch.manual_seed(0)
    vae, unet = tiny_vae(), tiny_unet()
    return tuple(LabelSampler(vae, unet, make_scheduler(SCHEDULER), 1.0, CHANNELS, ["tumour"], SIZE, CPU, bf16=bf16)
                 for bf16 in (False, True))


def test_bf16_label_sampling_runs_the_networks_in_bf16_and_returns_fp32_maps_that_sum_to_one():
    fp32, bf16 = label_samplers()
    conditions = torch.tensor([[0.0, 0.4], [0.05, 0.6]])
    settings = settings_of("label_sampling", sampler="ddim", steps=2)
    reference = fp32.sample(conditions, [3, 4], settings)
    unet_dtypes, vae_dtypes = output_dtypes(bf16.unet), output_dtypes(*bf16.vae.modules())  # only decode runs
    maps = bf16.sample(conditions, [3, 4], settings)
    assert torch.bfloat16 in unet_dtypes and torch.bfloat16 in vae_dtypes  # both ran under autocast
    assert maps.dtype == torch.float32 and maps.shape == reference.shape
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(2, *SIZE), atol=1e-5, rtol=0)
    difference = (maps - reference).abs()
    assert 0 < difference.mean() < 0.02  # rounded, not another map


def test_bf16_image_generator_and_classifier_return_fp32_close_to_fp32():
    nets = networks()
    batch = fake_batch()
    fp32, bf16 = (ImageGenerator(nets.style_encoder, nets.generator, [f"c{i}" for i in range(6)], IMAGE_SIZE, CPU,
                                 bf16=flag) for flag in (False, True))
    reference = fp32.generate(batch["pv_map"], batch["style"], [1, 2, 3, 4])
    seen = output_dtypes(bf16.generator, bf16.style_encoder)
    images = bf16.generate(batch["pv_map"], batch["style"], [1, 2, 3, 4])
    assert torch.bfloat16 in seen
    assert images.dtype == torch.float32
    relative = (images - reference).abs().mean() / reference.abs().mean()
    assert 0 < relative < 0.05

    network = ModalityDatasetClassifier(2, 3, init_features=8, growth_rate=4, block_config=(2, 2)).eval()
    plain, rounded = (ModalityClassifier(network, ["FLAIR", "T1"], ["a", "b", "c"], CPU, bf16=flag)
                      for flag in (False, True))
    modality, dataset = rounded.predict(images)
    assert modality.dtype == dataset.dtype == torch.float32
    torch.testing.assert_close(modality.sum(dim=1), torch.ones(len(images)))
    torch.testing.assert_close(modality, plain.predict(images)[0], atol=0.03, rtol=0)


def test_the_writer_writes_a_block_while_the_next_is_computed_in_order():
    computing_next = threading.Event()
    written: list[int] = []

    def write(block, batch):
        if block == 0:  # a serial loop would never get to compute block 1 while block 0 is being written
            assert computing_next.wait(timeout=10), "block 1 was not computed while block 0 was written"
        written.append(block)

    with BlockWriter(write) as writer:
        writer.put(0, "batch 0")
        computing_next.set()  # "computing" block 1
        writer.put(1, "batch 1")
        writer.put(2, "batch 2")
    assert written == [0, 1, 2]  # all written (in order) once the with block is left


def test_the_writer_holds_at_most_one_waiting_block():
    release = threading.Event()
    with BlockWriter(lambda block, batch: release.wait(timeout=10)) as writer:
        writer.put(0, None)  # being written (blocked)
        time.sleep(0.1)
        writer.put(1, None)  # waiting in the queue
        third = threading.Thread(target=writer.put, args=(2, None), daemon=True)
        third.start()
        third.join(timeout=0.5)
        assert third.is_alive(), "a third block was accepted while one was written and one waited"
        release.set()
        third.join(timeout=10)
        assert not third.is_alive()


def test_a_failed_write_stops_the_run_with_its_error():
    def write(block, batch):
        if block == 1:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with BlockWriter(write) as writer:
            for block in range(5):
                writer.put(block, None)
                time.sleep(0.05)


def test_cases_written_on_several_threads_are_the_files_of_one_thread_with_the_record_last(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from brainspade.generation import sample_set
    from brainspade.generation.pairs import PairBatch
    from brainspade.segmentation import raw_dataset

    generator = torch.Generator().manual_seed(0)
    batch = PairBatch(ids=[4, 5, 6, 7], pv_maps=torch.softmax(3 * torch.randn(4, 5, 16, 24, generator=generator), 1),
                      images=torch.randn(4, 1, 16, 24, generator=generator), records=[{"id": i} for i in range(4, 8)])
    plain_write = raw_dataset.write_case

    def slow_first_case(folder, case, image, label):
        if case.endswith("4"):  # the first case finishes last: the record must still wait for it
            time.sleep(0.3)
        plain_write(folder, case, image, label)

    monkeypatch.setattr(raw_dataset, "write_case", slow_first_case)
    folders = {}
    for threads in (1, 4):
        folder = folders[threads] = tmp_path / f"threads_{threads}"
        for sub in ("imagesTr", "labelsTr", "pv", "blocks"):
            (folder / sub).mkdir(parents=True)
        with ThreadPoolExecutor(threads) as pool:
            sample_set._write_block(folder, 1, batch, pool)
    files = {threads: {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
             for threads, folder in folders.items()}
    assert files[4] == files[1] and len(files[1]) == 4 * 3 + 1  # pv, label, image per case; the block record
    record = (folders[4] / "blocks" / "block_000001.csv").stat().st_mtime_ns
    cases = [p.stat().st_mtime_ns for p in folders[4].rglob("*") if p.is_file() and "blocks" not in p.parts]
    assert record >= max(cases)
