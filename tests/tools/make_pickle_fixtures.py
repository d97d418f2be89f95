"""tests/fixtures/pickle/: Python pickles of plain data, each protocol 0 to
5, beside the same value as JSON, for fmseg.io.pickle (tests/lua/
test_pickle.lua): a refs(unc).p-like list of referring expressions (dicts
of ints, floats, strings with non-ASCII and escapes, lists, tuples, None,
booleans, a shared sub-object that the pickler memoises) and scalars at
the edges of each integer opcode.

    /usr/bin/python3 tests/tools/make_pickle_fixtures.py
"""
import json
import os
import pickle

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures", "pickle"))

shared = {"tokens": ["the", "man", "left"], "raw": "the man, left"}
VALUE = {
    "refs": [
        {"ref_id": 0, "ann_id": 1706357, "image_id": 581857, "split": "testA", "category_id": 1,
         "file_name": "COCO_train2014_000000581857_1706357.jpg", "sent_ids": [0, 1],
         "sentences": [{"sent_id": 0, "sent": "the lady with the blue shirt", "tokens": ["the", "lady"],
                        "raw": "THE LADY with the blue shirt"},
                       {"sent_id": 1, "sent": "caf\u00e9 \u2014 \u65e5\u672c \\ 'quoted' \"double\"\n",
                        "tokens": shared["tokens"], "raw": shared["raw"]}]},
        {"ref_id": 1, "ann_id": 2, "image_id": 3, "split": "val", "category_id": 90, "sent_ids": [2],
         "sentences": [shared, shared], "box": (1.5, -2.25, 1e300, 0.1)},
    ],
    "ints": [0, 1, 255, 256, 65535, 65536, -1, -256, 2 ** 31 - 1, -2 ** 31, 2 ** 40, -2 ** 40, 2 ** 53],
    "flags": [True, False, None],
    "empty": {"list": [], "dict": {}, "tuple": ()},
}


def jsonable(v):
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def main():
    os.makedirs(OUT, exist_ok=True)
    for proto in range(0, 6):
        with open(os.path.join(OUT, f"refs_p{proto}.pkl"), "wb") as f:
            pickle.dump(VALUE, f, protocol=proto)
    with open(os.path.join(OUT, "refs.json"), "w") as f:
        json.dump(jsonable(VALUE), f, indent=1, sort_keys=True, ensure_ascii=False)
    # a Python 2 str (bytes) pickle: protocol 2 with SHORT_BINSTRING, as cPickle wrote refs(unc).p
    with open(os.path.join(OUT, "py2_str_p2.pkl"), "wb") as f:
        f.write(b"\x80\x02]q\x00(}q\x01(U\x05splitq\x02U\x04testq\x03U\x06ref_idq\x04K\x07ue.")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
