"""Short GIFs of episodes, to watch an agent play: the first and the last episode that copy 0
of an evaluation task played (EpisodeClip, fed by players.play_episodes), made small (at most
`max_frames` frames each, the newest frame of a stack in grey, MinAtar's channels in colour)
and logged to the agent's MLflow run as `episodes/first_episode.gif` and `last_episode.gif`.
A GIF travels from the Ray task that played it as base64 text, so it fits in the task's result
(and in the JSON an interrupted evaluation resumes from).
"""
from __future__ import annotations

import base64
import io

import numpy as np

MAX_FRAMES = 64  # per episode; a longer episode keeps every 2nd, 4th, ... frame
FRAME_MS = 80  # per step shown (times the frames skipped)
# MinAtar-sized frames are enlarged so that a cell is visible
SMALL_FRAME, ENLARGE = 24, 6


class EpisodeClip:
    """Frames of one copy's first and latest finished episode. `frame(obs)` before each step
    that copy takes, `end()` when an episode of it ends (one that counts)."""

    def __init__(self, max_frames: int = MAX_FRAMES):
        self.max_frames = max_frames
        self.first: list[np.ndarray] | None = None
        self.last: list[np.ndarray] | None = None
        self.first_stride = self.last_stride = 1
        self._frames: list[np.ndarray] = []
        self._stride, self._seen = 1, 0

    def frame(self, obs) -> None:
        if self._seen % self._stride == 0:
            self._frames.append(np.array(obs, copy=True))
            if len(self._frames) > self.max_frames:  # keep every other frame from now on
                self._frames = self._frames[::2]
                self._stride *= 2
        self._seen += 1

    def end(self) -> None:
        if self.first is None:
            self.first, self.first_stride = self._frames, self._stride
        else:
            self.last, self.last_stride = self._frames, self._stride
        self._frames, self._stride, self._seen = [], 1, 0

    def gifs(self, stacked: bool) -> dict[str, str]:
        """{"first": base64 GIF, "last": ...} of the episodes it saw ("last" the same as "first"
        when copy 0 played one episode)."""
        out = {}
        for key, frames, stride in (("first", self.first, self.first_stride),
                                    ("last", self.last if self.last is not None else self.first,
                                     self.last_stride if self.last is not None else self.first_stride)):
            if frames:
                out[key] = base64.b64encode(to_gif([image(f, stacked) for f in frames], FRAME_MS * stride)).decode()
        return out


def image(obs, stacked: bool) -> np.ndarray:
    """What a person sees of one observation: the newest frame of a stack, as grey (H, W) uint8;
    a frame of channels (MinAtar's 10x10xC) as RGB, each channel its own colour."""
    obs = np.asarray(obs)
    if stacked:
        frame = obs[..., -1] if obs.ndim == 3 else obs
        return np.asarray(frame, np.uint8)
    channels = obs.shape[-1]
    hues = np.linspace(0, 1, channels, endpoint=False)
    palette = (np.stack([0.5 + 0.5 * np.cos(2 * np.pi * (hues + shift)) for shift in (0, 1 / 3, 2 / 3)], 1)
               * 255).astype(np.float32)  # (C, 3), distinct colours
    on = np.asarray(obs, np.float32) > 0
    rgb = np.where(on.any(-1, keepdims=True), (on[..., None] * palette).max(-2), 0).astype(np.uint8)
    if rgb.shape[0] <= SMALL_FRAME:
        rgb = rgb.repeat(ENLARGE, 0).repeat(ENLARGE, 1)
    return rgb


def to_gif(frames: list[np.ndarray], frame_ms: int) -> bytes:
    """An animated GIF that loops, `frame_ms` per frame."""
    from PIL import Image

    pictures = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    pictures[0].save(buf, format="GIF", save_all=True, append_images=pictures[1:], duration=int(frame_ms),
                     loop=0, optimize=False)
    return buf.getvalue()


def log_gifs(client, run_id: str, gifs: dict[str, str]) -> list[str]:
    """The GIFs of a task (EpisodeClip.gifs) as artifacts of `run_id`; the paths logged."""
    import os
    import tempfile

    logged = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, text in sorted(gifs.items()):
            path = os.path.join(tmp, f"{key}_episode.gif")
            with open(path, "wb") as f:
                f.write(base64.b64decode(text))
            client.log_artifact(run_id, path, "episodes")
            logged.append(f"episodes/{key}_episode.gif")
    return logged
