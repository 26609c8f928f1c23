"""
What every script shares, written once: the error boundary (a bad input is one clear line
and a non-zero exit), atomic file writes, presets, progress bars, device and DDP setup,
seeding, the learning-rate schedule and the runtime flags.
"""

import argparse
import copy
import glob
import json
import math
import os
import random
import shutil
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm


class UserError(Exception):
    """Something the user can fix (a missing file, a malformed line, a wrong checkpoint, a
    flag out of range): reported as one line naming the file / line / value, no traceback."""


class CheckpointError(UserError):
    """A missing, unreadable, hostile or wrong-kind checkpoint; the message names the file."""


def run(main):
    """The one error boundary of every script: `if __name__ == "__main__": common.run(main)`.
    A UserError (or a ValueError / OSError from a bad value or path) becomes
    'script.py: error: message' on stderr and exit status 1; so does an allocation that fails
    after check_training_memory let the run start (its estimate is rough)."""
    script = os.path.basename(sys.argv[0])
    try:
        main()
    except (UserError, ValueError, OSError) as e:
        sys.exit(f"{script}: error: {e}")
    except (RuntimeError, MemoryError) as e:
        if not out_of_memory(e):
            raise
        said = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.exit(f"{script}: error: out of memory ({said}); lower the batch flags the script has (--batch_size, "
                 f"--micro_batch_size, --batch_prompts), add --grad_checkpointing, or take a smaller model")


# -----------------------------------------------------------------------------
# Files: written atomically, so that a reader (or a rerun) never sees half a file


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sweep_stale_temporaries(path):
    """Remove `path`.tmpPID files or folders whose process is gone (killed mid-write)."""
    for stale in glob.glob(glob.escape(path) + ".tmp*"):
        pid = stale.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale) if os.path.isdir(stale) else os.remove(stale)


@contextmanager
def atomic_file(path, mode="w"):
    """Open a temporary file beside `path` for writing; on success it is flushed, fsynced
    and renamed over `path` (and the folder fsynced), on any failure it is removed and
    `path` is left as it was. Temporaries of `path` left by dead processes are swept first.
    This is the project's one convention for an unfinished file: it never has its real name."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    _sweep_stale_temporaries(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_folder(folder)


def foreign_entries(folder, outputs):
    """The entries of `folder` that are not among a script's own `outputs` (file names)."""
    return sorted(e for e in os.listdir(folder)
                  if e not in outputs or not os.path.isfile(os.path.join(folder, e)))


