"""`epm-edge serve`: matching over HTTP (FastAPI + uvicorn, the `[serve]` extra).

engine.py scores record pairs as `match` does; batching.py gathers the pairs of concurrent
requests into one scoring call on a single model thread; app.py is the HTTP API, its limits and
metrics; cli.py starts it.
"""
