"""Benchmark: what a long session with an image costs the database.

Runs two sessions of N turns (default 200) through POST /api/v1/chat, in process, with the offline
provider, on a fresh SQLite file: one whose first message carries a 50 KB PNG (noise, so that it
does not compress), one with the same text and no image. Prints the database file's size after
each, the stored images and their bytes, and the largest message row: the image is stored once,
however many turns replay it, and no message row holds it.

    .venv/bin/python -m bench.image_session                 # 200 turns
    .venv/bin/python -m bench.image_session --turns 1000
"""

import argparse
import base64
import io
import os
import random
import tempfile
import time
from pathlib import Path

IMAGE_SIDE = 128  # 128 x 128 RGB noise: a PNG of about 50 KB


def noise_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = random.Random(7).randbytes(IMAGE_SIDE * IMAGE_SIDE * 3)
    Image.frombytes("RGB", (IMAGE_SIDE, IMAGE_SIDE), pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def run_session(client, session_id: str, turns: int, image: bytes | None) -> float:
    started = time.perf_counter()
    for turn in range(turns):
        body = {"session_id": session_id, "user_message": f"Turn {turn}: what do you see?", "max_tokens": 50}
        if turn == 0 and image is not None:
            body["images"] = ["data:image/png;base64," + base64.b64encode(image).decode()]
        response = client.post("/api/v1/chat", body, format="json")
        assert response.status_code == 200, response.content
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="llmserver-image-bench-"))
    database = workdir / "bench.sqlite3"
    os.environ["DATABASE_URL"] = f"sqlite:///{database}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmserver.settings")
    # The offline model's window, large enough for the whole session: every turn replays the image.
    os.environ["LLM_CONTEXT_WINDOWS"] = "offline=1000000"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from rest_framework.test import APIClient

    from chat.keys.services import api_key_create
    from chat.models import Message, StoredImage

    call_command("migrate", verbosity=0)
    _key, raw_key = api_key_create(name="image bench", actor="bench")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    image = noise_png()

    def database_bytes() -> int:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return database.stat().st_size

    empty = database_bytes()
    plain_seconds = run_session(client, "plain", args.turns, None)
    after_plain = database_bytes()
    image_seconds = run_session(client, "with-image", args.turns, image)
    after_image = database_bytes()
    longest_row = max(len(m.content) + len(str(m.parts or "")) for m in Message.objects.all())
    print(f"image: {len(image):,} bytes PNG ({IMAGE_SIDE}x{IMAGE_SIDE}), sent in turn 1 of {args.turns}")
    print(f"database empty: {empty:,} bytes")
    print(f"{args.turns} turns without image: {after_plain - empty:,} bytes more ({plain_seconds:.1f} s)")
    print(f"{args.turns} turns with the image: {after_image - after_plain:,} bytes more ({image_seconds:.1f} s)")
    image_bytes = sum(image.byte_size for image in StoredImage.objects.all())
    print(f"stored images: {StoredImage.objects.count()} ({image_bytes:,} bytes)")
    print(f"largest message row (content + parts): {longest_row:,} characters")


if __name__ == "__main__":
    main()
