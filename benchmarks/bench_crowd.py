"""Recall versus speed of the 2D stage on crowds of small people, and how well identities last.

    python benchmarks/bench_crowd.py [--clips sample,views,mosaic_sports,mosaic_multi] [--settings 640,auto] \
        [--no-recovery]

Each clip runs the whole 2D stage with --all-people at the input sizes 640, 960, 1280 and auto (the sample clip:
640, 1280, auto). About an hour on 2 busy CPU cores.

Clips (built from ../shared into ~/.cache/poseformerv2-demo/bench_crowd on the first run, never into the repository):
- `mosaic_sports`: 1280x720, 230 frames at 30 frames/s: nine copies of the sample clip, scaled to 0.16, 0.22 and 0.32
  and started at different frames, so up to 18 people 60-135 px tall walk and jump at once.
- `mosaic_multi`: 768x576, 100 frames at 60 frames/s: the four views of the pose2sim two-person recording side by
  side, scaled to 0.14: 10 people 55-140 px tall (a third person stands in the back of two views).
- `sample`: the sample clip itself (1768x994, two people 380-420 px tall): the fast path.

Reference (as the issue's check): the bundled yolo11n-pose at 1280 px input, confidence >= 0.5, boxes >= 50 px tall,
per frame. Recall: the share of reference person-frames that a box reported as detected (`valid`, every person of an
`all_people` run) overlaps with IoU >= 0.5. Precision: the share of reported boxes that overlap a reference box with
IoU >= 0.3. Speed: frames per second of the whole 2D stage (decode, imgsz probe, detection, tracking) with one thread.
Fragmentation: in the mosaics people are known by construction (each tile shows a source clip whose people are
tracked at full size, where they are easy), so tracks per known person and identity switches are counted against
them; in the four full-size views of the two-person recording (`views`) the two main people are told apart by torso
colour (the shirtless man, the woman in a grey shirt) and a switch is a track changing colour. In the mosaics the
known people are also a second reference (`known recall`, `known prec.`, the same IoU rules): it tells a box the
1280 px reference misses (the third person in the back of the two-person recording, a jumper blurred in mid-air) from
a box on no one, and counts the people the reference misses among those to find.
Last, our tracker against Ultralytics' ByteTrack on the same recorded detections (needs `pip install lap`; skipped
with a note when it is missing).
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLE_CLIP = SHARED / "data" / "videos" / "sports2d_demo.mp4"
MULTI_DIR = SHARED / "data" / "multiview" / "pose2sim_multi"
CACHE = Path.home() / ".cache" / "poseformerv2-demo" / "bench_crowd"
GREY = (114, 114, 114)


@dataclass(frozen=True)
class Tile:
    """One copy of a source clip in the mosaic: its scale, top-left corner and first source frame."""

    source: str  # file name under its folder
    scale: float
    x: int
    y: int
    offset: int = 0  # source frame shown on mosaic frame 0 (the source loops)


MOSAICS = {
    # 4 small (0.16: ~65 px), 3 middle (0.22: ~90 px), 2 larger (0.32: ~130 px) copies of the sample clip.
    "mosaic_sports": ((1280, 720), 30.0, 230, [Tile("sports2d_demo.mp4", 0.16, 320 * i + 18, 4, 57 * i)
                                                 for i in range(4)]
                      + [Tile("sports2d_demo.mp4", 0.22, 426 * i + 19, 168, 31 + 71 * i) for i in range(3)]
                      + [Tile("sports2d_demo.mp4", 0.32, 40 + 632 * i, 400, 113 + 97 * i) for i in range(2)]),
    # The four synchronised views of the two-person recording (a third person stands in the back), 0.14 each.
    "mosaic_multi": ((768, 576), 60.0, 100, [Tile(f"cam0{i + 1}.mp4", 0.14, 22 + 188 * i, 150) for i in range(4)]),
}


def source_path(name: str) -> Path:
    return SAMPLE_CLIP if name == SAMPLE_CLIP.name else MULTI_DIR / name


def build_mosaic(name: str, dest: Path) -> Path:
    """Write the mosaic clip `name` (MOSAICS) to dest as H.264, unless it is there already."""
    from pipeline.media.decode import iter_frames
    from pipeline.media.encode import EncoderConfig, VideoWriter

    if dest.is_file():
        return dest
    (width, height), fps, frames, tiles = MOSAICS[name]
    scaled: dict[tuple[str, float], list[np.ndarray]] = {}
    for tile in tiles:
        if (tile.source, tile.scale) not in scaled:
            scaled[(tile.source, tile.scale)] = [cv2.resize(f, None, fx=tile.scale, fy=tile.scale,
                                                            interpolation=cv2.INTER_AREA)
                                                 for f in iter_frames(source_path(tile.source))]
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The encoding the README's figures were measured on, pinned: the demo's own output setting (superfast, CRF 23
    # since 1 December) blurs small people more, and a clip of 55-140 px people would change with it.
    with VideoWriter(dest, (width, height), fps, frame_count=frames,
                     config=EncoderConfig(preset="veryfast", crf=20)) as writer:
        for t in range(frames):
            canvas = np.full((height, width, 3), GREY, np.uint8)
            for tile in tiles:
                source = scaled[(tile.source, tile.scale)]
                image = source[(tile.offset + t) % len(source)]
                h, w = image.shape[:2]
                canvas[tile.y:tile.y + h, tile.x:tile.x + w] = image[: height - tile.y, : width - tile.x]
            writer.write(canvas)
    return dest


def tile_of(box: np.ndarray, tiles: list[Tile]) -> int:
    """The mosaic tile that holds a box's centre (-1: none)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for k, tile in enumerate(tiles):
        w, h = (1768, 994) if tile.source == SAMPLE_CLIP.name else (1088, 1920)
        if tile.x <= cx < tile.x + w * tile.scale and tile.y <= cy < tile.y + h * tile.scale:
            return k
    return -1


