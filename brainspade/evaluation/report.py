"""Figures, report.md of one sample set, and the summary table over every scored set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainspade.engine.logging import LABEL_COLOURS, in_plain_style
from brainspade.evaluation.metrics import Nearest

PROTOCOL = (
    "Real references follow the data protocol: the generators trained on the train split of the source data "
    "sets, so realism, diversity and label realism compare with the held-out test split (used here for "
    "evaluation only), matched to the samples' slice positions and lesion conditions; the real-vs-real floor "
    "scores train-split slices against the same test slices, with as many slices as the synthetic set. "
    "Memorisation measures distances to the train split and uses test-split slices as the reference."
)

REAL, SYNTHETIC = "tab:blue", "tab:orange"  # the same colour for each set in every figure


def _colour(labels: np.ndarray) -> np.ndarray:
    return LABEL_COLOURS[labels % len(LABEL_COLOURS)]


@in_plain_style
def plot_grid(path: Path, samples, channels: Sequence[str], count: int) -> None:
    """Samples of the set (its style and conditions in the title): images above, their label maps below."""
    import matplotlib.pyplot as plt

    count = min(count, len(samples.images))
    figure, axes = plt.subplots(2, count, figsize=(1.5 * count, 3.4), squeeze=False)
    for k in range(count):
        axes[0][k].imshow(samples.images[k], cmap="gray")
        axes[1][k].imshow(_colour(samples.labels[k]), interpolation="nearest")
        axes[0][k].set_title(samples.case_ids[k], fontsize="x-small")
        for axis in axes[:, k]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(f"{samples.name}: style {samples.style_dataset or 'folder'}/{samples.style_modality}, "
                    f"conditions {samples.conditions}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


@in_plain_style
def plot_intensities(path: Path, synthetic: dict[str, np.ndarray], real: dict[str, np.ndarray], bins: int) -> None:
    """Per tissue, histograms of the z-scored intensities of synthetic and held-out real slices."""
    import matplotlib.pyplot as plt

    names = [n for n in synthetic if n in real]
    figure, axes = plt.subplots(1, len(names), figsize=(2.4 * len(names), 2.4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        edges = np.histogram_bin_edges(np.concatenate([synthetic[name], real[name]]), bins=bins)
        axis.hist(real[name], bins=edges, density=True, alpha=0.5, label="real (held out)", color=REAL)
        axis.hist(synthetic[name], bins=edges, density=True, alpha=0.5, label="synthetic", color=SYNTHETIC)
        axis.set_title(name)
        axis.set_yticks([])
    axes[0][0].legend(fontsize="x-small")
    figure.supxlabel("z-scored intensity")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


@in_plain_style
def plot_labels(path: Path, synthetic: dict, real: dict, channels: Sequence[str], bins: int) -> None:
    """Histograms of the share of the slice each channel covers, and of lesion sizes: synthetic vs held-out real."""
    import matplotlib.pyplot as plt

    panels = [(f"{name} volume", synthetic["volumes"][:, i], real["volumes"][:, i]) for i, name in enumerate(channels)]
    panels += [(f"{name} size (slices with it)", synthetic["lesion_sizes"][name], real["lesion_sizes"][name])
               for name in synthetic["lesion_sizes"]]
    figure, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.4), squeeze=False)
    for axis, (title, fake, true) in zip(axes[0], panels, strict=True):
        values = np.concatenate([fake, true])
        edges = np.histogram_bin_edges(values if len(values) else [0.0, 1.0], bins=bins)
        for data, label, colour in ((true, "real (held out)", REAL), (fake, "synthetic", SYNTHETIC)):
            if len(data):
                axis.hist(data, bins=edges, density=True, alpha=0.5, label=label, color=colour)
        axis.set_title(title, fontsize="small")
        axis.set_yticks([])
    axes[0][0].legend(fontsize="x-small")
    figure.supxlabel("share of the slice")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


@in_plain_style
def plot_nearest(path: Path, samples: np.ndarray, synthetic: Nearest, heldout: Nearest, matches: np.ndarray,
                 count: int, distance: str, label_count: int | None) -> None:
    """The closest (sample, nearest training slice) pairs, and the nearest-neighbour distances of samples vs held-out slices.

    `matches` (N, H, W) is the nearest training slice of every sample; label maps when `label_count` is given.
    """
    import matplotlib.pyplot as plt

    order = np.argsort(synthetic.distances)[: min(count, len(synthetic.distances))]
    figure, axes = plt.subplots(2, len(order) + 1, figsize=(1.5 * len(order) + 3.2, 3.4), squeeze=False,
                                gridspec_kw={"width_ratios": [1] * len(order) + [2]})
    for column, k in enumerate(order):
        for row, panel in enumerate((samples[k], matches[k])):
            axis = axes[row][column]
            axis.imshow(_colour(panel) if label_count else panel, cmap=None if label_count else "gray",
                        interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
        axes[0][column].set_title(f"d = {synthetic.distances[k]:.3g}", fontsize="x-small")
    axes[0][0].set_ylabel("sample", fontsize="small")
    axes[1][0].set_ylabel("nearest training", fontsize="small")
    gs = axes[0][-1].get_gridspec()
    for axis in axes[:, -1]:
        axis.remove()
    histogram = figure.add_subplot(gs[:, -1])
    edges = np.histogram_bin_edges(np.concatenate([synthetic.distances, heldout.distances]), bins=20)
    histogram.hist(heldout.distances, bins=edges, alpha=0.5, density=True, label="held-out real", color=REAL)
    histogram.hist(synthetic.distances, bins=edges, alpha=0.5, density=True, label="synthetic", color=SYNTHETIC)
    histogram.axvline(heldout.distances.min(), color="k", linestyle="--", linewidth=0.8)
    histogram.set_xlabel(f"{distance} to the nearest training slice", fontsize="small")
    histogram.set_yticks([])
    histogram.legend(fontsize="x-small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def sample_set_report(metrics: dict, channels: Sequence[str]) -> str:
    """report.md of one scored sample set."""
    lines = [f"# Sample set `{metrics['samples']}`", "",
             f"Style {metrics['style']}, conditions {metrics['conditions']}, {metrics['n_samples']} samples "
             f"(slice positions {metrics['slice_positions'][0]:.2f}–{metrics['slice_positions'][1]:.2f}); "
             f"generators trained on {', '.join(metrics['sources'])}.", "", PROTOCOL, "",
             "![samples](figures/grid.png)", ""]
    realism, diversity = metrics["realism"], metrics["diversity"]
    lines += ["## Image realism", ""]
    if "skipped" in realism:
        lines += [f"Skipped: {realism['skipped']}.", ""]
    else:
        lines += [f"Features: {metrics['feature_network']}. Reference: {realism['n_reference']} held-out real slices; "
                  f"{realism['n_synthetic']} synthetic and {realism['n_real']} real train-split slices scored against it "
                  "(KID: unbiased MMD² of the cubic polynomial kernel, mean ± sd over subsets; MMD: MONAI's, linear kernel).",
                  ""]
        if min(realism["n_synthetic"], realism["n_reference"]) <= realism["feature_dim"]:
            lines += [f"Fewer slices than feature dimensions ({realism['feature_dim']}): the covariances of FID are "
                      "singular and FID is a rough figure here; KID has no such limit.", ""]
        lines += ["| set | FID | KID | MMD (linear) |", "|---|---|---|---|"]
        for key, label in (("synthetic", "synthetic"), ("real", "real train split (floor)")):
            s = realism[key]
            lines.append(f"| {label} | {_number(s['fid'])} | {_number(s['kid'])} ± {_number(s['kid_sd'])} | "
                         f"{_number(s['mmd_linear'])} |")
        lines += ["", "## Diversity", "",
                  f"Mean MS-SSIM over random pairs ({diversity['ms_ssim_scales']} scales, "
                  f"{diversity['ms_ssim_kernel']}-pixel window; lower = more diverse): synthetic "
                  f"{diversity['synthetic']:.3f}, held-out real {diversity['real']:.3f}.", "",
                  "Intensity distance per tissue (1-D Wasserstein, z-score units): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in diversity["intensity_distance"].items()) + ".", "",
                  "![intensities](figures/intensities.png)", ""]
    labels = metrics["label_realism"]
    lines += ["## Label realism", ""]
    if "skipped" in labels:
        lines += [f"Skipped: {labels['skipped']}."]
    else:
        lines += label_realism_lines(labels, channels)
    lines += ["", "## Label–image consistency", ""]
    consistency = metrics["consistency"]
    if "skipped" in consistency:
        lines += [f"Skipped: {consistency['skipped']}.", ""]
    else:
        classes = consistency["classes"]
        lines += [f"The nnU-Net `{consistency['segmenter']}` (trained on real slices) segments "
                  f"{consistency['n_synthetic']} images; Dice against the label maps they were generated from, against "
                  f"shuffled label maps (chance), and on {consistency.get('n_real', 0)} held-out real slices of this "
                  "style (what it reaches on real data). The mean is over the classes "
                  f"every row scores ({', '.join(consistency['mean_classes'])}).", "",
                  "| pairs | " + " | ".join(classes) + " | mean |", "|---|" + "---|" * (len(classes) + 1)]
        for key, label in (("synthetic", "synthetic (true pairs)"), ("shuffled", "synthetic, shuffled labels"),
                           ("real", "held-out real")):
            if key in consistency:
                lines.append(f"| {label} | " + " | ".join(_number(consistency[key][c]) for c in classes)
                             + f" | {_number(consistency[f'{key}_mean'])} |")
        lines.append("")
    lines += ["## Memorisation", "",
              "Nearest training slice of every sample, against the same distance from held-out real slices. "
              "Share = samples closer to a training slice than the closest held-out slice is (a new slice: about "
              "1/(n+1)).", "",
              "| space | share closer than held-out | expected for new slices | median distance synthetic / held-out | flagged |",
              "|---|---|---|---|---|"]
    for key, label in (("labels", "PV maps"), ("images", "image features")):
        m = metrics["memorisation"].get(key)
        if m is None:
            lines.append(f"| {label} | no real {key} to compare with | | | |")
            continue
        lines.append(f"| {label} | {m['share_closer_than_heldout']:.3f} | {m['expected_share_of_new_slices']:.3f} | "
                     f"{_number(m['synthetic_median_distance'])} / {_number(m['heldout_median_distance'])} | "
                     f"{'**yes**' if m['flagged'] else 'no'} |")
    lines += [""] + [f"![nearest {key}](figures/nearest_{key}.png)\n" for key in ("labels", "images")
                     if key in metrics["memorisation"]]
    return "\n".join(lines)


def label_realism_lines(labels: dict, channels: Sequence[str]) -> list[str]:
    lesion_names = list(labels["synthetic"]["lesion_sizes"])
    lines = [f"Distances (1-D Wasserstein) to {labels['n_heldout']} held-out real PV maps; the floor is "
             f"{labels['n_real']} train-split maps.", "",
             "| set | " + " | ".join(f"{c} volume" for c in channels) + "".join(f" | {c} size" for c in lesion_names)
             + " |", "|---|" + "---|" * (len(channels) + len(lesion_names))]
    for key, label in (("synthetic", "synthetic"), ("real", "real train split (floor)")):
        d = labels[key]
        lines.append(f"| {label} | " + " | ".join(_number(d["volumes"][c]) for c in channels)
                     + "".join(f" | {_number(v)}" for v in d["lesion_sizes"].values()) + " |")
    lines += ["", "Connected components / holes per slice (mean over slices showing the tissue):", "",
              "| tissue | synthetic | held-out real |", "|---|---|---|"]
    topology = labels["topology"]
    for name in channels[1:]:
        cells = [f"{t[name]['components']:.2f} / {t[name]['holes']:.2f}" if name in t else "–"
                 for t in (topology["synthetic"], topology["heldout"])]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return [*lines, "", "![labels](figures/labels.png)"]


SUMMARY_HEADER = ("| sample set | style | n | FID (real floor) | KID (real floor) | MS-SSIM syn / real | "
                  "volume W1 mean (floor) | consistency Dice (real) | memorised labels / images |")


def summary_row(metrics: dict) -> str:
    """One sample set's line of the summary table."""
    realism, diversity, labels = metrics["realism"], metrics["diversity"], metrics["label_realism"]
    if "skipped" in realism:
        fid = kid = ms_ssim = "–"
    else:
        fid = f"{_number(realism['synthetic']['fid'])} ({_number(realism['real']['fid'])})"
        kid = f"{_number(realism['synthetic']['kid'])} ({_number(realism['real']['kid'])})"
        ms_ssim = f"{diversity['synthetic']:.3f} / {diversity['real']:.3f}"
    volume = [None, None] if "skipped" in labels else \
        [float(np.mean(list(labels[key]["volumes"].values()))) for key in ("synthetic", "real")]
    consistency = metrics["consistency"]
    dice = "–" if "skipped" in consistency else \
        f"{_number(consistency['synthetic_mean'])} ({_number(consistency.get('real_mean'))})"
    memorised = metrics["memorisation"]
    shares = " / ".join("–" if k not in memorised else f"{memorised[k]['share_closer_than_heldout']:.2f}"
                        + (" ⚑" if memorised[k]["flagged"] else "") for k in ("labels", "images"))
    return (f"| {metrics['samples']} | {metrics['style']} | {metrics['n_samples']} | {fid} | {kid} | {ms_ssim} | "
            f"{_number(volume[0])} ({_number(volume[1])}) | {dice} | {shares} |")


def summary_table(all_metrics: list[dict]) -> str:
    """The summary table over sample sets (README and the demo print it)."""
    return "\n".join([SUMMARY_HEADER, "|---|---|---|---|---|---|---|---|---|", *map(summary_row, all_metrics)])
