"""
Small helpers shared by every script: device and DDP setup, seeding, the learning-rate
schedule, atomic file writes, and the flags every training script takes.
"""

import json
import math
import os
import random
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Runtime:
    device: str  # "cuda:0", "mps", "cpu"
    device_type: str  # "cuda", "mps", "cpu"
    ddp: bool
    rank: int
    local_rank: int
    world_size: int
    autocast: object  # a context manager: bf16 autocast on CUDA, nothing elsewhere

    @property
    def master(self):
        return self.rank == 0


def setup_runtime(device="auto", dtype="auto"):
    """Pick the device (cuda > mps > cpu unless told), and join the DDP group when the
    script was started by torchrun (which sets RANK / WORLD_SIZE / LOCAL_RANK)."""
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    device_type = device.split(":")[0]
    if device_type == "cuda":
        if ddp:
            device = f"cuda:{local_rank}"
        elif device == "cuda":  # set_device wants an index: "cuda" means the current one
            device = f"cuda:{torch.cuda.current_device()}"
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if ddp:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device_type == "cuda")
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    return Runtime(device, device_type, ddp, rank, local_rank, world_size, autocast)


def cleanup_runtime(rt):
    if rt.ddp:
        dist.destroy_process_group()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def print0(rt, *args, **kwargs):
    """Print on the master process only."""
    if rt is None or rt.master:
        print(*args, **kwargs, flush=True)


def die(script, message):
    """One clear message on stderr and a non-zero exit."""
    sys.exit(f"{script}: error: {message}")


def cosine_lr(step, max_steps, lr, warmup_steps, min_lr_frac=0.1):
    """Linear warmup, then cosine decay to min_lr_frac * lr."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def atomic_write_text(path, text):
    """Write to a temporary name in the same folder, then rename: never a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def apply_preset(args, presets):
    """Fill every flag left unset (None) from the chosen --preset."""
    for k, v in presets[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def add_runtime_args(parser):
    """The flags every script shares: seed, device, precision, compile."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--seed", type=int, default=1337, help="random seed (same seed, same numbers)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto = bf16 autocast on CUDA, float32 elsewhere")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    return g
