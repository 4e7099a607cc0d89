"""The web server: OpenAI-compatible API, workers, and the chat page."""
