"""Pure-numpy re-derivation of bnb create_dynamic_map (bit-exact check vs bitsandbytes 0.50.2)."""
import numpy as np
f32=np.float32; D=np.float64
def linspace_f32(start,end,steps):
    # torch CPU linspace for float32: step=(e-s)/(steps-1) in f32; first half fma(step,i,s), second half e - step*(steps-1-i) fused
    s=f32(start); e=f32(end); step=f32((e-s)/f32(steps-1)); half=steps//2
    return np.array([f32(D(step)*D(i)+D(s)) if i<half else f32(D(e)-D(step)*D(steps-i-1)) for i in range(steps)],f32)
def dyn(signed, mode):
    data=[]
    for i in range(7):
        k = 2**i+1 if signed else 2**(i+1)+1
        b=linspace_f32(0.1,1.0,k)
        means=((b[:-1]+b[1:])/f32(2.0)).astype(f32)
        sc=10.0**(-6+i)
        vals=(means*f32(sc)).astype(f32) if mode=='f32' else (means.astype(D)*sc).astype(f32)
        data+=list(vals)
        if signed: data+=list((means*f32(-sc)).astype(f32) if mode=='f32' else (means.astype(D)*-sc).astype(f32))
    data+=[f32(0),f32(1)]
    return np.sort(np.array(data,f32))
if __name__=="__main__":
    import bitsandbytes.functional as F
    for signed in (True,False):
        ref=F.create_dynamic_map(signed=signed).numpy()
        for mode in ('f32','f64'):
            print("signed" if signed else "unsigned", mode, "match", int((dyn(signed,mode)==ref).sum()),"/256")
