"""Data-parallel training with real processes: torchrun (and ``train --nproc``) launching 2 gloo ranks on the CPU.

The oracle is the single-process run: with the same global batch, 2 ranks must follow its trajectory (the
weights after an epoch within 1e-4, the test accuracy within 0.1 point). The data are a slice of the real MNIST
with a batch size chosen so that every edge of the batch split is exercised: an odd global batch (shares of
101 and 100) and a last batch of one sample (rank 1's share is empty).

Which process writes what is observed, not assumed: a ``sitecustomize`` audit hook in every rank logs each
file it opens for writing, creates, renames or removes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mnistlab.data import FILE_STEMS, write_idx
from mnistlab.distributed import shard, strip_nproc

N_TRAIN, BATCH = 201 * 30 + 1, 201   # 31 steps; the last batch holds one sample
SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.integration

AUDIT = textwrap.dedent("""
    import atexit, json, os, sys
    _root, _log = os.environ["AUDIT_ROOT"], os.environ["AUDIT_LOG"]
    _seen = []
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _note(event, path):
        path = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
        if path and os.path.abspath(path).startswith(_root):
            _seen.append([event, os.path.abspath(path)])

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            if (mode and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE:
                _note(event, path)
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
            _note(event, args[0])

    def _dump():
        with open(f"{_log}.{os.environ.get('RANK', 'none')}.{os.getpid()}", "w") as fh:
            json.dump(_seen, fh)

    if "RANK" in os.environ:
        sys.addaudithook(_hook)
        atexit.register(_dump)
""")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, mnist) -> Path:
    """The first N_TRAIN training and 2,000 test images of MNIST, as IDX files."""
    out = tmp_path_factory.mktemp("mnist-slice")
    arrays = {"train_images": mnist.train.images[:N_TRAIN], "train_labels": mnist.train.labels[:N_TRAIN],
              "test_images": mnist.test.images[:2000], "test_labels": mnist.test.labels[:2000]}
    for role, array in arrays.items():
        write_idx(out / FILE_STEMS[role], array)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """A working folder (audited), the sitecustomize folder, the registry and the data."""
    root = tmp_path_factory.mktemp("ddp")
    hooks = root / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(AUDIT)
    work = root / "work"
    work.mkdir()
    return {"root": root, "hooks": hooks, "work": work, "registry": root / "registry.sqlite", "data": data_dir}


def _env(world: dict[str, Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=os.pathsep.join([str(world["hooks"]), str(SRC)]), OMP_NUM_THREADS="1",
               AUDIT_ROOT=str(world["work"]), AUDIT_LOG=str(world["root"] / "audit"))
    return env


def _train_args(world: dict[str, Path], out: Path, *, epochs: int = 1) -> list[str]:
    return ["train", "mlp", "--epochs", str(epochs), "--batch-size", str(BATCH), "--precision", "fp32",
            "--data-dir", str(world["data"]), "--out", str(out), "--registry", str(world["registry"])]


def _torchrun(world: dict[str, Path], *args: str, nodes: str = "--standalone") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", nodes, "--nproc-per-node", "2", "-m", "mnistlab", *args]
    return subprocess.run(command, cwd=world["work"], env=_env(world), capture_output=True, text=True, timeout=300)


def _mnistlab(world: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mnistlab", *args], cwd=world["work"], env=_env(world),
                          capture_output=True, text=True, timeout=300)


def _weights(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(run / "model.safetensors")


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)


def _audit(world: dict[str, Path]) -> dict[str, list[list[str]]]:
    """Rank -> what it wrote under the working folder (and clears the logs)."""
    found: dict[str, list[list[str]]] = {}
    for log in world["root"].glob("audit.*"):
        rank = log.name.split(".")[1]
        found.setdefault(rank, []).extend(json.loads(log.read_text()))
        log.unlink()
    return found


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[int, Path]:
    """The oracle: the same runs in one process (1 and 2 epochs), through the library."""
    import mnistlab

    root = tmp_path_factory.mktemp("single")
    runs = {}
    for epochs in (1, 2):
        run = mnistlab.train("mlp", epochs=epochs, batch_size=BATCH, precision="fp32", data_dir=data_dir,
                             run_dir=root / f"e{epochs}", registry=False,
                             progress=False, threads=1)
        runs[epochs] = run.path
    return runs


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_shares_partition_every_batch_and_their_weights_give_the_global_mean() -> None:
    from mnistlab.distributed import Context

    values = np.random.default_rng(0).normal(size=300)   # stand-ins for per-sample gradients
    for world_size in (1, 2, 3, 4):
        for total in (1, 2, 3, 7, 200, 201):
            covered, averaged = [], 0.0
            for rank in range(world_size):
                ctx = Context(rank=rank, world_size=world_size, local_rank=rank, backend="gloo", device="cpu",
                              nnodes=1)
                start, stop, factor = shard(ctx, total)
                if factor:
                    covered.extend(range(start, stop))
                else:
                    assert (start, stop) == (0, 1)   # an empty share runs one sample with weight 0
                # What DDP computes: the mean over ranks of each rank's scaled mean.
                averaged += factor * values[start:stop].mean() / world_size
            assert covered == list(range(total))     # disjoint, contiguous, complete, in order
            assert averaged == pytest.approx(values[:total].mean(), abs=1e-12)


def test_strip_nproc() -> None:
    assert strip_nproc(["train", "mlp", "--nproc", "2", "--epochs", "1"]) == ["train", "mlp", "--epochs", "1"]
    assert strip_nproc(["train", "--nproc=3", "mlp"]) == ["train", "mlp"]


@pytest.mark.parametrize("flag", ["--n", "--np", "--npr", "--npro", "--nproc"])
def test_strip_nproc_removes_what_argparse_takes_for_nproc(flag: str) -> None:
    # The oracle is the CLI's own parser: whatever it reads as --nproc (argparse accepts unambiguous
    # abbreviations) must not reach the ranks, or each rank refuses to start as "already one rank".
    from mnistlab.cli.parser import build_parser

    parser = build_parser()
    for argv in (["train", "mlp", flag, "2", "--epochs", "1"], ["train", "mlp", f"{flag}=2", "--epochs", "1"]):
        assert parser.parse_args(argv).nproc == 2
        stripped = parser.parse_args(strip_nproc(argv))
        assert stripped.nproc is None and (stripped.model, stripped.epochs) == ("mlp", 1)
    assert strip_nproc(["train", "mlp", "--nope=1", "--out", "n"]) == ["train", "mlp", "--nope=1", "--out", "n"]


@pytest.fixture(scope="module")
def ddp_run(world: dict[str, Path]) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One epoch on 2 ranks launched by torchrun (read-only use: copy it to change it)."""
    out = world["work"] / "ddp-e1"
    return out, _torchrun(world, *_train_args(world, out))


def test_two_gloo_ranks_follow_the_single_process_trajectory_and_only_rank_0_writes(
        world: dict[str, Path], single: dict[int, Path], ddp_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, done = ddp_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert _max_diff(out, single[1]) <= 1e-4
    ddp, one = _metrics(out), _metrics(single[1])
    assert abs(ddp["test_accuracy"] - one["test_accuracy"]) <= 0.001
    assert ddp["world_size"] == 2
    assert ddp["environment"]["distributed"] == {"world_size": 2, "backend": "gloo", "nnodes": 1}
    assert json.loads((out / "config.json").read_text())["environment"]["distributed"]["world_size"] == 2
    assert done.stdout.count("run directory:") == 1  # rank 0 alone prints the result
    wrote = _audit(world)
    assert any(path.startswith(str(out)) for _event, path in wrote["0"])   # the audit does see rank 0's files
    assert wrote.get("1", []) == []                                         # rank 1 wrote nothing at all
    assert [p.name for p in world["work"].iterdir()] == ["ddp-e1"]         # no default runs/ folder either
    import sqlite3

    with sqlite3.connect(world["registry"]) as db:
        paths = [row[0] for row in db.execute("SELECT path FROM runs")]
    assert paths == [str(out.resolve())]                                    # one registry row


def test_nproc_resumes_under_ddp_bit_exactly(world: dict[str, Path], single: dict[int, Path],
                                            ddp_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    first = world["root"] / "resumed"
    assert ddp_run[1].returncode == 0
    shutil.copytree(ddp_run[0], first)
    done = _mnistlab(world, "train", "--resume", str(first), "--epochs", "2", "--nproc", "2",
                     "--registry", str(world["registry"]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1
    history = json.loads((first / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert _max_diff(first, single[2]) <= 1e-4
    straight = world["root"] / "straight"
    assert _torchrun(world, *_train_args(world, straight, epochs=2)).returncode == 0
    assert _max_diff(first, straight) == 0.0        # every rank restored the same checkpoint and RNG states
    _audit(world)


def test_selective_backprop_chooses_over_the_global_batch(world: dict[str, Path], data_dir: Path,
                                                          tmp_path: Path) -> None:
    """Two ranks choose the uncertain half of each *global* batch, as one process does: the trajectory of the
    same run in one process (the short last batch of one sample leaves rank 1 an empty share)."""
    import mnistlab

    flags = ("--backprop-fraction", "0.5", "--epoch-fraction", "0.9")
    out = world["root"] / "selective"
    done = _torchrun(world, *_train_args(world, out), *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    one = mnistlab.train("mlp", epochs=1, batch_size=BATCH, precision="fp32", data_dir=data_dir,
                         run_dir=tmp_path / "one", registry=False, progress=False, threads=1,
                         backprop_fraction=0.5, epoch_fraction=0.9)
    assert _max_diff(out, one.path) <= 1e-4
    assert abs(_metrics(out)["test_accuracy"] - _metrics(one.path)["test_accuracy"]) <= 0.001
    # `fast` (BatchNorm: per-rank statistics, so close to one process, not equal), through a last batch that
    # leaves rank 1 nothing: it trains one row with weight 0 and frozen statistics, and the run completes.
    args = ["train", "fast", "--epochs", "1", "--batch-size", str(BATCH), "--precision", "fp32",
            "--data-dir", str(world["data"]), "--registry", str(world["registry"]), *flags]
    done = _torchrun(world, *args, "--out", str(world["root"] / "fast-selective"))
    assert done.returncode == 0, done.stderr[-3000:]
    alone = mnistlab.train("fast", epochs=1, batch_size=BATCH, precision="fp32", data_dir=data_dir,
                           run_dir=tmp_path / "fast-one", registry=False, progress=False, threads=1,
                           backprop_fraction=0.5, epoch_fraction=0.9)
    ddp, single = _metrics(world["root"] / "fast-selective"), _metrics(alone.path)
    assert ddp["status"] == "completed" and ddp["test_accuracy"] > 0.8, (ddp["test_accuracy"], single["test_accuracy"])
    assert abs(ddp["test_accuracy"] - single["test_accuracy"]) <= 0.02, (ddp["test_accuracy"], single["test_accuracy"])
    _audit(world)


SHARE_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from mnistlab import distributed
    from mnistlab.training import lowest_rows
    distributed.setup(torch.device("cpu"))
    ctx = distributed.current()
    out = {}
    for total in (7, 2, 3, 256):  # shares 3/2/2, then 1/1/0, 1/1/1 and 86/85/85
        top = torch.sin(torch.arange(total, dtype=torch.float32) * 1.7) + 1  # the same on every rank
        start, stop, factor = distributed.shard(ctx, total)
        mine = top[start:stop] if factor else top.new_empty(0)
        rows, weight = distributed.least_certain_share(ctx, mine, total=total, fraction=0.5, lowest=lowest_rows)
        out[total] = {"rows": (rows + start).tolist() if weight else [], "weight": weight, "start": start}
    json.dump(out, open(sys.argv[1] + f".{ctx.rank}", "w"))
    distributed.shutdown()
""")


def test_least_certain_share_partitions_one_processs_choice_over_uneven_shares(tmp_path: Path) -> None:
    """Three real gloo ranks, shares of unequal size and an empty one: the ranks' rows together are exactly
    lowest_rows over the whole batch (the single-process choice), each rank's weight is world * n / N, and the
    weights sum to the world size, so DDP's average is the chosen rows' mean gradient."""
    import torch

    from mnistlab.training import lowest_rows

    script = tmp_path / "share.py"
    script.write_text(SHARE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
                           str(script), str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{rank}").read_text()) for rank in range(3)]
    for total in ("7", "2", "3", "256"):
        top = torch.sin(torch.arange(int(total), dtype=torch.float32) * 1.7) + 1
        want = lowest_rows(top, 0.5).tolist()
        got = sorted(row for rank in ranks for row in rank[total]["rows"])
        assert got == want, total
        for rank in ranks:
            assert rank[total]["weight"] == pytest.approx(3 * len(rank[total]["rows"]) / len(want))
        assert sum(rank[total]["weight"] for rank in ranks) == pytest.approx(3.0)
    assert ranks[2]["2"]["weight"] == 0.0  # the empty share: no rows, weight 0


def test_sigterm_to_the_torchrun_group_leaves_a_consistent_run(world: dict[str, Path]) -> None:
    out = world["root"] / "stopped"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "mnistlab", *_train_args(world, out, epochs=200)]
    proc = subprocess.Popen(command, cwd=world["work"], env=_env(world), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "history.json").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert (out / "history.json").exists(), "no epoch completed"
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    metrics = _metrics(out)
    assert metrics["status"] == "interrupted"
    history = json.loads((out / "history.json").read_text())
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert metrics["epochs_completed"] == len(history) == manifest["epoch"] >= 1
    assert not (out / ".owner").exists()
    _audit(world)


def test_two_nodes_with_a_c10d_rendezvous(world: dict[str, Path], single: dict[int, Path]) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = world["root"] / "two-nodes"
    nodes = []
    for rank in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                   "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                   "--rdzv-id", "mnistlab-test", "-m", "mnistlab", *_train_args(world, out)]
        nodes.append(subprocess.Popen(command, cwd=world["work"], env=_env(world), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert _metrics(out)["environment"]["distributed"] == {"world_size": 2, "backend": "gloo", "nnodes": 2}
    assert _max_diff(out, single[1]) <= 1e-4
    _audit(world)
