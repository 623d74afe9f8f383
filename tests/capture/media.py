"""Media made in the test: videos encoded with PyAV (FFmpeg), image folders, and a real ONNX
model whose answer is the frame's dominant colour (so results can be checked against content)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

COLOURS = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}


def solid(name: str, w: int = 320, h: int = 240) -> np.ndarray:
    return np.full((h, w, 3), COLOURS[name], np.uint8)


def encode_video(
    path: Path, colours: list[str], per_colour: int = 10, codec: str = "libx264", fps: int = 30
) -> Path:
    """A video whose frames are solid colours, `per_colour` frames each, in order."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = 320, 240
        stream.pix_fmt = "yuv420p" if codec != "mjpeg" else "yuvj420p"
        for name in colours:
            for _ in range(per_colour):
                frame = av.VideoFrame.from_ndarray(solid(name), format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def colour_model(path: Path) -> Path:
    """[1, 3, H, W] float -> [1, 3] channel means: argmax is the dominant colour (labels red,
    green, blue)."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["means"]),
        ],
        "colour",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("means", TensorProto.FLOAT, [1, 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    (path.parent / "colours.txt").write_text("red\ngreen\nblue\n")
    return path


def colour_config(model: Path) -> str:
    """A daemon config for tests.daemon_harness (its {pull}, {results}, {metrics} placeholders)."""
    labels = model.parent / "colours.txt"
    return (
        "models:\n"
        f"  - {{name: colour, path: {model}, labels: {labels}, preprocess: {{resize: [32, 32], scale: 1/255}},\n"
        "     postprocess: {type: classify, top_k: 1}}\n"
        'endpoints:\n  - {type: pull, bind: "{pull}"}\n'
        'results:\n  bind: "{results}"\n'
        'metrics:\n  listen: "{metrics}"\n'
        'sources:\n  - {match: "*", policy: fifo, queue_size: 64}\n'
    )
