#!/usr/bin/env python3
"""Generate lua/fmseg/text/unicode_data.lua and lua/fmseg/text/html_entities.lua.

The CLIP tokenizer (lua/fmseg/text/tokenizer.lua) reproduces openai/CLIP's
simple_tokenizer.py, which leans on Python: ftfy.fix_text, html.unescape,
str.lower, str.strip, unicodedata NFC, and the `regex` module's \\p{L}, \\p{N}
and \\s. This script dumps exactly those tables so fmseg needs no Python at
run time. Run it from the repository root and commit its output:

    python3 tests/tools/gen_unicode.py

Character classes come from the `regex` module (the one simple_tokenizer.py
imports) when installed, else from unicodedata categories. The ftfy tables
(ligatures, width map, control characters, quotes) follow ftfy 6.3's
chardata.py, which builds them the same way from unicodedata.
"""
import html
import html.entities
import os
import sys
import unicodedata

try:
    import regex
except ImportError:
    regex = None

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MAXCP = 0x110000


def chars():
    for cp in range(MAXCP):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        yield cp


def ranges_of(pred):
    """Sorted [first, last] ranges of the code points where pred holds."""
    out = []
    for cp in chars():
        if pred(cp):
            if out and out[-1][1] == cp - 1:
                out[-1][1] = cp
            else:
                out.append([cp, cp])
    return out


def regex_class(pattern):
    """Ranges matched by a one-character regex class, found in one pass."""
    cps = list(chars())
    text = "".join(map(chr, cps))
    rx = regex.compile(pattern + "+", regex.IGNORECASE)
    out = []
    for m in rx.finditer(text):
        a, b = m.span()
        # the surrogate gap splits runs: rebuild ranges from code points
        for cp in cps[a:b]:
            if out and out[-1][1] == cp - 1:
                out[-1][1] = cp
            else:
                out.append([cp, cp])
    return out


def classes():
    if regex is not None:
        letters = regex_class(r"[\p{L}]")
        numbers = regex_class(r"[\p{N}]")
        spaces = regex_class(r"\s")
        # Under IGNORECASE a few characters (U+0345, whose case partners are
        # letters) match neither [\p{L}] nor [^\s\p{L}\p{N}]: the
        # pre-tokeniser skips them like spaces.
        others = regex_class(r"[^\s\p{L}\p{N}]")
        covered = set()
        for a, b in letters + numbers + spaces + others:
            covered.update(range(a, b + 1))
        skipped = ranges_of(lambda c: c not in covered)
        source = "regex %s" % regex.__version__
    else:
        cat = unicodedata.category
        letters = ranges_of(lambda c: cat(chr(c))[0] == "L")
        numbers = ranges_of(lambda c: cat(chr(c))[0] == "N")
        white = set([9, 10, 11, 12, 13, 32, 0x85, 0xA0, 0x1680, 0x2028, 0x2029,
                     0x202F, 0x205F, 0x3000] + list(range(0x2000, 0x200B)))
        spaces = ranges_of(lambda c: c in white)
        skipped = []
        source = "unicodedata categories (regex not installed)"
    triples = [(a, b, 1) for a, b in letters] + [(a, b, 2) for a, b in numbers] \
        + [(a, b, 3) for a, b in spaces] + [(a, b, 4) for a, b in skipped]
    triples.sort()
    for (a0, b0, _), (a1, _, _) in zip(triples, triples[1:]):
        assert b0 < a1, "classes overlap at U+%04X" % a1
    return triples, source


def lower_runs():
    """str.lower as runs (first, last, step, delta) plus multi-char cases."""
    single, multi = [], {}
    for cp in chars():
        low = chr(cp).lower()
        if low == chr(cp):
            continue
        if len(low) == 1:
            single.append((cp, ord(low) - cp))
        else:
            multi[cp] = [ord(c) for c in low]
    runs = []
    for cp, delta in single:
        if runs:
            first, last, step, d = runs[-1]
            if d == delta and ((step == 0 and cp - last in (1, 2)) or cp - last == step):
                runs[-1] = (first, cp, cp - last, d)
                continue
        runs.append((cp, cp, 0, delta))
    return [(f, l, s or 1, d) for f, l, s, d in runs], multi


