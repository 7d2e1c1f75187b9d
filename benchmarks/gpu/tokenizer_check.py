"""Our byte-level BPE tokenizer.json read by the Hugging Face `tokenizers` library: every sample string that
`kvpacket tokenizer samples CORPUS --tokenizer T --out FILE` wrote with our ids must encode to the same ids there, and decode back.

usage: python3 tokenizer_check.py tokenizer.json check.jsonl
"""
import json, sys
from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file(sys.argv[1])
same = differ = 0
for line in open(sys.argv[2], encoding="utf-8"):
    case = json.loads(line)
    theirs = tokenizer.encode(case["text"], add_special_tokens=False).ids
    if theirs == case["ids"] and tokenizer.decode(theirs, skip_special_tokens=False) == case["text"]:
        same += 1
    else:
        differ += 1
        if differ <= 5:
            print("DIFFER:", repr(case["text"][:80]), case["ids"][:20], theirs[:20])
print(f"{same} strings encode identically, {differ} differ (vocabulary {tokenizer.get_vocab_size()})")
sys.exit(1 if differ else 0)
