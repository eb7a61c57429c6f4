from typing import Any

from django.conf import settings
from django.urls import re_path

from .consumers import ChatConsumer
from .sync_consumers import SyncChatConsumer

# Any segment matches, so that a bad room name is answered by the consumer
# with a documented close code rather than refused without a reason.
ROOM_PATH = r"^ws/chat/(?P<room_name>[^/]+)/$"

CONSUMERS: dict[str, Any] = {"async": ChatConsumer, "sync": SyncChatConsumer}

websocket_urlpatterns = [
    re_path(ROOM_PATH, CONSUMERS[settings.CHAT_CONSUMER].as_asgi()),
]
