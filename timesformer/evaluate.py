"""A checkpoint's accuracy on a labelled video set: the pipeline behind ``timesformer evaluate``.

Data flow (DESIGN.md section 8): the (path, label) list, sorted by path, less the videos a resumed run has
already done, is sharded across the ranks of a ``torchrun`` job (video ``i`` to rank ``i % world_size``); a
``torch.utils.data.DataLoader`` with worker processes decodes each video once and cuts its views (``clips``
uniform temporal clips x ``crops`` spatial crops after resizing the short side); the model scores all views
of a batch of videos in one forward; a video's score is the **mean of the softmax probabilities of its
views**; each result is appended to a JSON lines file and flushed per batch, so a killed run resumes where it
stopped (``resume=True``); after a barrier, rank 0 merges the ranks' files into ``predictions.jsonl`` and
writes ``metrics.json``, ``metrics.md`` and a confusion matrix.

A video that cannot be decoded (or whose batch fails in the model) is written as an error line and counted;
it never stops the run. Accuracy is over the videos that were scored; ``num_errors`` says how many were not.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import errno
import functools
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
import signal
import socket
import stat
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .backends import get_backend
from .classify import score_each, synchronize
from .preprocess import native_cuda_available
from .video import MAX_FRAME_PIXELS, MAX_NUM_FRAMES, VideoError, read_video, sample_frame_indices

logger = logging.getLogger("timesformer")

PREDICTIONS = "predictions.jsonl"
# The settings every prediction of an output folder was made with: a resumed run must use the same ones.
SETTINGS = "settings.json"
# One file per rank while a distributed run works; merged into PREDICTIONS by rank 0 at the end.
PART = "predictions.part-{rank:05d}.jsonl"
MAX_DEFAULT_WORKERS = 16
# Decoding workers that may die on a video (its error line) before a run stops: more is no longer one bad file.
MAX_WORKER_DEATHS = 8
# A list file is read whole (1 GiB: some ten million lines).
MAX_LIST_BYTES = 2**30
# How long a torchrun rank waits for the others in a collective (the first barrier, the final count).
DIST_TIMEOUT_S = 2 * 3600
# Written by rank 0 in DIR before any video, read by every rank: DIR is one folder they all share.
JOB_MARK = ".evaluate-job"
# The ranks' hold on DIR while a run works in it (``_lock``, ``_hold_rank``).
LOCK = ".evaluate-lock"
# One file per video a run decodes in its own process (``--workers 0``) while it does (a hash of its path
# follows): the runs that ended reading it, then its path. Left by a decoder crash (or a kill from outside),
# kept until the video has a final line; ``_ended`` reads them.
READING = ".evaluate-reading-"
# Runs that may end while decoding a video before ``--workers 0`` no longer tries it (an error line): one
# may have been killed from outside (a preempted job), and that video is then tried again as if never begun.
MAX_RUNS_ENDED_READING = 2


# ------------------------------------------------------------------------------------------ the data


class OutputError(OSError):
    """A result file could not be written (full disk, quota): the lines written so far are kept."""


class WorkerError(RuntimeError):
    """A decoding worker process died (killed by a signal: out of memory, a decoder crash)."""


class RankLostError(RuntimeError):
    """Another rank of a ``torchrun`` job died during the run (its machine, its process): this rank's lines
    are kept, and ``--resume`` goes on with every rank's."""


class RankError(RuntimeError):
    """The ranks of a ``torchrun`` job cannot work together: another rank failed to set up, or the ranks see
    different videos or output folders. Raised on every rank, so that none waits for the others."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


def class_ids(id2label: Mapping[int, str], label2id: Mapping[str, int]) -> dict[str, int]:
    """``{name: class index}`` for a dataset's label names: ``id2label``'s names (those the predictions carry),
    and ``label2id``'s other names that point to a class. A ``label2id`` entry that points to another class than
    ``id2label`` names, or past the classes, is left out with a warning naming it: its videos would be scored
    against a class other than the one their predictions name, or written as lines no run can read back."""
    names: dict[str, int] = {}
    for index in sorted(id2label):
        names.setdefault(str(id2label[index]), index)  # a name given twice: its first class ...
    for name, index in label2id.items():
        if str(id2label.get(index)) == name:
            names[name] = index  # ... unless label2id picks another of its classes
        elif index not in id2label:
            warnings.warn(
                f"the model's label2id[{name!r}] = {index!r} is not one of its {len(id2label)} classes: "
                "ignored; fix the model's config.json",
                stacklevel=2,
            )
        elif name in names:
            warnings.warn(
                f"the model's label2id[{name!r}] = {index!r} disagrees with its id2label (class {index} is "
                f"{id2label[index]!r}, {name!r} is class {names[name]}): id2label's is used, the name "
                "predictions carry; fix the model's config.json",
                stacklevel=2,
            )
        else:
            names[name] = index  # another name of the class: kept, as transformers keeps it
    return names


def _label_of(text: str, label2id: dict[str, int], num_labels: int, where: str) -> int | str:
    """A label index from a name or an integer string; an unknown name is returned as a str."""
    text = text.strip()
    if text in label2id:
        return int(label2id[text])
    try:
        index = int(text)
    except ValueError:
        return text
    if not 0 <= index < num_labels:
        raise ValueError(f"{where}: label index {index} is out of range 0-{num_labels - 1}")
    return index


def _unknown_labels_error(unknown: dict[str, str], label2id: dict[str, int], num_labels: int) -> ValueError:
    names = sorted(unknown)
    shown = ", ".join(f"{n!r} ({unknown[n]})" for n in names[:5])
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    known = ", ".join(repr(k) for k in sorted(label2id)[:5])
    return ValueError(
        f"{len(names)} label name(s) are not class names of the model: {shown}{more}; expected a class name "
        f"(e.g. {known}) or an index 0-{num_labels - 1}"
    )


def _is_label_text(text: str, label2id: dict[str, int]) -> bool:
    return text in label2id or text.lstrip("-").isdigit()


def _split_on_spaces(text: str, label2id: dict[str, int]) -> list[str]:
    """``path label`` separated by spaces, where class names may hold spaces too (``playing guitar``): the
    longest trailing run of words that is a class name or an integer is the label, else the last word. The
    path keeps its own spaces as written (``my  video.mp4``)."""
    for gap in re.finditer(r"\s+", text):
        if _is_label_text(text[gap.end() :], label2id):
            return [text[: gap.start()], text[gap.end() :]]
    return text.rsplit(None, 1)


def _split_line(text: str, label2id: dict[str, int]) -> list[str]:
    """``path label`` of a list line: tab separated where it holds a tab; else comma separated (CSV, quotes
    allowed) or space separated, whichever gives two fields ending in a label (a comma may be part of a
    space-separated path: ``a,b.mp4 0``)."""
    if "\t" in text:
        return text.split("\t")  # no quoting rules: a path keeps its quotes as written
    ways = [next(csv.reader([text]))] if "," in text else []
    ways.append(_split_on_spaces(text, label2id))
    for fields in ways:
        fields = [x.strip() for x in fields if x.strip()]
        if len(fields) == 2 and _is_label_text(fields[1], label2id):
            return fields
    return ways[0]


def _warn_if_a_file(text: str, number: int, base: Path, data, label2id: dict[str, int]) -> None:
    """A comment line (``#...``) that names an existing file as written, ``#1 take.mp4 0``: say how to list it."""
    fields = [x.strip() for x in _split_line(text, label2id) if x.strip()]
    try:
        named = len(fields) == 2 and (base / fields[0]).is_file()
    except OSError:  # a commented-out line whose first field is no possible name (too long)
        return
    if named:
        warnings.warn(
            f"DATA {data}, line {number}: skipped as a comment (it starts with '#'), but {fields[0]!r} is a file; "
            f"to evaluate it, write its path as ./{fields[0]}",
            stacklevel=3,
        )


# The usual names of video files, for the warning about those beside the class folders (inside a class folder
# every file is a video, whatever its name).
_VIDEO_SUFFIXES = frozenset(
    [
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".mpg",
        ".mpeg",
        ".ts",
        ".mts",
        ".m2ts",
        ".flv",
        ".wmv",
        ".3gp",
        ".ogv",
        ".gif",
    ]
)


def _videos_under(folder: Path, owners: dict[str, Path], skip: str | None) -> list[Path]:
    """Every entry under the class folder ``folder`` that is not a folder (hidden names left out), in sorted
    order. Links to folders are followed, each real folder once (no loop); anything else (a broken link, a
    FIFO) is listed, so that its error line says what it is instead of the video silently missing from the
    count. ``owners`` maps each real folder listed so far to its class folder: one reached from two classes
    is an error (its videos would count under both). ``skip``: a real folder left out (the output folder)."""
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        raise ValueError(
            f"DATA: cannot list {exc.filename} ({exc.strerror or type(exc).__name__}); its videos would be "
            "missing from the count"
        )

    for top, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(top)
        if real == skip:
            dirs.clear()
            continue
        owner = owners.get(real)
        if owner == folder:  # listed already (a loop, or two links to one folder): each real folder once
            dirs.clear()
            continue
        if owner is not None:
            raise ValueError(
                f"DATA: {top} is the folder {real}, which class folder {owner.name!r} holds too (a link): its "
                f"videos would count under both {owner.name!r} and {folder.name!r}"
            )
        owners[real] = folder
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(top, f) for f in files if not f.startswith(".")]
    return sorted(found)


