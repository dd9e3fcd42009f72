"""`epm-edge serve` (registered in epm_edge/cli.py). FastAPI and uvicorn are imported inside."""

from __future__ import annotations

import os
from pathlib import Path

import click

from epm_edge.cli_options import (backend_option, both_orders_option, cascade_option, lora_options, model_option,
                                  quant_option, record_tokens_option, threads_option, threshold_option)
from epm_edge.errors import EpmError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# A pair any working model tells apart, scored once before the port opens (doctor.py has the same check).
WARM_UP = ({"title": "Sony WH-1000XM5 Wireless Noise Cancelling Headphones Black", "brand": "Sony"},
           {"title": "Sony WH1000XM5 Noise Cancelling Wireless Headphones - Black", "price": "329.00"})


def _api_key(path: Path | None, host: str, insecure: bool) -> str | None:
    from epm_edge.console import err

    if path is not None:
        key = path.read_text(encoding="utf-8").strip()
        if not key:
            raise EpmError(f"{path}: the API key file is empty")
        return key
    if host not in LOOPBACK:
        if not insecure:
            raise EpmError(f"--host {host} serves other machines: pass --api-key-file FILE (clients send "
                           "'Authorization: Bearer <key>'), or --insecure to serve without one")
        err.print(f"[yellow]warning: serving {host} without an API key: anyone who reaches the port can use it[/]")
    return None


@click.command("serve")
@model_option()
@lora_options
@quant_option
@backend_option
@threads_option()
@both_orders_option
@cascade_option
@click.option("--catalog", type=click.Path(path_type=Path), default=None,
              help="CSV catalog that /v1/match searches, blocked as `match` does; it is also the corpus the "
                   "feature stage needs (without it the LLM scores every pair).")
@click.option("--id-col", default=None, help="Id column of --catalog (default: auto-detect).")
@click.option("--columns", default=None, help="Comma-separated attribute columns of --catalog (default: all).")
@record_tokens_option
@click.option("--top-k", type=click.IntRange(min=1), default=20, show_default=True,
              help="Catalog candidates /v1/match scores per record.")
@threshold_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--api-key-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="File holding the bearer token clients must send (required for a non-loopback --host).")
@click.option("--insecure", is_flag=True, help="Serve a non-loopback --host without an API key.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Pairs per scoring batch (pairs of concurrent requests are scored together).")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="How long a batch waits for more requests before it is scored.")
@click.option("--max-queue", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Pairs that may wait; a request beyond that gets 503 with Retry-After.")
@click.option("--max-pairs", type=click.IntRange(min=1), default=256, show_default=True,
              help="Pairs per request (more: 413).")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True,
              help="Request body size (more: 413).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a request may wait for its scores (more: 504).")
def serve(model_path, lora, lora_scale, quant, backend, threads, both_orders, cascade_mode, catalog, id_col, columns,
          record_tokens, top_k, threshold, host, port, api_key_file, insecure, max_batch, max_wait_ms, max_queue,
          max_pairs, max_body_bytes, timeout):
    """Match over HTTP: POST /v1/score and /v1/match, probes, Prometheus metrics, OpenAPI at /docs."""
    try:
        import uvicorn

        from epm_edge.serve.app import Limits, Metrics, create_app
    except ModuleNotFoundError as e:
        raise EpmError(f"serve needs the serve extra ({e.name} is missing): pip install 'epm-edge[serve]'") from None
    from epm_edge.console import err
    from epm_edge.resolve import feature_stage, open_scorer
    from epm_edge.serve.batching import Batcher
    from epm_edge.serve.engine import Engine

    key = _api_key(api_key_file, host, insecure)
    records = None
    if catalog is not None:
        from epm_edge.data import read_catalog
        from epm_edge.match.run import drop_empty_records

        cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        records, empty = drop_empty_records(read_catalog(catalog, id_col=id_col, columns=cols), record_tokens)
        if empty:
            err.print(f"[yellow]{catalog}: {len(empty)} record(s) with no attribute text are left out[/]")
    stage, both_orders = feature_stage(cascade_mode, model_path, both_orders)
    if stage is not None and not hasattr(stage, "settings"):
        raise click.UsageError("--cascade features-only is for eval: serve needs a cascade dir, auto or off")
    if stage is not None and records is None:
        err.print("[yellow]the feature stage fits its TF-IDF on a catalog: without --catalog the LLM scores "
                  "every pair[/]")
        stage = None
    path, scorer = open_scorer(model_path, backend, threads, max_batch, quant, both_orders, lora, lora_scale)
    stored = stage.cut(scorer.threshold) if stage is not None else scorer.threshold
    thr = threshold if threshold is not None else stored if stored is not None else 0.5
    engine = Engine(scorer, thr, record_tokens, stage, records, top_k)
    engine.score([WARM_UP], [False])  # a model that cannot score fails here, before the port opens
    metrics = Metrics()
    batcher = Batcher(engine, max_batch, max_wait_ms / 1000, max_queue, on_batch=metrics.batch)
    model = f"{path} + LoRA {lora} (scale {lora_scale:g})" if lora else str(path)
    app = create_app(engine, batcher, Limits(max_pairs, max_body_bytes, timeout), metrics, model, key)
    err.print(f"model: {model} ({scorer.name}{', both orders' if both_orders else ''}), threshold {thr:.3f}"
              + (f"; feature stage: {stage.path}" if stage is not None else "")
              + (f"; catalog: {catalog} ({len(records)} records)" if records is not None else ""))
    err.print(f"serving http://{host}:{port} (OpenAPI: /docs); Ctrl-C or SIGTERM finishes the requests in flight, "
              "then stops")
    verbose = bool(os.environ.get("EPM_EDGE_VERBOSE"))
    try:
        uvicorn.run(app, host=host, port=port, log_level="info" if verbose else "warning", access_log=verbose,
                    timeout_graceful_shutdown=int(timeout) + 5)
    finally:
        scorer.close()
