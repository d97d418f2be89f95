"""torchlib.py — what bench/torch_*.py share: PyTorch set up to run as
fmseg does (the same thread count, OMP_WAIT_POLICY=passive so that idle
OpenMP threads do not spin against the other process's), timing (warm-up,
then the median of N), each model's peak RSS, FMSEG_BENCH_QUICK, and the
results file build/bench/torch_<suite>.json that bench/benchlib.lua reads
to print fmseg's time over PyTorch's; with FMSEG_BENCH_ONNX, each model
exported for ONNX Runtime too (bench/ort_bench.js).

    from torchlib import torch, Results
    res = Results("vit")
    res.model("clip-vit-b16 224", lambda: model(x), warmup=2, repeats=10, onnx=(model, [x]))
    res.finish()
"""
import ctypes
import gc
import json
import os
import statistics
import time

# read by libgomp when torch loads it
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import torch  # noqa: E402

THREADS = int(os.environ.get("FMSEG_THREADS") or 0) or os.cpu_count()
torch.set_num_threads(THREADS)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "bench")


def quick():
    """FMSEG_BENCH_QUICK=1: skip the slow models (SD, SAM at 1024)."""
    return os.environ.get("FMSEG_BENCH_QUICK", "") not in ("", "0")


def rss_mb(field="VmHWM"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak():
    """VmHWM back to the current RSS, the heap trimmed first (as benchlib)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def median_ms(fn, warmup=1, repeats=5):
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


class Results:
    """One suite's models, written to build/bench/torch_<suite>.json."""

    def __init__(self, suite):
        self.suite = suite
        self.models = {}
        print(f"torch {torch.__version__} ({suite}), {torch.get_num_threads()} threads, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
              "load average %.2f %.2f %.2f" % os.getloadavg())
        print(f"{'model':<30} {'ms':>10} {'peak MB':>8}")

    def model(self, name, fn, warmup=1, repeats=5, onnx=None):
        """Times fn(); the peak counts what is resident when it starts (the
        model's weights) and what fn allocates. onnx = (module, inputs):
        also exported for ONNX Runtime when FMSEG_BENCH_ONNX names a folder
        (export_onnx)."""
        reset_peak()
        ms = median_ms(fn, warmup, repeats)
        self.models[name] = {"ms": ms, "peak_mb": rss_mb("VmHWM"), "runs": repeats}
        print(f"{name:<30} {ms:10.1f} {self.models[name]['peak_mb']:8.0f}", flush=True)
        if onnx and os.environ.get("FMSEG_BENCH_ONNX"):
            self.export_onnx(name, *onnx, repeats=max(repeats, 1), warmup=warmup)

    def export_onnx(self, name, module, inputs, repeats, warmup):
        """module(*inputs) as <FMSEG_BENCH_ONNX>/<suite>/<name>.onnx (opset
        17, torch.onnx.export), listed in manifest.json beside it with its
        input shapes, for bench/ort_bench.js."""
        out = os.path.join(os.environ["FMSEG_BENCH_ONNX"], self.suite)
        os.makedirs(out, exist_ok=True)
        file = "".join(c if c.isalnum() else "_" for c in name) + ".onnx"
        names = [f"input{i}" for i in range(len(inputs))]
        with torch.no_grad():
            torch.onnx.export(module, tuple(inputs), os.path.join(out, file), opset_version=17,
                              input_names=names, do_constant_folding=True)
        path = os.path.join(out, "manifest.json")
        manifest = json.load(open(path)) if os.path.exists(path) else {}
        manifest[name] = {"file": file, "inputs": [{"name": n, "shape": list(x.shape)} for n, x in zip(names, inputs)],
                          "repeats": repeats, "warmup": warmup}
        with open(path, "w") as f:
            json.dump(manifest, f, indent=1)
        print(f"{'':<30} exported for ONNX Runtime: {file}", flush=True)

    def finish(self):
        os.makedirs(OUT, exist_ok=True)
        path = os.path.join(OUT, f"torch_{self.suite}.json")
        with open(path, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "models": self.models}, f, indent=1)
