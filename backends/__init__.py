"""Adapters from Keystile's OpenAI-shaped requests to models. Knows nothing of HTTP serving or keys."""
