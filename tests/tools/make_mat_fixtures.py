#!/usr/bin/python3
"""MAT-file fixtures for fmseg.io.mat (tests/lua/test_mat.lua).

Writes tiny level-5 MAT-files into tests/fixtures/mat/ with scipy.io.savemat
(Debian's scipy 1.10) and, for each, what scipy.io.loadmat reads back from
it, which is the reference:

  sbd_inst.mat    SBD's inst/<id>.mat: GTinst, a 1x1 struct of Segmentation
                  (uint8 HxW), Boundaries (Kx1 cell of sparse logical HxW)
                  and Categories (double Kx1); compressed, as SBD's are
  sbd_cls.mat     SBD's cls/<id>.mat: GTcls with Segmentation, Boundaries
                  (20x1 cell, most of them empty sparse matrices) and
                  CategoriesPresent; compressed
  sbd_plain.mat   sbd_inst.mat's variable uncompressed (the test corrupts
                  its tags, listed in the manifest)
  sbd_matlab.mat  sbd_inst.mat as MATLAB writes it: doubles of small
                  integers stored as miUINT8, small elements, compressed
  numeric.mat     every numeric class with its edge values, logical, char,
                  scalars, vectors; uncompressed
  shapes.mat      3-D and 4-D arrays, empty matrices, cells and structs of
                  every shape, nesting; compressed
  numeric_be.mat, shapes_be.mat, sbd_inst_be.mat
                  the same, big-endian
  refused.mat     values fmseg tensors cannot hold (int32 overflow,
                  complex) beside one that they can

scipy writes only its machine's byte order and does not narrow types as
MATLAB does, so the big-endian files and sbd_matlab.mat are rewritten from
scipy's output here, element by element (`rewrite`); every file written,
rewritten or not, is read back with scipy.io.loadmat and must give the same
values as its source, so the rewriting is checked by scipy.

For each FILE.mat written by savemat, FILE.ref.safetensors holds every
matrix as loadmat returns it (mat_dtype=True: the MATLAB class's type),
converted as fmseg converts (uint8 and logical: U8; single, double: F32
through numpy's astype; other integers: I32), named by its path for
mat.read ("GTinst.Boundaries[2]"); a rewritten file reads as its source
and shares its reference. manifest.json holds each file's tree (structs,
cells, strings, tensors with their dtype and MATLAB class, refused
values), its reference, and sbd_plain.mat's tag offsets.

    /usr/bin/python3 tests/tools/make_mat_fixtures.py
"""
import json
import os
import struct
import warnings
import zlib

import numpy as np
import scipy.io
import scipy.sparse

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "mat")
RNG = np.random.RandomState(5)

MI_MATRIX, MI_COMPRESSED, MI_UINT8, MI_DOUBLE = 14, 15, 2, 9
MI_SIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
MX_DOUBLE = 6


# ---- the variables ---------------------------------------------------------------

def sparse_logical(mask):
    return scipy.sparse.csc_matrix(mask.astype(bool))


def sbd_like(h, w, k, present):
    """A label map of k regions, their boundaries, their classes."""
    seg = np.zeros((h, w), np.uint8)
    bounds = np.empty((k, 1), dtype=object)
    for i in range(k):
        r0, c0 = RNG.randint(0, h - 3), RNG.randint(0, w - 3)
        seg[r0:r0 + 3, c0:c0 + RNG.randint(2, 4)] = i + 1
    for i in range(k):
        m = seg == i + 1
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        bounds[i, 0] = sparse_logical(edge if i in present else np.zeros_like(m))
    return seg, bounds


def gtinst():
    seg, bounds = sbd_like(9, 7, 3, present={0, 1, 2})
    rec = np.empty((1, 1), dtype=[("Segmentation", object), ("Boundaries", object), ("Categories", object)])
    rec[0, 0] = (seg, bounds, np.array([[15.0], [15.0], [9.0]]))
    return {"GTinst": rec}


