"""The explorer's web app: the page, its static files, and a small JSON/PNG API over a :class:`Session`.

Example:
    >>> from starlette.testclient import TestClient                          # doctest: +SKIP
    >>> client = TestClient(create_app(Session()), base_url="http://127.0.0.1:8000")   # doctest: +SKIP
    >>> client.get("/api/unit", params={"model": "seed-cnn", "image": 0, "layer": "L6",
    ...                                 "x": 0, "y": 0, "c": 0}).json()["rect"]             # doctest: +SKIP
    [[0, 23], [0, 23]]

Safety: requests whose Host header is not localhost, 127.0.0.1 or [::1] (any port) are refused with 403
(DNS rebinding), and so are cross-origin POSTs; every response carries ``Content-Security-Policy:
default-src 'self'``; the page sends model keys and image indices, never paths; uploads are raw bytes, capped
before they are read. Bad input answers 400 with ``{"error": "<one sentence>"}`` and the server keeps serving.
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import gradsight

from ..errors import BadInputError, GradsightError
from . import render
from .session import AGREEMENT_TEXT, Session, UnitView
from .uploads import LOOPBACK_NAMES, MAX_UPLOAD_BYTES

STATIC = Path(__file__).parent / "static"
CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
log = logging.getLogger("gradsight.explorer")


def host_name(header: str) -> str:
    """'localhost:8000' -> 'localhost', '[::1]:80' -> '[::1]', lower-cased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class GuardMiddleware:
    """Refuses foreign Host headers (DNS rebinding) and cross-origin POSTs; adds the security headers."""

    def __init__(self, app, hosts: tuple[str, ...] = LOOPBACK_NAMES):
        self.app, self.hosts = app, tuple(h.lower() for h in hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = host_name(headers.get("host", ""))
        problem = None
        if host not in self.hosts:
            problem = (f"host {headers.get('host', '')!r}: expected one of {', '.join(self.hosts)} (any port), "
                       "got another name. The explorer only answers pages it served itself (DNS rebinding guard).")
        elif scope["method"] not in ("GET", "HEAD") and "origin" in headers:
            origin = headers["origin"].lower()
            scheme, _, rest = origin.partition("://")
            if scheme not in ("http", "https") or host_name(rest) not in self.hosts:
                problem = (f"origin {headers['origin']!r}: expected this explorer's own page, got another site. "
                           "Open the explorer's URL directly.")

        async def secured(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        if problem is not None:
            return await JSONResponse({"error": problem}, status_code=403)(scope, receive, secured)
        return await self.app(scope, receive, secured)


# -- request helpers ---------------------------------------------------------------------------------------------


def _param(request: Request, name: str, default=None) -> str:
    value = request.query_params.get(name)
    if value is None:
        if default is not None:
            return default
        raise BadInputError(f"query parameter {name!r}", expected="a value", got="nothing",
                            fix=f"add {name}=... to the request")
    return value


def _int(request: Request, name: str, default=None) -> int:
    text = _param(request, name, None if default is None else str(default))
    try:
        return int(text)
    except ValueError:
        raise BadInputError(f"query parameter {name!r}", expected="a whole number", got=repr(text[:40])) from None


def _float(request: Request, name: str) -> float:
    text = _param(request, name)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BadInputError(f"query parameter {name!r}", expected="a finite number", got=repr(text[:40]))
    return value


def _depth(request: Request) -> int | None:
    return None if request.query_params.get("depth") in (None, "") else _int(request, "depth")


def _unit(request: Request, session: Session, model: str, layer: str) -> tuple[int, int, int]:
    """(x, y, c) from x and y, or from an input pixel row/col (the unit centred nearest it)."""
    if "row" in request.query_params or "col" in request.query_params:
        x, y = session.unit_at(model, layer, (_float(request, "row"), _float(request, "col")))
    else:
        x, y = _int(request, "x"), _int(request, "y")
    return x, y, _int(request, "c", 0)


def _png(data: bytes, filename: str | None = None) -> Response:
    headers = {"cache-control": "no-store"}
    if filename:
        headers["content-disposition"] = f'attachment; filename="{filename}"'
    return Response(data, media_type="image/png", headers=headers)


def _npy(array: np.ndarray, filename: str) -> Response:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return Response(buffer.getvalue(), media_type="application/octet-stream",
                    headers={"cache-control": "no-store", "content-disposition": f'attachment; filename="{filename}"'})


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:60]


def _api(handler):
    """Run ``handler(request)`` in a worker thread; a GradsightError answers 400 with its one sentence, anything
    else 500 (logged with its traceback), and the server keeps serving either way."""

    async def endpoint(request: Request):
        try:
            result = await run_in_threadpool(handler, request)
        except GradsightError as err:
            return JSONResponse({"error": str(err)}, status_code=400, headers={"cache-control": "no-store"})
        except Exception as err:  # noqa: BLE001 - one clear message on the page, the traceback on the console
            log.exception("explorer request %s failed", request.url.path)
            return JSONResponse({"error": f"internal error ({type(err).__name__}: {err}); the explorer keeps "
                                          "running, details are on its console"}, status_code=500)
        if isinstance(result, Response):
            return result
        return JSONResponse(result, headers={"cache-control": "no-store"})

    return endpoint


# -- the app -------------------------------------------------------------------------------------------------------


def create_app(session: Session, *, hosts: tuple[str, ...] = LOOPBACK_NAMES) -> Starlette:
    """The ASGI app serving ``session``; ``hosts`` are the Host-header names it answers to (any port)."""

    def unit_query(request: Request) -> tuple[str, int, str, tuple[int, int, int]]:
        model, layer = _param(request, "model"), _param(request, "layer")
        image = _int(request, "image")
        session.image(image)
        return model, image, layer, _unit(request, session, model, layer)

    def unit_urls(view: UnitView) -> dict:
        query = (f"model={_quote(view.model)}&image={view.image}&layer={_quote(view.layer)}&x={view.unit[0]}"
                 f"&y={view.unit[1]}&c={view.unit[2]}")
        return {"png": f"/api/unit.png?{query}", "npy": f"/api/unit.npy?{query}",
                "export_png": f"/api/export.png?{query}", "export_json": f"/api/export.json?{query}"}

    def unit_json(view: UnitView, cached: bool) -> dict:
        field = session.layer(view.model, view.layer)
        magnitude = np.abs(view.gradient).sum(axis=-1)
        return {
            "model": view.model, "image": view.image, "layer": view.layer, "unit": list(view.unit),
            "grid": list(field.spatial_shape), "channels": int(field.channels), "value": view.value,
            "rect": [list(r) for r in view.rect],
            "unclipped": None if view.unclipped is None else [list(r) for r in view.unclipped],
            "centre": list(view.centre),
            "support": None if view.support is None else [list(r) for r in view.support],
            "agreement": view.agreement, "agreement_text": AGREEMENT_TEXT[view.agreement],
            "rf_size": list(field.size), "effective_stride": list(field.stride),
            "effective_padding": list(field.padding), "aligned": field.aligned, "cropped": view.cropped,
            "gradient_max": float(magnitude.max()), "gradient_nonzero": int(np.count_nonzero(magnitude)),
            "digest": view.digest, "ms": round(view.seconds * 1000, 2), "cached": cached, "urls": unit_urls(view),
        }

    def models(request: Request):
        return {"models": session.model_list(), "default": session.default_model,
                "version": gradsight.__version__}

    def images(request: Request):
        return {"images": session.image_list()}

    def layers(request: Request):
        return session.layer_table(_param(request, "model"), _depth(request))

    def input_json(request: Request):
        model, image = _param(request, "model"), _int(request, "image")
        prepared = session.prepared(model, image)
        return {"model": model, "image": image, "shape": list(prepared.array.shape), "how": prepared.how,
                "png": f"/api/input.png?model={_quote(model)}&image={image}"}

    def input_png(request: Request):
        return _png(render.png(session.prepared(_param(request, "model"), _int(request, "image")).display))

    def unit(request: Request):
        view, cached = session.unit(*unit_query(request))
        return unit_json(view, cached)

    def unit_png(request: Request):
        view, _ = session.unit(*unit_query(request))
        return _png(render.png(render.gradient_rgb(view.gradient)))

    def unit_npy(request: Request):
        view, _ = session.unit(*unit_query(request))
        x, y, c = view.unit
        return _npy(view.gradient, _safe_name(f"{view.model}_{view.layer}_{x}_{y}_{c}_gradient.npy"))

    def growth(request: Request):
        model, layer = _param(request, "model"), _param(request, "layer")
        point = (_float(request, "row"), _float(request, "col"))
        return {"model": model, "layer": layer, "point": list(point),
                "layers": session.growth(model, layer, point, _depth(request))}

    def predict(request: Request):
        model, image = _param(request, "model"), _int(request, "image")
        method = _param(request, "method", "gradient")
        result = session.saliency(model, image, method)
        query = f"model={_quote(model)}&image={image}&method={_quote(method)}"
        return {"model": model, "image": image, "method": method, "score": result.score,
                "options": _jsonable(result.options), "display": result.display, "target": int(result.targets[0]),
                "top5": [{"class": c, "name": name, "probability": p} for c, name, p in result.top_k(0, 5)],
                "png": f"/api/saliency.png?{query}", "npy": f"/api/saliency.npy?{query}"}

    def saliency_png(request: Request):
        result = session.saliency(_param(request, "model"), _int(request, "image"), _param(request, "method",
                                                                                            "gradient"))
        return _png(render.png(render.saliency_rgb(result.maps[0], result.display)))

    def saliency_npy(request: Request):
        model = _param(request, "model")
        result = session.saliency(model, _int(request, "image"), _param(request, "method", "gradient"))
        return _npy(result.maps[0], _safe_name(f"{model}_{result.method}.npy"))

    def export_numbers(request: Request) -> tuple[dict, UnitView]:
        model, image, layer, unit_ = unit_query(request)
        view, cached = session.unit(model, image, layer, unit_)
        entry = session.entry(model)
        table = session.layer_table(model)
        prepared = session.prepared(model, image)
        data = {"gradsight": gradsight.__version__, "model": entry.summary(),
                "image": session.image(image).summary(),
                "input": {"shape": list(prepared.array.shape), "how": prepared.how},
                "layer": session.report(model)[layer].as_dict(),
                "unit": {k: v for k, v in unit_json(view, cached).items() if k not in ("urls", "ms", "cached")},
                "table": table["layers"]}
        if entry.classifier:
            result = session.saliency(model, image, _param(request, "method", "gradient"))
            data["prediction"] = {"method": result.method, "options": _jsonable(result.options),
                                  "score": result.score, "target": int(result.targets[0]),
                                  "top5": [{"class": c, "name": n, "probability": p} for c, n, p in result.top_k(0, 5)]}
        return data, view

    def export_json(request: Request):
        data, view = export_numbers(request)
        x, y, c = view.unit
        name = _safe_name(f"{view.model}_{view.layer}_{x}_{y}_{c}.json")
        return Response(json.dumps(data, indent=2), media_type="application/json",
                        headers={"cache-control": "no-store", "content-disposition": f'attachment; filename="{name}"'})

    def export_png(request: Request):
        data, view = export_numbers(request)
        unit_ = data["unit"]
        (r0, r1), (c0, c1) = view.rect
        support = unit_["support"]
        measured = "none" if support is None else (f"rows {support[0][0]}..{support[0][1]}, "
                                                   f"cols {support[1][0]}..{support[1][1]}")
        lines = [f"gradsight explorer: {data['model']['label']}; image: {data['image']['label']}",
                 f"{view.layer}[x={view.unit[0]}, y={view.unit[1]}, c={view.unit[2]}] = {view.value:.6g}; "
                 f"analytic field rows {r0}..{r1}, cols {c0}..{c1} (RF {unit_['rf_size'][0]}, effective stride "
                 f"{unit_['effective_stride'][0]}, padding {unit_['effective_padding'][0]})",
                 f"measured support: {measured} - {unit_['agreement_text']}",
                 "cyan: analytic field (dashed: before clipping to the image); pink: measured support; gradient: "
                 "log scale over 6 decades, blue = exactly 0"]
        saliency = None
        if "prediction" in data:
            top = data["prediction"]["top5"][0]
            result = session.saliency(view.model, view.image, data["prediction"]["method"])
            lines.append(f"top-1: {top['class']} {top['name']} ({top['probability']:.3f}); right panel: "
                         f"{result.method} of class {int(result.targets[0])}")
            saliency = render.saliency_rgb(result.maps[0], result.display)
        margin = session.layer_table(view.model)["margin"]
        prepared = session.prepared(view.model, view.image)
        picture = render.export_png(prepared.display, view.gradient, view.rect, view.unclipped, view.support, lines,
                                    saliency, margin)
        x, y, c = view.unit
        return _png(picture, _safe_name(f"{view.model}_{view.layer}_{x}_{y}_{c}.png"))

    async def upload(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            return _too_large(int(declared))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_UPLOAD_BYTES:
                return _too_large(len(body))
        name = request.query_params.get("name", "upload")
        return await _api(lambda _: session.add_upload(bytes(body), name))(request)

    def index(request: Request):
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    def favicon(request: Request):
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    async def not_found(request: Request, exc):
        return JSONResponse({"error": f"{request.url.path}: expected one of the explorer's pages, got an unknown "
                                      "address. Open the explorer's URL."}, status_code=exc.status_code)

    routes = [
        Route("/", index), Route("/favicon.ico", favicon),
        Route("/api/models", _api(models)), Route("/api/images", _api(images)),
        Route("/api/upload", upload, methods=["POST"]),
        Route("/api/layers", _api(layers)), Route("/api/input", _api(input_json)),
        Route("/api/input.png", _api(input_png)),
        Route("/api/unit", _api(unit)), Route("/api/unit.png", _api(unit_png)), Route("/api/unit.npy", _api(unit_npy)),
        Route("/api/growth", _api(growth)), Route("/api/predict", _api(predict)),
        Route("/api/saliency.png", _api(saliency_png)), Route("/api/saliency.npy", _api(saliency_npy)),
        Route("/api/export.json", _api(export_json)), Route("/api/export.png", _api(export_png)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(debug=False, routes=routes, middleware=[Middleware(GuardMiddleware, hosts=hosts)],
                     exception_handlers={404: not_found, 405: not_found})


def _too_large(size: int) -> JSONResponse:
    error = BadInputError("upload", expected=f"at most {MAX_UPLOAD_BYTES // 2 ** 20} MiB",
                          got=f"{size:,} bytes or more", fix="downscale or recompress the photo")
    return JSONResponse({"error": str(error)}, status_code=413)


def _jsonable(options: dict) -> dict:
    return {k: (v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v)) for k, v in options.items()}


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")