@contextmanager
def atomic_folder(path, outputs):
    """The same for a folder of outputs: yields a temporary folder beside `path` to fill; once
    it is complete it takes `path`'s place as a whole. An earlier `path` is renamed aside first
    and removed after, not deleted file by file: whoever reads `path`, or a run killed at any
    moment, finds the old folder or the new one, never a mix of the two (and, for the instant
    between two renames, neither). On a failure the temporary is removed and `path` is left as
    it was. `outputs` names every file the script writes there. The one rule that keeps a
    user's files safe: an existing `path` is replaced only if it holds these files and nothing
    else (a previous run's outputs); a folder that holds anything else is never deleted
    (check_output refuses it before any work; it is checked again here)."""
    path = os.path.abspath(path.rstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _sweep_stale_temporaries(path)
    work = f"{path}.tmp{os.getpid()}"
    new, old = os.path.join(work, "new"), os.path.join(work, "old")
    os.makedirs(new)
    try:
        yield new
        if os.path.exists(path):
            foreign = foreign_entries(path, outputs)
            if foreign:
                raise UserError(f"{path}: now holds {', '.join(foreign)}, which this run did not write; "
                                f"nothing was replaced")
            os.rename(path, old)
        os.rename(new, path)
    except BaseException:
        if os.path.exists(old) and not os.path.exists(path):
            os.rename(old, path)  # the earlier folder goes back where it was
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    _fsync_folder(os.path.dirname(path))


def _same_file(a, b):
    return os.path.realpath(a) == os.path.realpath(b) or (
        os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def _inside(path, folder):
    """Whether `path` lies inside `folder` (both resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path != folder and os.path.commonpath([path, folder]) == folder


def _check_writable(path, folder):
    """A file can be made in `folder` (permissions, a read-only file system): found before any
    work, not when the results are written at the end."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"{path}: cannot be written (making a file in {folder} fails: {e.strerror or e})") from None


def check_output(path, overwrite=False, inputs=(), folder=False, outputs=None):
    """Before any work is done, that writing `path` can succeed and loses nothing:
      - it is none of the run's inputs (files or folders); if it exists, it is in none of the
        input folders; an output folder holds none of the inputs. A script never replaces or
        deletes what it reads.
      - no file stands where a folder must be, and the folder it goes in can be written;
      - an existing one is replaced only with --overwrite;
      - an output folder written as a whole (atomic_folder; `outputs` are its file names)
        holds nothing but those files, --overwrite or not: what the script did not write is
        never deleted."""
    for i in (i for i in inputs if i):
        if _same_file(i, path):
            raise UserError(f"{path}: is also an input of this run; write the output elsewhere")
        if os.path.isdir(i) and os.path.exists(path) and _inside(path, i):
            raise UserError(f"{path}: is in {i}, an input folder of this run; write the output elsewhere")
        if folder and os.path.exists(i) and _inside(i, path):
            raise UserError(f"{path}: holds {i}, an input of this run; write the output elsewhere")
    if os.path.isdir(path) != folder and os.path.exists(path):
        raise UserError(f"{path}: is a {'file' if folder else 'folder'}; a {'folder' if folder else 'file'} "
                        f"is written there")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{path}: cannot be written, {parent} is a file")
    _check_writable(path, parent)
    if folder and os.path.isdir(path):
        _check_writable(path, path)
    if folder and outputs is not None and os.path.isdir(path):
        foreign = foreign_entries(path, outputs)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise UserError(f"{path}: holds {shown}, which this script does not write; choose a new or empty "
                            f"folder (the outputs replace the folder as a whole)")
        present = [f for f in outputs if os.path.exists(os.path.join(path, f))]
        if present and not overwrite:
            raise UserError(f"{path} already holds {', '.join(present)}; pass --overwrite to replace them")
        return
    exists = os.path.exists(path) and (not folder or os.listdir(path))
    if exists and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it")


def check_outputs(outputs, overwrite=False, inputs=()):
    """check_output for each output file of a run ({flag: path}, None where not asked for),
    and that no two of them are the same file (the one written last would be all that is left)."""
    given = [(flag, path) for flag, path in outputs.items() if path]
    for i, (flag, path) in enumerate(given):
        for other, other_path in given[:i]:
            if _same_file(path, other_path):
                raise UserError(f"{other} and {flag} are the same file ({path}); give each its own")
        check_output(path, overwrite, inputs)


def write_text(path, text):
    with atomic_file(path) as f:
        f.write(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path, what="file"):
    if not os.path.exists(path):
        raise UserError(f"{path}: no such {what}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None


# -----------------------------------------------------------------------------
# Flags: --help shows every default; a preset is a named override of some of them


def _shows_default(action):
    d = action.default
    return not (d is None or d is False or d is argparse.SUPPRESS or action.required)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with every default shown in --help and a bad flag reported in one line
    (the usage block is what --help is for)."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every flag's default value."""

    def _format_action(self, action):
        if not action.help and action.option_strings and _shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"  # a flag with no help text still shows its default
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = action.help
        if "%(default)" not in text and _shows_default(action):
            text += " (default: %(default)s)"
        return text


def number(kind=int, low=None, high=None, above=None, below=None):
    """An argparse type: a finite number of `kind`, >= low, <= high, > above, < below (each optional).
    A value out of range is refused at parse time with the flag and the value named."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {text}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be greater than {above}, got {text}")
        if below is not None and value >= below:
            raise argparse.ArgumentTypeError(f"must be less than {below}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


COUNT = number(int, low=1)  # sizes, steps, samples: at least one
NONNEG = number(int, low=0)  # limits where 0 means "none" or "all"
POSITIVE = number(float, above=0)  # learning rates, clips
NONNEG_FLOAT = number(float, low=0)  # coefficients, penalties, temperatures
FRACTION = number(float, low=0, high=1)
HELD_OUT = number(float, low=0, below=1)  # a share held out: 1 would leave nothing to train on
LEARNING_RATE = number(float, above=0, high=10)  # far above any that trains; 1e300 overflows AdamW
# Seeds: numpy takes 32 bits, and lm_training derives each step's batch seed from this one
# (seed * 1,000,003 + step), which torch takes up to 2**64 - 1.
SEED = number(int, low=0, high=2**32 - 1)
# Samples of one question (--k, --auc_samples, --samples_per_question, ...): far more than
# any estimate needs, and few enough that a typo of 10**12 is one line, not a run that never ends.
MAX_SAMPLES = 1000
SAMPLES = number(int, low=1, high=MAX_SAMPLES)


def preset_help(presets):
    return "; ".join(f"{name}: " + (", ".join(f"{k}={v}" for k, v in values.items()) or "the defaults")
                     for name, values in presets.items())


def apply_preset(parser, args, argv, presets):
    """Set the chosen preset's values on every flag the command line did not give. The
    defaults in --help are the default preset; another preset is printed when it applies."""
    given = set(vars(flags_given(parser, argv)))
    chosen = {k: v for k, v in presets[args.preset].items() if k not in given}
    for k, v in chosen.items():
        setattr(args, k, v)
    if chosen:
        print(f"preset {args.preset}: " + ", ".join(f"{k}={v}" for k, v in chosen.items()), flush=True)
    return args


def flags_given(parser, argv):
    """The flags present on the command line (a copy of the parser with no defaults)."""
    quiet = copy.deepcopy(parser)
    stack = [quiet]
    while stack:
        p = stack.pop()
        for action in p._actions:
            action.default = argparse.SUPPRESS
            action.required = False
            if isinstance(action, argparse._SubParsersAction):
                stack += list(action.choices.values())
    return quiet.parse_known_args(argv)[0]


# -----------------------------------------------------------------------------
# Progress: a bar on a terminal, a line every few seconds in a log file


class _LogLines:
    """tqdm redraws its bar with carriage returns; in a log file, write each refresh as a line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s):
        s = s.replace("\r", "").strip()
        if s:
            self.stream.write(s + "\n")

    def flush(self):
        self.stream.flush()


def progress(iterable=None, desc=None, total=None, disable=False, **kw):
    """tqdm, the same everywhere: on a terminal a live bar; when stderr is a file (run.sh's
    log), one line every 30 seconds instead of one per step. (set_postfix redraws at once
    unless given refresh=False: a per-step postfix must pass it.)"""
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, **kw)
    return tqdm(iterable, desc=desc, total=total, disable=disable, file=_LogLines(sys.stderr),
                mininterval=30, ncols=100, **kw)


# -----------------------------------------------------------------------------
# Device, DDP, seeds, schedule


@dataclass
class Runtime:
    device: str  # "cuda:0", "mps", "cpu"
    device_type: str  # "cuda", "mps", "cpu"
    ddp: bool
    rank: int
    local_rank: int
    world_size: int
    autocast: object  # a context manager: bf16 autocast on CUDA, nothing elsewhere
    dtype: torch.dtype  # what the autocast computes in (float32 when it is off)

    @property
    def master(self):
        return self.rank == 0


def check_device(device):
    """--device names a device this machine has: one line if not, rather than torch's traceback."""
    try:
        d = torch.device(device)
    except RuntimeError:
        d = None
    if d is None or d.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {device}: not a device (auto, cpu, cuda, cuda:N or mps)")
    if d.type == "cuda" and not torch.cuda.is_available():
        why = "no GPU is visible" if torch.version.cuda else "this torch is built without CUDA"
        raise UserError(f"--device {device}: CUDA is not available on this machine ({why}); use --device cpu")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if d.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"--device {device}: MPS is not available on this machine; use --device cpu")


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
    check_device(device)
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
    return Runtime(device, device_type, ddp, rank, local_rank, world_size, autocast,
                   torch.bfloat16 if use_bf16 else torch.float32)


