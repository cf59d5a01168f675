"""Stage folders: one per stage inside the workdir, complete only once its manifest is written.

The manifest (`manifest.json`) is written last, so a folder with it holds everything the
stage promised and a folder without it is unfinished (it may hold a checkpoint to resume).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brainspade.engine import distributed
from brainspade.engine.atomic import write_json_atomic, write_text_atomic
from brainspade.engine.checkpoint import CHECKPOINT_NAME
from brainspade.errors import BrainspadeError

MANIFEST_NAME = "manifest.json"
# The meaning of every stage's outputs: bumped when a change makes outputs of the same settings differ, so that
# folders made before are redone rather than mixed with new ones. Part of every fingerprint and every manifest.
FORMAT_VERSION = 2


def config_fingerprint(*sections: Any) -> str:
    """A short hash of settings and plain values (and the format version), to tell whether a finished stage is
    still valid."""
    text = json.dumps([FORMAT_VERSION, *sections], sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else str(value)


class StageFolder:
    """The folder of one stage run: config, checkpoints, logs, outputs and, last, the manifest."""

    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    def is_complete(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def is_up_to_date(self) -> bool:
        """Complete, made with the same config as this run, and every output it lists still as written."""
        return (self.is_complete() and self.read_manifest().get("fingerprint") == self.fingerprint
                and not self.damaged_outputs())

    def damaged_outputs(self) -> list[str]:
        """Outputs of the manifest that are gone, or files whose size changed since the stage finished."""
        manifest = self.read_manifest()
        sizes = manifest.get("sizes", {})
        damaged = []
        for relative in manifest.get("outputs", {}).values():
            path = self.path / relative
            if not path.exists() or (relative in sizes and (not path.is_file() or path.stat().st_size != sizes[relative])):
                damaged.append(str(relative))
        return damaged

    def reusable(self, force: bool) -> bool:
        """True when a finished run with this config can be reused as is.

        A finished folder made with another config is an error unless `force`, so that
        results (and stages trained on them) are never silently mixed across configs.
        """
        if not self.is_complete() or force:
            return False
        manifest = self.read_manifest()
        if manifest.get("fingerprint") == self.fingerprint:
            damaged = self.damaged_outputs()
            if damaged:
                print(f"[brainspade] {self.path}: {', '.join(damaged)} missing or changed since it finished; remaking it")
            return not damaged
        if manifest.get("format") != FORMAT_VERSION:
            raise BrainspadeError(
                f"{self.path}: made by a brainspade whose outputs had another format (version "
                f"{manifest.get('format', 1)}, now {FORMAT_VERSION}); pass force=true to redo it or use another workdir"
            )
        raise BrainspadeError(
            f"{self.path}: finished with another config; pass force=true to redo it or use another workdir"
        )

    def prepare(self, config_yaml: str | None = None, *, force: bool = False) -> bool:
        """Get the folder ready for a run; return False when a finished run can be reused.

        A finished folder made with another config is an error unless `force`, so that
        results are never silently mixed across configs. `force` means "redo from scratch"
        in every stage: a training stage's checkpoint is deleted too, so it starts at step 0.
        Under torchrun every rank decides from the same files; rank 0 alone writes.
        """
        if self.reusable(force):
            return False
        if distributed.is_main():
            if self.is_complete():
                self.manifest_path.unlink()
            if force:
                (self.path / CHECKPOINT_NAME).unlink(missing_ok=True)
            self.path.mkdir(parents=True, exist_ok=True)
            if config_yaml is not None:
                write_text_atomic(self.path / "config.yaml", config_yaml)
        distributed.barrier()
        return True

    def finish(self, outputs: Mapping[str, Any] | None = None, **details: Any) -> Path:
        """Write the manifest (last): the stage's outputs, its config fingerprint and a timestamp.

        Under torchrun, once every rank got here (rank 0 may still be evaluating), by rank 0 only.
        """
        distributed.barrier()
        if not distributed.is_main():
            return self.path
        outputs = dict(outputs or {})
        manifest = {
            "format": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "outputs": outputs,
            # A re-run checks these cheaply (names and sizes) before trusting the folder.
            "sizes": {relative: (self.path / relative).stat().st_size for relative in outputs.values()
                      if (self.path / relative).is_file()},
            **details,
        }
        write_json_atomic(self.manifest_path, manifest)
        return self.path


def finished_fingerprint(path: str | Path) -> str:
    """The config fingerprint a finished stage folder was made with (inputs of later stages hash it)."""
    return StageFolder(path, "").read_manifest().get("fingerprint", "")


def require_complete(path: str | Path, what: str, command: str) -> Path:
    """Fail in one line when an input stage folder is missing or unfinished."""
    path = Path(path)
    if not (path / MANIFEST_NAME).is_file():
        raise BrainspadeError(f"{path}: no finished {what} here; run `brainspade {command}` with this workdir first")
    return path


def load_stage_checkpoint(path: str | Path, what: str, command: str, *, channels: list[str] | None = None) -> dict:
    """The checkpoint of a finished stage folder, refused in one line when made for other channels."""
    from brainspade.engine.checkpoint import load_checkpoint

    folder = require_complete(path, what, command)
    state = load_checkpoint(folder / CHECKPOINT_NAME)
    saved = list(state.get("signature", {}).get("channels", []))
    if "model_args" not in state.get("signature", {}):
        raise BrainspadeError(f"{folder}: {what} checkpoint of an older brainspade (no saved model arguments); "
                              f"re-run `brainspade {command} force=true`")
    if channels is not None and saved != list(channels):
        raise BrainspadeError(
            f"{folder}: this {what} was trained for channels {saved}, this data has {list(channels)}; "
            f"re-run `brainspade {command} force=true` or use another workdir"
        )
    return state
