"""Pipelines: functions composed into a graph of steps on any backend, every step recorded and cached.

``@shoal.pipeline`` makes a ``Pipeline`` (``pipeline.py``); running it runs its body on the driver
(``session.py``), where ``fn.submit`` makes steps whose references (``references.py``) the engine
resolves after their producers (``steps.py``); ``graph.py`` draws a run's graph. Imports no engine.
"""

from __future__ import annotations

from .pipeline import Pipeline, pipeline
from .references import OutputRef

__all__ = ["OutputRef", "Pipeline", "pipeline"]