def sigma_context():
    """Python's lower() turns U+03A3 into final sigma after a cased letter,
    skipping case-ignorable ones. Probe lower() itself for both properties:
    c + S lowers to final sigma iff c is cased and not ignorable; A + c + S
    iff c is ignorable or cased."""
    cased, ignorable = set(), set()
    for cp in chars():
        c = chr(cp)
        t1 = (c + "\u03a3").lower()[-1] == "\u03c2"
        t2 = ("A" + c + "\u03a3").lower()[-1] == "\u03c2"
        if t1:
            cased.add(cp)
        elif t2:
            ignorable.add(cp)
    return ranges_of(lambda c: c in cased), ranges_of(lambda c: c in ignorable)


def nfc_tables():
    decomp, ccc, excluded = [], [], []
    for cp in chars():
        c = chr(cp)
        d = unicodedata.decomposition(c)
        if d and not d.startswith("<"):
            parts = [int(x, 16) for x in d.split()]
            assert len(parts) in (1, 2)
            decomp.append((cp, parts[0], parts[1] if len(parts) == 2 else 0))
            if len(parts) == 2 and unicodedata.normalize("NFC", c) != c:
                excluded.append(cp)
    run = None
    for cp in chars():
        v = unicodedata.combining(chr(cp))
        if v and run and run[1] == cp - 1 and run[2] == v:
            run[1] = cp
        elif v:
            run = [cp, cp, v]
            ccc.append(run)
    return decomp, ccc, excluded


