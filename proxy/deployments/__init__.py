"""Models deployed through the API (POST /api/v1/deploy): started, watched, stopped, restored."""
