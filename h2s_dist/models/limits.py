"""What the networks accept, as pure functions: checked when a job spec is validated,
before any work, and again by the networks themselves at run time.

Imports nothing (no torch), so `h2s validate` stays fast; models/*.py take their
constants from here so that the two checks cannot drift apart.
"""

from __future__ import annotations

import enum

# MotionNet: five stride-2 convolutions down, five x2 deconvs up, and every decoder level
# is concatenated with the encoder feature of the same size, so H and W must be multiples of 32.
MOTIONNET_SIZE_MULTIPLE = 32
# VGG16: five 2x2 max-pools before the classifier.
VGG_MIN_INPUT_SIZE = 32


class FinetuneMode(str, enum.Enum):
    """How the stacked temporal stream is fine-tuned (paper modes a, b, c)."""

    FROZEN = "frozen"
    ACTION_ONLY = "action_only"
    ACTION_PLUS_UNSUP = "action_plus_unsup"


def motionnet_problems(crop_size: int, clip_len_frames: int) -> list[str]:
    """Why MotionNet cannot take square crops of `crop_size` from clips of `clip_len_frames`
    frames ([] when it can)."""
    problems = []
    if crop_size % MOTIONNET_SIZE_MULTIPLE:
        lower = crop_size // MOTIONNET_SIZE_MULTIPLE * MOTIONNET_SIZE_MULTIPLE
        problems.append(
            f"MotionNet needs crops whose side is a multiple of {MOTIONNET_SIZE_MULTIPLE}, got {crop_size}; "
            f"use {max(lower, MOTIONNET_SIZE_MULTIPLE)} or {lower + MOTIONNET_SIZE_MULTIPLE}"
        )
    if clip_len_frames < 2:
        problems.append(f"MotionNet needs clips of at least 2 frames to predict a flow, got {clip_len_frames}")
    return problems


def vgg_problems(crop_size: int) -> list[str]:
    """Why VGG16 cannot take square inputs of `crop_size` ([] when it can)."""
    if crop_size < VGG_MIN_INPUT_SIZE:
        return [f"VGG16 needs inputs of at least {VGG_MIN_INPUT_SIZE} px (five 2x2 pools), got {crop_size}"]
    return []


def flow_stack_problems(clip_len_frames: int) -> list[str]:
    """Why a temporal VGG16 on stacked flows cannot read clips of `clip_len_frames` frames."""
    if clip_len_frames < 2:
        return [f"a flow stack needs clips of at least 2 frames (one flow per frame pair), got {clip_len_frames}"]
    return []
