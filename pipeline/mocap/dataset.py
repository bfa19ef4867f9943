"""Mocap clips -> `SequenceSet`s of runtime-like 2D inputs and camera-space H36M-17 targets, cached as .npz.

For every clip and virtual camera: forward kinematics (Bandai clips with randomised body proportions, since the
studio aligned all actors to one skeleton), a random playback speed, H36M-17 and COCO-17 3D points, a random camera,
projection, detector-like noise on the COCO points, the runtime's COCO-to-H36M remap, and screen normalisation.
Bandai clips are split into training and validation by (dataset, content, style) group, so takes of one motion never
land on both sides; CMU clips are only ever rendered for evaluation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np

from pipeline.geometry import normalize_screen_coordinates
from pipeline.mocap import amc, bvh
from pipeline.mocap.cameras import Camera, CameraConfig, sample_camera
from pipeline.mocap.h36m_joints import BANDAI, CMU_ASF, CMU_BVH, BodyModel, Rig, map_skeleton, perturb_landmarks
from pipeline.mocap.noise import GLITCH_WEIGHTS, DetectorNoiseConfig, corrupt_keypoints, keyframe_noise
from pipeline.skeleton import coco_to_h36m
from pipeline.training.windows import SequenceSet

log = logging.getLogger(__name__)

CACHE_ROOT = Path.home() / ".cache" / "poseformerv2-demo"
DEFAULT_MOCAP_DIR = CACHE_ROOT / "mocap"  # where the archives are unpacked
DEFAULT_DATA_DIR = CACHE_ROOT / "data"  # cached rendered sets

# Bandai body-proportion randomisation: joint -> (low, high) factor on its local translation, mirrored joints share a
# draw. The studio's skeleton has narrow shoulders (10 cm from the midline vs ~15-19 cm in people) and a short torso.
BANDAI_PROPORTIONS: dict[tuple[str, ...], tuple[float, float]] = {
    ("UpperArm_L", "UpperArm_R"): (1.0, 2.8),  # clavicle length -> shoulder width 10-20 cm from the midline
    ("Spine", "Chest", "Neck"): (0.95, 1.3),  # torso length
    ("Head",): (0.9, 1.4),  # neck length
    ("LowerArm_L", "LowerArm_R"): (0.92, 1.25),  # upper arm (Bandai ~24 cm, CMU 28-29 cm)
    ("Hand_L", "Hand_R"): (0.85, 1.2),  # forearm
    ("LowerLeg_L", "LowerLeg_R"): (0.9, 1.12),  # thigh
    ("Foot_L", "Foot_R"): (0.9, 1.12),  # shin
    ("UpperLeg_L", "UpperLeg_R"): (1.0, 1.6),  # hip width
}


@dataclass(frozen=True)
class RenderConfig:
    cameras_per_clip: int = 4
    # Playback speed factor, log-uniform: the lifter sees frames, not seconds, and run-time videos are 24-60 fps
    # (a 60 fps phone clip is the 30 fps mocap at speed 0.5), people move faster and slower than the actors.
    speed: tuple[float, float] = (0.45, 1.6)
    body_scale: tuple[float, float] = (0.85, 1.15)  # overall person size
    proportions: bool = True
    landmark_std_m: float = 0.02  # per-person offset of each COCO landmark in the body frame (see perturb_landmarks)
    noise: DetectorNoiseConfig = field(default_factory=DetectorNoiseConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    body: BodyModel = field(default_factory=BodyModel)
    # Seed of the training renderings (cameras, bodies, speeds, noise); another seed renders the same clips anew.
    # Held-out sets always use the default (`as_recorded`), so every run is measured on the same frames.
    seed: int = 0
    # Share of training renderings whose arms (collar to hand, both sides) move as in another training clip, at the
    # same moments: new combinations of arm and body motion from natural limb motion alone (PoseAug-like diversity,
    # without implausible joint angles). Real people wave, point and hold things while they walk, bend and turn.
    arm_mixing: float = 0.0
    # Share of training renderings whose whole upper body (spine, chest, neck, head and both arms) moves as in another
    # training clip, over this clip's hips and legs: a lean, a bend or a twist of the trunk with other leg motion (a
    # lunge with the trunk pitched forward and the arms flung, as in the real recording's jumps). Drawn apart from
    # arm_mixing: the two shares add up to at most 1.
    upper_body_mixing: float = 0.0
    # Share of training renderings whose ball joints (spine, neck, shoulders, hips) are turned away from the recorded
    # angles by a smooth random amount (BANDAI_PERTURBED_JOINTS): poses near the recorded ones that no actor held, as
    # PoseAug's bone-angle augmentation makes, for motions the studio never recorded. Drawn apart from the mixing, so
    # a mixed clip can be perturbed as well.
    pose_perturbation: float = 0.0
    # Share of training renderings whose detections glitch (`DetectorNoiseConfig.glitch_rate` set to GLITCH_RATE):
    # keypoints put far off for a few frames, as often as a real detector does (docs/real_footage_gap.md), meant to
    # teach the lifter not to follow a wrist that jumps onto the other arm. Drawn apart from the mixing and
    # perturbation. Measured (30 November, 0.75 against 0 side by side): no better on the real recording's wrists,
    # worse on clean input (held-out Bandai 41.9 against 40.5 mm P-MPJPE), so it is off by default.
    glitches: float = 0.0

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"the render seed must be 0 or more, not {self.seed}")
        for name in ("arm_mixing", "upper_body_mixing", "pose_perturbation", "glitches"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a share of renderings, between 0 and 1, not {getattr(self, name)}")
        if self.arm_mixing + self.upper_body_mixing > 1.0:
            raise ValueError(f"arm_mixing + upper_body_mixing is a share of renderings, at most 1, not "
                             f"{self.arm_mixing + self.upper_body_mixing}")


ARM_DONORS = 64  # mixing draws its donor among this many clips rendered before (memory stays bounded)
# Bandai joints whose rotation channels arm mixing takes from the donor clip (all actors share one skeleton).
BANDAI_ARM_JOINTS = ("Shoulder_L", "UpperArm_L", "LowerArm_L", "Hand_L",
                     "Shoulder_R", "UpperArm_R", "LowerArm_R", "Hand_R")
# ... and upper-body mixing: every joint above the hips (the Spine's rotation is relative to the Hips).
BANDAI_UPPER_BODY_JOINTS = ("Spine", "Chest", "Neck", "Head", *BANDAI_ARM_JOINTS)
# ... and pose perturbation: joint -> standard deviation of the turn added to each of its rotation channels, degrees.
# Ball joints only: the elbows and knees are hinges, which a turn about another axis would bend sideways.
BANDAI_PERTURBED_JOINTS: dict[tuple[str, ...], float] = {
    ("Spine", "Chest"): 6.0,  # the trunk bends and twists over two joints
    ("Neck",): 10.0,
    ("UpperArm_L", "UpperArm_R"): 15.0,  # shoulders: the widest range a person has
    ("UpperLeg_L", "UpperLeg_R"): 8.0,  # hips: a leg is long, 8 degrees move the ankle about 12 cm
}
PERTURBATION_KEYFRAMES = (15.0, 60.0)  # frames between the perturbation's keyframes, drawn per rendering
# Glitch starts per frame for a wrist in a glitching rendering, drawn per rendering: averaged over the range, the share
# of keypoints more than 5 % of stature off comes out near the real recording's (wrists 29 % against 31-34 %, elbows
# 19-22 % against 24-26 %, ankles 20 % against 17-23 %; `python -m pipeline.evaluation gap --mocap-clips 40`).
GLITCH_RATE = (0.0, 0.08)


@dataclass(frozen=True)
class MocapClip:
    name: str  # e.g. "dataset-2_walk_active_001"
    group: str  # split unit, e.g. "dataset-2_walk_active"
    h36m_world: np.ndarray  # (F, 17, 3) metres, Y up
    coco_world: np.ndarray  # (F, 17, 3) metres, Y up
    fps: float


# ----------------------------------------------------------------------------------------------------------------------
# Clip discovery and loading


def bandai_clip_paths(mocap_dir: Path) -> list[Path]:
    paths = sorted(Path(mocap_dir).glob("dataset/Bandai-Namco-Research-Motiondataset-*/data/*.bvh"))
    if not paths:
        raise FileNotFoundError(
            f"no Bandai BVH clips under {mocap_dir}/dataset/; unpack "
            "../shared/data/mocap/bandai_namco_research_motion_bvh.tar.xz there (python -m pipeline.mocap unpack)")
    return paths


def bandai_group(name: str) -> str:
    """Split unit of a Bandai clip: its dataset, content and style ("dataset-2_walk_active_001" -> without "_001")."""
    return name.rsplit("_", 1)[0]


def is_validation_group(group: str, share: float = 0.1) -> bool:
    """Deterministic hash split by group name: about `share` of the groups are held out."""
    digest = hashlib.sha1(group.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2 ** 32 < share


def _scaled_bvh(clip: bvh.BvhClip, rng: np.random.Generator | None, scale_range: tuple[float, float],
                proportions: dict[tuple[str, ...], tuple[float, float]]) -> bvh.BvhClip:
    """The clip with every joint's translation (offset and position channels) scaled by a random body variant."""
    if rng is None:
        return clip
    sk = clip.skeleton
    factors = np.full(sk.num_joints, rng.uniform(*scale_range))
    for joints, (low, high) in proportions.items():
        f = rng.uniform(low, high)
        for name in joints:
            factors[sk.index(name)] *= f
    motion = clip.motion.copy()
    col = 0
    for j, chans in enumerate(sk.channels):
        for k, ch in enumerate(chans):
            if ch.endswith("position"):
                motion[:, col + k] *= factors[j]
        col += len(chans)
    skeleton = dataclasses.replace(sk, offsets=sk.offsets * factors[:, None])
    return bvh.BvhClip(skeleton, motion, clip.frame_time)


