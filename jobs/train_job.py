"""Training as a Ray job: Ray Data reads and decodes the training split, Ray Train's TorchTrainer runs
the same optimisation loop as `fastslow train` on every worker, over the worker's shard.

Each worker builds its model, batches and loss with `fastslow.train.run.prepare_training` (the
one-process code) on its shard; `fastslow.train.loop.fit` averages gradients across workers and the
losses gather negatives from every worker. Checkpoints (the fastslow checkpoint format plus the
optimizer state) go through `ray.train.report`; a restarted worker group, or a resubmitted job with
the same run name, resumes from the last one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time

import torch

from fastslow import storage
from fastslow.config import DistillRunConfig, FastRunConfig, SlowRunConfig
from fastslow.errors import FastslowError
from fastslow.log import get_logger
from fastslow.train.artifacts import CHECKPOINT, save_model, write_skipped, write_summary
from fastslow.train.loop import TrainState, worker_batch_size
from fastslow.models.checkpoint import load_checkpoint, read_manifest, save_checkpoint
from fastslow.models.config import dataclass_from_dict, dataclass_to_dict

log = get_logger(__name__)

RUN_CONFIGS = {"fast": FastRunConfig, "slow": SlowRunConfig, "distill": DistillRunConfig}
TRAIN_STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"


# ---- on each worker ------------------------------------------------------------------------------------


def say(line: str) -> None:
    """A progress line in the job's log. Not print(): Ray Train reroutes print to its logger and, with
    stdout redirected as in a Ray worker, also tees it, so every line would appear twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _broadcast_parameters(model: torch.nn.Module) -> None:
    """Every worker starts from rank 0's weights (and buffers)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def _agreed_steps_per_epoch(n: int) -> int:
    """The smallest steps-per-epoch of any worker: collectives need every worker to take every step."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return n
    t = torch.tensor([n], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t)


def _restore(model: torch.nn.Module, cfg) -> tuple[TrainState | None, list[dict]]:
    """The run's last checkpoint, if Ray Train has one (a restarted or resubmitted run), loaded into `model`."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, []
    with checkpoint.as_directory() as d:
        manifest = read_manifest(d)
        if manifest["config"] != dataclass_to_dict(cfg.model):
            raise FastslowError("this run name already has checkpoints of a different model config: "
                                "choose another job.run_name (or out) to start a new run")
        saved, _ = load_checkpoint(d)
        model.load_state_dict(saved.state_dict())
        state = TrainState.from_dict(torch.load(os.path.join(d, TRAIN_STATE_FILE), weights_only=True))
        with open(os.path.join(d, HISTORY_FILE)) as f:
            history = json.load(f)
    return state, history


def _write_checkpoint(directory: str, model, state: TrainState, history: list[dict], summary: dict) -> None:
    save_checkpoint(model, directory, extra={"train_summary": summary})
    storage.write_bytes(storage.join(directory, TRAIN_STATE_FILE), _torch_bytes(state.to_dict()))
    storage.write_text(storage.join(directory, HISTORY_FILE), json.dumps(history))


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _prepare_worker(kind: str, config: dict):
    """This worker's config (with its share of the global batch), its shard as a LoadedSplit, its prepared run."""
    import ray.train
    import ray.train.torch

    from fastslow.data.rows import split_from_rows
    from fastslow.train.run import prepare_training

    cfg = dataclass_from_dict(RUN_CONFIGS[kind], config["config"], where="job config")
    # train.batch_size is the global batch: each of the W workers takes its share, and the losses gather the
    # others' (so W workers optimise what one process with the same config does).
    cfg.train.batch_size = worker_batch_size(cfg.train.batch_size, ray.train.get_context().get_world_size())
    torch.set_num_threads(max(1, int(cfg.job.cpus_per_worker)))  # as many threads as CPUs reserved
    shard = ray.train.get_dataset_shard("train")
    split = split_from_rows(shard.iter_batches(batch_size=256, batch_format="numpy"), config["media"])
    run = prepare_training(kind, cfg, split, progress=False, device=ray.train.torch.get_device())
    return cfg, split, run


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's per-worker function: shard -> LoadedSplit -> prepare_training -> fit; a report per checkpoint."""
    import ray.train

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per report: our progress lines say it
    kind = config["kind"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg, split, run = _prepare_worker(kind, config)
    resume, history = _restore(run.model, cfg)
    _broadcast_parameters(run.model)
    per_epoch = _agreed_steps_per_epoch(run.batches.steps_per_epoch())
    total = cfg.train.epochs * per_epoch
    every = cfg.job.checkpoint_every or per_epoch
    resumed_from: list[int] = []
    if resume is not None:  # every restart so far, this one last
        resumed_from = [*(history[-1].get("resumed_from", []) if history else []), resume.step]
        if rank == 0:
            say(f"resumed from step {resume.step}/{total}")
    if rank == 0:
        say(f"training {kind}: {world} worker(s), {len(split.ids)} items on rank 0, {per_epoch} steps/epoch, "
            f"{total} steps")

    def summary(step: int) -> dict:
        return {"kind": kind, "step": step, "total_steps": total, "workers": world, "resumed_from": resumed_from,
                "final_loss": history[-1]["loss"] if history else None}

    def on_step(record: dict, state) -> None:
        record = {**record, "resumed_from": resumed_from}
        history.append(record)
        step = record["step"]
        if rank == 0 and (step % cfg.job.log_every == 0 or step == total):
            extras = " ".join(f"{k} {record[k]:.4f}" for k in ("loss", "temperature") if k in record)
            say(f"step {step}/{total} epoch {record['epoch']} {extras} samples/s {record['samples_per_s']:.1f}")
        if step % every and step != total:
            # Every step is printed and kept in the history; Ray Train hears of checkpoints only. Its
            # report is a barrier that waits on the controller (about 2 s per call on a 2-core machine),
            # which per step made a tiny model's training 50 to 80 times slower than one process.
            return
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        with tempfile.TemporaryDirectory(prefix="fastslow-ckpt-") as d:
            if rank == 0:
                _write_checkpoint(d, run.model, state(), history, summary(step))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None)

    run.fit(cfg.train, progress=False, resume=resume, steps_per_epoch=per_epoch, on_step=on_step)
    if rank == 0:
        say(f"final checkpoint: {save_model(cfg, run.model, history, summary(total))}")


