"""The paper configuration measured on one CUDA GPU in one short, prepared run.

Usage (see benchmarks/GPU.md for how to read the results):
    scripts/gpu_check.sh [--out DIR] [--budget SECONDS] [--commit HASH]   # one CUDA GPU, ~7 min
    scripts/gpu_check.sh --dry-run [--out DIR]                            # same code paths, profile=tiny, CPU

Every measurement is a real `python -m brainspade <command> key=value ...` run in a subprocess
(the CLI is the interface; nothing of brainspade is imported here), each with its own time
limit; a part that fails or times out is recorded as such and the check goes on. Parts:

1. `make-phantom` + `prepare-data`: a small 1 mm phantom (profile=paper, 8 subjects) and its
   192 x 256 slice cache.
2. Per training stage (paper network sizes, the batch sizes below): a bf16 run of N steps
   (stopped once the stage reports its step rate: no evaluation), its resume (steps=2N: the stage
   must say "resuming at step N" and finish), a bf16 run with torch.compile and an fp32 run
   (both without compile: compile is measured in bf16 only). Step rates come from the stage's
   own TensorBoard scalars (log_every=1; wall time of each step's loss, so the checkpoint saved
   after the last step is not counted) and from the "trained at X steps/s" line it prints.
   Compile time = first-step time with compile - without (both from process start). Peak GPU
   memory: torch.cuda.max_memory_allocated/_reserved read inside the stage's process (this
   script starts the CLI through a small wrapper that prints them on exit or SIGTERM), and
   nvidia-smi's memory.used sampled every 200 ms (the whole device, CUDA context included).
3. `sample` with DDIM (20 steps) in fp32 and in bf16 (runtime.precision) and, with an LDM trained
   with label_ldm.objective=rflow, rectified flow (10 steps): pairs/s from the block records'
   times, the projected time of 20,000 pairs, and the achieved share of the bf16 peak from the
   FLOPs per pair (scripts/bench_train.py --flops, rescaled to the sampler steps used, and a count
   of the real sample command under torch.utils.flop_counter).
4. scripts/bench_sample_precision.py on the trained generators: bf16 against fp32 fidelity (PV sums,
   tissue-volume, lesion-rate and intensity distances against the fp32 seed-to-seed spread), then
   torch.compile of the LDM UNet step, the label decoder, the SPADE and the classifier with its cost.
5. The paper's batch through gradient accumulation: train-label-vae and train-label-ldm at the
   profile's batch_size and accumulate (256 = 8 x 32 and 4 x 64), a few steps, with peak memory.
6. DIR/results.json, DIR/results.md (summary tables) and DIR/logs.txt (the tail of every run's
   output); the summary is printed at the end. Results are rewritten after every part, so a
   run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD_TAG = "GPU_CHECK_CHILD "
RATE_LINE = re.compile(r"trained at ([0-9.]+) steps/s")
RESUME_LINE = re.compile(r"resuming at step (\d+)")
NOMINAL_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense bf16 tensor-core peaks (SXM)

# command -> (config section, finished inputs read from the workdir, optional overrides that cut evaluation)
STAGES = {
    "train-label-vae": ("label_vae", ["phantom", "slices"], ["label_vae.image_every=1000000"]),
    "train-modisc": ("modisc", ["phantom", "slices"], []),
    "train-label-ldm": ("label_ldm", ["phantom", "slices", "label_vae"],
                        ["label_ldm.eval_samples=2", "label_ldm.eval_batch_size=2",
                         "label_ldm.image_every=1000000", "label_sampling.steps=2"]),
    "train-image-generator": ("image_generator", ["phantom", "slices", "modisc"],
                              ["image_generator.evaluation.max_images=2", "image_generator.evaluation.batch_size=2",
                               "image_generator.image_every=1000000"]),
}
GPU_BATCH = {"label_vae": 32, "label_ldm": 64, "modisc": 32, "image_generator": 8}
DRY_BATCH = {"label_vae": 4, "label_ldm": 8, "modisc": 4, "image_generator": 2}
ACCUMULATED = ("label_vae", "label_ldm")  # sections with `accumulate`: 1 in the timed runs, the profile's in "paper batch"
DRY_PAPER_BATCH = {"label_vae": (8, 2), "label_ldm": (8, 2)}  # (batch_size, accumulate) of the dry run's paper-batch runs
# One train and one test subject per site ([train, dev, test]): prepare-data refuses a site without both. The dry run uses the same
# counts (at tiny's size), so a manifest rule the GPU run would break fails there first.
PHANTOM_SUBJECTS = ["phantom.subjects_per_site={siteA: [1, 0, 1], siteB: [1, 0, 1], siteC: [1, 0, 1], siteT: [1, 0, 1], "
                    "siteN: [1, 0, 1]}"]
GPU_PHANTOM = ["phantom.resolution_mm=1", "slices.size=[192,256]", *PHANTOM_SUBJECTS]
GIB = 2**30


# ---------------------------------------------------------------- the wrapper every brainspade run goes through


def child_main(argv: list[str]) -> int:
    """`python -m brainspade ARGV` in this process; print peak CUDA memory (and counted FLOPs) on exit or SIGTERM."""
    count_flops = bool(argv) and argv[0] == "--count-flops"
    argv = argv[1:] if count_flops else argv
    if argv and argv[0] == "--":
        argv = argv[1:]
    import runpy

    import torch

    counter = None
    reported = []

    def report() -> None:
        if reported:
            return
        reported.append(True)
        info = {}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            info["peak_allocated"] = torch.cuda.max_memory_allocated()
            info["peak_reserved"] = torch.cuda.max_memory_reserved()
        if counter is not None:
            info["flops"] = counter.get_total_flops()
        print(CHILD_TAG + json.dumps(info), flush=True)

    def on_term(signum, frame) -> None:
        report()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    backend = os.environ.get("GPU_CHECK_COMPILE_BACKEND")
    if backend:  # the dry run: dynamo + AOTAutograd without inductor's C++ build (minutes on a small CPU)
        import functools

        compile_ = torch.compile
        torch.compile = functools.wraps(compile_)(lambda model=None, **kw: compile_(model, **{**kw, "backend": backend}))
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        counter.__enter__()
    sys.argv = ["brainspade", *argv]
    code = 0
    try:
        runpy.run_module("brainspade", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    report()
    return code


# ---------------------------------------------------------------- running parts


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dry = args.dry_run
        self.start = time.time()
        self.deadline = self.start + args.budget
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.main = self.work / "main"
        self.log_path = self.out / "logs.txt"
        self.log_path.write_text("")
        self.known = config_tree()
        self.results: dict = {
            "schema": 1, "mode": "dry-run" if self.dry else "gpu",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.start)),
            "budget_seconds": args.budget, "command": "scripts/gpu_check.sh " + " ".join(sys.argv[1:]),
            "machine": {}, "settings": {}, "parts": [], "stages": {}, "sampling": [], "flops": {},
            "sample_precision": None, "sample_compile": None, "paper_batch": {}, "dropped_overrides": [], "notes": [],
        }

    # -- config keys (only the optional evaluation cuts are filtered; every other key must exist)

    def optional(self, overrides: list[str]) -> list[str]:
        kept = []
        for override in overrides:
            key = override.split("=", 1)[0]
            if has_key(self.known, key):
                kept.append(override)
            elif override not in self.results["dropped_overrides"]:
                self.results["dropped_overrides"].append(override)
        return kept

    def common(self, workdir: Path) -> list[str]:
        args = [f"workdir={workdir}", f"profile={self.profile}", f"device={self.device}"]
        return args + (PHANTOM_SUBJECTS if self.dry else GPU_PHANTOM)

    @property
    def profile(self) -> str:
        return "tiny" if self.dry else "paper"

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    def remaining(self) -> float:
        return self.deadline - time.time()

    # -- one brainspade run

    def run(self, name: str, command: str, overrides: list[str], workdir: Path, limit: float, *,
            stop_at_rate: bool = False, count_flops: bool = False) -> dict:
        """One `brainspade COMMAND` run with its own time limit; never raises, never hangs."""
        timeout = min(limit, self.remaining() - 5)
        part = {"name": name, "command": command, "overrides": overrides, "limit_seconds": round(limit)}
        if timeout < 15:
            part.update(status="skipped", reason="time budget spent")
            self.record_part(part, [])
            return part
        argv = [sys.executable, str(Path(__file__).resolve()), "--child",
                *(["--count-flops"] if count_flops else []), "--", command, *self.common(workdir), *overrides]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1"}
        if self.dry:
            env["GPU_CHECK_COMPILE_BACKEND"] = "aot_eager"
        sampler = MemorySampler() if not self.dry else None
        lines: list[str] = []
        started = time.time()
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace", start_new_session=True)
        stream: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(process.stdout, stream), daemon=True).start()
        end_by, stopping, timed_out, rate_at = started + timeout, False, False, None
        while True:
            try:
                line = stream.get(timeout=0.5)
            except queue.Empty:
                line = ""
            if line is None:  # end of output
                break
            if line:
                lines.append(line.rstrip("\n"))
                if stop_at_rate and not stopping and RATE_LINE.search(line):
                    rate_at = time.time() - started
                    _signal(process, signal.SIGTERM)
                    stopping, end_by = True, time.time() + 30
            if time.time() > end_by:
                if not stopping:
                    timed_out = True
                    _signal(process, signal.SIGTERM)
                    stopping, end_by = True, time.time() + 15
                else:
                    _signal(process, signal.SIGKILL)
                    end_by = time.time() + 3600
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL)
            process.wait()
        wall = time.time() - started
        child = {}
        for line in lines:
            if line.startswith(CHILD_TAG):
                child = json.loads(line[len(CHILD_TAG):])
        rate = next((float(m.group(1)) for m in map(RATE_LINE.search, lines) if m), None)
        resumed = next((int(m.group(1)) for m in map(RESUME_LINE.search, lines) if m), None)
        ok = not timed_out and (process.returncode == 0 or (stop_at_rate and rate_at is not None))
        part.update(
            status="ok" if ok else ("timed out" if timed_out else "failed"), returncode=process.returncode,
            started_seconds=round(started - self.start, 1), wall_seconds=round(wall, 2),
            seconds_to_rate_line=None if rate_at is None else round(rate_at, 2), stage_steps_per_second=rate,
            resumed_at=resumed, peak_allocated_gib=_gib(child.get("peak_allocated")),
            peak_reserved_gib=_gib(child.get("peak_reserved")), counted_flops=child.get("flops"),
            nvidia_smi_peak_gib=sampler.stop() if sampler else None, process_start=started,
        )
        if not ok:
            part["error"] = _error_line(lines, timed_out, timeout)
        self.record_part(part, lines)
        return {**part, "lines": lines[-20:]}

    def record_part(self, part: dict, lines: list[str]) -> None:
        self.results["parts"].append(part)
        shown = [line for line in lines if not line.startswith(CHILD_TAG)][-150:]
        with self.log_path.open("a") as handle:
            handle.write(f"===== {part['name']}: {part['status']} ({part.get('wall_seconds', 0)} s)\n")
            handle.write(" ".join(["brainspade", part["command"], *part["overrides"]]) + "\n")
            handle.write("\n".join(shown) + "\n\n")
        status = part["status"] + (f": {part['error']}" if part.get("error") else "")
        print(f"[gpu_check] {time.time() - self.start:6.0f} s  {part['name']}: {status}", flush=True)
        self.save()

    def save(self) -> None:
        self.results["wall_seconds"] = round(time.time() - self.start, 1)
        write_atomic(self.out / "results.json", json.dumps(self.results, indent=2, default=str) + "\n")
        write_atomic(self.out / "results.md", summary_markdown(self.results))

    # -- the parts

    def machine(self) -> None:
        import torch

        info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "commit": self.args.commit or git_commit(), "gpu": None}
        if torch.cuda.is_available():
            properties = torch.cuda.get_device_properties(0)
            info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(properties.total_memory / GIB, 1),
                        multiprocessors=properties.multi_processor_count,
                        capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                        bf16_supported=torch.cuda.is_bf16_supported(), driver=nvidia_smi("driver_version"))
        self.results["machine"] = info
        self.save()

    def matmul_peak(self) -> None:
        """bf16 peak: the nominal dense figure of the GPU model and a measured 8192^3 matrix product."""
        import torch

        if not torch.cuda.is_available():
            return
        name = torch.cuda.get_device_name(0)
        nominal = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in name), None)
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        began, reps = time.perf_counter(), 10
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize()
        measured = reps * 2 * 8192**3 / (time.perf_counter() - began) / 1e12
        del a, b
        torch.cuda.empty_cache()
        self.results["flops"]["peak_bf16_tflops_nominal"] = nominal
        self.results["flops"]["peak_bf16_tflops_measured"] = round(measured, 1)
        self.save()

    def data(self) -> bool:
        """`prepare-data` (it makes the phantom first): one process start for both."""
        part = self.run("make-phantom + prepare-data", "prepare-data", [], self.main, 90 if self.dry else 420)
        finished = (_read_json(self.main / "phantom" / "manifest.json") or {}).get("finished")
        phantom = None
        if finished and "process_start" in part:
            phantom = round(time.mktime(time.strptime(finished, "%Y-%m-%dT%H:%M:%S")) - part["process_start"], 1)
        counts = next((line for line in part.pop("lines", []) if line.startswith("[prepare-data]")), None)
        self.results["data"] = {"seconds": part.get("wall_seconds"), "phantom_seconds_about": phantom,
                                "slices": counts, "ok": part["status"] == "ok"}
        return part["status"] == "ok"

    def stage_overrides(self, command: str, steps: int, precision: str, compile_: bool) -> list[str]:
        section, _, cuts = STAGES[command]
        overrides = [f"{section}.steps={steps}", f"{section}.checkpoint_every={self.args.steps}",
                     f"{section}.log_every=1", f"runtime.precision={precision}",
                     f"runtime.compile={'true' if compile_ else 'false'}"]
        batch = self.batch.get(section)
        if batch:
            overrides.append(f"{section}.batch_size={batch}")
        if section in ACCUMULATED:  # the timed runs: one micro-batch per step, as the batch column says
            overrides.append(f"{section}.accumulate=1")
        return overrides + self.optional(cuts)

    def scratch(self, tag: str, inputs: list[str]) -> Path:
        """A workdir whose inputs are links to the main workdir's finished stages."""
        workdir = self.work / tag
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        for name in inputs:
            if (self.main / name).exists():
                (workdir / name).symlink_to((self.main / name).resolve())
        return workdir

    def measured(self, part: dict, folder: Path) -> dict:
        """The figures of one training run: step rates, first-step time, peak memory."""
        times = step_times(folder / "tensorboard", part["process_start"]) if "process_start" in part else {}
        steady = steady_rate(times)
        first = round(times[min(times)] - part["process_start"], 2) if times else None
        if first is None and part.get("seconds_to_rate_line") and part.get("stage_steps_per_second"):
            first = round(part["seconds_to_rate_line"] - (self.args.steps - 1) / part["stage_steps_per_second"], 2)
        keys = ("status", "error", "wall_seconds", "stage_steps_per_second", "peak_allocated_gib",
                "peak_reserved_gib", "nvidia_smi_peak_gib")
        return {**{k: part.get(k) for k in keys if k in part}, "steady_steps_per_second": steady,
                "steps_logged": len(times), "first_step_seconds_from_start": first}

    def train_core(self, command: str) -> None:
        """bf16 run of N steps (stopped at its rate line), then its resume to 2N (finished: later stages read it)."""
        section, _, _ = STAGES[command]
        n = self.args.steps
        entry = self.results["stages"].setdefault(command, {"section": section})
        entry.update(steps=n, batch_size=self.batch.get(section) or config_value(self.known_profile, f"{section}.batch_size"),
                     paper_batch_size=config_value(self.known, f"{section}.batch_size"))
        limit = 120 if self.dry else 240
        tag = "bf16_compile" if self.dry else "bf16"  # dry run: compile rides on the first run (no extra start)
        resume = "resume" not in self.args.skip  # without the resume check, the first run finishes (later stages read it)
        first = self.run(f"{command} {tag}", command, self.stage_overrides(command, n, "bf16", self.dry), self.main,
                         limit, stop_at_rate=resume)
        entry[tag] = self.measured(first, self.main / section)
        if not resume:
            self.save()
            return
        second = self.run(f"{command} resume", command, self.stage_overrides(command, 2 * n, "bf16", False),
                          self.main, limit)
        entry["resume"] = resume_check(second, self.main / section, n)
        self.save()

    def train_variant(self, command: str, tag: str, precision: str, compile_: bool) -> None:
        section, inputs, _ = STAGES[command]
        entry = self.results["stages"].setdefault(command, {"section": section})
        workdir = self.scratch(f"{tag}_{section}", inputs)
        limit = (120 if self.dry else 300) if compile_ else (90 if self.dry else 180)
        part = self.run(f"{command} {tag}", command, self.stage_overrides(command, self.args.steps, precision, compile_),
                        workdir, limit, stop_at_rate=True)
        entry[tag] = self.measured(part, workdir / section)
        if compile_:
            with_compile = entry[tag].get("first_step_seconds_from_start")
            without = entry.get("bf16", {}).get("first_step_seconds_from_start")
            entry["compile_seconds"] = (round(with_compile - without, 1)
                                        if with_compile is not None and without is not None else None)
        shutil.rmtree(workdir, ignore_errors=True)
        self.save()

    def sample_overrides(self, n: int, name: str, batch: int, sampler: str, steps: int,
                         precision: str = "fp32") -> list[str]:
        return [f"n={n}", f"name={name}", f"label_sampling.sampler={sampler}", f"label_sampling.steps={steps}",
                f"sampling.batch_size={batch}", f"runtime.precision={precision}"] + self.optional(
                    ["sampling.max_retries=0", "sampling.share_label_maps=false"])

    @property
    def sample_batch(self) -> int:
        return self.args.sample_batch or (4 if self.dry else 128)

    def sample(self, sampler: str, steps: int, workdir: Path, tag: str, precision: str = "fp32",
               count_flops: bool = True) -> None:
        batch = self.sample_batch
        n, name = 3 * batch, f"gc_{tag}"
        part = self.run(f"sample {tag}", "sample", self.sample_overrides(n, name, batch, sampler, steps, precision),
                        workdir, 90 if self.dry else 180)
        row = {"sampler": sampler, "steps": steps, "precision": precision, "batch_size": batch, "n": n,
               "status": part["status"],
               "error": part.get("error"), "wall_seconds": part.get("wall_seconds"),
               "peak_allocated_gib": part.get("peak_allocated_gib"),
               "nvidia_smi_peak_gib": part.get("nvidia_smi_peak_gib")}
        if part["status"] == "ok":
            blocks = sorted(p.stat().st_mtime for p in (workdir / "samples" / name / "blocks").glob("*"))
            if len(blocks) >= 2 and blocks[-1] > blocks[0]:
                row["pairs_per_second"] = round((len(blocks) - 1) * batch / (blocks[-1] - blocks[0]), 3)
                row["timed_from"] = "block records after the first block"
            else:
                row["pairs_per_second"] = round(n / part["wall_seconds"], 3)
                row["timed_from"] = "process wall time (startup included)"
            row["projected_20000_pairs_minutes"] = round(20000 / row["pairs_per_second"] / 60, 1)
            shutil.rmtree(workdir / "samples" / name, ignore_errors=True)
        # On a GPU the count is the fallback for bench_train's FLOPs; the dry run keeps it to exercise it.
        needs_count = self.dry or (self.results["flops"].get("bench_train") or {}).get("status") != "ok"
        if part["status"] == "ok" and count_flops and needs_count:
            # The same command on a few pairs under torch's flop counter (every op it knows: convs, matmuls, attention)
            few = 2 if self.dry else 4
            counted = self.run(f"sample {tag} flop count", "sample",
                               self.sample_overrides(few, f"{name}_flops", few, sampler, steps), workdir,
                               60 if self.dry else 120, count_flops=True)
            if counted.get("counted_flops"):
                row["counted_gflop_per_pair"] = round(counted["counted_flops"] / few / 1e9, 2)
            shutil.rmtree(workdir / "samples" / f"{name}_flops", ignore_errors=True)
        self.results["sampling"].append(row)
        self.finish_sampling()

    def finish_sampling(self) -> None:
        """Achieved FLOP/s and share of the bf16 peak for every sampling row (FLOPs per pair: bench_train, else counted)."""
        flops = self.results["flops"]
        peak = flops.get("peak_bf16_tflops_nominal") or flops.get("peak_bf16_tflops_measured")
        for row in self.results["sampling"]:
            per_pair = None
            bench = flops.get("bench_train")
            if bench and bench.get("status") == "ok":
                per_pair = bench["total_gflop"] - bench["ldm_gflop"] + bench["ldm_gflop_per_step"] * row["steps"]
                row["gflop_per_pair_source"] = "scripts/bench_train.py --flops (LDM rescaled to the steps used)"
            elif row.get("counted_gflop_per_pair"):
                per_pair = row["counted_gflop_per_pair"]
                row["gflop_per_pair_source"] = "counted on the sample command"
            if per_pair and row.get("pairs_per_second"):
                row["gflop_per_pair"] = round(per_pair, 2)
                row["achieved_tflops"] = round(per_pair * row["pairs_per_second"] / 1e3, 3)
                if peak:
                    row["share_of_bf16_peak"] = round(row["achieved_tflops"] / peak, 5)
        self.save()

    def rflow(self) -> None:
        """A label LDM trained with the rectified-flow objective, then `sample` with its few-step sampler."""
        workdir = self.scratch("rflow", ["phantom", "slices", "label_vae", "modisc", "image_generator"])
        command = "train-label-ldm"
        overrides = self.stage_overrides(command, self.args.steps, "bf16", False) + ["label_ldm.objective=rflow"]
        part = self.run("train-label-ldm rflow", command, overrides, workdir, 90 if self.dry else 180)
        if part["status"] == "ok":
            self.sample("rflow", 3 if self.dry else 10, workdir, "rflow")
        else:
            self.results["sampling"].append({"sampler": "rflow", "steps": 10, "status": "not run",
                                             "error": f"LDM with objective=rflow: {part['status']}"})
        shutil.rmtree(workdir, ignore_errors=True)
        self.save()


    def run_script(self, name: str, argv: list[str], limit: float) -> dict:
        """One `python scripts/...` run with its own time limit (like `run`, without the CLI wrapper)."""
        timeout = min(limit, self.remaining() - 5)
        part = {"name": name, "command": argv[0], "overrides": argv[1:], "limit_seconds": round(limit)}
        if timeout < 15:
            part.update(status="skipped", reason="time budget spent")
            self.record_part(part, [])
            return part
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1"}
        sampler = MemorySampler() if not self.dry else None
        started = time.time()
        process = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        timed_out = False
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal(process, signal.SIGKILL)
            output, _ = process.communicate()
        lines = (output or "").splitlines()
        ok = not timed_out and process.returncode == 0
        part.update(status="ok" if ok else ("timed out" if timed_out else "failed"), returncode=process.returncode,
                    started_seconds=round(started - self.start, 1), wall_seconds=round(time.time() - started, 2),
                    nvidia_smi_peak_gib=sampler.stop() if sampler else None)
        if not ok:
            part["error"] = _error_line(lines, timed_out, timeout)
        self.record_part(part, lines)
        return part

    def precision_bench(self, steps: int, compile_: bool) -> None:
        """scripts/bench_sample_precision.py on the trained generators: fidelity, or the compile timings."""
        tag = "compile" if compile_ else "fidelity"
        out = self.out / f"sample_{tag}.json"
        batch = self.sample_batch
        argv = [str(REPO / "scripts" / "bench_sample_precision.py"), "--workdir", str(self.main),
                "--profile", self.profile, "--device", self.device, "--batch", str(batch), "--json", str(out),
                "--override", f"label_sampling.steps={steps}", "sampling.max_retries=0",
                *(PHANTOM_SUBJECTS if self.dry else GPU_PHANTOM)]
        if compile_:
            argv += ["--compile", "--skip-fidelity", "--repeats", "2" if self.dry else "5",
                     "--compile-backend", "aot_eager" if self.dry else "inductor"]
        else:
            argv += ["--n", str(batch), "--seeds", "0", "1", "2"]
        part = self.run_script(f"sample {tag} (bench_sample_precision)", argv,
                               (150 if compile_ else 120) if self.dry else (300 if compile_ else 180))
        result = _read_json(out) or {}  # the compile timings are saved network by network: a cut run keeps the first
        key = "sample_compile" if compile_ else "sample_precision"
        self.results[key] = {**result, "status": part["status"], "error": part.get("error")}
        self.save()

    def paper_batch(self, command: str) -> None:
        """The paper's batch through accumulation: the profile's batch_size and accumulate, a few bf16 steps."""
        section, inputs, _ = STAGES[command]
        if self.dry:
            batch, accumulate = DRY_PAPER_BATCH[section]
        else:
            batch = config_value(self.known_profile, f"{section}.batch_size")
            accumulate = config_value(self.known_profile, f"{section}.accumulate")
        workdir = self.scratch(f"paper_batch_{section}", inputs)
        steps = 3
        overrides = [o for o in self.stage_overrides(command, steps, "bf16", False)
                     if not o.startswith((f"{section}.batch_size=", f"{section}.accumulate="))]
        overrides += [f"{section}.batch_size={batch}", f"{section}.accumulate={accumulate}"]
        part = self.run(f"{command} paper batch", command, overrides, workdir, 120 if self.dry else 180,
                        stop_at_rate=True)
        self.results["paper_batch"][command] = {"batch_size": batch, "accumulate": accumulate, "steps": steps,
                                                **self.measured(part, workdir / section)}
        shutil.rmtree(workdir, ignore_errors=True)
        self.save()


