#!/usr/bin/env python3
"""Drive the real `codex` TUI in a pseudo-terminal against mock-responses.py.

Python 3.11, standard library only. Exits 0 when the scripted shell call
created the file in the work tree and the final message reached the terminal.

    try-codex.py [--codex PATH] [--enter separate|bracketed|typed] [--keep]

What it does:
  1. makes a temp dir with a git repo (the agent's cwd) and a CODEX_HOME
     holding config.toml (see README.md here), outside /tmp when possible is
     not required for the test;
  2. starts mock-responses.py with a two-turn script: a shell call that runs
     `echo hi > made-by-codex.txt`, then the message FINAL below;
  3. starts `codex --no-daemon` in a pty (120x40, TERM=xterm-256color, the
     child a session leader: pty.fork), tees everything to <dir>/capture.bin;
  4. waits for the composer (OSC 7501 state=idle and the placeholder text),
     types the prompt and presses Enter as chosen by --enter;
  5. waits for the file and the final message, then quits codex with Ctrl+C
     twice and prints timings, the OSC 7501 markers seen and the screen text.

--enter separate   the prompt in one write, then "\\r" as its own write
                   after --enter-delay seconds (default 0.3; codex treats
                   Enter within ~120 ms of a fast burst as a newline)
--enter bracketed  ESC[200~ prompt ESC[201~ then "\\r" right away
--enter typed      one character per write, 20 ms apart, then "\\r"

The codex binary: --codex, else $CODEX_BIN, else `codex` on PATH (the npm
shim works too, but the native binary under node_modules/@openai/
codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex starts faster).
"""

