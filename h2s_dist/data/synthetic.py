"""The synthetic motion dataset, with exact optical flow: classes told apart by motion only
(`classes="motion"`), or by a scene type and a motion together (`classes="scene_x_motion"`).

Each video looks at a large random canvas (smooth coloured noise plus blurred random shapes)
through a camera whose pose follows the class: a translation, a rotation or a zoom about a
point near the image centre, or nothing (`still`). Frame t is rendered by sampling the canvas
at `A_t(x)`, an affine map of the pixel coordinates x, so the flow from frame t to t+1 is known
analytically:  f_t(x) = A_{t+1}^{-1}(A_t(x)) - x.  Optional moving discs ("sprites", each with
its own texture) translate on top at their own velocity; their pixels carry their own flow.

Conventions (as in `warp.backward_warp`): flows (T-1, H, W, 2) float32 in pixels, channel 0 = u
(right), 1 = v (down); flow t maps frame t to frame t+1, so frame t+1 sampled at (x+u, y+v)
equals frame t wherever `valid` is True (the destination is inside the frame and not occluded).

Two class sets, 9 classes each:

- "motion" (`MOTION_CLASSES`): appearance (canvas colours, shapes, scale, orientation, sprites)
  is drawn from the same distributions for every class, so a single frame says nothing about
  the label; only motion does. It checks that a temporal stream learns motion.
- "scene_x_motion" (`SCENE_X_MOTION_CLASSES`, named `<scene>_<motion>`): 3 scene types
  (`SCENE_TYPES`: desert, forest, ocean; each its own palette and shapes, which one frame
  shows) crossed with 3 camera motions (`SCENE_MOTIONS`: translate_left, rotate_ccw,
  zoom_in; mirroring maps none onto another, and the flow tells them apart: uniform, curl,
  divergence). A frame tells the scene type and not the motion, the flow tells the motion and
  not the scene type: only the two streams fused tell the class, the paper's story. Within a
  type every video still has a random canvas of that type.

With `shared_scenes` the videos of one round that share what their frames may show (the whole
round for "motion"; the 3 videos of one scene type for "scene_x_motion") film the very same
scene, so not even a network that memorises its training videos can tie a look to a motion.
Everything is deterministic in (config.seed, index). Video `index` has label `index % 9`, so
the classes are balanced; `synthetic_split` assigns whole rounds of classes to train or test.

    python -m h2s_dist.data.synthetic OUT_DIR   # writes the default 64-video dataset as .avi
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from h2s_dist.data.video import write_video

MOTION_CLASSES: tuple[str, ...] = (
    "translate_left",
    "translate_right",
    "translate_up",
    "translate_down",
    "rotate_cw",
    "rotate_ccw",
    "zoom_in",
    "zoom_out",
    "still",
)
CLASSES = MOTION_CLASSES
"""The motion-only class set (the default); every class set has len(CLASSES) == 9 classes."""
SCENE_TYPES: tuple[str, ...] = ("desert", "forest", "ocean")
SCENE_MOTIONS: tuple[str, ...] = ("translate_left", "rotate_ccw", "zoom_in")
SCENE_X_MOTION_CLASSES: tuple[str, ...] = tuple(f"{scene}_{motion}" for scene in SCENE_TYPES for motion in SCENE_MOTIONS)
CLASS_SETS: dict[str, tuple[str, ...]] = {"motion": MOTION_CLASSES, "scene_x_motion": SCENE_X_MOTION_CLASSES}


def class_names(classes: str = "motion") -> tuple[str, ...]:
    """The 9 class names of class set `classes` ("motion" or "scene_x_motion"), label order."""
    if classes not in CLASS_SETS:
        raise ValueError(f"classes must be one of {sorted(CLASS_SETS)}, got {classes!r}")
    return CLASS_SETS[classes]


def scene_and_motion(class_name: str) -> tuple[str | None, str]:
    """("forest", "zoom_in") for "forest_zoom_in"; (None, "zoom_in") for a motion-only class."""
    scene, _, motion = class_name.partition("_")
    return (scene, motion) if scene in SCENE_TYPES else (None, class_name)


@dataclass(frozen=True)
class SyntheticMotionConfig:
    """How many videos to make and how they move. Speeds are drawn per video, uniformly."""

    num_videos: int
    """Number of videos; video i has label i % len(CLASSES)."""
    num_frames: int = 32
    """Frames per video (>= 2)."""
    height: int = 128
    """Frame height in pixels (even, so the videos encode as yuv420p)."""
    width: int = 160
    """Frame width in pixels (even)."""
    seed: int = 0
    """Base seed; video i draws from numpy's generator seeded with (seed, i)."""
    fps: float = 25.0
    """Frame rate written into video files."""
    translate_px_per_frame: tuple[float, float] = (0.75, 2.0)
    """Range of the translation speed, pixels per frame."""
    rotate_deg_per_frame: tuple[float, float] = (0.5, 1.5)
    """Range of the rotation speed, degrees per frame (1 deg is ~1.4 px at 80 px radius)."""
    zoom_log_per_frame: tuple[float, float] = (0.01, 0.025)
    """Range of |log scale change| per frame (0.01 is 0.5 px per frame at 50 px from the centre)."""
    num_sprites: tuple[int, int] = (0, 0)
    """Inclusive range of independently moving textured discs per video (0 = camera only)."""
    sprite_px_per_frame: float = 1.5
    """Largest sprite speed, pixels per frame, any direction."""
    shared_scenes: bool = False
    """True: the videos of a round (group gXX, one per class) that may look alike film one
    scene (canvas, start pose, sprites), each with its own camera motion: the whole round for
    "motion", the 3 videos of each scene type for "scene_x_motion". Appearance then tells a
    classifier nothing about the motion even in its training videos, so a spatial stream
    learns to spread over the motions instead of memorising each training scene's label and
    being confidently wrong on test scenes. False: every video has a scene of its own."""
    classes: str = "motion"
    """The class set: "motion" (9 camera motions, appearance carries no label) or
    "scene_x_motion" (3 scene types x 3 motions, `<scene>_<motion>`: frames tell the scene
    type, flow tells the motion)."""

    @property
    def class_names(self) -> tuple[str, ...]:
        """The 9 class names, label order."""
        return class_names(self.classes)

    def __post_init__(self) -> None:
        class_names(self.classes)  # refuses an unknown class set
        if self.num_videos < 1 or self.num_frames < 2:
            raise ValueError(f"need num_videos >= 1 and num_frames >= 2, got {self.num_videos}, {self.num_frames}")
        if self.height % 2 or self.width % 2 or min(self.height, self.width) < 16:
            raise ValueError(f"height and width must be even and >= 16 (yuv420p), got {self.height}x{self.width}")
        if not 0 <= self.num_sprites[0] <= self.num_sprites[1]:
            raise ValueError(f"num_sprites must be (low, high) with 0 <= low <= high, got {self.num_sprites}")


