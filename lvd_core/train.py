"""Train a compact scan LVD network on synthetic scans of any body model (`lvd train`).

Each step: B synthetic scans (a DataLoader worker makes them: random body, clothing, holes, noise), each
normalised to the canonical frame exactly as a user's scan is, gridded, and P (query point, vertex) pairs
supervised with L1 on the clamped offset clamp(p - v_gt, -c, c) (the paper's target, for a vertex subset).

Query points (the states the descent visits, and the space around them):
55% near the vertex's true position (Gaussian, 2 or 6 cm at 1.7 m), 15% on the segment from its template
position to its true position (the descent starts at the template), 15% at another vertex's true position,
15% uniform in the box.

Resumable: `train_state.pt` beside the checkpoint holds the optimiser and the step; the data stream resumes
at the next sample index, so a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .body import load_body_model
from .canonical import body_kind, canonical_frame, canonical_template, farthest_point_subset, rest_template
from .checkpoints import load_checkpoint, save_checkpoint
from .descent import descend
from .devices import pick_device
from .inputs.grids import COMPACT_BODY
from .nets.compact import CompactScanLVD
from .synth.dataset import BodySampling, SyntheticScans, held_out_set
from .synth.scans import ScanRealism


@dataclass
class TrainConfig:
    body: str = "anny"
    body_path: str | None = None
    out: str = "weights/anny-body-scan"
    subset: int = 1024
    steps: int = 20_000
    batch: int = 4
    pairs: int = 2048
    lr: float = 1e-3
    clamp: float = 0.2  # canonical units (height 1): 34 cm on a 1.7 m body
    yaw_range_deg: float = 50.0  # facing range seen in training; inference tries facings 90 degrees apart
    seed: int = 1
    workers: int = 1
    threads: int = 1
    checkpoint_every: int = 200
    validate_every: int = 1000
    validation_size: int = 16
    minutes: float | None = None  # stop (with a checkpoint) after this much wall time
    device: str = "auto"
    network: dict = field(default_factory=dict)  # CompactScanLVD keyword overrides


# ---------------------------------------------------------------------------------------------------------
# examples


def sample_pairs(
    rng: np.random.Generator, gt: np.ndarray, template: np.ndarray, count: int, box: float
) -> tuple[np.ndarray, np.ndarray]:
    """Query points and their vertices: gt, template (N, 3) canonical -> points (count, 3), vertex ids (count,)."""
    n = len(gt)
    vertex = rng.integers(n, size=count)
    kind = rng.choice(4, size=count, p=[0.55, 0.15, 0.15, 0.15])
    sigma = np.where(rng.uniform(size=count) < 0.5, 0.012, 0.035)[:, None]
    near = gt[vertex] + sigma * rng.normal(size=(count, 3))
    t = rng.uniform(size=(count, 1))
    on_path = template[vertex] + t * (gt[vertex] - template[vertex]) + 0.01 * rng.normal(size=(count, 3))
    other = gt[rng.integers(n, size=count)] + 0.01 * rng.normal(size=(count, 3))
    uniform = rng.uniform(-box, box, size=(count, 3))
    points = np.select([kind[:, None] == k for k in range(4)], [near, on_path, other, uniform])
    return points.astype(np.float32), vertex


class TrainingExamples(torch.utils.data.IterableDataset):
    """(grid (C,R,R,R), points (P,3), vertex ids (P,), targets (P,3)) per synthetic scan, canonical frame."""

    def __init__(self, config: TrainConfig, vertex_ids: np.ndarray, template: np.ndarray, start: int):
        super().__init__()
        self.config, self.vertex_ids, self.template = config, vertex_ids, template
        sampling = BodySampling(yaw_range_deg=config.yaw_range_deg)
        self.scans = SyntheticScans(config.body, config.seed, ScanRealism(), sampling, body_path=config.body_path, start=start)

    def __iter__(self):
        torch.set_num_threads(1)
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        body = self.scans.body
        index = self.scans.start + worker
        while True:  # endless; example i depends only on (seed, i)
            rng = np.random.default_rng([self.config.seed, index, 2])
            yield make_example(self.scans[index], body, self.vertex_ids, self.template, self.config, rng)
            index += workers


def make_example(scan, body, vertex_ids: np.ndarray, template: np.ndarray, config: TrainConfig, rng: np.random.Generator):
    frame = canonical_frame(scan.points, body.up_axis, body_kind(body))
    points_c = frame.to_canonical(scan.points.astype(np.float64))
    gt = frame.to_canonical(scan.vertices_gt[vertex_ids].astype(np.float64)).astype(np.float32)
    queries, vertex = sample_pairs(rng, gt, template, config.pairs, COMPACT_BODY.box_max)
    targets = np.clip(queries - gt[vertex], -config.clamp, config.clamp)
    return (
        torch.from_numpy(COMPACT_BODY.grid(points_c)),
        torch.from_numpy(queries),
        torch.from_numpy(vertex),
        torch.from_numpy(targets.astype(np.float32)),
    )


# ---------------------------------------------------------------------------------------------------------
# validation


def validate(network: CompactScanLVD, config: TrainConfig, vertex_ids: np.ndarray, template: np.ndarray, iterations: int = 10) -> dict:
    """Held-out synthetic scans (fixed seed): subset vertex error after the descent, in millimetres."""
    body = load_body_model(config.body, config.body_path)
    scans = held_out_set(config.body, config.validation_size, sampling=BodySampling(yaw_range_deg=config.yaw_range_deg))
    device = next(network.parameters()).device
    errors = []
    network.eval()
    with torch.no_grad():
        for scan in scans:
            frame = canonical_frame(scan.points, body.up_axis, body_kind(body))
            grid = torch.from_numpy(COMPACT_BODY.grid(frame.to_canonical(scan.points.astype(np.float64))))[None]
            features = network.encode(grid.to(device))
            result = descend(network, features, torch.from_numpy(template)[None].to(device), iterations=iterations)
            predicted = frame.to_input(result.vertices[0].cpu().double().numpy())
            errors.append(np.linalg.norm(predicted - scan.vertices_gt[vertex_ids], axis=1) * 1000)
    network.train()
    errors = np.concatenate(errors)
    return {"mean_mm": float(errors.mean()), "median_mm": float(np.median(errors)), "p90_mm": float(np.percentile(errors, 90))}


# ---------------------------------------------------------------------------------------------------------
# the loop


def _progress(step: int, total: int, loss: float, started: float, first_step: int) -> str:
    rate = (step - first_step) / max(time.time() - started, 1e-9)
    left = (total - step) / max(rate, 1e-9)
    return f"step {step}/{total}  loss {loss:.4f}  {rate:.2f} step/s  left {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"


def build_network(config: TrainConfig) -> tuple[CompactScanLVD, np.ndarray, np.ndarray]:
    """A fresh network for config.body, its vertex subset and its canonical template."""
    body = load_body_model(config.body, config.body_path)
    vertex_ids = farthest_point_subset(rest_template(body), config.subset)
    template = canonical_template(body, vertex_ids)
    network = CompactScanLVD(config.subset, template=template.tolist(), **config.network)
    return network, vertex_ids, template


def train(config: TrainConfig, log=print) -> Path:
    """Train (or resume) and return the checkpoint path. Writes <out>/checkpoint.pt, train_state.pt, log.jsonl."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, state_path = out / "checkpoint.pt", out / "train_state.pt"
    if checkpoint.exists():
        network = load_checkpoint(checkpoint, device="cpu")
        meta = network.checkpoint_metadata
        vertex_ids, template = np.asarray(meta["vertex_ids"]), network.template.numpy()
    else:
        network, vertex_ids, template = build_network(config)
        meta = {}
    network.to(device).train()
    optimiser = torch.optim.Adam(network.parameters(), lr=config.lr)
    step, wall = 0, 0.0
    if state_path.exists() and checkpoint.exists():
        state = torch.load(state_path, weights_only=True, map_location=device)
        optimiser.load_state_dict(state["optimizer"])
        step, wall = int(state["step"]), float(state.get("wall_seconds", 0.0))
        log(f"resuming at step {step}")
    schedule = lambda s: 1.0 if s < config.steps // 2 else max(0.0, 2.0 * (1 - s / config.steps))  # noqa: E731
    examples = TrainingExamples(config, vertex_ids, template, start=step * config.batch)
    loader = torch.utils.data.DataLoader(
        examples, batch_size=config.batch, num_workers=config.workers, persistent_workers=config.workers > 0
    )
    history = out / "log.jsonl"
    started, first_step, loss_sum, loss_count = time.time(), step, 0.0, 0

    def save(metrics: dict | None = None) -> None:
        metadata = dict(meta)
        metadata.update(
            body=config.body, kind=body_kind(load_body_model(config.body, config.body_path)), input="scan",
            vertex_ids=[int(i) for i in vertex_ids], steps=step, clamp=config.clamp,
            yaw_range_deg=config.yaw_range_deg, wall_seconds=round(wall + time.time() - started, 1),
            train_config=asdict(config),
        )  # fmt: skip
        if metrics:
            metadata["validation"] = metrics
        meta.update(metadata)
        save_checkpoint(checkpoint, network, metadata=meta)
        torch.save({"optimizer": optimiser.state_dict(), "step": step, "wall_seconds": meta["wall_seconds"]}, state_path)

    for grids, queries, vertex, targets in loader:
        if step >= config.steps or (config.minutes and time.time() - started > 60 * config.minutes):
            break
        for group in optimiser.param_groups:
            group["lr"] = config.lr * schedule(step)
        features = network.encode(grids.to(device))
        predicted = network.predict_own_offsets(features, queries.to(device), vertex.to(device))
        loss = (predicted - targets.to(device)).abs().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
        if step % 20 == 0:
            log(_progress(step, config.steps, loss_sum / loss_count, started, first_step))
            with history.open("a") as f:
                f.write(json.dumps({"step": step, "loss": loss_sum / loss_count, "seconds": round(wall + time.time() - started, 1)}) + "\n")
            loss_sum, loss_count = 0.0, 0
        if step % config.checkpoint_every == 0:
            save()
        if config.validate_every and step % config.validate_every == 0:
            metrics = validate(network, config, vertex_ids, template)
            log(f"validation at step {step}: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items()))
            with history.open("a") as f:
                f.write(json.dumps({"step": step, "validation": metrics}) + "\n")
            save(metrics)
    save(validate(network, config, vertex_ids, template) if config.validate_every else None)
    log(f"saved {checkpoint} at step {step}")
    return checkpoint



def write_manifest(checkpoint: Path, quality: dict | None = None, notes: str = "") -> Path:
    """manifest.json beside a checkpoint: what it fits, its input, network, data recipe, training, figures, sha256."""
    import hashlib
    import platform

    network = load_checkpoint(checkpoint, device="cpu")
    meta = network.checkpoint_metadata
    config = meta.get("train_config", {})
    manifest = {
        "file": checkpoint.name,
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "size_bytes": checkpoint.stat().st_size,
        "body_model": meta.get("body"),
        "input": "scan (point cloud or mesh), any units and up axis; normalised to Z up, height 1",
        "network": {"class": network.registered_name, "config": network.config(),
                    "parameters": sum(p.numel() for p in network.parameters())},
        "vertex_subset": {"count": len(meta.get("vertex_ids", [])), "how": "farthest-point samples of the rest template"},
        "data_recipe": {
            "generator": "lvd_core.synth.SyntheticScans (ScanRealism defaults: tight clothes, skirts, hair, holes, "
                         "missing soles/head/side, density variation, noise, outliers; hands: objects, wrist cuts)",
            "poses": "lvd_core.synth.poses families with joint limits", "shapes": "anny SimpleShapeDistribution (adults)",
            "facing_yaw_range_deg": meta.get("yaw_range_deg"), "seed": config.get("seed"),
            "grid": "lvd_core.inputs.grids.COMPACT_BODY (32^3, 4 clamped distance channels)",
            "pairs_per_scan": config.get("pairs"), "clamp": meta.get("clamp"),
        },
        "training": {
            "steps": meta.get("steps"), "batch": config.get("batch"), "lr": config.get("lr"),
            "wall_seconds": meta.get("wall_seconds"), "optimizer": "Adam, lr constant then linear decay to 0",
            "hardware": f"{platform.processor() or platform.machine()}, 1 trainer thread + 1 data worker (shared 2-core CI-class machine), no GPU",
        },
        "validation_during_training": meta.get("validation"),
        "quality": quality,
        "notes": notes,
    }  # fmt: skip
    path = checkpoint.parent / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path
