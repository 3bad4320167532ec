"""A logger that writes to a Weights & Biases run (extra ``wandb``)."""

from __future__ import annotations

import os
import pathlib
from typing import Any

from .base import ExperimentLogger


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as exc:
        raise ImportError(
            'WandbLogger needs Weights & Biases: pip install "helios-blaze[wandb]"'
        ) from exc
    return wandb


class WandbLogger(ExperimentLogger):
    """Logs metrics and parameters (as the run's config) to one W&B run.

    The helios step is W&B's ``step`` (``_step``), so it must not decrease from one call to
    the next; several calls with the same step fill one row.

    On resume, ``wandb.init`` is called with the run id saved in the state and either:

    - ``rewind=True`` (default): ``resume_from="<run id>?_step=<resume step>"``, W&B's
      *rewind*: the run's history is truncated after the resume step and continues from the
      next step, so every step is shown once, with the resumed run's values. In offline
      mode the rewind point is recorded in the run's files and applied by ``wandb sync``.
      Rewinding is a preview feature of the W&B server that may need to be enabled for
      your account.
    - ``rewind=False``: ``resume="must"``: the run continues, but W&B ignores (with a
      warning) steps lower than the last one it has, so the steps logged after the
      checkpoint keep the values of the interrupted run.

    If nothing was logged before the checkpoint, a new run is started instead (nothing is
    lost; the interrupted run stays as a separate run).

    W&B's service writes an offline run's transaction log in 32 KiB blocks and flushes it
    when the run finishes (which W&B's exit hook does after an uncaught exception), so a
    process killed with SIGKILL loses what had not been written yet. ``run.finish()`` (and so
    :py:meth:`close`) returns before the service has written the files; they are complete
    when the process exits or after ``wandb.teardown()``.

    Args:
        project: the W&B project.
        save_dir: the folder W&B writes its local files into (``wandb.init(dir=...)``);
            created if needed. ``None``: W&B's default.
        name: the display name of a new run.
        entity: the W&B entity (user or team).
        mode: ``"online"``, ``"offline"`` or ``"disabled"``; ``None`` leaves it to W&B
            (``WANDB_MODE``).
        config: the initial config of a new run.
        tags: the tags of a new run.
        rewind: how a resumed run drops the points after the resume step (see above).
        **init_kwargs: further keyword arguments for ``wandb.init``; by default
            ``settings=wandb.Settings(console="off")`` so that W&B leaves stdout and stderr
            (and helios' progress bars) alone.
    """

    backend = "wandb"

    def __init__(
        self,
        project: str = "helios",
        save_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        entity: str | None = None,
        mode: str | None = None,
        config: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        rewind: bool = True,
        **init_kwargs: Any,
    ) -> None:
        super().__init__()
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(
                f"WandbLogger mode must be 'online', 'offline', 'disabled' or None, got {mode!r}"
            )
        self._project = project
        self._save_dir = pathlib.Path(save_dir) if save_dir is not None else None
        self._name = name
        self._entity = entity
        self._mode = mode
        self._config = dict(config or {})
        self._tags = list(tags or [])
        self._rewind = rewind
        self._init_kwargs = init_kwargs
        self._run: Any = None

    @property
    def run(self) -> Any:
        """The ``wandb`` run (opens it if needed)."""
        self._ensure_open()
        return self._run

    def destination_folder(self) -> pathlib.Path | None:
        """The folder W&B writes its local files into, when one is given."""
        saved = self.saved_state
        if saved is not None and saved.get("run_id") is not None and saved.get("dir"):
            return pathlib.Path(saved["dir"])
        return self._save_dir

    # -- hooks -------------------------------------------------------------------------------

    def _open(self, resume_step: int | None) -> None:
        wandb = _import_wandb()
        saved = self.saved_state
        kwargs: dict[str, Any] = {"reinit": "create_new"}
        if "settings" not in self._init_kwargs:
            kwargs["settings"] = wandb.Settings(console="off")
        kwargs.update(self._init_kwargs)
        if resume_step is not None and saved is not None and self._run_id is not None:
            self._project = saved.get("project", self._project)
            self._entity = saved.get("entity", self._entity)
            saved_dir = saved.get("dir")
            self._save_dir = pathlib.Path(saved_dir) if saved_dir is not None else None
        if resume_step is not None and resume_step >= 0:
            if self._rewind:
                # W&B keeps the history up to this step and continues after it.
                kwargs["resume_from"] = f"{self._run_id}?_step={resume_step}"
            else:
                kwargs["id"] = self._run_id
                kwargs["resume"] = "must"
        else:
            # A new run; also when nothing was logged before the checkpoint, since a rewind
            # cannot drop every step.
            kwargs.update(name=self._name, config=self._config or None, tags=self._tags or None)
        if self._save_dir is not None:
            self._save_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=self._project,
            entity=self._entity,
            dir=str(self._save_dir) if self._save_dir is not None else None,
            mode=self._mode,
            **kwargs,
        )
        self._run_id = self._run.id

    def _write_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(metrics, step=step)

    def _write_params(self, params: dict[str, Any]) -> None:
        self._run.config.update(params, allow_val_change=True)

    def _flush(self) -> None:
        # W&B's service process writes the run's files; nothing to flush from here.
        pass

    def _close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None

    def _extra_state(self) -> dict[str, Any]:
        return {
            "project": self._project,
            "entity": self._entity,
            "dir": str(self._save_dir) if self._save_dir is not None else None,
        }


__all__ = ["WandbLogger"]
