"""KL divergence of a diagonal Gaussian from the standard normal (VAE prior term)."""

from __future__ import annotations

import torch


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over code (or latent-map) elements, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).flatten(1).sum(dim=1).mean()
