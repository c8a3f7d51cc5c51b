#!/usr/bin/env python3
"""Scripted mock of the OpenAI Responses API for the real `codex` CLI.

Python 3.11, standard library only.

    mock-responses.py --port 0 --script script.json --log requests.jsonl

Prints `listening <port>` as its first stdout line (flushed), then serves on
127.0.0.1 until killed (SIGTERM/SIGINT).

Point codex at it with a provider whose `base_url` is
`http://127.0.0.1:<port>/v1` and `wire_api = "responses"`; codex then POSTs
each model turn to `/v1/responses` and expects a `text/event-stream` answer.

Script (JSON): a list of responses, served in order, one per model turn
(POST .../responses). Each response is a list of output items:

    [
      [ {"shell": ["bash", "-lc", "echo hi > made-by-codex.txt"]} ],
      [ {"message": "All done: created the file."} ]
    ]

Items:
  {"message": "text"}            a final assistant message (streamed as deltas)
  {"shell": ["argv", ...]}       run a command through codex's shell tool; the
                                 mock reads the `tools` codex sent in the
                                 request and calls whichever it registered:
                                 `exec_command` {"cmd": "..."} (unified exec,
                                 the default in codex 0.169), `shell_command`
                                 {"command": "..."}, `shell` {"command": [argv]}
                                 or a `local_shell` call. ["bash","-lc",X] is
                                 sent as the string X where a string is wanted.
  {"function_call": {"name": "...", "arguments": {...}}}
                                 any other function tool, arguments verbatim
  {"reasoning": "text"}          a reasoning item with that summary text
  {"sleep": 1.5}                 pause the stream that long (to watch codex
                                 while it is busy)
  {"fail": "text"}               end the response with `response.failed`
                                 (code "server_error") instead of completing

A response may also be an object {"items": [...]} (same thing). When the
script runs out, every further turn gets the message
"(mock: no more scripted responses)".

Several agents can share one mock: make the script an object
{"conversations": [{"match": "TEXT", "responses": [...]}, ...]}. A model
turn goes to the first conversation whose `match` occurs in the request's
`input` (the conversation so far, so every turn of one agent's task finds
the same entry), and each conversation keeps its own place in its list.

Requests that are not model turns (no `tools` in the body: codex 0.169
sends one per new thread to generate its title, with a `text.format`
json_schema) do not consume a scripted response; they get a message that
fits the schema when there is one (e.g. {"title": "Mock task"}), else
"Mock reply.".

--log FILE: every POST body is appended as one line, the JSON exactly as
codex sent it (requests without `tools` included; a body that is not JSON is
logged as a JSON string). stderr gets an access log line per request.

GET .../models answers a one-model list (both the OpenAI `data` shape and
codex's `models` shape); any other GET answers 200 `{}`. codex 0.169 with
the config in README.md makes no GET at all.
"""

import argparse
import json
import shlex
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXHAUSTED = "(mock: no more scripted responses)"


class Script:
    def __init__(self, script, log_path, model):
        # One list of responses, or conversations keyed by a match string.
        if isinstance(script, dict):
            self.conversations = [(c["match"], c["responses"]) for c in script["conversations"]]
        else:
            self.conversations = [(None, script)]
        self.log_path = log_path
        self.model = model
        self.lock = threading.Lock()
        self.next_turn = [0] * len(self.conversations)
        self.request_count = 0

    def conversation_of(self, body):
        text = json.dumps(body.get("input", ""))
        for i, (match, _) in enumerate(self.conversations):
            if match is None or match in text or json.dumps(match)[1:-1] in text:
                return i
        return None

    def take_turn(self, body):
        which = self.conversation_of(body)
        if which is None:
            return None, [{"message": "(mock: no conversation matches this request)"}]
        responses = self.conversations[which][1]
        with self.lock:
            index = self.next_turn[which]
            self.next_turn[which] += 1
        if index < len(responses):
            items = responses[index]
            if isinstance(items, dict):
                items = items.get("items", [])
            return index, items
        return index, [{"message": EXHAUSTED}]

    def log(self, body):
        """Append one request body (parsed JSON, or the raw text) as a line."""
        with self.lock:
            self.request_count += 1
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(body) + "\n")


def tool_names(body):
    names = set()
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "local_shell":
            names.add("local_shell")
        elif tool.get("name"):
            names.add(tool["name"])
        # namespaced tools: {"type": "namespace", "tools": [...]}
        for inner in tool.get("tools") or []:
            if isinstance(inner, dict) and inner.get("name"):
                names.add(inner["name"])
    return names


