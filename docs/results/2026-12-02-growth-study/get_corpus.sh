#!/usr/bin/env bash
# The second corpus of #13: natural-language English from Debian's dict-gcide, the Collaborative
# International Dictionary of English (Webster's 1913 with later additions: definitions, etymologies
# and literary quotations). Writes DEST (default runs/prose/gcide) as 400 files of consecutive
# entries, named in a scrambled order: the text source streams files in name order and sends ~1 in 50
# to validation by a hash of the name, so training does not walk the alphabet and validation
# samples all of it. Only the source tags on lines of their own ("[1913 Webster]", "[WordNet 1.5]")
# are dropped, and the few bytes that are not UTF-8 become U+FFFD; the text is otherwise as shipped.
set -euo pipefail
DEST=${1:-runs/prose/gcide}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq dict-gcide 2>/dev/null && dpkg-deb -x dict-gcide_*.deb x)
mkdir -p "$DEST"
zcat "$tmp"/x/usr/share/dictd/gcide.dict.dz | python3 -c '
import re, sys
dest, n = sys.argv[1], 400
text = re.sub(r"(?m)^[ \t]*\[[^\]\n]+\][ \t]*\n", "", sys.stdin.buffer.read().decode("utf-8", "replace"))
entries = [e for e in text.split("\n\n") if e.strip()]
for i in range(n):
    chunk = entries[i * len(entries) // n:(i + 1) * len(entries) // n]
    with open(f"{dest}/{(i * 151) % n:03d}.txt", "w") as f:  # 151 is prime to 400: a permutation
        f.write("\n\n".join(chunk) + "\n")
print(f"{len(entries)} entries, {len(text) / 1e6:.1f} MB -> {n} files in {dest}")
' "$DEST"