def _pump(pipe, stream: queue.Queue) -> None:
    for line in pipe:
        stream.put(line)
    stream.put(None)


def _signal(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _gib(value) -> float | None:
    return None if value is None else round(value / GIB, 2)


def _error_line(lines: list[str], timed_out: bool, timeout: float) -> str:
    if timed_out:
        return f"no result within {timeout:.0f} s"
    useful = [line.strip() for line in lines if line.strip() and not line.startswith(CHILD_TAG)]
    for line in reversed(useful):
        if "Error" in line or "error" in line or line.startswith("brainspade "):
            return line[:300]
    return useful[-1][:300] if useful else "no output"


class MemorySampler:
    """nvidia-smi memory.used of GPU 0 every 200 ms while a run lasts (whole device: CUDA contexts included)."""

    def __init__(self):
        self.peak = None
        self.process = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                value = float(line.strip())
            except ValueError:
                continue
            self.peak = value if self.peak is None else max(self.peak, value)

    def stop(self) -> float | None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return None if self.peak is None else round(self.peak / 1024, 2)


def step_times(folder: Path, since: float) -> dict[int, float]:
    """Step -> wall time of the first event the stage logged for it (TensorBoard files written since `since`)."""
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    except ImportError:
        return {}
    times: dict[int, float] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        if path.stat().st_mtime < since:
            continue
        try:
            for event in EventFileLoader(str(path)).Load():
                if event.step > 0 and event.wall_time >= since and event.HasField("summary"):
                    times[event.step] = min(times.get(event.step, event.wall_time), event.wall_time)
        except Exception:  # a torn last record: keep what was read
            continue
    return times


def steady_rate(times: dict[int, float]) -> float | None:
    """Steps per second from the median interval between consecutive logged steps after the first."""
    steps = sorted(times)
    intervals = [(times[b] - times[a]) / (b - a) for a, b in zip(steps, steps[1:], strict=False) if b > a]
    if not intervals:
        return None
    median = statistics.median(intervals)
    return round(1 / median, 4) if median > 0 else None


def resume_check(part: dict, folder: Path, n: int) -> dict:
    manifest = _read_json(folder / "manifest.json")
    metrics = _read_json(folder / "metrics.json")
    runtime = (metrics or {}).get("runtime", {})
    finished_steps = (manifest or {}).get("steps")
    passed = (part["status"] == "ok" and part.get("resumed_at") == n and manifest is not None
              and finished_steps in (None, 2 * n))
    return {"passed": passed, "status": part["status"], "error": part.get("error"), "resumed_at": part.get("resumed_at"),
            "expected_resume_at": n, "finished": manifest is not None, "finished_steps": finished_steps,
            "steps_timed": runtime.get("steps_timed"), "stage_steps_per_second": part.get("stage_steps_per_second"),
            "wall_seconds": part.get("wall_seconds")}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def nvidia_smi(field: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader", "-i", "0"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


# ---------------------------------------------------------------- configs/ read as plain YAML (no Hydra here)


def config_tree(profile: str | None = None) -> dict:
    """The keys of configs/stage/*.yaml by package (and a profile overlay on top): which overrides exist."""
    import yaml

    tree: dict = {}
    paths = sorted((REPO / "configs" / "stage").glob("*.yaml"))
    if profile:
        paths.append(REPO / "configs" / "profile" / f"{profile}.yaml")
    for path in paths:
        text = path.read_text()
        package = re.search(r"#\s*@package\s+(\S+)", text)
        package = package.group(1) if package else path.stem
        data = yaml.safe_load(text) or {}
        node = tree if package == "_global_" else tree.setdefault(package, {})
        _merge(node, data)
    return tree


def _merge(into: dict, data: dict) -> None:
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def has_key(tree: dict, dotted: str) -> bool:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def config_value(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# ---------------------------------------------------------------- FLOPs per pair from scripts/bench_train.py


def bench_train_flops(profile: str, timeout: float) -> dict:
    argv = [sys.executable, str(REPO / "scripts" / "bench_train.py"), "--flops", "--profile", profile]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "error": f"no result within {timeout:.0f} s"}
    text = done.stdout
    total = re.search(r"\*\*total per pair\*\* \| \*\*([0-9.]+)\*\*", text)
    ldm = re.search(r"\| label LDM UNet x (\d+) steps x (\d+) \| ([0-9.]+) \|", text)
    if done.returncode != 0 or not total or not ldm:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {"status": "failed", "error": (lines[-1] if lines else f"exit code {done.returncode}")[:300]}
    steps, passes, ldm_gflop = int(ldm.group(1)), int(ldm.group(2)), float(ldm.group(3))
    return {"status": "ok", "total_gflop": float(total.group(1)), "ldm_gflop": ldm_gflop, "config_steps": steps,
            "guidance_passes": passes, "ldm_gflop_per_step": ldm_gflop / steps,
            "table": [line for line in text.splitlines() if line.startswith("|")]}


# ---------------------------------------------------------------- summary


def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _rate(run: dict | None) -> str:
    if not run:
        return "not run"
    if run.get("status") != "ok":
        return run.get("status", "?")
    steady, stage = run.get("steady_steps_per_second"), run.get("stage_steps_per_second")
    return f"{_fmt(steady, 3)} ({_fmt(stage, 3)})"


def _memory(run: dict | None) -> str:
    if not run or run.get("peak_allocated_gib") is None:
        return "–"
    return f"{run['peak_allocated_gib']:.1f} / {_fmt(run.get('peak_reserved_gib'), 1)} / {_fmt(run.get('nvidia_smi_peak_gib'), 1)}"


def summary_markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [
        f"# gpu_check ({results['mode']}): {machine.get('gpu') or 'no GPU'}",
        "",
        f"- started {results['started']}, {results.get('wall_seconds')} s of a {results['budget_seconds']} s budget; "
        f"command `{results['command']}`",
        f"- machine: {machine.get('platform')}, {machine.get('cpu_count')} CPU cores, python {machine.get('python')}",
        f"- GPU: {machine.get('gpu')} ({machine.get('gpu_memory_gib')} GiB, capability {machine.get('capability')}, "
        f"driver {machine.get('driver')}); torch {machine.get('torch')}, CUDA {machine.get('cuda')}, "
        f"cuDNN {machine.get('cudnn')}",
        f"- commit: {machine.get('commit')}",
        f"- settings: {json.dumps(results['settings'])}",
    ]
    data = results.get("data")
    if data:
        lines.append(f"- data: phantom + slice cache {data.get('seconds')} s (phantom about "
                     f"{data.get('phantom_seconds_about')} s); {data.get('slices')}")
    lines += ["", "## Training (steps/s: steady from the stage's per-step logs (the stage's own line); "
              "memory GiB: allocated / reserved / nvidia-smi)", "",
              "| stage | batch (paper) | steps | bf16 | fp32 | bf16 + compile | compile s | bf16 memory | fp32 memory "
              "| compile memory | resume N→2N |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for command, entry in results["stages"].items():
        resume = entry.get("resume") or {}
        resumed = ("passed" if resume.get("passed") else
                   f"FAILED ({resume.get('status')}, resumed at {resume.get('resumed_at')})") if resume else "not run"
        lines.append(
            f"| {command} | {entry.get('batch_size')} ({entry.get('paper_batch_size')}) | {entry.get('steps')} | "
            f"{_rate(entry.get('bf16'))} | {_rate(entry.get('fp32'))} | {_rate(entry.get('bf16_compile'))} | "
            f"{_fmt(entry.get('compile_seconds'), 1)} | {_memory(entry.get('bf16'))} | {_memory(entry.get('fp32'))} | "
            f"{_memory(entry.get('bf16_compile'))} | {resumed} |")
    lines += ["", "## Sampling (`brainspade sample`)", "",
              "| sampler | steps | precision | batch | pairs/s | 20,000 pairs | GFLOP/pair | TFLOP/s | share of bf16 peak "
              "| peak GiB (alloc / smi) | status |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["sampling"]:
        share = row.get("share_of_bf16_peak")
        lines.append(
            f"| {row['sampler']} | {row['steps']} | {row.get('precision', 'fp32')} | {row.get('batch_size')} | "
            f"{_fmt(row.get('pairs_per_second'), 2)} | "
            f"{_fmt(row.get('projected_20000_pairs_minutes'), 1, ' min')} | {_fmt(row.get('gflop_per_pair'), 1)} | "
            f"{_fmt(row.get('achieved_tflops'), 2)} | {'–' if share is None else f'{100 * share:.2f} %'} | "
            f"{_fmt(row.get('peak_allocated_gib'), 1)} / {_fmt(row.get('nvidia_smi_peak_gib'), 1)} | "
            f"{row['status']}{': ' + row['error'] if row.get('error') else ''} |")
    flops = results["flops"]
    lines += ["", f"bf16 peak: nominal {flops.get('peak_bf16_tflops_nominal')} TFLOP/s, measured 8192³ matmul "
              f"{flops.get('peak_bf16_tflops_measured')} TFLOP/s. FLOPs per pair: bench_train "
              f"{(flops.get('bench_train') or {}).get('status', 'not run')}"
              f"{': ' + flops['bench_train']['error'] if (flops.get('bench_train') or {}).get('error') else ''}."]
    lines += precision_markdown(results.get("sample_precision"), results.get("sample_compile"))
    if results.get("paper_batch"):
        lines += ["", "## The paper's batch through accumulation (bf16, a few steps)", "",
                  "| stage | batch_size | accumulate | micro-batch | steps/s | samples/s | memory GiB | status |",
                  "|---|---|---|---|---|---|---|---|"]
        for command, run in results["paper_batch"].items():
            rate = run.get("steady_steps_per_second") or run.get("stage_steps_per_second")
            lines.append(f"| {command} | {run['batch_size']} | {run['accumulate']} | "
                         f"{run['batch_size'] // max(1, run['accumulate'])} | {_fmt(rate, 3)} | "
                         f"{_fmt(rate * run['batch_size'] if rate else None, 1)} | {_memory(run)} | "
                         f"{run.get('status')}{': ' + run['error'] if run.get('error') else ''} |")
    failures = [p for p in results["parts"] if p["status"] != "ok"]
    lines += ["", "## Parts", "", "| part | status | wall s | note |", "|---|---|---|---|"]
    for part in results["parts"]:
        note = part.get("error") or part.get("reason") or ""
        lines.append(f"| {part['name']} | {part['status']} | {_fmt(part.get('wall_seconds'), 1)} | {note} |")
    if results["dropped_overrides"]:
        lines += ["", f"Evaluation cuts not in configs/ (dropped): {', '.join(results['dropped_overrides'])}"]
    for note in results["notes"]:
        lines += ["", note]
    lines += ["", f"{len(failures)} part(s) not ok.", ""]
    return "\n".join(lines)


def precision_markdown(fidelity: dict | None, compiled: dict | None) -> list[str]:
    """bench_sample_precision.py's results: bf16 against the fp32 seed spread, and the compile timings."""
    lines: list[str] = []
    if fidelity and "bf16_vs_fp32_same_seed" in fidelity:
        lines += ["", "## bf16 against fp32 sampling (scripts/bench_sample_precision.py)", "",
                  "| | " + " | ".join(fidelity["pairs_per_second"]) + " |",
                  "|---|" + "---|" * len(fidelity["pairs_per_second"]),
                  "| pairs/s (compute, no files) | " + " | ".join(_fmt(v, 2) for v in fidelity["pairs_per_second"].values())
                  + " |",
                  "| largest \\|PV sum − 1\\| | " + " | ".join(f"{v:.1e}" for v in fidelity["pv_sum_error"].values()) + " |",
                  "", "| distance | bf16 vs fp32, same seed (largest over keys) | fp32 seed vs seed (largest) | within |",
                  "|---|---|---|---|"]
        for kind, kept in fidelity["within_spread"].items():
            same = fidelity["bf16_vs_fp32_same_seed"][kind]
            spread = fidelity["fp32_seed_spread"][kind]
            lines.append(f"| {kind} | {_fmt(max(same.values(), default=None), 4)} | "
                         f"{_fmt(max(spread.values(), default=None), 4)} | {'yes' if kept else '**no**'} |")
    elif fidelity and fidelity.get("status") != "skipped":
        lines += ["", f"bf16 against fp32 sampling: {fidelity.get('status')} {fidelity.get('error') or ''}"]
    if compiled and compiled.get("compile"):
        lines += ["", "## torch.compile of the sampling networks (one block)", "",
                  "| network | precision | eager s/call | compiled s/call | compile s | speed-up | backend |",
                  "|---|---|---|---|---|---|---|"]
        for row in compiled["compile"]:
            lines.append(f"| {row['network']} | {row['precision']} | {_fmt(row['eager_seconds'], 4)} | "
                         f"{_fmt(row['compiled_seconds'], 4)} | {_fmt(row['compile_seconds'], 1)} | "
                         f"{_fmt(row['speed_up'], 2)} | {row['backend']} |")
    if compiled and compiled.get("status") != "ok":
        lines += ["", f"torch.compile of the sampling networks: {compiled.get('status')} {compiled.get('error') or ''}"]
    return lines


# ---------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="profile=tiny on the CPU (tests)")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/gpu_runs/<timestamp>)")
    parser.add_argument("--work", help="scratch workdir (default a fresh temporary folder, removed at the end)")
    parser.add_argument("--budget", type=float, help="seconds for everything (default 420; dry run 170)")
    parser.add_argument("--steps", type=int, help="training steps N per run (default 20; dry run 3)")
    parser.add_argument("--batch", nargs="*", default=[], metavar="SECTION=N",
                        help="batch sizes (default on a GPU: label_vae=32 label_ldm=64 modisc=32 image_generator=8)")
    parser.add_argument("--sample-batch", type=int, help="sampling.batch_size (default 128; dry run 4)")
    parser.add_argument("--skip", nargs="*",
                        choices=["fp32", "compile", "rflow", "sample", "resume", "precision", "sample-compile",
                                 "paper-batch"],
                        help="parts to leave out (default none; dry run: fp32 and rflow, which the CPU tests run "
                             "anyway, and the separate compile runs: there the first run of each stage is compiled). "
                             "resume: no resume runs (each stage's first run then finishes); precision: no bf16 "
                             "sample and fidelity; sample-compile: no compile of the sampling networks; paper-batch: "
                             "no runs at the profile's batch and accumulate")
    parser.add_argument("--commit", help="the git commit measured (where the tree has no .git)")
    args = parser.parse_args()
    args.budget = args.budget or (170.0 if args.dry_run else 420.0)
    args.steps = args.steps or (3 if args.dry_run else 20)
    args.skip = (["fp32", "compile", "rflow"] if args.dry_run else []) if args.skip is None else args.skip
    args.out = args.out or REPO / "benchmarks" / "gpu_runs" / time.strftime("%Y%m%d-%H%M%S")

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; use --dry-run for the CPU check", file=sys.stderr)
        return 2
    check = Check(args)
    check.batch = dict(DRY_BATCH if args.dry_run else GPU_BATCH)
    for item in args.batch:
        section, _, value = item.partition("=")
        check.batch[section] = int(value)
    check.known_profile = config_tree(check.profile)
    check.results["settings"] = {
        "profile": check.profile, "device": check.device, "steps": args.steps, "batch_sizes": check.batch,
        "phantom": PHANTOM_SUBJECTS if args.dry_run else GPU_PHANTOM, "skip": args.skip,
        "sample_batch": args.sample_batch or (4 if args.dry_run else 128),
        "compile": "bf16 only" + (", backend aot_eager (no inductor build on the CPU)" if args.dry_run else ", inductor"),
        "work": str(check.work),
    }
    check.machine()
    flops_result: dict = {}
    flops_thread = threading.Thread(  # CPU work: overlaps the phantom build
        target=lambda: flops_result.update(bench_train_flops(check.profile, 120 if args.dry_run else 240)), daemon=True)
    flops_thread.start()
    try:
        check.matmul_peak()
        if check.data():
            for command in STAGES:
                check.train_core(command)
            flops_thread.join(timeout=max(1.0, min(60.0, check.remaining() - 60)))
            check.results["flops"]["bench_train"] = dict(flops_result) or {"status": "not finished"}
            ddim_steps = 3 if args.dry_run else 20
            if "sample" not in args.skip:
                check.sample("ddim", ddim_steps, check.main, "ddim")
                if "precision" not in args.skip:
                    check.sample("ddim", ddim_steps, check.main, "ddim_bf16", precision="bf16", count_flops=False)
                    check.precision_bench(ddim_steps, compile_=False)
                if "sample-compile" not in args.skip:
                    check.precision_bench(ddim_steps, compile_=True)
            if "paper-batch" not in args.skip:
                for command in ("train-label-vae", "train-label-ldm"):
                    check.paper_batch(command)
            # Cheap first, then by value, so that a spent budget leaves out the least: fp32 of every stage,
            # compile of the SPADE and the LDM UNet, rectified flow, compile of the label VAE and the classifier.
            later = [("fp32", c) for c in STAGES]
            later += [("compile", c) for c in ("train-image-generator", "train-label-ldm")] + [("rflow", None)]
            later += [("compile", c) for c in ("train-label-vae", "train-modisc")]
            for kind, command in later:
                if kind in args.skip:
                    continue
                if kind == "compile":
                    check.train_variant(command, "bf16_compile", "bf16", True)
                elif kind == "fp32":
                    check.train_variant(command, "fp32", "fp32", False)
                elif "sample" not in args.skip:
                    check.rflow()
        else:
            check.results["notes"].append("The phantom or its slice cache failed: nothing else could run.")
    finally:
        if not check.results["flops"].get("bench_train"):
            check.results["flops"]["bench_train"] = dict(flops_result) or {"status": "not finished"}
        check.finish_sampling()
        check.save()
        if not args.work:
            shutil.rmtree(check.work, ignore_errors=True)
    print(summary_markdown(check.results))
    print(f"[gpu_check] results in {args.out}/results.json and results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
