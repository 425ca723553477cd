"""`rcg serve` on the tiny systems of tests/golden: the API with Flask's test client (images, determinism, every
refusal as JSON, one model call at a time), a real server started by the CLI, and the page in headless Chromium."""
import base64
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import Browser
from rcg.cli import main
from rcg.pipeline import RCGPipeline

from rcg.serve import make_app

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
ARTIFACTS = HERE / "artifacts"


@contextmanager
def _in(folder: Path):
    """cd into ``folder`` for the block (the golden runs name each other by relative paths)."""
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def pipes():
    with _in(GOLDEN):
        return {name: RCGPipeline.from_pretrained(name, rdm="rdm", device="cpu") for name in ("mage", "dit")}


@pytest.fixture
def client(pipes):
    return make_app(pipes["mage"]).test_client()


def _png(w=24, h=20, seed=0) -> bytes:
    """A small RGB PNG (noise)."""
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _decode(url: str) -> Image.Image:
    head, b64 = url.split(",", 1)
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _files(**files):
    return {k: (io.BytesIO(v), f"{k}.png") for k, v in files.items()}


class Fake:
    """A pipeline stand-in that describes itself as told, records its calls and returns gray 16 px images."""

    def __init__(self, fail=None, **describe):
        self.calls, self.fail = [], fail
        self.info = {"generator": "mage", "cond": "rep", "image_shape": (1, 16), "has_rdm": True, "num_classes": 0,
                     "label_classes": 0, "defaults": {"steps": 4, "temperature": 1.0, "guidance": 0.5},
                     "uses_temperature": True, "precision": "fp32", "device": "cpu", **describe}

    def describe(self):
        return dict(self.info)

    def _images(self, what, num, kw):
        self.calls.append((what, num, kw))
        if self.fail:
            raise self.fail
        return [Image.new("L", (16, 16), (kw.get("seed", 0) + i) % 256) for i in range(num)]

    def __call__(self, num, **kw):
        return self._images("sample", num, kw)

    def variations(self, image, num, **kw):
        return self._images("variations", num, kw)

    def interpolate(self, a, b, num, **kw):
        return self._images("interpolate", num, kw)


# ---------------------------------------------------------------------------------------------- the API, in-process

@pytest.mark.parametrize("name", ["mage", "dit"])
def test_info_and_samples_of_the_system_size(pipes, name):
    c = make_app(pipes[name], max_num=9).test_client()
    info = c.get("/api/info").get_json()
    assert info["generator"] == name and info["image_shape"] == [1, 16] and info["cond"] == "rep"
    assert info["has_rdm"] and info["can_sample"] and info["can_vary"] and info["num_classes"] == 0
    assert info["uses_temperature"] == (name == "mage") and info["defaults"] == pipes[name].describe()["defaults"]
    assert info["limits"]["max_num"] == 9 and info["limits"]["ranges"]["seed"] == [0, 2 ** 31 - 1]
    r = c.post("/api/sample", json={"num": 3, "seed": 5, "steps": 2})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["seeds"] == [5, 6, 7] and body["settings"]["steps"] == 2 and len(body["images"]) == 3
    ims = [_decode(u) for u in body["images"]]
    assert all(im.size == (16, 16) for im in ims)
    want = pipes[name](3, seed=5, steps=2, output_type="uint8")
    assert np.array_equal(np.stack([np.asarray(im) for im in ims]), want[:, 0].numpy())
    form = c.post("/api/sample", data={"num": "3", "seed": "5", "steps": "2"}).get_json()       # form fields too
    assert form["images"] == body["images"]


def test_the_png_endpoint_is_deterministic(client):
    a, b, other = (client.get(f"/api/sample.png?seed={s}&guidance=1.5") for s in (11, 11, 12))
    assert a.status_code == 200 and a.mimetype == "image/png" and a.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert a.data == b.data and a.data != other.data
    assert Image.open(io.BytesIO(a.data)).size == (16, 16)
    first = client.post("/api/sample", json={"num": 1, "seed": 11, "guidance": 1.5}).get_json()["images"][0]
    assert base64.b64decode(first.split(",", 1)[1]) == a.data