def load_samples(
    data: str | os.PathLike,
    label2id: dict[str, int],
    num_labels: int,
    exclude: str | os.PathLike | None = None,
) -> list[Sample]:
    """The labelled videos of ``data``, sorted by path, each path once.

    Args:
        data: a folder of class-named subfolders of videos (the ImageFolder / Kinetics-by-class layout), or a
            list file with ``path label`` per line, separated by spaces, a tab or a comma; the label is a
            name of ``label2id`` (with spaces, a class name may hold spaces) or an integer index; relative
            paths are relative to the list file's folder.
            Blank lines and lines starting with ``#`` are skipped.
        label2id: the model's ``{name: index}``.
        num_labels: the model's number of classes.
        exclude: a folder whose files are not videos of the set (the output folder, when it is inside
            ``data``: its reports would be read as videos).

    Raises:
        FileNotFoundError: ``data`` does not exist. ValueError: no videos, a line that does not parse (with its
        number), label indices out of range, or label names the model does not know (all of them listed
        once, before any work starts); a folder that cannot be listed, a class folder that is a broken link,
        or one folder reached from two class folders.
    """
    root = Path(data)
    if not root.exists():
        raise FileNotFoundError(f"DATA {data}: no such file or folder")
    samples: list[Sample] = []
    unknown: dict[str, str] = {}
    if root.is_dir():
        # Absolute paths, links in DATA's own path resolved: a resumed run matches its videos however DATA is
        # spelled or wherever it runs from.
        root = root.resolve()
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
        # A class folder that is a broken link (another file beside the class folders is not a video).
        broken = [
            p for p in entries if p.is_symlink() and not p.exists() and _is_label_text(p.name, label2id)
        ]
        if broken:
            raise ValueError(f"DATA: class folder {broken[0]} is a broken link; expected a folder of videos")
        owners: dict[str, Path] = {}
        skip = None if exclude is None else os.path.realpath(exclude)
        if (
            skip is not None
            and os.path.dirname(skip) == str(root)
            and not os.path.basename(skip).startswith(".")  # hidden names are no class folders
            and not os.path.lexists(skip)
        ):
            # Refused before it exists too: a run into it would start, and its --resume be refused.
            raise ValueError(
                f"DIR {exclude} would be one of DATA's class folders ({os.path.basename(skip)!r}); choose an "
                "--output outside DATA's class folders"
            )
        for folder in (p for p in entries if p.is_dir()):
            if skip is not None and os.path.realpath(folder) == skip:
                raise ValueError(
                    f"DIR {exclude} is DATA's class folder {folder.name!r}: its videos would be left out; choose an "
                    "--output outside DATA's class folders"
                )
            label = _label_of(folder.name, label2id, num_labels, f"folder {folder}")
            files = _videos_under(folder, owners, skip)
            if isinstance(label, str):
                if files:
                    unknown[label] = f"folder {folder}"
                continue
            samples += [Sample(str(f), label) for f in files]
        if not samples and not unknown:
            raise ValueError(
                f"DATA {data}: no videos; expected class-named subfolders of videos (e.g. {root}/<class>/x.mp4)"
            )
        # A flat or mixed layout: its videos would be missing from the count without a word. (By the usual
        # names of video files: a dataset folder holds notes, lists and label maps beside its classes.)
        loose = [p.name for p in entries if not p.is_dir() and p.suffix.lower() in _VIDEO_SUFFIXES]
        if loose:
            warnings.warn(
                f"DATA {data}: {len(loose)} file(s) beside the class folders are not evaluated (a video is "
                f"labelled by the class folder it is in): {', '.join(map(repr, loose[:3]))}"
                + (", ..." if len(loose) > 3 else ""),
                stacklevel=2,
            )
    else:
        # Read whole: a FIFO would block forever, a device (/dev/zero) never end.
        if not root.is_file():
            raise ValueError(
                f"DATA {data}: expected a folder of class-named subfolders or a list file, got a special file "
                "(a FIFO or a device)"
            )
        if root.stat().st_size > MAX_LIST_BYTES:
            raise ValueError(
                f"DATA {data}: a list file of {root.stat().st_size:,} bytes, over {MAX_LIST_BYTES:,}; expected "
                "'path label' lines"
            )
        # The folder the list file is named in (a link to a list elsewhere reads paths relative to the link),
        # resolved so that a resumed run matches its videos however DATA is spelled.
        base = Path(os.path.realpath(os.path.dirname(os.path.abspath(root))))
        try:
            # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first path.
            with open(root, newline="", encoding="utf-8-sig") as f:
                # Line breaks as editors count them: str.splitlines also breaks at \x0b, \x0c, \x1c-\x1e,
                # \x85, U+2028 and U+2029, which may be part of a file name.
                lines = re.split(r"\r\n|\r|\n", f.read())
        except UnicodeDecodeError:
            raise ValueError(
                f"DATA {data}: expected a folder of class-named subfolders or a list file of 'path label' "
                "lines (UTF-8 text), got a file that is not text"
            ) from None
        # Class names that are other classes' indices ("0" naming class 3): such a label is the name.
        shadowed = {
            name: index
            for name, index in label2id.items()
            if name.isascii() and name.isdigit() and int(name) != index and int(name) < num_labels
        }
        first_shadowed: dict[str, int] = {}
        names_used = False
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if text.startswith("#"):
                _warn_if_a_file(text, number, base, data, label2id)
            if not text or text.startswith("#"):
                continue
            fields = [x.strip() for x in _split_line(text, label2id) if x.strip()]
            if len(fields) != 2:
                raise ValueError(
                    f"{data}, line {number}: expected 'path label' (space, tab or comma separated), got {line!r}"
                )
            where = f"{data}, line {number}"
            if fields[1] in shadowed:
                first_shadowed.setdefault(fields[1], number)
            elif fields[1] in label2id and fields[1].isascii() and fields[1].isdigit():
                names_used = names_used or int(fields[1]) >= num_labels  # no index: the list holds names
            label = _label_of(fields[1], label2id, num_labels, where)
            if isinstance(label, str):
                unknown.setdefault(label, f"line {number}")
                continue
            path = Path(fields[0]).expanduser()
            # Normalized ("a/../b" is "b"), so that one video spelled two ways counts once; links are not
            # resolved (that would stat every file of a large list).
            samples.append(Sample(os.path.normpath(path if path.is_absolute() else base / path), label))
        if not samples and not unknown:
            raise ValueError(f"DATA {data}: the list file has no videos")
        if first_shadowed and not names_used:
            listed = ", ".join(
                f"{name!r} (first on line {n}) is class {shadowed[name]}, not class {name}"
                for name, n in list(first_shadowed.items())[:3]
            )
            warnings.warn(
                f"DATA {data}: the model has class names that are numbers, and a label that is a class name is "
                f"taken as that class: {listed}; if the list holds indices, write the class names instead",
                stacklevel=2,
            )
    if unknown:
        raise _unknown_labels_error(unknown, label2id, num_labels)
    by_path: dict[str, Sample] = {}
    duplicates = 0
    for s in samples:
        if s.path in by_path:
            duplicates += 1
            if by_path[s.path].label != s.label:
                raise ValueError(
                    f"DATA {data}: {s.path} is listed with two labels, {by_path[s.path].label} and {s.label}"
                )
            continue
        by_path[s.path] = s
    if duplicates:
        warnings.warn(
            f"DATA {data}: {duplicates} duplicate path(s); each video is evaluated once", stacklevel=2
        )
    return sorted(by_path.values(), key=lambda s: s.path)


# ------------------------------------------------------------------------------------------ the views


