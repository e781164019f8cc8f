"""Self-contained HTML diagnosis reports: images inlined as base64 PNG, heatmaps drawn by inline JS.

A report shows the answer as token buttons; clicking a token draws that token's map over the image
(or as bars for BLIP query tokens). Selectors pick the map kind (attention, decoder relevancy,
relevancy through the vision encoder / Q-Former) and, for attention, the decoder layer range. A
logit-lens table shows each layer's top tokens at the selected step. When the image is a COCO image
with CHAIR ground truth (file name ``COCO_val2014_%012d.jpg``), object words CHAIR finds hallucinated
are red and ground-truth object words green.

Test hook: the URL hash ``#token=N&kind=NAME&layers=A-B`` selects a token (by clicking its button),
a kind and a layer range on load; after every render ``<body>`` carries ``data-token``, ``data-kind``,
``data-layers`` and ``data-signature`` (hashes of the drawn canvases' pixels and of the map values), and
each canvas ``data-pix``, ``data-sig``, ``data-max`` and ``data-nonzero`` (drawn pixels with alpha).
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from string import Template
from typing import Any, Iterable

import numpy as np
import torch

from harness.diagnosis.maps import Trace, layer_indices
from harness.diagnosis.span_geometry import to_views

COCO_NAME = re.compile(r"COCO_(?:val|train)2014_(\d{12})\.(?:jpg|jpeg|png)$", re.IGNORECASE)
MAX_ORIGINAL_SIDE = 448


# ------------------------------------------------------------------ CHAIR
def coco_id_from_name(path: str | Path | None) -> int | None:
    """The COCO image id of a file named ``COCO_val2014_%012d.jpg`` (or train2014), else None."""
    if not path:
        return None
    m = COCO_NAME.search(Path(str(path)).name)
    return int(m.group(1)) if m else None


def chair_marks(answer: str, offsets: list[tuple[int, int]], image_path: str | Path | None,
                ground_truth: str = "lemma_pos") -> dict | None:
    """CHAIR's view of an answer, per token: None when the image is not a COCO image with ground truth.

    Returns ``{"image_id", "gt_objects", "generated", "hallucinated", "metrics", "tokens"}`` where
    ``tokens[i]`` is None, or ``{"mark": "hallucinated" | "object", "object": ..., "word": ...}`` for
    tokens overlapping an object mention of the answer.
    """
    image_id = coco_id_from_name(image_path)
    if image_id is None:
        return None
    from benchmarks.chair_metric import caption_detail, load_ground_truth

    gt = load_ground_truth(ground_truth)
    if image_id not in gt:
        return None
    detail = caption_detail(answer, gt[image_id], image_id)
    tokens: list[dict | None] = [None] * len(offsets)
    for m in detail["mentions"]:
        if m["start"] is None:
            continue
        for i, (a, b) in enumerate(offsets):
            if a < m["end"] and b > m["start"] and tokens[i] is None:
                tokens[i] = {"mark": "hallucinated" if m["hallucinated"] else "object",
                             "object": m["object"], "word": m["surface"]}
    return {"image_id": image_id, "gt_objects": detail["mscoco_gt_words"],
            "generated": detail["mscoco_generated_words"],
            "hallucinated": [obj for _, obj in detail["mscoco_hallucinated_words"]],
            "metrics": detail["metrics"], "tokens": tokens}


# ------------------------------------------------------------------ payload
def png_data_uri(image: Any, max_side: int | None = None) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URI (optionally downscaled to ``max_side``)."""
    img = image.convert("RGB")
    if max_side and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def quantize(values: np.ndarray) -> tuple[str, list[float]]:
    """[T, L, cells] non-negative floats -> (base64 uint8 bytes, per-(t, l) scales): value ≈ q / 255 * scale."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
    flat = v.reshape(-1, v.shape[-1])
    scale = flat.max(axis=1)
    q = np.where(scale[:, None] > 0, np.rint(flat / np.where(scale > 0, scale, 1)[:, None] * 255), 0)
    data = base64.b64encode(q.astype(np.uint8).tobytes()).decode("ascii")
    return data, [float(f"{s:.6g}") for s in scale]


def _kind(name: str, label: str, views_meta: dict, arrays: dict[str, torch.Tensor], layered: bool,
          note: str = "") -> dict:
    views = []
    for vname, arr in arrays.items():
        meta = views_meta[vname]
        a = arr.detach().float().cpu().numpy()
        if not layered:
            a = a[:, None]
        a = a.reshape(a.shape[0], a.shape[1], -1)
        data, scale = quantize(a)
        views.append({**meta, "data": data, "scale": scale})
    return {"name": name, "label": label, "layered": layered, "note": note, "views": views}


def report_payload(trace: Trace, *, layers: Any = None, image_path: str | Path | None = None,
                   title: str | None = None, chair: dict | None | bool = True,
                   ground_truth: str = "lemma_pos", extra: dict | None = None) -> dict:
    """The JSON-able data a report page renders (maps quantised to uint8 with per-map scales)."""
    L = trace.num_layers
    idx = layer_indices(layers, L)
    g = trace.geometry
    blip = g.get("kind") == "queries"
    vmeta = {v.name: {"name": v.name, "rows": v.rows, "cols": v.cols, "overlay": v.overlay, "label": v.label}
             for v in trace.views}
    kinds = []
    attn = trace.attention.permute(1, 0, 2)  # [T, L, span]
    att_views = to_views(g, attn, g.get("qformer_attention"))
    meta = dict(vmeta)
    if "patches" in meta and blip:
        meta["patches"] = {**meta["patches"], "label": "patches, via Q-Former cross-attention (mean of layers, heads)"}
    kinds.append(_kind("attention", "Attention (mean over the layer range and heads)", meta,
                       {k: v for k, v in att_views.items() if k in meta}, layered=True,
                       note="Attention weights of the query row that predicted the token onto the image tokens."))
    if trace.relevancy is not None:
        rel_views = {k: v for k, v in to_views(g, trace.relevancy).items() if k in vmeta}
        kinds.append(_kind("relevancy", "Relevancy: decoder rollout (Chefer et al. 2021)", vmeta, rel_views,
                           layered=False, note="Gradient-weighted attention rollout through all decoder layers, "
                           "read at the image tokens."))
    if trace.patch_relevancy:
        meta = {k: dict(vmeta[k]) if k in vmeta else {"name": k, "rows": v.shape[-2], "cols": v.shape[-1],
                                                       "overlay": "model", "label": k}
                for k, v in trace.patch_relevancy.items()}
        if blip:
            meta["patches"]["label"] = "patches, via Q-Former and vision-encoder relevancy"
        label = ("Relevancy through the Q-Former and vision encoder" if blip
                 else "Relevancy through the vision encoder")
        kinds.append(_kind("relevancy_vision", label, meta, dict(trace.patch_relevancy), layered=False,
                           note="Decoder relevancy of the image tokens pushed back to the encoder patches."))
    if chair is True:
        chair = chair_marks(trace.answer, trace.token_offsets, image_path, ground_truth)
    elif chair is False:
        chair = None
    marks = chair["tokens"] if chair else [None] * len(trace.token_ids)
    tokens = [{"text": t, "id": i, "mark": m} for t, i, m in zip(trace.token_texts, trace.token_ids, marks)]
    share = trace.attention.sum(-1).T  # [T, L]: attention mass on the image span
    images = {}
    for key, img in trace.images.items():
        if img is None:
            continue
        uri = png_data_uri(img, MAX_ORIGINAL_SIDE if key == "original" else None)
        images[key] = {"src": uri, "width": img.size[0], "height": img.size[1]}
    return {
        "title": title or f"{trace.model}: {trace.question}",
        "model": trace.model, "family": trace.family, "question": trace.question, "prompt": trace.prompt,
        "answer": trace.answer, "generated": trace.generated, "image_path": str(image_path or ""),
        "tokens": tokens, "num_layers": L, "layer_range": [idx[0], idx[-1]],
        "kinds": kinds, "images": images,
        "attn_share": [[round(float(x), 5) for x in row] for row in share.tolist()],
        "rel_share": [round(float(x), 5) for x in trace.relevancy_image_share],
        "lens": [[[[name, round(p, 5), tid] for name, tid, p in top] for top in step] for step in trace.lens],
        "chair": ({k: v for k, v in chair.items() if k != "tokens"} if chair else None),
        "geometry": g.get("kind"),
        "extra": extra or {},
    }


# ------------------------------------------------------------------ HTML
def _asset(name: str) -> str:
    """The text of a page asset stored next to this module (package data)."""
    return (Path(__file__).parent / name).read_text(encoding="utf-8")


CSS = _asset("report_style.css")  # the report and index pages' stylesheet
JS = _asset("report_script.js")  # the report page's renderer (reads the ``hb-data`` JSON)
PAGE = Template(_asset("report_template.html"))  # the report page; ``$name`` placeholders


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _json_script(data: Any) -> str:
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


def render_report(payload: dict) -> str:
    """The full HTML page for a report payload (see ``report_payload``)."""
    p = payload
    chair = p.get("chair")
    chair_html = ""
    if chair:
        hall = ", ".join(_esc(h) for h in chair["hallucinated"]) or "none"
        chair_html = (f'<div class="chair">CHAIR (COCO image {chair["image_id"]}): hallucinated objects '
                      f'<span class="bad">{hall}</span>; ground truth <span class="good">'
                      f'{_esc(", ".join(chair["gt_objects"]))}</span>; CHAIRi {chair["metrics"]["CHAIRi"]:.2f}</div>')
    src = "generated greedily" if p.get("generated") else "teacher-forced on the recorded answer"
    extra = "".join(f'<div class="meta">{_esc(k)}: {_esc(v)}</div>' for k, v in (p.get("extra") or {}).items())
    notes = {
        "grid": "LLaVA-1.5: the image tokens are the vision encoder's square patch grid over the processed "
                "(center-cropped) image shown here.",
        "anyres": "AnyRes (LLaVA-NeXT, LLaVA-OneVision): the base crop (the whole image resized to one square "
                  "crop) is shown over the processed base crop; the AnyRes tile tokens (unpadded, for OneVision "
                  "shrunk when there are too many, one newline token per row dropped) over the original image.",
        "queries": "BLIP family: the image tokens are Q-Former query tokens, shown as one bar each; the "
                   "patch views push the per-query values back through the Q-Former (cross-attention for "
                   "attention maps, Q-Former relevancy for relevancy) onto the vision encoder's patches.",
        "patch_grid": "Qwen-VL (dynamic resolution): the image tokens are the merged-patch grid (each token 2x2 "
                      "vision-encoder patches) over the resized image shown here.",
        "tokens": "The image tokens could not be mapped to an image grid for this model; one bar per token.",
    }
    return PAGE.substitute(
        title=_esc(p["title"]), css=CSS, js=JS, model=_esc(p["model"]), family=_esc(p["family"]),
        image_path=_esc(p["image_path"]), question=_esc(p["question"]), source=src, answer=_esc(p["answer"]),
        extra=extra, chair=chair_html, geometry_note=_esc(notes.get(p.get("geometry"), "")), data=_json_script(p))


def write_report(trace: Trace, path: str | Path, **kw: Any) -> Path:
    """Render ``trace`` (``report_payload`` keywords) to an HTML file; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(report_payload(trace, **kw)), encoding="utf-8")
    return path


