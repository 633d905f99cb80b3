"""Train a compact scan LVD network on synthetic scans of any body model (`lvd train`).

Each step: B synthetic scans (a DataLoader worker makes them: random body, clothing, holes, noise), each
normalised to the canonical frame exactly as a user's scan is, gridded, and P (query point, vertex) pairs
supervised with L1 on the clamped offset clamp(p - v_gt, -c, c) (the paper's target, for a vertex subset).

Query points (the states the descent visits, and the space around them):
55% near the vertex's true position (Gaussian, 2 or 6 cm at 1.7 m), 15% on the segment from its template
position to its true position (the descent starts at the template), 15% at another vertex's true position,
15% uniform in the box. Vertices: `travel_share` of the pairs draw theirs in proportion to how far it moved
from the template in this pose (plus 5 cm), the rest uniformly: the far-travelling hands and feet, whose
descent fails most (measured: hand vertices 100-180 mm off where the rest of the body is 22-26 mm), are
supervised several times more often without starving the torso.

Resumable: `train_state.pt` beside the checkpoint holds the optimiser and the step; the data stream resumes
at the next sample index, so a resumed run sees the same data as an uninterrupted one. A resumed run keeps the
checkpoint's data recipe and network (RECIPE_FIELDS); steps, minutes, lr, device and threads are the caller's.

Learning rate: constant for the first half of the run, then a linear decay to 0. The run ends at `steps`, or,
when `minutes` is given, at that wall time (whichever comes first): a time-boxed run anneals by its end.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .body import load_body_model
from .canonical import canonical_template, farthest_point_subset, rest_template, scan_frame
from .checkpoints import load_checkpoint, save_checkpoint
from .descent import descend
from .devices import pick_device, training_autocast
from .inputs.frame import NormalizedFrame
from .inputs.grids import GridPreset, compact_grid
from .inputs.scan import load_scan
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
    travel_share: float = 0.5  # pairs whose vertex is drawn by its travel from the template (see sample_pairs)
    yaw_range_deg: float = 50.0  # facing range seen in training; inference tries facings 90 degrees apart
    seed: int = 1
    workers: int = 1
    threads: int = 1
    checkpoint_every: int = 200
    validate_every: int = 1000
    validation_size: int = 16
    minutes: float | None = None  # stop (with a checkpoint) after this much wall time
    device: str = "auto"
    precision: str = "auto"  # of the network's computations in training steps (devices.training_autocast)
    network: dict = field(default_factory=dict)  # CompactScanLVD keyword overrides


# `lvd train --size`: CompactScanLVD keyword overrides of a new run. "large" is for a GPU: 3.2 M parameters (the
# compact one's 0.76 M), a 64^3 grid (0.2 s a scan to build on one core: give it data workers), a 13 MB checkpoint.
# On this project's CPU (1 thread, beside a training job, float32): 0.14 steps/s (compact: 1.5; 2.9 in bfloat16)
# and 2.3 s of LVD a scan (compact: 0.5). Not yet trained.
NETWORK_SIZES = {
    "compact": {},
    "large": dict(resolution=64, channels=[32, 64, 128, 128], global_width=256, embed_width=128, hidden=512, depth=4),
}

# What makes a run's data and network: kept from the checkpoint when a run resumes.
RECIPE_FIELDS = ("body", "body_path", "subset", "batch", "pairs", "clamp", "yaw_range_deg", "seed", "network", "travel_share")


def resumed_config(config: TrainConfig, saved: dict) -> TrainConfig:
    """`config` with the recipe fields of a checkpoint's saved train_config (the caller's budget kept)."""
    return replace(config, **{k: saved[k] for k in RECIPE_FIELDS if k in saved})


def learning_rate_factor(step: int, config: TrainConfig, elapsed_seconds: float) -> float:
    """1 for the first half of the run, then linear to 0 at its end: progress is the fraction of the steps
    (from 0) or, when config.minutes is set, the larger of that and the fraction of this run's time."""
    progress = step / config.steps
    if config.minutes:
        progress = max(progress, elapsed_seconds / (60 * config.minutes))
    return 1.0 if progress < 0.5 else max(0.0, 2.0 * (1.0 - progress))


# ---------------------------------------------------------------------------------------------------------
# examples


TRAVEL_FLOOR = 0.03  # canonical units (5 cm at 1.7 m): a vertex that did not move is still drawn


