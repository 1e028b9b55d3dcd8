from django.urls import path

from chat.openai import views

# OpenAI's paths, under /v1/: clients set their base URL to <server>/v1.
urlpatterns = [
    path("chat/completions", views.ChatCompletionsView.as_view(), name="openai-chat-completions"),
    path("models", views.ModelListView.as_view(), name="openai-models"),
    path("models/<path:model>", views.ModelDetailView.as_view(), name="openai-model"),
]
