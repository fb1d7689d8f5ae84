"""Several processes, GPUs or nodes: the job (:mod:`.process`), wrapping a model for it
(:mod:`.parallelize`) and ``unmask train --nproc`` (:mod:`.launch`)."""

from unmask.distributed.process import Parallel, is_main_process, setup, shutdown

__all__ = ["Parallel", "is_main_process", "setup", "shutdown"]
