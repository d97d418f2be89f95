-- blas_core.lua — the OpenBLAS kernel family `make bench` runs everything
-- with: the one the CPU can run when OpenBLAS fell back to pre-AVX2
-- kernels on a newer CPU (fm_blas_core_upgrade, what FMSEG_BLAS_UPGRADE=1
-- asks for), else OpenBLAS's own pick. The C benchmarks, ./fmseg and
-- PyTorch (which loads Debian's OpenBLAS too) all get it, so that all run
-- alike.
local core = require("fmseg.core")
local better = core.C.fm_blas_core_upgrade()
print(core.ffi.string(better ~= nil and better or core.C.fm_blas_core()))
