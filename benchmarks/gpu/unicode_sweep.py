"""Strings that put every code point of the Basic Multilingual Plane from U+0080 (two- and three-byte UTF-8, surrogates
excepted) and a sample of four-byte ones between letters, digits, spaces and other scripts, one line per string, for
`kvpacket tokenizer samples` to encode with our tokenizer and tokenizer_check.py to compare with Hugging Face tokenizers.

usage: python3 unicode_sweep.py OUT.txt
"""
import random, sys

random.seed(11)
with open(sys.argv[1], "w", encoding="utf-8", newline="\n") as out:
    def write(s):
        out.write(s + "\n")
    for cp in range(0x80, 0x10000):
        if 0xD800 <= cp <= 0xDFFF or cp in (0x85, 0x2028, 0x2029):   # surrogates; line breaks Python's readers split on
            continue
        c = chr(cp)
        write(f"\u00e9{c}1 {c}{c}")
        write(f"Пр{c}漢's {c}")
    for cp in range(0x10000, 0x1FB00, 7):
        write(f"a{chr(cp)} {chr(cp)}9")
    pool = [(0x20, 0x7F), (0xA0, 0x800), (0x800, 0xD800), (0xE000, 0xFFFE)]
    for _ in range(60000):
        s = []
        for _ in range(random.randint(1, 16)):
            lo, hi = random.choice(pool)
            s.append(chr(random.randrange(lo, hi)))
            if random.random() < 0.2:
                s.append(" ")
        write("".join(s).replace("\u2028", " ").replace("\u2029", " ").replace("\x85", " "))