# ---- on the driver -------------------------------------------------------------------------------------


def resolve_paths(cfg) -> None:
    """Absolute local paths: a job's working directory is a temporary copy, and workers run elsewhere."""
    from cluster.connect import storage_path as absolute

    cfg.out = absolute(cfg.out)
    cfg.data.path = absolute(cfg.data.path) if cfg.data.path else cfg.data.path
    if cfg.data.media_root:
        cfg.data.media_root = absolute(cfg.data.media_root)
    if getattr(cfg, "teacher", ""):
        cfg.teacher = absolute(cfg.teacher)


def _uri(path: str, fs) -> str:
    """A path Ray Train gives back (`bucket/key` on S3) as the URI users pass around."""
    return path if fs is None else f"{storage.S3_PREFIX}{path}"


def check_job(kind: str, cfg) -> None:
    """Refuse a job's settings before Ray starts: those of any run (fastslow.train.run.check_run), then the job's own."""
    from fastslow.train.run import check_run

    teacher = check_run(kind, cfg)  # a wrong setting or teacher fails before any data is read
    if getattr(cfg, "init", ""):
        raise FastslowError(f"init {cfg.init}: the Ray job does not fine-tune a checkpoint yet; run `fastslow train "
                            f"{kind}` with init=... in one process")
    worker_batch_size(cfg.train.batch_size, cfg.job.num_workers)
    if kind == "distill":
        if cfg.transfer.items:
            raise FastslowError("transfer.items: the Ray job does not caption a transfer set yet; run "
                                "`fastslow train distill` with transfer.items and transfer.fast, or leave them empty")
        if teacher.config.vision.image_size != cfg.model.vision.image_size:
            raise FastslowError(f"teacher {cfg.teacher}: its image size {teacher.config.vision.image_size} differs "
                                f"from the student's {cfg.model.vision.image_size}; the job needs them equal")


def _trainer(kind: str, cfg, dataset, media: str):
    """The TorchTrainer of a run: W workers over the dataset's shards, checkpoints under job.storage."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.resources import use_gpu, worker_resources

    job = cfg.job
    gpu = use_gpu(job.use_gpu)
    name = job.run_name or storage.basename(cfg.out)
    fs, storage_path = storage.arrow_filesystem(job.storage or storage.join(cfg.out, "ray_train"))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"kind": kind, "config": dataclass_to_dict(cfg), "media": media},
        scaling_config=ray.train.ScalingConfig(num_workers=job.num_workers, use_gpu=gpu,
                                               resources_per_worker=worker_resources(job.cpus_per_worker, gpu)),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path, storage_filesystem=fs,
                                       failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets={"train": dataset},
    )
    return trainer, name, fs


def run_job(kind: str, cfg, address: str | None = None) -> dict:
    """Read the data with Ray Data, train with TorchTrainer, evaluate the final checkpoint on validation."""
    from actors.training_data import read_split
    from fastslow.data.decode import decode_fit
    from cluster.connect import connect
    from fastslow.models.slow import build_output_vocab
    from fastslow.train.run import validate

    started = time.time()
    check_job(kind, cfg)
    resolve_paths(cfg)
    connect(address)
    dataset, report, media = read_split(cfg.data, cfg.data.train_split, cfg.model.vision.image_size,
                                        decode_fit(cfg.model.vision))
    log.info(report.summary())
    write_skipped(cfg, report)
    if kind == "slow" and cfg.model.output_vocab is None:
        # Every worker's decoder must predict over the same tokens: the vocabulary of all training captions.
        captions = [c for batch in dataset.select_columns(["captions"]).iter_batches(batch_format="numpy")
                    for caps in batch["captions"] for c in json.loads(caps)]
        cfg.model.output_vocab = build_output_vocab(captions, cfg.model.text)
    trainer, name, fs = _trainer(kind, cfg, dataset, media)
    result = trainer.fit()
    final = storage.join(cfg.out, CHECKPOINT)
    model, manifest = load_checkpoint(final)
    summary = {"kind": kind, "run_name": name, "train_items": report.used, "skipped": len(report.problems),
               **manifest["extra"]["train_summary"], "checkpoint": final,
               "ray_checkpoint": _uri(result.checkpoint.path, fs) if result.checkpoint else None}
    summary.update(validate(kind, cfg, model, progress=False))
    summary["seconds"] = round(time.time() - started, 1)
    return write_summary(cfg, summary)
