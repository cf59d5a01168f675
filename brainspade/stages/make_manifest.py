"""`brainspade make-manifest bids_root=PATH`: manifest.csv for a BIDS-style folder (sub-*/anat + derivatives)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from brainspade.data.bids import BidsLayout, manifest_rows, manifest_text
from brainspade.engine.atomic import write_text_atomic
from brainspade.errors import BrainspadeError
from brainspade.settings import BidsSettings
from brainspade.stages.config import run_settings, section


def run(cfg: DictConfig) -> Path:
    """Write bids_root/manifest.csv; return bids_root (the folder to pass as data.root)."""
    settings: BidsSettings = section(cfg, "", BidsSettings)
    root = Path(settings.bids_root).expanduser().resolve()
    layout = BidsLayout(root, settings.derivatives, settings.labels, settings.label_format, settings.dataset,
                        settings.test_fraction)
    text = manifest_text(manifest_rows(layout))
    target = root / "manifest.csv"
    if target.is_file() and target.read_text() != text and not run_settings(cfg).force:
        raise BrainspadeError(f"{target}: exists with other rows; add force=true to replace it")
    write_text_atomic(target, text)
    rows = text.count("\n") - 1
    print(f"[make-manifest] {rows} image(s) in {target}; next: brainspade prepare-data data=folder data.root={root} "
          f"'data.source_datasets=[{settings.dataset}]' data.register=affine")
    return root