def rotation_channels(skeleton: bvh.BvhSkeleton, joints: tuple[str, ...] = BANDAI_ARM_JOINTS) -> np.ndarray:
    """Column indices of the motion's rotation channels of `joints`."""
    columns, col = [], 0
    for name, chans in zip(skeleton.names, skeleton.channels, strict=True):
        if name in joints:
            columns += [col + k for k, ch in enumerate(chans) if ch.lower().endswith("rotation")]
        col += len(chans)
    if not columns:
        raise ValueError(f"the skeleton has none of the joints {joints}")
    return np.array(columns)


def mix_joints(clip: bvh.BvhClip, donor: bvh.BvhClip, rng: np.random.Generator,
               joints: tuple[str, ...] = BANDAI_ARM_JOINTS) -> bvh.BvhClip:
    """`clip` with the rotation channels of `joints` (default: the arms) taken from `donor` (same skeleton), from a
    random start in the donor, played back and forth when the donor is shorter. Everything else (root motion, the
    other joints, the clip's length) is the clip's own."""
    if donor.skeleton.names != clip.skeleton.names:
        raise ValueError("mixing joints needs two clips of the same skeleton")
    columns = rotation_channels(clip.skeleton, joints)
    frames, donor_frames = len(clip.motion), len(donor.motion)
    start = int(rng.integers(0, max(donor_frames - frames, 0) + 1))
    period = 2 * (donor_frames - 1) if donor_frames > 1 else 1
    index = (start + np.arange(frames)) % period
    index = np.where(index < donor_frames, index, period - index)  # back and forth, no jump at the ends
    motion = clip.motion.copy()
    motion[:, columns] = donor.motion[index][:, columns]
    return bvh.BvhClip(clip.skeleton, motion, clip.frame_time)


