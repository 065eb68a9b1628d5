"""SQLAlchemy 2 (async): models, the engine, and query functions taking a session."""
