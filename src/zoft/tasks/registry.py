"""The task registry: one registration line per task."""

from __future__ import annotations

from zoft.core import Registry
from zoft.tasks.base import Task
from zoft.tasks.boolq import BoolQ
from zoft.tasks.cb import CB
from zoft.tasks.copa import COPA
from zoft.tasks.drop import DROP
from zoft.tasks.multirc import MultiRC
from zoft.tasks.record import ReCoRD
from zoft.tasks.rte import RTE
from zoft.tasks.sentiment_demo import SentimentDemo
from zoft.tasks.squad import SQuAD
from zoft.tasks.sst2 import SST2
from zoft.tasks.wic import WiC
from zoft.tasks.winogrande import WinoGrande
from zoft.tasks.wsc import WSC

TASKS: Registry[Task] = Registry("task")
TASKS.register("sst2", SST2())
TASKS.register("copa", COPA())
TASKS.register("winogrande", WinoGrande())
TASKS.register("cb", CB())
TASKS.register("rte", RTE())
TASKS.register("wsc", WSC())
TASKS.register("boolq", BoolQ())
TASKS.register("wic", WiC())
TASKS.register("multirc", MultiRC())
TASKS.register("record", ReCoRD())
TASKS.register("squad", SQuAD())
TASKS.register("drop", DROP())
TASKS.register("sentiment-demo", SentimentDemo())

TASK_NAMES: list[str] = TASKS.names()


def get_task(name: str) -> Task:
    """The task registered as ``name``; ValueError listing the valid names otherwise."""
    return TASKS.get(name)
