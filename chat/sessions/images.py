"""Images of messages: stored once per key by their SHA-256, read back by hash."""

from django.db import IntegrityError, transaction
from django.db.models import TextField
from django.db.models.functions import Cast

from chat.exceptions import ImageNotFound
from chat.models import ApiKey, Message, StoredImage
from chat.sessions.content import ImageInput, data_url


def images_store(*, api_key_id: int, images: list[ImageInput]) -> None:
    """Store the data-URL images among `images` that the key has not stored yet (index
    chat_image_unique_per_key). An image sent again, in this session or another, costs one lookup."""
    wanted = {image.sha256: image for image in images if not image.url}
    if not wanted:
        return
    stored = set(
        StoredImage.objects.filter(api_key_id=api_key_id, sha256__in=list(wanted)).values_list("sha256", flat=True)
    )
    for sha256, image in wanted.items():
        if sha256 in stored:
            continue
        try:
            # A savepoint: the same image stored by another turn of the key a moment ago is no error.
            with transaction.atomic():
                StoredImage.objects.create(
                    api_key_id=api_key_id, sha256=sha256, media_type=image.media_type, data=image.data,
                    byte_size=len(image.data), width=image.width, height=image.height,
                )
        except IntegrityError:
            if not StoredImage.objects.filter(api_key_id=api_key_id, sha256=sha256).exists():
                raise


def images_forget_unused(*, api_key_id: int, hashes: set[str]) -> int:
    """Delete those of the key's images named that no message of its sessions refers to any more
    (after a session was deleted). Returns how many were deleted."""
    if not hashes:
        return 0
    still_used = {
        sha256 for sha256 in hashes
        if Message.objects.filter(session__api_key_id=api_key_id, parts__isnull=False)
        .annotate(parts_text=Cast("parts", TextField())).filter(parts_text__contains=sha256).exists()
    }
    deleted, _by_model = StoredImage.objects.filter(api_key_id=api_key_id, sha256__in=hashes - still_used).delete()
    return deleted


def image_data_urls(*, api_key_id: int, hashes: list[str]) -> dict[str, str]:
    """The data URL of each of the key's images named, by hash: how a stored image is sent upstream."""
    if not hashes:
        return {}
    rows = StoredImage.objects.filter(api_key_id=api_key_id, sha256__in=set(hashes)).values_list(
        "sha256", "media_type", "data"
    )
    return {sha256: data_url(media_type, bytes(data)) for sha256, media_type, data in rows}


def image_get(*, api_key: ApiKey, sha256: str) -> StoredImage:
    """One of the key's images. Another key's image is 'not found': a key must not learn which
    images other keys sent."""
    image = StoredImage.objects.filter(api_key=api_key, sha256=sha256).first()
    if image is None:
        raise ImageNotFound()
    return image
