"""tests/fixtures/refer/refcoco/: a tiny dataset in the original refer
layout (lichengunc/refer: instances.json and refs(unc).p, pickled by
Python as the originals are) for tests/lua/test_referring.lua, which
paints the images itself. Its refs: two sentences about a red square on
image 1 (split val), one about a green one on image 2 (val, its polygon
with two points only: refused), one whose image is not in instances.json
(val: refused), one of split testA.

    /usr/bin/python3 tests/tools/make_refer_fixtures.py
"""
import json
import os
import pickle

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures", "refer", "refcoco"))


def main():
    images = [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 24, "width": 32},
              {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 24, "width": 32}]
    anns = [{"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": [[4.0, 4.0, 14.0, 4.0, 14.0, 12.0, 4.0, 12.0]]},
            {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": [[20.0, 2.0, 30.0, 2.0, 30.0, 10.0, 20.0, 10.0], [20.0, 14.0, 26.0, 14.0, 26.0, 20.0]]},
            {"id": 21, "image_id": 2, "category_id": 2, "iscrowd": 0, "segmentation": [[3.0, 3.0, 9.0, 9.0]]}]
    refs = [
        {"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "val", "category_id": 1, "sent_ids": [100, 101],
         "file_name": "COCO_train2014_000000000001_11.jpg",
         "sentences": [{"sent_id": 100, "sent": "red square", "raw": "Red square.", "tokens": ["red", "square"]},
                       {"sent_id": 101, "sent": "the red one", "raw": "the red one", "tokens": ["the", "red", "one"]}]},
        {"ref_id": 1, "ann_id": 12, "image_id": 1, "split": "val", "category_id": 1, "sent_ids": [102],
         "file_name": "COCO_train2014_000000000001_12.jpg",
         "sentences": [{"sent_id": 102, "sent": "blue shapes", "raw": "blue shapes", "tokens": ["blue", "shapes"]}]},
        {"ref_id": 2, "ann_id": 21, "image_id": 2, "split": "val", "category_id": 2, "sent_ids": [103],
         "file_name": "COCO_train2014_000000000002_21.jpg",
         "sentences": [{"sent_id": 103, "sent": "green thing", "raw": "green thing", "tokens": ["green"]}]},
        {"ref_id": 3, "ann_id": 31, "image_id": 99, "split": "val", "category_id": 2, "sent_ids": [104],
         "file_name": "COCO_train2014_000000000099_31.jpg",
         "sentences": [{"sent_id": 104, "sent": "red dog", "raw": "red dog", "tokens": ["red", "dog"]}]},
        {"ref_id": 4, "ann_id": 11, "image_id": 1, "split": "testA", "category_id": 1, "sent_ids": [105],
         "file_name": "COCO_train2014_000000000001_11.jpg",
         "sentences": [{"sent_id": 105, "sent": "red", "raw": "red", "tokens": ["red"]}]},
    ]
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "instances.json"), "w") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]}, f, indent=1)
    with open(os.path.join(OUT, "refs(unc).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
