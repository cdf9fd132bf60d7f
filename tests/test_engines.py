"""The sharded engines on CPU, two real processes over gloo through ``accelerate launch``: FSDP2
(full sharding and SHARD_GRAD_OP) and DeepSpeed ZeRO-2 / ZeRO-3 train the tiny real-architecture
backbones like DDP, read the grounding map as an unsharded model does, checkpoint, and resume
exactly; a checkpoint moves to another number of processes (docs/distributed.md).

Each engine runs once straight to step 4 (``tests/engine_probe.py``: the grounding probe, then
``segros train``'s Trainer, saving at steps 2 and 4); a copy of its run folder with only the step-2
checkpoint (what a run killed after that checkpoint leaves) is resumed to step 4 through
``segros train --resume``, and must end with the same weights, bit for bit.

Tolerances: against DDP on the same two processes (same data shards, same per-process random
draws) the losses of the first four steps agree to 1e-5 relative: sharding only changes the
order of floating-point reductions. A single process is no reference: its random draws differ
(the plan generator is seeded per process). The grounding read must be equal (0 difference).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from segros.data.sampling import ShardedOrder, reshard_states
from segros.shipped import CONFIGS as SHIPPED
from segros.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("engine_probe.py")
CONFIGS = {b: SHIPPED / b / "tiny-segros.yaml" for b in ("openuni", "showo", "harmon", "bagel")}
STEPS = ["run.max_steps=4", "run.save_every=2", "optim.schedule_steps=4", "run.picture_every=0",
         "run.progress=off", "logging.tensorboard=false", "run.log_every=1"]  # fmt: skip
FSDP2 = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "NO_WRAP"]
ENGINES = {
    "ddp": ["--multi_gpu"],
    "fsdp2": [*FSDP2, "--fsdp_reshard_after_forward", "true"],  # FULL_SHARD
    "fsdp2-grad-op": [*FSDP2, "--fsdp_reshard_after_forward", "false"],  # SHARD_GRAD_OP
    "zero2": ["--use_deepspeed", "--deepspeed_config_file", "{zero2}"],
    "zero3": ["--use_deepspeed", "--deepspeed_config_file", "{zero3}"],
}


def deepspeed_config(stage: int) -> dict:
    """Values left ``auto`` come from the segros config; ZeRO-3 partitions even the tiny parameters."""
    zero = {"stage": stage} | ({"stage3_param_persistence_threshold": 0} if stage == 3 else {})
    auto = ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps",
            "gradient_clipping")  # fmt: skip
    return {"zero_optimization": zero} | dict.fromkeys(auto, "auto")


@pytest.fixture(scope="session")
def launch_env(tmp_path_factory):
    """Environment of the launches: DeepSpeed's CPU accelerator, and one folder for the comm op
    DeepSpeed compiles on first use (~30 s), kept for the session (or the caller's, if set)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(tmp_path_factory.mktemp("torch_extensions")))
    folder = tmp_path_factory.mktemp("deepspeed_configs")
    for stage in (2, 3):
        (folder / f"zero{stage}.json").write_text(json.dumps(deepspeed_config(stage)))
    env["SEGROS_TEST_DS"] = str(folder)
    return env


def accelerate(env: dict, engine: str, *args: str) -> subprocess.CompletedProcess:
    ds = env["SEGROS_TEST_DS"]
    flags = [f.format(zero2=f"{ds}/zero2.json", zero3=f"{ds}/zero3.json") for f in ENGINES[engine]]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", *flags, *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def straight_run(env: dict, engine: str, backbone: str, out: Path) -> dict:
    """Train 4 steps under ``engine`` (checkpoints at 2 and 4) with the probes; their results."""
    accelerate(env, engine, str(PROBE), str(CONFIGS[backbone]), str(out), *STEPS)
    return json.loads((out / "probe.json").read_text())


def killed_after(run: Path, step: int, copy: Path) -> Path:
    """A copy of ``run`` as a run killed right after its step-``step`` checkpoint leaves it."""
    shutil.copytree(run, copy)
    for later in ckpt.checkpoints_dir(copy).glob("step-*"):
        if int(later.name.split("-")[1]) > step:
            shutil.rmtree(later)
    (ckpt.checkpoints_dir(copy) / "latest").write_text(f"step-{step}\n")
    (copy / "train_summary.json").unlink()
    return copy


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].numel())


@pytest.fixture(scope="module")
def ddp_openuni(launch_env, tmp_path_factory):
    """The unsharded reference: the tiny OpenUni under DDP on the same two processes."""
    return straight_run(launch_env, "ddp", "openuni", tmp_path_factory.mktemp("ddp") / "run")


