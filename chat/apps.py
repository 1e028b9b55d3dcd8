from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self) -> None:
        # Registers the OpenAPI description of the key authentication.
        from chat.keys import schema  # noqa: F401