def test_variations_and_interpolation_are_the_pipelines(client, pipes):
    pipe, ref, other = pipes["mage"], _png(seed=1), _png(30, 30, seed=2)
    r = client.post("/api/variations", data={"num": "3", "seed": "4", **_files(image=ref)})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    got = np.stack([np.asarray(_decode(u)) for u in body["images"]])
    assert body["seeds"] == [4, 5, 6] and _decode(body["reference"]).size == (16, 16)
    assert np.array_equal(got, pipe.variations(io.BytesIO(ref), 3, seed=4, output_type="uint8")[:, 0].numpy())
    r = client.post("/api/interpolate", data={"num": "5", "seed": "2", **_files(a=ref, b=other)})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert len(body["images"]) == 5 and body["t"][0] == 1 and body["t"][-1] == 0 and len(body["references"]) == 2
    got = np.stack([np.asarray(_decode(u)) for u in body["images"]])
    want = pipe.interpolate(io.BytesIO(ref), io.BytesIO(other), 5, seed=2, output_type="uint8")
    assert np.array_equal(got, want[:, 0].numpy())


@pytest.mark.parametrize("path, data, status, says", [
    ("/api/sample", {"num": "0"}, 400, "num must be in [1, 64]"),
    ("/api/sample", {"num": "65"}, 400, "num must be in [1, 64]"),
    ("/api/sample", {"steps": "1001"}, 400, "steps must be in [1, 1000]"),
    ("/api/sample", {"steps": "2.5"}, 400, "steps must be an integer"),
    ("/api/sample", {"guidance": "21"}, 400, "guidance must be in [0.0, 20.0]"),
    ("/api/sample", {"guidance": "nan"}, 400, "guidance must be a finite number"),
    ("/api/sample", {"temperature": "0"}, 400, "temperature must be in (0.0, 100.0]"),
    ("/api/sample", {"seed": "abc"}, 400, "seed must be an integer"),
    ("/api/sample", {"seed": "-1"}, 400, "seed must be in [0, 2147483647]"),
    ("/api/sample", {"class": "1"}, 400, "this system's RDM is unconditional"),
    ("/api/variations", {}, 400, "missing file field 'image'"),
    ("/api/variations", {"image": (io.BytesIO(b"not an image"), "x.png")}, 400, "is not an image"),
    ("/api/variations", {"image": (io.BytesIO(b""), "x.png")}, 400, "is empty"),
    ("/api/interpolate", {"a": (io.BytesIO(_png()), "a.png")}, 400, "missing file field 'b'"),
    ("/api/interpolate", {"num": "1", **_files(a=_png(), b=_png())}, 400, "num must be in [2, 32]"),
    ("/api/nothing", {}, 404, "Not Found"),
])
def test_bad_requests_are_refused_with_a_json_message(client, path, data, status, says):
    r = client.post(path, data=data)
    assert r.status_code == status and r.is_json and says in r.get_json()["error"], (r.status_code, r.data)


def test_json_bodies_and_methods_are_checked(client):
    r = client.post("/api/sample", json={"num": True})
    assert r.status_code == 400 and "num must be an integer" in r.get_json()["error"]
    r = client.post("/api/sample", data="[1, 2]", content_type="application/json")
    assert r.status_code == 400 and "must be an object" in r.get_json()["error"]
    r = client.get("/api/sample")
    assert r.status_code == 405 and r.get_json()["error"] == "Method Not Allowed: GET /api/sample; use POST"
    assert client.get("/").status_code == 200 and b"rcg playground" in client.get("/").data


def test_a_too_large_upload_is_413_json(pipes):
    c = make_app(pipes["mage"], max_upload_mb=0.01).test_client()
    r = c.post("/api/variations", data={"image": (io.BytesIO(b"\0" * 20_000), "big.png")})
    assert r.status_code == 413 and r.get_json() == {"error": "the upload is too large: the limit is 0.01 MB"}
    assert c.post("/api/variations", data=_files(image=_png())).status_code == 200      # a small one passes


