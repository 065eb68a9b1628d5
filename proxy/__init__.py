"""Keystile: the gateway (FastAPI). The only package that knows HTTP."""
