-- blas_core.lua — the OpenBLAS kernel family ./fmseg runs with (its own
-- pick, or the one fmseg asks for when OpenBLAS falls back to pre-AVX2
-- kernels on a newer CPU): `make bench` gives the C benchmarks and PyTorch
-- (which loads Debian's OpenBLAS too) the same, so that all run alike.
local core = require("fmseg.core")
print(core.ffi.string(core.C.fm_blas_core()))