def gtcls():
    seg, bounds = sbd_like(8, 11, 20, present={3, 14})
    seg[seg == 4] = 4
    seg[seg == 15] = 15
    seg[(seg != 4) & (seg != 15)] = 0
    rec = np.empty((1, 1), dtype=[("Segmentation", object), ("Boundaries", object),
                                  ("CategoriesPresent", object)])
    rec[0, 0] = (seg, bounds, np.array([[4.0], [15.0]]))
    return {"GTcls": rec}


def numeric():
    i32 = np.iinfo(np.int32)
    return {
        "d": np.array([[0.5, -1.25, 1e300, -0.0], [np.nan, np.inf, -np.inf, 16777217.0],
                       [1 / 3, 2.0 ** -140, 3.4028235e38, 123456789.0]]),
        "s": np.array([[1.5, -2.0, np.float32(1) / 3]], dtype=np.float32),
        "i8": np.array([[-128, 127, 0, -1]], dtype=np.int8),
        "u8": np.arange(0, 256, 17, dtype=np.uint8).reshape(4, 4),
        "i16": np.array([[-32768], [32767], [5]], dtype=np.int16),
        "u16": np.array([[0, 65535, 1000]], dtype=np.uint16),
        "i32": np.array([[i32.min, i32.max], [-7, 7]], dtype=np.int32),
        "u32": np.array([[0, i32.max]], dtype=np.uint32),
        "i64": np.array([[i32.min, i32.max, -3]], dtype=np.int64),
        "u64": np.array([[0, i32.max]], dtype=np.uint64),
        "b": np.array([[True, False, True], [False, False, True]]),
        "scalar": 7.0,
        "row": np.arange(5, dtype=np.float64),
        "col": np.arange(4, dtype=np.int16).reshape(4, 1),
        "text": "hello, na\u00efve world",
        "rows": np.array(["ab", "cd", "ef"]),
        "sp": scipy.sparse.csc_matrix(np.array([[0, 2.5, 0], [1.0, 0, 0], [0, 0, -3.0], [0, 7.0, 0]])),
        "sp_empty": scipy.sparse.csc_matrix((3, 2), dtype=np.float64),
    }


def shapes():
    s2 = np.empty((1, 2), dtype=[("name", object), ("value", object)])
    s2[0, 0] = ("first", np.array([[1.0, 2.0]]))
    s2[0, 1] = ("second", np.zeros((0, 0)))
    s21 = np.empty((2, 1), dtype=[("a", object)])
    s21[0, 0] = (np.uint8(3),)
    s21[1, 0] = (np.array([[1, 2]], dtype=np.int32),)
    inner = np.empty((1, 1), dtype=[("x", object), ("y", object)])
    inner[0, 0] = (np.arange(6, dtype=np.float32).reshape(2, 3), "why")
    outer = np.empty((1, 1), dtype=[("inner", object), ("list", object)])
    nested = np.empty((1, 3), dtype=object)
    nested[0, 0] = np.array([[1.0]])
    deeper = np.empty((2, 1), dtype=object)
    deeper[0, 0] = np.array([[True]])
    deeper[1, 0] = "leaf"
    nested[0, 1] = deeper
    nested[0, 2] = inner
    outer[0, 0] = (inner, nested)
    cell23 = np.empty((2, 3), dtype=object)
    for i in range(2):
        for j in range(3):
            cell23[i, j] = np.full((1, i + 1), 10 * i + j, dtype=np.int8)
    return {
        "cube": RNG.randn(2, 3, 4),
        "quad": np.arange(12, dtype=np.int16).reshape(2, 1, 3, 2),
        "bytes3": RNG.randint(0, 256, (3, 4, 2)).astype(np.uint8),
        "empty": np.zeros((0, 0)),
        "empty_u8": np.zeros((0, 3), dtype=np.uint8),
        "empty_3d": np.zeros((2, 0, 3), dtype=np.float32),
        "empty_cell": np.empty((0, 0), dtype=object),
        "empty_text": "",
        "empty_struct": np.empty((0, 0), dtype=[("f", object)]),
        "no_fields": {},
        "s2": s2,
        "s21": s21,
        "outer": outer,
        "cell23": cell23,
    }


