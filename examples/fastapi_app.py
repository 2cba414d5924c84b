"""A small in-process service: FastAPI + ``psvit.runtime`` (``Runtime`` + ``Batcher``), no Triton.

The path for small services: one process, the micro-batcher groups concurrent requests into one
``Runtime.infer`` call. For a fleet (many GPUs, many replicas), use Triton (``psvit-export serve`` on one
machine, ``psvit-export triton`` for a stock server).

Run it (needs ``pip install 'psvit-deploy[examples]'``)::

    PSVIT_ARTIFACT=model.onnx uvicorn examples.fastapi_app:app --port 8080
    curl --data-binary @cat.png -H 'Content-Type: image/png' localhost:8080/v1/predict

Endpoints: ``POST /v1/predict`` (body: PNG/JPEG bytes; ``?topk=5``) -> the top-k classes;
``GET /healthz``. A body that is not an image answers 400, a full queue 503 with ``Retry-After``.
"""
from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from psvit.errors import DataError
from psvit.preprocessing import decode_image
from psvit.runtime import Batcher, QueueFullError, load
from psvit.runtime.predict import top_k


def create_app(artifact: str, *, max_batch: int = 32, max_delay_ms: float = 2.0, max_queue: int = 256,
               **load_options: Any) -> FastAPI:
    """The service for ``artifact`` (anything :func:`psvit.runtime.load` takes, with recorded preprocessing)."""
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        rt = load(artifact, **load_options)
        batcher = Batcher(rt, max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue)
        state.update(rt=rt, batcher=batcher)
        try:
            yield
        finally:
            batcher.close()  # answers what is queued, then stops
            rt.close()

    app = FastAPI(title="psvit", lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": state["rt"].name, "batch_sizes": dict(state["batcher"].batch_sizes)}

    @app.post("/v1/predict")
    async def predict(request: Request, topk: int = Query(5, ge=1, le=1000)) -> Any:
        rt, batcher = state["rt"], state["batcher"]
        body = await request.body()
        try:  # decoding and resizing are CPU work: off the event loop
            x = await asyncio.to_thread(lambda: rt.preprocess_images(decode_image(body))[0])  # (C, H, W)
            logits = await batcher.asubmit(x)  # (classes,), batched with concurrent requests
        except DataError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except QueueFullError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})
        (preds,) = top_k(logits[None], topk, rt.class_names)
        return {"predictions": [{"index": p.index, "label": p.name, "probability": p.probability} for p in preds]}

    return app


if "PSVIT_ARTIFACT" in os.environ:  # `uvicorn examples.fastapi_app:app`
    app = create_app(os.environ["PSVIT_ARTIFACT"])

if __name__ == "__main__":
    import sys

    import uvicorn

    uvicorn.run(create_app(sys.argv[1] if len(sys.argv) > 1 else "demo"), host="127.0.0.1", port=8080)
