from channels.layers import get_channel_layer
from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from . import metrics, redis_connections
from .channel_layer import ChatLayer, RoomLayer
from .publish import TutorialMessages
from .replica import Replica


class ChatConfig(AppConfig):
    name = "chat"
    replica: Replica

    def ready(self) -> None:
        channel_layer: RoomLayer = get_channel_layer()
        if not isinstance(channel_layer, ChatLayer):
            raise ImproperlyConfigured(
                "CHANNEL_LAYERS['default'] must be one of chat.channel_layer's layers,"
                f" not {type(channel_layer).__name__}"
            )
        channel_layer.check_internals()  # fail at start-up, not on the first message
        redis_connections.check_internals()
        self.replica = Replica.from_settings(channel_layer)
        # The tutorial's group_send to a room is published like any message.
        channel_layer.intercept_group_sends_with(TutorialMessages())
        metrics.watch_resources(self.replica.resources)
        metrics.describe_replica(
            settings.CHAT_REPLICA_ID, settings.CHAT_CONSUMER, settings.CHAT_CHANNEL_LAYER
        )
        metrics.connections_limit.set(settings.CHAT_MAX_CONNECTIONS)