def refused():
    return {
        "big_u32": np.array([[1, 4000000000]], dtype=np.uint32),
        "big_i64": np.array([[-(2 ** 40)]], dtype=np.int64),
        "big_u64": np.array([[2 ** 63 + 5]], dtype=np.uint64),
        "z": np.array([[1 + 2j, 3.0]]),
        "fine": np.array([[1, 2]], dtype=np.int64),
    }


# ---- rewriting elements: byte order, MATLAB's narrowing, compression ------------

def tag_at(b, off):
    """(type, nbytes, data offset, small) of the little-endian tag at off."""
    w = struct.unpack_from("<I", b, off)[0]
    if w >> 16:
        return w & 0xFFFF, w >> 16, off + 4, True
    t, n = struct.unpack_from("<II", b, off)
    return t, n, off + 8, False


def emit(t, payload, small, big):
    e = ">" if big else "<"
    if small and len(payload) <= 4:
        return struct.pack(e + "I", len(payload) << 16 | t) + payload + b"\0" * (4 - len(payload))
    return struct.pack(e + "II", t, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def swap_values(t, payload, big):
    size = MI_SIZE[t]
    if not big or size == 1:
        return payload
    return np.frombuffer(payload, dtype="<u%d" % size).astype(">u%d" % size).tobytes()


NARROWED = [0]


def narrowed(t, payload):
    """MATLAB stores a double matrix of integers in 0..255 as miUINT8."""
    if t != MI_DOUBLE:
        return t, payload
    v = np.frombuffer(payload, dtype="<f8")
    if v.size == 0 or not np.all((v == np.round(v)) & (v >= 0) & (v <= 255)):
        return t, payload
    NARROWED[0] += 1
    return MI_UINT8, v.astype(np.uint8).tobytes()


def rewrite_matrix(b, off, end, big, narrow):
    """An miMATRIX's sub-elements (b[off:end], little-endian) rewritten."""
    out, i, mclass = b"", 0, None
    while off < end:
        t, n, data, small = tag_at(b, off)
        payload, next_off = b[data:data + n], data + (4 if small else n + (-n % 8))
        if t == MI_MATRIX:
            payload = rewrite_matrix(b, data, data + n, big, narrow)
        else:
            if i == 0:
                mclass = payload[0]
            if narrow and mclass == MX_DOUBLE and i in (3, 4):
                t, payload = narrowed(t, payload)
                small = len(payload) <= 4
            payload = swap_values(t, payload, big)
        out += emit(t, payload, small, big)
        off = next_off
        i += 1
    return out


def rewrite(src, dst, big=False, narrow=False, compress=None):
    """A little-endian MAT-file rewritten: byte order, narrowing, and each
    variable compressed (True), uncompressed (False) or as it was (None)."""
    b = open(src, "rb").read()
    assert b[126:128] == b"IM"
    e = ">" if big else "<"
    out = b[:116] + b[116:124] + struct.pack(e + "H", 0x0100) + (b"MI" if big else b"IM")
    off = 128
    while off < len(b):
        t, n, data, _ = tag_at(b, off)
        payload = b[data:data + n]
        if t == MI_COMPRESSED:
            inner = zlib.decompress(payload)
            it, inn, idata, _ = tag_at(inner, 0)
            assert it == MI_MATRIX
            var, was = rewrite_matrix(inner, idata, idata + inn, big, narrow), True
        else:
            var, was = rewrite_matrix(b, data, data + n, big, narrow), False
        elem = struct.pack(e + "II", MI_MATRIX, len(var)) + var
        if (was if compress is None else compress):
            z = zlib.compress(elem)
            elem = struct.pack(e + "II", MI_COMPRESSED, len(z)) + z
        out += elem
        off = data + n
    open(dst, "wb").write(out)


def tags(path):
    """Every tag of an uncompressed little-endian file: [offset, small]."""
    b = open(path, "rb").read()
    found = []

    def walk(off, end, top):
        while off < end:
            t, n, data, small = tag_at(b, off)
            found.append([off, 1 if small else 0])
            if t == MI_MATRIX:
                walk(data, data + n, False)
            off = data + (4 if small else n + (0 if top else -n % 8))

    walk(128, len(b), True)
    return found


# ---- the reference: what loadmat reads ----------------------------------------------

# mat_dtype=True casts refused.mat's complex matrix to real, with a warning
warnings.filterwarnings("ignore", category=np.ComplexWarning)


def load(path):
    """loadmat's readings of path: as the reference (mat_dtype=True: each
    matrix in its MATLAB class's type), with char arrays as characters, and
    as stored (mat_dtype=True drops an imaginary part, this keeps it)."""
    return (scipy.io.loadmat(path, mat_dtype=True),
            scipy.io.loadmat(path, mat_dtype=True, chars_as_strings=False),
            scipy.io.loadmat(path))


def same(a, b):
    """Deep equality of two loadmat results (NaN equal to NaN)."""
    if isinstance(a, dict):
        keys = [k for k in a if not k.startswith("__")]
        return sorted(keys) == sorted(k for k in b if not k.startswith("__")) and all(same(a[k], b[k]) for k in keys)
    if a is None or b is None:
        return a is b
    if scipy.sparse.issparse(a):
        return scipy.sparse.issparse(b) and same(a.toarray(), b.toarray())
    if a.dtype.names:
        return a.dtype.names == b.dtype.names and a.shape == b.shape and all(
            same(x[f], y[f]) for x, y in zip(a.flatten("F"), b.flatten("F")) for f in a.dtype.names)
    if a.dtype == object:
        return a.shape == b.shape and all(same(x, y) for x, y in zip(a.flatten("F"), b.flatten("F")))
    # a big-endian file reads as big-endian arrays: the same values
    return (a.dtype.kind, a.dtype.itemsize, a.shape) == (b.dtype.kind, b.dtype.itemsize, b.shape) and \
        np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


FMSEG = {"u1": ("uint8", "U8"), "b1": ("uint8", "U8"), "f4": ("float32", "F32"), "f8": ("float32", "F32")}
CLASS = {"f8": "double", "f4": "single", "b1": "logical", "i1": "int8", "u1": "uint8", "i2": "int16",
         "u2": "uint16", "i4": "int32", "u4": "uint32", "i8": "int64", "u8": "uint64"}


def tensor(arr, stored, key, refs, mclass):
    kind = arr.dtype.kind + str(arr.dtype.itemsize)
    if stored.dtype.kind == "c":
        return {"refused": "complex", "class": "double"}
    dtype, st = FMSEG.get(kind, ("int32", "I32"))
    if st == "I32" and arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
        return {"refused": "int32", "class": mclass or CLASS[kind]}
    with np.errstate(over="ignore"):
        refs[key] = np.ascontiguousarray(arr.astype({"U8": np.uint8, "F32": np.float32, "I32": np.int32}[st]))
    return {"tensor": key, "dtype": dtype, "class": mclass or CLASS[kind], "shape": list(arr.shape)}


def elements(vs):
    """The elements of parallel arrays (the readings of one value), column-major."""
    return list(zip(*(v.flatten("F") for v in vs)))


def tree(vs, key, refs):
    """The manifest's node for one value, given as the three readings of
    `load`; its matrices go into refs under their mat.read paths."""
    v, chars, stored = vs
    if scipy.sparse.issparse(v):
        # MATLAB's sparse matrices are double or logical; scipy reads logical as uint8
        node = tensor(v.toarray(), stored, key, refs, "double" if v.dtype.kind == "f" else "logical")
        return node | {"sparse": True}
    if v.dtype == object and v.size and all(x is None for x in v.flat):
        # scipy reads a struct without fields as an object array of None
        return {"struct": {}, "fields": []} if v.size == 1 else \
            {"structs": [{} for _ in range(v.size)], "fields": [], "shape": list(v.shape)}
    if v.dtype.names is not None:
        fields = list(v.dtype.names)
        # a 1x1 struct reads as the table of its fields (GTinst.Segmentation),
        # an array of them as a list of such tables (s2[2].name)
        keys = [key] if v.size == 1 else element_keys(key, v)
        elems = [{f: tree([x[f] for x in e], "%s.%s" % (k, f), refs) for f in fields}
                 for k, e in zip(keys, elements(vs))]
        if v.size == 1:
            return {"struct": elems[0], "fields": fields}
        return {"structs": elems, "fields": fields, "shape": list(v.shape)}
    if v.dtype == object:
        return {"cell": [tree(e, k, refs) for k, e in zip(element_keys(key, v), elements(vs))],
                "shape": list(v.shape)}
    if v.dtype.kind == "U":
        if chars.ndim == 2 and (chars.shape[0] == 1 or chars.size == 0):
            return {"string": "".join(chars.flatten()), "shape": list(chars.shape)}
        codes = np.vectorize(ord, otypes=[np.int32])(chars)
        return tensor(codes, codes, key, refs, "char")
    return tensor(v, stored, key, refs, None)


def element_keys(key, v):
    return ["%s[%d]" % (key, i + 1) for i in range(v.size)]


def save_safetensors(path, tensors):
    names = sorted(tensors)
    header, data = {}, b""
    for n in names:
        a = tensors[n]
        code = {np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}[a.dtype]
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[n] = {"dtype": code, "shape": list(a.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def reference(name, manifest):
    path = os.path.join(OUT, name)
    readings = load(path)
    plain, refs = readings[0], {}
    manifest["files"][name] = {
        "reference": name.replace(".mat", ".ref.safetensors"),
        "vars": {k: tree([r[k] for r in readings], k, refs) for k in plain if not k.startswith("__")},
    }
    save_safetensors(os.path.join(OUT, manifest["files"][name]["reference"]), refs)
    return plain


def fixed_header(path):
    """savemat's header text holds the time: a fixed one keeps the files
    the same from run to run."""
    with open(path, "r+b") as f:
        f.write(b"MATLAB 5.0 MAT-file, written by scipy.io.savemat for tests/tools/make_mat_fixtures.py"
                .ljust(116))


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith((".mat", ".safetensors", ".json")):
            os.remove(os.path.join(OUT, f))
    p = lambda f: os.path.join(OUT, f)
    manifest = {"generator": "tests/tools/make_mat_fixtures.py", "scipy": scipy.__version__,
                "numpy": np.__version__, "files": {}}
    inst = gtinst()
    sources = {
        "sbd_inst.mat": (inst, True),
        "sbd_cls.mat": (gtcls(), True),
        "sbd_plain.mat": (inst, False),
        "numeric.mat": (numeric(), False),
        "shapes.mat": (shapes(), True),
        "refused.mat": (refused(), False),
    }
    for name, (data, compress) in sources.items():
        scipy.io.savemat(p(name), data, do_compression=compress)
        fixed_header(p(name))
    rewritten = {
        "sbd_matlab.mat": ("sbd_inst.mat", dict(narrow=True, compress=True)),
        "sbd_inst_be.mat": ("sbd_inst.mat", dict(big=True)),
        "numeric_be.mat": ("numeric.mat", dict(big=True)),
        "shapes_be.mat": ("shapes.mat", dict(big=True)),
    }
    for name, (src, how) in rewritten.items():
        rewrite(p(src), p(name), **how)
    loaded = {name: reference(name, manifest) for name in sorted(list(sources) + list(rewritten))}
    for name, (src, _) in rewritten.items():
        assert same(loaded[name], loaded[src]), name + " does not read back as " + src
        # so one reference serves both
        files = manifest["files"]
        assert files[name]["vars"] == files[src]["vars"]
        os.remove(p(files[name]["reference"]))
        files[name]["reference"] = files[src]["reference"]
    assert NARROWED[0] > 0, "sbd_matlab.mat: nothing narrowed"
    manifest["tags"] = {"sbd_plain.mat": tags(p("sbd_plain.mat"))}
    with open(p("manifest.json"), "w") as f:
        json.dump(manifest, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    total = sum(os.path.getsize(p(f)) for f in os.listdir(OUT))
    print("wrote %d files (%d bytes) to %s" % (len(os.listdir(OUT)), total, OUT))


if __name__ == "__main__":
    main()
