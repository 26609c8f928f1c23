"""
The Hugging Face hub client, with the standard library only: a hub id ("HuggingFaceTB/SmolLM2-135M")
downloads into the standard cache layout, so that transformers and this code share one cache;
and what a checkpoint folder holds (its JSON files, its shards, its tokenizer), read as hf.py
and data/prepare.py need it.

Nothing a server or an index says is trusted: a commit must be 40 hex digits, a blob name a
hash, a file name a path that stays inside its folder (inside); the token goes to the
endpoint's host only; every wait has a timeout (HF_HUB_DOWNLOAD_TIMEOUT) and a download that
trickles is a stalled one (copy_download).
"""

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request

from tokenizers import Tokenizer
from tqdm import tqdm

from sml.common import CheckpointError


# -----------------------------------------------------------------------------
# Hub downloads into the standard cache layout:
#   $HF_HOME/hub/models--org--name/blobs/<etag>            the files' bytes
#   $HF_HOME/hub/models--org--name/snapshots/<commit>/f    links to the blobs
#   $HF_HOME/hub/models--org--name/refs/<revision>         the commit a branch / tag pointed at
# Every name in these paths that comes from the server or an index is checked before anything
# is written: a commit is 40 hex digits, a blob name a hash, a file name a path that stays
# inside its folder (inside). The token goes to the endpoint's host only.

_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "model.safetensors", "model.safetensors.index.json")
_OPTIONAL = ("generation_config.json", "tokenizer_config.json")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_BLOB = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # the hub's ETags: a git blob id, or an LFS file's sha256
STALL_BYTES = 64 * 1024  # a download that gets less than this in a whole timeout has stalled


def hub_cache_dir():
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(home, "hub")


def download_timeout():
    """Seconds a hub request may go without an answer (and the stall rule's period, see
    copy_download): HF_HUB_DOWNLOAD_TIMEOUT, huggingface_hub's variable; 30 unless set."""
    value = os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0
    if not seconds > 0:
        raise CheckpointError(f"HF_HUB_DOWNLOAD_TIMEOUT={value!r}: expected a number of seconds")
    return seconds


def inside(folder, name, what):
    """folder/name for a file name that a server or an index gave (`what` says which), refused
    unless it stays inside folder: a relative path of plain names ("model.safetensors",
    "sub/x.json"), no "..", no absolute path or backslash, and no link on the way out."""
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or any(p in ("", ".", "..") or "\\" in p or not p.isprintable() for p in parts):
        raise CheckpointError(f"{what}: {name!r} is not a relative path that stays inside {folder}")
    path = os.path.join(folder, *parts)
    real_folder = os.path.realpath(folder)
    # the file itself may be a link (a snapshot's files link to the blobs); its folders may not lead out
    if os.path.commonpath([real_folder, os.path.realpath(os.path.dirname(path))]) != real_folder:
        raise CheckpointError(f"{what}: {name!r} is not a relative path that stays inside {folder}")
    return path


def _origin(url):
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc


class _TokenStaysHome(urllib.request.HTTPRedirectHandler):
    """Follow redirects, dropping the Authorization header when one leads to another host (a
    CDN): the token is for the endpoint only, as huggingface_hub sends it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # we want the hub's own headers (commit, etag, size), not the CDN's


def _request(url, method="GET", headers=None, follow=True):
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise CheckpointError(f"{url}: refused, only http(s) addresses are downloaded from")
    req = urllib.request.Request(url, method=method, headers=headers or {})
    opener = urllib.request.build_opener(_TokenStaysHome if follow else _NoRedirect)
    return opener.open(req, timeout=download_timeout())


class DownloadStalled(TimeoutError):
    """copy_download's: the server went silent, or sends too slowly ever to finish."""


def _reason(e):
    """What went wrong with a request, in words; a timeout says which limit it hit."""
    reason = getattr(e, "reason", e)
    if isinstance(reason, TimeoutError):
        said = reason if isinstance(reason, DownloadStalled) else f"no answer within {download_timeout():g} s"
        return f"{said}; HF_HUB_DOWNLOAD_TIMEOUT sets the limit"
    return str(reason)


def copy_download(response, f, timeout, limit=None, progress=None):
    """Copy an HTTP response's body into the file f. The socket's timeout notices a server that
    goes silent, but one that sends a byte now and then would keep a download going for ever:
    less than STALL_BYTES within `timeout` seconds is a stall. More than `limit` bytes (the size
    announced) is refused too. Raises DownloadStalled / OSError saying which."""
    window_start, window_bytes, total = time.monotonic(), 0, 0
    while True:
        try:
            chunk = response.read1(1 << 20)  # whatever has arrived, without waiting for a full chunk
        except TimeoutError:
            raise DownloadStalled(f"no data within {timeout:g} s") from None
        if not chunk:
            return
        total += len(chunk)
        if limit is not None and total > limit:
            raise OSError(f"the server sent more than the {limit:,} bytes announced")
        f.write(chunk)
        if progress:
            progress(len(chunk))
        window_bytes += len(chunk)
        if window_bytes >= STALL_BYTES:
            window_start, window_bytes = time.monotonic(), 0
        elif time.monotonic() - window_start > timeout:
            raise DownloadStalled(f"stalled: less than {STALL_BYTES // 1024} KiB within {timeout:g} s")


