"""MCP clients under steady load, built with the Python SDK (`mcp` 2.3.0), for mcp-affinity's
crash and fleet tests.

    python py_soak.py URL --mode streamable|sse [--workers N] [--every MS] [--keep] [--tokens]
                          [--timeout S]

- N workers each open a session and call `whoami` in a loop; when a call fails, the worker
  reports the error and starts a new session (as an application would). With `--keep`, it
  calls again in the same session instead (the session's transport is still up: a request
  failed on its way), and starts over only after 3 failures in a row.
- A starter opens a new short session every MS milliseconds (initialize, one call, close).
- With `--tokens` (legacy SSE), each worker session reports the session id it was given.
- It runs until its stdin closes, then prints a summary and exits 0: the test judges. A line
  `mark` on stdin is answered {"mark": n}: starters numbered n and up start after it. If its
  tasks have not all ended 10 s after stdin closed, it prints their stacks to stderr and exits
  3 (a client stuck in the SDK is then named, not a silent hang).

The legacy SSE client of `mcp` 2.3.0 gives up a session's write side for good when one of its
POSTs is answered with an error status (a 503 of a store outage, say): every later call of that
session fails (a timeout, then "Connection closed"). That is why each error line says when the
session's run of failures began (`marks`: how many `mark` lines had been asked for then): a
failure that shows after a mark may come from a request made before it.

One JSON object per line:
- {"worker", "session", "call", "replica", "count"}: a reply;
- {"worker", "session", "error", "kind", "marks"}: a failed call; kind "gone" for what tells a client
  its session is over (404 "Session not found"/"Session terminated", a cut SSE stream), "other"
  for anything else (a 502, a 503, a timeout);
- {"starter", "replica"} or {"starter", "error", "kind", "phase"}: a short session, "phase"
  saying whether it failed to start ("initialize") or later ("call": its replica died after
  minting it);
- {"worker", "session", "token"}: with `--tokens`, the session id of a worker's session;
- {"ready": true} once every worker has had a reply; {"summary": {...}} last.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import threading

import anyio

from mcp import Client
from mcp.client.sse import sse_client

parser = argparse.ArgumentParser()
parser.add_argument("url")
parser.add_argument("--mode", choices=["streamable", "sse"], default="streamable")
parser.add_argument("--workers", type=int, default=9)
parser.add_argument("--every", type=int, default=25)
parser.add_argument("--keep", action="store_true", help="retry a failed call in the same session")
parser.add_argument("--tokens", action="store_true", help="report each worker session's id (SSE)")
parser.add_argument("--timeout", type=float, default=10.0, help="seconds a call may take")
args = parser.parse_args()

CALL_TIMEOUT = args.timeout


STOPPING = False
# The number of the next short session.
NEXT_STARTER = 0
# How many `mark` lines were asked for so far.
MARKS = 0
# The short sessions still running.
SHORT = set()


class OneLine(logging.Formatter):
    """The SDK logs each failed POST with its traceback: one line each keeps stderr readable."""

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return f"  {describe(ei[1])}"


handler = logging.StreamHandler()
handler.setFormatter(OneLine("%(name)s: %(message)s"))
logging.basicConfig(handlers=[handler], level=logging.WARNING)


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def failed(counts: dict, error: BaseException, **fields) -> None:
    # Cancellation at the end (possibly wrapped in an exception group) is not a failure.
    if STOPPING:
        return
    counts["errors"] += 1
    emit(**fields, error=describe(error), kind=kind_of(error))


def describe(error: BaseException) -> str:
    # Task groups wrap what happened inside them: say what that was.
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(describe(e) for e in error.exceptions)
    return f"{type(error).__name__}: {error}"


def kind_of(error: BaseException) -> str:
    text = describe(error)
    # 404 answers, or a cut SSE stream (a response stream ended early, the session's stream
    # closed, the write side broken).
    gone = (
        "Session not found",
        "Session terminated",
        "Connection closed",
        "ClosedResourceError",
        "BrokenResourceError",
        "SSE stream ended without a response",
    )
    return "gone" if any(g in text for g in gone) else "other"


def client(started=None) -> Client:
    """A client; `started(id)` is called once the session exists on a replica (with SSE, when
    its stream's endpoint event came; with Streamable HTTP, once initialized)."""
    # `read_timeout_seconds` bounds `initialize` too: without it, a session whose initialize
    # POST failed (see above) would wait for its answer for ever.
    if args.mode == "sse":
        transport = sse_client(args.url, on_session_created=lambda sid: started and started(sid))
        return Client(transport, read_timeout_seconds=CALL_TIMEOUT)
    return Client(args.url, mode="legacy", read_timeout_seconds=CALL_TIMEOUT)


async def whoami(c) -> dict:
    with anyio.fail_after(CALL_TIMEOUT):
        result = await c.call_tool("whoami", {})
    return json.loads(result.content[0].text)


async def worker(no: int, ready: asyncio.Event, pending: list, counts: dict) -> None:
    session = 0
    while not STOPPING:
        call = 0

        def created(sid: str, session: int = session) -> None:
            if args.tokens:
                emit(worker=no, session=session, token=sid)

        # When this session's run of failures began (or, before any call, its start).
        marks = MARKS
        try:
            async with client(created) as c:
                failures = 0
                while not STOPPING:
                    if failures == 0:
                        marks = MARKS
                    try:
                        reply = await whoami(c)
                    except Exception as e:  # noqa: BLE001
                        if not args.keep or STOPPING:
                            raise
                        failed(counts, e, worker=no, session=session, marks=marks)
                        failures += 1
                        if failures >= 3:
                            break
                        await asyncio.sleep(0.02)
                        continue
                    failures = 0
                    emit(worker=no, session=session, call=call, replica=reply["replica"], count=reply["count"])
                    counts["ok"] += 1
                    if call == 0 and session == 0:
                        pending[0] -= 1
                        if pending[0] == 0:
                            ready.set()
                    call += 1
                    await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - report everything, let the test judge
            failed(counts, e, worker=no, session=session, marks=marks)
            if STOPPING:
                raise
        if STOPPING:
            return
        session += 1


async def starter(counts: dict) -> None:
    global NEXT_STARTER

    async def short(n: int) -> None:
        phase = "initialize"

        def started(_sid=None):
            nonlocal phase
            phase = "call"

        try:
            async with client(started) as c:
                phase = "call"
                reply = await whoami(c)
                emit(starter=n, replica=reply["replica"], count=reply["count"])
                counts["started"] += 1
        except BaseException as e:  # noqa: BLE001
            failed(counts, e, starter=n, phase=phase)

    while not STOPPING:
        task = asyncio.create_task(short(NEXT_STARTER))
        SHORT.add(task)
        task.add_done_callback(SHORT.discard)
        NEXT_STARTER += 1
        await asyncio.sleep(args.every / 1000)


async def main() -> None:
    counts = {"ok": 0, "errors": 0, "started": 0}
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def mark() -> None:
        global MARKS
        MARKS += 1
        emit(mark=NEXT_STARTER)

    def read_stdin() -> None:
        # `mark` lines are answered; stop when stdin closes: the test says so, or died.
        for line in sys.stdin:
            if line.strip() == "mark":
                loop.call_soon_threadsafe(mark)
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read_stdin, daemon=True).start()
    ready = asyncio.Event()
    pending = [args.workers]
    tasks = [asyncio.create_task(worker(i, ready, pending, counts)) for i in range(args.workers)]
    await ready.wait()
    emit(ready=True)
    tasks.append(asyncio.create_task(starter(counts)))
    await stop.wait()
    global STOPPING
    STOPPING = True
    tasks += SHORT
    for task in tasks:
        task.cancel()
    _, stuck = await asyncio.wait(tasks, timeout=10)
    if stuck:
        print(f"{len(stuck)} tasks still running 10 s after the stop:", file=sys.stderr)
        for task in stuck:
            task.print_stack(file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)
    emit(summary=counts)


asyncio.run(main())
sys.exit(0)