def ftfy_tables():
    # ftfy/chardata.py 6.3: LIGATURES, WIDTH_MAP, CONTROL_CHARS, quotes
    ligatures = {ord(k): v for k, v in {
        "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz",
        "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž", "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj",
        "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj", "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl",
        "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st"}.items()}
    width = {0x3000: " "}
    for cp in range(0xFF01, 0xFFF0):
        alt = unicodedata.normalize("NFKC", chr(cp))
        if alt != chr(cp):
            width[cp] = alt
    control = list(range(0x00, 0x09)) + [0x0B] + list(range(0x0E, 0x20)) + [0x7F] \
        + list(range(0x206A, 0x2070)) + [0xFEFF] + list(range(0xFFF9, 0xFFFD))
    cp1252 = {}
    for b in range(0x80, 0xA0):
        try:
            cp1252[b] = ord(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            cp1252[b] = b  # "sloppy": undefined bytes stay as they are
    return ligatures, width, control, cp1252


def lua_str(s):
    out = []
    for ch in s.encode("utf-8"):
        if ch in (0x22, 0x5C) or ch < 0x20 or ch == 0x7F:
            out.append("\\%d" % ch)
        else:
            out.append(chr(ch))
    return '"' + "".join(out).encode("latin-1").decode("utf-8") + '"'


def flat(rows, per_line=8):
    items = [",".join("0x%X" % v if v > 9 else str(v) for v in row) for row in rows]
    lines = []
    for i in range(0, len(items), per_line):
        lines.append("    " + ", ".join(items[i:i + per_line]) + ",")
    return "\n".join(lines)


def cp_map(d):
    rows = []
    for k in sorted(d):
        v = d[k]
        cps = [ord(c) for c in v] if isinstance(v, str) else v
        rows.append("[0x%X]={%s}" % (k, ",".join("0x%X" % c for c in cps)))
    return "\n".join("    " + ", ".join(rows[i:i + 6]) + "," for i in range(0, len(rows), 6))


def write_unicode_data(path):
    cls, source = classes()
    runs, multi = lower_runs()
    cased, ignorable = sigma_context()
    decomp, ccc, excluded = nfc_tables()
    ligatures, width, control, cp1252 = ftfy_tables()
    isspace = ranges_of(lambda c: chr(c).isspace())
    with open(path, "w", encoding="utf-8") as f:
        w = f.write
        w("-- GENERATED by tests/tools/gen_unicode.py; do not edit. Regenerate with\n")
        w("--   python3 tests/tools/gen_unicode.py\n")
        w("-- Sources: Python %s unicodedata (Unicode %s); classes from %s.\n"
          % (sys.version.split()[0], unicodedata.unidata_version, source))
        w("-- Ranges are flat lists, sorted by first code point.\n")
        w("return {\n")
        w('  unicode_version = "%s",\n' % unicodedata.unidata_version)
        w("  -- pre-tokeniser classes {first, last, class}: 1 \\p{L}, 2 \\p{N}, 3 \\s,\n")
        w("  -- 4 matched by no alternative under IGNORECASE (skipped); others 0\n")
        w("  classes = {\n%s\n  },\n" % flat(cls))
        w("  -- str.isspace() {first, last} (what str.strip() removes)\n")
        w("  isspace = {\n%s\n  },\n" % flat(isspace))
        w("  -- str.lower() runs {first, last, step, delta}: cp -> cp + delta\n")
        w("  lower_runs = {\n%s\n  },\n" % flat(runs, 6))
        w("  -- str.lower() results longer than one code point\n")
        w("  lower_multi = {\n%s\n  },\n" % cp_map(multi))
        w("  -- final sigma context of str.lower(): cased (and not case-ignorable),\n")
        w("  -- case-ignorable; {first, last}\n")
        w("  cased = {\n%s\n  },\n" % flat(cased))
        w("  case_ignorable = {\n%s\n  },\n" % flat(ignorable))
        w("  -- NFC: canonical decompositions {cp, first, second or 0},\n")
        w("  -- canonical combining classes {first, last, ccc},\n")
        w("  -- pairs that never recompose (composition exclusions)\n")
        w("  decomp = {\n%s\n  },\n" % flat(decomp))
        w("  ccc = {\n%s\n  },\n" % flat(ccc))
        w("  comp_exclusions = {\n%s\n  },\n" % flat([[c] for c in excluded], 12))
        w("  -- ftfy 6.3 fixes: fix_latin_ligatures, fix_character_width,\n")
        w("  -- remove_control_chars, fix_c1_controls (sloppy windows-1252)\n")
        w("  ligatures = {\n%s\n  },\n" % cp_map(ligatures))
        w("  width = {\n%s\n  },\n" % cp_map(width))
        w("  control = {\n%s\n  },\n" % flat([[c] for c in control], 12))
        w("  cp1252 = {\n%s\n  },\n" % cp_map({k: [v] for k, v in cp1252.items()}))
        w("}\n")


def write_html_entities(path):
    html5 = html.entities.html5
    upper = {}
    for name, char in html5.items():
        if name.endswith(";") and name == name.lower():
            up = "&" + name.upper()
            if html.unescape(up) == up:
                upper[name.upper()] = char.upper()
    invalid_refs = html._invalid_charrefs
    invalid_cps = sorted(html._invalid_codepoints)
    rng = []
    for cp in invalid_cps:
        if rng and rng[-1][1] == cp - 1:
            rng[-1][1] = cp
        else:
            rng.append([cp, cp])
    with open(path, "w", encoding="utf-8") as f:
        w = f.write
        w("-- GENERATED by tests/tools/gen_unicode.py; do not edit.\n")
        w("-- Python %s html.entities.html5 and html.unescape's tables, plus the\n"
          % sys.version.split()[0])
        w("-- upper-cased names ftfy 6.3 also decodes (chardata._build_html_entities).\n")
        w("return {\n")
        w("  -- name (with or without ';') -> text\n  html5 = {\n")
        for name in sorted(html5):
            w("    [%s]=%s,\n" % (lua_str(name), lua_str(html5[name])))
        w("  },\n  -- ftfy only: upper-cased name with ';' -> text\n  ftfy_upper = {\n")
        for name in sorted(upper):
            w("    [%s]=%s,\n" % (lua_str(name), lua_str(upper[name])))
        w("  },\n  -- numeric references replaced by html.unescape\n  invalid_charrefs = {\n")
        for cp in sorted(invalid_refs):
            w("    [0x%X]=%s,\n" % (cp, lua_str(invalid_refs[cp])))
        w("  },\n  -- numeric references html.unescape drops {first, last}\n")
        w("  invalid_codepoints = {\n%s\n  },\n" % flat(rng))
        w("}\n")


if __name__ == "__main__":
    out = os.path.join(ROOT, "lua", "fmseg")
    write_unicode_data(os.path.join(out, "unicode_data.lua"))
    write_html_entities(os.path.join(out, "html_entities.lua"))
    print("wrote", os.path.join(out, "unicode_data.lua"), os.path.join(out, "html_entities.lua"))
