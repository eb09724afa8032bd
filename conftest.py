"""pytest's root configuration: the harness's fixtures for every test of the repository."""

pytest_plugins = ["llmserve_testing.fixtures"]
