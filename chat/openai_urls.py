from django.urls import path

from chat import openai_api

# OpenAI's paths, under /v1/: clients set their base URL to <server>/v1.
urlpatterns = [
    path("chat/completions", openai_api.ChatCompletionsView.as_view(), name="openai-chat-completions"),
    path("models", openai_api.ModelListView.as_view(), name="openai-models"),
    path("models/<path:model>", openai_api.ModelDetailView.as_view(), name="openai-model"),
]
