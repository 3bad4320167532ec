"""Which checkpoints a run keeps when the Trainer's arguments do not say, and how it says so.

Helios 1.2.7 keeps every checkpoint. That stays the rule for the runs where it matters (and
where it costs little): a run that writes at most :py:data:`KEEP_ALL_UP_TO` periodic
checkpoints keeps every one, so the tutorials, the seeds' programs and any short run keep
their files exactly as before. A run that would pile them up (more than that, or
``total_steps=math.inf``) keeps the newest :py:data:`AUTO_KEEP_LAST` by default, and its best
one when it ranks them. ``chkpt_keep_last=math.inf`` keeps every checkpoint of any run;
any ``chkpt_keep_last``/``chkpt_keep_best`` given decides alone.

Ranking: ``chkpt_best_metric`` (with ``chkpt_best_mode``) ranks checkpoints; without it the
run's monitored metric does (``monitor`` with its mode). A run whose checkpoints are ranked
by the monitored metric and that deletes old ones keeps its best one unless
``chkpt_keep_best`` says otherwise.

Retention only ever deletes checkpoints that the run itself wrote and recorded (see
:py:mod:`helios.trainer.checkpoint.retention`). What a run keeps is said in one line when
it starts (:py:func:`describe`).
"""

from __future__ import annotations

import math
from typing import Any

from .retention import RetentionPolicy

KEEP_ALL_UP_TO = 10
"""A run that writes at most this many periodic checkpoints keeps all of them by default."""

AUTO_KEEP_LAST = 3
"""The newest checkpoints a longer run keeps by default."""


def expected_saves(total_steps: int | float, chkpt_frequency: int | None) -> int | float:
    """The number of periodic checkpoints a run writes (``math.inf``: no bound).

    Args:
        total_steps: the run's ``total_steps``.
        chkpt_frequency: its ``chkpt_frequency`` (``None``: none).

    Returns:
        The count.
    """
    if chkpt_frequency is None:
        return 0
    if total_steps == math.inf:
        return math.inf
    return int(total_steps) // chkpt_frequency


def choose_policy(
    keep_last: int | float | None,
    keep_best: int | None,
    best_metric: str | None,
    best_mode: str,
    saves: int | float,
    ranked_by_monitor: bool,
) -> RetentionPolicy:
    """The retention policy of a run, defaults applied (see the module docstring).

    Args:
        keep_last: ``chkpt_keep_last`` as given (``math.inf``: keep every checkpoint).
        keep_best: ``chkpt_keep_best`` as given.
        best_metric: the ranking metric (``chkpt_best_metric``, else the monitored one).
        best_mode: its mode.
        saves: :py:func:`expected_saves` of the run.
        ranked_by_monitor: whether the ranking metric is the monitored one.

    Returns:
        The policy.
    """
    if keep_last == math.inf:
        return RetentionPolicy(None, keep_best, best_metric, best_mode)
    last = None if keep_last is None else int(keep_last)
    if last is None and keep_best is None and saves > KEEP_ALL_UP_TO:
        last = AUTO_KEEP_LAST
        keep_best = 1 if best_metric is not None else None
    elif ranked_by_monitor and last is not None and keep_best is None:
        keep_best = 1
    return RetentionPolicy(last, keep_best, best_metric, best_mode)


def describe(policy: RetentionPolicy, saves: int | float, given: dict[str, Any]) -> str:
    """Say in one line which checkpoints the run keeps and why.

    Args:
        policy: the run's policy.
        saves: :py:func:`expected_saves` of the run.
        given: the retention arguments as the Trainer got them (``chkpt_keep_last``,
            ``chkpt_keep_best``), to tell a default from a choice.

    Returns:
        The line.
    """
    count = "an unbounded number of" if saves == math.inf else f"{saves}"
    written = f"this run writes {count} periodic checkpoint(s)"
    if not policy.prunes:
        why = (
            "chkpt_keep_last=math.inf"
            if given.get("chkpt_keep_last") == math.inf
            else f"the default for runs of at most {KEEP_ALL_UP_TO}"
        )
        kept = f"every checkpoint is kept ({written}; {why})"
    else:
        parts = []
        if policy.keep_last is not None:
            parts.append(f"the newest {policy.keep_last}")
        if policy.keep_best is not None:
            parts.append(f"the best {policy.keep_best} by {policy.best_metric!r}")
        chosen = given.get("chkpt_keep_last") is not None or given.get("chkpt_keep_best")
        why = (
            "as chkpt_keep_last/chkpt_keep_best ask"
            if chosen
            else f"the default for runs of over {KEEP_ALL_UP_TO}; pass "
            "chkpt_keep_last=math.inf to keep every one"
        )
        kept = f"{' and '.join(parts)} checkpoint(s) are kept ({written}; {why})"
    best = ""
    if policy.best_metric is not None:
        best = f"; the index checkpoints.json names the best by {policy.best_metric!r}"
    return f"Checkpoints: {kept}{best}"


__all__ = ["AUTO_KEEP_LAST", "KEEP_ALL_UP_TO", "choose_policy", "describe", "expected_saves"]
