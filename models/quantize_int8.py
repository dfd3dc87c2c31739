"""NanoDet's int8 version for the CPU backend (`cpu_path` in configs/README.md), made by
`cargo xtask test`/`demo` setup from models/nanodet.onnx (xtask/src/assets.rs runs this).

Static quantization with ONNX Runtime's tool (onnxruntime.quantization, the same ONNX Runtime
version Vigil loads): QDQ format, every Conv quantized (weights int8 per output channel,
activations uint8), the rest (pads, activations, resize, the heads' split, sigmoid and reshapes)
left in float. Activation ranges come from MinMax calibration on the frames given: a clip's
every Nth frame and still pictures, letterboxed to 416 on the long side as Vigil does, normalised
with the model's mean and std (BGR). Calibration only sets ranges; it trains nothing. The
pictures used are not of the eval clips the int8 model is scored on (benches/RESULTS.md).

Usage: quantize_int8.py FP32.onnx OUT.onnx [--every N] CALIBRATION...  (clips or pictures)
"""

import argparse
import os
import sys
import tempfile

import cv2
import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

MEAN = np.array([103.53, 116.28, 123.675], np.float32)
STD = np.array([57.375, 57.12, 58.395], np.float32)
SIDE = 416


def tensor(img):
    """A BGR picture as the network's input: long side 416, padded to multiples of 32."""
    h, w = img.shape[:2]
    s = SIDE / max(w, h)
    nw, nh = round(w * s), round(h * s)
    pw, ph = -(-nw // 32) * 32, -(-nh // 32) * 32
    out = np.full((ph, pw, 3), 114, np.uint8)
    px, py = (pw - nw) // 2, (ph - nh) // 2
    out[py:py + nh, px:px + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    x = (out.astype(np.float32) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def pictures(paths, every):
    for p in paths:
        img = cv2.imread(p)
        if img is not None:
            yield p, img
            continue
        cap = cv2.VideoCapture(p)
        if not cap.isOpened():
            sys.exit(f"quantize_int8: cannot read {p} as a picture or a clip")
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if i % every == 0:
                yield p, frame
            i += 1


class Frames(CalibrationDataReader):
    def __init__(self, name, tensors):
        self.it = iter([{name: t} for t in tensors])

    def get_next(self):
        return next(self.it, None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("calibration", nargs="+")
    a = ap.parse_args()
    import onnx

    name = onnx.load(a.model).graph.input[0].name
    tensors = [tensor(img) for _, img in pictures(a.calibration, a.every)]
    if not tensors:
        sys.exit("quantize_int8: no calibration frames")
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(a.model, pre, skip_symbolic_shape=True)
        quantize_static(
            pre,
            a.out,
            Frames(name, tensors),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    print(f"quantize_int8: {a.out} from {a.model}, {len(tensors)} calibration frames")


if __name__ == "__main__":
    main()
