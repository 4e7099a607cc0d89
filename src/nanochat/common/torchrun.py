"""`python -m nanochat.common.torchrun ARGS`: torchrun (torch.distributed.run, same arguments) behind
nanochat's error convention. `common.launch` execs this instead of torchrun itself.

torchrun's agent reports a failed worker with a page of its own (a traceback, a "Root Cause" box) on
top of the worker's one-line error, and a rendezvous problem as a traceback. Here the agent is quiet:
a worker that failed has printed its own `error:` line, so the agent only passes its exit code on; a
worker killed by a signal (which printed nothing) and a rendezvous that fails get one line each.
NANOCHAT_DEBUG=1 keeps torchrun's own logging and tracebacks.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

from nanochat.common.errors import debug_enabled


def _quiet_torch_logging() -> None:
    # torchrun's Python loggers set their level when imported: import every module the agent uses, then raise
    # them above ERROR (a failed worker is reported by the worker itself, and by the one line below)
    import torch.distributed.elastic.agent.server.local_elastic_agent  # noqa: F401
    import torch.distributed.elastic.multiprocessing.api  # noqa: F401
    import torch.distributed.elastic.rendezvous.c10d_rendezvous_backend  # noqa: F401
    import torch.distributed.elastic.rendezvous.dynamic_rendezvous  # noqa: F401
    import torch.distributed.run  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _endpoint(args) -> str:
    return "this machine" if args.standalone else (args.rdzv_endpoint or f"{args.master_addr}:{args.master_port}")


def main(argv: list[str] | None = None) -> None:
    from nanochat.common.logging import error_line

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled()
    user_cpp_level = os.environ.get("TORCH_CPP_LOG_LEVEL")
    if not debug and user_cpp_level is None:
        # the agent's TCP store prints C++ warnings with stack frames when a peer goes away; read at torch's import
        os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousClosedError, RendezvousError, RendezvousTimeoutError

    if user_cpp_level is None:
        os.environ.pop("TORCH_CPP_LOG_LEVEL", None)  # the workers log as the user's environment says
    if not debug:
        _quiet_torch_logging()
    args = torchrun.parse_args(argv)
    try:
        torchrun.run(args)
    except ChildFailedError as e:
        if debug:
            raise
        rank, failure = e.get_first_failure()
        if failure.exitcode < 0:  # killed by a signal: nothing of its own was printed
            name, host = failure.signal_name(), socket.gethostname()
            why = " (out of memory?)" if name == "SIGKILL" else ""
            error_line(f"process rank {rank} (local rank {failure.local_rank} on {host}) was killed by {name}{why}; "
                       "start the same command again on every machine (training resumes from its newest checkpoint with --resume auto)")  # fmt: skip
            sys.exit(128 + (-failure.exitcode))
        sys.exit(failure.exitcode or 1)
    except SignalException as e:  # SIGTERM/SIGINT to the agent: forwarded to the workers, which saved and stopped
        sys.exit(128 + int(e.sigval))
    except RendezvousError as e:
        if debug:
            raise
        where = _endpoint(args)
        if isinstance(e, RendezvousTimeoutError):
            error_line(f"the rendezvous at {where} timed out before all {args.nnodes} machines joined; start the same command on every "
                       "machine (same --nnodes, --rdzv-endpoint and --rdzv-id) and check that they reach that address")  # fmt: skip
        elif isinstance(e, RendezvousClosedError):
            error_line(f"the rendezvous {args.rdzv_id!r} at {where} is closed (a run under that id ended); pass a new --rdzv-id on every machine")
        else:
            error_line(f"lost the rendezvous at {where} (the machine hosting it, node 0, stopped or cannot be reached: "
                       f"{' '.join(str(e).split())[:120]}); start the same command again on every machine")  # fmt: skip
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
    main()