def clip_starts(total: int, window: int, clips: int) -> list[int]:
    """First frame of each of ``clips`` uniformly spaced temporal windows of ``window`` frames (one clip: the
    centered window, as the ``"center"`` sampling strategy places it)."""
    if total <= window:
        return [0] * clips
    if clips == 1:
        return [(total - window) // 2]
    return [round(k * (total - window) / (clips - 1)) for k in range(clips)]


def clip_indices(total: int, num_frames: int, sample_rate: int, clips: int) -> list[list[int]]:
    """Frame indices of ``clips`` uniform temporal clips of ``num_frames`` frames ``sample_rate`` apart (a video
    shorter than the window repeats its last sampled frame, as ``sample_frame_indices`` does)."""
    window = num_frames * sample_rate
    if total < window:
        return [sample_frame_indices(num_frames, sample_rate, total, "center")] * clips
    out = []
    for start in clip_starts(total, window, clips):
        indices = np.linspace(start, start + window, num=num_frames)
        out.append(np.clip(indices, start, min(start + window, total) - 1).astype(np.int64).tolist())
    return out


def views_frame_indices(total: int, num_frames: int, sample_rate: int, clips: int) -> list[int]:
    """The frame indices of all ``clips`` of a ``total``-frame video, clip after clip (``clip_indices``)."""
    return [j for clip in clip_indices(total, num_frames, sample_rate, clips) for j in clip]


def decode_views(
    path: str,
    num_frames: int,
    sample_rate: int,
    clips: int,
    max_frame_pixels: int = MAX_FRAME_PIXELS,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The ``clips`` uniform clips of a video, decoded in one pass: uint8 ``(clips * T, H, W, 3)``, clip after
    clip (``views_frame_indices``; ``read_video`` takes repeated and unsorted indices), or ``transform``'s
    results in their place (``read_video``)."""

    def indices(total: int) -> list[int]:
        return views_frame_indices(total, num_frames, sample_rate, clips)

    return read_video(
        path,
        indices=indices,
        max_frame_pixels=max_frame_pixels,
        max_num_frames=num_frames * clips,
        transform=transform,
    )


def read_views(
    path: str,
    processor,
    num_frames: int,
    sample_rate: int,
    clips: int,
    crops: int,
    dtype: torch.dtype,
    uint8: bool,
    max_frame_pixels: int = MAX_FRAME_PIXELS,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, float]:
    """``cut_views`` of ``decode_views``' clips, each frame cut into its views as soon as it is decoded (on
    ``device``: the frame is copied there first; default the CPU), so that one full-resolution frame is held at
    a time, not ``clips * T`` (1080p, 64 clips: 3 GB); the same values, as the views are cut frame by frame.
    Returns the views and the milliseconds spent cutting (on a GPU: launching). A frame that cannot be cut (an
    aspect ratio too extreme to resize) is a ``VideoError`` of this video."""
    spent = [0.0]

    def cut(frame: torch.Tensor) -> torch.Tensor:  # (H, W, 3) -> this frame in each view: (crops, 1, ...)
        start = time.perf_counter()
        one = frame[None] if device is None else frame[None].to(device)
        try:
            views = _views(
                processor, one, processor.view_boxes(frame.shape[0], frame.shape[1], crops), dtype, uint8
            )
        except Exception as exc:
            raise VideoError(path, f"could not be preprocessed ({type(exc).__name__}: {exc})") from exc
        spent[0] += time.perf_counter() - start
        return torch.stack(views)

    frames = decode_views(path, num_frames, sample_rate, clips, max_frame_pixels, transform=cut)
    # (clips * T, crops, 1, ...) -> (clips * crops, T, ...), clip-major as cut_views.
    views = frames.squeeze(2).unflatten(0, (clips, num_frames)).transpose(1, 2).flatten(0, 1)
    return views.contiguous(), spent[0] * 1e3


def cut_views(frames: torch.Tensor, processor, num_frames: int, crops: int, dtype: torch.dtype, uint8: bool):
    """The views of one video from its decoded clips ``(clips * T, H, W, 3)`` (uint8, on any device): ``(V, T,
    3, h, w)`` pixel values of ``dtype`` (``V = clips * crops``, clip-major), or with ``uint8`` the resized and
    cropped frames ``(V, T, h, w, 3)`` for a model that normalizes them itself."""
    boxes = processor.view_boxes(frames.shape[1], frames.shape[2], crops)
    views = []
    for clip in frames.split(num_frames):
        views += _views(processor, clip, boxes, dtype, uint8)
    return torch.stack(views)


def _views(processor, frames: torch.Tensor, boxes, dtype: torch.dtype, uint8: bool) -> list[torch.Tensor]:
    """One view of ``frames`` per box: uint8 frames resized once for all the boxes, or normalized pixels."""
    if uint8:
        return processor.resize_crops(frames, boxes)
    return [processor.preprocess(frames, dtype, box=box) for box in boxes]


class VideoViews(torch.utils.data.Dataset):
    """Item ``i``: the views of video ``samples[i]`` (``cut_views``), or the error that prevented them.

    With ``raw``, the decoded clips ``(clips * T, H, W, 3)`` instead, for views cut on the model's device.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        processor,
        *,
        num_frames: int,
        sample_rate: int = 4,
        clips: int = 1,
        crops: int = 1,
        dtype: torch.dtype = torch.float32,
        uint8: bool = False,
        raw: bool = False,
        max_frame_pixels: int = MAX_FRAME_PIXELS,
    ):
        self.max_frame_pixels = max_frame_pixels
        self.samples, self.processor = list(samples), processor
        self.num_frames, self.sample_rate, self.clips, self.crops = num_frames, sample_rate, clips, crops
        self.dtype, self.uint8, self.raw = dtype, uint8, raw
        self.reading = None  # shared (pid, item) slots of the DataLoader workers: ``_reading``
        self.markers: Path | None = None  # where this process names the video it decodes: ``_reading``
        self.ended: Mapping[str, int] = {}  # the videos earlier runs ended on, and in how many: ``_ended``
        self._marker: Path | None = None  # the one of the video being read, and how to restore SIGTERM then
        self._restore: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        self._reading(i)
        sample = self.samples[i]
        item = {
            "path": sample.path,
            "label": sample.label,
            "views": None,
            "error": None,
            "preprocess_ms": 0.0,
        }
        try:
            start = time.perf_counter()
            if self.raw:
                item["frames"] = decode_views(
                    sample.path, self.num_frames, self.sample_rate, self.clips, self.max_frame_pixels
                )
            else:
                item["views"], item["preprocess_ms"] = read_views(
                    sample.path,
                    self.processor,
                    self.num_frames,
                    self.sample_rate,
                    self.clips,
                    self.crops,
                    self.dtype,
                    self.uint8,
                    self.max_frame_pixels,
                )
            item["decode_ms"] = (time.perf_counter() - start) * 1e3 - item["preprocess_ms"]
        except VideoError as exc:
            item["error"] = exc.reason
        except Exception as exc:  # anything else about this one video: recorded, the run goes on
            item["error"] = f"could not be read ({type(exc).__name__}: {exc})"
        finally:
            self._reading(-1)
        return item

    def _reading(self, i: int) -> None:
        """Record that this process reads item ``i`` (-1: none), so that the video a decoder crash or the
        out-of-memory killer ends it on is known: in a DataLoader worker, in ``reading`` (shared with the main
        process, which goes on: ``_batches``); in the main process, in a file in ``markers`` that the next run
        reads (``_ended``), with the runs that have ended reading it."""
        info = torch.utils.data.get_worker_info()
        if self.reading is not None and info is not None:
            self.reading[2 * info.id : 2 * info.id + 2] = [os.getpid(), i]
        elif self.markers is not None and info is None:
            if i >= 0:
                path = self.samples[i].path
                self._marker = _marker(self.markers, path)
                with _writing(self._marker):
                    self._marker.write_bytes(b"%d\n%s" % (self.ended.get(path, 0) + 1, os.fsencode(path)))
                # torchrun stops the other ranks of a job with SIGTERM, which runs no ``finally``: as an
                # exception it does, and a rank stopped while decoding leaves no marker of a crash.
                self._restore = _raise_on_sigterm()
            elif self._marker is not None:
                if self._restore is not None:
                    self._restore()
                with _writing(self._marker):
                    self._marker.unlink(missing_ok=True)
                self._marker = self._restore = None


