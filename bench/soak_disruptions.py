"""What the soak does to the server while its clients run (bench/soak.py): a third of the way in, it
kills one of the server's worker processes with SIGKILL (uvicorn starts another; the turns that
worker held die with it); two thirds of the way in, on PostgreSQL, it cuts the database for a few
seconds (every connection terminated, new ones refused). The checks then say whether anything was
lost: every call still has its one usage record, no question is left pending, no session leased."""

import asyncio
import time
from dataclasses import dataclass

import psutil

from tests.support.processes import postgres_cut


@dataclass(frozen=True)
class Disruption:
    name: str
    # When it began and ended, as time.perf_counter() reads it.
    began: float
    ended: float


def worker_pids(server_pid: int) -> list[int]:
    """The server's worker processes: the children uvicorn spawned (not multiprocessing's helper)."""
    return [
        child.pid for child in psutil.Process(server_pid).children()
        if "resource_tracker" not in " ".join(child.cmdline())
    ]


async def disrupt(*, server_pid: int, database_url: str, began: float, seconds: float,
                  cut_seconds: float) -> list[Disruption]:
    """Kill a worker at a third of `seconds` from `began`, and cut a PostgreSQL database at two
    thirds; returns what was done, and when."""
    done = []
    await asyncio.sleep(max(0.0, began + seconds / 3 - time.perf_counter()))
    victim = worker_pids(server_pid)[0]
    killed = time.perf_counter()
    psutil.Process(victim).kill()
    done.append(Disruption(f"worker {victim} killed (SIGKILL)", killed, killed))
    if database_url.startswith("postgres"):
        await asyncio.sleep(max(0.0, began + 2 * seconds / 3 - time.perf_counter()))
        cut = time.perf_counter()
        await asyncio.to_thread(postgres_cut, database_url.rsplit("/", 1)[1], refuse_for=cut_seconds)
        done.append(Disruption(f"database cut for {cut_seconds:g} s", cut, time.perf_counter()))
    return done
