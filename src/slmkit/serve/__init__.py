"""`slm serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over one continuous-batching engine.

- `worker.py`: the engine thread (generate/batching.py's ContinuousBatcher) and its bounded queue;
- `schemas.py`: the request bodies, validated before anything reaches the engine;
- `app.py`: the endpoints (/v1/models, /v1/completions, /v1/chat/completions, /health, /metrics),
  OpenAI-style errors, the API key, body limits and Prometheus metrics.
"""