def _raise_on_sigterm() -> Callable[[], None] | None:
    """Turn SIGTERM into ``SystemExit(143)`` (in the main thread); returns what restores the handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    handler = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if handler is None else handler)


def _collate(items: list[dict]) -> list[dict]:
    return items


# ------------------------------------------------------------------------------------- result files


def _is_label(value, num_labels: int | None) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value < (num_labels if num_labels is not None else value + 1)
    )


def is_prediction(record, num_labels: int | None = None) -> bool:
    """Whether ``record`` is a line this module writes: a path and a label index (below ``num_labels``), then
    an error text or a non-empty ``top`` of label indices."""
    if not (isinstance(record, dict) and isinstance(record.get("path"), str) and record["path"]):
        return False
    if not _is_label(record.get("label_id"), num_labels):
        return False
    if record.get("error") is not None:
        return isinstance(record["error"], str)
    top = record.get("top")
    return (
        isinstance(top, list)
        and bool(top)
        and all(isinstance(t, dict) and _is_label(t.get("label_id"), num_labels) for t in top)
        and isinstance(record.get("correct_top5", False), bool)
    )


def _check_regular(path: Path) -> None:
    """A results file in DIR must be a regular file: reading a FIFO there would wait forever."""
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a FIFO, device or socket)"
        raise ValueError(
            f"{path}: expected a file of results, got {kind}; remove it, or choose another --output"
        )


def read_predictions(
    path: Path, repair: bool = False, num_labels: int | None = None, warn: bool = True
) -> list[dict]:
    """The complete lines of a predictions file. A torn last line (a run killed while writing it) is left out,
    and with ``repair`` cut off the file, so that appending goes on after the last complete line. Lines that
    are not predictions (``is_prediction``: edited by hand, of a model with other labels) are skipped, with a
    warning unless not ``warn``, so a resumed run evaluates their videos again (the merge drops them)."""
    return _read_lines(path, repair, num_labels, warn)[0]


def _read_lines(path: Path, repair: bool, num_labels: int | None, warn: bool) -> tuple[list[dict], int]:
    """``read_predictions``, and the number of complete lines that hold anything, predictions or not."""
    if not path.exists():
        return [], 0
    _check_regular(path)
    data = path.read_bytes()
    records, lines, good_end, offset = [], 0, 0, 0
    for raw in data.split(b"\n"):
        end = offset + len(raw) + 1
        # Only a line without its newline is torn (the writes append whole lines); a complete line that is
        # not a prediction stays in the file, skipped.
        if end <= len(data):
            good_end = end
            if raw.strip():
                lines += 1
                try:
                    record = json.loads(raw)
                except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past Python's stack
                    if warn:
                        logger.warning("%s: skipping a line that is not JSON: %r", path, raw[:80])
                else:
                    if is_prediction(record, num_labels):
                        records.append(record)
                    elif warn:
                        logger.warning("%s: skipping a line that is not a prediction: %r", path, raw[:80])
        offset = end
    if repair and good_end < len(data):
        # (A hand edit that dropped the last newline looks the same: said, since its video is done again.)
        logger.warning(
            "%s: cutting an incomplete last line (no newline: a write cut short); its video is evaluated again: %r",
            path,
            data[good_end : good_end + 80],
        )
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records, lines


def _part_files(output: Path) -> list[Path]:
    return sorted(output.glob("predictions.part-*.jsonl"))


def _absolute(record: dict) -> dict:
    # Runs before paths were recorded absolute wrote them as given: taken relative to this directory.
    if not os.path.isabs(record["path"]):
        record["path"] = os.path.abspath(record["path"])
    return record


def _recorded(output: Path, num_labels: int | None = None, warn: bool = True) -> tuple[list[dict], int]:
    """Every prediction line in ``output``, ``predictions.jsonl``'s then the ranks' part files', and the
    number of complete lines there, predictions or not (of a model with other labels, edited by hand: a run
    without ``--resume`` must not rewrite them; a torn last line alone, of a run killed while writing its
    first, is no result)."""
    records, lines = [], 0
    for file in (output / PREDICTIONS, *_part_files(output)):
        got, count = _read_lines(file, False, num_labels, warn)
        records += map(_absolute, got)
        lines += count
    return records, lines


def _marker(output: Path, path: str) -> Path:
    return output / (READING + hashlib.sha256(os.fsencode(path)).hexdigest()[:20])


def _ended(
    output: Path, labels: Mapping[str, int], done: set[str], in_process: bool, warn: bool = True
) -> tuple[dict[str, int], dict[str, int]]:
    """The videos of ``labels`` not ``done`` that runs decoding in their own process (``--workers 0``) ended
    on (their ``READING`` markers, left by a decoder crash, the out-of-memory killer or a kill from outside):
    ``{path: runs}``, and ``{path: label}`` of those that ``MAX_RUNS_ENDED_READING`` runs ended on, which a
    run decoding ``in_process`` does not try (error lines; a worker process that dies on one does not end
    the run). Warns about each."""
    ended, crashed = {}, {}
    for _, runs, path in _markers(output):
        if path in labels and path not in done:
            ended[path] = runs
            if ended[path] >= MAX_RUNS_ENDED_READING and in_process:
                crashed[path] = labels[path]
            if warn:
                then = (
                    "it is an error line (--workers 1 or more tries it again: there a crash ends a worker, not "
                    "the run)"
                    if path in crashed
                    else "it is tried again"
                    + (", and it is an error line if the run ends there again" if in_process else "")
                )
                warnings.warn(
                    f"{ended[path]} run(s) ended while reading {path} (a decoder crash, out of memory, or a kill): "
                    f"{then}",
                    stacklevel=2,
                )
    return ended, crashed


def _markers(output: Path) -> list[tuple[Path, int, str]]:
    """``(file, runs, path)`` of each ``READING`` marker in ``output`` (one cut short by a full disk: none)."""
    markers = []
    for marker in output.glob(READING + "*"):
        _check_regular(marker)
        with contextlib.suppress(OSError, ValueError), open(marker, "rb") as f:
            runs, _, path = f.read(2**16).partition(b"\n")  # (a path is at most 4096 bytes)
            markers.append((marker, int(runs), os.fsdecode(path)))
    return markers


def _release_markers(output: Path, done: set[str]) -> None:
    """Remove the ``READING`` markers of the videos ``done``."""
    for marker, _, path in _markers(output):
        if path in done:
            with _writing(marker):
                marker.unlink(missing_ok=True)


def _final(record: dict, labels: Mapping[str, int]) -> bool:
    """Whether a line stands for its video: a prediction with the video's label in DATA. An error line (a
    video that could not be read, a forward that failed: out of memory) is tried again by ``--resume``, and a
    line of a video whose label DATA has changed since (a corrected list file) is redone."""
    return record.get("error") is None and labels.get(record["path"]) == record["label_id"]


def merge_predictions(
    output: Path, samples: Sequence[Sample], num_labels: int | None = None, warn: bool = True
) -> list[dict]:
    """Merge ``predictions.jsonl`` and the ranks' part files into ``predictions.jsonl`` (one line per video, in
    the order of ``samples``, then any others), atomically; then remove the parts. Of several lines of a video
    (a resumed run redid it) the final one (``_final``) is kept, else the last with the video's label in DATA,
    else the last. Returns the merged records."""
    labels = {s.path: s.label for s in samples}

    def standing(record: dict) -> tuple[bool, bool]:
        # A redone video's newest line need not come last (a torchrun part file left by a killed job, then a
        # single-process resume appending to predictions.jsonl): a line with its label in DATA outranks one
        # with an outdated label, whichever came first.
        return _final(record, labels), labels.get(record["path"]) == record["label_id"]

    by_path: dict[str, dict] = {}
    parts = _part_files(output)
    for record in _recorded(output, num_labels, warn)[0]:
        kept = by_path.get(record["path"])
        if kept is None or standing(record) >= standing(kept):
            by_path[record["path"]] = record
    rank = {s.path: i for i, s in enumerate(samples)}
    records = sorted(by_path.values(), key=lambda r: (rank.get(r["path"], len(rank)), r["path"]))
    _replace_file(output / PREDICTIONS, ((json.dumps(r) + "\n").encode() for r in records))
    for part in parts:
        part.unlink()
    return records


# ------------------------------------------------------------------------------------------- metrics


def compute_metrics(records: Sequence[dict], samples: Sequence[Sample], id2label: dict[int, str]) -> dict:
    """Accuracy over the scored videos of ``samples``: top-1, top-5, mean class accuracy and per class, and the
    confusion matrix (true label x predicted label) over the label indices: whole (``confusion``) up to
    ``MAX_DENSE_CONFUSION`` labels, and as its nonzero cells ``[true, predicted, videos]``
    (``confusion_pairs``)."""
    wanted = {s.path for s in samples}
    records = [r for r in records if r["path"] in wanted]
    num_labels = len(id2label)
    confusion: dict[tuple[int, int], int] = {}
    top1 = top5 = scored = errors = 0
    per_class = {i: [0, 0] for i in range(num_labels)}
    for r in records:
        if r.get("error") is not None:
            errors += 1
            continue
        scored += 1
        truth, ranked = int(r["label_id"]), [int(x["label_id"]) for x in r["top"]]
        confusion[truth, ranked[0]] = confusion.get((truth, ranked[0]), 0) + 1
        top1 += ranked[0] == truth
        top5 += bool(r["correct_top5"]) if "correct_top5" in r else truth in ranked[:5]
        per_class[truth][0] += 1
        per_class[truth][1] += ranked[0] == truth
    classes = {i: v for i, v in per_class.items() if v[0]}
    names = class_names(id2label)
    return {
        "num_videos": len(samples),
        "num_scored": scored,
        "num_errors": errors,
        "num_missing": len(samples) - len(records),
        "top1": top1 / scored if scored else None,
        "top5": top5 / scored if scored else None,
        "mean_class_accuracy": float(np.mean([c / n for n, c in classes.values()])) if classes else None,
        "per_class": {names[i]: {"videos": n, "top1": c / n} for i, (n, c) in classes.items()},
        "confusion": _dense(confusion, num_labels) if num_labels <= MAX_DENSE_CONFUSION else None,
        "confusion_pairs": [[t, p, n] for (t, p), n in sorted(confusion.items())],
    }


def class_names(id2label: Mapping[int, str]) -> dict[int, str]:
    """A distinct name per label index: a name that several indices share (ImageNet has two "crane") is
    followed by its index, ``crane (134)``, so that per-class results do not overwrite one another."""
    counts: dict[str, int] = {}
    for name in id2label.values():
        counts[name] = counts.get(name, 0) + 1
    names = dict(id2label)
    taken = set(counts)  # "crane (1)" may be a class's own name too: then the index goes on
    for i, name in id2label.items():
        if counts[name] > 1:
            while name in taken:
                name = f"{name} ({i})"
            names[i] = name
            taken.add(name)
    return names


# The confusion matrix is written whole up to this many labels (a million cells); beyond, its nonzero cells
# only (``confusion_pairs``, at most one per video): 16,000 labels were 256 million cells, and no metrics.
MAX_DENSE_CONFUSION = 1000


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of every tensor of ``model.state_dict()`` (name, dtype, shape and bytes): the same for the same
    weights on any device."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        flat = tensor.reshape(-1)  # a copy where the tensor is not contiguous
        digest.update(flat.view(torch.uint8).cpu().numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def _dense(cells: dict[tuple[int, int], int], num_labels: int) -> list[list[int]]:
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    for (truth, predicted), count in cells.items():
        matrix[truth, predicted] = count
    return matrix.tolist()


def _cell(text: str) -> str:
    """A Markdown table cell: ``|`` would end it, a newline the row."""
    return " ".join(text.replace("|", "\\|").split())


def percent(x) -> str:
    """A fraction as a percentage with two decimals, or ``n/a``."""
    return "n/a" if x is None else f"{100 * x:.2f}%"


def write_reports(output: Path, metrics: dict, id2label: dict[int, str]) -> None:
    """``metrics.json``, ``metrics.md`` and ``confusion.png`` (when matplotlib is installed), each replaced
    whole (``_replace_file``)."""
    _replace_file(output / "metrics.json", (json.dumps(metrics, indent=1) + "\n").encode())
    views = metrics["views"]
    lines = [
        "# Evaluation",
        "",
        f"- model: `{metrics['model']}` ({metrics['backend']}, {metrics['device']}, {metrics['dtype']})",
        f"- videos: {metrics['num_videos']} ({metrics['num_scored']} scored, {metrics['num_errors']} errors)",
        f"- views per video: {views['clips']} clip(s) x {views['crops']} crop(s) of {views['num_frames']} frames "
        f"(sample rate {views['sample_rate']}); score = mean of the views' softmax probabilities",
        f"- top-1 {percent(metrics['top1'])}, top-5 {percent(metrics['top5'])}, "
        f"mean class accuracy {percent(metrics['mean_class_accuracy'])}",
        f"- this run: {metrics['videos_evaluated']} videos in {metrics['wall_time_s']:.1f} s "
        f"({metrics['videos_per_second']:.2f} videos/s) on {metrics['world_size']} process(es)",
        "",
        "| class | videos | top-1 |",
        "|---|---|---|",
    ]
    lines += [
        f"| {_cell(name)} | {c['videos']} | {percent(c['top1'])} |"
        for name, c in metrics["per_class"].items()
    ]
    _replace_file(output / "metrics.md", ("\n".join(lines) + "\n").encode())
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no confusion.png")
        return
    if metrics["confusion"] is None:
        logger.info("%d labels: no confusion.png (confusion_pairs in metrics.json)", len(id2label))
        return
    confusion = np.asarray(metrics["confusion"])
    n = len(confusion)
    fig, ax = plt.subplots(figsize=(min(4 + 0.4 * n, 24), min(3.5 + 0.4 * n, 24)))
    try:
        image = ax.imshow(confusion, cmap="Blues")
        fig.colorbar(image, ax=ax, label="videos")
        if n <= 40:
            # Drawn as written: matplotlib reads "$...$" in a label as math, and fails on "pay $_$ tip".
            shown = class_names(id2label)
            names = [shown.get(i, str(i)).replace("$", r"\$") for i in range(n)]
            ax.set_xticks(range(n), names, rotation=90)
            ax.set_yticks(range(n), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"top-1 {percent(metrics['top1'])} over {metrics['num_scored']} videos")
        fig.tight_layout()
        with io.BytesIO() as png:
            fig.savefig(png, dpi=100, format="png")
            image_bytes = png.getvalue()
    except (ValueError, RuntimeError) as exc:  # the metrics are written: a plot that fails only says so
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        warnings.warn(f"confusion.png not written (the metrics are): {reason}", stacklevel=2)
        return
    finally:
        plt.close(fig)
    _replace_file(output / "confusion.png", image_bytes)


def _replace_file(path: Path, data: bytes | Iterable[bytes], *, setup: bool = False) -> None:
    """Write ``path`` (``data``, or its chunks in turn) whole or not at all: into ``path.tmp``, synced, then
    renamed over ``path``; a failure (a full disk) names ``path`` and leaves its old contents. Whatever lies at
    ``path.tmp`` is removed first, never written through: a link there would have had its target overwritten.
    ``setup``: before any video, where a failure is the plain ``OSError`` of a bad setup (exit 2), not an
    ``OutputError`` of the run."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.nullcontext() if setup else _writing(path):
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.writelines([data] if isinstance(data, bytes) else data)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