def perturb_joint_angles(clip: bvh.BvhClip, rng: np.random.Generator,
                         degrees: dict[tuple[str, ...], float] = BANDAI_PERTURBED_JOINTS) -> bvh.BvhClip:
    """`clip` with each rotation channel of the joints in `degrees` turned by a smooth random offset: a constant part
    and a part drawn at keyframes 15-60 frames apart and interpolated (`keyframe_noise`), together of the joint's
    standard deviation, so the perturbed pose drifts as a person's style of a motion does, without jerks."""
    motion = clip.motion.copy()
    spacing = rng.uniform(*PERTURBATION_KEYFRAMES)
    for joints, std in degrees.items():
        columns = rotation_channels(clip.skeleton, joints)
        constant = rng.standard_normal(len(columns))
        motion[:, columns] += std * (constant + keyframe_noise(rng, (len(motion), len(columns)), spacing)) / np.sqrt(2)
    return bvh.BvhClip(clip.skeleton, motion, clip.frame_time)


def load_bvh_clip(path: Path, rig: Rig, group: str, rng: np.random.Generator | None = None,
                  scale_range: tuple[float, float] = (1.0, 1.0),
                  proportions: dict[tuple[str, ...], tuple[float, float]] | None = None,
                  body: BodyModel | None = None, parsed: bvh.BvhClip | None = None,
                  rotations: np.ndarray | None = None) -> MocapClip:
    """A BVH file as H36M/COCO world points, with a random body variant when `rng` is given. `parsed` (the file
    parsed) and `rotations` (its world rotations) save redoing that work when one clip is rendered several times."""
    clip = parsed if parsed is not None else bvh.parse_bvh(Path(path).read_text())
    clip = _scaled_bvh(clip, rng, scale_range, proportions or {})
    positions, rotations = bvh.forward_kinematics(clip, rotations)
    h36m, coco = map_skeleton(positions, rotations, clip.skeleton.names, rig, body or BodyModel())
    return MocapClip(Path(path).stem, group, h36m, coco, 1.0 / clip.frame_time)


