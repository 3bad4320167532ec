"""The ``helios`` command: runs from a config file, checkpoint inspection, a resume audit.

Subcommands (``helios --help``; ``python -m helios`` is the same command):

* ``helios fit CONFIG [--key.path=value ...]``: train (or resume) the run a YAML or JSON
  file describes (:py:mod:`helios.cli.config`); ``--print-config`` prints the resolved
  config; ``--allow-change KEY`` lets a resumed run change a key of its saved config
  (:py:mod:`helios.cli.records`).
* ``helios test CONFIG``: test the run's model from its newest checkpoint.
* ``helios inspect CHECKPOINT [--json]``: what a checkpoint holds, read safely without the
  model's code (:py:mod:`helios.cli.inspection`).
* ``helios verify-resume CONFIG [--kills N] [--steps S]``: train uninterrupted and with
  kills, compare bit for bit (:py:mod:`helios.cli.verify`).
* ``helios export CHECKPOINT``: a ``.dcp`` folder as one file, or ONNX
  (:py:mod:`helios.cli.export`).
* ``helios migrate ROOT``: :py:mod:`helios.chkpt_migrator`.

This package imports the config library (jsonargparse, the ``cli`` extra) only when the
command runs; the part types a model declares (:py:mod:`helios.cli.specs`) import nothing
heavy.
"""

from .specs import (
    CollateFnSpec,
    DatasetSpec,
    LossSpec,
    MetricSpec,
    NetworkSpec,
    OptimizerSpec,
    SamplerSpec,
    SchedulerSpec,
    Spec,
    TransformSpec,
)

__all__ = [
    "CollateFnSpec",
    "DatasetSpec",
    "LossSpec",
    "MetricSpec",
    "NetworkSpec",
    "OptimizerSpec",
    "SamplerSpec",
    "SchedulerSpec",
    "Spec",
    "TransformSpec",
]
