"""`--model` as a Hugging Face repo id, against a stand-in Hub on loopback that speaks the Hub's
file protocol (`GET /{repo}/resolve/{revision}/{file}` with Range requests, `x-repo-commit` and
`etag` headers). The server downloads stories260k into a fresh HF_HOME, serves it under the repo
id, and answers like the local directory; a Hub it cannot reach gives one clear error."""

import hashlib
import http.server
import re
import subprocess
import tempfile
import threading
from pathlib import Path

import openai

from llmserve_testing import procs
from llmserve_testing.net import free_port
from llmserve_testing.paths import MODEL, binary

REPO = "llmserve-test/stories260k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub(http.server.ThreadingHTTPServer):
    def __init__(self, missing=()):
        self.requests = []
        self.missing = set(missing)
        super().__init__(("127.0.0.1", 0), HubHandler)


class HubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        prefix = f"/{REPO}/resolve/main/"
        path = MODEL / self.path[len(prefix) :] if self.path.startswith(prefix) else None
        if path is None or not path.is_file() or "/" in self.path[len(prefix) :] or path.name in self.server.missing:
            self.send_response(404)
            self.send_header("x-error-code", "EntryNotFound")
            self.end_headers()
            return
        data = path.read_bytes()
        start, end = 0, len(data) - 1
        if rng := self.headers.get("Range"):
            a, b = rng.removeprefix("bytes=").split("-")
            start, end = int(a), min(int(b or end), len(data) - 1)
        self.send_response(206 if self.headers.get("Range") else 200)
        self.send_header("x-repo-commit", COMMIT)
        self.send_header("etag", '"' + hashlib.sha256(data).hexdigest() + '"')
        self.send_header("content-range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("content-length", str(end - start + 1))
        self.end_headers()
        self.wfile.write(data[start : end + 1])


def serve(env, *extra):
    """The server on the repo id, not waited for: RUST_LOG inherited (the tests read its info lines),
    the CPU threading left to the server."""
    return procs.server("hub", *extra, model=REPO, rust_log=None, health=None, unset=("RAYON_NUM_THREADS",), env=env)


def test_a_repo_id_is_downloaded_with_progress_and_served_under_its_id():
    # A repo without the optional generation_config.json: asked for once, not again by the
    # process the server re-executes to set its CPU threading.
    hub = Hub(missing={"generation_config.json"})
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    home = tempfile.mkdtemp(prefix="llmserve-hf-home-")
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}", "HF_HOME": home}
    with serve(env) as server:
        server.wait_ready()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == [REPO]
        out = client.completions.create(model=REPO, prompt="Once upon a time", max_tokens=8, temperature=0)
        assert out.choices[0].text and out.usage.completion_tokens == 8
        text = server.log_text()
        assert "downloading" in text and "downloaded" in text and "model.safetensors" in text, text
        assert "cpu_threads=1" in re.sub(r"\x1b\[[0-9;]*m", "", text), (
            "the server re-executed itself with one CPU thread"
        )
        snapshot = Path(home) / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
        assert (snapshot / "config.json").is_file() and (snapshot / "model.safetensors").is_file()
        asked = [r for r in hub.requests if r.endswith("/generation_config.json")]
        assert len(asked) == 1, hub.requests

    # Cached: a second start needs no Hub at all.
    hub.shutdown()
    with serve({**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}) as server:
        server.wait_ready()


def test_an_unreachable_hub_is_one_clear_error():
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": tempfile.mkdtemp()}
    with serve(env) as server:
        assert server.process.wait(timeout=60) != 0
    text = server.log_text()
    assert f"downloading config.json of {REPO} (revision main)" in text, text
    assert "pass its directory to --model" in text, text


def test_a_path_that_is_not_a_model_is_refused():
    proc = subprocess.run(
        [binary("llmserve-server"), "--model", "/nonexistent/model"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "neither a model directory" in proc.stderr, proc.stderr
