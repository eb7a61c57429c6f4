#!/usr/bin/env python3
"""A TCP relay that delays what it forwards: the local cluster's slow link to Redis
(CLUSTER_REDIS_DELAY_MS; network.py says why not netem).

    relay.py --listen 10.31.144.2:6380 --to 127.0.0.1:6380 --delay-ms 50

Each direction of each connection forwards its chunks in order, each `delay` after
it arrived. What waits is bounded (MAX_CHUNKS per direction): past it the relay
stops reading that side, so TCP's flow control slows the sender down.
"""

import argparse
import asyncio
import contextlib
import signal

CHUNK_BYTES = 65536
MAX_CHUNKS = 1024
CONNECT_TIMEOUT_S = 5


async def forward(reader, writer, delay):
    """Copies `reader` to `writer`, each chunk `delay` seconds after it was read, in
    order; ends the writer's side when the reader ends."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue(MAX_CHUNKS)

    async def read():
        try:
            while chunk := await reader.read(CHUNK_BYTES):
                await queue.put((loop.time() + delay, chunk))
        finally:
            await queue.put((loop.time() + delay, b""))

    async def write():
        while True:
            due, chunk = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    reading = loop.create_task(read())
    try:
        await write()
    finally:
        reading.cancel()


async def relay_connection(client_reader, client_writer, upstream, delay):
    try:
        server_reader, server_writer = await asyncio.wait_for(
            asyncio.open_connection(*upstream), CONNECT_TIMEOUT_S
        )
    except (OSError, TimeoutError):
        client_writer.close()
        return
    directions = [
        asyncio.ensure_future(forward(client_reader, server_writer, delay)),
        asyncio.ensure_future(forward(server_reader, client_writer, delay)),
    ]
    try:
        # One side failing (a reset) ends both; a half-close waits for the other side.
        done, pending = await asyncio.wait(directions, return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
    finally:
        for writer in (client_writer, server_writer):
            writer.close()
        for task in directions:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task


async def serve(listen, upstream, delay, started=None):
    """Relays connections to `listen` (host, port) to `upstream` until cancelled."""
    server = await asyncio.start_server(
        lambda r, w: relay_connection(r, w, upstream, delay), *listen, reuse_address=True
    )
    if started is not None:
        started.set_result(server.sockets[0].getsockname()[:2])
    async with server:
        await server.serve_forever()


def address(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main_async(args):
    loop = asyncio.get_running_loop()
    task = loop.create_task(serve(args.listen, args.to, args.delay_ms / 1000))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=address, required=True, help="HOST:PORT")
    parser.add_argument("--to", type=address, required=True, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, required=True)
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
