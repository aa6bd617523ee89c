import torch, numpy as np, bitsandbytes.functional as F
f32=np.float32
def build_lut(code):
    c=code.astype(f32)
    mids=(f32(0.5)*(c[:-1]+c[1:])).astype(f32)
    i=np.arange(65536)
    val=(f32(-1.0)+ (f32(2.0)*i.astype(f32))/f32(65535)).astype(f32)
    # code_idx = number of midpoints < val
    lut=np.searchsorted(mids, val, side='left')  # count of mids strictly < val
    return lut.astype(np.uint8), mids
def lut_index(v, fma):
    v=np.clip(v,f32(-1),f32(1)).astype(f32)
    t=((v+f32(1))*f32(0.5)).astype(f32)
    if fma:
        r=(t.astype(np.float64)*65535.0+0.5)  # exact product+add then one rounding to f32
        r=r.astype(f32)
    else:
        r=((t*f32(65535)).astype(f32)+f32(0.5)).astype(f32)
    return r.astype(np.uint16)  # trunc toward zero
def emu_quant(A, code, bs, fma):
    A=A.astype(f32); n=A.size; nb=-(-n//bs)
    lut,_=build_lut(code)
    out=np.zeros(n,np.uint8); am=np.zeros(nb,f32)
    for b in range(nb):
        blk=A[b*bs:(b+1)*bs]; m=np.abs(blk).max(); am[b]=m
        if m==0: out[b*bs:(b+1)*bs]=0; continue
        inv=f32(1)/m
        out[b*bs:(b+1)*bs]=lut[lut_index((blk*inv).astype(f32),fma)]
    return out,am
def exact_nearest(A, code, bs):
    A=torch.tensor(A); n=A.numel()
    q=torch.empty(n,dtype=torch.uint8)
    for b in range(-(-n//bs)):
        blk=A[b*bs:(b+1)*bs]; m=blk.abs().max()
        s=(blk/m).clamp(-1,1)
        q[b*bs:(b+1)*bs]=torch.argmin((s[:,None]-torch.tensor(code)[None]).abs(),dim=1).to(torch.uint8)
    return q.numpy()
def _tests():
    rng=np.random.default_rng(0)
    for signed in (True,False):
        code=F.create_dynamic_map(signed=signed).numpy()
        tests=[]
        x=rng.standard_normal(256*400).astype(f32)
        if not signed: x=x*x
        x[::97]=0.0
        x[5]=np.nan if False else x[5]
        tests.append(("randn"+("" if signed else "^2"),x))
        # values on a fine grid of normalized positions to stress boundaries
        g=np.linspace(-1 if signed else 0,1,256*1000,dtype=f32); g[::256]=1.0
        tests.append(("grid",g))
        # tiny magnitudes relative to absmax
        t=(rng.standard_normal(256*100).astype(f32)*f32(1e-4)); t[::256]=1.0
        if not signed: t=np.abs(t)
        tests.append(("tiny",t))
        for name,x in tests:
            q,am=F.quantize_blockwise(torch.tensor(x),code=torch.tensor(code),blocksize=256)
            q=q.numpy(); am=am.absmax.numpy()
            for fma in (False,True):
                e,eam=emu_quant(x,code,256,fma)
                print(signed,name,"fma" if fma else "nofma","mismatch codes:",int((e!=q).sum()),"absmax eq:",bool((eam==am).all()))
            en=exact_nearest(x,code,256)
            print(signed,name,"vs exact nearest mismatch:",int((en!=q).sum()), "of", x.size)
    # zero handling
    code=F.create_dynamic_map(signed=True)
    x=torch.zeros(512); x[256]=1.0
    q,st=F.quantize_blockwise(x,code=code,blocksize=256)
    print("all-zero block -> codes",q[:3].tolist(),"absmax",st.absmax.tolist(), "zero in nonzero block ->", q[257].item(), "code val", code[int(q[257])].item())
    deq=F.dequantize_blockwise(q,absmax=st.absmax,code=code,blocksize=256)
    print("deq zero in nonzero block", deq[257].item(), "deq zero block", deq[0].item())
    cu=F.create_dynamic_map(signed=False)
    q,st=F.quantize_blockwise(x,code=cu,blocksize=256); print("unsigned: zero in nonzero block ->", q[257].item(), cu[int(q[257])].item())
    # NaN / inf
    x=torch.randn(256); x[3]=float('nan')
    q,st=F.quantize_blockwise(x,code=code,blocksize=256); print("NaN block absmax",st.absmax.tolist(), "code of nan", q[3].item(), "others", q[:6].tolist())
    x=torch.randn(256); x[3]=float('inf')
    q,st=F.quantize_blockwise(x,code=code,blocksize=256); print("inf block absmax",st.absmax.tolist(), q[:6].tolist())
if __name__=="__main__":
    _tests()
