"""A tiny MotionNet trained on the unsupervised loss alone recovers a known translation.

End-to-end check that MotionNet's raw units and sign conventions agree with the warp and
the losses: a wrong sign or scale anywhere would leave the end-point error (EPE) at
pixels. Each sample moves by one of two opposite shifts, so the network has to read the
motion from the frames rather than learn a constant bias. About 10 s on one core.
"""

import time

import torch

from h2s_dist.frames import denormalize
from h2s_dist.losses import unsupervised_flow_loss
from h2s_dist.models.motionnet import build_motionnet, full_resolution_flow
from tests.unit.test_losses import translating_clip

SIZE = 64
SHIFTS = ((2, 1), (-2, -1))  # (right, down) pixels per frame = the true (u, v)
STEPS, BATCH, LR = 250, 4, 1e-3


def _batch(seed: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips (B, 2, 3, SIZE, SIZE) in [0, 1] and their true flows (B, 2)."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(SHIFTS), (batch,), generator=g).tolist()
    clips = [translating_clip(batch=1, frames=2, size=SIZE, shift=SHIFTS[p], seed=1000 * seed + j)
             for j, p in enumerate(picks)]
    return torch.cat(clips), torch.tensor([SHIFTS[p] for p in picks], dtype=torch.float32)


def _interior_epe(flows: list[torch.Tensor], true_uv: torch.Tensor) -> float:
    """Mean end-point error of the full-resolution flow2, ignoring an 8 px border."""
    flow = full_resolution_flow(flows[-1], (SIZE, SIZE))[..., 8:-8, 8:-8]  # (B, 1, 2, h, w)
    return (flow - true_uv.view(-1, 1, 2, 1, 1)).norm(dim=2).mean().item()


def _as_network_input(clip01: torch.Tensor) -> torch.Tensor:
    """[0, 1] float frames -> network input, the inverse of `denormalize` (x - mean)."""
    return clip01 - denormalize(torch.zeros(3, 1, 1))


def test_tiny_motionnet_learns_a_translation_from_the_unsupervised_loss():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = build_motionnet("tiny", num_frames=2)
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        start = time.perf_counter()
        for step in range(STEPS):
            if step == int(0.7 * STEPS):  # a late lr drop settles the noisy single-clip steps
                for group in opt.param_groups:
                    group["lr"] = 0.2 * LR
            clip, _ = _batch(step, BATCH)
            loss, _ = unsupervised_flow_loss(clip, net(_as_network_input(clip)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        clip, true_uv = _batch(10**6, 8)  # held-out textures
        with torch.no_grad():
            epe = _interior_epe(net(_as_network_input(clip)), true_uv)
        print(f"tiny MotionNet: held-out EPE {epe:.3f} px after {STEPS} steps, "
              f"{time.perf_counter() - start:.1f} s")
        assert epe < 0.5
    finally:
        torch.set_num_threads(threads)
