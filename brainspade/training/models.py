"""Networks built from their config nodes: a node holds exactly the constructor's keyword arguments."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

from brainspade.errors import BrainspadeError

T = TypeVar("T")


def build(cls: type[T], arguments: Mapping[str, Any], key: str) -> T:
    """`cls(**arguments)`, or one line naming the config node `key` when the arguments do not fit."""
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(arguments) - set(accepted))
    if unknown:
        raise BrainspadeError(f"{key}.{unknown[0]}: not an argument of {cls.__name__} "
                              f"(it takes {', '.join(name for name in accepted if name != 'self')})")
    try:
        return cls(**arguments)
    except (TypeError, ValueError, AssertionError) as error:
        raise BrainspadeError(f"{key}: {cls.__name__} refuses these arguments ({error})") from None
