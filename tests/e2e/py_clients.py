"""Concurrent MCP clients built with the Python SDK (`mcp` 2.3.0), for mcp-affinity's e2e tests.

    python py_clients.py URL --sessions N --calls C --mode streamable|sse|modern|tasks

Opens N sessions at once and calls a tool C times in each; prints one JSON object per line:
- streamable (Client(url, mode="legacy")), sse (Client(sse_client(url))), modern
  (Client(url, mode="2026-07-28"), sessionless): {"client", "call", "replica", "count", "session"}
- tasks (2026-07-28 with the io.modelcontextprotocol/tasks extension): slow_job becomes a task
  polled with tasks/get (Mcp-Name: <taskId>): {"client", "task", "polls": [replica, ...], "done"}
- any failure: {"client", "call", "error"}
Then a last line {"summary": {...}}. Exits 0 even if calls failed: the test judges.
"""

import argparse
import asyncio
import json
import sys
from typing import Literal

import mcp_types as types
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.client.sse import sse_client
from mcp_types import CallToolResult, RequestParams, Result

parser = argparse.ArgumentParser()
parser.add_argument("url")
parser.add_argument("--sessions", type=int, default=4)
parser.add_argument("--calls", type=int, default=3)
parser.add_argument("--mode", choices=["streamable", "sse", "modern", "tasks"], default="streamable")
args = parser.parse_args()


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


class TaskIdParams(RequestParams):
    task_id: str  # on the wire: taskId


class GetTask(types.Request[TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskIdParams
    name_param = "taskId"  # the SDK copies params.taskId into the Mcp-Name header


class TaskHandle(Result):
    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    poll_interval_ms: int | None = None


class TaskState(Result):
    model_config = {"extra": "allow"}
    task_id: str
    status: str
    result: dict | None = None


class Tasks(ClientExtension):
    identifier = "io.modelcontextprotocol/tasks"

    def __init__(self, client_no: int) -> None:
        self.client_no = client_no

    def claims(self):
        return [ResultClaim(result_type="task", model=TaskHandle, resolve=self.resolve)]

    async def resolve(self, handle: TaskHandle, ctx: ClaimContext) -> CallToolResult:
        polls = []
        while True:
            await asyncio.sleep((handle.poll_interval_ms or 200) / 1000)
            state = await ctx.session.send_request(GetTask(params=TaskIdParams(task_id=handle.task_id)), TaskState)
            polls.append((state.model_extra or {}).get("servedBy"))
            if state.status in ("completed", "failed", "cancelled") or len(polls) > 50:
                emit(client=self.client_no, task=handle.task_id, polls=polls, done=state.status == "completed")
                return CallToolResult.model_validate(state.result or {"content": []})


async def one(client_no: int, counts: dict) -> None:
    if args.mode == "sse":
        client = Client(sse_client(args.url))
    elif args.mode == "streamable":
        client = Client(args.url, mode="legacy")
    elif args.mode == "modern":
        client = Client(args.url, mode="2026-07-28")
    else:
        client = Client(args.url, mode="2026-07-28", extensions=[Tasks(client_no)])
    call = -1
    try:
        async with client as c:
            for call in range(args.calls):
                if args.mode == "tasks":
                    await c.call_tool("slow_job", {})
                    counts["ok"] += 1
                    continue
                result = await c.call_tool("whoami", {})
                reply = json.loads(result.content[0].text)
                emit(client=client_no, call=call, **reply)
                counts["ok"] += 1
    except BaseException as e:  # noqa: BLE001 - report everything, let the test judge
        counts["errors"] += 1
        emit(client=client_no, call=call, error=f"{type(e).__name__}: {e}")


async def main() -> None:
    counts = {"ok": 0, "errors": 0}
    await asyncio.gather(*(one(i, counts) for i in range(args.sessions)))
    emit(summary=counts)


asyncio.run(main())
sys.exit(0)
