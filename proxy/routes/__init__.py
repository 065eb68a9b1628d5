"""Thin HTTP adapters: parse, call the gateway or a query, shape the answer."""