CASES = [
    ("fsdp2", "openuni"),
    ("fsdp2", "showo"),
    ("fsdp2", "harmon"),
    ("fsdp2", "bagel"),
    ("fsdp2-grad-op", "openuni"),
    ("zero2", "openuni"),
    ("zero3", "openuni"),
]


@pytest.mark.parametrize(("engine", "backbone"), CASES, ids=[f"{e}-{b}" for e, b in CASES])
def test_sharded_engine_trains_like_ddp_grounds_alike_and_resumes_exactly(
    engine, backbone, launch_env, ddp_openuni, tmp_path
):
    run = tmp_path / "straight"
    probe = straight_run(launch_env, engine, backbone, run)
    assert probe["engine"] == engine.split("-")[0]  # really sharded (accelerate on CPU ran DDP)
    g = probe["grounding"]
    print(f"{engine} {backbone}: grounding max |diff| {g}")
    assert g["text_emb_norm"] > 0
    assert g["text_emb"] == 0 and g["image_emb"] == 0 and g["scores"] == 0
    if backbone == "openuni":
        ref = torch.tensor(ddp_openuni["losses"])
        losses = torch.tensor(probe["losses"])
        rel = float(((losses - ref).abs() / ref.abs()).max())
        print(f"{engine}: losses {probe['losses']} vs DDP {ddp_openuni['losses']}: max rel diff {rel:.2e}")
        assert rel < 1e-5

    resumed = killed_after(run, 2, tmp_path / "resumed")
    accelerate(launch_env, engine, "-m", "segros.cli", "train", "--config", str(CONFIGS[backbone]),
               "--out", str(resumed), "--resume", *STEPS)  # fmt: skip
    final = ckpt.latest_checkpoint(resumed)
    assert final is not None and final.name == "step-4"
    diff = max_weight_difference(run / "checkpoints/step-4", final)
    summary = json.loads((resumed / "train_summary.json").read_text())
    print(f"{engine} {backbone}: resumed 2->4 vs straight 4: max |weight diff| {diff}, "
          f"final loss {summary['final_loss']} vs {probe['losses'][-1]}")  # fmt: skip
    assert diff == 0.0
    assert summary["final_loss"] == probe["losses"][-1]
    state = ckpt.load_trainer_state(final)
    assert state["engine"] == probe["engine"] and state["world_size"] == 2
    if engine.startswith("zero"):
        check_deepspeed_integrity(final, launch_env)


