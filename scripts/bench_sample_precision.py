"""bf16 against fp32 in `brainspade sample`: does bf16 autocast keep the pairs' fidelity, and what does it gain?

Usage (a workdir whose four generators are trained; nothing is written into it):
    .venv/bin/python scripts/bench_sample_precision.py --workdir brainspade_work --profile cpu --n 32 \\
        --out benchmarks/sample_precision.md
    ... --compile [--compile-precision both] [--compile-backend aot_eager] [--skip-fidelity]

Pairs are made as `sample` makes them (`generation.pairs.PairSynthesiser` with the stage's
settings: conditions, label sampling, style source, modality filter; no site look), in blocks of
--batch, without writing files: in fp32 with every seed of --seeds (their spread is the yardstick)
and in bf16 with the first seed. Compared, with the project's metrics (`evaluation.metrics`):
- PV maps: the largest |sum over channels - 1|;
- per channel, the tissue-volume distance (1-D Wasserstein) of bf16 to fp32 on the same seed, next
  to the largest distance between two fp32 seeds, and each run's distance to the held-out real maps;
- per lesion channel, the lesion rate (`lesion_present`, label_ldm.lesion_min_pixels);
- per tissue, the image intensity distance (`intensity_distances`) likewise; the modality filter's
  acceptance (images classified as the style's modality before any retry);
- pairs/s of each precision (compute only; the first block, which pays lazy initialisation, is left out
  where there are several).
bf16 keeps its fidelity where every bf16-vs-fp32 distance is at most the fp32 seed-to-seed spread.

`--compile` times the LDM UNet (one guided sampler step), the label decoder, the SPADE and the
classifier on a block of --batch inputs: eager, then `torch.compile` (first call = compile cost, then
the median of --repeats steady calls), in --compile-precision (bf16 by default). `sample` itself does
not compile: this measures whether it should.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Generators:
    """The workdir's trained networks in one precision, and `sample`'s way of making pairs from them."""

    def __init__(self, cfg, device: torch.device, bf16: bool, conditions: str):
        from brainspade.data.slice_cache import SliceCache
        from brainspade.generation.images import ImageGenerator, ModalityClassifier
        from brainspade.generation.labels import LabelSampler
        from brainspade.generation.sample_set import StyleSource, label_condition_drawer
        from brainspade.stages.config import generator_folders, section

        self.sampling = section(cfg, "sampling")
        self.labels = section(cfg, "label_sampling")
        self.sources = section(cfg, "data").source_datasets
        folders = generator_folders(cfg, self.sampling.modality_filter)
        self.cache = SliceCache.open(folders.slices)
        channels = self.cache.channels
        self.image_generator = ImageGenerator.from_folder(folders.image_generator, device, channels, bf16)
        self.classifier = (ModalityClassifier.from_folder(folders.modality_classifier, device, channels, bf16)
                           if self.sampling.modality_filter else None)
        self.label_sampler = LabelSampler.from_folders(folders.label_vae, folders.label_ldm, device, channels, bf16)
        self.bank = StyleSource(cfg.style.dataset, cfg.style.modality, cfg.style.folder).bank(self.cache)
        self.draw = label_condition_drawer(conditions, self.cache, self.label_sampler, self.labels, self.sources)
        self.device = device

    def make(self, n: int, batch: int, seed: int) -> dict:
        """n pairs of `seed` in blocks of `batch`: PV maps, images, the filter's first verdicts, seconds per block."""
        from brainspade.generation.pairs import PairSynthesiser

        synthesiser = PairSynthesiser(
            label_sampler=self.label_sampler, image_generator=self.image_generator, style_bank=self.bank,
            draw_conditions=self.draw, seed=seed, label_settings=self.labels, classifier=self.classifier,
            max_retries=self.sampling.max_retries, device=self.device)
        pv_maps, images, retries, seconds = [], [], [], []
        for start in range(0, n, batch):
            began = time.perf_counter()
            made = synthesiser.make(range(start, min(start + batch, n)))
            synchronise(self.device)
            seconds.append(time.perf_counter() - began)
            pv_maps.append(made.pv_maps)
            images.append(made.images[:, 0].numpy())
            retries += [int(record["retries"]) for record in made.records]
        timed = seconds[1:] if len(seconds) > 1 else seconds
        pairs_timed = n - min(batch, n) if len(seconds) > 1 else n
        return {"pv_maps": torch.cat(pv_maps), "images": np.concatenate(images), "retries": np.array(retries),
                "pairs_per_second": pairs_timed / sum(timed)}


