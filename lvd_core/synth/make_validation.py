"""Writes a held-out validation set as a compact .npz (parameters and settings; the scans regenerate exactly).

    python -m lvd_core.synth.make_validation --body anny --n 64 --out lvd_core/data/validation_anny.npz
"""

from __future__ import annotations

import argparse

import torch

from .dataset import VALIDATION_SEED, BodySampling, held_out_set, save_validation_set


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body", default="anny")
    parser.add_argument("--model-file", help="the SMPL / MANO model file (for --body smpl / mano)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED)
    parser.add_argument("--yaw-range-deg", type=float, default=30.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sampling = BodySampling(yaw_range_deg=args.yaw_range_deg)
    dataset = held_out_set(args.body, args.n, args.seed, sampling=sampling, body_path=args.model_file)
    print(save_validation_set(dataset, args.out))


if __name__ == "__main__":
    main()
