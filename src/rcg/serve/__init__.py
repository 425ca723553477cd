"""``rcg serve``: a local web playground for a trained system (layer 5).

    rcg serve runs/mine --device cpu            # then open http://127.0.0.1:8000/

The page (``GET /``) samples, makes variations of an uploaded image and interpolates between two. Its API, for
scripts too (every error is JSON ``{"error": message}`` with a 4xx status, or 500 for a server fault):

- ``GET /api/info``: the system (:meth:`rcg.pipeline.RCGPipeline.describe`) and the limits.
- ``POST /api/sample`` (JSON or form: num, seed, guidance, temperature, steps, class): ``{"images": [data URLs],
  "seeds", "width", "height", "settings", "seconds"}``; image i from seed + i.
- ``GET /api/sample.png?seed=S&guidance=...``: one PNG.
- ``POST /api/variations`` (multipart: file ``image``; num, seed, ...): the images and the ``reference`` as seen.
- ``POST /api/interpolate`` (multipart: files ``a`` and ``b``; num in [2, 32], seed, ...): the images, ``t``
  (1 ... 0) and the two ``references``.

One request at a time per model (a lock; others wait). Flask is an optional dependency (``.[serve]``).
"""
from __future__ import annotations

import sys

from ..pipeline import RCGPipeline
from .app import flask_module, make_app

__all__ = ["make_app", "serve"]


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _server(host: str, port: int, app):
    """A threaded werkzeug server on host:port (0: a free port) that logs nothing itself (the app logs)."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_request(self, *args, **kw):
            pass

    try:
        return make_server(host, port, app, threaded=True, request_handler=Quiet)
    except SystemExit:                  # werkzeug prints why (address in use, ...) and exits
        raise RuntimeError(f"cannot listen on {host}:{port}") from None


def serve(path, rdm=None, host: str = "127.0.0.1", port: int = 8000, device=None, dtype=None,
          max_upload_mb: float = 10.0) -> None:
    """Load the system at ``path`` (with ``rdm``; see :meth:`RCGPipeline.from_pretrained`), print the page's URL
    and serve it until Ctrl+C. ``port`` 0 picks a free port (the printed URL has the real one)."""
    flask_module()                      # fail before loading anything when Flask is missing
    pipe = RCGPipeline.from_pretrained(path, rdm=rdm, device=device, dtype=dtype)
    app = make_app(pipe, max_upload_mb=max_upload_mb)
    server = _server(host, port, app)
    info = app.extensions["rcg"].info
    channels, res = info["image_shape"]
    print(f"rcg serve: {info['generator']} {res}x{res}x{channels}, cond {info['cond']}, "
          f"{info['device']} {info['precision']}{'' if info['has_rdm'] else ', no RDM'}", file=sys.stderr, flush=True)
    print(f"rcg serve: {_url(host, server.socket.getsockname()[1])} (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()          # returns on Ctrl+C (werkzeug's takes the KeyboardInterrupt)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("rcg serve: stopped", file=sys.stderr, flush=True)
