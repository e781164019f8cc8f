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
from typing import Any, Iterable

import numpy as np
import torch

from harness.diagnosis.maps import Trace, layer_indices, to_views

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
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px;color:#222;max-width:1200px}
h1{font-size:1.25em;margin:0 0 .3em} .meta{color:#555;font-size:.9em;margin:.2em 0}
.tokens{margin:.8em 0;line-height:2.1em} .tok{font:inherit;border:1px solid #bbb;background:#f6f6f6;
border-radius:4px;padding:1px 5px;margin:1px;cursor:pointer;white-space:pre}
.tok.sel{background:#2b6cb0;color:#fff;border-color:#2b6cb0} .tok.hallucinated{color:#c00;font-weight:600;
border-color:#e88} .tok.hallucinated.sel{background:#c00;color:#fff} .tok.object{color:#067d2b;border-color:#8c8}
.tok.object.sel{background:#067d2b;color:#fff} .controls{margin:.6em 0} .controls label{margin-right:1em}
.maps{display:flex;flex-wrap:wrap;gap:16px} .panel{border:1px solid #ddd;border-radius:6px;padding:8px}
.stage{position:relative} .stage img,.stage canvas{position:absolute;left:0;top:0;image-rendering:auto}
.cap{font-size:.85em;color:#444;margin-top:4px;max-width:340px} table.lens{border-collapse:collapse;font-size:.85em}
table.lens td,table.lens th{border:1px solid #ddd;padding:2px 6px;white-space:pre} td.hit{background:#fde68a}
.legend{font-size:.85em;color:#555} .note{font-size:.85em;color:#666;max-width:900px}
.chair{font-size:.9em;margin:.4em 0} .bad{color:#c00;font-weight:600} .good{color:#067d2b}
"""

JS = r"""
(function(){
const D = JSON.parse(document.getElementById('hb-data').textContent);
function b64u8(s){const b=atob(s);const a=new Uint8Array(b.length);for(let i=0;i<b.length;i++)a[i]=b.charCodeAt(i);return a;}
for(const k of D.kinds){for(const v of k.views){v.q=b64u8(v.data);}}
const S={token:0,kind:D.kinds[0].name,lo:D.layer_range[0],hi:D.layer_range[1]};
const W=336;
function kindOf(n){return D.kinds.find(k=>k.name===n)||D.kinds[0];}
function fnv(arr,h){h=h>>>0||2166136261;for(let i=0;i<arr.length;i++){h^=arr[i];h=Math.imul(h,16777619)>>>0;}return h;}
function values(k,v,t){
  const cells=v.rows*v.cols, L=k.layered?D.num_layers:1, out=new Float32Array(cells);
  const ls=[]; if(k.layered){for(let l=S.lo;l<=S.hi;l++)ls.push(l);} else ls.push(0);
  for(const l of ls){const r=t*L+l, base=r*cells, s=v.scale[r]/255; for(let c=0;c<cells;c++)out[c]+=v.q[base+c]*s;}
  for(let c=0;c<cells;c++)out[c]/=ls.length; return out;}
function jet(x){x=Math.max(0,Math.min(1,x));const r=Math.min(1,Math.max(0,1.5-Math.abs(4*x-3))),
  g=Math.min(1,Math.max(0,1.5-Math.abs(4*x-2))),b=Math.min(1,Math.max(0,1.5-Math.abs(4*x-1)));
  return [Math.round(255*r),Math.round(255*g),Math.round(255*b)];}
function norm(vals){let mn=Infinity,mx=-Infinity;for(const x of vals){mn=Math.min(mn,x);mx=Math.max(mx,x);}
  return {mn:mn,mx:mx,f:(x)=>mx>mn?(x-mn)/(mx-mn):(mx>0?1:0)};}
function drawGrid(cv,v,vals){
  const n=norm(vals), off=document.createElement('canvas'); off.width=v.cols; off.height=v.rows;
  const octx=off.getContext('2d'), im=octx.createImageData(v.cols,v.rows);
  for(let i=0;i<vals.length;i++){const c=jet(n.f(vals[i]));im.data[4*i]=c[0];im.data[4*i+1]=c[1];im.data[4*i+2]=c[2];
    im.data[4*i+3]=Math.round(255*(0.25+0.5*n.f(vals[i])));}
  octx.putImageData(im,0,0); const ctx=cv.getContext('2d'); ctx.clearRect(0,0,cv.width,cv.height);
  ctx.imageSmoothingEnabled=document.getElementById('smooth').checked; ctx.imageSmoothingQuality='high';
  ctx.drawImage(off,0,0,cv.width,cv.height); return n;}
function drawBars(cv,v,vals){
  const n=norm(vals), ctx=cv.getContext('2d'); ctx.clearRect(0,0,cv.width,cv.height);
  const bw=cv.width/vals.length; ctx.fillStyle='#f8f8f8'; ctx.fillRect(0,0,cv.width,cv.height);
  for(let i=0;i<vals.length;i++){const c=jet(n.f(vals[i])), h=Math.max(1,(cv.height-14)*(n.mx>0?vals[i]/n.mx:0));
    ctx.fillStyle='rgb('+c.join(',')+')'; ctx.fillRect(i*bw+1,cv.height-h,Math.max(1,bw-2),h);}
  return n;}
function pixStats(cv){const d=cv.getContext('2d').getImageData(0,0,cv.width,cv.height).data;let nz=0;
  for(let i=3;i<d.length;i+=4){if(d[i]>0)nz++;} return {sig:fnv(d).toString(16),nz:nz};}
function panel(k,v,t){
  const p=document.createElement('div'); p.className='panel'; let cv;
  if(v.overlay&&D.images[v.overlay]){const img=D.images[v.overlay], H=Math.round(W*img.height/img.width);
    const st=document.createElement('div'); st.className='stage'; st.style.width=W+'px'; st.style.height=H+'px';
    const el=document.createElement('img'); el.src=img.src; el.width=W; el.height=H; el.alt=v.overlay+' image';
    cv=document.createElement('canvas'); cv.width=W; cv.height=H; st.appendChild(el); st.appendChild(cv); p.appendChild(st);}
  else {cv=document.createElement('canvas'); cv.width=W; cv.height=110; p.appendChild(cv);}
  const vals=values(k,v,t); const n=(v.overlay&&D.images[v.overlay])?drawGrid(cv,v,vals):drawBars(cv,v,vals);
  const ps=pixStats(cv), vs=fnv(new Uint8Array(vals.buffer)).toString(16);
  cv.className='map'; cv.dataset.view=v.name; cv.dataset.pix=ps.sig; cv.dataset.sig=vs; cv.dataset.nonzero=ps.nz;
  cv.dataset.max=n.mx.toPrecision(6);
  const cap=document.createElement('div'); cap.className='cap';
  cap.textContent=v.label+' ('+v.rows+'\u00d7'+v.cols+'); min '+n.mn.toPrecision(3)+', max '+n.mx.toPrecision(3);
  p.appendChild(cap); return {el:p,pix:ps.sig,sig:vs};}
function lensTable(t){
  const tb=document.getElementById('lens'); tb.innerHTML=''; const steps=D.lens[t]||[];
  const hr=document.createElement('tr'); hr.innerHTML='<th>layer</th>'+(steps[0]||[]).map((_,i)=>'<th>#'+(i+1)+'</th>').join('');
  tb.appendChild(hr);
  steps.forEach((top,l)=>{const tr=document.createElement('tr'); const th=document.createElement('td'); th.textContent=l; tr.appendChild(th);
    for(const [name,p,id] of top){const td=document.createElement('td'); td.textContent=name+'  '+p.toFixed(3);
      if(id===D.tokens[t].id)td.className='hit'; tr.appendChild(td);} tb.appendChild(tr);});}
function render(){
  const k=kindOf(S.kind), box=document.getElementById('maps'); box.innerHTML='';
  const lo=document.getElementById('lo'), hi=document.getElementById('hi'); lo.disabled=hi.disabled=!k.layered;
  const sigs=[];
  for(const v of k.views){const r=panel(k,v,S.token); box.appendChild(r.el); sigs.push(v.name+':'+r.pix+':'+r.sig);}
  document.querySelectorAll('.tok').forEach((b,i)=>b.classList.toggle('sel',i===S.token));
  const tk=D.tokens[S.token]; let share=0, n=0; for(let l=S.lo;l<=S.hi;l++){share+=D.attn_share[S.token][l];n++;}
  let info='token '+S.token+' '+JSON.stringify(tk.text)+' (id '+tk.id+'); attention mass on the image, layers '+S.lo+'-'+S.hi+': '+(100*share/n).toFixed(1)+'%';
  if(D.rel_share.length)info+='; relevancy share of the image: '+(100*D.rel_share[S.token]).toFixed(1)+'%';
  if(tk.mark)info+='; CHAIR: '+(tk.mark==='hallucinated'?'hallucinated':'ground-truth')+' object "'+(tk.mark_object||'')+'"';
  document.getElementById('info').textContent=info;
  document.getElementById('knote').textContent=k.note||'';
  lensTable(S.token);
  const b=document.body; b.dataset.token=S.token; b.dataset.kind=k.name; b.dataset.layers=S.lo+'-'+S.hi;
  b.dataset.signature=sigs.join('|'); b.dataset.ready='1';}
// controls
const toks=document.getElementById('tokens');
D.tokens.forEach((t,i)=>{const b=document.createElement('button'); b.className='tok'+(t.mark?' '+t.mark.mark:'');
  if(t.mark){b.title='CHAIR: '+t.mark.mark+' ('+t.mark.object+')'; t.mark_object=t.mark.object; t.mark=t.mark.mark;}
  b.textContent=t.text; b.dataset.i=i; b.addEventListener('click',()=>{S.token=i;render();}); toks.appendChild(b);});
const ks=document.getElementById('kind');
for(const k of D.kinds){const o=document.createElement('option'); o.value=k.name; o.textContent=k.label; ks.appendChild(o);}
ks.addEventListener('change',()=>{S.kind=ks.value;render();});
const lo=document.getElementById('lo'), hi=document.getElementById('hi');
for(let l=0;l<D.num_layers;l++){for(const s of [lo,hi]){const o=document.createElement('option'); o.value=l; o.textContent=l; s.appendChild(o);}}
lo.value=S.lo; hi.value=S.hi;
function setLayers(a,b){a=Math.max(0,Math.min(D.num_layers-1,a)); b=Math.max(0,Math.min(D.num_layers-1,b));
  if(a>b){const t=a;a=b;b=t;} S.lo=a; S.hi=b; lo.value=a; hi.value=b;}
lo.addEventListener('change',()=>{setLayers(+lo.value,+hi.value);render();});
hi.addEventListener('change',()=>{setLayers(+lo.value,+hi.value);render();});
document.getElementById('smooth').addEventListener('change',render);
// URL-hash test hook: #token=N&kind=NAME&layers=A-B
const H=new URLSearchParams(location.hash.replace(/^#/,''));
if(H.get('kind')&&D.kinds.some(k=>k.name===H.get('kind'))){S.kind=H.get('kind'); ks.value=S.kind;}
if(H.get('layers')){const m=H.get('layers').split('-').map(Number); if(m.length===2)setLayers(m[0],m[1]);}
render();
const ti=parseInt(H.get('token')||H.get('select')||'',10);
if(!isNaN(ti)&&ti>=0&&ti<D.tokens.length){toks.querySelectorAll('.tok')[ti].click();}
})();
"""


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
        "anyres": "LLaVA-NeXT: the base crop (the whole image resized to one square crop) is shown over the "
                  "processed base crop; the AnyRes tile tokens (unpadded, one newline token per row dropped) over "
                  "the original image.",
        "queries": "BLIP family: the image tokens are Q-Former query tokens, shown as one bar each; the "
                   "patch views push the per-query values back through the Q-Former (cross-attention for "
                   "attention maps, Q-Former relevancy for relevancy) onto the vision encoder's patches.",
        "tokens": "The image tokens could not be mapped to an image grid for this model; one bar per token.",
    }
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(p['title'])}</title><style>{CSS}</style></head>
<body>
<h1>{_esc(p['title'])}</h1>
<div class="meta">model <b>{_esc(p['model'])}</b> ({_esc(p['family'])}) &middot; image {_esc(p['image_path'])}</div>
<div class="meta">question: {_esc(p['question'])}</div>
<div class="meta">answer ({src}): {_esc(p['answer'])}</div>
{extra}{chair_html}
<div class="tokens" id="tokens"></div>
<div class="controls">
<label>map <select id="kind"></select></label>
<label>layers <select id="lo"></select> &ndash; <select id="hi"></select></label>
<label><input type="checkbox" id="smooth" checked> smooth</label>
</div>
<div class="meta" id="info"></div>
<div class="note" id="knote"></div>
<div class="maps" id="maps"></div>
<p class="note">{_esc(notes.get(p.get('geometry'), ''))} Colours are min-max normalised per map (jet: blue low,
red high). Attention: the weights of the position that predicted the token (the generate step that emitted it).</p>
<h2 style="font-size:1.05em">Logit lens (final norm + LM head on each layer's output at this step)</h2>
<table class="lens" id="lens"></table>
<script type="application/json" id="hb-data">{_json_script(p)}</script>
<script>{JS}</script>
</body></html>
"""


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
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title><style>{CSS}
table.idx{{border-collapse:collapse;font-size:.9em}} table.idx td,table.idx th{{border:1px solid #ddd;padding:3px 6px;
vertical-align:top}} .hallucinated{{color:#c00;font-weight:600}} .object{{color:#067d2b}}</style></head>
<body><h1>{_esc(title)}</h1>
<table class="idx"><tr><th>question_id</th><th>image</th><th>question</th><th>answer (CHAIR marks)</th>
<th>hallucinated</th></tr>
{''.join(rows)}
</table></body></html>
"""
