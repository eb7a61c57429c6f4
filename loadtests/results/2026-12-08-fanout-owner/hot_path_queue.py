"""The queue path: ChatConsumer.chat_message for messages taken from its inbox, in order
(each the next id), sent through a no-op ASGI send. python queue_bench.py old|new N"""

import asyncio
import os
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.testing_settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench")
import django  # noqa: E402

django.setup()

from chat import protocol  # noqa: E402
from chat.consumers import ChatConsumer  # noqa: E402

VARIANT, MESSAGES = sys.argv[1], int(sys.argv[2])


async def main():
    sent = []

    async def base_send(message):
        sent.append(1)

    consumer = ChatConsumer()
    consumer.scope = {"extensions": {}}
    consumer.base_send = base_send
    if VARIANT == "old":
        consumer.cursor.epoch = "e1"
    else:
        from chat.fanout import FanOut

        consumer.subscription = FanOut(lambda data: {}).subscribe("specific.a", "g", None)
        consumer.subscription.cursor.epoch = "e1"
    head, middle, tail = protocol.chat_frame_parts("x" * 100, "Ada", "chat-1", time.time())
    events = [
        {"type": "chat.message", "frame": f"{head}{n}{middle}e1{tail}", "id": n, "epoch": "e1",
         "sent_at": time.time()}
        for n in range(1, MESSAGES + 1)
    ]  # fmt: skip
    started = time.process_time()
    for event in events:
        await consumer.dispatch(event)
    spent = time.process_time() - started
    print(f"{VARIANT}: {spent / max(MESSAGES, 1) * 1e6:.3f} us per message, sent {len(sent)}")


asyncio.run(main())