import argparse
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FINAL = "All done: created the file."
PROMPT = "please create made-by-codex.txt"
MARKER_RE = re.compile(rb"\x1b\]7501;([^\x07\x1b]*)(?:\x07|\x1b\\)")
OSC_RE = re.compile(rb"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
CUP_RE = re.compile(rb"\x1b\[[0-9;]*[Hf]")
CSI_RE = re.compile(rb"\x1b\[[0-9;?<>=!]*[ -/]*[@-~]")
ESC_RE = re.compile(rb"\x1b[@-Z\\-_=>78()]")

CONFIG = """\
model = "mock-model"
model_provider = "mock"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false

[model_providers.mock]
name = "Mock"
base_url = "http://127.0.0.1:{port}/v1"
wire_api = "responses"
requires_openai_auth = false
request_max_retries = 0
stream_max_retries = 0

[projects."{repo}"]
trust_level = "trusted"

[features]
plugins = false
apps = false
remote_plugin = false
tool_suggest = false
daemon_auto_start = false

[analytics]
enabled = false

[feedback]
enabled = false

[notice]
hide_full_access_warning = true

[tui]
show_tooltips = false
screen_reader_detection_done = true
"""


def screen_text(data: bytes) -> str:
    """Terminal output as searchable text: cursor moves become spaces, other
    escapes go, runs of whitespace collapse to one space."""
    data = OSC_RE.sub(b"", data)
    data = CUP_RE.sub(b" ", data)
    data = CSI_RE.sub(b"", data)
    data = ESC_RE.sub(b"", data)
    text = data.decode("utf-8", "replace")
    return re.sub(r"\s+", " ", text)


class Codex:
    """codex in a pty; a thread reads everything it prints."""

    def __init__(self, argv, cwd, env, capture_path, rows=40, cols=120):
        self.t0 = time.monotonic()
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.markers = []  # (seconds since start, marker text)
        self.first_output = None
        self.capture = open(capture_path, "wb")
        pid, fd = pty.fork()
        if pid == 0:  # child: session leader with the pty as controlling tty
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.chdir(cwd)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.exit_status = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def now(self):
        return time.monotonic() - self.t0

    def _read(self):
        while True:
            try:
                r, _, _ = select.select([self.fd], [], [], 0.2)
                if not r:
                    if self.exit_status is not None:
                        return
                    continue
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the child side is closed
                return
            if not data:
                return
            t = self.now()
            with self.lock:
                if self.first_output is None:
                    self.first_output = t
                start = max(0, len(self.buf) - 64)
                self.buf += data
                self.capture.write(data)
                self.capture.flush()
                for m in MARKER_RE.finditer(self.buf, start):
                    if m.end() > len(self.buf) - len(data):
                        self.markers.append((t, m.group(1).decode("utf-8", "replace")))

    def write(self, data: bytes):
        os.write(self.fd, data)

    def output(self) -> bytes:
        with self.lock:
            return bytes(self.buf)

    def last_state(self):
        """The state of the last OSC 7501 marker: idle, working, done or clear."""
        with self.lock:
            if not self.markers:
                return None
            text = self.markers[-1][1]
        return text.removeprefix("state=").split(":", 1)[0]

    def wait_for(self, predicate, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            if self.poll() is not None:
                return predicate()
            time.sleep(0.02)
        return False

    def poll(self):
        if self.exit_status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_status = status
        return self.exit_status

    def stop(self):
        """Ctrl+C twice (codex quits on the second), then SIGTERM, SIGKILL."""
        for step in ("ctrl-c", "ctrl-c", "term", "kill"):
            if self.poll() is not None:
                break
            if step == "ctrl-c":
                self.write(b"\x03")
                self.wait_for(lambda: self.poll() is not None, 1.5)
            elif step == "term":
                os.kill(self.pid, signal.SIGTERM)
                self.wait_for(lambda: self.poll() is not None, 3)
            else:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        self.reader.join(1)
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.capture.close()
        return step


def find_codex(arg):
    for cand in (arg, os.environ.get("CODEX_BIN"), shutil.which("codex")):
        if cand and os.access(cand, os.X_OK):
            return os.path.abspath(cand)
    sys.exit("try-codex: no codex binary: pass --codex PATH or set CODEX_BIN (see README.md)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codex", help="codex binary (default $CODEX_BIN or codex on PATH)")
    ap.add_argument("--enter", choices=["separate", "bracketed", "typed"], default="separate")
    ap.add_argument("--enter-delay", type=float, default=0.3,
                    help="seconds between the text and Enter for --enter separate")
    ap.add_argument("--dir", help="work dir (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()

    codex_bin = find_codex(args.codex)
    work = os.path.abspath(args.dir or tempfile.mkdtemp(prefix="try-codex."))
    repo, home = os.path.join(work, "repo"), os.path.join(work, "codex-home")
    os.makedirs(repo, exist_ok=True)
    os.makedirs(home, exist_ok=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", "init"], cwd=repo, check=True)

    script = [
        [{"shell": ["bash", "-lc", "echo hi > made-by-codex.txt"]}],
        [{"message": FINAL}],
    ]
    script_path, log_path = os.path.join(work, "script.json"), os.path.join(work, "requests.jsonl")
    with open(script_path, "w") as f:
        json.dump(script, f)
    mock = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "mock-responses.py"), "--port", "0",
         "--script", script_path, "--log", log_path],
        stdout=subprocess.PIPE, stderr=open(os.path.join(work, "mock.stderr"), "w"), text=True)
    port = int(mock.stdout.readline().split()[1])
    with open(os.path.join(home, "config.toml"), "w") as f:
        f.write(CONFIG.format(port=port, repo=repo))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_", "OPENAI_"))}
    env.update(CODEX_HOME=home, TERM="xterm-256color", LANG=env.get("LANG", "C.UTF-8"))
    env.pop("TMUX", None)
    target = os.path.join(repo, "made-by-codex.txt")
    ok = False
    codex = Codex([codex_bin, "--no-daemon"], repo, env, os.path.join(work, "capture.bin"))
    try:
        ready = codex.wait_for(lambda: codex.last_state() == "idle", args.timeout)
        t_ready = codex.now()
        # The first idle is followed at once by a short working/idle blip (startup work).
        codex.wait_for(lambda: len(codex.markers) >= 3, 1.0)
        codex.wait_for(lambda: codex.last_state() == "idle", 10)
        if not ready:
            print("codex never reported state=idle")
        t_typed = codex.now()
        text = PROMPT.encode()
        if args.enter == "separate":
            codex.write(text)
            time.sleep(args.enter_delay)
            codex.write(b"\r")
        elif args.enter == "bracketed":
            codex.write(b"\x1b[200~" + text + b"\x1b[201~")
            codex.write(b"\r")
        else:
            for ch in text:
                codex.write(bytes([ch]))
                time.sleep(0.02)
            codex.write(b"\r")
        t_enter = codex.now()
        made = codex.wait_for(lambda: os.path.exists(target), args.timeout)
        t_file = codex.now()
        saw_final = codex.wait_for(lambda: FINAL in screen_text(codex.output()), args.timeout)
        t_final = codex.now()
        codex.wait_for(lambda: codex.last_state() == "done", 10)
        t_done = codex.now()
        content = open(target).read() if os.path.exists(target) else None
        ok = made and content == "hi\n" and saw_final
    finally:
        how = codex.stop()
        mock.terminate()
        mock.wait(5)

    requests = []  # one entry per POST: "turn" (had tools) or "side" (e.g. the title request)
    if os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                body = json.loads(line)
                requests.append("turn" if isinstance(body, dict) and body.get("tools") else "side")
    print("codex:", codex_bin)
    print("work dir:", work)
    print("first output after %.2fs, first state=idle after %.2fs" % (codex.first_output or -1, t_ready))
    print("enter mode %s: typed at %.2fs, Enter at %.2fs" % (args.enter, t_typed, t_enter))
    print("file %s after %.2fs (%.2fs after Enter), content %r"
          % ("created" if made else "NOT created", t_file, t_file - t_enter, content))
    print("final message %s after %.2fs; state=done at %.2fs"
          % ("seen" if saw_final else "NOT seen", t_final, t_done))
    print("POSTs to the mock (turn = model turn with tools, side = e.g. title):", requests)
    print("OSC 7501 markers (seconds, text):")
    for t, m in codex.markers:
        print("  %6.2f  ESC]7501;%s ESC\\" % (t, m))
    print("codex stopped by:", how, "exit status:", codex.exit_status)
    tail = screen_text(codex.output())[-600:]
    print("screen text (tail):", tail)
    print("RESULT:", "ok" if ok else "FAILED")
    if not args.keep and ok and not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
