"""An event loop on a daemon thread of its own, started when first asked for."""

import asyncio
import threading


class LoopThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def running_loop(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self.loop is None or self.loop.is_closed():
                self.loop = asyncio.new_event_loop()
                threading.Thread(target=self.loop.run_forever, name=self.name, daemon=True).start()
            return self.loop
