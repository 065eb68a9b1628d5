"""Who is calling: master key, virtual keys (from the in-process cache), JWTs."""