def frame_source(clip: str) -> Path:
    if clip == "sample":
        return SAMPLE_CLIP
    return MULTI_DIR / f"{clip}.mp4" if clip.startswith("cam") else CACHE / f"{clip}.mp4"


class RecordingDetector:
    """Wraps the real detector and keeps every call's detections per input size: the replay reuses them."""

    def __init__(self, detector):
        self.detector = detector
        self.has_keypoints = detector.has_keypoints
        self.calls: dict[int, list] = {}

    def __call__(self, frames, imgsz=None):
        out = self.detector(frames, imgsz=imgsz)
        self.calls.setdefault(int(imgsz or self.detector.config.imgsz), []).extend(out)
        return out


class ReplayDetector:
    """Gives back recorded detections per (input size, frame index); frames carry their index in pixel (0, 0)."""

    has_keypoints = True

    def __init__(self, recorded: dict[int, list]):
        self.recorded = recorded

    def __call__(self, frames, imgsz=None):
        return [self.recorded[int(imgsz)][frame_index(f)] for f in frames]


def frame_index(frame: np.ndarray) -> int:
    return int(frame[0, 0, 0]) + 256 * int(frame[0, 0, 1]) + 65536 * int(frame[0, 0, 2])


def coded_frames(count: int, size: tuple[int, int]):
    """Blank frames of the clip's size whose first pixel carries the frame index (for ReplayDetector)."""
    for i in range(count):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[0, 0] = (i % 256, (i // 256) % 256, i // 65536)
        yield frame


def reference_boxes(clip: str) -> list[np.ndarray]:
    """Per frame, the reference people: yolo11n-pose at 1280, confidence >= 0.5, boxes >= 50 px tall (cached)."""
    path = CACHE / f"reference_{clip}.npz"
    if not path.is_file():
        from pipeline.detection import DetectorConfig, PersonDetector
        from pipeline.media.decode import iter_frames
        from pipeline.pose2d import batched

        detector = PersonDetector(DetectorConfig(imgsz=1280, conf=0.5))
        boxes = []
        for batch in batched(iter_frames(frame_source(clip)), 8):
            boxes += [d.boxes[(d.boxes[:, 3] - d.boxes[:, 1]) >= 50] for d in detector(batch)]
        np.savez(path, counts=[len(b) for b in boxes], boxes=np.concatenate(boxes).reshape(-1, 4))
    with np.load(path) as data:
        return np.split(data["boxes"], np.cumsum(data["counts"])[:-1])


def reported_boxes(output) -> list[np.ndarray]:
    """Per frame, the boxes of every reported person detected there (`valid`), as the issue's check reads them."""
    per_frame = [[] for _ in range(output.num_frames)]
    for person in output.people:
        for t in np.flatnonzero(person.valid):
            per_frame[t].append(person.boxes[t])
    return [np.array(b, np.float32).reshape(-1, 4) for b in per_frame]


def coverage(reference: list[np.ndarray], reported: list[np.ndarray]) -> tuple[float, float]:
    """(recall, precision): reference boxes matched one-to-one (greedy, best IoU first) by a reported box with
    IoU >= 0.5; reported boxes that overlap some reference box with IoU >= 0.3."""
    from pipeline.detection import box_iou

    found = total = good = shown = 0
    for ref, rep in zip(reference, reported, strict=True):
        total += len(ref)
        shown += len(rep)
        if len(ref) == 0 or len(rep) == 0:
            continue
        iou = box_iou(ref, rep)
        good += int((iou.max(axis=0) >= 0.3).sum())
        pairs = sorted(((iou[i, j], i, j) for i in range(len(ref)) for j in range(len(rep)) if iou[i, j] >= 0.5),
                       reverse=True)
        used_ref, used_rep = set(), set()
        for _, i, j in pairs:
            if i not in used_ref and j not in used_rep:
                used_ref.add(i)
                used_rep.add(j)
        found += len(used_ref)
    return found / max(total, 1), good / max(shown, 1)


def tile_identities(clip: str, sources: dict[str, object]) -> list[list[tuple[tuple, np.ndarray]]]:
    """Per mosaic frame, the known people as (identity, box): the people tracked in each source clip at full size
    (`sources`: source file name -> its Pose2DOutput; the sample's jumper and walker are far apart there, and each
    view of the two-person recording keeps both identities, see colour_switches) placed into every tile that
    shows that source; identity = (tile, track id, loop of the source)."""
    (_, _), _, frames, tiles = MOSAICS[clip]
    out = []
    for t in range(frames):
        here = []
        for k, tile in enumerate(tiles):
            source = sources[tile.source]
            loop, s = divmod(tile.offset + t, source.num_frames)
            for person in source.people:
                if person.valid[s]:
                    box = person.boxes[s] * tile.scale + np.array([tile.x, tile.y, tile.x, tile.y], np.float32)
                    here.append(((k, person.track_id, loop), box))
        out.append(here)
    return out


def known_boxes(identities) -> list[np.ndarray]:
    """Per mosaic frame, the (K, 4) boxes of the known people (tile_identities), to score against like a reference."""
    return [np.array([box for _, box in known], np.float32).reshape(-1, 4) for known in identities]


def fragmentation(output, identities) -> tuple[float, int]:
    """(tracks per known person, identity switches): reported detected boxes matched to known people (IoU >= 0.5);
    a switch is a person's matched track id changing between consecutive matches."""
    from pipeline.detection import box_iou

    tracks_of: dict[tuple, list[int]] = {}
    for t, known in enumerate(identities):
        reported = [(p.track_id, p.boxes[t]) for p in output.people if p.valid[t]]
        if not known or not reported:
            continue
        iou = box_iou(np.stack([b for _, b in known]), np.stack([b for _, b in reported]))
        for i, (identity, _) in enumerate(known):
            j = int(iou[i].argmax())
            if iou[i, j] >= 0.5:
                tracks_of.setdefault(identity, []).append(reported[j][0])
    if not tracks_of:
        return float("nan"), 0
    per_person = np.mean([len(set(ids)) for ids in tracks_of.values()])
    switches = sum(int(np.sum(np.diff(ids) != 0)) for ids in tracks_of.values())
    return float(per_person), switches


class _Boxes:
    """What Ultralytics' BYTETracker reads from a frame's detections: conf, cls, xywh, boolean indexing."""

    def __init__(self, xyxy: np.ndarray, conf: np.ndarray):
        self.xyxy, self.conf, self.cls = xyxy, conf, np.zeros(len(conf))

    @property
    def xywh(self) -> np.ndarray:
        return np.concatenate([(self.xyxy[:, :2] + self.xyxy[:, 2:]) / 2, self.xyxy[:, 2:] - self.xyxy[:, :2]], axis=1)

    def __getitem__(self, mask):
        return _Boxes(self.xyxy[mask], self.conf[mask])

    def __len__(self) -> int:
        return len(self.conf)


def bytetrack_tracks(detections: list, fps: float) -> list:
    """Ultralytics' ByteTrack (its default settings, `lap` needed) over recorded detections -> TrackSequences."""
    from types import SimpleNamespace

    from ultralytics.trackers.byte_tracker import BYTETracker

    from pipeline.tracking import TrackSequence

    # Ultralytics' bytetrack.yaml, with the lost-track buffer of one second like our max_missed.
    args = SimpleNamespace(track_high_thresh=0.25, track_low_thresh=0.1, new_track_thresh=0.25,
                           track_buffer=round(fps), match_thresh=0.8, fuse_score=True)
    tracker = BYTETracker(args)
    rows: dict[int, list] = {}
    for t, d in enumerate(detections):
        for row in tracker.update(_Boxes(d.boxes, d.confidences)):  # x1 y1 x2 y2 id score class index
            tid, i = int(row[4]), int(row[7])
            rows.setdefault(tid, []).append((t, d.boxes[i], d.confidences[i], d.keypoints[i],
                                                  d.keypoint_scores[i]))
    return [TrackSequence(tid, np.array([r[0] for r in rs]), np.stack([r[1] for r in rs]),
                          np.array([r[2] for r in rs], np.float32), np.stack([r[3] for r in rs]),
                          np.stack([r[4] for r in rs])) for tid, rs in sorted(rows.items())]


def people_from_tracks(tracks: list, num_frames: int, size: tuple[int, int], fps: float):
    """The 2D stage's output (all people) for tracks made by another tracker."""
    from pipeline.pose2d import Pose2DConfig, Pose2DOutput, assemble_person
    from pipeline.tracking import select_tracks

    c = Pose2DConfig(all_people=True).at_fps(fps)
    chosen = select_tracks(tracks, num_frames, all_people=True, min_track_frames=c.min_track_frames,
                           max_gap=c.max_gap)
    people = [assemble_person(t, t.keypoints, t.keypoint_scores, num_frames, c.max_gap, c.tracker.new_track_conf)
              for t in chosen]
    return Pose2DOutput(people, [t.summary(c.max_gap) for t in tracks], num_frames, size)


@dataclass
class Run:
    clip: str
    setting: str
    output: object  # Pose2DOutput
    detections: dict  # imgsz -> per-frame FrameDetections (probe included)
    wall_s: float
    cpu_s: float


def run_2d(clip: str, setting: str, detector, recovery: bool = True) -> Run:
    """The whole 2D stage (all people) on a clip, timed: wall clock and this process's CPU time. `recovery`: the
    second look at the people's missed frames (`pipeline.recovery`), on by default as in demo.py."""
    from pipeline.media.decode import iter_frames
    from pipeline.media.ffmpeg import probe
    from pipeline.pose2d import Pose2DConfig, Pose2DEstimator
    from pipeline.recovery import RecoveryConfig

    path = frame_source(clip)
    fps = probe(path).fps
    recorder = RecordingDetector(detector)
    estimator = Pose2DEstimator(Pose2DConfig(imgsz=setting, all_people=True,
                                             recovery=RecoveryConfig(enabled=recovery)), detector=recorder)
    wall, cpu = time.perf_counter(), time.process_time()
    output = estimator.run(lambda: iter_frames(path), fps=fps)
    return Run(clip, setting, output, recorder.calls, time.perf_counter() - wall, time.process_time() - cpu)


def torso_saturation(frame: np.ndarray, keypoints: np.ndarray) -> float:
    """Median HSV saturation inside the shoulder-hip quadrilateral (COCO 5, 6, 12, 11): in the two-person recording
    the shirtless man's torso is above 40, the woman's grey shirt below 20 in every view."""
    mask = np.zeros(frame.shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, keypoints[[5, 6, 12, 11]].astype(np.int32), 1)
    return float(np.median(cv2.cvtColor(frame, cv2.COLOR_BGR2HSV)[..., 1][mask > 0])) if mask.any() else np.nan


def colour_switches(run: Run) -> tuple[int, int]:
    """Two-person recording, one view: (tracks of the two main people, identity switches). The two largest
    people are told apart by torso colour (torso_saturation); a switch is a track whose colour class changes for
    at least 3 frames in a row."""
    from pipeline.media.decode import iter_frames

    main = sorted(run.output.people, key=lambda p: -np.median(p.boxes[p.valid, 3] - p.boxes[p.valid, 1]))[:2]
    classes = {p.track_id: [] for p in main}
    for t, frame in enumerate(iter_frames(frame_source(run.clip))):
        for p in main:
            if p.valid[t]:
                classes[p.track_id].append(torso_saturation(frame, p.keypoints_coco[t]) >= 30)
    switches = 0
    for seq in classes.values():
        runs = np.split(np.array(seq), np.flatnonzero(np.diff(seq)) + 1)
        switches += sum(1 for r in runs[1:] if len(r) >= 3)
    return len(main), switches


CLIP_SETTINGS = {"sample": ["640", "1280", "auto"], "mosaic_sports": ["640", "960", "1280", "auto"],
                 "mosaic_multi": ["640", "960", "1280", "auto"]}
VIEWS = [f"cam0{i}" for i in range(1, 5)]
HEADER = (f"{'clip':<14} {'setting':>7} {'imgsz':>5} {'fps':>6} {'CPU ms/frame':>12} {'recall':>6} {'precision':>9} "
          f"{'known recall':>12} {'known prec.':>11} {'people':>6} {'tracks':>6} {'tracks/person':>13} "
          f"{'switches':>8}")


def known_people(clip: str, sources: dict) -> list | None:
    """The mosaics' known identities, from the full-size 2D outputs of their sources (`sources`: "sample", "cam01",
    ... -> Pose2DOutput; None when those did not run)."""
    if clip == "mosaic_sports" and "sample" in sources:
        return tile_identities(clip, {SAMPLE_CLIP.name: sources["sample"]})
    if clip == "mosaic_multi" and all(v in sources for v in VIEWS):
        return tile_identities(clip, {f"{v}.mp4": sources[v] for v in VIEWS})
    return None


def report(run: Run, sources: dict) -> None:
    out = run.output
    recall, precision = (coverage(reference_boxes(run.clip), reported_boxes(out)) if run.clip in CLIP_SETTINGS
                         else (np.nan, np.nan))
    known = known_people(run.clip, sources)
    known_recall = known_prec = np.nan
    if known is not None:
        per_person, switches = fragmentation(out, known)
        known_recall, known_prec = coverage(known_boxes(known), reported_boxes(out))
    elif run.clip in VIEWS:
        main_people, switches = colour_switches(run)
        per_person = main_people / 2
    else:
        per_person, switches = np.nan, -1
    print(f"{run.clip:<14} {run.setting:>7} {out.detection['imgsz']:>5} {out.num_frames / run.wall_s:>6.2f} "
          f"{1000 * run.cpu_s / out.num_frames:>12.0f} {recall:>6.3f} {precision:>9.3f} {known_recall:>12.3f} "
          f"{known_prec:>11.3f} {len(out.people):>6} {len(out.tracks):>6} {per_person:>13.2f} {switches:>8}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", default="sample,views,mosaic_sports,mosaic_multi",
                        help="comma-separated, in this order: sample, views (the four full-size views of the "
                        "two-person recording), mosaic_sports, mosaic_multi")
    parser.add_argument("--build-only", action="store_true", help="only build the mosaic clips")
    parser.add_argument("--no-recovery", action="store_true",
                        help="without the 2D stage's second look at the people's missed frames (the mosaics' known "
                        "people still come from their sources' runs with it)")
    parser.add_argument("--settings", default=None,
                        help="comma-separated input sizes to run the sample and the mosaics at, e.g. 640,auto "
                        "(default: each clip's own list; the sources of the mosaics' known people run at auto)")
    args = parser.parse_args()
    import torch

    from pipeline.detection import PersonDetector

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for name in MOSAICS:
        build_mosaic(name, CACHE / f"{name}.mp4")
    if args.build_only:
        return
    detector = PersonDetector()
    print(HEADER, flush=True)
    runs: dict[tuple[str, str], Run] = {}
    sources: dict[str, object] = {}  # the mosaics' source clips at full size, with the second look: known people
    for group in args.clips.split(","):
        if group == "views":
            todo = [(v, "auto") for v in VIEWS]
        else:
            todo = [(group, s) for s in (args.settings.split(",") if args.settings else CLIP_SETTINGS[group])]
            if group == "sample" and ("sample", "auto") not in todo:
                todo.append(("sample", "auto"))
        for clip, setting in todo:
            runs[(clip, setting)] = run = run_2d(clip, setting, detector, recovery=not args.no_recovery)
            if setting == "auto" and (clip == "sample" or clip in VIEWS):
                sources[clip] = run.output if not args.no_recovery else run_2d(clip, "auto", detector).output
            report(run, sources)
    compare_trackers(runs, sources)


def compare_trackers(runs: dict, sources: dict) -> None:
    """Ours against Ultralytics' ByteTrack on the same recorded detections (the auto runs)."""
    import importlib.util

    if importlib.util.find_spec("lap") is None:
        print("\nByteTrack comparison skipped: Ultralytics' trackers need the lap package (pip install lap)")
        return
    print(f"\n{'clip':<14} {'tracker':>9} {'recall':>6} {'precision':>9} {'people':>6} {'tracks':>6} "
          f"{'tracks/person':>13} {'switches':>8}")
    for (clip, setting), run in runs.items():
        if setting != "auto" or clip not in CLIP_SETTINGS:
            continue
        from pipeline.media.ffmpeg import probe

        fps = probe(frame_source(clip)).fps
        detections = run.detections[run.output.detection["imgsz"]][-run.output.num_frames:]
        for name in ("ours", "bytetrack"):
            out = run.output if name == "ours" else people_from_tracks(
                bytetrack_tracks(detections, fps), run.output.num_frames, run.output.image_size, fps)
            recall, precision = coverage(reference_boxes(clip), reported_boxes(out))
            known = known_people(clip, sources)
            per_person, switches = fragmentation(out, known) if known is not None else (np.nan, -1)
            print(f"{clip:<14} {name:>9} {recall:>6.3f} {precision:>9.3f} {len(out.people):>6} "
                  f"{len(out.tracks):>6} {per_person:>13.2f} {switches:>8}", flush=True)


if __name__ == "__main__":
    main()
