"""The Flask app of ``rcg serve``: :func:`make_app` wraps one pipeline (anything with ``describe``, ``__call__``,
``variations`` and ``interpolate`` like :class:`rcg.pipeline.RCGPipeline`) in the playground's page and JSON API.
Flask is imported when an app is made, so that ``import rcg.cli`` works without it."""
from __future__ import annotations

import io
import sys
import threading
import time
import traceback
from pathlib import Path

from .. import __version__
from .params import (DEFAULT_NUM, INTERP_NUM, BadRequest, class_label, data_url, decode_upload, limits, number,
                     png_bytes, resolved, settings)

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
ENDPOINTS = ("GET /api/info", "POST /api/sample", "GET /api/sample.png", "POST /api/variations",
             "POST /api/interpolate")


def flask_module():
    """The flask module, or a RuntimeError saying how to install it."""
    try:
        import flask
    except ImportError:
        raise RuntimeError("rcg serve needs Flask: pip install -e '.[serve]' (or pip install 'flask>=3')") from None
    return flask


class Model:
    """One pipeline behind a lock: every call waits for the one running (one request at a time per model)."""

    def __init__(self, pipe, max_num: int, max_upload_mb: float):
        self.pipe, self.lock = pipe, threading.Lock()
        self.info = {**pipe.describe(), "version": __version__}
        self.info["image_shape"] = list(self.info["image_shape"])
        self.info["can_sample"] = bool(self.info["has_rdm"] or self.info["cond"] != "rep")
        self.info["can_vary"] = self.info["cond"] == "rep"
        self.info["limits"] = limits(max_num, max_upload_mb)
        self.max_num = max_num

    def run(self, method: str, *args, **kw):
        """``pipe.method(*args, **kw)`` (``__call__`` for "sample") under the lock."""
        fn = self.pipe if method == "sample" else getattr(self.pipe, method)
        with self.lock:
            return fn(*args, **kw)

    def need(self, what: str) -> None:
        """BadRequest when this system cannot do ``what`` ("sample", "variations" or "interpolate")."""
        if what == "sample" and not self.info["can_sample"]:
            raise BadRequest("this system has no RDM, so it cannot sample unconditionally: serve it with --rdm RUN "
                             "(variations and interpolation still work)")
        if what != "sample" and not self.info["can_vary"]:
            raise BadRequest(f"{what} need a representation-conditioned generator; this one is conditioned on "
                             f"{'class labels' if self.info['cond'] == 'class' else 'nothing'} (cond "
                             f"{self.info['cond']!r})")


