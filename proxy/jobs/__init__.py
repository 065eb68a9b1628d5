"""Async jobs (the /run, /status dialect, proxy/dialects/jobs.py): a database queue and a bounded runner."""
