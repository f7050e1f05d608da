"""Tasks: datasets, heads and metrics per task; the registry names them."""
from .registry import TASKS, TaskSpec, UnknownTaskError, get_task

__all__ = ["TASKS", "TaskSpec", "UnknownTaskError", "get_task"]