def refuse_torchrun():
    """For a script that runs on one process: under torchrun every rank would do the whole job
    and write the same outputs. Checked before setup_runtime joins a process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(f"runs on one process (one GPU or the CPU), not {os.environ['WORLD_SIZE']}; "
                        "start it without torchrun")


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


def cosine_lr(step, max_steps, lr, warmup_steps, min_lr_frac=0.1):
    """Linear warmup, then cosine decay to min_lr_frac * lr (min_lr_frac 1: constant). The
    warmup matters most for pretrained weights: AdamW's first step moves every parameter by
    about the learning rate, whatever its gradient's size."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def check_loss(loss, where=None, last_good=None):
    """A loss that is NaN or infinite ends the run with one line (where: "at step 12"; last_good:
    the checkpoint to go back to), before training on spreads it to every weight. A learning
    rate too high for the model is the usual cause."""
    if not math.isfinite(loss):
        raise UserError(f"loss is {loss}{f' {where}' if where else ''}; try a lower --lr"
                        + (f" (the last good checkpoint is {last_good})" if last_good else ""))


def split_by_question(rows, val_frac, seed):
    """(train, held out): a share val_frac of the questions (at least one, and at least one left
    for training, where there are two) and all their rows held out, so that no question is on
    both sides. A row's question is its "id" (or its prompt, for files without ids)."""
    qids = sorted({r.get("id", r.get("prompt")) for r in rows})
    n_val = min(len(qids) - 1, max(1, int(len(qids) * val_frac))) if val_frac > 0 else 0
    val_q = set(random.Random(seed).sample(qids, n_val))
    train = [r for r in rows if r.get("id", r.get("prompt")) not in val_q]
    val = [r for r in rows if r.get("id", r.get("prompt")) in val_q]
    return train, val


