"""Video files in, labels out: the pipeline behind ``timesformer classify``.

Worker threads decode and preprocess the next videos (PyAV and the native preprocessing op release the
GIL) while the model runs on the current batch, so for many videos the decoding hides behind inference.
A video that cannot be read yields an error result and the others go on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .video import MAX_FRAME_PIXELS

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One video's result: ``labels`` is ``[(label, probability), ...]`` best first, or ``error`` says why
    there is none. Times are milliseconds; ``model_ms`` is the video's share of its batch."""

    path: str
    labels: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    model_ms: float = 0.0

    def to_json(self) -> dict:
        if self.error is not None:
            return {"video": self.path, "error": self.error}
        return {
            "video": self.path,
            "labels": [{"label": name, "probability": round(p, 6)} for name, p in self.labels],
            "time_ms": {
                "decode": round(self.decode_ms, 2),
                "preprocess": round(self.preprocess_ms, 2),
                "model": round(self.model_ms, 2),
            },
        }


def bundled_model_dir() -> str:
    from .assets import BUNDLED_MODEL

    return str(BUNDLED_MODEL)


def load_model(
    model: str | os.PathLike | None = None,
    *,
    backend: str = "auto",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
):
    """``(model, processor)`` from a directory or hub id (default: the bundled model), or a PEFT adapter's
    folder (its base model with the adapter); the processor comes from the folder's
    ``video_preprocessor_config.json`` or ``preprocessor_config.json`` (an adapter's: else its base model's),
    else ``TimesformerVideoProcessor``'s defaults (ImageNet mean and std)."""
    from .configuration import CONFIG_NAME
    from .loading import PREPROCESSOR_NAMES, preprocessor_file, resolve_pretrained_dir
    from .modeling import TimesformerForVideoClassification
    from .preprocess import VideoProcessor

    device = resolve_device(device)
    if model is None and not os.path.isfile(os.path.join(bundled_model_dir(), "config.json")):
        raise FileNotFoundError(
            "no bundled model is shipped with this build yet; pass --model DIR (or a hub id)"
        )
    source = bundled_model_dir() if model is None else model
    net, info = TimesformerForVideoClassification.from_pretrained(
        source, backend=backend, device=device, dtype=dtype, output_loading_info=True
    )
    # The same folder (or hub snapshot, now holding the weights too) for the preprocessor's config; for a PEFT
    # adapter's folder without one, its base model's (name_or_path: where the base weights came from).
    files = [CONFIG_NAME, *PREPROCESSOR_NAMES]
    directory = resolve_pretrained_dir(source, files=files)
    base = net.name_or_path
    if preprocessor_file(directory) is None and base and base != os.fspath(source):
        directory = resolve_pretrained_dir(base, files=files)
    net.eval()
    net.backend  # noqa: B018  (resolves the backend now: one that cannot run here fails before any decoding)
    config = net.config
    if config.num_labels < 1:
        raise ValueError(
            f"{directory}: num_labels is {config.num_labels}: a classifier needs at least one class (a base "
            "checkpoint without a head cannot classify)"
        )
    # (from_pretrained gives it a fresh head, as transformers does, to be fine-tuned: its scores are noise. An
    # adapter may carry a trained one: PEFT's modules_to_save.)
    if info["missing_keys"] and not (
        net._hf_peft_config_loaded
        and any("classifier" in (c.modules_to_save or ()) for c in net.peft_config.values())
    ):
        raise ValueError(
            f"{directory}: a base checkpoint without classifier weights ({', '.join(sorted(info['missing_keys']))}"
            "): it cannot classify before it is fine-tuned"
            + (" (its adapter does not carry them: modules_to_save)" if net._hf_peft_config_loaded else "")
        )
    if config.attention_type == "space_only":
        # Its logits are per frame ((batch * frames, labels)), as transformers' model returns them; how to pool
        # them into a video's score is a choice the checkpoint's own recipe makes, not one made here.
        raise ValueError(
            f"{directory}: attention_type 'space_only' gives one prediction per frame; classify and evaluate "
            "take models whose logits are per clip (divided_space_time or joint_space_time)"
        )
    channels = net._input_channels()
    if channels != 3:  # (else every video would fail in the forward, after decoding)
        raise ValueError(
            f"{directory}: the model takes {channels}-channel frames; videos are decoded to RGB (3 channels): "
            "classify and evaluate take RGB models"
        )
    config_file = preprocessor_file(directory)
    if config_file is not None:
        processor = VideoProcessor.from_pretrained(config_file)
        processor.check_model(net.config, config_file)
    else:
        processor = VideoProcessor()  # transformers' TimesformerVideoProcessor defaults (ImageNet mean/std)
        processor.check_model(net.config, "the default preprocessing (no preprocessor config)")
    return net, processor


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` checked against what this machine has (default: CUDA when available, else the CPU)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device {device!r} is not a device name; expected e.g. cpu, cuda or cuda:1"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device}: CUDA is not available (no GPU, or a CPU build of torch)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"device {device}: expected cpu or cuda")
    return device


def nan_error(probs: torch.Tensor) -> str | None:
    """Why a video's probabilities cannot be reported (non-finite model output), or ``None``."""
    if not bool(torch.isfinite(probs).all()):
        return "the model's output is not finite (NaN or infinity): the weights or the input hold NaN/inf"
    return None


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU), so that wall-clock times are the work's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def score_views(model, views: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    """Each video's label probabilities, the mean of its views' softmax: ``views[i]`` ``(V_i, T, ...)`` are
    video ``i``'s, all of them run in one forward. Returns ``((videos, labels) float32, model ms per video)``."""
    pixels = torch.cat(views).to(device, non_blocking=True)
    start = time.perf_counter()
    with torch.inference_mode():
        probs = model(pixels, return_dict=True).logits.float().softmax(-1)
    synchronize(device)
    model_ms = (time.perf_counter() - start) * 1e3 / len(views)
    return torch.stack([p.mean(0) for p in probs.split([len(v) for v in views])]), model_ms


def score_each(
    model, views: list[torch.Tensor], device: torch.device
) -> list[tuple[torch.Tensor | None, float, str | None]]:
    """``score_views`` per video, with its failures per video: ``(probs (labels,) float32, model ms, None)`` for
    a video scored, ``(None, model ms, why)`` for one whose output is not finite or on which the model fails.

    One forward takes every view of the batch. A failed one (out of the device's memory, most often) is run
    again a video at a time, so that only a video that fails alone is an error."""
    try:
        probs, model_ms = score_views(model, views, device)
    except Exception as exc:
        failure = f"{type(exc).__name__}: {exc}"
    else:
        return [
            (p, model_ms, None) if (why := nan_error(p)) is None else (None, model_ms, why) for p in probs
        ]
    # Outside the except block: its traceback holds the failed forward's tensors.
    if len(views) == 1:
        return [(None, 0.0, f"model forward failed ({failure})")]
    logger.warning("the model failed on a batch of %d videos (%s): one video at a time", len(views), failure)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return [score_each(model, [v], device)[0] for v in views]


def classify_videos(
    paths: Iterable[str],
    model,
    processor,
    *,
    top_k: int = 5,
    batch_size: int = 4,
    num_frames: int | None = None,
    sample_rate: int = 4,
    strategy: str = "center",
    seed: int | None = 0,
    workers: int = 2,
    clips: int = 1,
    crops: int = 1,
    max_frame_pixels: int = MAX_FRAME_PIXELS,
) -> Iterator[Prediction]:
    """Classify video files, yielding one ``Prediction`` per path in order.

    Args:
        paths: video files.
        model: a ``TimesformerForVideoClassification`` in eval mode.
        processor: a ``VideoProcessor``.
        top_k: labels per video.
        batch_size: videos per forward (each with ``clips * crops`` views).
        num_frames: frames per clip (default: the model config's).
        sample_rate, strategy, seed: frame sampling (``timesformer.video.read_video``).
        workers: decoding threads.
        clips, crops: views per video (``timesformer.evaluate``): ``clips`` uniform temporal clips (more than
            one: the sampling strategy does not apply) x 1 or 3 spatial crops; the labels' probabilities are
            the mean of the views' softmax probabilities.
        max_frame_pixels: videos with larger frames are errors (``read_video``'s limit by default).
    """
    from .evaluate import cut_views, read_views
    from .video import MAX_NUM_FRAMES, VideoError, read_video, stop_reads_on

    if clips < 1 or crops not in (1, 3):
        raise ValueError(f"clips must be >= 1 and crops 1 or 3, got clips={clips}, crops={crops}")

    paths = [os.fspath(p) for p in paths]
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    if num_frames is not None and not 1 <= num_frames <= MAX_NUM_FRAMES:
        raise ValueError(f"num_frames must be 1 to {MAX_NUM_FRAMES}, got {num_frames}")
    num_frames = num_frames or model.config.num_frames
    id2label = model.config.id2label
    top_k = max(1, min(top_k, len(id2label)))

    stop = threading.Event()  # set when this generator ends: the decoding threads' reads then stop

    def load(path: str):
        with stop_reads_on(stop):
            return read(path)

    def read(path: str):
        try:
            start = time.perf_counter()
            if clips == 1:  # the strategy's frames (then cropped once or three times)
                frames = read_video(
                    path,
                    num_frames,
                    sample_rate,
                    strategy=strategy,
                    seed=seed,
                    max_frame_pixels=max_frame_pixels,
                )
                decoded = time.perf_counter()
                # uint8 to the device (4x less to copy than floats), preprocessed there: (views, T, 3, h, w).
                pixels = cut_views(frames.to(device), processor, num_frames, crops, dtype, uint8=False)
            else:  # each frame cut on the device as decoded: clips * T frames at full resolution may not fit
                pixels, cut_ms = read_views(
                    path,
                    processor,
                    num_frames,
                    sample_rate,
                    clips,
                    crops,
                    dtype,
                    False,
                    max_frame_pixels,
                    device,
                )
                decoded = time.perf_counter() - cut_ms / 1e3
            synchronize(device)
            done = time.perf_counter()
        except (VideoError, ValueError) as exc:
            return Prediction(path, error=str(exc.reason if isinstance(exc, VideoError) else exc))
        except Exception as exc:  # a decoder failure we did not anticipate: still only this video
            return Prediction(path, error=f"could not be read ({type(exc).__name__}: {exc})")
        return Prediction(
            path, decode_ms=(decoded - start) * 1e3, preprocess_ms=(done - decoded) * 1e3
        ), pixels

    def run(batch: list[tuple[Prediction, torch.Tensor]]) -> None:
        scores = score_each(model, [x for _, x in batch], device)
        for (pred, _), (probs, model_ms, error) in zip(batch, scores, strict=True):
            pred.model_ms, pred.error = model_ms, error
            if error is None:
                values, indices = (t.tolist() for t in probs.topk(top_k))
                pred.labels = [(id2label.get(k, str(k)), q) for k, q in zip(indices, values, strict=True)]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        try:
            # Keep about two batches of videos decoding ahead of the model, not the whole list in memory.
            ahead = 2 * batch_size + workers
            futures = [pool.submit(load, p) for p in paths[:ahead]]
            submitted = len(futures)
            batch: list[tuple[Prediction, torch.Tensor]] = []
            pending: list[Prediction] = []  # results in input order, waiting for their batch
            for k in range(len(paths)):
                item = futures[k].result()
                futures[k] = None  # let the pixels go once used
                if submitted < len(paths):
                    futures.append(pool.submit(load, paths[submitted]))
                    submitted += 1
                if isinstance(item, Prediction):
                    pending.append(item)
                else:
                    pending.append(item[0])
                    batch.append(item)
                if len(batch) == batch_size or k == len(paths) - 1:
                    if batch:
                        run(batch)
                        batch = []
                    yield from pending
                    pending = []
        finally:
            # Closed early (Ctrl-C, a closed pipe, a caller's break): the queued videos are not read and
            # the ones being read stop, instead of the pool's exit waiting for all of them.
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
