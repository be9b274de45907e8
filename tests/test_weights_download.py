"""Pretrained weights downloaded on first use, from a loopback HTTP server standing in for the publishers.

The server serves generated weight files under the publishers' URL paths; TOOLKIT_WEIGHTS_MIRROR points plain
URLs (torchvision's) at it and HF_ENDPOINT the hub's, so the real torch.hub and huggingface_hub downloads run.
For hub paths (`/<repo_id>/resolve/<revision>/<file>`) it answers the headers huggingface_hub reads: X-Repo-Commit,
ETag (the content's sha256, as the hub gives for LFS files) and Content-Length.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.file_download
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save
from test_weights import assert_close, randomize_bn

from toolkit.backbones import create_backbone
from toolkit.backbones import weights as weights_module
from toolkit.backbones.timm_backbone import TimmBackbone
from toolkit.backbones.weights import check_pretrained, get_weights
from toolkit.errors import ConfigError, WeightsNotFoundError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMM_V1 = "mobilenetv1_100.ra4_e3600_r224_in1k"
HUB_PATH = f"/timm/{TIMM_V1}/resolve/main/model.safetensors"
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the revision the fake hub says `main` is


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def corrupted(data: bytes) -> bytes:
    """The same length, other bytes in the middle: a download that went wrong without changing its size."""
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:]


class WeightServer:
    """A loopback HTTP server of `files` ({url path: bytes}) that records every request it gets."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}  # an ETag other than the content's sha256 (a corrupted hub download)
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                server.requests.append((self.command, self.path))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "no such file")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                if "/resolve/" in self.path:  # what huggingface_hub requires of a hub endpoint
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("ETag", f'"{server.etags.get(self.path, sha256(data))}"')
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args):  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gets(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET"]

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join()
            self.httpd.server_close()


@pytest.fixture
def server():
    served = WeightServer()
    yield served
    served.stop()


@pytest.fixture
def online(tmp_path, monkeypatch, server):
    """Empty torch hub and Hugging Face caches; plain URLs mirrored to the server under /pytorch, the hub at it."""
    dirs = {"torch": tmp_path / "torch", "hf": tmp_path / "hf"}
    monkeypatch.setenv("TORCH_HOME", str(dirs["torch"]))
    monkeypatch.setenv("HF_HOME", str(dirs["hf"]))
    monkeypatch.setenv("TOOLKIT_WEIGHTS_MIRROR", f"{server.url}/pytorch")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for var in ("TOOLKIT_WEIGHTS_DIR", "TOOLKIT_OFFLINE", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    return dirs


@pytest.fixture(scope="module")
def v2_published():
    """A random torchvision MobileNetV2 and its state dict as torch.save writes it (what torchvision publishes)."""
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.mobilenet_v2())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return model, buffer.getvalue()


@pytest.fixture
def v2_entry(monkeypatch, v2_published):
    """The registered `torchvision` weights of mobilenet_v2, renamed to carry the generated file's sha256 prefix the
    way torchvision's file names carry theirs (the real file's hash cannot be matched by a generated file)."""
    real = get_weights("mobilenet_v2", "torchvision")
    file_name = f"mobilenet_v2-{sha256(v2_published[1])[:8]}.pth"
    entry = dataclasses.replace(real, file_name=file_name, url=f"https://download.pytorch.org/models/{file_name}")
    monkeypatch.setitem(weights_module._WEIGHTS["mobilenet_v2"], "torchvision", entry)
    return entry


@pytest.fixture(scope="module")
def timm_published():
    """A random timm mobilenetv1_100 and its weights as the hub stores them (model.safetensors)."""
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("mobilenetv1_100", pretrained=False))
    return model, save({k: v.contiguous() for k, v in model.state_dict().items()})


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()) if folder.exists() else []


