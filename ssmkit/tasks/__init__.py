"""Tasks by name: data, the model's input/output shape, loss and metrics."""
from ssmkit.tasks.base import TASKS, Task, data_root

__all__ = ["TASKS", "Task", "data_root"]
