import math, torch, numpy as np, bitsandbytes as bnb, bitsandbytes.functional as F
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_quant import emu_quant
f32=np.float32
def fma(a,b,c):  # a*b+c single rounding
    return (a.astype(np.float64)*np.float64(b) if np.isscalar(b) else a.astype(np.float64)*b.astype(np.float64)) + c.astype(np.float64)
def emu_step(p,g,s1,s2,am1,am2,q1,q2,step,lr,b1,b2,eps,wd,variant):
    m=(q1[s1]*am1.repeat(256)[:p.size]).astype(f32)
    v=(q2[s2]*am2.repeat(256)[:p.size]).astype(f32)
    g=g.astype(f32)
    a1=f32(1.0-b1); a2=f32(1.0-b2)
    mb=(m*f32(b1)).astype(f32)
    if variant['fma_add']: m=fma(g,a1,mb).astype(f32)
    else: m=(mb+(a1*g).astype(f32)).astype(f32)
    vb=(v*f32(b2)).astype(f32)
    t=((a2*g).astype(f32)*g).astype(f32) if not variant['fma_cmul'] else None
    if variant['fma_cmul']: v=fma((a2*g).astype(f32),g,vb).astype(f32)
    else: v=(vb+t).astype(f32)
    c1=1.0-b1**step; c2=math.sqrt(1.0-b2**step)
    denom=((np.sqrt(v).astype(f32)/f32(c2)).astype(f32)+f32(eps)).astype(f32)
    if wd>0: p=(p*f32(1.0-lr*wd)).astype(f32)
    val=f32(-lr/c1)
    if variant['cdiv']=='sm_then_div': upd=((val*m).astype(f32)/denom).astype(f32)
    elif variant['cdiv']=='fma_divfirst': upd=None; p=fma((m/denom).astype(f32),val,p).astype(f32)
    else: upd=(val*(m/denom).astype(f32)).astype(f32)
    if upd is not None: p=(p+upd).astype(f32)
    ns1,nam1=emu_quant(m,q1,256,False); ns2,nam2=emu_quant(v,q2,256,False)
    return p,ns1,ns2,nam1,nam2,m,v
if __name__=='__main__':
    for n in (8192, 8192+100, 4096, 100003):
      for variant in ({'fma_add':True,'fma_cmul':True,'cdiv':'sm_then_div'},{'fma_add':True,'fma_cmul':True,'cdiv':'fma_divfirst'},{'fma_add':False,'fma_cmul':False,'cdiv':'div_first'}):
        torch.manual_seed(0)
        P=torch.nn.Parameter(torch.randn(n)); lr,b1,b2,eps,wd=1e-3,0.9,0.999,1e-8,0.01
        opt=bnb.optim.AdamW8bit([P],lr=lr,betas=(b1,b2),eps=eps,weight_decay=wd)
        p=P.detach().numpy().copy(); st=None
        q1=F.create_dynamic_map(True).numpy(); q2=F.create_dynamic_map(False).numpy()
        s1=np.zeros(n,np.uint8); s2=np.zeros(n,np.uint8); nb=-(-n//256); am1=np.zeros(nb,f32); am2=np.zeros(nb,f32)
        res=[]
        for step in range(1,6):
            g=torch.randn(n); P.grad=g.clone(); opt.step()
            p,s1,s2,am1,am2,_,_=emu_step(p,g.numpy(),s1,s2,am1,am2,q1,q2,step,lr,b1,b2,eps,wd,variant)
            S=opt.state[P]
            res.append((int((P.detach().numpy()!=p).sum()), float(np.abs(P.detach().numpy()-p).max()), int((S['state1'].numpy()!=s1).sum()), int((S['state2'].numpy()!=s2).sum()), int((S['absmax1'].numpy()!=am1).sum()), int((S['absmax2'].numpy()!=am2).sum())))
            # resync to actual to isolate per-step differences
            p=P.detach().numpy().copy(); s1=S['state1'].numpy().copy(); s2=S['state2'].numpy().copy(); am1=S['absmax1'].numpy().copy(); am2=S['absmax2'].numpy().copy()
        print(n, variant, "per step (p_mismatch, p_maxabsdiff, s1_mm, s2_mm, am1_mm, am2_mm):", res)
    