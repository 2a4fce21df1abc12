"""pin_engine_threads: the stepping thread on the first CPU, threads Python did not start on the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llmds.server.affinity import pin_engine_threads

# in a child process, so this test process keeps its own affinity
CHILD = r"""
import json, os, threading
import torch
from llmds.server.affinity import pin_engine_threads

torch.set_num_threads(2)
ready, done = threading.Event(), threading.Event()

def stepping():
    torch.ones(1 << 22).mul_(2).sum()  # a parallel region: OpenMP starts its worker for this thread
    ready.set()
    done.wait()

t = threading.Thread(target=stepping)
t.start()
ready.wait()
cpus = sorted(os.sched_getaffinity(0))
pinned = pin_engine_threads(t.native_id)
python = {x.native_id for x in threading.enumerate()}
tasks = sorted(int(x) for x in os.listdir("/proc/self/task"))
print(json.dumps({"cpus": cpus, "engine": t.native_id, "main": threading.main_thread().native_id,
                  "pinned": {str(k): sorted(v) for k, v in pinned.items()},
                  "now": {str(x): sorted(os.sched_getaffinity(x)) for x in tasks},
                  "workers": [x for x in tasks if x not in python]}))
done.set()
t.join()
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and 2 CPUs")
def test_the_stepping_thread_gets_one_cpu_and_the_workers_the_rest():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=120)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    first, rest = r["cpus"][:1], r["cpus"][1:]
    assert r["workers"], "torch started no worker thread"
    assert r["now"][str(r["engine"])] == first
    for w in r["workers"]:
        assert r["now"][str(w)] == rest
    assert r["now"][str(r["main"])] == r["cpus"]  # the event loop's thread stays free
    assert set(r["pinned"]) == {str(r["engine"]), *map(str, r["workers"])}


def test_nothing_is_pinned_on_one_cpu():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("needs Linux")
    cpu = next(iter(os.sched_getaffinity(0)))
    assert pin_engine_threads(os.getpid(), cpus=[cpu]) == {}
    assert len(os.sched_getaffinity(0)) >= 1
