"""FreeSurfer label codes (aseg, aparc+aseg, SynthSeg) grouped into the schema's tissue channels.

The codes are FreeSurfer's colour table (FreeSurferColorLUT.txt), which SynthSeg uses as well.
Each code names the tissues it may become, most specific first: a thalamus voxel is `dgm` when
the schema has a deep-GM channel and `gm` otherwise; a cerebellar-cortex voxel is `cerebellum`
when configured, else `gm`. The first tissue the schema has wins, so one table serves a
[background, csf, gm, wm] schema and a [background, csf, gm, wm, dgm, brainstem, cerebellum] one.

| tissue | FreeSurfer codes |
|---|---|
| background | 0 (unknown) |
| csf | 4/43 lateral ventricles, 5/44 inferior lateral ventricles, 14 3rd and 15 4th ventricle, 24 CSF, 31/63 choroid plexus, 72 5th ventricle |
| gm | 3/42 cerebral cortex, 1000-1035 / 2000-2035 aparc cortical parcels (and aparc.a2009s 11100-12175) |
| wm | 2/41 cerebral WM, 77 WM hypointensities (`wmh` when configured), 85 optic chiasm, 251-255 corpus callosum |
| dgm (else gm) | 10/49 thalamus, 11/50 caudate, 12/51 putamen, 13/52 pallidum, 17/53 hippocampus, 18/54 amygdala, 26/58 accumbens |
| dgm (else wm) | 28/60 ventral diencephalon |
| brainstem (else wm) | 16 brainstem |
| cerebellum (else wm / gm) | 7/46 cerebellar WM, 8/47 cerebellar cortex |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from brainspade.errors import BrainspadeError

_GROUPS: tuple[tuple[tuple[str, ...], tuple[int, ...]], ...] = (
    (("background",), (0,)),
    (("csf",), (4, 43, 5, 44, 14, 15, 24, 31, 63, 72)),
    (("gm",), (3, 42, *range(1000, 1036), *range(2000, 2036), *range(11100, 11176), *range(12100, 12176))),
    (("wm",), (2, 41, 85, 251, 252, 253, 254, 255)),
    (("wmh", "wm"), (77,)),
    (("dgm", "gm"), (10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58)),
    (("dgm", "wm"), (28, 60)),
    (("brainstem", "wm"), (16,)),
    (("cerebellum", "wm"), (7, 46)),
    (("cerebellum", "gm"), (8, 47)),
)

# Where each FreeSurfer code may go, most specific tissue first.
FREESURFER_TISSUES: dict[int, tuple[str, ...]] = {code: tissues for tissues, codes in _GROUPS for code in codes}

# SynthSeg 2.0's segmentation labels in the order its `--post` file stores them (sorted codes).
SYNTHSEG_POSTERIOR_CODES: tuple[int, ...] = (
    0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28,
    41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60,
)


def channel_of_codes(codes: Sequence[int], channels: Sequence[str], extra: Mapping[int, str] | None = None,
                     source: str = "labels") -> dict[int, int]:
    """Each code's schema channel index; codes the table does not know (and `extra` does not map) fail in one line.

    `extra` maps further codes to channel names (data.extra_codes), and overrides the table.
    """
    extra = {int(code): name for code, name in (extra or {}).items()}
    bad_names = sorted({name for name in extra.values() if name not in channels})
    if bad_names:
        raise BrainspadeError(f"data.extra_codes names channel(s) {bad_names} that are not in data.channels "
                              f"{list(channels)}; fix the config")
    unknown = sorted(int(c) for c in codes if int(c) not in FREESURFER_TISSUES and int(c) not in extra)
    if unknown:
        raise BrainspadeError(f"{source}: unknown label code(s) {unknown[:12]}{' ...' if len(unknown) > 12 else ''}; "
                              "map them with data.extra_codes={channel: [CODE, ...]} (README, 'Your own data')")
    mapping = {}
    for code in codes:
        code = int(code)
        if code in extra:
            mapping[code] = list(channels).index(extra[code])
            continue
        tissue = next((t for t in FREESURFER_TISSUES[code] if t in channels), None)
        if tissue is None:
            raise BrainspadeError(f"{source}: label code {code} is {' or '.join(FREESURFER_TISSUES[code])}, which "
                                  f"data.channels {list(channels)} lacks; add the channel or map it with data.extra_codes")
        mapping[code] = list(channels).index(tissue)
    return mapping


def emptied_channels(channels: Sequence[str], extra: Mapping[int, str]) -> str | None:
    """A warning when data.extra_codes moves every table code of a schema channel elsewhere (the channel stays empty).

    Remapping a code the table knows is allowed (the user's grouping wins), but a channel left with no code at all
    is almost always a slip: its PV maps would be zero everywhere.
    """
    extra = {int(code): name for code, name in extra.items()}
    filled_by_table = {next((t for t in tissues if t in channels), None) for code, tissues in
                       FREESURFER_TISSUES.items() if code not in extra}
    moved = {}
    for code, name in sorted(extra.items()):
        table = next((t for t in FREESURFER_TISSUES.get(code, ()) if t in channels), None)
        if table is not None and table != name:
            moved.setdefault(table, []).append(code)
    emptied = [c for c in moved if c not in filled_by_table and c not in extra.values()]
    if not emptied:
        return None
    return "; ".join(f"data.extra_codes moves every code of channel {c} (FreeSurfer codes {moved[c]}) to another "
                     f"channel, so {c} will be empty in every label map" for c in emptied)


def group_label_map(labels: np.ndarray, channels: Sequence[str], extra: Mapping[int, str] | None,
                    source: str) -> np.ndarray:
    """A FreeSurfer / SynthSeg label volume (X, Y, Z) as one-hot PV maps (X, Y, Z, C)."""
    codes, inverse = np.unique(labels, return_inverse=True)
    mapping = channel_of_codes(codes.tolist(), channels, extra, source)
    channel_of_voxel = np.array([mapping[int(c)] for c in codes])[inverse.reshape(labels.shape)]
    pv = np.zeros((*labels.shape, len(channels)), dtype=np.float32)
    for index in range(len(channels)):
        pv[..., index] = channel_of_voxel == index
    return pv


def group_posteriors(posteriors: np.ndarray, codes: Sequence[int], channels: Sequence[str],
                     extra: Mapping[int, str] | None, source: str) -> np.ndarray:
    """SynthSeg posteriors (X, Y, Z, K), one channel per code, summed by tissue into PV maps (X, Y, Z, C)."""
    mapping = channel_of_codes(codes, channels, extra, source)
    pv = np.zeros((*posteriors.shape[:3], len(channels)), dtype=np.float32)
    for k, code in enumerate(codes):
        pv[..., mapping[int(code)]] += posteriors[..., k]
    return pv
