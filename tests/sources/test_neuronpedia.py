"""Neuronpedia features from a recorded API response (urllib monkeypatched: never the network)."""

import io
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from saematch_nb.core.weights import SAEInfo
from saematch_nb.sources import neuronpedia as npd
from saematch_nb.sources.neuronpedia import NeuronpediaUnavailableError, fetch_feature

DATA = Path(__file__).resolve().parents[1] / "data" / "neuronpedia"
RECORDED = DATA / "gemma-2-2b__12-gemmascope-res-16k__1234.json"


class _Resp(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


@pytest.fixture
def served(monkeypatch):
    log = []

    def urlopen(req, timeout=None):
        log.append((req.full_url, timeout))
        return _Resp(RECORDED.read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return log


def test_recorded_response_parsed(served, tmp_path):
    f = fetch_feature("gemma-2-2b/12-gemmascope-res-16k", 1234, cache_dir=tmp_path, timeout=3)
    assert served == [("https://www.neuronpedia.org/api/feature/gemma-2-2b/12-gemmascope-res-16k/1234", 3)]
    via_info = fetch_feature(SAEInfo(neuronpedia_id="gemma-2-2b/12-gemmascope-res-16k"), 1234, cache_dir=tmp_path)
    assert via_info.url == SAEInfo(neuronpedia_id="gemma-2-2b/12-gemmascope-res-16k").neuronpedia_url(1234)
    assert f.explanations == ("names of French cities",)
    assert f.max_value == pytest.approx(41.3) and f.frac_nonzero == pytest.approx(0.00041)
    assert len(f.activations) == 3 and f.activations[0].max_value == pytest.approx(41.3)
    top = f.activations[0]
    assert top.tokens[top.max_index] == " Paris"
    assert f.url == "https://neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/1234"
    assert f.url in repr(f) and "French cities" in repr(f)
    h = f._repr_html_()
    assert f.url in h and "<script>alert" not in h and "&lt;script&gt;" in h


def test_cached_after_first_fetch(served, tmp_path, monkeypatch):
    fetch_feature("gemma-2-2b/12-gemmascope-res-16k", 1234, cache_dir=tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    again = fetch_feature("gemma-2-2b/12-gemmascope-res-16k", 1234, cache_dir=tmp_path)
    assert again.explanations == ("names of French cities",)


def test_offline_gives_a_clear_error_and_caches_nothing(monkeypatch, tmp_path):
    def down(req, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", down)
    with pytest.raises(NeuronpediaUnavailableError, match="cannot reach Neuronpedia") as e:
        fetch_feature("gemma-2-2b/12-gemmascope-res-16k", 5, cache_dir=tmp_path)
    assert "https://neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/5" in str(e.value)
    assert not list(tmp_path.rglob("*.json"))


def test_not_found_bad_id_and_garbage(monkeypatch, tmp_path):
    def missing(req, timeout=None):
        raise urllib.error.HTTPError(req.full_url, 404, "Not Found", {}, None)

    monkeypatch.setattr(urllib.request, "urlopen", missing)
    with pytest.raises(KeyError, match="404"):
        fetch_feature("gemma-2-2b/12-gemmascope-res-16k", 99999, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="model/source"):
        fetch_feature("gemma-2-2b", 1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no Neuronpedia id"):
        fetch_feature(SAEInfo(layer=3), 1, cache_dir=tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", lambda req, timeout=None: _Resp(b'["not", "a feature"]'))
    with pytest.raises(ValueError, match="unexpected"):
        fetch_feature("gemma-2-2b/12-gemmascope-res-16k", 1, cache_dir=tmp_path)
    assert not list(tmp_path.rglob("*.json"))


def test_repr_never_raises(monkeypatch):
    f = npd.parse_feature(json.loads(RECORDED.read_text()))
    monkeypatch.setattr("saematch_nb.display.examples.neuronpedia_feature_text",
                        lambda f: (_ for _ in ()).throw(RuntimeError("broken display")))
    assert "1234" in repr(f)


def test_default_timeout_is_passed_to_the_opener(served, tmp_path):
    fetch_feature("gemma-2-2b/12-gemmascope-res-16k", 1234, cache_dir=tmp_path)
    assert served == [("https://www.neuronpedia.org/api/feature/gemma-2-2b/12-gemmascope-res-16k/1234", 5)]


@pytest.mark.parametrize("error", [
    TimeoutError("timed out"),  # read timeout (socket.timeout is TimeoutError)
    urllib.error.URLError(socket.timeout("timed out")),  # connect timeout, as urllib wraps it
], ids=["read", "connect"])
def test_timeout_gives_the_offline_message_and_caches_nothing(monkeypatch, tmp_path, error):
    seen = []

    def slow(req, timeout=None):
        seen.append(timeout)
        raise error

    monkeypatch.setattr(urllib.request, "urlopen", slow)
    with pytest.raises(NeuronpediaUnavailableError, match=r"cannot reach Neuronpedia \(timed out\).*not cached") as e:
        fetch_feature("gemma-2-2b/12-gemmascope-res-16k", 7, cache_dir=tmp_path, timeout=2.5)
    assert seen == [2.5]
    assert "https://neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/7" in str(e.value)
    assert not list(tmp_path.rglob("*"))  # no entry, no temporary file, not even a folder