def test_classes_and_what_a_system_cannot_do():
    fake = Fake(num_classes=3)
    c = make_app(fake).test_client()
    assert c.post("/api/sample", data={"class": "2", "num": "2"}).status_code == 200
    assert fake.calls[-1] == ("sample", 2, {"class_label": 2, "seed": 0, "guidance": None, "temperature": None,
                                            "steps": None})
    r = c.post("/api/sample", data={"class": "3"})
    assert r.status_code == 400 and "class must be in [0, 2]" in r.get_json()["error"]
    c = make_app(Fake(has_rdm=False)).test_client()
    assert not c.get("/api/info").get_json()["can_sample"]
    r = c.get("/api/sample.png")
    assert r.status_code == 400 and "no RDM" in r.get_json()["error"]
    assert c.post("/api/variations", data=_files(image=_png())).status_code == 200      # the encoder suffices
    c = make_app(Fake(cond="class", has_rdm=False, label_classes=10)).test_client()
    assert c.post("/api/sample", data={"class": "9"}).status_code == 200               # class-label generator
    for path, files in (("/api/variations", _files(image=_png())), ("/api/interpolate", _files(a=_png(), b=_png()))):
        r = c.post(path, data=files)
        assert r.status_code == 400 and "representation-conditioned" in r.get_json()["error"]


def test_an_unexpected_error_is_a_short_500_and_a_logged_traceback(capsys):
    c = make_app(Fake(fail=RuntimeError("secret detail"))).test_client()
    r = c.post("/api/sample")
    assert r.status_code == 500 and r.get_json() == {"error": "internal error (RuntimeError); the server log has "
                                                              "the details"}
    err = capsys.readouterr().err
    assert "Traceback" in err and "secret detail" in err and "POST /api/sample 500" in err


def test_one_model_call_at_a_time(pipes):
    class Counting:
        """The mage pipeline, counting how many calls are inside it at once."""
        def __init__(self, pipe):
            self.pipe, self.inside, self.most, self.calls, self.guard = pipe, 0, 0, 0, threading.Lock()

        def describe(self):
            return self.pipe.describe()

        def __call__(self, *args, **kw):
            with self.guard:
                self.inside += 1
                self.calls += 1
                self.most = max(self.most, self.inside)
            try:
                time.sleep(0.3)
                return self.pipe(*args, **kw)
            finally:
                with self.guard:
                    self.inside -= 1

    shim = Counting(pipes["mage"])
    app, codes = make_app(shim), []
    threads = [threading.Thread(target=lambda s=s: codes.append(app.test_client().get(f"/api/sample.png?seed={s}")
                                                                .status_code)) for s in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert codes == [200, 200] and shim.calls == 2 and shim.most == 1
    assert time.perf_counter() - t0 >= 0.6                    # the second waited for the first


def test_without_flask_the_verb_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "flask", None)           # import flask now raises ImportError
    with pytest.raises(RuntimeError, match=r"rcg serve needs Flask: pip install -e '.\[serve\]'"):
        make_app(Fake())
    assert main(["serve", str(GOLDEN / "mage"), "--port", "0"]) == 2
    assert "rcg serve needs Flask" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- a real server