def add_budget_args(group):
    """The sampling budget every script that samples rationales shares, so that no stage judges
    a rationale cut off where another let it finish."""
    group.add_argument("--max_new_tokens", type=COUNT, default=None,
                       help="tokens a rationale may take (default: the task's budget, Task.rationale_tokens: "
                            "64 in the built-in world, 256 for GSM8K and AQuA, 128 for the other datasets)")
    group.add_argument("--batch_prompts", type=COUNT, default=None,
                       help="prompts sampled at once (x samples each; default: as many as fit)")


def add_filter_args(group):
    """--top_k and --top_p, for the scripts whose sampling may filter the model's distribution
    (collection and evaluation; PPO samples unfiltered, so that its log-probs are the sampler's).
    Their types already hold them to what sampler.filter_logits accepts."""
    group.add_argument("--top_k", type=NONNEG, default=None, help="0 or unset: off")
    group.add_argument("--top_p", type=FRACTION, default=None, help="unset or 1: off")


def add_eval_temperature_arg(group):
    """The temperature of the evaluations a training script runs on its way (SFT's last look,
    PPO's checkpoint choice)."""
    group.add_argument("--eval_temperature", type=NONNEG_FLOAT, default=1.0, help="0: greedy")


def add_grad_checkpointing_arg(group):
    """The memory switch of the scripts that fine-tune a model (SFT, the reward model, PPO)."""
    group.add_argument("--grad_checkpointing", action="store_true",
                       help="recompute each block's activations in backward (less memory, ~1/3 more compute)")


def add_runtime_args(parser, compile=True):
    """The flags every script shares: seed, device, precision, and compile where the script
    honours it (pretraining and SFT: lm_training)."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--seed", type=SEED, default=1337, help="random seed (same seed, same numbers)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto = bf16 autocast on CUDA, float32 elsewhere")
    if compile:
        g.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    return g


# -----------------------------------------------------------------------------
# Leftovers of a killed run, and runs that cannot fit in memory


def sweep_dead_temporaries(paths):
    """Remove the temporaries (NAME.tmpPID, atomic_file's and atomic_folder's) that processes
    now gone left beside these outputs of a script (None: not asked for). Called from a
    script's output check, so that a killed run's half-written files go with the rerun even
    where it stops before writing; nothing else beside them is touched."""
    for path in paths:
        if path:
            _sweep_stale_temporaries(os.path.abspath(path.rstrip("/")))


def _read_number(path):
    """The integer a /sys or /proc file holds; None where it is absent, "max" or unreadable."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo(key):
    """A /proc/*/status or /proc/meminfo field in bytes (they are given in kB)."""
    for path in ("/proc/self/status", "/proc/meminfo"):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return None