def fidelity(runs: dict[str, dict], cache, sources, min_pixels: int) -> dict:
    """Distances of bf16 to fp32 on the same seed and between fp32 seeds, with the project's metrics."""
    from brainspade.evaluation.metrics import (
        intensity_distances,
        lesion_present,
        tissue_intensities,
        tissue_volumes,
        volume_distances,
    )
    from brainspade.training.label_batches import load_pv_maps

    channels = list(cache.channels)
    held_out = tissue_volumes(load_pv_maps(cache, cache.label_indices(split="test", datasets=list(sources))))
    volumes = {name: tissue_volumes(run["pv_maps"]) for name, run in runs.items()}
    labels = {name: run["pv_maps"].argmax(dim=1).numpy() for name, run in runs.items()}
    intensities = {name: tissue_intensities(run["images"], labels[name], channels) for name, run in runs.items()}
    rates = {name: {lesion: float(lesion_present(run["pv_maps"], channels.index(lesion), min_pixels).float().mean())
                    for lesion in cache.lesion_channels} for name, run in runs.items()}
    fp32 = [name for name in runs if name.startswith("fp32")]
    bf16, same_seed = "bf16 seed 0", fp32[0]

    def pair(a: str, b: str) -> dict:
        return {"volume": volume_distances(volumes[a], volumes[b], channels),
                "intensity": intensity_distances(intensities[a], intensities[b]),
                "lesion_rate": {k: abs(rates[a][k] - rates[b][k]) for k in rates[a]}}

    spread_pairs = [pair(a, b) for a, b in itertools.combinations(fp32, 2)]

    def largest(kind: str) -> dict[str, float]:
        keys = set().union(*(p[kind] for p in spread_pairs)) if spread_pairs else set()
        return {k: max(p[kind].get(k, 0.0) for p in spread_pairs) for k in sorted(keys)}

    return {
        "bf16_vs_fp32_same_seed": pair(bf16, same_seed),
        "fp32_seed_spread": {kind: largest(kind) for kind in ("volume", "intensity", "lesion_rate")},
        "volume_to_held_out": {name: volume_distances(v, held_out, channels) for name, v in volumes.items()},
        "lesion_rates": rates,
        "pv_sum_error": {name: float((run["pv_maps"].sum(dim=1) - 1).abs().max()) for name, run in runs.items()},
        "accepted_first_time": {name: float((run["retries"] == 0).mean()) for name, run in runs.items()},
        "pairs_per_second": {name: run["pairs_per_second"] for name, run in runs.items()},
        "image_mean_abs_difference_same_seed": float(np.abs(runs[bf16]["images"] - runs[same_seed]["images"]).mean()),
    }


def within_spread(result: dict) -> dict[str, bool]:
    """Per kind of distance: is every bf16-vs-fp32 distance at most the largest fp32 seed-to-seed distance?"""
    verdict = {}
    for kind, distances in result["bf16_vs_fp32_same_seed"].items():
        spread = result["fp32_seed_spread"][kind]
        verdict[kind] = all(value <= spread.get(key, 0.0) + 1e-12 for key, value in distances.items())
    return verdict


