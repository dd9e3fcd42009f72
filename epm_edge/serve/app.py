"""The HTTP API: JSON in and out, limits, bearer-token auth, Prometheus metrics, OpenAPI at /docs."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from typing import Union

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field

from epm_edge import __version__
from epm_edge.serve.batching import Batcher, QueueFull
from epm_edge.serve.engine import Engine, RequestError

# A record: attribute -> value. Numbers and booleans are read as their text; null as missing.
Record = dict[str, Union[str, int, float, bool, None]]


class Pair(BaseModel):
    a: Record
    b: Record


class ScoreRequest(BaseModel):
    pairs: list[Pair] = Field(min_length=1)
    explain: bool = Field(False, description="Add the model's rationale to matched pairs (slower).")


class MatchRequest(BaseModel):
    record: Record
    top_n: int = Field(5, ge=1, description="How many of the scored candidates to return, best first.")
    explain: bool = False


@dataclass
class Limits:
    max_pairs: int = 256  # per request
    max_body_bytes: int = 1 << 20
    timeout: float = 30.0  # seconds a request may wait for its scores


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("epm_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"],
                                registry=self.registry)
        self.pairs = Counter("epm_pairs", "Pairs scored, by endpoint and the stage that decided them",
                             ["endpoint", "stage"], registry=self.registry)
        self.latency = Histogram("epm_request_seconds", "Request latency", ["endpoint"], registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch_pairs = Histogram("epm_batch_pairs", "Pairs per scoring batch", registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_requests = Histogram("epm_batch_requests", "Requests per scoring batch", registry=self.registry,
                                        buckets=(1, 2, 4, 8, 16, 32))
        self.batch_seconds = Histogram("epm_batch_seconds", "Model time per scoring batch", registry=self.registry,
                                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.queue = Gauge("epm_queue_pairs", "Pairs waiting for a batch", registry=self.registry)

    def batch(self, n_pairs: int, n_requests: int, seconds: float) -> None:
        self.batch_pairs.observe(n_pairs)
        self.batch_requests.observe(n_requests)
        self.batch_seconds.observe(seconds)


class BodyLimit:
    """413 for a request body over `max_bytes`, by its Content-Length or as it streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        detail = f"request body over {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # FastAPI passes an HTTPException raised while reading the body on
                raise HTTPException(413, detail)
            return message

        await self.app(scope, counted, send)


def _as_text(record: Record) -> dict[str, str]:
    return {k: v if isinstance(v, str) else "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in record.items()}


def create_app(engine: Engine, batcher: Batcher, limits: Limits, metrics: Metrics, model: str,
               api_key: str | None = None) -> FastAPI:
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()  # after uvicorn has drained the requests in flight

    app = FastAPI(title="epm-edge", version=__version__, lifespan=lifespan,
                  description="Decide whether two e-commerce listings are the same product.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    def authorized(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        endpoint = request.url.path
        if endpoint in ("/v1/score", "/v1/match", "/healthz", "/readyz", "/metrics"):
            metrics.requests.labels(endpoint, str(response.status_code)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    async def scored(endpoint: str, pairs: list[tuple[dict, dict]], explain: bool) -> list[dict]:
        if len(pairs) > limits.max_pairs:
            raise HTTPException(413, f"{len(pairs)} pairs in one request; at most {limits.max_pairs}")
        try:
            engine.texts(pairs)  # a record with no text is this request's error, not its batch's
            metrics.queue.set(batcher.waiting + len(pairs))
            results = await asyncio.wait_for(batcher.score(pairs, explain), limits.timeout)
        except RequestError as e:
            raise HTTPException(422, str(e)) from None
        except QueueFull as e:
            raise HTTPException(503, f"busy: {e}", headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise HTTPException(504, f"no result within {limits.timeout:g} s") from None
        finally:
            metrics.queue.set(batcher.waiting)
        for r in results:
            metrics.pairs.labels(endpoint, r["stage"]).inc()
        return results

    @app.post("/v1/score", dependencies=[Depends(authorized)])
    async def score(body: ScoreRequest) -> dict:
        """P(match) of each pair, the decision at the model's threshold and the stage that decided."""
        pairs = [(_as_text(p.a), _as_text(p.b)) for p in body.pairs]
        return {"model": model, "threshold": engine.threshold,
                "results": await scored("/v1/score", pairs, body.explain)}

    @app.post("/v1/match", dependencies=[Depends(authorized)])
    async def match(body: MatchRequest) -> dict:
        """The record's best candidates in the catalog loaded at start (the blocking of `match`), scored."""
        record = _as_text(body.record)
        try:
            found = engine.candidates(record)
        except RequestError as e:
            raise HTTPException(422, str(e)) from None
        results = await scored("/v1/match", [(record, engine.catalog.records[b]) for b, _ in found], body.explain)
        ranked = sorted(({"id": b, **r} for (b, _), r in zip(found, results)), key=lambda r: -r["score"])
        return {"model": model, "threshold": engine.threshold, "candidates": len(found),
                "matches": ranked[:body.top_n]}

    @app.get("/healthz")
    async def healthz() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict:
        """The model is loaded, has scored a warm-up pair, and its thread takes requests."""
        if not batcher.running:
            raise HTTPException(503, "not ready")
        return {"status": "ready", "model": model, "threshold": engine.threshold,
                "feature_stage": engine.uses_features,
                "catalog_records": len(engine.catalog) if engine.catalog is not None else 0}

    @app.get("/metrics", dependencies=[Depends(authorized)])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
