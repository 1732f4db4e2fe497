"""A chat in progress and what it is made from: shared by the command line and the full-screen app."""
