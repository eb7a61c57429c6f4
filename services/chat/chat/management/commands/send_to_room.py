"""python manage.py send_to_room ROOM TEXT [--sender NAME] [--key KEY] [--json]

Publishes a message to a room as chat.publish.send_to_room does (docs/sending.md):
prints its id and epoch, and exits 1 with the reason if it was not published."""

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from chat.publish import SYSTEM_SENDER, PublishError, send_to_room


class Command(BaseCommand):
    help = "Publishes a message to a chat room: numbered, stored and sent to every member."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("room", help="the room's name, as in /chat/<room>/")
        parser.add_argument("text", help="the message")
        parser.add_argument("--sender", default=SYSTEM_SENDER, help="the name shown with it")
        parser.add_argument(
            "--key", help="idempotency key: run again with it, nothing is published twice"
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            published = send_to_room(
                options["room"], options["text"], sender=options["sender"], key=options["key"]
            )
        except PublishError as error:
            raise CommandError(f"not published ({error.code}): {error.detail}") from None
        if options["json"]:
            result = {
                "room": published.room,
                "id": published.id,
                "epoch": published.epoch,
                "duplicate": published.duplicate,
            }
            self.stdout.write(json.dumps(result))
            return
        again = " (already published with this key: nothing sent again)"
        self.stdout.write(
            f"published to {published.room}: id {published.id}, epoch {published.epoch}"
            + (again if published.duplicate else "")
        )