@pytest.fixture(scope="module")
def server(pipes, tmp_path_factory):
    """``python -m rcg serve SAVED --port 0`` on a saved copy of the mage system: (base URL, its stderr file);
    stopped with Ctrl+C (SIGINT) at the end, which must exit 0."""
    tmp = tmp_path_factory.mktemp("serve")
    with _in(GOLDEN):
        pipes["mage"].save_pretrained(tmp / "sys")
    err = tmp / "stderr.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(err, "wb") as errf:
        proc = subprocess.Popen([sys.executable, "-m", "rcg", "serve", str(tmp / "sys"), "--port", "0", "--device",
                                 "cpu", "--max-upload-mb", "0.5"], cwd=tmp, env=env, stdout=subprocess.PIPE,
                                stderr=errf, text=True,
                                # as from a terminal: Ctrl+C not ignored (a shell's background job, e.g. CI run
                                # with &, passes SIGINT ignored on, and Python then installs no handler)
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            pytest.fail(f"rcg serve printed no URL in 60 s: {err.read_text()}")
        assert line.startswith("rcg serve: http://127.0.0.1:") and line.rstrip().endswith("(Ctrl+C stops)"), line
        yield line.split()[2], err
        proc.send_signal(signal.SIGINT)                      # Ctrl+C stops it cleanly
        assert proc.wait(30) == 0 and "rcg serve: stopped" in err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.headers.get_content_type(), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get_content_type(), e.read()


def _post_files(url: str, **files):
    """POST multipart/form-data with the given file fields; (status, parsed JSON)."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{k}.png\"\r\n"
                    f"Content-Type: image/png\r\n\r\n".encode() + v + b"\r\n" for k, v in files.items())
    req = urllib.request.Request(url, data=body + f"--{boundary}--\r\n".encode(), method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_real_server_answers_and_refuses_in_json(server):
    url, err = server
    status, kind, page = _get(url)
    assert status == 200 and kind == "text/html" and b"rcg playground" in page
    status, kind, info = _get(url + "api/info")
    assert status == 200 and kind == "application/json" and json.loads(info)["generator"] == "mage"
    a, b, other = (_get(f"{url}api/sample.png?seed={s}") for s in (3, 3, 4))
    assert a[:2] == (200, "image/png") and a[2] == b[2] and a[2] != other[2]
    status, body = _post_files(url + "api/variations", image=_png())
    assert status == 200 and len(body["images"]) == 4
    status, body = _post_files(url + "api/variations", image=b"GIF89a but not really")
    assert status == 400 and "not an image" in body["error"]
    status, body = _post_files(url + "api/variations", image=b"\0" * 800_000)
    assert status == 413 and "0.5 MB" in body["error"]
    status, kind, body = _get(url + "api/sample.png?steps=0")
    assert status == 400 and kind == "application/json" and "steps" in json.loads(body)["error"]
    log = err.read_text()
    assert "GET /api/sample.png 200" in log and "POST /api/variations 413" in log and "Traceback" not in log


# ---------------------------------------------------------------------------------------------- the page

def test_the_page_in_headless_chromium(server, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    url, _ = server
    (tmp_path / "ref.png").write_bytes(_png(40, 32, seed=3))
    (tmp_path / "b.png").write_bytes(_png(32, 32, seed=4))
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    imgs = "[...document.querySelectorAll('#{}  img')]"
    loaded = imgs + ".length === {} && " + imgs + ".every(i => i.complete && i.naturalWidth === 16)"
    with Browser(tmp_path / "chromium") as b:
        page = b.new_page()
        page.navigate(url)
        assert "mage generator" in page.wait_for("document.getElementById('desc').textContent.includes('mage') "
                                                 "&& document.getElementById('desc').textContent")
        assert page.eval("document.getElementById('steps').value") == "4"            # defaults from /api/info
        page.eval("document.getElementById('num').value = 6; document.getElementById('generate').click()")
        page.wait_for(loaded.format("grid", 6, "grid"))
        assert page.eval("[...document.querySelectorAll('#grid a')].map(a => a.download)") == \
            [f"sample-{i}.png" for i in range(6)]
        assert page.eval("document.querySelector('#grid img').getBoundingClientRect().width") >= 64   # enlarged
        page.set_files("#reference", [tmp_path / "ref.png"])
        page.wait_for(loaded.format("variations", 7, "variations"))                 # the reference + 6
        page.set_files("#interp-a", [tmp_path / "ref.png"])
        page.set_files("#interp-b", [tmp_path / "b.png"])
        page.eval("document.getElementById('interpolate').click()")
        page.wait_for(loaded.format("strip", 10, "strip"))                          # A + 8 + B
        assert page.eval("document.getElementById('error').textContent") == ""
        shot = page.screenshot(ARTIFACTS / "serve-playground.png")
        im = Image.open(io.BytesIO(shot))
        assert im.format == "PNG" and im.size[0] > 0 and im.size[1] > 0
        page.set_files("#reference", [tmp_path / "junk.png"])                       # an error shows in the box
        msg = page.wait_for("document.getElementById('error').classList.contains('shown') "
                            "&& document.getElementById('error').textContent")
        assert "not an image" in msg
        assert page.eval("document.querySelectorAll('#variations img').length") == 7  # the last result stays
