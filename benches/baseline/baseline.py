#!/usr/bin/env python3
"""The Python baseline Vigil is measured against: what Vigil's predecessor did, done plainly.

OpenCV capture (every frame) -> letterbox resize -> normalise -> onnxruntime (CPU, default
session options, N intra-op threads) -> NanoDet decode -> per-class NMS (numpy).
Same model, same clip, same thread count and same pre/post-processing constants as Vigil.

Writes one JSON line per frame: {"frame": i, "pts_s": t, "dets": [[x1, y1, x2, y2, score, cls], ...]}
(normalised coordinates), so `vigil bench` can run the baseline's detections through Vigil's own
tracker and rules and compare the events both find. Prints a JSON summary on stdout.
"""
import argparse
import json
import sys
import time

import cv2
import numpy as np
import onnxruntime as ort

MEAN = np.array([103.53, 116.28, 123.675], np.float32)
STD = np.array([57.375, 57.12, 58.395], np.float32)


def letterbox(img, size):
    h, w = img.shape[:2]
    s = min(size / w, size / h)
    nw, nh = round(w * s), round(h * s)
    out = np.full((size, size, 3), 114, np.uint8)
    px, py = (size - nw) // 2, (size - nh) // 2
    out[py:py + nh, px:px + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, (px, py, nw, nh, w, h)


def nms(boxes, scores, iou):
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
        ov = inter / (area(boxes[i]) + area(boxes[order[1:]]) - inter + 1e-9)
        order = order[1:][ov <= iou]
    return keep


def decode(outputs, size, geom, thr, iou):
    px, py, nw, nh, w, h = geom
    levels = {}
    for o in outputs:
        n, c = o.shape[1], o.shape[2]
        levels.setdefault(n, {})["box" if c % 4 == 0 and c < 64 else "cls"] = o[0]
    all_boxes, all_scores, all_cls = [], [], []
    for stride in (8, 16, 32):
        g = -(-size // stride)
        lv = levels[g * g]
        cls_scores, dist = lv["cls"], lv["box"]
        best = cls_scores.max(1)
        keep = np.nonzero(best >= thr)[0]
        if keep.size == 0:
            continue
        bins = dist.shape[1] // 4
        d = dist[keep].reshape(-1, 4, bins)
        d = np.exp(d - d.max(2, keepdims=True))
        d = (d / d.sum(2, keepdims=True)) @ np.arange(bins, dtype=np.float32) * stride
        cx = (keep % g) * stride
        cy = (keep // g) * stride
        b = np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1)
        b[:, [0, 2]] = np.clip((b[:, [0, 2]] - px) / nw, 0, 1)
        b[:, [1, 3]] = np.clip((b[:, [1, 3]] - py) / nh, 0, 1)
        all_boxes.append(b)
        all_scores.append(best[keep])
        all_cls.append(cls_scores[keep].argmax(1))
    if not all_boxes:
        return []
    boxes, scores, cls = np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_cls)
    dets = []
    for c in np.unique(cls):
        idx = np.nonzero(cls == c)[0]
        for k in nms(boxes[idx], scores[idx], iou):
            i = idx[k]
            dets.append([*map(float, boxes[i]), float(scores[i]), int(c)])
    return dets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--min-score", type=float, default=0.175)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    cap = cv2.VideoCapture(a.clip)
    if not cap.isOpened():
        sys.exit(f"cannot open {a.clip}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    t0 = time.perf_counter()
    c0 = time.process_time()
    frames = 0
    with open(a.out, "w") as f:
        while True:
            ok, img = cap.read()
            if not ok:
                break
            x, geom = letterbox(img, a.size)
            x = ((x.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)[None]
            outs = sess.run(None, {name: np.ascontiguousarray(x)})
            dets = decode(outs, a.size, geom, a.min_score, 0.5)
            f.write(json.dumps({"frame": frames, "pts_s": frames / fps, "dets": dets}) + "\n")
            frames += 1
    # CPU of the whole process (all threads) over the frame loop: start-up (imports, model load)
    # excluded.
    loop_cpu_s = time.process_time() - c0
    print(json.dumps({"frames": frames, "fps": fps, "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), "wall_s": time.perf_counter() - t0, "loop_cpu_s": loop_cpu_s, "ort": ort.__version__}))


if __name__ == "__main__":
    main()