def time_call(function, device: torch.device, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of `repeats` further calls)."""
    began = time.perf_counter()
    function()
    synchronise(device)
    first = time.perf_counter() - began
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        synchronise(device)
        times.append(time.perf_counter() - began)
    return first, statistics.median(times)


def compile_timings(generators: Generators, batch: int, backend: str, repeats: int, rows: list[dict],
                    save=lambda: None) -> None:
    """Eager and compiled seconds per call of each sampling network on one block (in the generators' precision),
    appended to `rows`; `save` is called after each network, so a run cut short keeps what it timed."""
    from brainspade.engine.runtime import bf16_autocast

    device, bf16 = generators.device, generators.label_sampler.bf16
    sampler, image_generator = generators.label_sampler, generators.image_generator
    latents = torch.randn(batch, *sampler.latent_shape, device=device)
    conditions = generators.draw(list(range(batch))).to(device)
    guided = generators.labels.guidance_scale != 1.0
    if guided:  # one guided step evaluates the conditional and the unconditional prediction in one batch
        dropped = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)]).to(device)
        unet_inputs = (latents.repeat(2, 1, 1, 1), torch.full((2 * batch,), 500, device=device), conditions.repeat(2, 1),
                       dropped)
    else:
        unet_inputs = (latents, torch.full((batch,), 500, device=device), conditions)
    # The SPADE's inputs as `sample` gives them (style codes with the classifier's modality, noise), caught on a call.
    caught: list[tuple] = []
    handle = image_generator.generator.register_forward_pre_hook(lambda module, inputs: caught.append(inputs))
    styles = torch.stack([torch.from_numpy(generators.bank.image(i % len(generators.bank)))[None]
                          for i in range(batch)]).to(device)
    with torch.no_grad():
        image_generator.generate(sampler.vae.decode(latents), styles, list(range(batch)))
    handle.remove()
    calls = {  # the two that cost most per pair first
        f"LDM UNet, one sampler step ({len(unet_inputs[0])} latents)": (sampler.unet, unet_inputs),
        f"SPADE generator ({batch} maps)": (image_generator.generator, caught[0]),
        f"label decoder ({batch} latents)": (sampler.vae.decode, (latents,)),
    }
    if generators.classifier is not None:
        calls[f"classifier ({batch} images)"] = (generators.classifier.network, (styles,))
    for name, (network, inputs) in calls.items():
        def call(model, inputs=inputs):
            with torch.no_grad(), bf16_autocast(device, bf16):
                return model(*inputs)

        _, eager = time_call(lambda network=network, call=call: call(network), device, repeats)
        compiled = torch.compile(network, backend=backend, dynamic=False)
        first, steady = time_call(lambda compiled=compiled, call=call: call(compiled), device, repeats)
        rows.append({"network": name, "precision": "bf16" if bf16 else "fp32", "eager_seconds": eager,
                     "compiled_seconds": steady, "compile_seconds": first - steady, "backend": backend,
                     "speed_up": eager / steady if steady > 0 else None})
        print(f"[bench_sample_precision] {rows[-1]}", flush=True)
        save()


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def markdown(args, result: dict, verdict: dict, timings: list[dict], machine: str, seconds: float) -> str:
    f = result
    title = (f"bf16 against fp32 sampling: {args.n} pairs per run, fp32 seeds {args.seeds}, bf16 seed {args.seeds[0]}"
             if f else "torch.compile of the sampling networks")
    lines = [
        f"## {title}",
        "",
        f"`scripts/bench_sample_precision.py --workdir {args.workdir_label} --profile {args.profile} --n {args.n} "
        f"--batch {args.batch} --seeds {' '.join(map(str, args.seeds))} --conditions {args.conditions}"
        f"{' --compile' if args.compile else ''}` at `{git_commit()}`; {machine}; {seconds:.0f} s.",
        "",
    ]
    if f:
        lines += fidelity_tables(f, verdict)
    if timings:
        lines += ["", "| network | precision | eager s/call | compiled s/call | compile s | speed-up | backend |",
                  "|---|---|---|---|---|---|---|"]
        for row in timings:
            lines.append(f"| {row['network']} | {row['precision']} | {row['eager_seconds']:.4f} | "
                         f"{row['compiled_seconds']:.4f} | {row['compile_seconds']:.1f} | {row['speed_up']:.2f} | "
                         f"{row['backend']} |")
    return "\n".join(lines) + "\n"


def fidelity_tables(f: dict, verdict: dict) -> list[str]:
    lines = [
        "| | " + " | ".join(f["pairs_per_second"]) + " |",
        "|---|" + "---|" * len(f["pairs_per_second"]),
        "| pairs/s (compute) | " + " | ".join(f"{v:.2f}" for v in f["pairs_per_second"].values()) + " |",
        "| largest \\|PV sum − 1\\| | " + " | ".join(f"{v:.1e}" for v in f["pv_sum_error"].values()) + " |",
        "| accepted by the filter at once | " + " | ".join(f"{v:.2f}" for v in f["accepted_first_time"].values())
        + " |",
    ]
    for lesion in next(iter(f["lesion_rates"].values())):
        lines.append(f"| lesion rate {lesion} | " + " | ".join(f"{r[lesion]:.3f}" for r in f["lesion_rates"].values())
                     + " |")
    mean_to_real = {name: float(np.mean(list(d.values()))) for name, d in f["volume_to_held_out"].items()}
    lines.append("| tissue-volume W1 to held-out real (mean over channels) | "
                 + " | ".join(f"{v:.4f}" for v in mean_to_real.values()) + " |")
    lines += ["", "| distance | bf16 vs fp32, same seed | fp32 seed vs seed (largest) | within |", "|---|---|---|---|"]
    same, spread = f["bf16_vs_fp32_same_seed"], f["fp32_seed_spread"]
    for kind, label in (("volume", "tissue volume W1"), ("lesion_rate", "lesion-rate difference"),
                        ("intensity", "image intensity W1")):
        for key, value in same[kind].items():
            limit = spread[kind].get(key)
            mark = "–" if limit is None else ("yes" if value <= limit + 1e-12 else "**no**")
            limit_text = "–" if limit is None else f"{limit:.4f}"
            lines.append(f"| {label} {key} | {value:.4f} | {limit_text} | {mark} |")
    verdicts = ", ".join(f"{kind} {'yes' if kept else 'no'}" for kind, kept in verdict.items())
    lines += ["", f"Within the fp32 spread: {verdicts}. "
              f"Mean |image difference| bf16 vs fp32 on the same seed: {f['image_mean_abs_difference_same_seed']:.4f} "
              "(z-score units)."]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="a workdir with trained generators (read only)")
    parser.add_argument("--profile", default="cpu", help="the profile the generators were trained with")
    parser.add_argument("--n", type=int, default=32, help="pairs per run")
    parser.add_argument("--batch", type=int, default=16, help="pairs per block (sampling.batch_size)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fp32 seeds; bf16 uses the first")
    parser.add_argument("--conditions", default="as_training", help="healthy | lesion | as_training | ranges")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides, e.g. label_sampling.steps=20")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of each sampling network")
    parser.add_argument("--compile-backend", default="inductor", help="inductor (GPU) | aot_eager (a quick CPU check)")
    parser.add_argument("--compile-precision", choices=["bf16", "fp32", "both"], default="bf16")
    parser.add_argument("--skip-fidelity", action="store_true", help="only the --compile timings")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per network and mode (--compile)")
    parser.add_argument("--out", type=Path, help="write the markdown section to this file")
    parser.add_argument("--json", type=Path, help="write the numbers to this file")
    args = parser.parse_args()
    if len(args.seeds) < 2:
        parser.error("--seeds: give two or more (their spread is what bf16 is held to)")

    from brainspade.engine.runtime import select_device
    from brainspade.stages.config import compose, section

    began = time.time()
    device = select_device(args.device)
    workdir = args.workdir.expanduser().resolve()
    args.workdir_label = args.workdir
    cfg = compose("sample", [f"workdir={workdir}", f"profile={args.profile}", *args.override])
    runs, timings = {}, []

    def save_timings() -> None:
        if args.json and args.skip_fidelity:
            args.json.write_text(json.dumps({"compile": timings, "complete": False}, indent=2) + "\n")

    compiled = {"bf16": (True,), "fp32": (False,), "both": (False, True)}[args.compile_precision] if args.compile else ()
    for bf16 in (False, True):
        if args.skip_fidelity and bf16 not in compiled:
            continue
        generators = Generators(cfg, device, bf16, args.conditions)
        for seed in (args.seeds if not bf16 else args.seeds[:1]) if not args.skip_fidelity else ():
            name = f"{'bf16' if bf16 else 'fp32'} seed {seed}"
            print(f"[bench_sample_precision] {name}: {args.n} pairs", flush=True)
            runs[name] = generators.make(args.n, args.batch, seed)
        if bf16 in compiled:
            compile_timings(generators, args.batch, args.compile_backend, args.repeats, timings, save_timings)
    result = (fidelity(runs, generators.cache, generators.sources, section(cfg, "label_ldm").lesion_min_pixels)
              if runs else {})
    verdict = within_spread(result) if runs else {}
    machine = (f"{torch.cuda.get_device_name(device)}" if device.type == "cuda" else
               f"CPU, {torch.get_num_threads()} torch thread(s), {platform.processor() or platform.machine()}")
    text = markdown(args, result, verdict, timings, machine, time.time() - began)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "machine": machine,
                                         **result, "within_spread": verdict, "compile": timings, "complete": True},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