def argv_as_script(argv):
    if len(argv) == 3 and argv[0] in ("bash", "sh", "zsh") and argv[1] in ("-lc", "-c"):
        return argv[2]
    return shlex.join(argv)


def shell_item(argv, names, call_id):
    """Build the output item that makes codex run argv, for the tools it offered."""
    if "exec_command" in names:
        args = {"cmd": argv_as_script(argv), "yield_time_ms": 10000}
    elif "shell_command" in names:
        args = {"command": argv_as_script(argv)}
    elif "shell" in names:
        args = {"command": argv}
    elif "local_shell" in names:
        return {
            "type": "local_shell_call",
            "id": "lsc_" + call_id,
            "call_id": call_id,
            "status": "completed",
            "action": {"type": "exec", "command": argv},
        }
    else:
        # Nothing recognisable offered: guess the unified-exec tool.
        args = {"cmd": argv_as_script(argv)}
        return function_item("exec_command", args, call_id)
    name = next(n for n in ("exec_command", "shell_command", "shell") if n in names)
    return function_item(name, args, call_id)


def side_reply(body):
    """Text for a request that is not a model turn: JSON fitting its schema, if any."""
    fmt = (body.get("text") or {}).get("format") or {}
    schema = fmt.get("schema") if fmt.get("type") == "json_schema" else None
    if not isinstance(schema, dict):
        return "Mock reply."
    fill = {"string": "Mock task", "number": 0, "integer": 0, "boolean": False, "array": [], "object": {}}
    props = schema.get("properties") or {}
    return json.dumps({k: fill.get((v or {}).get("type"), None) for k, v in props.items()})