def load_amc_clip(asf_path: Path, amc_path: Path, body: BodyModel | None = None) -> MocapClip:
    skeleton = amc.parse_asf(Path(asf_path).read_text())
    motion = amc.parse_amc(Path(amc_path).read_text(), skeleton)
    positions, rotations = amc.forward_kinematics(skeleton, motion)
    h36m, coco = map_skeleton(positions, rotations, skeleton.names, CMU_ASF, body or BodyModel())
    return MocapClip(Path(amc_path).stem, Path(amc_path).stem, h36m, coco, 120.0)  # CMU AMC: 120 fps


def resample(points: np.ndarray, factor: float) -> np.ndarray:
    """Linear-interpolated resampling in time: `factor` > 1 plays faster (fewer frames)."""
    num = points.shape[0]
    times = np.arange(0, num - 1 + 1e-9, factor)
    lo = np.floor(times).astype(int)
    hi = np.minimum(lo + 1, num - 1)
    w = (times - lo)[:, None, None]
    return points[lo] * (1 - w) + points[hi] * w


# ----------------------------------------------------------------------------------------------------------------------
# Rendering


def render(clip_h36m: np.ndarray, clip_coco: np.ndarray, camera: Camera, rng: np.random.Generator,
           noise: DetectorNoiseConfig | None) -> tuple[np.ndarray, np.ndarray]:
    """World H36M/COCO points (F, 17, 3) -> (2D input (F, 17, 2) screen-normalised, as the lifter sees it at run time,
    3D target (F, 17, 3) in camera space, metres)."""
    coco_px = camera.project(camera.to_camera(clip_coco))
    if noise is not None:
        coco_px = corrupt_keypoints(coco_px, rng, noise)
    h36m_px, _ = coco_to_h36m(coco_px)
    inputs = normalize_screen_coordinates(h36m_px, camera.width, camera.height)
    targets = camera.to_camera(clip_h36m).astype(np.float32)
    return inputs, targets


