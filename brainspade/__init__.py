"""brainspade: train brain MRI segmenters on fully synthetic data (a brainSPADE re-implementation)."""

__version__ = "0.1.0"
