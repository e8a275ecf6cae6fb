"""Flow pictures are big enough to read and say what each tile is."""

import numpy as np
import torch

from h2s_dist import frames as frame_conv
from h2s_dist.train.stages.temporal_flows import flow_input_picture
from h2s_dist.train.task import FLOW_PICTURE_LABELS, LABEL_STRIP_PX, MIN_TILE_PX, flow_picture, labelled_row


def _header_has_text(picture: np.ndarray, num_tiles: int) -> list[bool]:
    """Per tile: does its header strip hold more than one colour (the label's pixels)?"""
    width = picture.shape[1] // num_tiles
    strip = picture[:LABEL_STRIP_PX]
    return [len(np.unique(strip[:, i * width:(i + 1) * width].reshape(-1, 3), axis=0)) > 1 for i in range(num_tiles)]


def test_labelled_row_upscales_by_nearest_neighbour_under_a_header():
    tiles = [np.full((32, 48, 3), value, np.uint8) for value in (0, 100, 200)]
    tiles[0][0, 0] = 255
    picture = labelled_row(tiles, ["a", "b", "c"])
    k = MIN_TILE_PX // 32  # the short side 32 -> 256
    assert picture.shape == (LABEL_STRIP_PX + 32 * k, 3 * 48 * k, 3)
    body = picture[LABEL_STRIP_PX:]
    assert (body[:k, :k] == 255).all() and (body[k:2 * k, :k] == 0).all()  # one source pixel = a k x k block
    assert (body[:, 48 * k:2 * 48 * k] == 100).all()
    assert all(_header_has_text(picture, 3))


def test_labelled_row_keeps_big_tiles_at_their_size():
    picture = labelled_row([np.zeros((300, 400, 3), np.uint8)], ["big"])
    assert picture.shape == (LABEL_STRIP_PX + 300, 400, 3)


def test_flow_picture_has_five_labelled_tiles_of_at_least_256_px():
    clip = frame_conv.normalize(torch.randint(0, 256, (3, 3, 24, 32), dtype=torch.uint8))
    picture = flow_picture(clip, torch.zeros(4, 12, 16))
    num_tiles = len(FLOW_PICTURE_LABELS)
    tile_h, tile_w = picture.shape[0] - LABEL_STRIP_PX, picture.shape[1] // num_tiles
    assert picture.dtype == np.uint8 and picture.shape[1] == num_tiles * tile_w
    assert min(tile_h, tile_w) >= MIN_TILE_PX
    assert all(_header_has_text(picture, num_tiles))


def test_flow_input_picture_is_one_labelled_tile_of_at_least_256_px():
    stacked = torch.zeros(20, 28, 28)
    picture = flow_input_picture(stacked, bound=20.0)
    assert min(picture.shape[0] - LABEL_STRIP_PX, picture.shape[1]) >= MIN_TILE_PX
    assert all(_header_has_text(picture, 1))