# ---- torchvision's URLs through torch.hub -----------------------------------------------------------------
def test_torchvision_weights_download_once_then_load_from_the_cache(server, online, v2_entry, v2_published, image,
                                                                    caplog):
    model, data = v2_published
    url_path = f"/pytorch/models/{v2_entry.file_name}"
    server.files[url_path] = data
    cached = online["torch"] / "hub" / "checkpoints" / v2_entry.file_name
    with caplog.at_level(logging.INFO, logger="toolkit.backbones.download"):
        assert check_pretrained({"name": "mobilenet_v2", "pretrained": "torchvision"}) == cached  # fail-before-work
    assert f"downloading {server.url}{url_path} -> {cached}" in caplog.text
    assert server.gets() == [url_path]
    assert sha256(cached.read_bytes()) == sha256(data) and files_under(cached.parent) == [cached]

    loaded = create_backbone("mobilenet_v2", pretrained="torchvision").eval()  # from the cache: no second request
    assert server.gets() == [url_path]
    server.stop()
    again = create_backbone("mobilenet_v2", pretrained="torchvision").eval()  # the server is gone: still loads
    with torch.no_grad():
        assert_close(loaded(image), model.features(image))
        assert_close(again(image), model.features(image))
    assert loaded.mean == v2_entry.mean


def test_corrupted_download_is_refused_by_its_hash_and_leaves_nothing(server, online, v2_entry, v2_published):
    data = v2_published[1]
    bad = corrupted(data)
    server.files[f"/pytorch/models/{v2_entry.file_name}"] = bad
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone("mobilenet_v2", pretrained="torchvision")
    message = str(err.value)
    assert "\n" not in message
    assert f"downloading {server.url}/pytorch/models/{v2_entry.file_name} failed" in message
    assert f"the file name promises {sha256(data)[:8]}, the download's starts {sha256(bad)[:8]}" in message
    assert "Fix: download" in message and "TOOLKIT_WEIGHTS_DIR" in message
    assert files_under(online["torch"]) == []  # torch.hub wrote to a temporary name, removed on refusal


def test_failed_downloads_name_the_url_the_error_and_the_fix(server, online, v2_entry, monkeypatch):
    url = f"{server.url}/pytorch/models/{v2_entry.file_name}"
    with pytest.raises(WeightsNotFoundError) as err:  # not on the mirror
        check_pretrained({"name": "mobilenet_v2", "pretrained": "torchvision"})
    message = str(err.value)
    assert "\n" not in message
    assert f"downloading {url} failed (HTTPError: HTTP Error 404" in message
    assert f"Fix: download {url} and save it as $TOOLKIT_WEIGHTS_DIR/{v2_entry.file_name}" in message
    with pytest.raises(WeightsNotFoundError) as err:  # the hub answers 404 (huggingface_hub's error, one line)
        create_backbone("mobilenet_v1", act="relu6", pretrained="timm")
    assert "\n" not in str(err.value)
    assert f"downloading {server.url}{HUB_PATH} failed (HfHubHTTPError: Client error '404" in str(err.value)
    server.stop()
    with pytest.raises(WeightsNotFoundError, match=rf"downloading {url} failed \(URLError: .*refused"):
        check_pretrained({"name": "mobilenet_v2", "pretrained": "torchvision"})
    assert files_under(online["torch"]) == []
    # no connection to the hub: the error says so, not huggingface_hub's "check your connection" wrapper
    # (its retries over ~25 s are turned off here to keep the test fast)
    monkeypatch.setattr(huggingface_hub.file_download, "_DEFAULT_RETRY_ON_EXCEPTIONS", ())
    with pytest.raises(WeightsNotFoundError, match=rf"downloading {server.url}{HUB_PATH} failed \(ConnectError: .*refused"):
        create_backbone("mobilenet_v1", act="relu6", pretrained="timm")
    monkeypatch.setenv("TOOLKIT_WEIGHTS_MIRROR", "mirror.example")  # no scheme
    with pytest.raises(ConfigError, match="TOOLKIT_WEIGHTS_MIRROR.*scheme://host"):
        check_pretrained({"name": "mobilenet_v2", "pretrained": "torchvision"})


