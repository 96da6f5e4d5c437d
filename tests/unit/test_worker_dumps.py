"""``kill -USR1`` on a worker dumps its threads and tasks for a person to read: no local
variables, since a credential handed to a client (aiokafka takes the SASL password as a plain
string) sits in some frame's locals, and mode's own dump prints every frame's locals."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from mode.utils import logging as mode_logging

from streams.worker.worker import install_stack_dumps

SECRET = "hunter2-sasl-password-7c1"


async def _holds_a_credential(started: asyncio.Event) -> None:
    password = SECRET  # noqa: F841 - the local a dump must not show
    started.set()
    await asyncio.sleep(30)


def _usr1_dump(capfd: Any) -> str:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        # as mode's Worker installs it before our task runs
        loop.add_signal_handler(signal.SIGUSR1, lambda: mode_logging.cry(file=sys.stderr))
        started = asyncio.Event()
        holder = asyncio.create_task(_holds_a_credential(started), name="holder")
        await started.wait()
        install_stack_dumps()
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.sleep(0.2)
        holder.cancel()
        loop.remove_signal_handler(signal.SIGUSR1)

    asyncio.run(main())
    return str(capfd.readouterr().err)


def test_usr1_dump_names_the_tasks_and_shows_no_local_variable(capfd: Any) -> None:
    err = _usr1_dump(capfd)
    assert "TASK holder" in err
    assert "_holds_a_credential" in err
    assert SECRET not in err


def test_modes_dump_prints_locals(capfd: Any) -> None:
    """Why ours replaces it: pins that mode's dump shows a task frame's locals."""

    async def main() -> None:
        started = asyncio.Event()
        holder = asyncio.create_task(_holds_a_credential(started))
        await started.wait()
        mode_logging.cry(file=sys.stderr)
        holder.cancel()

    asyncio.run(main())
    assert SECRET in capfd.readouterr().err
