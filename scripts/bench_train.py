"""Benchmark the training stages: steps/s per stage, fp32 vs bf16, 1 vs 2 torchrun processes; FLOPs per pair.

Usage (a source workdir whose slice cache, label VAE and classifier are finished, e.g. after the demo):
    .venv/bin/python scripts/bench_train.py --source brainspade_work --profile cpu --steps 20 \\
        --precisions fp32 bf16 --processes 1 2 --out benchmarks/RESULTS.md
    .venv/bin/python scripts/bench_train.py --flops --profile paper     # FLOPs of one (image, label) pair

Each measurement is one real `brainspade train-...` run (under `torchrun --nproc_per_node K` for
K > 1, gloo on the CPU, nccl on GPUs) of --steps steps in a scratch workdir whose inputs are
links to the source workdir's finished stages; the step rate is the one the stage itself reports
when training ends (also `runtime.steps_per_second` in metrics.json; timed from the end of the
first step, which pays lazy initialisation). The run is stopped there: the evaluation that
follows is not measured. Batches are global: K processes share each step's batch, so steps/s
compare directly across K. Prints a markdown section; --out appends it.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RATE_LINE = re.compile(r"trained at ([0-9.]+) steps/s")
STAGES = {  # command -> (config section, stage folder, finished inputs it reads, overrides that cut evaluation)
    "train-label-vae": ("label_vae", "label_vae", ["slices"], []),
    "train-label-ldm": ("label_ldm", "label_ldm", ["slices", "label_vae"],
                        ["label_ldm.eval_samples=2", "label_sampling.steps=1", "label_ldm.eval_batch_size=2",
                         "label_ldm.image_every=1000000"]),
    "train-modisc": ("modisc", "modisc", ["slices"], []),
    "train-image-generator": ("image_generator", "image_generator", ["slices", "modisc"],
                              ["image_generator.evaluation.max_images=2", "image_generator.evaluation.batch_size=2",
                               "image_generator.image_every=1000000"]),
}


def measure(source: Path, scratch: Path, command: str, profile: str, steps: int, precision: str,
            processes: int, threads: int) -> dict:
    """One training run: its step rate (timed from the end of its first step), global batch size and wall time."""
    section, folder, inputs, extra = STAGES[command]
    workdir = scratch / f"{folder}_{precision}_{processes}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    for name in inputs:
        (workdir / name).symlink_to((source / name).resolve())
    overrides = [f"workdir={workdir}", f"profile={profile}", f"{section}.steps={steps}",
                 f"{section}.checkpoint_every={steps}", f"runtime.precision={precision}", *extra]
    if processes == 1:
        argv = [sys.executable, "-m", "brainspade", command, *overrides]
    else:
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone",
                "-m", "brainspade", command, *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    start = time.time()
    # The stage prints its step rate when training ends; the evaluation after it is not measured: stop there.
    process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    rate = None
    for line in process.stdout:
        found = RATE_LINE.search(line)
        if found:
            rate = float(found.group(1))
            break
    os.killpg(process.pid, signal.SIGTERM)
    process.wait()
    if rate is None:
        raise RuntimeError(f"{' '.join(argv)} ended without reporting its step rate (exit code {process.returncode})")
    batch = _batch_size((workdir / folder / "config.yaml").read_text(), section)
    shutil.rmtree(workdir, ignore_errors=True)
    return {"steps_per_second": rate, "batch_size": batch, "wall_seconds": time.time() - start}


def _batch_size(config_yaml: str, section: str) -> int:
    from omegaconf import OmegaConf

    return int(OmegaConf.create(config_yaml)[section].batch_size)


def step_rate_table(args: argparse.Namespace) -> list[str]:
    lines = [
        "| stage | precision | processes | global batch | steps/s | samples/s | speed-up vs fp32, 1 process |",
        "|---|---|---|---|---|---|---|",
    ]
    for command in args.stages:
        baseline = None
        for precision in args.precisions:
            for processes in args.processes:
                threads = max(1, args.threads // processes)
                result = measure(args.source, args.scratch, command, args.profile, args.steps, precision, processes,
                                 threads)
                rate = result["steps_per_second"]
                baseline = baseline or rate
                lines.append(f"| {command} | {precision} | {processes} | {result['batch_size']} | {rate:.3f} | "
                             f"{rate * result['batch_size']:.2f} | {rate / baseline:.2f}x |")
                print(lines[-1], flush=True)
    return lines


def flops_per_pair(profile: str) -> list[str]:
    """Forward FLOPs of synthesising one (image, label) pair with the networks of `profile` (random weights).

    A pair costs: `label_sampling.steps` passes of the LDM UNet over the latent (two with
    classifier-free guidance), one VAE decode, one style encoding, one SPADE generation and one
    pass of the modality filter. Multiply-adds count as 2 FLOPs (torch.utils.flop_counter).
    """
    import torch
    from hydra import compose, initialize_config_dir
    from torch.utils.flop_counter import FlopCounterMode

    from brainspade.models.label_diffusion_unet import ConditionedDiffusionUNet
    from brainspade.models.label_vae import LabelVAE
    from brainspade.models.modality_classifier import ModalityDatasetClassifier
    from brainspade.models.spade_generator import SpadeGenerator
    from brainspade.models.style_encoder import StyleEncoder
    from brainspade.stages.config import section
    from brainspade.training.image_generator import model_arguments

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=[f"profile={profile}", "workdir=/tmp/unused"])
    channels = ["background", "csf", "gm", "wm", "tumour", "edema"]  # the phantom's schema
    size = tuple(section(cfg, "slices").size)
    vae_settings, ldm_settings = section(cfg, "label_vae"), section(cfg, "label_ldm")
    image_settings, sampling = section(cfg, "image_generator"), section(cfg, "label_sampling")
    vae = LabelVAE(len(channels), **vae_settings.model).eval()
    latent_channels = vae.latent_channels
    unet = ConditionedDiffusionUNet(latent_channels=latent_channels, num_lesions=2, **ldm_settings.model).eval()
    image_args = model_arguments(image_settings, channels, size, modalities=2)
    style_encoder = StyleEncoder(**image_args["style_encoder"])
    generator = SpadeGenerator(**image_args["generator"])
    classifier = ModalityDatasetClassifier(n_modalities=2, n_datasets=2, **section(cfg, "modisc").model).eval()
    latent = torch.zeros(1, latent_channels, size[0] // 4, size[1] // 4)
    image, pv_map = torch.zeros(1, 1, *size), torch.full((1, len(channels), *size), 1 / len(channels))
    guidance_passes = 1 if sampling.guidance_scale == 1.0 else 2
    steps = sampling.steps

    def count(function) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            function()
        return counter.get_total_flops()

    parts = {
        f"label LDM UNet x {steps} steps x {guidance_passes}": steps * guidance_passes * count(
            lambda: unet(latent, torch.tensor([500]), torch.zeros(1, 3))),
        "label VAE decode": count(lambda: vae.decode(latent)),
        "style encoder": count(lambda: style_encoder(image)),
        "SPADE generator": count(lambda: generator(pv_map, torch.zeros(1, generator.fc.in_features))),
        "modality filter (classifier)": count(lambda: classifier(image)),
    }
    if image_settings.style_modality_input:  # the classifier also reads each style image
        parts["style modality (classifier)"] = parts["modality filter (classifier)"]
    total = sum(parts.values())
    lines = [f"| part of one pair (profile={profile}, {size[0]} x {size[1]}) | GFLOP |", "|---|---|"]
    lines += [f"| {name} | {flops / 1e9:.2f} |" for name, flops in parts.items()]
    lines.append(f"| **total per pair** | **{total / 1e9:.2f}** |")
    lines.append(f"| 20,000 pairs | {20_000 * total / 1e12:.1f} TFLOP |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="workdir with finished slices, label_vae and modisc")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="training steps per measurement")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all, shared by the processes")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/brainspade_bench_train"))
    parser.add_argument("--flops", action="store_true", help="count the FLOPs of one pair instead")
    parser.add_argument("--out", type=Path, help="append the markdown section to this file")
    args = parser.parse_args()

    import torch

    machine = (f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__}, "
               f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
    command = "python scripts/bench_train.py " + " ".join(sys.argv[1:])
    if args.flops:
        body = flops_per_pair(args.profile)
        title = f"## FLOPs per synthetic pair at profile={args.profile}"
    else:
        if args.source is None:
            parser.error("--source is required for step rates")
        body = step_rate_table(args)
        title = f"## Training step rates at profile={args.profile} ({args.steps} steps per run)"
    section = "\n".join([title, "", f"Machine: {machine}. Command: `{command}`.", "", *body, ""])
    print(section)
    if args.out:
        with args.out.open("a") as handle:
            handle.write("\n" + section)


if __name__ == "__main__":
    main()
