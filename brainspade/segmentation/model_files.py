"""nnU-Net's plans.json and dataset.json read as data: no name in them is resolved to code it does not ship.

nnU-Net builds the network from the plans: `network_class_name` and the `_kw_requires_import` values go
through `pydoc.locate` and the class is called with the plan's own keyword arguments, so a plans file
naming `torch.hub.load` runs whatever it points at. A model folder is shared between labs, so its plans
are checked here before nnU-Net sees them (training, resume, prediction, `segment`, export): the network
class against the architectures nnU-Net ships, its keyword arguments against what that class takes, the
imported values against the layers nnU-Net plans. Every other name nnU-Net reads from these files
(reader, preprocessor, resampling, normalisation, label manager) is looked up by nnU-Net inside its own
package only; it must still be a bare class or function name.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from brainspade.errors import BrainspadeError

_UNETS = "dynamic_network_architectures.architectures.unet"
# The architectures nnU-Net's planners write (its residual planners name the older module path too).
NETWORK_CLASSES = {
    f"{_UNETS}.PlainConvUNet": (_UNETS, "PlainConvUNet"),
    f"{_UNETS}.ResidualEncoderUNet": (_UNETS, "ResidualEncoderUNet"),
    "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet": (_UNETS, "ResidualEncoderUNet"),
}
# The layers nnU-Net's planners pass by name, by keyword (torch module -> classes); nothing else is ever imported
# from a plans file. Each may be written as torch.nn.<Class> or torch.nn.modules.<module>.<Class>.
_LAYERS = {
    "conv_op": {"conv": ("Conv1d", "Conv2d", "Conv3d")},
    "norm_op": {"instancenorm": ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"),
                "batchnorm": ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")},
    "dropout_op": {"dropout": ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d")},
    "nonlin": {"activation": ("LeakyReLU", "ReLU", "PReLU", "ELU", "GELU")},
}
IMPORTED_VALUES = {
    key: {name for module, classes in modules.items() for cls in classes
          for name in (f"torch.nn.{cls}", f"torch.nn.modules.{module}.{cls}")}
    for key, modules in _LAYERS.items()
}
IMPORTED_VALUES["block"] = {"dynamic_network_architectures.building_blocks.residual.BasicBlockD",
                            "dynamic_network_architectures.building_blocks.residual.BottleneckD"}
# Keys nnU-Net turns into a class or function by name, looked up only inside nnunetv2.
_PLANS_NAMES = ("image_reader_writer", "label_manager", "experiment_planner_used")
_CONFIGURATION_NAMES = ("preprocessor_name", "resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities")


def read_plans(path: str | Path) -> dict[str, Any]:
    """The plans file at `path`, parsed and checked; refused in one line naming the file and the key."""
    path = Path(path)
    plans = _read_json(path, "nnU-Net plans file")
    for key in _PLANS_NAMES:
        _bare_name(path, key, plans.get(key))
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or not configurations:
        raise BrainspadeError(f"{path}: configurations: missing; not an nnU-Net plans file, {_FIX}")
    for name, configuration in configurations.items():
        where = f"configurations.{name}"
        if not isinstance(configuration, dict):
            raise BrainspadeError(f"{path}: {where}: not a mapping; {_FIX}")
        for key in _CONFIGURATION_NAMES:
            _bare_name(path, f"{where}.{key}", configuration.get(key))
        for index, scheme in enumerate(configuration.get("normalization_schemes") or []):
            _bare_name(path, f"{where}.normalization_schemes[{index}]", scheme)
        if "architecture" in configuration:
            check_architecture(path, where + ".architecture", configuration["architecture"])
    return plans


def check_architecture(path: Path, where: str, architecture: Any) -> None:
    """The network class is one nnU-Net ships, its keyword arguments are the class's own, its imports its layers."""
    if not isinstance(architecture, dict):
        raise BrainspadeError(f"{path}: {where}: not a mapping; {_FIX}")
    class_name = architecture.get("network_class_name")
    if class_name not in NETWORK_CLASSES:
        raise BrainspadeError(f"{path}: {where}.network_class_name={class_name!r} is not an architecture nnU-Net "
                              f"plans ({', '.join(sorted({c for _, c in NETWORK_CLASSES.values()}))}), so it was not "
                              f"loaded; {_FIX}")
    kwargs = architecture.get("arch_kwargs")
    if not isinstance(kwargs, dict):
        raise BrainspadeError(f"{path}: {where}.arch_kwargs: not a mapping; {_FIX}")
    taken = _keyword_arguments(*NETWORK_CLASSES[class_name])
    for key in kwargs:
        if key not in taken:
            raise BrainspadeError(f"{path}: {where}.arch_kwargs.{key}: {class_name.rsplit('.', 1)[1]} takes no such "
                                  f"argument; {_FIX}")
    imported = architecture.get("_kw_requires_import", [])
    if not isinstance(imported, list):
        raise BrainspadeError(f"{path}: {where}._kw_requires_import: not a list; {_FIX}")
    for key in imported:
        if key not in IMPORTED_VALUES:
            raise BrainspadeError(f"{path}: {where}._kw_requires_import: {key!r} is not a layer nnU-Net imports by "
                                  f"name ({', '.join(IMPORTED_VALUES)}); {_FIX}")
        value = kwargs.get(key)
        if value is not None and value not in IMPORTED_VALUES[key]:
            raise BrainspadeError(f"{path}: {where}.arch_kwargs.{key}={value!r} is not a layer nnU-Net plans, so it "
                                  f"was not imported; {_FIX}")


def read_dataset_json(path: str | Path) -> dict[str, Any]:
    """nnU-Net's dataset.json at `path`, parsed and checked (labels are ids, names are names)."""
    path = Path(path)
    header = _read_json(path, "nnU-Net dataset.json")
    labels = header.get("labels")
    if not isinstance(labels, dict) or not labels or not all(
            isinstance(name, str) and isinstance(value, int) and not isinstance(value, bool)
            for name, value in labels.items()):
        raise BrainspadeError(f"{path}: labels: give a mapping of label name -> integer id; {_FIX}")
    if not isinstance(header.get("channel_names"), dict) or not isinstance(header.get("file_ending"), str):
        raise BrainspadeError(f"{path}: channel_names / file_ending: missing; not an nnU-Net dataset.json, {_FIX}")
    _bare_name(path, "overwrite_image_reader_writer", header.get("overwrite_image_reader_writer"))
    return header


_FIX = "copy the model folder again from the workdir that trained it, or retrain the arm"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise BrainspadeError(f"{path}: missing; {_FIX}")
    try:
        content = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BrainspadeError(f"{path}: not a readable {what} ({type(error).__name__}); {_FIX}") from None
    if not isinstance(content, dict):
        raise BrainspadeError(f"{path}: not a readable {what} (a {type(content).__name__}, not a mapping); {_FIX}")
    return content


def _bare_name(path: Path, key: str, value: Any) -> None:
    """A name nnU-Net looks up inside its own package: a bare identifier, never a dotted path to elsewhere."""
    if value is None:
        return
    if not isinstance(value, str) or not value.isidentifier():
        raise BrainspadeError(f"{path}: {key}={value!r} is not the bare name of an nnU-Net class or function, so it "
                              f"was not looked up; {_FIX}")


def _keyword_arguments(module: str, name: str) -> set[str]:
    """What the network class takes, less what nnU-Net passes itself (channels in and out)."""
    import importlib

    cls = getattr(importlib.import_module(module), name)
    return set(inspect.signature(cls.__init__).parameters) - {"self", "input_channels", "num_classes"}
