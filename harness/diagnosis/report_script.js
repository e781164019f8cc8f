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
