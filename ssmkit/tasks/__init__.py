"""Tasks by name: data, the model's input/output shape, loss and metrics."""
from ssmkit.tasks import (  # noqa: F401  (register the real-data tasks)
    density,
    forecast,
    images,
    listops,
    lm,
    lra_text,
    mqar,
    pathfinder,
    sc09,
    selective,
    sequences,
    speech,
    synthetic,  # noqa: F401  (registers the synthetic tasks)
    timeseries,
)
from ssmkit.tasks.base import TASKS, Task, data_root

__all__ = ["TASKS", "Task", "data_root"]