def test_lora_under_ddp_writes_the_frozen_base_once(launch_env, tmp_path):
    """Two processes (DDP) train Show-o's LoRA adapter: the main process writes the base weights
    at the first checkpoint and hard-links them into the next; both load, with different adapters."""
    from segros.backbones.registry import load_backbone

    run = tmp_path / "run"
    accelerate(launch_env, "ddp", "-m", "segros.cli", "train", "--config", str(CONFIGS["showo"]),
               "--out", str(run), *STEPS, "lora.rank=4")  # fmt: skip
    two, four = (run / f"checkpoints/step-{s}" for s in (2, 4))
    assert ckpt.load_trainer_state(four)["world_size"] == 2
    assert (two / "model.safetensors").stat().st_ino == (four / "model.safetensors").stat().st_ino
    adapters = [load_file(str(c / "adapter/adapter_model.safetensors")) for c in (two, four)]
    assert any(not torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    assert all(load_backbone(c) is not None for c in (two, four))


def check_deepspeed_integrity(folder: Path, env: dict) -> None:
    """A DeepSpeed checkpoint missing a process's optimizer partition, or with one cut short, is
    not intact; a DeepSpeed checkpoint does not resume on one process (refused, saying why)."""
    assert ckpt.checkpoint_problem(folder) is None
    part = folder / "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in (ckpt.checkpoint_problem(folder) or "")
    part.unlink()
    assert "is missing" in (ckpt.checkpoint_problem(folder) or "")
    part.write_bytes(data)
    cmd = [sys.executable, "-m", "segros.cli", "train", "--out", str(folder.parent.parent), "--resume",
           "--config", str(CONFIGS["openuni"]), *STEPS[:1]]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "resumes only on the same" in proc.stderr, proc.stderr[-3000:]


def test_fsdp_checkpoint_resumes_on_one_process_by_global_sample_count(launch_env, tmp_path):
    """Two processes (FSDP2) to step 2, then one process (no launcher) to step 4: the data order
    continues where the pair stopped (16 records read, 8 by each), and the weights and optimizer
    state load from the gathered files."""
    run = tmp_path / "run"
    accelerate(launch_env, "fsdp2", "-m", "segros.cli", "train", "--config", str(CONFIGS["openuni"]),
               "--out", str(run), *STEPS, "run.max_steps=2")  # fmt: skip
    two = torch.load(run / "checkpoints/step-2/rank-1.pt", weights_only=True)["t2i"]["order"]
    assert (two["world_size"], two["position"]) == (2, 2 * 4)
    cmd = [sys.executable, "-m", "segros.cli", "train", "--config", str(CONFIGS["openuni"]),
           "--out", str(run), "--resume", *STEPS]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=launch_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "saved by 2 processes, this run has 1" in proc.stderr
    one = torch.load(run / "checkpoints/step-4/rank-0.pt", weights_only=True)["t2i"]["order"]
    assert (one["world_size"], one["epoch"], one["position"]) == (1, 0, 2 * 2 * 4 + 2 * 4)
    # the indices the single process read next are exactly those the pair had not read yet
    order = ShardedOrder(one["length"], one["seed"], one["shuffle"], 0, 1)
    pair = [ShardedOrder(one["length"], one["seed"], one["shuffle"], r, 2) for r in (0, 1)]
    assert set(order.epoch_indices(0)[:16]) == {i for o in pair for i in o.epoch_indices(0)[:8]}
    assert ckpt.load_trainer_state(run / "checkpoints/step-4")["world_size"] == 1


def test_reshard_states_continue_by_global_sample_count():
    """From 2 processes at position 5 (10 of the epoch's permutation read) to 3 and to 1; processes
    that drifted apart (bad records) continue from the slowest; every saved process is needed."""
    saved = [ShardedOrder(30, 7, True, r, 2).state_dict() | {"epoch": 1, "position": 5} for r in (0, 1)]
    one = reshard_states(saved, 0, 1)
    assert (one["epoch"], one["position"], one["world_size"]) == (1, 10, 1)
    three = [reshard_states(saved, r, 3) for r in range(3)]
    assert [(s["position"], s["rank"], s["world_size"]) for s in three] == [(3, 0, 3), (3, 1, 3), (3, 2, 3)]
    # 3 ranks x 3 = 9 of the 10 read: the 10th is read again rather than skipped
    orders = [ShardedOrder(30, 7, True, r, 3) for r in range(3)]
    for order, state in zip(orders, three, strict=True):
        order.load_state_dict(state)
    seen = {i for r in (0, 1) for i in ShardedOrder(30, 7, True, r, 2).epoch_indices(1)[:5]}
    nxt = {next(iter(o)) for o in orders}
    assert len(nxt & seen) == 1 and len(nxt) == 3
    drifted = [saved[0], saved[1] | {"position": 7}]
    assert reshard_states(drifted, 0, 1)["position"] == 10
    with pytest.raises(ValueError, match="all 2 saved processes"):
        reshard_states(saved[:1], 0, 1)


def deepspeed_accelerator(config: dict):
    """What configure_deepspeed reads of an Accelerator under DeepSpeed: its real DeepSpeed plugin
    (accelerate's own, built from ``config``), without starting processes."""
    from types import SimpleNamespace

    from accelerate.utils import DeepSpeedPlugin, DistributedType

    plugin = DeepSpeedPlugin(hf_ds_config=config)
    state = SimpleNamespace(deepspeed_plugin=plugin)
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=state)


def test_deepspeed_takes_grad_clip_and_batch_from_the_config_or_refuses_a_mismatch():
    from segros.train.engines import configure_deepspeed

    acc = deepspeed_accelerator(deepspeed_config(3))
    configure_deepspeed(acc, micro_batch=4, grad_clip=0.5)
    config = acc.state.deepspeed_plugin.deepspeed_config
    assert config["gradient_clipping"] == 0.5 and config["train_micro_batch_size_per_gpu"] == 4
    zero = config["zero_optimization"]
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["stage3_param_persistence_threshold"] == 0  # the config's own value is kept
    configure_deepspeed(deepspeed_accelerator(deepspeed_config(2)), micro_batch=4, grad_clip=None)

    clipped = deepspeed_config(2) | {"gradient_clipping": 1.0}
    with pytest.raises(ValueError, match=r"gradient_clipping=1.0 but optim.grad_clip is 0.5"):
        configure_deepspeed(deepspeed_accelerator(clipped), micro_batch=4, grad_clip=0.5)
    with pytest.raises(ValueError, match=r"gradient_clipping=1.0 but optim.grad_clip is None"):
        configure_deepspeed(deepspeed_accelerator(clipped), micro_batch=4, grad_clip=None)
    with pytest.raises(ValueError, match="optimizer"):
        configure_deepspeed(deepspeed_accelerator(clipped | {"optimizer": {"type": "Adam"}}), 4, 1.0)
