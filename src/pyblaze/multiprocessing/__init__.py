"""Multi-process helpers of PyBlaze 1.1.6: the :py:class:`Vectorizer`.

:py:meth:`pyblaze.nn.BaseEngine.predict` runs on it for ``parallel=True`` (see
:py:func:`pyblaze.multiprocessing.prediction.predict_batches`).
"""

from .vectorizer import Vectorizer, WorkerError

__all__ = ["Vectorizer", "WorkerError"]