def function_item(name, args, call_id):
    return {
        "type": "function_call",
        "id": "fc_" + call_id,
        "call_id": call_id,
        "name": name,
        "arguments": args if isinstance(args, str) else json.dumps(args),
        "status": "completed",
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-responses/1"
    script: Script = None  # set in main

    def log_message(self, fmt, *args):
        sys.stderr.write("mock: %s %s\n" % (self.address_string(), fmt % args))

    # --- plain JSON answers -------------------------------------------------
    def send_json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path.rstrip("/").endswith("/models"):
            model = self.script.model
            self.send_json(200, {
                "object": "list",
                "data": [{"id": model, "object": "model", "created": 0, "owned_by": "mock"}],
                "models": [],
            })
        else:
            self.send_json(200, {})

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "zstd":
            return None, raw  # cannot decode zstd with the stdlib
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            import gzip
            raw = gzip.decompress(raw)
        try:
            return json.loads(raw or b"null"), raw
        except ValueError:
            return None, raw

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        body, raw = self.read_body()
        self.script.log(body if body is not None else raw.decode("latin-1"))
        if not path.rstrip("/").endswith("/responses"):
            self.send_json(404, {"error": {"message": "mock: unknown path " + path, "type": "invalid_request_error"}})
            return
        if not isinstance(body, dict):
            self.send_json(400, {"error": {"message": "mock: body is not JSON", "type": "invalid_request_error"}})
            return
        names = tool_names(body)
        if names:
            _, items = self.script.take_turn(body)
        else:
            items = [{"message": side_reply(body)}]
        self.stream(body, names, items)

    # --- SSE ----------------------------------------------------------------
    def stream(self, body, names, items):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        resp_id = "resp_" + uuid.uuid4().hex[:24]
        model = body.get("model") or self.script.model
        seq = [0]

        def emit(event):
            event["sequence_number"] = seq[0]
            seq[0] += 1
            data = "event: %s\ndata: %s\n\n" % (event["type"], json.dumps(event))
            self.wfile.write(data.encode())
            self.wfile.flush()

        base = {"id": resp_id, "object": "response", "created_at": int(time.time()),
                "model": model, "status": "in_progress", "output": []}
        try:
            emit({"type": "response.created", "response": dict(base)})
            emit({"type": "response.in_progress", "response": dict(base)})
            outputs = []
            for item in items:
                if "sleep" in item:
                    time.sleep(float(item["sleep"]))
                    continue
                if "fail" in item:
                    failed = dict(base, status="failed", output=outputs,
                                  error={"code": "server_error", "message": str(item["fail"])})
                    emit({"type": "response.failed", "response": failed})
                    return
                index = len(outputs)
                call_id = "call_" + uuid.uuid4().hex[:20]
                if "message" in item:
                    outputs.append(self.stream_message(emit, index, str(item["message"])))
                elif "reasoning" in item:
                    outputs.append(self.stream_reasoning(emit, index, str(item["reasoning"])))
                elif "shell" in item:
                    done = shell_item(list(item["shell"]), names, call_id)
                    outputs.append(self.stream_call(emit, index, done))
                elif "function_call" in item:
                    fc = item["function_call"]
                    done = function_item(fc["name"], fc.get("arguments", {}), call_id)
                    outputs.append(self.stream_call(emit, index, done))
                else:
                    raise ValueError("mock: unknown script item %r" % (item,))
            completed = dict(base, status="completed", output=outputs, usage={
                "input_tokens": 10,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 10,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 20,
            })
            emit({"type": "response.completed", "response": completed})
        except (BrokenPipeError, ConnectionResetError):
            pass

    @staticmethod
    def stream_message(emit, index, text):
        item_id = "msg_" + uuid.uuid4().hex[:24]
        added = {"type": "message", "id": item_id, "role": "assistant", "status": "in_progress", "content": []}
        emit({"type": "response.output_item.added", "output_index": index, "item": added})
        part = {"type": "output_text", "text": "", "annotations": []}
        emit({"type": "response.content_part.added", "item_id": item_id, "output_index": index,
              "content_index": 0, "part": part})
        words = text.split(" ")
        for i, word in enumerate(words):
            delta = word if i == len(words) - 1 else word + " "
            emit({"type": "response.output_text.delta", "item_id": item_id, "output_index": index,
                  "content_index": 0, "delta": delta})
        emit({"type": "response.output_text.done", "item_id": item_id, "output_index": index,
              "content_index": 0, "text": text})
        part = {"type": "output_text", "text": text, "annotations": []}
        emit({"type": "response.content_part.done", "item_id": item_id, "output_index": index,
              "content_index": 0, "part": part})
        done = {"type": "message", "id": item_id, "role": "assistant", "status": "completed",
                "content": [part]}
        emit({"type": "response.output_item.done", "output_index": index, "item": done})
        return done

    @staticmethod
    def stream_reasoning(emit, index, text):
        item_id = "rs_" + uuid.uuid4().hex[:24]
        emit({"type": "response.output_item.added", "output_index": index,
              "item": {"type": "reasoning", "id": item_id, "summary": []}})
        emit({"type": "response.reasoning_summary_part.added", "item_id": item_id, "output_index": index,
              "summary_index": 0, "part": {"type": "summary_text", "text": ""}})
        emit({"type": "response.reasoning_summary_text.delta", "item_id": item_id, "output_index": index,
              "summary_index": 0, "delta": text})
        emit({"type": "response.reasoning_summary_text.done", "item_id": item_id, "output_index": index,
              "summary_index": 0, "text": text})
        done = {"type": "reasoning", "id": item_id, "summary": [{"type": "summary_text", "text": text}]}
        emit({"type": "response.output_item.done", "output_index": index, "item": done})
        return done

    @staticmethod
    def stream_call(emit, index, done):
        added = dict(done, status="in_progress")
        if done["type"] == "function_call":
            added["arguments"] = ""
        emit({"type": "response.output_item.added", "output_index": index, "item": added})
        if done["type"] == "function_call":
            emit({"type": "response.function_call_arguments.delta", "item_id": done["id"],
                  "output_index": index, "delta": done["arguments"]})
            emit({"type": "response.function_call_arguments.done", "item_id": done["id"],
                  "output_index": index, "arguments": done["arguments"]})
        emit({"type": "response.output_item.done", "output_index": index, "item": done})
        return done


def main():
    parser = argparse.ArgumentParser(description="Scripted mock of the OpenAI Responses API for codex.")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: pick a free one)")
    parser.add_argument("--script", help="JSON file: list of responses, each a list of output items")
    parser.add_argument("--log", help="append each request as one JSON line to this file")
    parser.add_argument("--model", default="mock-model", help="model id that GET /models reports")
    args = parser.parse_args()

    responses = []
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            responses = json.load(f)
        if not isinstance(responses, list) and not (
            isinstance(responses, dict) and isinstance(responses.get("conversations"), list)
        ):
            sys.exit("mock: the script must be a list of responses or {\"conversations\": [...]}")
    Handler.script = Script(responses, args.log, args.model)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print("listening %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    import signal

    def on_sigterm(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    main()