def _values(request) -> dict:
    """The request's parameters: a JSON object body, else the form and query fields."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest("the JSON body must be an object like {\"num\": 4, \"seed\": 0}")
        return body
    return request.values.to_dict()


def _upload(request, field: str, model: Model):
    """(file-like of the uploaded bytes, the upload decoded at the system's size) of the multipart field."""
    f = request.files.get(field)
    if f is None:
        raise BadRequest(f"missing file field '{field}': upload it as multipart/form-data")
    data = f.read()
    return io.BytesIO(data), decode_upload(data, field, f.filename, model.info["image_shape"])


def _sample(model: Model, values: dict):
    """(images, seeds, settings) of one sampling request."""
    model.need("sample")
    num = number(values, "num", int, 1, model.max_num, DEFAULT_NUM["sample"])
    given, label = settings(values), class_label(values, model.info)
    images = model.run("sample", num, class_label=label, **given)
    return images, [given["seed"] + i for i in range(num)], {**resolved(given, model.info), "class": label}


def _answer(flask, images, seconds: float, **extra):
    return flask.jsonify(images=[data_url(im) for im in images], width=images[0].size[0],
                         height=images[0].size[1], seconds=round(seconds, 3), **extra)


def _api(app, flask, model: Model) -> None:
    """The JSON and PNG endpoints."""
    request = flask.request

    @app.get("/api/info")
    def info():
        return flask.jsonify(model.info)

    @app.post("/api/sample")
    def sample():
        t = time.perf_counter()
        images, seeds, used = _sample(model, _values(request))
        return _answer(flask, images, time.perf_counter() - t, seeds=seeds, settings=used)

    @app.get("/api/sample.png")
    def sample_png():
        images, seeds, _ = _sample(model, {**request.args.to_dict(), "num": 1})
        return flask.Response(png_bytes(images[0]), mimetype="image/png",
                              headers={"Content-Disposition": f'inline; filename="sample-{seeds[0]}.png"'})

    @app.post("/api/variations")
    def variations():
        t, values = time.perf_counter(), _values(request)
        model.need("variations")
        num = number(values, "num", int, 1, model.max_num, DEFAULT_NUM["variations"])
        given = settings(values)
        file, ref = _upload(request, "image", model)
        images = model.run("variations", file, num, **given)
        return _answer(flask, images, time.perf_counter() - t, seeds=[given["seed"] + i for i in range(num)],
                       reference=data_url(ref), settings=resolved(given, model.info))

    @app.post("/api/interpolate")
    def interpolate():
        t, values = time.perf_counter(), _values(request)
        model.need("interpolation")
        num = number(values, "num", int, *INTERP_NUM, DEFAULT_NUM["interpolate"])
        given = settings(values)
        (a, ref_a), (b, ref_b) = _upload(request, "a", model), _upload(request, "b", model)
        images = model.run("interpolate", a, b, num, **given)
        return _answer(flask, images, time.perf_counter() - t, t=[1 - i / (num - 1) for i in range(num)],
                       seed=given["seed"], references=[data_url(ref_a), data_url(ref_b)],
                       settings=resolved(given, model.info))


def _errors(app, flask, max_upload_mb: float) -> None:
    """Every error as JSON ``{"error": message}``: refused requests 4xx, anything unexpected 500 (the traceback
    goes to stderr only)."""
    from werkzeug.exceptions import HTTPException

    def http_error(e):
        if e.code is None:
            return e
        r, allowed = flask.request, [m for m in getattr(e, "valid_methods", None) or () if m not in ("HEAD", "OPTIONS")]
        msg = {413: f"the upload is too large: the limit is {max_upload_mb:g} MB",
               404: f"Not Found: {r.path} (the API: {', '.join(ENDPOINTS)})",
               405: f"Method Not Allowed: {r.method} {r.path}; use {' or '.join(allowed)}",
               }.get(e.code, f"{e.name}: {e.description}")
        return flask.jsonify(error=msg), e.code

    def refused(e):
        return flask.jsonify(error=str(e)), getattr(e, "status", 400)

    def unexpected(e):
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        return flask.jsonify(error=f"internal error ({type(e).__name__}); the server log has the details"), 500

    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(ValueError, refused)        # BadRequest, and the pipeline's own bad values
    app.register_error_handler(Exception, unexpected)


def _log(app, flask) -> None:
    """One line per request on stderr: client, method, path, status, seconds."""
    @app.before_request
    def start():
        flask.g.t0 = time.perf_counter()

    @app.after_request
    def done(response):
        r = flask.request
        took = time.perf_counter() - flask.g.get("t0", time.perf_counter())
        print(f"{r.remote_addr} {r.method} {r.path} {response.status_code} {took:.2f}s", file=sys.stderr, flush=True)
        return response


def make_app(pipe, max_upload_mb: float = 10.0, max_num: int = 64):
    """The playground's Flask app around ``pipe``: the page at ``/`` and the API under ``/api/`` (README, Serving).
    Uploads over ``max_upload_mb`` are refused (413); one call makes at most ``max_num`` images."""
    flask = flask_module()
    if not max_upload_mb > 0 or max_num < 1:
        raise ValueError(f"max_upload_mb must be > 0 and max_num >= 1, got {max_upload_mb} and {max_num}")
    app = flask.Flask("rcg.serve", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 2 ** 20)
    app.json.sort_keys = False
    model = Model(pipe, max_num, max_upload_mb)
    app.extensions["rcg"] = model

    @app.get("/")
    def page():
        return flask.Response(PAGE.read_bytes(), mimetype="text/html")

    @app.get("/favicon.ico")
    def favicon():
        return flask.Response(status=204)

    _api(app, flask, model)
    _errors(app, flask, max_upload_mb)
    _log(app, flask)
    return app
