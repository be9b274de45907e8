"""Downloading published weight files on first use, into the caches their publishers' own libraries use.

Plain URLs (torchvision's, and timm weights published only as a URL) go through
`torch.hub.download_url_to_file` with the check `torch.hub.load_state_dict_from_url(check_hash=True)` makes: a file
named `<name>-<hex>.pth` must have a sha256 starting with `<hex>`. Weights on the Hugging Face hub (timm's) go through
`huggingface_hub.hf_hub_download`, into its cache. Both download to a temporary name and rename it, so a failed or
refused download leaves no weight file behind.

Settings, read when a download is about to happen (not at import):
- `TOOLKIT_OFFLINE=1`: never download; `HF_HUB_OFFLINE=1`: never download from the hub (huggingface_hub's own switch).
- `TOOLKIT_WEIGHTS_MIRROR=https://mirror.example/base`: replaces the `scheme://host` of plain URLs, keeping the path.
- `HF_ENDPOINT=https://hub-mirror.example`: the hub (or a hub-compatible mirror) to download from.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import torch

from toolkit.errors import ConfigError

log = logging.getLogger(__name__)

OFFLINE_ENV = "TOOLKIT_OFFLINE"
MIRROR_ENV = "TOOLKIT_WEIGHTS_MIRROR"
HUB_OFFLINE_ENV = "HF_HUB_OFFLINE"
HUB_ENDPOINT_ENV = "HF_ENDPOINT"
HUB_DEFAULT_ENDPOINT = "https://huggingface.co"
#: seconds a connection may stay silent before a plain-URL download fails (urllib's default is to wait forever)
TIMEOUT_S = 60.0


class DownloadError(Exception):
    """A download that failed or was refused; one line saying why (the caller adds what to do)."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading


def offline_switch(*, hub: bool) -> str | None:
    """The setting that forbids downloading (`TOOLKIT_OFFLINE=1`, or `HF_HUB_OFFLINE=1` for hub files), or None."""
    for name in (OFFLINE_ENV, HUB_OFFLINE_ENV) if hub else (OFFLINE_ENV,):
        if _env_flag(name):
            return f"{name}={os.environ[name]}"
    return None


def mirrored(url: str) -> str:
    """`url` with its `scheme://host` replaced by $TOOLKIT_WEIGHTS_MIRROR (the path kept), or `url` if it is unset:
    with `TOOLKIT_WEIGHTS_MIRROR=https://mirror.example/pytorch`, `https://download.pytorch.org/models/x.pth`
    becomes `https://mirror.example/pytorch/models/x.pth`."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return url
    if urlsplit(mirror).scheme not in ("http", "https") or not urlsplit(mirror).netloc:
        raise ConfigError(MIRROR_ENV, mirror, "a base URL such as https://mirror.example/pytorch: it replaces the "
                          "scheme://host of the publishers' download URLs, which keep their paths")
    parts = urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def hub_endpoint() -> str:
    """$HF_ENDPOINT at call time (huggingface_hub reads it once, at import), else the Hugging Face hub."""
    return os.environ.get(HUB_ENDPOINT_ENV, "").strip().rstrip("/") or HUB_DEFAULT_ENDPOINT


def hub_file_url(repo_id: str, file_name: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, file_name, endpoint=hub_endpoint())


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _show_progress() -> bool:
    """torch.hub's progress bar only for a person at a terminal, not in CI logs or a run's log file."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def download_file(url: str, destination: Path) -> Path:
    """Download `url` to `destination` with torch.hub; a sha256 prefix in the file name (`-<hex>.`) must match."""
    match = torch.hub.HASH_REGEX.search(destination.name)
    hash_prefix = match.group(1) if match else None
    destination.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s -> %s", url, destination)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT_S)  # torch.hub's urlopen takes no timeout of its own
    try:
        torch.hub.download_url_to_file(url, str(destination), hash_prefix, progress=_show_progress())
    except RuntimeError as err:
        if found := re.search(r'expected "(\w+)", got "(\w+)"', str(err)):
            expected, actual = found[1], found[2][: len(found[1])]
            raise DownloadError(f"sha256 mismatch: the file name promises {expected}, the download's starts "
                                f"{actual}; refused, nothing was saved") from None
        raise DownloadError(_one_line(err)) from None
    except (OSError, ValueError, http.client.HTTPException) as err:  # URLError/HTTPError/timeouts are OSErrors
        raise DownloadError(_one_line(err)) from None
    finally:
        socket.setdefaulttimeout(previous)
    return destination


def download_from_hub(repo_id: str, file_name: str, *, cache_dir: Path) -> Path:
    """`hf_hub_download` of `repo_id`'s `file_name` (branch main) into the hub cache `cache_dir`, from $HF_ENDPOINT."""
    from huggingface_hub import hf_hub_download

    endpoint = hub_endpoint()
    log.info("downloading %s -> %s", hub_file_url(repo_id, file_name),
             cache_dir / ("models--" + repo_id.replace("/", "--")))
    try:
        path = Path(hf_hub_download(repo_id, file_name, cache_dir=str(cache_dir), endpoint=endpoint))
    except Exception as err:  # noqa: BLE001 - huggingface_hub raises its own, its HTTP client's and OS errors
        from huggingface_hub.errors import LocalEntryNotFoundError

        # "cannot find the requested files ... check your connection" wraps what went wrong: say that instead
        cause = err.__cause__ if isinstance(err, LocalEntryNotFoundError) and err.__cause__ else err
        raise DownloadError(_one_line(cause)) from None
    _check_hub_blob(path)
    return path


def _check_hub_blob(path: Path) -> None:
    """huggingface_hub checks a download's size only. The hub names a large (LFS) file's blob after its sha256
    (the ETag), so check the content against that name, and remove a mismatching file from the cache."""
    blob = path.resolve()
    if not re.fullmatch(r"[0-9a-f]{64}", blob.name):  # small git files are named by git's sha1; a copied cache
        return
    digest = hashlib.sha256()
    with blob.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != blob.name:
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise DownloadError(f"sha256 mismatch: the hub's ETag promises {blob.name[:8]}, the download's starts "
                            f"{digest.hexdigest()[:8]}; refused, nothing was saved")
