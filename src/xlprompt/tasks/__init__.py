"""Tasks registered by name: a small declarative description plus loader and metric."""
from .base import Task, get_task, register_task, task_names
from . import sib200 as _sib200  # noqa: F401  (registers itself)
from . import xnli as _xnli  # noqa: F401
from . import pawsx as _pawsx  # noqa: F401
from . import custom as _custom  # noqa: F401  (lists 'custom'; get_task_for builds it)
from . import udpos as _udpos  # noqa: F401  (registers itself)
from . import panx as _panx  # noqa: F401  (registers itself)
from . import xquad as _xquad  # noqa: F401  (registers itself)
from . import mlqa as _mlqa  # noqa: F401  (registers itself)
from . import tydiqa as _tydiqa  # noqa: F401  (registers itself)

__all__ = ["Task", "get_task", "register_task", "task_names"]
