"""`manage.py prune_idempotency_keys`: delete Idempotency-Keys older than 24 hours (run it daily)."""

from typing import Any

from django.core.management.base import BaseCommand

from chat.api.idempotency import idempotency_prune


class Command(BaseCommand):
    help = "Delete Idempotency-Keys (and the responses stored under them) older than 24 hours."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"Deleted {idempotency_prune()} idempotency key(s) older than 24 hours.")
