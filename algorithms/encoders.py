"""The observation encoders, each declared once: what one frame of its input is and its conv
layers. nets.FrameEncoder builds an imitator's encoder from these, teachers.py derives RLlib's
`conv_filters` from them, and config validation asks which of them read an env family's
observations (`reads`); each family names its own default (envs.families.EnvFamily.encoder).
Pure data: no torch here, so a config is checked without loading it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Encoder:
    name: str
    # One frame of its input: (height, width, channels); a model of `stack` frames reads
    # stack x channels input channels.
    frame: tuple[int, int, int]
    # (out_channels, kernel, stride) per conv layer, "valid" padding as in the DQN paper
    # (84 -> 20 -> 9 -> 7); () for an encoder that is not a CNN.
    convs: tuple[tuple[int, int, int], ...] = ()
    one_frame: bool = False  # its input is one whole observation, never a stack of them
    description: str = ""


ENCODERS = {e.name: e for e in (
    Encoder("nature", (84, 84, 1), ((32, 8, 4), (64, 4, 2), (64, 3, 1)),
            description="the DQN paper's network (Mnih et al. 2015)"),
    Encoder("small", (84, 84, 1), ((16, 8, 4), (32, 4, 2), (32, 3, 2)), description="a lighter CNN of that shape"),
    Encoder("minatar", (10, 10, 10), ((16, 3, 1),), one_frame=True,
            description="the MinAtar paper's network: one 3x3 conv of 16 on the 10x10x10 grid (Young & Tian 2019)"),
    Encoder("grid", (84, 84, 1),
            description="Dark Room frames: the lit cell's coordinates (nets.grid_coordinates), then one layer"),
)}
EncoderName = Literal[tuple(ENCODERS)]  # what an imitator's `cnn` may be (config validates it)
CNNS = tuple(name for name, e in ENCODERS.items() if e.convs)  # the ones RLlib teachers can use


def frame_of(frame_shape: tuple) -> tuple[int, int, int]:
    """An env family's frame (EnvFamily.frame_shape) as an encoder reads it: (h, w) frames, stacked
    on the last axis, are (h, w, 1) each; an (h, w, c) observation is one frame of c channels."""
    return (*frame_shape, 1) if len(frame_shape) == 2 else tuple(frame_shape)


def reads(encoder: str, frame_shape: tuple) -> bool:
    """Whether `encoder` reads observations of frames `frame_shape` (a family's)."""
    return encoder in ENCODERS and ENCODERS[encoder].frame == frame_of(frame_shape)


def readers(frame_shape: tuple) -> list[str]:
    """The encoders that read observations of frames `frame_shape`."""
    return [name for name in ENCODERS if reads(name, frame_shape)]


def shape_text(frame: tuple) -> str:
    """84x84 frames, 10x10x10 observations: for messages."""
    frame = frame_of(frame)
    return f"{frame[0]}x{frame[1]} frames" if frame[2] == 1 else "x".join(map(str, frame)) + " observations"


def conv_filters(encoder: str) -> list:
    """RLlib's `conv_filters` for a CNN encoder: [out_channels, [kernel, kernel], stride, "valid"]."""
    return [[out, [kernel, kernel], stride, "valid"] for out, kernel, stride in ENCODERS[encoder].convs]
