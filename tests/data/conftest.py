"""Data tests: the index cache goes to a temporary directory."""

import pytest


@pytest.fixture(autouse=True)
def index_cache(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.mktemp("index-cache")
    monkeypatch.setenv("RCNN_CLI_CACHE", str(path))
    return path