def sample_pairs(
    rng: np.random.Generator, gt: np.ndarray, template: np.ndarray, count: int, box: float, travel_share: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Query points and their vertices: gt, template (N, 3) canonical -> points (count, 3), vertex ids (count,).

    travel_share of the vertices are drawn with probability proportional to |gt - template| + TRAVEL_FLOOR."""
    n = len(gt)
    travel = np.linalg.norm(gt - template, axis=1) + TRAVEL_FLOOR
    by_travel = rng.uniform(size=count) < travel_share
    vertex = np.where(by_travel, rng.choice(n, size=count, p=travel / travel.sum()), rng.integers(n, size=count))
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


def canonical_view(scan, body) -> tuple[NormalizedFrame, np.ndarray]:
    """A synthetic scan as the network sees it: its canonical frame and its points (N', 3) in that frame, made
    from the points cleaned as `load_scan` cleans a user's point cloud (outliers and small fragments dropped),
    so training and validation see the frames inference makes. Before, the outliers widened the training
    frames' boxes (bodies about 0.85 high in the canonical frame instead of 1), and the descent on cleaned
    held-out scans was 13 mm worse than on the raw ones (measured)."""
    loaded = load_scan((scan.points, None), units="m", up=body.up_axis, kind=body.kind)
    frame = scan_frame(loaded)
    return frame, frame.to_canonical(loaded.points.astype(np.float64))


def network_grid(config: TrainConfig) -> GridPreset:
    """The grid the network of config.network reads (its resolution and box; CompactScanLVD's defaults)."""
    defaults = inspect.signature(CompactScanLVD).parameters
    size = {name: config.network.get(name, defaults[name].default) for name in ("resolution", "box_half_size")}
    return compact_grid(**size)


def make_example(scan, body, vertex_ids: np.ndarray, template: np.ndarray, config: TrainConfig, rng: np.random.Generator):
    frame, points_c = canonical_view(scan, body)
    gt = frame.to_canonical(scan.vertices_gt[vertex_ids].astype(np.float64)).astype(np.float32)
    grid = network_grid(config)
    queries, vertex = sample_pairs(rng, gt, template, config.pairs, grid.box_max, config.travel_share)
    targets = np.clip(queries - gt[vertex], -config.clamp, config.clamp)
    return (
        torch.from_numpy(grid.grid(points_c)),
        torch.from_numpy(queries),
        torch.from_numpy(vertex),
        torch.from_numpy(targets.astype(np.float32)),
    )


# ---------------------------------------------------------------------------------------------------------
# validation


def validate(network: CompactScanLVD, config: TrainConfig, vertex_ids: np.ndarray, template: np.ndarray, iterations: int = 10) -> dict:
    """Held-out synthetic scans (fixed seed): subset vertex error after the descent, in millimetres."""
    body = load_body_model(config.body, config.body_path)
    scans = held_out_set(config.body, config.validation_size, sampling=BodySampling(yaw_range_deg=config.yaw_range_deg),
                         body_path=config.body_path)  # fmt: skip
    device = next(network.parameters()).device
    preset = network_grid(config)
    errors = []
    network.eval()
    with torch.no_grad():
        for scan in scans:
            frame, points_c = canonical_view(scan, body)
            grid = torch.from_numpy(preset.grid(points_c))[None]
            features = network.encode(grid.to(device))
            result = descend(network, features, torch.from_numpy(template)[None].to(device), iterations=iterations)
            predicted = frame.to_input(result.vertices[0].cpu().double().numpy())
            errors.append(np.linalg.norm(predicted - scan.vertices_gt[vertex_ids], axis=1) * 1000)
    network.train()
    errors = np.concatenate(errors)
    return {"mean_mm": float(errors.mean()), "median_mm": float(np.median(errors)), "p90_mm": float(np.percentile(errors, 90))}


# ---------------------------------------------------------------------------------------------------------
# the loop


def _progress(step: int, total: int, loss: float, steps_done: int, elapsed: float, minutes: float | None = None) -> str:
    """One progress line: this run ran `steps_done` steps in `elapsed` seconds; the time left is the
    sooner of the steps left at that rate and the `minutes` deadline."""
    rate = steps_done / max(elapsed, 1e-9)
    left = (total - step) / max(rate, 1e-9)
    if minutes:
        left = max(0.0, min(left, 60 * minutes - elapsed))
    return f"step {step}/{total}  loss {loss:.4f}  {rate:.2f} step/s  left {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"


def build_network(config: TrainConfig) -> tuple[CompactScanLVD, np.ndarray]:
    """A fresh network for config.body and its vertex subset; its template is the subset in the canonical frame."""
    body = load_body_model(config.body, config.body_path)
    vertex_ids = farthest_point_subset(rest_template(body), config.subset)
    template = canonical_template(body, vertex_ids)
    return CompactScanLVD(config.subset, template=template.tolist(), **config.network), vertex_ids


def training_step(network, optimiser, inputs: torch.Tensor, queries: torch.Tensor, vertex: torch.Tensor, targets: torch.Tensor,
                  autocast: torch.dtype | None = None) -> float:  # fmt: skip
    """One optimisation step of a compact network on a batch (on its device): inputs (B, ...), queries (B, P, 3),
    vertex ids (B, P), clamped targets (B, P, 3); the network computed in `autocast` (None: float32), the L1
    loss in float32. Returns the loss."""
    with torch.autocast(inputs.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        predicted = network.predict_own_offsets(network.encode(inputs), queries, vertex)
    loss = (predicted.float() - targets).abs().mean()
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss.item()


def train(config: TrainConfig, log=print) -> Path:
    """Train (or resume) a scan network and return the checkpoint path (see `run_training`)."""
    return run_training(config, build_network, TrainingExamples, validate, "scan", log)


def run_training(config: TrainConfig, build, examples_class, validator, input_kind: str, log=print) -> Path:
    """The training loop of every compact network. Writes <out>/checkpoint.pt, train_state.pt, log.jsonl.

    build(config) -> (fresh network, vertex ids); examples_class(config, vertex_ids, template, start): the
    endless examples (input batch, query points, vertex ids, clamped targets) from sample index start on;
    validator(network, config, vertex_ids, template) -> metrics. A run resumes from <out> when a checkpoint is
    there, with the checkpoint's recipe (RECIPE_FIELDS)."""
    torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    autocast = training_autocast(device, config.precision)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, state_path, history = out / "checkpoint.pt", out / "train_state.pt", out / "log.jsonl"
    if checkpoint.exists():
        network = load_checkpoint(checkpoint, device="cpu")
        meta = network.checkpoint_metadata
        config = resumed_config(config, meta.get("train_config", {}))
        vertex_ids = np.asarray(meta["vertex_ids"])
    else:
        torch.manual_seed(config.seed)
        (network, vertex_ids), meta = build(config), {}
    template = network.template.cpu().numpy()
    network.to(device).train()
    optimiser = torch.optim.Adam(network.parameters(), lr=config.lr)
    # Without train_state.pt (not shipped) a run continues from the checkpoint's step with a fresh optimiser.
    step, wall = int(meta.get("steps", 0)), float(meta.get("wall_seconds", 0.0))
    if state_path.exists() and checkpoint.exists():
        state = torch.load(state_path, weights_only=True, map_location=device)
        optimiser.load_state_dict(state["optimizer"])
        step, wall = int(state["step"]), float(state.get("wall_seconds", 0.0))
        log(f"resuming at step {step}")
    examples = examples_class(config, vertex_ids, template, start=step * config.batch)
    loader = torch.utils.data.DataLoader(
        examples, batch_size=config.batch, num_workers=config.workers, persistent_workers=config.workers > 0
    )
    kind = load_body_model(config.body, config.body_path).kind
    started, first_step, losses = time.time(), step, []

    def save(metrics: dict | None = None) -> None:
        meta.update(
            body=config.body, kind=kind, input=input_kind, vertex_ids=[int(i) for i in vertex_ids], steps=step,
            clamp=config.clamp, yaw_range_deg=config.yaw_range_deg, wall_seconds=round(wall + time.time() - started, 1),
            train_config=asdict(config), device=device.type, precision="bf16" if autocast else "fp32",  # of the latest run
        )  # fmt: skip
        if metrics:
            meta["validation"] = metrics
        save_checkpoint(checkpoint, network, metadata=meta)
        torch.save({"optimizer": optimiser.state_dict(), "step": step, "wall_seconds": meta["wall_seconds"]}, state_path)

    def record(entry: dict) -> None:
        with history.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def validate_and_save() -> None:
        metrics = validator(network, config, vertex_ids, template)
        log(f"validation at step {step}: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items()))
        record({"step": step, "validation": metrics})
        save(metrics)

    for inputs, queries, vertex, targets in loader:
        seconds = time.time() - started
        if step >= config.steps or (config.minutes and seconds > 60 * config.minutes):
            break
        for group in optimiser.param_groups:
            group["lr"] = config.lr * learning_rate_factor(step, config, seconds)
        batch = [t.to(device) for t in (inputs, queries, vertex, targets)]
        loss = training_step(network, optimiser, *batch, autocast)
        step += 1
        losses.append(loss)
        if step % 20 == 0:
            log(_progress(step, config.steps, float(np.mean(losses)), step - first_step, time.time() - started, config.minutes))
            record({"step": step, "loss": float(np.mean(losses)), "seconds": round(wall + time.time() - started, 1)})
            losses = []
        if step % config.checkpoint_every == 0:
            save()
        if config.validate_every and step % config.validate_every == 0:
            validate_and_save()
    if config.validate_every:
        validate_and_save()
    else:
        save()
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
            "grid": f"lvd_core.inputs.grids.compact_grid ({network.resolution}^3, 4 clamped distance channels)",
            "pairs_per_scan": config.get("pairs"), "clamp": meta.get("clamp"),
            "travel_share": config.get("travel_share", 0.0),
        },
        "training": {
            "steps": meta.get("steps"), "batch": config.get("batch"), "lr": config.get("lr"),
            "wall_seconds": meta.get("wall_seconds"), "optimizer": "Adam, lr constant then linear decay to 0",
            "precision": f"{meta.get('precision', 'fp32')} (last segment; devices.training_autocast)",
            "hardware": f"{platform.processor() or platform.machine()}, {config.get('threads', 1)} trainer thread(s) + "
                        f"{config.get('workers', 1)} data worker(s) per run, on {meta.get('device', 'cpu')} (last segment)",
        },
        "validation_during_training": meta.get("validation"),
        "quality": quality,
        "notes": notes,
    }  # fmt: skip
    path = checkpoint.parent / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path
