"""Tasks: templates, verbalizers, metrics and MeZO-protocol data loading.

    from zoft.tasks import get_task, load_splits
    splits = load_splits("sst2", data_dir="data", seed=0)   # or ZOFT_DATA_DIR, or the hub
    task = get_task("sst2")
    task.score(splits.test, predictions)                     # {"accuracy": ...}

``TASK_NAMES`` lists the registered tasks; ``sentiment-demo`` is built in and offline.
"""

from zoft.tasks.base import Example, Task
from zoft.tasks.data import DataUnavailableError, Splits, load_splits
from zoft.tasks.registry import TASK_NAMES, TASKS, get_task

__all__ = ["DataUnavailableError", "Example", "Splits", "TASKS", "TASK_NAMES", "Task",
           "get_task", "load_splits"]