def _render_cameras(clip: MocapClip, cameras: int, rng: np.random.Generator, config: RenderConfig,
                    speed: tuple[float, float]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for k in range(cameras):
        factor = float(np.exp(rng.uniform(*np.log(speed))))
        h36m, coco = resample(clip.h36m_world, factor), resample(clip.coco_world, factor)
        coco = perturb_landmarks(coco, h36m, rng, config.landmark_std_m)
        camera = sample_camera(coco, rng, config.camera)
        inputs, targets = render(h36m, coco, camera, rng, config.noise)
        out.append((f"{clip.name}/cam{k}", inputs, targets))
    return out


def donor_plan(count: int, seed: int) -> list[tuple[int, ...]]:
    """For each of `count` clips in rendering order, the indices of the clips mixing may draw a donor from when that
    clip is rendered: a reservoir sample of up to ARM_DONORS clips rendered before it, not just the last (same)
    group. It depends on the seed alone, so clips can be rendered apart (`render_bandai`'s workers)."""
    pool_rng = np.random.default_rng([seed, 1])
    donors: list[int] = []
    plan = []
    for i in range(count):
        plan.append(tuple(donors))
        if len(donors) < ARM_DONORS:
            donors.append(i)
        elif (slot := int(pool_rng.integers(i + 1))) < ARM_DONORS:
            donors[slot] = i
    return plan


def _render_bandai_chunk(paths: list[Path], donors: list[tuple[Path, ...]], config: RenderConfig,
                         cameras: int) -> list[tuple[np.ndarray, np.ndarray, str, str]]:
    """Consecutive clips, each through `cameras` cameras, with the donors `donor_plan` gave each: (inputs, targets,
    name, group) per rendering. Parsed clips are kept while the chunk runs (donors recur)."""
    parsed_clips: dict[Path, tuple[bvh.BvhClip, np.ndarray | None]] = {}

    def parsed_clip(path: Path, with_rotations: bool) -> tuple[bvh.BvhClip, np.ndarray | None]:
        if path not in parsed_clips or (with_rotations and parsed_clips[path][1] is None):
            clip = bvh.parse_bvh(path.read_text())
            parsed_clips[path] = (clip, bvh.forward_kinematics(clip)[1] if with_rotations else None)
        return parsed_clips[path]

    mixing = config.arm_mixing + config.upper_body_mixing
    out = []
    for path, pool in zip(paths, donors, strict=True):
        rng = np.random.default_rng([config.seed, int(hashlib.sha1(path.stem.encode()).hexdigest()[:8], 16)])
        parsed, rotations = parsed_clip(path, with_rotations=True)
        for k in range(cameras):
            source, known = parsed, rotations
            # One draw decides: below arm_mixing the arms, up to the sum the upper body, else the clip as recorded.
            if pool and (draw := rng.random()) < mixing:
                joints = BANDAI_ARM_JOINTS if draw < config.arm_mixing else BANDAI_UPPER_BODY_JOINTS
                donor = parsed_clip(pool[rng.integers(len(pool))], with_rotations=False)[0]
                source, known = mix_joints(parsed, donor, rng, joints), None
            if config.pose_perturbation > 0 and rng.random() < config.pose_perturbation:
                source, known = perturb_joint_angles(source, rng), None
            rendering = config
            if config.glitches > 0 and rng.random() < config.glitches:
                glitching = dataclasses.replace(config.noise, glitch_rate=GLITCH_RATE)
                rendering = dataclasses.replace(config, noise=glitching)
            clip = load_bvh_clip(path, BANDAI, bandai_group(path.stem), rng if config.proportions else None,
                                 config.body_scale, BANDAI_PROPORTIONS, config.body, source, known)
            _, x2, x3 = _render_cameras(clip, 1, rng, rendering, config.speed)[0]
            out.append((x2, x3, f"{clip.name}/cam{k}", clip.group))
        if len(parsed_clips) > 2 * ARM_DONORS:  # keep the donors still in the pool, drop the rest
            keep = set(pool) | {path}
            for old in [p for p in parsed_clips if p not in keep]:
                del parsed_clips[old]
    return out


RENDER_CHUNK_CLIPS = 100  # clips per task of the workers: consecutive clips share most donors


def render_bandai(paths: list[Path], config: RenderConfig, cameras: int, workers: int = 1) -> SequenceSet:
    """Every clip through `cameras` random cameras, each with its own body variant, speed and noise. Each clip's
    randomness comes from its name and the seed, and mixing's donors from `donor_plan`, so `workers` processes give
    exactly what one gives (in about 1 / workers of the time: the 2,787 training clips x 4 cameras take about 2
    minutes on one core)."""
    paths = list(paths)
    mixing = config.arm_mixing + config.upper_body_mixing
    plan = donor_plan(len(paths), config.seed) if mixing > 0 else [()] * len(paths)
    donors = [tuple(paths[j] for j in pool) for pool in plan]
    chunks = [(paths[i:i + RENDER_CHUNK_CLIPS], donors[i:i + RENDER_CHUNK_CLIPS])
              for i in range(0, len(paths), RENDER_CHUNK_CLIPS)]
    inputs, targets, names, groups = [], [], [], []
    with contextlib.ExitStack() as stack:
        arguments = ([p for p, _ in chunks], [d for _, d in chunks], repeat(config), repeat(cameras))
        if workers > 1 and len(chunks) > 1:
            # spawn, not fork: the parent may hold PyTorch's threads
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")))
            results = pool.map(_render_bandai_chunk, *arguments)
        else:
            results = map(_render_bandai_chunk, *arguments)
        for i, rendered in enumerate(results):
            for x2, x3, name, group in rendered:
                inputs.append(x2)
                targets.append(x3)
                names.append(name)
                groups.append(group)
            log.info("rendered %d/%d clips", min((i + 1) * RENDER_CHUNK_CLIPS, len(paths)), len(paths))
    return SequenceSet(inputs, targets, names, groups)


def cmu_clips(mocap_dir: Path, body: BodyModel | None = None) -> list[MocapClip]:
    """The CMU evaluation subset at 30 fps (AMC 120 fps and BVH 120 fps, every 4th frame)."""
    clips = []
    for asf_path in sorted(Path(mocap_dir).glob("cmu_asfamc/*/*.asf")):
        for amc_path in sorted(asf_path.parent.glob("*.amc")):
            c = load_amc_clip(asf_path, amc_path, body)
            clips.append(dataclasses.replace(c, h36m_world=c.h36m_world[::4], coco_world=c.coco_world[::4], fps=30.0))
    for path in sorted(Path(mocap_dir).glob("cmu_bvh/*.bvh")):
        c = load_bvh_clip(path, CMU_BVH, path.stem, body=body)
        step = max(int(round(c.fps / 30)), 1)
        clips.append(dataclasses.replace(c, h36m_world=c.h36m_world[::step], coco_world=c.coco_world[::step],
                                         fps=c.fps / step))
    if not clips:
        raise FileNotFoundError(f"no CMU clips under {mocap_dir}/cmu_asfamc or cmu_bvh; unpack "
                                "../shared/data/mocap/cmu_mocap_subset.tar.xz there (python -m pipeline.mocap unpack)")
    return clips


def render_clips(clips: list[MocapClip], config: RenderConfig, cameras: int) -> SequenceSet:
    """Evaluation rendering: fixed seed per clip name, original speed and body."""
    inputs, targets, names, groups = [], [], [], []
    for clip in clips:
        rng = np.random.default_rng([config.seed, int(hashlib.sha1(clip.name.encode()).hexdigest()[:8], 16)])
        for name, x2, x3 in _render_cameras(clip, cameras, rng, config, (1.0, 1.0)):
            inputs.append(x2)
            targets.append(x3)
            names.append(name)
            groups.append(clip.group)
    return SequenceSet(inputs, targets, names, groups)


# ----------------------------------------------------------------------------------------------------------------------
# Cache


def as_recorded(config: RenderConfig) -> RenderConfig:
    """`config` for an evaluation set: the motion as recorded (no arm or upper-body mixing, no pose perturbation), no
    glitches and the default seed; cameras and detector noise stay random."""
    return dataclasses.replace(config, arm_mixing=0.0, upper_body_mixing=0.0, pose_perturbation=0.0, glitches=0.0,
                               seed=RenderConfig.seed,
                               noise=dataclasses.replace(config.noise, glitch_rate=(0.0, 0.0)))


def held_out_config(config: RenderConfig) -> RenderConfig:
    """`config` for the held-out Bandai clips: as recorded, and with the actor's own body and speed too, so that the
    metric describes the data, not the augmentation. Cameras and detector noise stay random."""
    return dataclasses.replace(as_recorded(config), proportions=False, body_scale=(1.0, 1.0), speed=(1.0, 1.0))


def settings_key(kind: str, config: RenderConfig, extra: dict | None = None) -> str:
    """A short hash of everything that determines a rendered set (bump `version` when the code's output changes)."""
    settings = dataclasses.asdict(config)
    for added_later in ("arm_mixing", "upper_body_mixing", "pose_perturbation", "glitches"):  # unused, a set hashes
        if settings[added_later] == 0:  # as before: its cache stays valid
            del settings[added_later]
    if settings["noise"]["glitch_rate"] == (0.0, 0.0) and config.glitches == 0:
        for added_later in ("glitch_rate", "glitch_frames", "glitch_size", "glitch_hold"):
            del settings["noise"][added_later]
    if config.glitches > 0:
        settings["glitch_rate"] = GLITCH_RATE
        settings["glitch_weights"] = GLITCH_WEIGHTS
    if config.pose_perturbation > 0:
        settings["perturbed_joints"] = {"+".join(k): v for k, v in BANDAI_PERTURBED_JOINTS.items()}
        settings["perturbation_keyframes"] = PERTURBATION_KEYFRAMES
    payload = {"kind": kind, "version": 5, "config": settings,
               "proportions": {"+".join(k): v for k, v in BANDAI_PROPORTIONS.items()}, **(extra or {})}
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def save_set(path: Path, sequences: SequenceSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, inputs_2d=np.concatenate(sequences.inputs_2d), targets_3d=np.concatenate(sequences.targets_3d),
             lengths=np.array([len(x) for x in sequences.inputs_2d]), names=np.array(sequences.names),
             groups=np.array(sequences.groups if sequences.groups is not None else sequences.names))
    tmp.replace(path)


def load_set(path: Path) -> SequenceSet:
    with np.load(path, allow_pickle=False) as data:
        bounds = np.cumsum(data["lengths"])[:-1]
        return SequenceSet(np.split(data["inputs_2d"], bounds), np.split(data["targets_3d"], bounds),
                           [str(n) for n in data["names"]], [str(g) for g in data["groups"]])


@dataclass
class MocapData:
    train: SequenceSet | None  # Bandai training groups (None when not asked for)
    validation: SequenceSet  # held-out Bandai groups
    cmu: SequenceSet | None  # CMU evaluation subset (never for training)


def _bandai_paths(mocap_dir: Path, limit_clips: int | None) -> list[Path]:
    paths = bandai_clip_paths(mocap_dir)
    if limit_clips is not None:
        paths = paths[:: max(len(paths) // limit_clips, 1)][:limit_clips]
    return paths


FRESH_SEEDS = 1_000_000  # the seeds of fresh renderings start here, clear of the seeds build --render-seed is given


def fresh_render_seed(render_seed: int, stretch: int) -> int:
    """The seed of a run's `stretch`-th training set (`train --fresh-renders`): stretch 0 is the `render_seed` set
    itself, later ones get seeds of their own, which `--render-seed` sets built by hand (e.g. to measure a network on
    renderings it never saw) do not reach."""
    return render_seed if stretch == 0 else FRESH_SEEDS + 1000 * render_seed + stretch


def render_training_set(mocap_dir: Path, config: RenderConfig, limit_clips: int | None = None,
                        workers: int = 1) -> SequenceSet:
    """The Bandai training clips rendered with `config` (its seed included), not cached: about 2 minutes on one core
    for the 2,787 clips x 4 cameras, a fraction of the hours a network trains on them."""
    paths = [p for p in _bandai_paths(mocap_dir, limit_clips) if not is_validation_group(bandai_group(p.stem))]
    log.info("rendering the training clips with seed %d: %d clips x %d cameras", config.seed, len(paths),
             config.cameras_per_clip)
    return render_bandai(paths, config, config.cameras_per_clip, workers)


def build_sets(mocap_dir: Path = DEFAULT_MOCAP_DIR, data_dir: Path = DEFAULT_DATA_DIR,
               config: RenderConfig = RenderConfig(), validation_cameras: int = 2, with_cmu: bool = True,
               limit_clips: int | None = None, with_train: bool = True, workers: int = 1) -> MocapData:
    """Render (or load from the cache) the Bandai train/validation sets and the CMU evaluation set. `with_train`
    False skips the training set (evaluation alone: rendering it takes about 5 minutes, loading it 650 MB). `workers`
    processes render the Bandai sets (the same sets, faster)."""
    paths = _bandai_paths(mocap_dir, limit_clips)
    val_paths = [p for p in paths if is_validation_group(bandai_group(p.stem))]
    train_paths = [p for p in paths if not is_validation_group(bandai_group(p.stem))]
    extra = {"clips": len(paths), "limit": limit_clips}
    sets: dict[str, SequenceSet | None] = {"bandai_train": None}
    val_config = held_out_config(config)
    for kind, clip_paths, cams, cfg in (("bandai_train", train_paths, config.cameras_per_clip, config),
                                        ("bandai_val", val_paths, validation_cameras, val_config)):
        if kind == "bandai_train" and not with_train:
            continue
        path = Path(data_dir) / f"{kind}_{settings_key(kind, cfg, {**extra, 'cameras': cams})}.npz"
        if path.exists():
            sets[kind] = load_set(path)
        else:
            log.info("rendering %s: %d clips x %d cameras -> %s", kind, len(clip_paths), cams, path)
            sets[kind] = render_bandai(clip_paths, cfg, cams, workers)
            save_set(path, sets[kind])
    cmu = None
    if with_cmu:
        cmu_config = as_recorded(config)  # evaluation data
        path = Path(data_dir) / f"cmu_{settings_key('cmu', cmu_config, {'cameras': validation_cameras})}.npz"
        if path.exists():
            cmu = load_set(path)
        else:
            cmu = render_clips(cmu_clips(mocap_dir, cmu_config.body), cmu_config, validation_cameras)
            save_set(path, cmu)
    return MocapData(sets["bandai_train"], sets["bandai_val"], cmu)
