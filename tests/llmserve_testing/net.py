"""Free ports, plain HTTP, and waiting until something holds."""

import json
import socket
import time
import urllib.error
import urllib.request


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5, headers=None, context=None):
    """(status, body) of a GET; an HTTP error status raises urllib.error.HTTPError. `context`: the
    TLS context of an https URL."""
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
        return r.status, r.read()


def post_json(url, body, timeout=60, headers=None, context=None):
    """(status, text) of a POST of `body` as JSON; an HTTP error status is returned, not raised."""
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def eventually(what, fn, timeout, every=2.0, retry_on=(RuntimeError, OSError, KeyError, ValueError)):
    """The first truthy value of `fn()`, called every `every` s; `retry_on` errors count as not yet.
    After `timeout` s, an AssertionError names `what` and the last error."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            got = fn()
            if got:
                return got
        except retry_on as e:
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s: {what}" + (f" (last error: {last})" if last else ""))


def wait_ok(url, seconds=60, alive=None):
    """Until GET `url` answers 200; `alive()` returning False (the process exited) stops early."""

    def ok():
        if alive is not None and not alive():
            raise ProcessLookupError(f"exited before {url} answered")
        try:
            return get(url, timeout=2)[0] == 200
        except OSError:
            return False

    deadline = time.time() + seconds
    while not ok():
        if time.time() > deadline:
            raise TimeoutError(f"{url} not ready in {seconds} s")
        time.sleep(0.1)
