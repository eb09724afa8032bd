"""TLS at the router, as OpenAI's official Python client sees it: HTTPS with the certificate the
router was given, no plain HTTP on that port, and a renewed certificate in the files served to new
connections without a restart (what a mounted Secret that cert-manager renews looks like), and
metrics in plain HTTP on their own port for Prometheus, with nothing else there."""

import ssl
import subprocess
import time

import httpx
import openai
import pytest

from llmserve_testing import procs
from llmserve_testing.paths import binary

MODEL = "stories260k"


def self_signed(directory, name):
    """A self-signed certificate for 127.0.0.1 and localhost; returns (cert, key) paths."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


def trusting(ca):
    """A TLS context that trusts `ca` alone."""
    return ssl.create_default_context(cafile=str(ca))


def served_with(url, ca):
    """Whether a new connection to `url` verifies against the certificate `ca`."""
    try:
        return httpx.get(f"{url}/health", verify=trusting(ca), timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def tls_router(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    first_cert, first_key = self_signed(d, "first")
    second_cert, second_key = self_signed(d, "second")
    live_cert, live_key = d / "tls.crt", d / "tls.key"
    live_cert.write_bytes(first_cert.read_bytes())
    live_key.write_bytes(first_key.read_bytes())
    with procs.server("tls-server") as server:
        port = procs.free_port()
        argv = [binary("llmserve-router"), "--port", str(port), "--log-format", "text"]
        argv += ["--backend", f"{MODEL}={server.url}"]
        argv += ["--tls-cert-file", str(live_cert), "--tls-key-file", str(live_key)]
        metrics_port = procs.free_port()
        argv += ["--metrics-port", str(metrics_port)]
        with procs.Proc("tls-router", argv, port, health=None) as router:
            url = f"https://127.0.0.1:{port}"
            router.metrics_url = f"http://127.0.0.1:{metrics_port}"
            deadline = time.time() + 30
            while not served_with(url, first_cert):
                assert time.time() < deadline and router.process.poll() is None, router.log_text()[-2000:]
                time.sleep(0.2)
            yield url, (first_cert, first_key), (second_cert, second_key), (live_cert, live_key), router


def test_the_official_client_over_https(tls_router):
    url, (first_cert, _), _, _, _ = tls_router
    with httpx.Client(verify=trusting(first_cert)) as http:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http, max_retries=0)
        out = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0)
        assert out.choices[0].text
    with pytest.raises(httpx.HTTPError):
        # Plain HTTP on the TLS port gets no answer.
        httpx.get(url.replace("https://", "http://") + "/health", timeout=5)


def test_a_renewed_certificate_applies_to_new_connections(tls_router):
    url, (first_cert, _), (second_cert, second_key), (live_cert, live_key), _ = tls_router
    assert served_with(url, first_cert) and not served_with(url, second_cert)
    live_key.write_bytes(second_key.read_bytes())
    live_cert.write_bytes(second_cert.read_bytes())
    deadline = time.time() + 20
    while not served_with(url, second_cert):
        assert time.time() < deadline, "the renewed certificate was not served within 20 s"
        time.sleep(0.5)
    assert not served_with(url, first_cert)


def test_metrics_are_plain_http_on_their_own_port_and_the_api_is_not_there(tls_router):
    url, _, _, (live_cert, _), router = tls_router
    side = router.metrics_url
    assert httpx.get(f"{side}/health", timeout=5).status_code == 200
    metrics = httpx.get(f"{side}/metrics", timeout=5).text
    assert "llmserve_router_requests_total" in metrics or "llmserve_router_connections_open" in metrics, metrics[:500]
    body = {"model": MODEL, "prompt": "Once", "max_tokens": 1}
    for path in ("/v1/models", "/v1/completions", "/v1/chat/completions"):
        assert httpx.post(f"{side}{path}", json=body, timeout=5).status_code == 404, path
        assert httpx.get(f"{side}{path}", timeout=5).status_code == 404, path
    # The API port still answers its routes, in TLS only (with whichever certificate is live now).
    assert httpx.get(f"{url}/v1/models", verify=trusting(live_cert), timeout=5).status_code == 200
