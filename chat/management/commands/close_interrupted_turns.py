"""`manage.py close_interrupted_turns`: close the turns whose process went away (the server does this
by itself every half lease period; this is for an operator who wants it now)."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from chat.turns.sweep import turns_interrupted_close


class Command(BaseCommand):
    help = (
        "Close the chat turns whose process went away mid-call (no heartbeat for CHAT_TURN_LEASE_SECONDS): "
        "their usage records become interrupted, their questions failed, their sessions free."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        closed = turns_interrupted_close()
        self.stdout.write(
            f"Closed {closed} interrupted turn(s) (no heartbeat for {settings.CHAT_TURN_LEASE_SECONDS:g} s)."
        )
