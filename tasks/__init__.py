"""Tasks: datasets, heads and metrics per task; the registry names them."""
from .registry import TASKS, DataFormatError, TaskSpec, UnknownTaskError, get_task

__all__ = ["TASKS", "DataFormatError", "TaskSpec", "UnknownTaskError", "get_task"]
