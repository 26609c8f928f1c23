"""Hostile input to the checkpoint readers and the downloaders: safetensors headers that lie,
shard and file names that point out of their folder, a hub server whose headers name paths
outside the cache, redirect the token elsewhere or send a byte at a time, absurd configs,
killed writes and dataset sources that are not the recorded files. Each is refused with one
clear line (a CheckpointError / DataError naming the file or URL), quickly, and nothing is
written outside the folder it belongs in."""

import dataclasses
import hashlib
import http.server
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.parse

import pytest
import torch

from sml import hf
from data import datasets
from data.datasets import DATASETS, download_file
from data.jsonl import DataError
from data.prepare import main as prepare_main
from data.tokenizer import load_tokenizer, train_tokenizer
from sml.checkpoint import CheckpointError, from_pretrained, load_checkpoint, save_checkpoint, save_pretrained
from sml.hub import tokenizer_json_of
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"Liz has {i} books. Bob flips the coin." for i in range(30)], vocab_size=300)


def tiny_llama(n_layer=2, seed=0, vocab_size=300):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=n_layer, n_head=4, n_kv_head=2, n_embd=32,
                         norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", mlp_hidden=64, pos_emb="rope", bias=False,
                         tie_embeddings=False, bos_id=0, eos_id=0)).eval()


@pytest.fixture
def hf_folder(tmp_path, tokenizer):
    folder = tmp_path / "hf"
    save_pretrained(tiny_llama(), tokenizer, str(folder))
    return folder


def refused(call, *fragments, error=CheckpointError):
    """call() raises `error` with a one-line message holding every fragment; -> the message."""
    with pytest.raises(error) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


# -----------------------------------------------------------------------------
# safetensors headers: checked whole before any data is read

def raw_safetensors(path, header, data=b""):
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)
    return str(path)


