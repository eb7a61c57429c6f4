from channels.layers import get_channel_layer
from django.apps import AppConfig
from django.conf import settings

from . import metrics, redis_connections
from .channel_layer import ChatChannelLayer
from .replica import Replica


class ChatConfig(AppConfig):
    name = "chat"

    def ready(self):
        channel_layer = get_channel_layer()
        if isinstance(channel_layer, ChatChannelLayer):
            channel_layer.check_internals()  # fail at start-up, not on the first message
        redis_connections.check_internals()
        self.replica = Replica.from_settings(channel_layer)
        metrics.watch_resources(self.replica.resources)
        metrics.describe_replica(
            settings.CHAT_REPLICA_ID, settings.CHAT_CONSUMER, settings.CHAT_CHANNEL_LAYER
        )
        metrics.connections_limit.set(settings.CHAT_MAX_CONNECTIONS)