class _Offline(Exception):
    pass


def _hub_file(repo_id, filename, revision, repo_dir, endpoint, token):
    """Download one file into the cache (resuming a partial one) -> (commit, path), or
    (None, None) if the hub has no such file."""
    url = (f"{endpoint}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/"
           f"{urllib.parse.quote(filename)}")
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        try:
            r = _request(url, "HEAD", auth, follow=False)
            headers, location = r.headers, None
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None, None
            if e.code not in (301, 302, 303, 307, 308):
                raise CheckpointError(f"{url}: HTTP {e.code} {e.reason}"
                                      + (" (gated or private? set HF_TOKEN)" if e.code in (401, 403) else ""))
            if not e.headers.get("Location"):
                raise CheckpointError(f"{url}: HTTP {e.code} without a Location to go to")
            headers, location = e.headers, urllib.parse.urljoin(url, e.headers["Location"])
    except (urllib.error.URLError, OSError) as e:
        raise _Offline(_reason(e))
    commit = headers.get("X-Repo-Commit") or (revision if _COMMIT.fullmatch(revision) else None)
    if not commit or not _COMMIT.fullmatch(commit):
        raise CheckpointError(f"{url}: X-Repo-Commit {commit!r} is not a commit id (40 hex digits)")
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").removeprefix("W/").strip('"')
    if not _BLOB.fullmatch(etag):
        raise CheckpointError(f"{url}: ETag {etag!r} is not a file hash (it names the file in the cache)")
    size = headers.get("X-Linked-Size") or (headers.get("Content-Length") if location is None else None)
    if size is not None and not re.fullmatch(r"[0-9]+", size):
        raise CheckpointError(f"{url}: size {size!r} is not a number of bytes")
    size = int(size) if size is not None else None
    blob = os.path.join(repo_dir, "blobs", etag)
    snap = inside(os.path.join(repo_dir, "snapshots", commit), filename, url)
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    os.makedirs(os.path.dirname(snap), exist_ok=True)
    if not (os.path.exists(blob) and (size is None or os.path.getsize(blob) == size)):
        _download(location or url, blob, size, auth if location is None or
                  _origin(location) == _origin(url) else {}, filename)
    if not os.path.exists(snap):
        rel = os.path.relpath(blob, os.path.dirname(snap))
        try:
            os.symlink(rel, snap)
        except OSError:  # no symlinks (Windows without developer mode): a copy, as huggingface_hub does
            shutil.copyfile(blob, snap)
    return commit, snap


def _download(url, blob, size, headers, label):
    """GET url into blob, resuming blob.incomplete with a Range request; check the size. What
    arrived before a stall or a kill stays in blob.incomplete, for the next run to resume."""
    part = blob + ".incomplete"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if size is not None and have > size:
        os.remove(part)
        have = 0
    h = dict(headers)
    if have:
        h["Range"] = f"bytes={have}-"
    try:
        r = _request(url, "GET", h)
    except urllib.error.HTTPError as e:
        if e.code == 416 and size == have:  # already complete
            os.replace(part, blob)
            return
        raise CheckpointError(f"{url}: HTTP {e.code} {e.reason}")
    except (urllib.error.URLError, OSError) as e:
        raise _Offline(_reason(e))
    if have and r.status != 206:  # the server ignored Range: start over
        have = 0
    bar = tqdm(total=size, initial=have, unit="B", unit_scale=True, desc=label, leave=False)
    with r, open(part, "ab" if have else "wb") as f, bar:
        try:
            copy_download(r, f, download_timeout(), None if size is None else size - have, bar.update)
        except OSError as e:
            raise CheckpointError(f"{url}: {_reason(e)} (run again to resume)") from None
    got = os.path.getsize(part)
    if size is not None and got != size:
        raise CheckpointError(f"{url}: downloaded {got} bytes, expected {size} (run again to resume)")
    os.replace(part, blob)