# ------------------------------------------------------------------------------------- distribution


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    # ASCII digits that fit the C int torch takes (int() also reads "1_0" and other scripts' digits, and a
    # WORLD_SIZE past 2**31 was a traceback from the TCP store).
    if not re.fullmatch(r"-?[0-9]{1,10}", text) or abs(int(text)) >= 2**31:
        raise ValueError(
            f"environment variable {name} must be an integer (set by torchrun) below 2**31, got {text!r}"
        )
    return int(text)


def _world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` of this process (torchrun's environment, else a single process).
    Variables that do not describe a job (``RANK=3`` alone, a stray export) are refused: each rank would take
    a share of the videos that no other process completes."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return (
            torch.distributed.get_rank(),
            torch.distributed.get_world_size(),
            _env_int("LOCAL_RANK", 0),
        )
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(
            f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} do not describe a torchrun job (0 <= RANK < "
            "WORLD_SIZE, LOCAL_RANK >= 0): unset them, or launch with torchrun"
        )
    return rank, world, local


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes; ``(rank, world_size)``.

    gloo whatever the device: the job only exchanges a few numbers and objects (set-up failures, what each
    rank sees, the final count), and gloo needs no device, so the ranks join before anything that can fail
    on one of them (the device, the model, DATA) and then fail together."""
    rank, world, _ = _world()
    if world > 1 and not torch.distributed.is_initialized():
        if "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun sets it, and has gathered the ranks already
            logger.warning(
                "RANK=%d, WORLD_SIZE=%d set outside torchrun: waiting (up to %d s) for the other ranks at %s:%s; "
                "unset them for a single process",
                rank,
                world,
                DIST_TIMEOUT_S,
                os.environ.get("MASTER_ADDR", "?"),
                os.environ.get("MASTER_PORT", "?"),
            )
        torch.distributed.init_process_group(
            "gloo",
            # The final collective waits for the slowest rank's share, which can trail by more than the
            # 10-minute default on a large set.
            timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S),
        )
    return rank, world


def _all_gather(value) -> list:
    """``value`` of every rank, by rank (``[value]`` in a single process)."""
    _, world, _ = _world()
    if world == 1 or not torch.distributed.is_initialized():
        return [value]
    values = [None] * world
    try:
        torch.distributed.all_gather_object(values, value)
    except RuntimeError as exc:  # gloo: "Connection closed by peer"
        raise RankError(f"another rank of the job died during set-up ({_lost_cause(exc)})") from None
    return values


def _lost_cause(exc: RuntimeError) -> str:
    """The first sentence of a collective's error for a rank that died, without gloo's source location:
    "Connection closed by peer [host]:port"."""
    return re.sub(r"^\[[^\]]*\]\s*", "", (str(exc).splitlines() or [""])[0]).split(". ")[0]


def _where(rank: int, world: int, host: str) -> str:
    return f"rank {rank} of {world} (host {host})"


@contextlib.contextmanager
def together(step: str):
    """Run the body on every rank of a ``torchrun`` job; where it raises on some rank, that rank raises its
    own error and every other rank a ``RankError`` naming it, instead of waiting for it at the next
    collective (up to ``DIST_TIMEOUT_S``: a torchrun launcher only watches its own machine's ranks)."""
    try:
        yield
    except BaseException as exc:  # Ctrl-C on one machine too: the others hear of it
        with contextlib.suppress(RankError):  # this rank's own error comes first
            _gather_failures(step, exc)
        raise
    _gather_failures(step, None)


def _gather_failures(step: str, exc: BaseException | None) -> None:
    mine = None if exc is None else (socket.gethostname(), f"{type(exc).__name__}: {exc}".removesuffix(": "))
    failures = [(rank, f) for rank, f in enumerate(_all_gather(mine)) if f is not None]
    if failures and exc is None:
        (rank, (host, text)), world = failures[0], torch.distributed.get_world_size()
        more = f" (and {len(failures) - 1} other rank(s))" if len(failures) > 1 else ""
        raise RankError(f"{_where(rank, world, host)} could not {step}{more}: {text}")


def _check_same_work(
    output: Path, samples: Sequence[Sample], done: set[str], token: str | None, settings: dict
) -> None:
    """Every rank lists the same videos, has the same ones done, evaluates with the same ``settings`` and
    sees rank 0's ``JOB_MARK`` (``token``) in ``output``; otherwise each would take a share of another list
    (videos evaluated twice or never), mix predictions made another way into the results, or write where
    rank 0 does not merge. Raises ``RankError`` on every rank."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(f"{sample.path}\t{sample.label}\n".encode("utf-8", "surrogateescape"))
    for path in sorted(done):
        digest.update(f"done\t{path}\n".encode("utf-8", "surrogateescape"))
    seen = token  # rank 0 wrote it
    if seen is None:
        with contextlib.suppress(OSError):
            seen = (output / JOB_MARK).read_text()
    views = _all_gather(
        (
            socket.gethostname(),
            digest.hexdigest(),
            len(samples),
            len(done),
            seen,
            str(output.resolve()),
            settings,
        )
    )
    reference = views[0]
    world = len(views)
    for rank, (host, digest_, count, ndone, mark, folder, settings_) in enumerate(views[1:], 1):
        if mark != reference[4]:
            raise RankError(
                f"{_where(rank, world, host)} does not see rank 0's files in DIR {folder}: under torchrun, DIR "
                "must be one folder every machine shares (each rank writes its results there)"
            )
        if digest_ != reference[1]:
            raise RankError(
                f"{_where(rank, world, host)} lists {count} videos ({ndone} done) where rank 0 lists "
                f"{reference[2]} ({reference[3]} done), or other paths or labels: every machine must see the "
                "same DATA files at the same path"
            )
        # Other weights, dtype or preprocessing on one machine (its command line, a cached model). Not the
        # model's name: a folder may lie at another path on each machine, and the weights' digest is compared.
        differ = ", ".join(
            f"{k} {settings_.get(k)!r} (rank 0: {reference[6].get(k)!r})"
            for k in sorted(settings_.keys() | reference[6].keys())
            if k != "model" and settings_.get(k) != reference[6].get(k)
        )
        if differ:
            raise RankError(
                f"{_where(rank, world, host)} evaluates with other settings than rank 0: {differ}; every rank "
                "must run the same command with the same model"
            )


def default_device(device: torch.device | None = None) -> torch.device:
    """This rank's device: ``device``, but ``cuda:LOCAL_RANK`` for ``cuda`` without an index (one GPU per
    local rank: plain ``cuda`` put every rank on GPU 0); by default ``cuda:LOCAL_RANK`` where CUDA is
    available, else the CPU."""
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = torch.device("cuda")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", _world()[2] % torch.cuda.device_count())
    return device


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """Decoding processes per rank: this process's cores shared among the ranks of the machine, capped."""
    cores = cpu_cores()
    local = _env_int("LOCAL_WORLD_SIZE", 1)
    return max(1, min(MAX_DEFAULT_WORKERS, cores // max(1, local)))


# ------------------------------------------------------------------------------------------- the run


class Progress:
    """A one-line progress bar on stderr: videos done, videos/s, ETA. By default only on a terminal, and only
    for at least ``min_total`` videos; ``clear`` erases an unfinished bar before other output (the next
    ``step`` draws it again below that output), ``clear_drawn`` whichever bar is unfinished (before a warning
    line). Off where stderr is closed."""

    drawn: Progress | None = None  # the bar drawn unfinished, if any

    def __init__(
        self, total: int, enabled: bool | None = None, stream=None, min_total: int = 1, label: str = ""
    ):
        self.stream = sys.stderr if stream is None else stream
        self.label = label
        self.total, self.done = total, 0
        self.enabled = (
            self.stream is not None
            and (self.stream.isatty() if enabled is None else enabled)
            and total >= min_total
        )
        self.start = time.perf_counter()

    def step(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled or not self.total:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate else math.inf
        bar = "#" * (30 * self.done // self.total) + "." * (30 - 30 * self.done // self.total)
        eta_text = f"{eta:.0f} s" if math.isfinite(eta) else "?"
        Progress.drawn = self if self.done < self.total else None
        print(
            f"\r{self.label}[{bar}] {self.done}/{self.total} videos, {rate:.2f}/s, ETA {eta_text}  ",
            end="" if Progress.drawn is self else "\n",
            file=self.stream,
            flush=True,
        )

    def clear(self) -> None:
        if Progress.drawn is self:
            print("\r\x1b[K", end="", file=self.stream, flush=True)
            Progress.drawn = None

    @staticmethod
    def clear_drawn() -> None:
        if Progress.drawn is not None:
            Progress.drawn.clear()


def _closes_its_process_group(fn):
    """A process group the call creates (``init_distributed``) is closed when it returns or raises: left to
    interpreter shutdown, gloo's threads can abort the process (``std::terminate``) after the work is done."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        def active() -> bool:
            return torch.distributed.is_available() and torch.distributed.is_initialized()

        owned = not active()
        try:
            return fn(*args, **kwargs)
        finally:
            if owned and active():
                torch.distributed.destroy_process_group()

    return wrapper


@_closes_its_process_group
def evaluate(
    data: str | os.PathLike,
    model,
    processor,
    output: str | os.PathLike,
    *,
    clips: int = 1,
    crops: int = 1,
    batch_size: int = 4,
    workers: int | None = None,
    num_frames: int | None = None,
    sample_rate: int = 4,
    top_k: int = 5,
    resume: bool = False,
    limit: int | None = None,
    uint8_frames: bool | None = None,
    device_preprocess: bool | None = None,
    max_frame_pixels: int = MAX_FRAME_PIXELS,
    model_name: str | None = None,
    progress: bool | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Evaluate ``model`` on the videos of ``data`` and write the results to ``output``; returns the metrics.

    Run it in one process, or in every process of a ``torchrun`` job (each rank takes videos ``rank::world``
    of the sorted list of those not done yet; rank 0 merges the results after a barrier and returns the
    metrics, the other ranks return ``{}``). A ``num_missing`` above 0 in them means videos without a line
    (``missing_message`` says what to do; the command line exits 1 with it).

    Args:
        data: a folder of class-named subfolders, or a list file (``load_samples``).
        model: a ``TimesformerForVideoClassification`` in eval mode, on this rank's device.
        processor: a ``VideoProcessor`` (resize of the short side, crop size, normalization).
        output: folder of ``predictions.jsonl``, ``metrics.json``, ``metrics.md`` and ``confusion.png``.
        clips: uniform temporal clips per video (``>= 1``). crops: 1 (center) or 3 (along the long side).
        batch_size: videos per forward (each with ``clips * crops`` views).
        workers: DataLoader worker processes that decode and preprocess (default: ``default_workers()``;
            0 decodes in this process, where a decoder crash ends the run: the next two runs make that video
            an error line, ``_ended``).
        num_frames: frames per clip (default: the model's); sample_rate: spacing of a clip's frames.
        top_k: labels kept per video in the predictions.
        resume: skip the videos already in ``output``'s predictions (complete lines; a torn last line is
            redone). Without it, an ``output`` that holds predictions is refused.
        limit: evaluate only the first ``limit`` videos of the sorted list.
        uint8_frames: send resized and cropped uint8 frames to the model, normalized inside it (default: on
            the ``triton`` backend, where the fused patch embedding does it).
        device_preprocess: the workers only decode; the decoded uint8 frames go to the model's device, where
            the views are resized, cropped (and normalized) (default: for one clip, on CUDA where the native
            extension has its CUDA kernel). Otherwise the workers cut each frame into its views as it is
            decoded, holding one full-resolution frame at a time (``read_views``).
        max_frame_pixels: videos with larger frames are error lines (``read_video``).
        model_name: recorded in the metrics.
        progress: show the progress bar (default: on a terminal).
        on_batch: called with the number of videos written after each batch (for tests and tools).
    """
    output = Path(output)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    rank, world = init_distributed()
    # What can fail on one rank only (DATA missing on one machine) stops every rank, each naming the cause.
    lock = None  # this rank's hold on the output folder (_lock, _hold_rank): a descriptor
    try:
        token = None
        with together("set up"):
            _check_options(clips, crops, num_frames, sample_rate, batch_size, limit)
            config = model.config
            id2label = config.id2label  # int keys (TimesformerConfig checks them)
            with warnings.catch_warnings():
                if rank != 0:  # the data's warnings (loose files, list lines) are the same on every rank
                    warnings.simplefilter("ignore")
                label_ids = class_ids(id2label, config.label2id)
                samples = load_samples(data, label_ids, config.num_labels, exclude=output)
            if limit is not None:
                samples = samples[:limit]
            if output.exists() and not output.is_dir():
                raise ValueError(f"--output {output}: expected a folder (or a new name), got a file")
            output.mkdir(parents=True, exist_ok=True)
            if rank == 0:
                lock = _lock(output)
            recorded, lines = _recorded(output, config.num_labels, warn=rank == 0)
            if lines and not resume:
                videos = len({r["path"] for r in recorded})
                what = (
                    f"predictions of {videos} videos"
                    if videos
                    else "lines that are not predictions of this model"
                )
                raise FileExistsError(
                    f"{output} already holds {what}; pass --resume to go on with them, or choose another --output"
                )
            labels = {s.path: s.label for s in samples}
            done = {r["path"] for r in recorded if _final(r, labels)}
            ended, crashed = _ended(output, labels, done, in_process=workers == 0, warn=rank == 0)
            num_frames = num_frames or config.num_frames
            top_k = max(1, min(top_k, len(id2label)))
            settings = {
                "model": model_name or getattr(model, "name_or_path", None) or type(model).__name__,
                # The weights themselves: a checkpoint overwritten in place (retrained into one folder, a
                # package upgrade's bundled model) has the same name.
                "model weights": weights_digest(model),
                "dtype": str(dtype).removeprefix("torch."),
                **dict(num_frames=num_frames, sample_rate=sample_rate, clips=clips, crops=crops, top_k=top_k),
                "max_frame_pixels": max_frame_pixels,
                # The frames' preprocessing, field by field (the model folder's preprocessor config may change).
                **{f"preprocessing {k}": v for k, v in processor.to_dict().items()},
            }
            # (Not the model's name on the other ranks: the folder may lie at another path on each machine.)
            compared = settings if rank == 0 else {k: v for k, v in settings.items() if k != "model"}
            _check_settings(output, compared, compare=lines > 0, write=rank == 0)
            if rank == 0 and world > 1:
                token = os.urandom(8).hex()
                (output / JOB_MARK).write_text(token)
        if world > 1:
            try:  # also the barrier before any rank writes: every rank has read the same results (the same split)
                _check_same_work(output, samples, done | set(crashed), token, settings)
            finally:
                if rank == 0:
                    (output / JOB_MARK).unlink(missing_ok=True)
            if rank > 0:
                lock = _hold_rank(output, rank)
        if rank == 0:  # (after the barrier: every rank has read them)
            _release_markers(output, done)
        # The videos still to do are split across the ranks (sample i of them to rank i % world_size), so a
        # resumed run is balanced however the interrupted one had progressed.
        todo = [s for s in samples if s.path not in done and s.path not in crashed][rank::world]
        uint8 = get_backend(model.backend).fuses_input_normalization if uint8_frames is None else uint8_frames
        if uint8:
            model.set_input_normalization(*processor.normalization())
        if device_preprocess is None:  # (several clips are cut as decoded instead: read_views)
            device_preprocess = device.type == "cuda" and native_cuda_available() and clips == 1
        dataset = VideoViews(
            todo,
            processor,
            num_frames=num_frames,
            sample_rate=sample_rate,
            clips=clips,
            crops=crops,
            dtype=dtype,
            uint8=uint8,
            raw=device_preprocess,
            max_frame_pixels=max_frame_pixels,
        )
        workers = min(default_workers() if workers is None else workers, len(todo))
        if workers > 0:
            dataset.reading = multiprocessing.RawArray("q", [-1] * 2 * workers)
        else:
            dataset.markers, dataset.ended = output, ended
        # Rank 0's share under torchrun (the others' progress is not sent to it), and said so.
        label = f"rank 0 of {world}: " if world > 1 else ""
        crashed = crashed if rank == 0 else {}  # (its error lines are rank 0's)
        bar = Progress(len(todo) + len(crashed), enabled=progress if rank == 0 else False, label=label)
        totals = {"decode": 0.0, "preprocess": 0.0, "model": 0.0}
        scored = 0  # videos of this run on this rank with a prediction: what ``totals`` sums over
        start = time.perf_counter()
        with _Lines(output / (PREDICTIONS if world == 1 else PART.format(rank=rank)), bar, on_batch) as lines:
            if crashed:
                error = (
                    f"{MAX_RUNS_ENDED_READING} or more runs ended while reading it (a decoder crash, or out of "
                    "memory); --workers 0 does not try it again, --workers 1 or more does"
                )
                lines.write(
                    [_record({"path": p, "label": y}, id2label, error=error) for p, y in crashed.items()]
                )
            left = list(range(len(todo)))  # the videos of todo without a line yet, in order
            deaths = 0
            while left:
                loader = torch.utils.data.DataLoader(
                    dataset,
                    batch_size=batch_size,
                    sampler=list(left),
                    num_workers=workers,
                    collate_fn=_collate,
                    pin_memory=device.type == "cuda",  # the decoded frames too, for the non-blocking copies
                    prefetch_factor=2 if workers > 0 else None,
                )
                try:
                    for batch in _batches(loader, [todo[i] for i in left], batch_size):
                        if device_preprocess:
                            _cut_on_device(batch, processor, device, num_frames, crops, dtype, uint8)
                        records = _score(batch, model, device, id2label, top_k, totals)
                        scored += sum("time_ms" in r for r in records)
                        lines.write(records)
                        del left[: len(batch)]
                    break
                except _DiedReading as died:
                    # The video a worker died on is an error line (tried again by --resume), and the run goes
                    # on with fresh workers: one video that crashes the decoder no longer stops every run.
                    sample, deaths = todo[died.index], deaths + 1
                    if deaths > MAX_WORKER_DEATHS:
                        raise WorkerError(
                            f"decoding workers died {deaths} times ({died.cause}), the last while reading "
                            f"{sample.path}; the results so far are kept, run again with --resume"
                        ) from None
                    logger.warning(
                        "a decoding worker died while reading %s (%s); it is an error line and the run goes on",
                        sample.path,
                        died.cause,
                    )
                    item = {"path": sample.path, "label": sample.label}
                    error = f"the decoding worker died reading it ({died.cause}): a decoder crash, or out of memory"
                    lines.write([_record(item, id2label, error=error)])
                    left.remove(died.index)
        written = lines.count
        counts = [written, scored, totals["decode"], totals["preprocess"], totals["model"]]
        if world > 1:
            # The barrier also makes rank 0's wall time the job's (it waits for the slowest rank), and the
            # videos and times are every rank's. (On the group's device: an nccl group takes CUDA tensors only.)
            on_cuda = torch.distributed.get_backend() == "nccl"
            summed = torch.tensor(counts, dtype=torch.float64, device=device if on_cuda else None)
            try:
                torch.distributed.all_reduce(summed)
            except RuntimeError as exc:  # gloo: "Connection closed by peer"; nccl: DistBackendError
                raise RankLostError(
                    f"rank {rank}: another rank of the job died before the end ({_lost_cause(exc)}); this rank's "
                    f"{written} lines are kept: run again with --resume"
                ) from None
            counts = summed.tolist()
        written_all, scored_all = int(counts[0]), int(counts[1])
        wall = time.perf_counter() - start
        if rank != 0:
            return {}
        with _writing(output / PREDICTIONS):
            records = merge_predictions(output, samples, model.config.num_labels, warn=False)
            _release_markers(output, {r["path"] for r in records if _final(r, labels)})
        metrics = compute_metrics(records, samples, id2label)
        metrics.update(
            views={
                **{k: settings[k] for k in ("clips", "crops", "num_frames", "sample_rate")},
                "aggregation": "mean of the views' softmax probabilities",
            },
            model=settings["model"],
            backend=model.backend,
            device=str(device),
            dtype=settings["dtype"],
            world_size=world,
            videos_evaluated=written_all,
            wall_time_s=wall,
            videos_per_second=written_all / wall if wall > 0 else 0.0,
            # Summed over the ranks' workers and processes, per video scored; none when this run scored none.
            time_per_video_ms={
                k: (v / scored_all if scored_all else None) for k, v in zip(totals, counts[2:], strict=True)
            },
        )
        write_reports(output, metrics, id2label)
        return metrics
    finally:
        if lock is not None:
            _unlock(lock, rank)


class _Lines:
    """This rank's predictions file, appended to a batch of lines at a time, each batch flushed to the disk
    (a run killed at any moment keeps its complete lines), and counted on ``bar`` and by ``on_batch``."""

    def __init__(self, path: Path, bar: Progress, on_batch: Callable[[int], None] | None) -> None:
        read_predictions(path, repair=True, warn=False)  # cut a torn last line before appending
        self.path, self.bar, self.on_batch, self.count = path, bar, on_batch, 0
        self.file = open(path, "a")  # noqa: SIM115 (closed by __exit__, where a failed close is an OutputError)

    def write(self, records: list[dict]) -> None:
        with _writing(self.path):
            self.file.write("".join(json.dumps(r) + "\n" for r in records))
            self.file.flush()
            os.fsync(self.file.fileno())
        self.count += len(records)
        self.bar.step(len(records))
        if self.on_batch is not None:
            self.on_batch(self.count)

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc) -> None:
        # After a failed write the close flushes the same bytes again (a full disk fails again): that too is
        # the OutputError naming the file, not a bare OSError.
        with _writing(self.path):
            self.file.close()


def _check_options(
    clips: int, crops: int, num_frames: int | None, sample_rate: int, batch_size: int, limit: int | None
) -> None:
    if not 1 <= clips <= 64:
        raise ValueError(f"clips must be 1 to 64, got {clips}")
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    if num_frames is not None and not 1 <= num_frames <= MAX_NUM_FRAMES:
        raise ValueError(f"num_frames must be 1 to {MAX_NUM_FRAMES}, got {num_frames}")
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be >= 1, got {sample_rate}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")


def _lock(output: Path) -> int | None:
    """Hold ``output`` for this run: an fcntl lock on ``LOCK`` (which also names the host and process, for the
    message), kept until ``_unlock``. A second run into the same folder would read results the first is still
    writing, and its merge would replace the file the first appends to (those lines lost). The kernel drops
    the lock when its process dies, however (kill -9, a container restart), so a crashed run never blocks
    ``--resume``; it works across PID namespaces, and across hosts where the filesystem supports locks (NFSv4,
    NLM). Returns the open descriptor, or ``None`` (with a warning) on a filesystem without locks.

    Rank 0 takes the whole file, so it is refused while any rank of another run holds a byte of it, then
    keeps byte 0; the other ranks of a torchrun job then hold theirs (``_hold_rank``): the folder stays in use
    while any rank of the run lives (a ``--resume`` after rank 0 died ran beside the others, and its merge
    deleted the part files they were appending to)."""
    import fcntl

    path = output / LOCK
    # Not through a link (the file is truncated and written: a link placed there would have its target
    # emptied), and only a regular file.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise ValueError(f"{path}: expected evaluate's lock file, got a symbolic link; remove it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(
            f"{path}: expected evaluate's lock file, got something else than a regular file; remove it"
        )
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        held = exc.errno in (errno.EACCES, errno.EAGAIN)
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}") if held else {}
        except ValueError:
            holder = {}
        os.close(fd)
        if not held:  # ENOLCK: the filesystem has no locks
            warnings.warn(
                f"{output}: cannot lock {LOCK} ({exc.strerror}); nothing stops a second run here",
                stacklevel=3,
            )
            return None
        raise FileExistsError(
            f"{output} is in use by another evaluate run (process {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')}, since {holder.get('started', '?')}, or a rank of its torchrun job that "
            "still runs); wait for it to end, or choose another --output"
        ) from None
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(mine).encode(), 0)
    fcntl.lockf(fd, fcntl.LOCK_UN, 0, 1)  # from byte 1 on: the other ranks' bytes
    return fd


def _hold_rank(output: Path, rank: int) -> int | None:
    """Rank ``rank`` (> 0)'s byte of ``LOCK``, held until ``_unlock``; taken after rank 0 has kept only byte 0
    (``_lock``). Returns the open descriptor, or ``None`` where the filesystem has no locks."""
    import fcntl

    fd = os.open(output / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, rank)
    except OSError:  # no locks here (rank 0 warned), or none to be had: the run goes on as before
        os.close(fd)
        return None
    return fd


def _unlock(fd: int, rank: int = 0) -> None:
    # The file stays (removing it would race with a run that has it open); emptied, it names no one.
    if rank == 0:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
    os.close(fd)


def missing_message(metrics: dict, output: str | os.PathLike) -> str:
    """What ``num_missing`` means for the user: lines lost (a rank's file not in ``output``, removed files)."""
    return (
        f"{metrics['num_missing']} of {metrics['num_videos']} videos have no line in {Path(output) / PREDICTIONS} (a "
        "rank's results not in this folder, or files removed during the run); the metrics leave them out. Run "
        "again with --resume to evaluate them"
    )


@contextlib.contextmanager
def _writing(path: Path):
    """Turn a failed write of ``path`` into an ``OutputError`` that names it."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: {exc.strerror or exc}; the complete lines written so far are kept, run again "
            "with --resume once there is room"
        ) from exc


class _DiedReading(Exception):
    """A DataLoader worker died while it read item ``index`` of the loader's dataset."""

    def __init__(self, index: int, cause: str) -> None:
        super().__init__(index, cause)
        self.index, self.cause = index, cause


def _batches(loader, todo: Sequence[Sample], batch_size: int):
    """The loader's batches. A worker that dies while it reads a video (a decoder crash, out of memory) is a
    ``_DiedReading`` naming that video (``VideoViews.reading``); one that dies elsewhere a ``WorkerError``
    naming the videos it may have been reading (the DataLoader only says that a worker exited)."""
    done = 0
    iterator = iter(loader)
    with _quiet_sigchld(loader.num_workers > 0):
        try:
            while True:
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
                except (RuntimeError, EOFError, ConnectionError) as exc:
                    # The DataLoader's words for a worker that died (an exception raised inside a worker is
                    # re-raised as itself, "Caught ... in DataLoader worker process", and is not this), or a
                    # transfer from a worker that died, broken before the DataLoader noticed.
                    died = _WORKER_DIED.search(str(exc)) if isinstance(exc, RuntimeError) else None
                    if isinstance(exc, RuntimeError) and not died:
                        raise
                    pids = {int(p) for p in re.findall(r"\d+", died["pids"])} if died else set()
                    reading = loader.dataset.reading or []
                    for pid, index in zip(reading[::2], reading[1::2], strict=True):
                        if index >= 0 and (pid in pids if died else _exited(pid)):
                            raise _DiedReading(index, str(exc) or type(exc).__name__) from exc
                    if not died:
                        raise
                    pending = [
                        s.path for s in todo[done : done + batch_size * max(1, loader.num_workers) * 2]
                    ]
                    shown = ", ".join(pending[:4]) + (
                        f" and {len(pending) - 4} more" if len(pending) > 4 else ""
                    )
                    raise WorkerError(
                        f"a decoding worker died ({exc}); the results so far are kept, run again with --resume. If "
                        f"it dies again here, one of the next videos crashes the decoder or exhausts memory: {shown}"
                    ) from exc
                done += len(batch)
                yield batch
        finally:
            # Its workers shut down (and forgotten by torch) before torch's SIGCHLD handler is back, which would
            # otherwise raise about a dead one later, anywhere.
            del iterator


def _exited(pid: int, wait_s: float = 5.0) -> bool:
    """Whether the child process ``pid`` has exited, or does within ``wait_s`` (one killed a moment ago)."""
    if not hasattr(os, "waitid"):
        return False
    end = time.monotonic() + wait_s
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # already reaped (the DataLoader's own check)
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.05)


@contextlib.contextmanager
def _quiet_sigchld(workers: bool):
    """Without torch's SIGCHLD handler while the loader runs: it raises "DataLoader worker ... killed" in the
    main thread wherever it is when a worker dies (in the model's forward, it was taken for the model's
    failure, and the next batch's transfer from the dead worker an EOFError). The DataLoader still finds a
    dead worker (every 5 s while it waits, and when a transfer fails) and says so from ``next()``."""
    sigchld = getattr(signal, "SIGCHLD", None)
    if not workers or sigchld is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.signal(sigchld, signal.SIG_DFL)  # torch's, set by iter(loader)
    try:
        yield
    finally:
        signal.signal(sigchld, handler)


_WORKER_DIED = re.compile(
    r"DataLoader worker \(pids? ?(?:\(s\) )?(?P<pids>[\d, ]+)\) (exited unexpectedly|is killed by signal)"
)


def _check_settings(output: Path, settings: dict, compare: bool, write: bool) -> None:
    """With ``compare`` (``output`` holds predictions), they were made with ``settings``; otherwise, with
    ``write``, record ``settings`` for the runs that resume this one."""
    path = output / SETTINGS
    if compare and path.exists():
        _check_regular(path)
        try:
            before = json.loads(path.read_text())
            if not isinstance(before, dict):
                raise ValueError(f"expected a JSON object of settings, got {type(before).__name__}")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is unreadable ({exc}); remove it, or choose another --output") from None
        # A setting a run of an older version did not record is not compared.
        changed = {k: (before[k], v) for k, v in settings.items() if k in before and before[k] != v}
        if changed:
            listed = ", ".join(f"{k} {new!r} (was {old!r})" for k, (old, new) in changed.items())
            raise ValueError(
                f"{output} holds predictions made with other settings: {listed}; resume with the same ones, "
                "or choose another --output"
            )
    elif write:  # before any video: a failure here is a bad setup (exit 2), as an unwritable DIR is
        _replace_file(path, (json.dumps(settings, indent=1) + "\n").encode(), setup=True)


def _cut_on_device(
    batch: list[dict], processor, device, num_frames: int, crops: int, dtype, uint8: bool
) -> None:
    """Cut the views of the decoded videos of ``batch`` on ``device`` (the DataLoader pinned the frames: the
    copies do not block). The batch's time is shared equally among its videos: one synchronization, not one
    per video."""
    start = time.perf_counter()
    cut = []
    for item in batch:
        if item["error"] is not None:
            continue
        try:
            frames = item.pop("frames").to(device, non_blocking=True)
            item["views"] = cut_views(frames, processor, num_frames, crops, dtype, uint8)
            cut.append(item)
        except Exception as exc:  # this video only
            item["error"] = f"preprocessing failed ({type(exc).__name__}: {exc})"
    synchronize(device)
    for item in cut:
        item["preprocess_ms"] = (time.perf_counter() - start) * 1e3 / len(cut)


def _score(batch: list[dict], model, device, id2label, top_k: int, totals: dict) -> list[dict]:
    """Predictions of one batch of videos (all their views in one forward, ``score_each``); error records for
    the videos that could not be read or that the model fails on alone."""
    good = [item for item in batch if item["error"] is None]
    records = {}
    for item in batch:
        if item["error"] is not None:
            records[item["path"]] = _record(item, id2label, error=item["error"])
    scores = score_each(model, [item["views"] for item in good], device) if good else []
    for item, (mean, model_ms, error) in zip(good, scores, strict=True):
        if error is not None:  # an error line, tried again by --resume
            records[item["path"]] = _record(item, id2label, error=error)
            continue
        # At least the five best, so that the top-5 accuracy does not depend on top_k.
        values, indices = (t.tolist() for t in mean.topk(min(max(top_k, 5), mean.numel())))
        top = [
            {"label": id2label.get(i, str(i)), "label_id": i, "probability": round(v, 6)}
            for v, i in zip(values[:top_k], indices[:top_k], strict=True)
        ]
        record = _record(item, id2label, top=top)
        record["correct_top5"] = item["label"] in indices[:5]
        record["time_ms"] = {
            "decode": round(item["decode_ms"], 2),
            "preprocess": round(item["preprocess_ms"], 2),
            "model": round(model_ms, 2),
        }
        totals["decode"] += item["decode_ms"]
        totals["preprocess"] += item["preprocess_ms"]
        totals["model"] += model_ms
        records[item["path"]] = record
    return [records[item["path"]] for item in batch]


def _record(item: dict, id2label: dict[int, str], *, top=None, error=None) -> dict:
    record = {
        "path": item["path"],
        "label": id2label.get(item["label"], str(item["label"])),
        "label_id": item["label"],
    }
    if error is not None:
        record["error"] = error
    else:
        record["top"] = top
        record["correct"] = top[0]["label_id"] == item["label"]
    return record


__all__ = ["Sample", "VideoViews", "clip_indices", "compute_metrics", "evaluate", "load_samples"]
