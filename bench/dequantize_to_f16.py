#!/usr/bin/env python3
"""Write an F16 copy of a GGUF model (every 2-D tensor dequantised to F16, norms F32) with the
`gguf` package, as a full-precision source for checking `edgelora quantize` from F16 against
llama.cpp: `python bench/dequantize_to_f16.py models/SmolLM2-135M-Instruct.Q4_1.gguf
/tmp/smollm2-f16.gguf && python bench/quantize_vs_llamacpp.py --src /tmp/smollm2-f16.gguf
--types Q4_K_M Q5_K_M Q6_K Q8_0 Q5_0`."""


import sys, numpy as np, gguf
src, dst = sys.argv[1], sys.argv[2]
r = gguf.GGUFReader(src)
arch = r.fields["general.architecture"]
w = gguf.GGUFWriter(dst, arch=bytes(arch.parts[arch.data[0]]).decode())
for f in r.fields.values():
    if f.name.startswith("GGUF.") or f.name == "general.architecture": continue
    t = f.types[0]
    if t == gguf.GGUFValueType.ARRAY:
        sub = f.types[1]
        if sub == gguf.GGUFValueType.STRING:
            vals = [bytes(f.parts[i]).decode("utf-8", "surrogateescape") for i in f.data]
        else:
            vals = [f.parts[i][0].item() for i in f.data]
        w.add_key_value(f.name, vals, t, sub_type=sub)
    elif t == gguf.GGUFValueType.STRING:
        w.add_key_value(f.name, bytes(f.parts[f.data[0]]).decode("utf-8", "surrogateescape"), t)
    else:
        v = f.parts[f.data[0]][0].item()
        if f.name == "general.file_type": v = 1
        w.add_key_value(f.name, v, t)
for t in r.tensors:
    a = gguf.quants.dequantize(t.data, t.tensor_type)
    a = a.reshape([int(x) for x in reversed(t.shape)])
    if t.tensor_type in (gguf.GGMLQuantizationType.F32,) or len(t.shape) == 1:
        w.add_tensor(t.name, a.astype(np.float32))
    else:
        w.add_tensor(t.name, a.astype(np.float16))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
