"""The Textual app: app.py runs the screens (screens/) as modes; state.py is what they share."""
