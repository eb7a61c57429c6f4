"""Settings for the unit tests: one process, the in-memory channel layer, fixed
values that no variable of the caller's environment can change."""

import os

if not os.environ.get("DJANGO_SECRET_KEY"):
    os.environ["DJANGO_SECRET_KEY"] = "unit-tests-only"

from chatsite.settings import *  # noqa: E402, F403

CHAT_REPLICA_ID = "unit-test"
CHAT_CHANNEL_LAYER = "memory"
CHAT_MAX_MESSAGE_BYTES = 4096
CHANNEL_LAYERS = {"default": {"BACKEND": "chat.channel_layer.MemoryChannelLayer"}}