F32 = lambda shape, begin, end: {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}
BAD_HEADERS = [  # (header, data, what the error says)
    ([1, 2], b"", "not a JSON object"),
    ({"a": 5}, b"", "tensor 'a'"),
    ({"a": {"shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "dtype"),
    ({"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "F99"),
    ({"a": F32([1], 0, 3)}, b"\0" * 3, "tensor 'a'"),  # 3 bytes for an F32
    ({"a": F32([-1], 0, 4)}, b"\0" * 4, "shape"),
    ({"a": F32("3", 0, 12)}, b"\0" * 12, "shape"),
    ({"a": F32([True], 0, 4)}, b"\0" * 4, "shape"),
    ({"a": F32([1], 4, 0)}, b"\0" * 4, "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}, b"\0" * 4, "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, b"\0" * 8, "data_offsets"),
    ({"a": F32([2], 0, 8), "b": F32([2], 4, 12)}, b"\0" * 12, "overlap"),
    ({"a": F32([2], 0, 8)}, b"\0" * 4, "past the end"),
]


@pytest.mark.parametrize("header,data,said", BAD_HEADERS, ids=[c[2] + str(i) for i, c in enumerate(BAD_HEADERS)])
def test_a_lying_header_is_one_clear_error(tmp_path, header, data, said):
    path = raw_safetensors(tmp_path / "bad.safetensors", header, data)
    refused(lambda: hf.read_safetensors(path), path, said)
    refused(lambda: hf.read_safetensors_header(path), path)


def test_honest_edge_cases_still_read(tmp_path):
    """Zero-size tensors (anywhere), adjacent tensors, an empty file of tensors."""
    path = raw_safetensors(tmp_path / "ok.safetensors", {"e": F32([0, 3], 4, 4), "a": F32([1], 0, 4),
                                                          "b": F32([2], 4, 12), "__metadata__": {"format": "pt"}},
                           struct.pack("<3f", 1, 2, 3))
    t = hf.read_safetensors(path)
    assert t["a"].tolist() == [1.0] and t["b"].tolist() == [2.0, 3.0] and t["e"].shape == (0, 3)
    assert hf.read_safetensors(raw_safetensors(tmp_path / "empty.safetensors", {})) == {}


@pytest.mark.parametrize("claimed", [2 ** 31, 2 ** 40])
def test_huge_offsets_are_refused_without_allocating(tmp_path, claimed):
    """A 0.5 MB file whose header claims gigabytes: refused from the header, before a buffer of
    that size is made (the old reader zero-filled 2 GiB, and 8 GiB was a MemoryError)."""
    path = raw_safetensors(tmp_path / "big.safetensors", {"w": F32([claimed // 4], 0, claimed)}, b"\0" * 500_000)
    tracemalloc.start()
    start = time.time()
    try:
        refused(lambda: hf.read_safetensors(path), path, "past the end")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6 and time.time() - start < 5


def test_a_header_longer_than_the_file_is_refused(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    refused(lambda: hf.read_safetensors(str(path)), str(path), "header")


# -----------------------------------------------------------------------------
# Shards and index files: every shard inside the model's folder

def sharded(folder, weight_map_of):
    """Turn a single-file folder into index + shards, the index's weight_map made by
    weight_map_of(tensor names) (-> {name: shard file}); the shards are written where it says."""
    tensors = hf.read_safetensors(str(folder / "model.safetensors"))
    os.remove(folder / "model.safetensors")
    weight_map = weight_map_of(sorted(tensors))
    for shard in set(weight_map.values()) if isinstance(weight_map, dict) else []:
        path = shard if os.path.isabs(shard) else os.path.join(folder, shard)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        hf.write_safetensors(path, {n: tensors[n] for n, s in weight_map.items() if s == shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("shard", ["../elsewhere/weights.safetensors", "ABS", "sub/../../out.safetensors"])
def test_a_shard_outside_the_folder_is_refused(hf_folder, tmp_path, shard):
    """A valid safetensors file outside the folder, named by the index: not loaded."""
    shard = str(tmp_path / "abs" / "weights.safetensors") if shard == "ABS" else shard
    sharded(hf_folder, lambda names: {n: shard for n in names})
    assert os.path.exists(shard if os.path.isabs(shard) else os.path.join(hf_folder, shard))  # valid and there
    refused(lambda: from_pretrained(str(hf_folder)), "model.safetensors.index.json", shard, "stays inside")


def test_a_shard_in_a_subfolder_is_fine(hf_folder):
    sharded(hf_folder, lambda names: {n: f"part/{i % 2}.safetensors" for i, n in enumerate(names)})
    from_pretrained(str(hf_folder))


@pytest.mark.parametrize("index", [{}, {"weight_map": ["model.safetensors"]}, {"weight_map": {"x": 5}}, [1]])
def test_a_malformed_index_is_one_clear_error(hf_folder, index):
    sharded(hf_folder, lambda names: {n: "a.safetensors" for n in names})
    (hf_folder / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(lambda: from_pretrained(str(hf_folder)), "model.safetensors.index.json")


def test_etc_passwd_as_a_shard_is_refused(hf_folder):
    sharded(hf_folder, lambda names: {n: "a.safetensors" for n in names})
    (hf_folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "../../../../../../../../etc/passwd"}}))
    refused(lambda: from_pretrained(str(hf_folder)), "etc/passwd", "stays inside")


# -----------------------------------------------------------------------------
# Absurd configs: checked (and against the weights' shapes) before the model is built

HF_CONFIG_EDITS = [  # (edit of config.json, what the error says)
    (lambda c: [c], "JSON object"),
    (lambda c: {**c, "num_hidden_layers": 10 ** 6}, "layers"),
    (lambda c: {**c, "vocab_size": 10 ** 12}, "embed_tokens"),
    (lambda c: {**c, "num_attention_heads": 0}, "n_head"),
    (lambda c: {**c, "hidden_size": -32}, "n_embd"),
    (lambda c: {**c, "intermediate_size": "64"}, "mlp_hidden"),
    (lambda c: {k: v for k, v in c.items() if k != "num_hidden_layers"}, "num_hidden_layers"),
    (lambda c: {**c, "num_key_value_heads": 3}, "n_kv_head"),
    (lambda c: {**c, "rope_theta": "big"}, "rope"),
]


@pytest.mark.parametrize("edit,said", HF_CONFIG_EDITS, ids=[s + str(i) for i, (_, s) in enumerate(HF_CONFIG_EDITS)])
def test_an_absurd_hf_config_is_refused_quickly(hf_folder, edit, said):
    path = hf_folder / "config.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    start = time.time()
    refused(lambda: from_pretrained(str(hf_folder)), "config.json", said)
    assert time.time() - start < 10


@pytest.fixture
def our_checkpoint(tmp_path, tokenizer):
    path = str(tmp_path / "lm.pt")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32))
    save_checkpoint(path, model, tokenizer.to_str(), {"script": "test"})
    return path


def _del(d, key):
    d.pop(key)
    return d


CKPT_EDITS = [  # (edit of the checkpoint dict, what the error says)
    (lambda c: c["config"].update(n_experts=8), "unknown field 'n_experts'"),
    (lambda c: c.update(kind="critic"), "critic"),
    (lambda c: c["config"].update(kind="critic"), "critic"),
    (lambda c: c["config"].update(n_embd=64), "does not fit"),
    (lambda c: c["config"].update(n_layer=10 ** 6), "n_layer"),
    (lambda c: c["config"].update(vocab_size=10 ** 12), "does not fit"),
    (lambda c: c["config"].update(n_head=0), "n_head"),
    (lambda c: c["config"].update(n_layer=-1), "n_layer"),
    (lambda c: c.update(config=[1, 2]), "config"),
    (lambda c: _del(c["model"], "blocks.1.mlp.c_fc.weight"), "blocks.1.mlp.c_fc.weight"),
    (lambda c: c["model"].update(extra=torch.zeros(3)), "extra"),
    (lambda c: c["model"].update({"wte.weight": 3}), "wte.weight"),
]


@pytest.mark.parametrize("edit,said", CKPT_EDITS, ids=[s + str(i) for i, (_, s) in enumerate(CKPT_EDITS)])
def test_our_checkpoint_that_does_not_fit_is_one_clear_error(our_checkpoint, edit, said):
    ckpt = torch.load(our_checkpoint, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, our_checkpoint)
    start = time.time()
    refused(lambda: load_checkpoint(our_checkpoint), our_checkpoint, said)
    refused(lambda: load_checkpoint(our_checkpoint, kind="lm"), our_checkpoint)
    assert time.time() - start < 10


def test_gpt_config_says_which_field_is_wrong():
    with pytest.raises(ValueError, match="n_head"):
        GPTConfig(n_head=0)
    with pytest.raises(ValueError, match="norm"):
        GPTConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(dropout=1.5)
    GPTConfig(n_layer=1, n_head=3, n_embd=30)  # odd but buildable


# -----------------------------------------------------------------------------
# A tokenizer.json cut in half

def test_a_cut_tokenizer_is_one_clear_error(hf_folder, tmp_path, tokenizer):
    path = hf_folder / "tokenizer.json"
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    refused(lambda: from_pretrained(str(hf_folder)), str(path))
    refused(lambda: tokenizer_json_of(str(hf_folder)), str(path))
    data_tok = tmp_path / "data" / "tokenizer.json"
    os.makedirs(data_tok.parent)
    data_tok.write_text(text[:len(text) // 2])
    refused(lambda: load_tokenizer(str(data_tok)), str(data_tok), error=DataError)


# -----------------------------------------------------------------------------
# save_pretrained: all or nothing

class FailingTokenizer:
    """A tokenizer whose save() fails (a full disk): everything else is the real one's."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def save(self, path):
        raise OSError(28, "No space left on device")


def snapshot(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def test_a_failed_save_leaves_the_earlier_folder_whole(hf_folder, tokenizer):
    before = snapshot(hf_folder)
    other_tok = train_tokenizer(["Ann has 3 owls."] * 5, vocab_size=280)
    with pytest.raises(OSError):
        save_pretrained(tiny_llama(n_layer=3, seed=1), FailingTokenizer(other_tok), str(hf_folder))
    assert snapshot(hf_folder) == before  # not the new config and weights with the old tokenizer
    assert sorted(os.listdir(hf_folder.parent)) == ["hf"]  # no temporary left beside it
    from_pretrained(str(hf_folder))


def test_save_pretrained_replaces_its_own_folder_and_never_wipes_others(hf_folder, tokenizer, tmp_path):
    model = tiny_llama(n_layer=3, seed=1)
    save_pretrained(model, tokenizer, str(hf_folder))  # a folder save_pretrained wrote: replaced whole
    assert from_pretrained(str(hf_folder))[0].config.n_layer == 3
    assert sorted(os.listdir(hf_folder.parent)) == ["hf"]
    (hf_folder / "notes.txt").write_text("mine")
    before = snapshot(hf_folder)
    refused(lambda: save_pretrained(tiny_llama(), tokenizer, str(hf_folder)), "notes.txt")
    assert snapshot(hf_folder) == before
    other = tmp_path / "run"
    os.makedirs(other)
    (other / "sft.pt").write_bytes(b"precious")
    refused(lambda: save_pretrained(model, tokenizer, str(other)), "sft.pt")
    assert os.listdir(other) == ["sft.pt"] and (other / "sft.pt").read_bytes() == b"precious"
    empty = tmp_path / "empty"
    os.makedirs(empty)
    save_pretrained(model, tokenizer, str(empty))  # an empty folder is fine
    assert from_pretrained(str(empty))[0].config.n_layer == 3


KILL_SCRIPT = r"""
import json, os, shutil, sys
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from sml import hf
from sml.checkpoint import save_pretrained
from model import GPT, GPTConfig
from data.tokenizer import train_tokenizer

work = sys.argv[2]
def llama(n_layer, vocab, seed):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=n_layer, n_head=4, n_kv_head=2, n_embd=32,
                         norm="rmsnorm", mlp="swiglu", mlp_hidden=64, pos_emb="rope", bias=False,
                         tie_embeddings=False, eos_id=0))
tok_old = train_tokenizer(["Liz has 3 books."] * 5, 280)
tok_new = train_tokenizer(["Bob flips the coin."] * 5, 270)
old, new = llama(1, 280, 0), llama(2, 270, 1)
pristine = os.path.join(work, "pristine")
save_pretrained(old, tok_old, pristine)

def which(folder):
    if not os.path.exists(folder):
        return "absent"
    try:
        model, tok, _ = hf.load_pretrained(folder)
    except Exception as e:
        return "broken: " + str(e)[:200]
    for name, m, t in (("old", old, tok_old), ("new", new, tok_new)):
        if model.config.n_layer == m.config.n_layer and tok.to_str() == t.to_str() and all(
                torch.equal(a, b) for a, b in zip(model.state_dict().values(), m.state_dict().values())):
            return name
    return "mixed"

KILL_AT = [None, 0]
def hook(event, args):
    if KILL_AT[0] is None:
        return
    writes = event == "open" and args[2] is not None and args[2] & (os.O_WRONLY | os.O_RDWR)
    if writes or event in ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.symlink"):
        KILL_AT[1] += 1
        if KILL_AT[1] == KILL_AT[0]:
            os._exit(9)  # as kill -9: no cleanup of any kind
sys.addaudithook(hook)

report = {}
for scenario in ("replace", "new"):
    out = os.path.join(work, scenario)
    states = []
    for k in range(1, 200):
        shutil.rmtree(out, ignore_errors=True)
        if scenario == "replace":
            shutil.copytree(pristine, out)
        pid = os.fork()
        if pid == 0:
            KILL_AT[0] = k
            try:
                save_pretrained(new, tok_new, out)
            except BaseException:
                os._exit(3)
            os._exit(0)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        states.append(which(out))
        if status == 0:
            break
        assert status == 9, status
    save_pretrained(new, tok_new, out)  # after the kills, a save goes through and sweeps their leftovers
    report[scenario] = {"states": states, "final": which(out),
                        "beside": sorted(n for n in os.listdir(work) if n not in ("pristine", "replace", "new"))}
print(json.dumps(report))
"""


@pytest.mark.slow  # a process, forked at every step of a save
def test_save_pretrained_killed_at_any_step_leaves_old_or_new(tmp_path):
    """kill -9 at every file-system step of save_pretrained: the folder then loads as the old
    model or the new one (or, for the instant between two renames, is not there), never as a
    mix of the two; the next save goes through and leaves no temporaries."""
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, ROOT, str(tmp_path)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    for scenario, allowed in (("replace", {"old", "new", "absent"}), ("new", {"new", "absent"})):
        states = report[scenario]["states"]
        assert len(states) > 3 and states[-1] == "new", report
        assert set(states) <= allowed, report
        assert report[scenario]["final"] == "new" and report[scenario]["beside"] == [], report
    assert "old" in report["replace"]["states"]


# -----------------------------------------------------------------------------
# A hostile hub: every name from the server is checked, the token stays home, slow servers time out

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub(http.server.BaseHTTPRequestHandler):
    """GET / HEAD /{org}/{name}/resolve/{revision}/{file} of `files`, with the hub's headers
    (X-Repo-Commit, ETag, Content-Length) and Range requests. `override` replaces headers of a
    file (None drops one), `on_get` answers a file's GET itself."""
    files, override, on_get, log = {}, {}, {}, []

    def _answer(self, body):
        parts = self.path.split("/", 5)
        name = urllib.parse.unquote(parts[5]) if len(parts) == 6 and parts[3] == "resolve" else None
        self.log.append((self.command, self.path, self.headers.get("Authorization")))
        if name not in self.files:
            self.send_response(404)
            self.end_headers()
            return
        data = self.files[name]
        if body and name in self.on_get:
            return self.on_get[name](self, data)
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if body and self.headers.get("Range") else 0
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Length": str(len(data) - start), **self.override.get(name, {})}
        self.send_response(int(headers.pop("status", 206 if start else 200)))
        for k, v in headers.items():
            if v is not None:
                self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data[start:])

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        try:
            self._answer(body=True)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: what a timeout test wants

    def log_message(self, *args):
        pass


def serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def hub(tmp_path, hf_folder, monkeypatch):
    """A fresh Hub class serving hf_folder's files under /org/tiny; HF_HOME in tmp_path."""
    files = {n: (hf_folder / n).read_bytes() for n in os.listdir(hf_folder)}
    handler = type("TestHub", (Hub,), {"files": files, "override": {}, "on_get": {}, "log": []})
    server, url = serve(handler)
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    yield {"handler": handler, "home": home, "url": url, "root": tmp_path}
    server.shutdown()
    server.server_close()


def outside(root, home):
    """Every path under root that is not under home (nor the server's own files)."""
    found = set()
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            if not p.startswith(str(home)):
                found.add(p)
    return found


def test_the_honest_hub_still_downloads(hub):
    model, _ = from_pretrained("org/tiny")
    assert model.config.n_layer == 2
    assert all(auth == "Bearer hf_secret" for *_, auth in hub["handler"].log)


@pytest.mark.parametrize("header,value", [("ETag", '"../../../../x"'), ("ETag", '"ABS"'),
                                          ("X-Repo-Commit", "../../../../snap"), ("X-Repo-Commit", "ABS"),
                                          ("ETag", '"a/b"'), ("X-Repo-Commit", "main")])
def test_server_names_that_leave_the_cache_are_refused(hub, header, value):
    victim = hub["root"] / "victim.txt"
    victim.write_text("precious")
    value = value.replace("ABS", str(victim))
    before = outside(hub["root"], hub["home"])
    hub["handler"].override["model.safetensors"] = {header: value}
    refused(lambda: from_pretrained("org/tiny"), header)
    assert outside(hub["root"], hub["home"]) == before
    assert victim.read_text() == "precious"


def test_an_index_naming_shards_outside_the_cache_is_refused(hub, hf_folder):
    tensors = hf.read_safetensors(str(hf_folder / "model.safetensors"))
    shard = "../../../../../evil.safetensors"
    hf.write_safetensors(str(hub["root"] / "shard"), tensors)
    files = hub["handler"].files
    files.pop("model.safetensors")
    files[shard] = (hub["root"] / "shard").read_bytes()
    files["model.safetensors.index.json"] = json.dumps({"weight_map": {n: shard for n in tensors}}).encode()
    before = outside(hub["root"], hub["home"])
    refused(lambda: from_pretrained("org/tiny"), shard)
    assert outside(hub["root"], hub["home"]) == before


def test_the_token_is_not_sent_to_another_host(hub, hf_folder):
    """The endpoint answers a GET with a redirect elsewhere (a CDN): the file comes from there,
    without the Authorization header."""
    other_log = []

    class Elsewhere(Hub):
        files, log = {"blob": (hf_folder / "model.safetensors").read_bytes()}, other_log

        def do_GET(self):
            self.log.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.files["blob"])))
            self.end_headers()
            self.wfile.write(self.files["blob"])

    server, url = serve(Elsewhere)
    try:
        def redirect(handler, data):
            handler.send_response(302)
            handler.send_header("Location", f"{url}/blob")
            handler.end_headers()
        hub["handler"].on_get["model.safetensors"] = redirect
        model, _ = from_pretrained("org/tiny")
    finally:
        server.shutdown()
        server.server_close()
    assert other_log == [None]
    assert ("GET", "/org/tiny/resolve/main/config.json", "Bearer hf_secret") in hub["handler"].log


def test_a_redirect_to_a_local_file_is_refused(hub):
    victim = hub["root"] / "victim.txt"
    victim.write_text("local secret")
    hub["handler"].override["model.safetensors"] = {
        "status": 302, "Location": f"file://{victim}", "X-Linked-Size": str(len("local secret")),
        "X-Linked-Etag": '"' + "ab" * 32 + '"'}
    refused(lambda: from_pretrained("org/tiny"), "file://")
    for d, _, files in os.walk(hub["home"]):
        for n in files:
            assert open(os.path.join(d, n), "rb").read() != b"local secret"


def test_a_size_that_is_not_a_number_is_one_clear_error(hub):
    hub["handler"].override["model.safetensors"] = {"X-Linked-Size": "lots"}
    refused(lambda: from_pretrained("org/tiny"), "lots")


def trickle(handler, data):
    """Headers at once, then a byte every 0.2 s (for 10 s at most)."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    for b in data[:50]:
        handler.wfile.write(bytes([b]))
        handler.wfile.flush()
        time.sleep(0.2)


def test_a_trickling_hub_times_out_and_the_download_resumes(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "1")
    hub["handler"].on_get["model.safetensors"] = trickle
    start = time.time()
    refused(lambda: from_pretrained("org/tiny"), "model.safetensors", "HF_HUB_DOWNLOAD_TIMEOUT")
    assert time.time() - start < 6
    blobs = hub["home"] / "hub" / "models--org--tiny" / "blobs"
    partial = [n for n in os.listdir(blobs) if n.endswith(".incomplete")]
    assert len(partial) == 1  # kept for the next run to resume
    hub["handler"].on_get.clear()
    from_pretrained("org/tiny")
    assert not [n for n in os.listdir(blobs) if n.endswith(".incomplete")]
    assert any(m == "GET" and "model.safetensors" in p for m, p, _ in hub["handler"].log[-3:])


def test_a_silent_hub_times_out(hub, monkeypatch):
    """A server that accepts the connection and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{s.getsockname()[1]}")
        monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "1")
        start = time.time()
        refused(lambda: from_pretrained("org/tiny"), "within 1 s")
        assert time.time() - start < 6


# -----------------------------------------------------------------------------
# Dataset downloads and --source files

class Trickle(http.server.BaseHTTPRequestHandler):
    body, slow, requests = b"[1, 2, 3]\n" * 10, True, []

    def do_GET(self):
        self.requests.append(self.path)
        try:
            if self.slow:
                trickle(self, self.body)
            else:
                self.send_response(200)
                self.send_header("Content-Length", str(len(self.body)))
                self.end_headers()
                self.wfile.write(self.body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def test_a_trickling_dataset_host_times_out(tmp_path):
    server, url = serve(type("T", (Trickle,), {}))
    try:
        start = time.time()
        refused(lambda: download_file(f"{url}/f.json", str(tmp_path / "c" / "f.json"), timeout=1),
                f"{url}/f.json", error=DataError)
        assert time.time() - start < 6
    finally:
        server.shutdown()
        server.server_close()
    assert os.listdir(tmp_path / "c") == []


@pytest.mark.slow  # a process per killed download
def test_killed_dataset_downloads_leave_no_temporaries(tmp_path):
    handler = type("T", (Trickle,), {"requests": []})
    server, url = serve(handler)
    cache = tmp_path / "cache"
    body = handler.body
    args = (f"{url}/f.json", str(cache / "f.json"), len(body), hashlib.sha256(body).hexdigest())
    code = f"import sys; sys.path.insert(0, {ROOT!r}); from data.datasets import download_file; download_file{args!r}"
    try:
        for run in range(1, 4):
            p = subprocess.Popen([sys.executable, "-c", code])
            deadline = time.time() + 60
            while len(handler.requests) < run and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # a few bytes in
            p.kill()
            p.wait()
        assert len(handler.requests) == 3 and os.listdir(cache)  # the killed runs left partial files ...
        handler.slow = False
        download_file(*args)
    finally:
        server.shutdown()
        server.server_close()
    assert os.listdir(cache) == ["f.json"]  # ... and the next download swept them


def fixture_spec(folder, key="single_eq"):
    """A finetune_cot-layout source whose recorded sizes and hashes are its own files'."""
    rows = [{"question": f"Ann has {i} owls and buys 2. How many owls?", "answer": str(i + 2)} for i in range(6)]
    os.makedirs(os.path.join(folder, "splits"))
    with open(os.path.join(folder, f"{key}.json"), "w") as f:
        json.dump(rows, f)
    with open(os.path.join(folder, "splits", f"{key}__default.json"), "w") as f:
        json.dump({"train": [0, 1, 2, 3], "test": [4, 5]}, f)
    files = []
    for spec_file in DATASETS[key].files:
        data = open(os.path.join(folder, spec_file.name), "rb").read()
        files.append(dataclasses.replace(spec_file, size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    return dataclasses.replace(DATASETS[key], n_train=4, n_test=2, files=tuple(files))


def test_a_modified_source_file_is_refused_unless_allowed(tmp_path, monkeypatch):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    spec = fixture_spec(src)
    monkeypatch.setitem(DATASETS, "single_eq", spec)
    prepare_main(["--task", "single_eq", "--source", src, "--out_dir", out])  # the recorded files: fine
    path = os.path.join(src, "single_eq.json")
    text = open(path).read().replace('"answer": "2"', '"answer": "3"')  # a changed answer
    with open(path, "w") as f:
        f.write(text)
    now = hashlib.sha256(text.encode()).hexdigest()
    msg = refused(lambda: prepare_main(["--task", "single_eq", "--source", src, "--out_dir", out, "--overwrite"]),
                  path, now, spec.files[0].sha256, "--allow_modified_source", error=DataError)
    assert "sha256" in msg
    prepare_main(["--task", "single_eq", "--source", src, "--out_dir", out, "--overwrite",
                  "--allow_modified_source"])
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["modified_source_files"] == ["single_eq.json"]


def test_a_cached_download_that_fails_its_hash_says_so(tmp_path, monkeypatch):
    """The cached copy does not match its recorded sha256 and the host is unreachable: the
    error says the cached file failed its check, not only that the host is unreachable."""
    spec = fixture_spec(str(tmp_path / "src"))
    cache = tmp_path / "cache"
    shutil.copytree(tmp_path / "src", cache / "finetune_cot")
    cached = cache / "finetune_cot" / "single_eq.json"
    cached.write_text(cached.read_text().replace("owls", "owlz"))  # the same size, other bytes
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(datasets.URL_ENV, f"http://127.0.0.1:{port}")
    refused(lambda: datasets.fetch(spec, str(cache)), "single_eq.json", "sha256", error=DataError)


@pytest.mark.parametrize("cached", [False, True])
def test_a_file_of_another_size_is_refused_by_its_sha256_check_named(tmp_path, monkeypatch, cached):
    """A download (or a cached copy, the host unreachable) of another size than the recorded
    file: the refusal said only "N bytes, expected M", not which recorded check refused it."""
    spec = fixture_spec(str(tmp_path / "src"))
    recorded = spec.files[0]
    folder = tmp_path / "cache" / "finetune_cot"
    shutil.copytree(tmp_path / "src", folder)
    body = b"[1, 2, 3]\n"  # shorter than the recorded file
    if cached:
        (folder / recorded.name).write_bytes(body)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
    else:
        (folder / recorded.name).unlink()
        server, url = serve(type("T", (Trickle,), {"requests": [], "slow": False, "body": body}))
    monkeypatch.setenv(datasets.URL_ENV, url)
    try:
        refused(lambda: datasets.fetch(spec, str(tmp_path / "cache")), recorded.name, "sha256", recorded.sha256,
                f"{len(body)} bytes, expected {recorded.size:,}", error=DataError)
    finally:
        if not cached:
            server.shutdown()
            server.server_close()
    assert cached == (folder / recorded.name).exists()  # a download that fails is not kept
