"""torchrun target for test_distributed: ``zoft train`` with rank 1 failing at its 2nd step.

ZOFT_TEST_FAULT=crash: rank 1 raises; =hang: rank 1 sleeps (rank 0's all-reduce must time out).
"""

import os
import sys
import time

import zoft.train.loop as loop
from zoft.cli import main

original = loop.take_step
calls = {"n": 0}


def faulty_take_step(s, batches, comm=loop.Comm()):
    calls["n"] += 1
    if comm.rank == 1 and calls["n"] == 2:
        if os.environ["ZOFT_TEST_FAULT"] == "crash":
            raise RuntimeError("injected crash on rank 1")
        time.sleep(600)
    return original(s, batches, comm)


loop.take_step = faulty_take_step
sys.exit(main(["train", *sys.argv[1:]]))
