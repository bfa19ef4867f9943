"""Training data as arrays: a set of sequences and a sampler of fixed-length windows around centre frames.

`SequenceSet` is the currency between the data readers (Human3.6M, motion capture) and the trainer: per-sequence
2D inputs, screen-normalised like the released code (`X / w * 2 - [1, h / w]`), and camera-space 3D targets in metres
(x right, y down, z forward). Windows are gathered batch by batch with index arithmetic on one concatenated copy of
the data, so memory stays at ~340 bytes per frame (17 joints x 5 float32) however many windows are drawn.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.geometry import flip_poses, root_relative
from pipeline.skeleton import H36M


@dataclass
class SequenceSet:
    inputs_2d: list[np.ndarray]  # per sequence (T_i, J, 2) float32, screen-normalised
    targets_3d: list[np.ndarray]  # per sequence (T_i, J, 3) float32, camera space, metres
    names: list[str]  # one per sequence, e.g. "S9/Walking 1/cam0"
    groups: list[str] | None = None  # one per sequence, e.g. the action, for per-group metrics

    def __post_init__(self) -> None:
        n = len(self.inputs_2d)
        if len(self.targets_3d) != n or len(self.names) != n or (self.groups is not None and len(self.groups) != n):
            raise ValueError(
                f"SequenceSet needs as many targets/names/groups as inputs ({n}); got "
                f"{len(self.targets_3d)}/{len(self.names)}/{None if self.groups is None else len(self.groups)}"
            )
        for name, x2, x3 in zip(self.names, self.inputs_2d, self.targets_3d, strict=True):
            if x2.ndim != 3 or x2.shape[-1] != 2 or x3.ndim != 3 or x3.shape[-1] != 3 or x2.shape[:2] != x3.shape[:2]:
                raise ValueError(
                    f"sequence {name!r}: expected inputs (T, J, 2) and targets (T, J, 3) with equal T and J, "
                    f"got {x2.shape} and {x3.shape}"
                )
            if len(x2) == 0:
                raise ValueError(f"sequence {name!r} is empty; drop it before building the SequenceSet")

    def __len__(self) -> int:
        return len(self.inputs_2d)

    @property
    def num_frames(self) -> int:
        return int(sum(len(x) for x in self.inputs_2d))

    @property
    def num_joints(self) -> int:
        return int(self.inputs_2d[0].shape[1]) if self.inputs_2d else H36M.num_joints

    def select(self, indices: list[int] | np.ndarray) -> SequenceSet:
        idx = [int(i) for i in indices]
        return SequenceSet(
            inputs_2d=[self.inputs_2d[i] for i in idx],
            targets_3d=[self.targets_3d[i] for i in idx],
            names=[self.names[i] for i in idx],
            groups=None if self.groups is None else [self.groups[i] for i in idx],
        )


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _memory_root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    """float32 concatenation; free when the arrays are consecutive pieces of one array (as `np.split` of a cached
    flat array gives), so that a set of millions of frames is not held twice."""
    first = arrays[0]
    root = _memory_root(first)
    if (root.flags.c_contiguous
            and all(a.dtype == np.float32 and a.flags.c_contiguous and a.shape[1:] == first.shape[1:] for a in arrays)
            and all(_address(a) + a.nbytes == _address(b) for a, b in zip(arrays[:-1], arrays[1:], strict=True))
            and all(_memory_root(a) is root for a in arrays)):
        start = _address(first) - _address(root)
        nbytes = sum(a.nbytes for a in arrays)
        return root.reshape(-1).view(np.uint8)[start:start + nbytes].view(np.float32).reshape(-1, *first.shape[1:])
    return np.concatenate(arrays).astype(np.float32, copy=False)


@dataclass
class Batch:
    inputs_2d: np.ndarray  # (B, T, J, 2) float32
    targets_3d: np.ndarray  # (B, J, 3) float32, centre frame, root-relative
    flipped: np.ndarray  # (B,) bool


@dataclass
class WindowSampler:
    """Draws T-frame windows (edge-padded at sequence ends) around uniformly random centre frames.

    `frames` must be odd: the window is centred on the frame whose 3D pose is the target. Flip augmentation mirrors
    half of the windows (2D and 3D together), in expectation what the released code does by adding a mirrored copy
    of every window to each epoch.
    """

    sequences: SequenceSet
    frames: int
    flip: bool = True
    flip_permutation: np.ndarray = field(default_factory=lambda: H36M.flip_permutation)
    # Share of sampled windows cut as if their clip were short: the window sees only a random stretch of 8 to 2T
    # frames (log-uniform) around its centre, edge-padded beyond it, as the demo pads a clip shorter than the window
    # (a 243-frame window over an 8-second 30 fps clip is padded at every frame). 0: windows as released.
    short_clips: float = 0.0

    def __post_init__(self) -> None:
        if self.frames < 1 or self.frames % 2 == 0:
            raise ValueError(f"window length must be odd and positive, got {self.frames}")
        if len(self.sequences) == 0:
            raise ValueError("cannot sample windows from an empty SequenceSet")
        lengths = np.array([len(x) for x in self.sequences.inputs_2d], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._lengths = lengths
        self._all_2d = _concatenate(self.sequences.inputs_2d)
        self._all_3d = _concatenate(self.sequences.targets_3d)
        # Sequence of every frame, so that a uniform draw over all frames maps back to its sequence.
        self._frame_sequence = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
        self._offsets = np.arange(self.frames, dtype=np.int64) - self.frames // 2

    @property
    def num_frames(self) -> int:
        return int(self._lengths.sum())

    def window_indices(self, frame_ids: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
        """Global frame ids (N,) -> (N, T) indices of their windows into the concatenated arrays, edge-padded at the
        sequence's ends, or at the ends of `visible` (N, 2): the first and last frame offset, relative to the centre,
        that each window may see."""
        frame_ids = np.asarray(frame_ids, dtype=np.int64)
        seq = self._frame_sequence[frame_ids]
        start, length = self._starts[seq], self._lengths[seq]
        local = frame_ids - start
        low, high = np.zeros_like(local), length - 1
        if visible is not None:
            low, high = np.maximum(low, local + visible[:, 0]), np.minimum(high, local + visible[:, 1])
        window = np.clip(local[:, None] + self._offsets[None, :], low[:, None], high[:, None])
        return window + start[:, None]

    def short_clip_views(self, count: int, rng: np.random.RandomState) -> np.ndarray:
        """(count, 2) visible offsets for `short_clips`: a share of the windows sees a random stretch of 8 to 2T
        frames containing the centre; the others see everything."""
        length = np.exp(rng.uniform(np.log(8), np.log(2 * self.frames), count)).astype(np.int64)
        before = (rng.rand(count) * length).astype(np.int64)
        cut = rng.rand(count) < self.short_clips
        big = np.iinfo(np.int64).max // 4
        return np.stack([np.where(cut, -before, -big), np.where(cut, length - 1 - before, big)], axis=1)

    def gather(self, frame_ids: np.ndarray, flipped: np.ndarray | None = None,
               visible: np.ndarray | None = None) -> Batch:
        """The windows around the given global frame ids (seeing only `visible`, see `window_indices`), mirrored
        where `flipped` is set."""
        frame_ids = np.asarray(frame_ids, dtype=np.int64)
        inputs = self._all_2d[self.window_indices(frame_ids, visible)]
        targets = root_relative(self._all_3d[frame_ids])
        if flipped is None:
            flipped = np.zeros(len(frame_ids), dtype=bool)
        if flipped.any():
            inputs[flipped] = flip_poses(inputs[flipped], self.flip_permutation)
            targets[flipped] = flip_poses(targets[flipped], self.flip_permutation)
        return Batch(inputs_2d=inputs, targets_3d=targets, flipped=flipped)

    def sample(self, batch_size: int, rng: np.random.RandomState) -> Batch:
        """A random batch; all randomness comes from `rng`, so saving its state makes resuming exact."""
        frame_ids = rng.randint(0, self.num_frames, size=batch_size)
        flipped = rng.rand(batch_size) < 0.5 if self.flip else np.zeros(batch_size, dtype=bool)
        visible = self.short_clip_views(batch_size, rng) if self.short_clips > 0 else None
        return self.gather(frame_ids, flipped, visible)

    def evenly_spaced_frames(self, count: int) -> np.ndarray:
        """`count` global frame ids spread evenly over all frames: a fixed validation subset."""
        count = min(count, self.num_frames)
        return np.linspace(0, self.num_frames - 1, count).round().astype(np.int64)

