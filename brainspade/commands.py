"""The commands: each `brainspade <command>` is a Hydra primary config in configs/ and a stage's `run(cfg) -> Path`.

A plain table, read by the CLI (which runs a command) and by the demo (which runs several in turn), so that no
stage needs the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Command:
    module: str  # stage module with run(cfg) -> Path
    summary: str


COMMANDS: dict[str, Command] = {
    "make-phantom": Command("brainspade.stages.make_phantom", "write the embedded multi-site MNI152 phantom data set"),
    "prepare-data": Command("brainspade.stages.prepare_data", "validate a NIfTI data set and write the 2D slice cache"),
    "train-label-vae": Command("brainspade.stages.train_label_vae", "train the KL-VAE over partial-volume label maps"),
    "train-label-ldm": Command("brainspade.stages.train_label_ldm", "train the conditioned latent diffusion model over label latents"),
    "sample-labels": Command("brainspade.stages.sample_labels", "sample synthetic PV label maps (--n N) from the label LDM"),
    "train-modisc": Command("brainspade.stages.train_modisc", "train the modality/data-set classifier on real slices"),
    "train-image-generator": Command("brainspade.stages.train_image_generator", "train the SPADE VAE-GAN image generator"),
    "sample": Command("brainspade.stages.sample", "synthesise (image, label) pairs as an nnU-Net data set (--n N)"),
    "sample-randomised": Command("brainspade.stages.sample_randomised",
                                 "SynthSeg-style domain-randomised images on the label maps of a sample set"),
    "run-experiment": Command("brainspade.stages.run_experiment", "train nnU-Nets on real/synthetic data and compare them (iod|ood|lesion)"),
    "evaluate-generators": Command("brainspade.stages.evaluate_generators",
                                   "score sample sets: realism (FID/KID), diversity, consistency, memorisation"),
    "make-manifest": Command("brainspade.stages.make_manifest", "write manifest.csv for a BIDS-style folder (sub-*/anat + derivatives)"),
    "segment": Command("brainspade.stages.segment", "segment your own scans with a trained arm, labels on each scan's grid"),
    "demo": Command("brainspade.stages.demo", "run the whole method on the embedded phantom"),
}
