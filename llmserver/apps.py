from django.apps import AppConfig


class LlmServerConfig(AppConfig):
    name = "llmserver"
    verbose_name = "LLM Server"

    def ready(self) -> None:
        from llmserver import checks  # noqa: F401  (registers the deployment check)