def marked_answer_html(payload: dict) -> str:
    """The answer as HTML with CHAIR-hallucinated tokens in red and ground-truth objects in green."""
    out = []
    for t in payload["tokens"]:
        m = t.get("mark")
        cls = f' class="{m["mark"]}"' if m else ""
        out.append(f"<span{cls}>{_esc(t['text'])}</span>")
    return "".join(out)


def render_index(entries: Iterable[dict], title: str = "Diagnosis reports") -> str:
    """An index page: one row per report (``href``, ``question_id``, ``image``, ``question``, ``answer_html``,
    ``hallucinated``; ``error`` and no ``href`` for an item that could not be diagnosed)."""
    rows = []
    for e in entries:
        hall = ", ".join(_esc(h) for h in e.get("hallucinated") or [])
        qid = (f'<a href="{_esc(e["href"])}">{_esc(e["question_id"])}</a>' if e.get("href")
               else _esc(e["question_id"]))
        answer = e.get("answer_html", "") if not e.get("error") else f'<i>not diagnosed: {_esc(e["error"])}</i>'
        rows.append(f'<tr><td>{qid}</td><td>{_esc(Path(str(e.get("image") or "")).name)}</td>'
                    f'<td>{_esc(e.get("question", ""))}</td><td class="ans">{answer}</td>'
                    f'<td class="bad">{hall}</td></tr>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title><style>
{CSS}
table.idx{{border-collapse:collapse;font-size:.9em}} table.idx td,table.idx th{{border:1px solid #ddd;padding:3px 6px;
vertical-align:top}} .hallucinated{{color:#c00;font-weight:600}} .object{{color:#067d2b}}</style></head>
<body><h1>{_esc(title)}</h1>
<table class="idx"><tr><th>question_id</th><th>image</th><th>question</th><th>answer (CHAIR marks)</th>
<th>hallucinated</th></tr>
{''.join(rows)}
</table></body></html>
"""
