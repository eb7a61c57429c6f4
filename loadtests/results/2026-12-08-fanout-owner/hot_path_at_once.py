"""The replica's hot path, in one process: a room's message as channels_redis' pub/sub
reader hands it over (ShardConnection._receive_message), fanned out to MEMBERS local
members and written to their sockets (real Twisted connections over socket pairs).
Runs the code of whichever tree is on sys.path; OLD/NEW set up their own members.

    python fanout_bench.py old|new MESSAGES
"""

import asyncio
import os
import socket
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.testing_settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench")
import django  # noqa: E402

django.setup()

import msgpack  # noqa: E402
from autobahn.twisted.websocket import WebSocketServerFactory  # noqa: E402
from twisted.internet import reactor, tcp  # noqa: E402

import chatsite.serve as serve  # noqa: E402
from chat import protocol as chat_protocol  # noqa: E402

VARIANT, MESSAGES = sys.argv[1], int(sys.argv[2])
MEMBERS = 10
EPOCH = "e1"


def socket_protocol(factory):
    mine, peer = socket.socketpair()
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    peer.setblocking(False)
    proto = serve.ChatWebSocketProtocol()
    proto.state = serve.WebSocketProtocol.STATE_OPEN
    proto.factory = factory
    proto._perMessageCompress = None
    proto.transport = tcp.Connection(mine, proto, reactor)
    proto.transport.connected = True
    return proto, peer


async def main():
    factory = WebSocketServerFactory()
    names = [f"specific.m{n}" for n in range(MEMBERS)]
    peers = []
    if VARIANT == "old":
        from chat.channel_layer import BoundedChannelQueue, ChatChannelLayer
        from chat.consumers import ChatConsumer
        from chat.room import WRITE_FLOW

        layer = ChatChannelLayer(hosts=["redis://127.0.0.1:1/0"])
        loop_layer = layer._get_layer()
        group_channel = layer.group_channel("chat_bench")
        loop_layer.attached[group_channel] = {}
        for name in names:
            proto, peer = socket_protocol(factory)
            peers.append(peer)
            consumer = ChatConsumer()
            consumer.scope = {"extensions": {WRITE_FLOW: proto}}
            inbox = BoundedChannelQueue(1 << 30, b"overflow")
            consumer.inbox = inbox
            consumer.cursor.epoch = EPOCH
            consumer.live = True
            loop_layer.channels[name] = inbox
            loop_layer.attached[group_channel][name] = consumer
    else:
        from chat.channel_layer import BoundedChannelQueue, PubSubChannelLayer
        from chat.fanout import FanOut

        layer = PubSubChannelLayer(hosts=["redis://127.0.0.1:1/0"])
        loop_layer = layer._get_layer()
        group_channel = layer.group_channel("chat_bench")
        fan_out = FanOut(layer.decode)
        layer.hand_messages_to(fan_out)
        for name in names:
            proto, peer = socket_protocol(factory)
            peers.append(peer)
            subscription = fan_out.subscribe(name, group_channel, proto.flow)
            subscription.cursor.epoch = EPOCH
            fan_out.go_live(subscription)
            loop_layer.channels[name] = BoundedChannelQueue(1 << 30, b"overflow")
    loop_layer.groups[group_channel] = set(names)
    shard = loop_layer._shards[0]
    channel = group_channel.encode()
    head, middle, tail = chat_protocol.chat_frame_parts("x" * 100, "Ada", "chat-1", time.time())
    payloads = [
        msgpack.packb(
            {
                "type": "chat.message",
                "frame": f"{head}{n}{middle}{EPOCH}{tail}",
                "id": n,
                "epoch": EPOCH,
                "sent_at": time.time(),
            }
        )
        for n in range(1, MESSAGES + 1)
    ]
    started = time.process_time()
    for number, data in enumerate(payloads, 1):
        shard._receive_message({"channel": channel, "data": data})
        if number % 20 == 0:
            for peer in peers:
                try:
                    while peer.recv(1 << 20):
                        pass
                except BlockingIOError:
                    pass
    spent = time.process_time() - started
    queued = sum(queue.qsize() for queue in loop_layer.channels.values())
    print(
        f"{VARIANT}: {spent / (MESSAGES * MEMBERS) * 1e6:.3f} us CPU per delivery, queued {queued}"
    )


asyncio.run(main())
