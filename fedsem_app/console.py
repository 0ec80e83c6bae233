"""What a run prints: progress, not noise from the libraries underneath (shared by every side).

Two kinds of noise are prevented where they arise, and only those:

* transformers draws a ``Loading weights`` progress bar on every model load (every
  client, every round in deployment): :func:`quiet_loading` turns progress bars
  off around the app's own loads and restores them afterwards;
* libraries warn about deprecations in calls that they make themselves, which the
  app cannot change: :data:`HARMLESS_WARNINGS` names each such warning by category,
  message and module, and only those are ignored, by :func:`quiet_loading` (around
  model loads) and :func:`ignore_harmless_warnings` (for the whole process, where
  the warning comes from code the app does not call, such as Ray's start-up).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import NamedTuple


class HarmlessWarning(NamedTuple):
    """A library warning to ignore: its category, message start and module (regexes)."""

    category: type[Warning]
    message: str
    module: str


HARMLESS_WARNINGS = (
    # peft's PeftModel reads transformers' deprecated alias of is_activation_checkpointing
    # on every adapter it wraps (peft 0.21); the value is the same.
    HarmlessWarning(
        FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"
    ),
    # Ray's tip on ray.init (Flower's simulation calls it) that a future Ray will no
    # longer hide GPUs from actors that ask for none. The switch it suggests would
    # show every GPU to every client today, so it is not set; the current behaviour
    # (clients see a GPU only with client-resources-num-gpus) is the one we want.
    HarmlessWarning(
        FutureWarning, r"Tip: In future versions of Ray, Ray will no longer override", r"ray\."
    ),
)


def ignore_harmless_warnings() -> None:
    """Ignore exactly the warnings of :data:`HARMLESS_WARNINGS` in this process.

    Calling it again changes nothing (an identical filter replaces the old one).
    """
    for harmless in HARMLESS_WARNINGS:
        warnings.filterwarnings(
            "ignore", message=harmless.message, category=harmless.category, module=harmless.module
        )


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Load models without progress bars and without :data:`HARMLESS_WARNINGS`.

    Both are restored on exit, so a user's own progress bars and warning filters
    are as they were.
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            ignore_harmless_warnings()
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
