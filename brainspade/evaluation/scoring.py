"""One sample set scored end to end: every section's numbers, figures, metrics.json and report.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from brainspade.data.slice_cache import SliceCache
from brainspade.engine.atomic import write_json_atomic, write_text_atomic
from brainspade.evaluation import report
from brainspade.evaluation.consistency import Segment
from brainspade.evaluation.features import FeatureNetwork, extract
from brainspade.evaluation.metrics import (
    consistency_dice,
    intensity_distances,
    label_distances,
    label_statistics,
    mean_dice,
    mean_pairwise_ms_ssim,
    memorisation_scores,
    ms_ssim_weights,
    nearest,
    realism_scores,
    tissue_intensities,
)
from brainspade.evaluation.sample_sets import (
    References,
    SampleSet,
    image_pv_maps,
    real_images,
    real_pv_maps,
    references,
)
from brainspade.settings import EvaluationSettings


def evaluate_sample_set(samples: SampleSet, cache: SliceCache, sources: list[str], settings: EvaluationSettings,
                        features: FeatureNetwork, feature_source: str, segment: Segment | None, segmenter_name: str,
                        device: torch.device, seed: int, folder: Path) -> dict:
    """Score `samples` against the real slices of `cache` and write figures/, metrics.json and report.md in `folder`.

    Args:
        sources: the data sets the generators trained on (their train split).
        features: the network whose features FID, KID and image memorisation use; `feature_source` names it.
        segment: a segmenter trained on real slices (None: the consistency section is skipped);
            `segmenter_name` names it, or says why there is none.
    Returns the metrics (also in metrics.json).
    """
    channels = cache.channels
    refs = references(cache, samples, sources, settings.max_real, seed)
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    metrics: dict = {
        "samples": samples.name, "style": style_name(samples), "conditions": samples.conditions,
        "n_samples": len(samples.case_ids), "sources": sources, "feature_network": feature_source,
        "slice_positions": [float(samples.slice_positions.min()), float(samples.slice_positions.max())],
    }
    report.plot_grid(figures / "grid.png", samples, channels, settings.figure_samples)

    def featurise(images: np.ndarray) -> torch.Tensor:
        return extract(features, images, settings.feature_batch_size, device)

    synthetic_features = featurise(samples.images)
    heldout_images = real_images(cache, refs.image_heldout)
    if len(refs.image_heldout) >= 2 and len(refs.image_real) >= 2:
        size = min(len(samples.images), len(refs.image_real))  # FID is biased by the set size: score equal sets
        real_subset = np.sort(np.random.default_rng(seed).permutation(refs.image_real)[:size])
        real_features = featurise(real_images(cache, real_subset))
        metrics["realism"] = realism_scores(featurise(heldout_images), synthetic_features[:size], real_features,
                                            settings.kid_subset_size, settings.kid_subsets, seed)
        metrics["realism"]["feature_dim"] = int(synthetic_features.shape[1])
        kernel = settings.ms_ssim_kernel
        metrics["diversity"] = {
            "ms_ssim_scales": len(ms_ssim_weights(cache.size, kernel)), "ms_ssim_kernel": kernel,
            "synthetic": mean_pairwise_ms_ssim(samples.images, settings.ms_ssim_pairs, kernel, seed)[0],
            "real": mean_pairwise_ms_ssim(heldout_images, settings.ms_ssim_pairs, kernel, seed)[0],
        }
        synthetic_intensity = tissue_intensities(samples.images, samples.labels, channels)
        real_intensity = tissue_intensities(heldout_images, image_pv_maps(cache, refs.image_heldout).argmax(axis=1),
                                            channels)
        metrics["diversity"]["intensity_distance"] = intensity_distances(synthetic_intensity, real_intensity)
        report.plot_intensities(figures / "intensities.png", synthetic_intensity, real_intensity, settings.histogram_bins)
    else:
        metrics["realism"] = metrics["diversity"] = {
            "skipped": f"fewer than 2 real slices of {style_name(samples)} in the slice cache (train and test split)"}

    if len(refs.label_heldout) >= 2 and len(refs.label_real) >= 2:
        metrics["label_realism"] = label_realism(samples, cache, refs, settings.histogram_bins, figures, seed)
    else:
        metrics["label_realism"] = {"skipped": "fewer than 2 real PV maps of the source data sets match the samples' "
                                               "slice positions and lesion conditions"}

    if segment is None:
        metrics["consistency"] = {"skipped": segmenter_name}
    else:
        metrics["consistency"] = consistency(samples, cache, refs.image_heldout, segment, segmenter_name,
                                             settings.consistency_slices, seed)

    shown, flag = settings.nearest_pairs_shown, settings.memorisation_flag_share
    metrics["memorisation"] = {}
    if len(refs.label_memorisation_heldout):
        label_nearest = nearest(samples.pv_maps, cache.pv_maps, refs.label_training)
        label_reference = nearest(real_pv_maps(cache, refs.label_memorisation_heldout), cache.pv_maps,
                                  refs.label_training)
        metrics["memorisation"]["labels"] = memorisation_scores(label_nearest, label_reference, flag)
        report.plot_nearest(figures / "nearest_labels.png", samples.labels, label_nearest, label_reference,
                            real_pv_maps(cache, refs.label_training[label_nearest.indices]).argmax(axis=1), shown,
                            "PV-map distance", len(channels))
    if len(refs.image_training) and len(refs.image_training_heldout):
        training_features = torch.cat([featurise(real_images(cache, chunk)) for chunk in  # every train slice, in chunks
                                       np.array_split(refs.image_training, max(1, len(refs.image_training) // 1024))])
        image_nearest = nearest(synthetic_features.numpy(), training_features.numpy())
        image_reference = nearest(featurise(real_images(cache, refs.image_training_heldout)).numpy(),
                                  training_features.numpy())
        metrics["memorisation"]["images"] = memorisation_scores(image_nearest, image_reference, flag)
        report.plot_nearest(figures / "nearest_images.png", samples.images, image_nearest, image_reference,
                            real_images(cache, refs.image_training[image_nearest.indices]), shown,
                            "feature distance", None)

    write_json_atomic(folder / "metrics.json", metrics)
    write_text_atomic(folder / "report.md", report.sample_set_report(metrics, channels))
    return metrics


def label_realism(samples: SampleSet, cache: SliceCache, refs: References, bins: int, figures: Path,
                  seed: int) -> dict:
    """Tissue-volume and lesion-size distances to held-out PV maps (floor: as many train-split maps), and topology."""
    channels, lesions = cache.channels, cache.lesion_channels
    real_subset = np.sort(np.random.default_rng(seed).permutation(refs.label_real)[: len(samples.pv_maps)])
    synthetic = label_statistics(samples.pv_maps, channels, lesions)
    heldout = label_statistics(real_pv_maps(cache, refs.label_heldout), channels, lesions)
    real = label_statistics(real_pv_maps(cache, real_subset), channels, lesions)
    report.plot_labels(figures / "labels.png", synthetic, heldout, channels, bins)
    return {
        "n_heldout": len(refs.label_heldout), "n_real": len(real_subset),
        "synthetic": label_distances(synthetic, heldout, channels),
        "real": label_distances(real, heldout, channels),
        "topology": {"synthetic": synthetic["topology"], "heldout": heldout["topology"]},
    }


def consistency(samples: SampleSet, cache: SliceCache, heldout: np.ndarray, segment: Segment, segmenter: str,
                count: int, seed: int) -> dict:
    """Dice of the segmenter on (the first `count`) samples vs their own labels, vs shuffled labels (chance),
    and on `count` held-out real slices of the style."""
    channels = cache.channels
    classes = channels[1:]  # every tissue but the background
    labels = samples.labels[:count]
    predicted = np.asarray(segment(samples.images[:count]))
    scores = {"segmenter": segmenter, "classes": classes, "n_synthetic": len(labels),
              "synthetic": consistency_dice(predicted, labels, channels),
              # The same predictions against another sample's labels: what agreement by chance alone reaches.
              "shuffled": consistency_dice(predicted, np.roll(labels, 1, axis=0), channels)}
    if len(heldout):
        heldout = np.sort(np.random.default_rng(seed).permutation(heldout)[:count])
        scores["n_real"] = len(heldout)
        real_predicted = np.asarray(segment(real_images(cache, heldout)))
        scores["real"] = consistency_dice(real_predicted, image_pv_maps(cache, heldout).argmax(axis=1), channels)
    rows = [key for key in ("synthetic", "shuffled", "real") if key in scores]
    # Means over the classes every row scores, so the synthetic and real means compare like with like.
    scores["mean_classes"] = [c for c in classes if all(scores[key][c] is not None for key in rows)]
    for key in rows:
        scores[f"{key}_mean"] = mean_dice(scores[key], scores["mean_classes"])
    return scores


def style_name(samples: SampleSet) -> str:
    return f"{samples.style_dataset or 'folder'}/{samples.style_modality}"
