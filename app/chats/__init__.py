"""Chats and their messages, kept in SQLite; import and export of other apps' chat files."""
