from django.conf import settings
from django.shortcuts import render

from . import protocol


def index(request):
    return render(request, "chat/index.html")


def room(request, room_name):
    if protocol.room_group_name(room_name) is None:
        context = {"room_name": room_name, "rule": protocol.ROOM_NAME_RULE}
        return render(request, "chat/invalid_room.html", context, status=404)
    return render(
        request,
        "chat/room.html",
        {"room_name": room_name, "replica": settings.CHAT_REPLICA_ID},
    )