def hub_download(repo_id, revision="main"):
    """Download a hub model's config, tokenizer and safetensors weights into the HF cache
    -> (snapshot folder, commit). HF_ENDPOINT picks the server, HF_TOKEN authenticates,
    HF_HUB_DOWNLOAD_TIMEOUT limits the wait. Offline (or HF_HUB_OFFLINE=1), a complete
    snapshot already in the cache is used."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    token = os.environ.get("HF_TOKEN")
    repo_dir = os.path.join(hub_cache_dir(), "models--" + repo_id.replace("/", "--"))
    ref = inside(os.path.join(repo_dir, "refs"), revision, "revision")

    def cached():
        commit = open(ref).read().strip() if os.path.exists(ref) else revision
        if not _COMMIT.fullmatch(commit):
            return None
        snap = os.path.join(repo_dir, "snapshots", commit)
        ok = os.path.exists(os.path.join(snap, "config.json")) and (
            os.path.exists(os.path.join(snap, "model.safetensors")) or
            os.path.exists(os.path.join(snap, "model.safetensors.index.json")))
        return (snap, commit) if ok else None

    offline_msg = (f"cannot download {repo_id} from {endpoint} (offline?): download it on a machine with "
                   f"network access (or set HF_ENDPOINT) and pass the local folder with config.json, "
                   f"*.safetensors and tokenizer.json instead")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        if cached():
            return cached()
        raise CheckpointError(offline_msg)
    try:
        commit, snap_file = _hub_file(repo_id, "config.json", revision, repo_dir, endpoint, token)
        if commit is None:
            raise CheckpointError(f"{endpoint}/{repo_id}: no such model (or no config.json at {revision})")
        snap_dir = os.path.dirname(snap_file)
        for f in _FILES[1:]:
            if f == "model.safetensors.index.json" and os.path.exists(os.path.join(snap_dir, "model.safetensors")):
                continue
            _, path = _hub_file(repo_id, f, commit, repo_dir, endpoint, token)
            if path is None and f == "model.safetensors":
                continue  # sharded, try the index next
            if path is None and f not in _OPTIONAL and f != "model.safetensors.index.json":
                raise CheckpointError(f"{endpoint}/{repo_id}: has no {f}")
            if f == "model.safetensors.index.json":
                if path is None:
                    raise CheckpointError(f"{endpoint}/{repo_id}: has no model.safetensors (nor a sharded "
                                          f"index); only safetensors weights are read")
                for shard in sorted({os.path.relpath(p, snap_dir) for p in weight_map(path).values()}):
                    _hub_file(repo_id, shard, commit, repo_dir, endpoint, token)
    except _Offline as e:
        if cached():
            return cached()
        raise CheckpointError(f"{offline_msg} ({e})")
    if revision != commit:
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        with open(ref, "w") as f:
            f.write(commit)
    return snap_dir, commit



def read_json(path, required=True):
    if not os.path.exists(path):
        if required:
            raise CheckpointError(f"{path}: no such file (a Hugging Face folder needs config.json, "
                                  f"*.safetensors and tokenizer.json)")
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})")



def is_hub_id(s):
    parts = s.split("/")
    return (not os.path.exists(s) and len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))
            and not s.endswith((".pt", ".json", ".safetensors")))



def weight_map(index_path):
    """{tensor name: shard path} of a model.safetensors.index.json; every shard is a file
    inside the index's folder (inside), or the index is refused."""
    index = read_json(index_path)
    names = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(names, dict) or not names:
        raise CheckpointError(f"{index_path}: expected {{\"weight_map\": {{tensor name: shard file}}}}")
    folder = os.path.dirname(index_path)
    return {name: inside(folder, shard, index_path) for name, shard in names.items()}



def read_tokenizer(path, error=CheckpointError, remedy="the model's tokenizer is needed"):
    """A tokenizer.json (a checkpoint folder's; data/tokenizer.load_tokenizer reads a data
    folder's with DataError); a missing or malformed one is one `error` naming the file."""
    if not os.path.exists(path):
        raise error(f"{path}: no such file ({remedy})")
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # the tokenizers library raises a bare Exception for a malformed file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(f"{path}: not a tokenizer the tokenizers library reads ({reason}); {remedy}") from None



def local_folder(name_or_path, revision="main"):
    """(folder, commit): a local folder as it is (commit None), or a hub id's snapshot in the
    cache, downloaded where needed."""
    if os.path.isdir(name_or_path):
        return name_or_path, None
    if is_hub_id(name_or_path):
        return hub_download(name_or_path, revision)
    raise CheckpointError(f"{name_or_path}: no such folder (nor a hub id like org/name)")



def tokenizer_json_of(name_or_path, revision="main"):
    """The text of a Hugging Face folder's (or hub id's) tokenizer.json: what a data folder
    takes so that the scripts tokenize as the pretrained model does (a hub id is downloaded
    whole, into the cache the model is then loaded from)."""
    folder, _ = local_folder(name_or_path, revision)
    path = os.path.join(folder, "tokenizer.json")
    read_tokenizer(path)  # a file the tokenizers library cannot read is refused here, not in a later script
    with open(path, encoding="utf-8") as f:
        return f.read()
