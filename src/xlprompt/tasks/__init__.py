"""Tasks registered by name: a small declarative description plus loader and metric."""
from .base import Task, get_task, register_task, task_names
from . import sib200 as _sib200  # noqa: F401  (registers itself)

__all__ = ["Task", "get_task", "register_task", "task_names"]
