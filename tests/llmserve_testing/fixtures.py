"""pytest fixtures of the harness, loaded as a plugin by the repository's root conftest.py."""

import pytest

from llmserve_testing.kube import ControlPlane


@pytest.fixture(scope="module")
def control_plane():
    """A fresh etcd + kube-apiserver for the test module, with the LlmApplication CRD Established."""
    cp = ControlPlane()
    try:
        cp.apply_crd()
        yield cp
    finally:
        cp.stop()