def test_offline_switches_make_no_request(server, online, v2_entry, v2_published, timm_published, monkeypatch):
    server.files[f"/pytorch/models/{v2_entry.file_name}"] = v2_published[1]
    server.files[HUB_PATH] = timm_published[1]
    monkeypatch.setenv("TOOLKIT_OFFLINE", "1")
    for backbone in ({"name": "mobilenet_v2"}, {"name": "mobilenet_v1", "act": "relu6"}):
        with pytest.raises(WeightsNotFoundError) as err:
            check_pretrained({**backbone, "pretrained": "torchvision" if backbone["name"] == "mobilenet_v2" else "timm"})
        assert "downloads are off (TOOLKIT_OFFLINE=1)" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.delenv("TOOLKIT_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # huggingface_hub's switch: the hub only
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone("mobilenet_v1", act="relu6", pretrained="timm")
    message = str(err.value)
    assert "downloads are off (HF_HUB_OFFLINE=1)" in message
    assert f"Fix: download {server.url}{HUB_PATH} and save it as $TOOLKIT_WEIGHTS_DIR/{TIMM_V1}.safetensors" in message
    assert server.requests == []
    assert files_under(online["torch"]) == files_under(online["hf"]) == []


# ---- timm's weights through huggingface_hub ---------------------------------------------------------------
def test_hub_weights_download_through_hf_endpoint_then_load_offline(server, online, timm_published, image, caplog):
    model, data = timm_published
    server.files[HUB_PATH] = data
    repo = online["hf"] / "hub" / f"models--timm--{TIMM_V1}"
    with caplog.at_level(logging.INFO, logger="toolkit.backbones.download"):
        loaded = create_backbone("mobilenet_v1", act="relu6", pretrained="timm").eval()
    assert f"downloading {server.url}{HUB_PATH} -> {repo}" in caplog.text
    assert server.gets() == [HUB_PATH]
    snapshot_file = repo / "snapshots" / COMMIT / "model.safetensors"
    assert sha256(snapshot_file.read_bytes()) == sha256(data)  # huggingface_hub's own cache layout
    assert (repo / "blobs" / sha256(data)).is_file()

    server.stop()
    assert check_pretrained({"name": "mobilenet_v1", "act": "relu6", "pretrained": "timm"}) == snapshot_file
    again = create_backbone("mobilenet_v1", act="relu6", pretrained="timm").eval()
    with torch.no_grad():
        assert_close(loaded(image), model.forward_features(image))
        assert_close(again(image), model.forward_features(image))
    assert loaded.mean == (0.5, 0.5, 0.5)


def test_timm_backbone_downloads_its_weights_from_the_hub(server, online, image):
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("mobilenetv3_small_050", pretrained=False))
    tag = timm.models.get_pretrained_cfg("mobilenetv3_small_050").hf_hub_id
    server.files[f"/{tag}/resolve/main/model.safetensors"] = save(model.state_dict())
    wrapped = TimmBackbone("mobilenetv3_small_050", pretrained="timm").eval()
    assert len(server.gets()) == 1
    with torch.no_grad():
        assert_close(wrapped(image), model.forward_features(image))


def test_corrupted_hub_download_is_refused_and_leaves_nothing(server, online, timm_published):
    data = timm_published[1]
    bad = corrupted(data)
    server.files[HUB_PATH] = bad
    server.etags[HUB_PATH] = sha256(data)  # the hub promises the real file; the bytes arrive damaged
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone("mobilenet_v1", act="relu6", pretrained="timm")
    message = str(err.value)
    assert "\n" not in message
    assert f"downloading {server.url}{HUB_PATH} failed" in message
    assert f"the hub's ETag promises {sha256(data)[:8]}, the download's starts {sha256(bad)[:8]}" in message
    repo = online["hf"] / "hub" / f"models--timm--{TIMM_V1}"
    # no weight file left, nor a partial one: only huggingface_hub's note of the commit `main` points to
    assert [p.relative_to(repo).as_posix() for p in files_under(repo)] == ["refs/main"]


# ---- a training run -----------------------------------------------------------------------------------------
def test_training_run_downloads_pretrained_weights_once(server, online, timm_published, make_cfg, caplog):
    from toolkit.run import run

    server.files[HUB_PATH] = timm_published[1]
    cfg = make_cfg(["backbone=mobilenet_v1", "backbone.act=relu6", "backbone.pretrained=timm", "data.resolution=32",
                    "data.n_train=12", "data.n_val=6", "data.image_size=32", "data.batch_size=12",
                    "trainer.max_epochs=1"])
    with caplog.at_level(logging.INFO):
        result = run(cfg)
    snapshot_file = online["hf"] / "hub" / f"models--timm--{TIMM_V1}" / "snapshots" / COMMIT / "model.safetensors"
    assert server.gets() == [HUB_PATH]  # one download per run, however often the backbone is built
    assert f"loaded weights from {snapshot_file}" in caplog.text
    assert Path(result["best_checkpoint"]).is_file()
