from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from . import protocol

# What the pages' scripts (static/chat/*.js) need of the protocol, its name rules
# included, put in the page as JSON (json_script), so that the scripts repeat none of it.
PAGE_PROTOCOL = {
    "SUBPROTOCOL": protocol.SUBPROTOCOL,
    "CLOSE_SERVICE_RESTART": protocol.CLOSE_SERVICE_RESTART,
    "CLOSE_INVALID_ROOM": protocol.CLOSE_INVALID_ROOM,
    "GAP_TRIMMED": protocol.GAP_TRIMMED,
    "GAP_RESET": protocol.GAP_RESET,
    "RATE_LIMITED": protocol.RATE_LIMITED,
    "UNAVAILABLE": protocol.UNAVAILABLE,
    "ROOM_NAME_PATTERN": protocol.ROOM_NAME_PATTERN,
    "ROOM_NAME_RULE": protocol.ROOM_NAME_RULE,
    "NAME_MAX_LENGTH": protocol.NAME_MAX_LENGTH,
}


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/index.html", {"protocol": PAGE_PROTOCOL})


def room(request: HttpRequest, room_name: str) -> HttpResponse:
    if protocol.room_group_name(room_name) is None:
        context = {"room_name": room_name, "rule": protocol.ROOM_NAME_RULE}
        return render(request, "chat/invalid_room.html", context, status=404)
    return render(
        request,
        "chat/room.html",
        {"room_name": room_name, "replica": settings.CHAT_REPLICA_ID, "protocol": PAGE_PROTOCOL},
    )
