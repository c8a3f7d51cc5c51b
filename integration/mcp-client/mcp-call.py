#!/usr/bin/env python3
"""Calls an MCP server's tools over streamable HTTP with the official MCP
Python SDK (`pip install mcp`): an independent client for agent-runner.

    mcp-call.py URL [--token T] list
    mcp-call.py URL [--token T] call TOOL JSON_ARGS [TOOL JSON_ARGS ...]

URL is `http://HOST:PORT/mcp`, or `stdio:COMMAND LINE` to start the server
as a child and talk MCP over its stdin/stdout.

Prints one JSON object per line: the tool list, or each call's result
(`{"tool", "is_error", "structured", "text"}`). Exits 2 on a protocol
failure.
"""

import argparse
import asyncio
import contextlib
import json
import shlex
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


@contextlib.asynccontextmanager
async def connect(args):
    if args.url.startswith("stdio:"):
        argv = shlex.split(args.url[len("stdio:"):])
        params = StdioServerParameters(command=argv[0], args=argv[1:])
        async with stdio_client(params) as streams:
            yield streams
        return
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    http = create_mcp_http_client(headers=headers)
    async with http, streamable_http_client(args.url, http_client=http) as streams:
        yield streams


async def run(args):
    async with connect(args) as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            init = await session.initialize()
            if args.action == "list":
                tools = await session.list_tools()
                print(json.dumps({
                    "server": init.server_info.name,
                    "tools": [
                        {"name": t.name, "description": t.description,
                         "input_schema": t.input_schema}
                        for t in tools.tools
                    ],
                }), flush=True)
                return 0
            pairs = args.rest
            if len(pairs) % 2:
                print("call needs TOOL JSON_ARGS pairs", file=sys.stderr)
                return 2
            for tool, raw in zip(pairs[::2], pairs[1::2]):
                result = await session.call_tool(tool, json.loads(raw))
                text = "".join(c.text for c in result.content if getattr(c, "text", None))
                print(json.dumps({
                    "tool": tool,
                    "is_error": bool(result.is_error),
                    "structured": result.structured_content,
                    "text": text,
                }), flush=True)
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--token")
    parser.add_argument("action", choices=["list", "call"])
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args()
    try:
        return asyncio.run(run(args))
    except Exception as e:  # the SDK raises grouped exceptions on HTTP errors
        print(f"mcp-call: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
