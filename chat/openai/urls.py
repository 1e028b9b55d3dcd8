from django.urls import path

from chat.openai import conversations_views, responses_views, views

# OpenAI's paths, under /v1/: clients set their base URL to <server>/v1.
urlpatterns = [
    path("chat/completions", views.ChatCompletionsView.as_view(), name="openai-chat-completions"),
    path("models", views.ModelListView.as_view(), name="openai-models"),
    path("models/<path:model>", views.ModelDetailView.as_view(), name="openai-model"),
    path("responses", responses_views.ResponsesView.as_view(), name="openai-responses"),
    path("responses/<str:response_id>", responses_views.ResponseDetailView.as_view(), name="openai-response"),
    path("responses/<str:response_id>/input_items", responses_views.ResponseInputItemsView.as_view(),
         name="openai-response-input-items"),
    path("conversations", conversations_views.ConversationListView.as_view(), name="openai-conversations"),
    path("conversations/<str:conversation_id>", conversations_views.ConversationDetailView.as_view(),
         name="openai-conversation"),
    path("conversations/<str:conversation_id>/items", conversations_views.ConversationItemsView.as_view(),
         name="openai-conversation-items"),
    path("conversations/<str:conversation_id>/items/<str:item_id>", conversations_views.ConversationItemView.as_view(),
         name="openai-conversation-item"),
]
