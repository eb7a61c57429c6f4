"""The floor server (loadtests/floor_server.py) as a process on a free port, stopped by
its PID: what the benchmarks measure the chat against."""

import subprocess
import sys

from .cluster import HOST, free_port_block
from .paths import ROOT

FLOOR_SERVER = ROOT / "loadtests" / "floor_server.py"


class FloorServer:
    """`with FloorServer() as floor:` floor.ws_url(room), floor.pid."""

    def __init__(self, *arguments):
        self.arguments = [str(argument) for argument in arguments]
        self.port = self.process = None

    def __enter__(self):
        self.port = free_port_block(1)
        self.process = subprocess.Popen(
            [sys.executable, FLOOR_SERVER, "--port", str(self.port), *self.arguments],
            stdout=subprocess.PIPE,
            text=True,
        )
        # It prints its address once it listens.
        if "floor server" not in self.process.stdout.readline():
            self.stop()
            raise RuntimeError(f"the floor server did not start (exit {self.process.returncode})")
        return self

    def __exit__(self, *_):
        self.stop()

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process.stdout.close()

    @property
    def pid(self):
        return self.process.pid

    @property
    def url(self):
        return f"http://{HOST}:{self.port}"

    def ws_url(self, room):
        return f"ws://{HOST}:{self.port}/ws/chat/{room}/"
