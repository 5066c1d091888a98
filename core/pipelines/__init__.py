"""Pipelines: functions composed into a graph of steps on any backend, every step recorded and cached.

``@shoal.pipeline`` makes a ``Pipeline`` (``pipeline.py``); running it runs its body on the driver
(``session.py``), where ``fn.submit`` makes steps whose references (``references.py``) the engine
resolves after their producers (``steps.py``), and ``shoal.tune`` a step run on the driver
(``driver_steps.py``); ``graph.py`` draws a run's graph; ``step_functions.py`` finds the functions a
body calls, which the pipeline's hash covers. Imports no engine.
"""

from __future__ import annotations

from .handles import SearchHandle, StepHandle
from .pipeline import Pipeline, pipeline
from .references import OutputRef

__all__ = ["OutputRef", "Pipeline", "SearchHandle", "StepHandle", "pipeline"]
