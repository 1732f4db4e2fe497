"""The Textual chat app (preview: the chat screen; characters, models, settings and chats screens to come)."""