@dataclass(frozen=True)
class SyntheticVideo:
    """One rendered video with its exact ground truth.

    frames (T, H, W, 3) uint8 RGB; flows (T-1, H, W, 2) float32 pixels, u right / v down,
    flow t maps frame t to t+1 (frame t+1 sampled at x + flow equals frame t); valid
    (T-1, H, W) bool: x + flow lands inside frame t+1 on the same surface (not occluded)."""

    frames: np.ndarray
    flows: np.ndarray
    valid: np.ndarray
    label: int
    class_name: str
    key: str


def synthetic_split(index: int, *, test_every: int = 4) -> str:
    """"train" or "test" for video `index`: every `test_every`-th round of len(CLASSES) videos
    (one video per class; the UCF101-layout group g{round+1}) is test, so both splits are
    class balanced. With the default, groups g04, g08, ... are test."""
    return "test" if (index // len(CLASSES)) % test_every == test_every - 1 else "train"


def class_dir_name(class_name: str) -> str:
    """UCF101-style CamelCase class folder name: "translate_left" -> "TranslateLeft"."""
    return "".join(part.capitalize() for part in class_name.split("_"))


def video_key(index: int, classes: str = "motion") -> str:
    """The UCF101-style stem of video `index`: v_<Class>_g<round+1>_c01 (round = index // classes)."""
    names = class_names(classes)
    return f"v_{class_dir_name(names[index % len(names)])}_g{index // len(names) + 1:02d}_c01"


# ----------------------------------------------------------------------------- camera motion


def _camera_step(class_name: str, rng: np.random.Generator, config: SyntheticMotionConfig) -> np.ndarray:
    """The 3x3 per-frame motion M of scene content in pixel coordinates: a point at x in frame t
    is at M x in frame t+1 (y down, so a positive angle turns clockwise on screen). A
    `<scene>_<motion>` class moves as its motion."""
    class_name = scene_and_motion(class_name)[1]
    cx = config.width / 2 + rng.uniform(-0.1, 0.1) * config.width
    cy = config.height / 2 + rng.uniform(-0.1, 0.1) * config.height
    speed = rng.uniform(*config.translate_px_per_frame)
    angle = math.radians(rng.uniform(*config.rotate_deg_per_frame))
    zoom = math.exp(rng.uniform(*config.zoom_log_per_frame))
    shifts = {"translate_left": (-speed, 0), "translate_right": (speed, 0),
              "translate_up": (0, -speed), "translate_down": (0, speed)}
    if class_name in shifts:
        return _affine(np.eye(2), shifts[class_name])
    if class_name in ("rotate_cw", "rotate_ccw"):
        a = angle if class_name == "rotate_cw" else -angle
        linear = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    elif class_name in ("zoom_in", "zoom_out"):
        linear = np.eye(2) * (zoom if class_name == "zoom_in" else 1 / zoom)
    elif class_name == "still":
        linear = np.eye(2)
    else:
        raise ValueError(f"unknown class {class_name!r}; one of {CLASSES} or {SCENE_X_MOTION_CLASSES}")
    centre = np.array([cx, cy])
    return _affine(linear, centre - linear @ centre)  # about the centre


def _affine(linear: np.ndarray, shift) -> np.ndarray:
    m = np.eye(3)
    m[:2, :2], m[:2, 2] = linear, shift
    return m


def _camera_maps(step: np.ndarray, num_frames: int, start: np.ndarray) -> list[np.ndarray]:
    """A_t: frame-t pixel -> canvas coordinate. Content at x in frame t is at step x in frame t+1,
    so A_{t+1} = A_t step^-1. Zooms start half way back so the middle frame has scale `start`."""
    inv = np.linalg.inv(step)
    half_back = np.linalg.matrix_power(step, (num_frames - 1) // 2)
    maps = [start @ half_back]
    for _ in range(num_frames - 1):
        maps.append(maps[-1] @ inv)
    return maps


# ----------------------------------------------------------------------------- appearance


@dataclass(frozen=True)
class SceneLook:
    """What a scene type looks like: a palette and a kind of shape, visible in any one frame."""

    base_rgb: tuple[float, float, float]
    """Mean colour of the canvas; each video jitters it by up to +-15 per channel."""
    shape_kinds: tuple[int, ...]
    """Shapes scattered over it: 0 ellipses, 1 rectangles, 2 triangles."""


SCENE_LOOKS: dict[str, SceneLook] = {
    "desert": SceneLook((190, 155, 100), (0,)),   # sand, dunes
    "forest": SceneLook((55, 115, 55), (2,)),     # greens, pointed crowns
    "ocean": SceneLook((60, 95, 170), (1,)),      # blues, boxy shapes
}


def _canvas(rng: np.random.Generator, height: int, width: int, scene: str | None = None) -> np.ndarray:
    """(height, width, 3) float32 RGB in 0..255: coloured noise plus fine grey detail plus
    blurred random shapes; smooth enough (blur ~1.2 px) that bilinear sampling commutes with
    warping. `scene` (one of SCENE_TYPES) draws colours and shapes from that type's look;
    None draws them from one distribution shared by every video.

    Fine detail (12 and 6 px features) carries most of the contrast because a motion of
    1-2 px is only visible to a photometric loss where the image has gradient at that scale:
    with 48 px features dominant, a tiny MotionNet learned zero flow in 600 steps; with this
    mix its end-point error falls below zero flow's within a few hundred. As in natural
    images, colour varies slowly and the detail is in brightness, which is what yuv420
    video and JPEG keep (colour detail at 6 px doubled the codec error)."""
    colour = _value_noise(rng, height, width, 32) + 0.5 * _value_noise(rng, height, width, 12)
    detail = _value_noise(rng, height, width, 12)[..., :1] + 0.8 * _value_noise(rng, height, width, 6)[..., :1]
    if scene is None:
        mix = rng.normal(0, 22, (3, 3)).astype(np.float32)
        base = rng.uniform(70, 185, 3).astype(np.float32)
        look = None
    else:
        # Weaker colour noise than the shared look's, so the palette survives every crop.
        look = SCENE_LOOKS[scene]
        mix = rng.normal(0, 8, (3, 3)).astype(np.float32)
        base = (np.array(look.base_rgb) + rng.uniform(-15, 15, 3)).astype(np.float32)
    image = Image.fromarray(np.clip(base + colour @ mix + 24 * detail, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    # A fixed density per area keeps frame statistics independent of the canvas size, which
    # grows with the motion (and so with the class).
    for _ in range(rng.poisson(height * width / 2500)):
        _random_shape(draw, rng, height, width, None if look is None else (base, look.shape_kinds))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(1.2)), np.float32)


def _value_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """(height, width, 3) smooth noise with features exactly `cell` px apart whatever the size:
    random values on a grid, bicubic upsampled by `cell`, cropped at a random phase."""
    rows, cols = height // cell + 3, width // cell + 3
    small = rng.standard_normal((rows, cols, 3)).astype(np.float32)
    dy, dx = rng.integers(0, cell, 2)
    return np.stack([
        np.asarray(Image.fromarray(small[..., c]).resize((cols * cell, rows * cell), Image.BICUBIC))[
            dy:dy + height, dx:dx + width]
        for c in range(3)], -1)


def _random_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, height: int, width: int,
                  look: tuple[np.ndarray, tuple[int, ...]] | None = None) -> None:
    """One shape of any colour and kind, or with `look` = (palette colour, kinds) one of those
    kinds in a colour near the palette."""
    x, y = rng.uniform(0, width), rng.uniform(0, height)
    r = rng.uniform(6, 28)
    if look is None:
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(3)
    else:
        palette, kinds = look
        colour = tuple(int(c) for c in np.clip(palette + rng.normal(0, 40, 3), 0, 255))
        kind = kinds[rng.integers(len(kinds))]
    if kind == 0:
        draw.ellipse([x - r, y - r * rng.uniform(0.5, 1), x + r, y + r], fill=colour)
    elif kind == 1:
        draw.rectangle([x - r, y - r * rng.uniform(0.4, 1), x + r, y + r], fill=colour)
    else:
        angles = rng.uniform(0, 2 * math.pi, 3)
        draw.polygon([(x + r * math.cos(a), y + r * math.sin(a)) for a in angles], fill=colour)


def _bilinear(canvas: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Sample canvas (Hc, Wc, C) at float coordinates (pixel centres at integers), clamped at the border."""
    hc, wc = canvas.shape[:2]
    xs = np.clip(xs, 0, wc - 1.001)
    ys = np.clip(ys, 0, hc - 1.001)
    x0, y0 = xs.astype(np.int64), ys.astype(np.int64)
    fx, fy = (xs - x0)[..., None], (ys - y0)[..., None]
    top = canvas[y0, x0] * (1 - fx) + canvas[y0, x0 + 1] * fx
    bottom = canvas[y0 + 1, x0] * (1 - fx) + canvas[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _render_affine(canvas: Image.Image, frame_to_canvas: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8: canvas sampled bilinearly at frame_to_canvas @ (x, y, 1), pixel
    centres at integer coordinates. PIL puts pixel centres at +0.5, hence the shifted offset."""
    (a, b, c), (d, e, f) = frame_to_canvas[:2]
    coeffs = (a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e))
    return np.asarray(canvas.transform((width, height), Image.AFFINE, coeffs, resample=Image.BILINEAR))


# ----------------------------------------------------------------------------- rendering


def _scene_type(config: SyntheticMotionConfig, index: int) -> str | None:
    """The scene type video `index` shows (None for the motion-only classes)."""
    return scene_and_motion(config.class_names[index % len(CLASSES)])[0]


def _look_rng(config: SyntheticMotionConfig, index: int) -> np.random.Generator:
    """The appearance stream of video `index`: its own, or with shared scenes its round's
    (motion classes) or its round's scene type's (scene_x_motion). Appearance and motion draw
    from separate streams so the look of a video does not depend on its motion's draws."""
    if config.shared_scenes:
        scene = _scene_type(config, index)
        group = [] if scene is None else [SCENE_TYPES.index(scene)]
        return np.random.default_rng([config.seed, index // len(CLASSES), 2, *group])
    return np.random.default_rng([config.seed, index, 0])


def _scene_mates(config: SyntheticMotionConfig, index: int) -> list[int]:
    """The other videos filming video `index`'s scene (within whole rounds, whatever
    num_videos is, so a scene does not depend on how many videos are made)."""
    if not config.shared_scenes:
        return []
    first, scene = index - index % len(CLASSES), _scene_type(config, index)
    return [i for i in range(first, first + len(CLASSES)) if i != index and _scene_type(config, i) == scene]


def _camera(config: SyntheticMotionConfig, index: int, start: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(per-frame motion, frame-to-canvas maps) of video `index`, from its own motion stream."""
    motion_rng = np.random.default_rng([config.seed, index, 1])
    step = _camera_step(config.class_names[index % len(CLASSES)], motion_rng, config)
    return step, _camera_maps(step, config.num_frames, start)


def make_video(config: SyntheticMotionConfig, index: int) -> SyntheticVideo:
    """Render video `index` (0 <= index < config.num_videos) with exact flows; deterministic."""
    if not 0 <= index < config.num_videos:
        raise ValueError(f"index {index} out of range for num_videos={config.num_videos}")
    label = index % len(CLASSES)
    class_name = config.class_names[label]
    look_rng = _look_rng(config, index)
    h, w, t_count = config.height, config.width, config.num_frames

    scale = math.exp(look_rng.uniform(math.log(0.8), math.log(1.25)))
    theta = look_rng.uniform(0, 2 * math.pi)
    start = _affine(scale * np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]), (0, 0))
    step, maps = _camera(config, index, start)

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pix = np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)])  # (3, H*W) homogeneous
    # Affine maps take their extremes at the frame corners: the canvas must cover those, for
    # every video that films it.
    corners = np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1], [1, 1, 1, 1]], np.float64)
    filming = [maps] + [_camera(config, other, start)[1] for other in _scene_mates(config, index)]
    reached = np.concatenate([(m @ corners)[:2] for video_maps in filming for m in video_maps], axis=1)
    lo, hi = reached.min(axis=1) - 2, reached.max(axis=1) + 2
    canvas = _canvas(look_rng, int(math.ceil(hi[1] - lo[1])) + 1, int(math.ceil(hi[0] - lo[0])) + 1,
                     scene=_scene_type(config, index))

    canvas_image = Image.fromarray(canvas.astype(np.uint8))
    to_canvas = _affine(np.eye(2), -lo)  # canvas array index = canvas coordinate - lo
    frames = np.stack([_render_affine(canvas_image, to_canvas @ m, w, h) for m in maps])
    moved = (step @ pix)[:2]  # same for every t: A_{t+1}^{-1} A_t = step
    camera_flow = (moved - pix[:2]).T.reshape(h, w, 2)
    flows = np.repeat(camera_flow[None], t_count - 1, axis=0)
    inside = _inside(camera_flow, h, w)
    valid = np.repeat(inside[None], t_count - 1, axis=0)

    lo_s, hi_s = config.num_sprites
    num_sprites = int(look_rng.integers(lo_s, hi_s + 1))
    if num_sprites:
        _paint_sprites(frames, flows, valid, look_rng, config, num_sprites)
    return SyntheticVideo(
        frames=frames,
        flows=flows.astype(np.float32),
        valid=valid,
        label=label,
        class_name=class_name,
        key=video_key(index, config.classes),
    )


def _inside(flow: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixels whose destination x + flow lies inside the frame (with room for bilinear taps)."""
    ys, xs = np.mgrid[0:h, 0:w]
    x1, y1 = xs + flow[..., 0], ys + flow[..., 1]
    return (x1 >= 0) & (x1 <= w - 1) & (y1 >= 0) & (y1 <= h - 1)


def _paint_sprites(frames, flows, valid, rng, config, num_sprites) -> None:
    """Textured discs translating at their own velocity, painted over the scene in order.
    A pixel of frame t is valid if its destination at t+1 shows the same surface: a sprite
    pixel lands on the same sprite (nothing painted later covers it), a background pixel lands
    on background."""
    t_count, h, w = frames.shape[:3]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    sprites = []
    for _ in range(num_sprites):
        radius = rng.uniform(0.08, 0.2) * min(h, w)
        texture = _canvas(rng, int(2 * radius) + 4, int(2 * radius) + 4)
        speed, heading = rng.uniform(0, config.sprite_px_per_frame), rng.uniform(0, 2 * math.pi)
        velocity = np.array([speed * math.cos(heading), speed * math.sin(heading)])
        start = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h]) - velocity * (t_count - 1) / 2
        sprites.append((radius, texture, velocity, start))

    def covers(t, px, py):  # index of the top sprite at (px, py) in frame t, -1 for background
        top = np.full(px.shape, -1)
        for i, (radius, _, velocity, start) in enumerate(sprites):
            c = start + velocity * t
            top[(px - c[0]) ** 2 + (py - c[1]) ** 2 < radius ** 2] = i
        return top

    for t in range(t_count):
        for radius, texture, velocity, start in sprites:
            c = start + velocity * t
            local_x, local_y = xs - c[0] + radius + 2, ys - c[1] + radius + 2
            disc = (xs - c[0]) ** 2 + (ys - c[1]) ** 2 < radius ** 2
            frames[t][disc] = np.clip(np.rint(_bilinear(texture, local_x[disc], local_y[disc])), 0, 255)
            if t < t_count - 1:
                flows[t][disc] = velocity
    for t in range(t_count - 1):
        here = covers(t, xs, ys)
        there = covers(t + 1, xs + flows[t][..., 0], ys + flows[t][..., 1])
        valid[t] &= (here == there) & _inside(flows[t], h, w)
        # Next to a disc edge bilinear taps mix the two surfaces; drop a rim around every
        # edge, at the source in frame t and at the destination in frame t+1.
        x1, y1 = xs + flows[t][..., 0], ys + flows[t][..., 1]
        for radius, _, velocity, start in sprites:
            for tt, px, py in ((t, xs, ys), (t + 1, x1, y1)):
                c = start + velocity * tt
                valid[t] &= np.abs(np.hypot(px - c[0], py - c[1]) - radius) > 1.5


# ----------------------------------------------------------------------------- files


def write_dataset(
    root: str | os.PathLike,
    config: SyntheticMotionConfig,
    *,
    ext: str = ".avi",
    layout: str = "ucf101",
    codec: str = "libx264",
    crf: int = 18,
) -> list[tuple[Path, int]]:
    """Render every video of `config` and write it through PyAV; returns [(path, label)] in index order.

    layout "ucf101": ROOT/<ClassName>/v_<ClassName>_gXX_c01<ext> (group XX = round of classes + 1);
    layout "flat": ROOT/v_<ClassName>_gXX_c01<ext>. ext ".avi" or ".mp4". Uses x264's
    "veryfast" preset: 64 videos of 32 frames at 160x128 take a few seconds on one core."""
    if layout not in ("ucf101", "flat"):
        raise ValueError(f"layout must be 'ucf101' or 'flat', got {layout!r}")
    if ext not in (".avi", ".mp4"):
        raise ValueError(f"ext must be '.avi' or '.mp4', got {ext!r}")
    root = Path(root)
    out = []
    for index in range(config.num_videos):
        video = make_video(config, index)
        folder = root / class_dir_name(video.class_name) if layout == "ucf101" else root
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{video.key}{ext}"
        write_video(path, video.frames, config.fps, codec=codec, crf=crf,
                    preset="veryfast" if codec in ("libx264", "h264") else None)
        out.append((path, video.label))
    return out


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m h2s_dist.data.synthetic OUT_DIR")
    written = write_dataset(sys.argv[1], SyntheticMotionConfig(num_videos=64))
    print(f"wrote {len(written)} videos under {sys.argv[1]}")
