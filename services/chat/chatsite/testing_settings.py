"""Settings for the unit tests: one process, in-memory channel layer."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "unit-tests-only")
os.environ.setdefault("CHAT_CHANNEL_LAYER", "memory")
os.environ.setdefault("CHAT_REPLICA_ID", "unit-test")

from chatsite.settings import *  # noqa: E402, F403
