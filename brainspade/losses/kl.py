"""KL divergence of a diagonal Gaussian from the standard normal (the VAE prior term of both VAEs)."""

from __future__ import annotations

import torch


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, variance: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over code (or latent-map) elements, averaged over the batch.

    `variance` (= exp(logvar)) may be passed where the network outputs it directly (the label VAE's
    sigma**2), which keeps its value exact instead of a round trip through log and exp.
    """
    variance = logvar.exp() if variance is None else variance
    return (0.5 * (mu.pow(2) + variance - logvar - 1)).flatten(1).sum(dim=1).mean()