def available_memory(device):
    """(bytes this process can still allocate on `device`, what sets that limit), or (None, None)
    where it cannot be told (MPS, a system without /proc). On CUDA the GPU's free memory; on the
    CPU the least of the system's available memory, the cgroup's limit less its usage (a
    container's, v2 or v1) and RLIMIT_AS less the address space already taken."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], "free memory of " + str(device)
    if device.type != "cpu":
        return None, None
    found = [(_meminfo("MemAvailable"), "MemAvailable in /proc/meminfo")]
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        cap, used = _read_number(limit), _read_number(usage)
        if cap is not None and cap < 2**60:  # v1 writes "no limit" as a huge number
            found.append((cap - (used or 0), f"the cgroup's limit, {limit}"))
    try:
        import resource  # Unix only
        cap = resource.getrlimit(resource.RLIMIT_AS)[0]
        if cap != resource.RLIM_INFINITY:
            found.append((cap - (_meminfo("VmSize") or 0), "RLIMIT_AS, the address-space limit of ulimit -v"))
    except ImportError:
        pass
    found = [(max(0, n), why) for n, why in found if n is not None]
    return min(found) if found else (None, None)


def training_memory(config, n_params, rows, tokens, bytes_per_value=4, weights_allocated=False,
                    grad_checkpointing=False):
    """{"parameters": bytes, "activations": bytes}: a rough estimate, on the low side, of what
    one training step of a model of `config` (a model.GPTConfig) with n_params parameters
    allocates, on a micro-batch of `rows` sequences of `tokens` tokens:
      - per parameter 16 bytes: the float32 weight, its gradient and AdamW's two moments (12
        where the weights already exist on the device);
      - per token, the values backward keeps (bytes_per_value each: 2 under bf16 autocast):
        in each layer about 8 x n_embd (norms, q/k/v, the attention output, the residual) and
        3 x mlp_hidden (the MLP's inner activations); with grad checkpointing only each layer's
        input, n_embd, and one layer's full set while it is recomputed; a language model's
        logits, vocab_size values, and the loss's float32 log-softmax of them.
    Attention scores are not counted (fused attention does not keep them)."""
    per_layer = 8 * config.n_embd + 3 * config.mlp_hidden
    kept = (config.n_layer * config.n_embd + per_layer) if grad_checkpointing else config.n_layer * per_layer
    per_token = kept * bytes_per_value + (config.vocab_size * (bytes_per_value + 4) if config.kind == "lm" else 0)
    return {"parameters": n_params * (12 if weights_allocated else 16), "activations": rows * tokens * per_token}


def check_training_memory(need, device, model_flags, batch_flags):
    """Refuse, in one line before anything is allocated, a run whose training_memory() (`need`)
    exceeds what the process can have on `device`; the line names the flags to change: the
    model's (when its parameters alone do not fit) or the batch's."""
    have, why = available_memory(device)
    total = sum(need.values())
    if have is None or total <= have:
        return
    flags = model_flags if need["parameters"] > have else batch_flags
    raise UserError(f"{flags}: training needs about {total / 2**30:,.1f} GiB ({need['parameters'] / 2**30:,.1f} GiB "
                    f"for the weights, their gradients and AdamW's state, {need['activations'] / 2**30:,.1f} GiB "
                    f"for one micro-batch's activations), more than the {have / 2**30:,.1f} GiB this process can "
                    f"have on {device} ({why})")


def out_of_memory(e):
    """Whether an exception is an allocation that failed (torch's CPU allocator, CUDA or MPS)."""
    oom = getattr(torch, "OutOfMemoryError", ())
    return isinstance(e, (MemoryError, oom)) or (
        isinstance(e, RuntimeError) and any(s in str(e) for s in ("can't allocate memory", "out of memory")))


def warmup_note(warmup_steps, max_steps):
    """One line to print where the warmup outlasts the run (cosine_lr): the learning rate then
    never reaches --lr, and a run that looks finished was trained at a fraction of it."""
    if warmup_steps > max_steps:
        return (f"note: --warmup_steps {warmup_steps} is longer than the run ({max_steps} steps): the learning rate "
                f"rises to {max_steps / warmup_steps:.1%} of --lr and never decays")
    return None
