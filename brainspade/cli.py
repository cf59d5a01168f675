"""`brainspade <command> [key=value ...]`: each command is a Hydra primary config in configs/.

This module only maps a command to its config and its stage's `run(cfg) -> Path`; all the
work happens in `brainspade.stages`. Overrides are checked with Hydra's compose API before
Hydra runs the job, so that a typo fails in one line before any work starts.
"""

from __future__ import annotations

import errno
import importlib
import sys
from pathlib import Path

from brainspade.commands import COMMANDS, CONFIG_DIR, Command
from brainspade.errors import BrainspadeError

# Short forms a user types, turned into Hydra overrides: `--n 20000` -> `n=20000`.
FLAG_KEYS = {"--n": "n"}
# Commands whose first bare word is a value: `run-experiment iod` -> `experiment=iod`.
POSITIONAL_KEYS = {"run-experiment": "experiment"}
HYDRA_FLAGS_WITHOUT_VALUE = {"--cfg", "-c", "--resolve", "--multirun", "-m", "--info", "-i", "--package", "-p"}


# Failures of the machine rather than of brainspade: one line with the path and the fix, not a traceback.
# Writes are atomic, so what finished before the failure is intact and a re-run resumes.
_NO_SPACE = "free space on that disk (or set workdir= to another one) and re-run: finished work is kept and resumed"
_NOT_WRITABLE = "make it writable (or set workdir= to a folder you can write) and re-run"
ENVIRONMENT_FIXES = {
    errno.ENOSPC: _NO_SPACE, errno.EDQUOT: _NO_SPACE,
    errno.EROFS: _NOT_WRITABLE, errno.EACCES: _NOT_WRITABLE, errno.EPERM: _NOT_WRITABLE,
    errno.ENOTDIR: "a folder on that path is a file; move it or set workdir= elsewhere",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(commands_help())
        return 0
    name, args = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        _fail(f"unknown command {name!r}; `brainspade --help` lists the commands", code=2)
    if {"-h", "--help"} & set(args):
        print(command_help(name))
        return 0
    try:
        args = expand_short_forms(name, args)
    except BrainspadeError as error:
        _fail(f"{name}: {error}", code=2)
    if not any(a in {"--multirun", "-m"} for a in args):
        _check_overrides(name, [a for a in args if "=" in a and not a.startswith("-")])
    return _run_with_hydra(name, command, args)


def expand_short_forms(name: str, args: list[str]) -> list[str]:
    """Turn `--n 20000` and `run-experiment iod` into Hydra overrides."""
    expanded: list[str] = []
    iterator = iter(args)
    for arg in iterator:
        flag, _, inline_value = arg.partition("=")
        if flag in FLAG_KEYS:
            value = inline_value or next(iterator, None)
            if value is None:
                raise BrainspadeError(f"{flag} needs a value, e.g. {flag} 100")
            expanded.append(f"{FLAG_KEYS[flag]}={value}")
        elif name in POSITIONAL_KEYS and "=" not in arg and not arg.startswith("-") and not _after_hydra_flag(expanded):
            expanded.append(f"{POSITIONAL_KEYS[name]}={arg}")
        else:
            expanded.append(arg)
    return expanded


def _after_hydra_flag(previous: list[str]) -> bool:
    return bool(previous) and previous[-1] in {"--cfg", "-c", "--package", "-p", "--info", "-i"}


def _check_overrides(name: str, overrides: list[str]) -> None:
    """Compose the config once so unknown keys, bad values and missing required keys fail in one line."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=name, overrides=overrides)
    except Exception as error:  # Hydra raises several types; all mean "this override is wrong"
        _fail(f"{name}: {_one_line(error)} (see `brainspade {name} --help`)", code=2)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        _fail(f"{name}: {missing[0]} is required; add {missing[0]}=VALUE (see `brainspade {name} --help`)", code=2)
    from brainspade.stages.checks import check_memory_bounds, check_names
    from brainspade.stages.config import check_config

    try:  # every section as its typed settings: a wrong type or an out-of-range value fails here
        check_config(cfg)
        check_names(cfg)
        check_memory_bounds(cfg)
    except BrainspadeError as error:
        _fail(f"{name}: {error} (see `brainspade {name} --help`)", code=2)


def _one_line(error: Exception) -> str:
    """Hydra's multi-line override errors, cut to the line a user needs."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].startswith("Could not override"):
        key = lines[0].split("'")[1] if "'" in lines[0] else "?"
        return f"unknown key {key!r} (a new key needs a leading +, e.g. +{key}=...)"
    return lines[0]


def _run_with_hydra(name: str, command: Command, args: list[str]) -> int:
    import hydra
    from omegaconf import DictConfig

    from brainspade.engine.logging import heartbeat

    stage = importlib.import_module(command.module)

    @hydra.main(config_path=str(CONFIG_DIR), config_name=name, version_base="1.3")
    def task(cfg: DictConfig) -> None:
        try:
            with heartbeat(name):
                output = stage.run(cfg)
        except BrainspadeError as error:
            _fail(f"{name}: {error}", code=1)
        except OSError as error:
            if error.errno not in ENVIRONMENT_FIXES:
                raise
            where = error.filename or f"workdir={cfg.workdir}"
            _fail(f"{name}: {where}: {error.strerror}; {ENVIRONMENT_FIXES[error.errno]}", code=1)
        # The last line of standard output is the folder the command wrote (scripts rely on it).
        print(Path(output).resolve(), flush=True)

    sys.argv = [f"brainspade {name}", *args]
    task()
    return 0


def _fail(message: str, code: int) -> None:
    print(f"brainspade {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def commands_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "brainspade: train brain MRI segmenters on fully synthetic data (brainSPADE).",
        "",
        "usage: brainspade <command> [key=value ...]   (brainspade <command> --help for its keys)",
        "",
        "commands:",
    ]
    for name, command in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {command.summary}")
    lines += [
        "",
        "keys every command takes: workdir=PATH  profile=tiny|cpu|paper  data=phantom|folder  data.root=PATH  seed=INT",
        "Hydra flags work too: --cfg job (print the config), --multirun / -m (sweeps).",
    ]
    return "\n".join(lines)


def command_help(name: str) -> str:
    """The command's summary, then its config files as written (keys with their comments)."""
    command = COMMANDS[name]
    sections = [f"brainspade {name}: {command.summary}", "", f"usage: brainspade {name} [key=value ...]"]
    for path in _config_files_of(name):
        sections += ["", f"# ---- {path.relative_to(CONFIG_DIR.parent)} ----", path.read_text().strip()]
    sections += ["", f"The full resolved config: brainspade {name} --cfg job"]
    return "\n".join(sections)


def _config_files_of(name: str) -> list[Path]:
    """The command's own file, the stage files whose sections its config has, and base.yaml."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        keys = set(compose(config_name=name).keys())
    stage_files = sorted(p for p in (CONFIG_DIR / "stage").glob("*.yaml") if p.stem in keys)
    return [CONFIG_DIR / f"{name}.yaml", *stage_files, CONFIG_DIR / "base.yaml"]
