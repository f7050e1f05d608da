"""Tasks: per kind, the OpenMMLab configuration, data checks and synthetic data of a task spec
(the specs themselves, names and layouts, are in ``catalog``)."""
from catalog import TASKS, TaskSpec, UnknownTaskError, get_task

from .registry import (DataFormatError, Kind, check_dataset, fingerprint, kind_of, register_kind,
                       task_config, write_dataset)

__all__ = ["TASKS", "DataFormatError", "Kind", "TaskSpec", "UnknownTaskError", "check_dataset",
           "fingerprint", "get_task", "kind_of", "register_kind", "task_config", "write_dataset"]
