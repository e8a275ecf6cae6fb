"""The ingest's choices and defaults that `h2s ingest --help` shows, in a module that imports
nothing: building the `h2s` parser reads them without loading numpy, PyAV and pyarrow.
codec and ingest take their values from here."""

ENCODINGS = ("h264", "jpeg", "mp4")
"""How a clip is stored in a shard sample (h2s_dist.data.codec has the formats)."""
DEFAULT_ENCODING = "h264"
"""Below the source's bytes and a window's cost bounded by its GOP (bench/data_feed.py, docs/data.md)."""
DEFAULT_SHARD_TARGET_BYTES = 64 * 2**20
"""Shards are packed to about this many bytes (an estimate: see h2s_dist.data.ingest)."""
DEFAULT_SEGMENT_FRAMES = {"videos": 300}
"""Frames per sample a longer video is cut into, per source: an unlabeled corpus may hold
videos of any length (300 frames at 340x256 are 78 MB decoded); ucf101, hmdb51 and synthetic
keep whole videos, because evaluation scores a whole video (a test video is never cut)."""
DEFAULT_SEGMENT_OVERLAP_FRAMES = 10
"""Frames consecutive segments of a video share: clip_len_frames - 1 for the paper's 11-frame
clips, the longest window the platform trains on by default (a window of L frames straddling
a cut then lies whole in the later segment whenever L - 1 <= the overlap). Without it the last
clip_len - 1 window starts of every segment could never be drawn: frames near each cut were
under-sampled. Costs overlap / (segment_frames - overlap) more stored frames (3.4% at 300)."""
