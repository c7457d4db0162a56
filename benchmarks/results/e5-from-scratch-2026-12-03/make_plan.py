"""The e5 plan: plan-v5.json (the 10.52x model's) with the encoder and its conv stem at 4 bits (the default), every
decoder matrix at 4 bits, and the 4-bit hot embedding rows grown by the tokens of the N most frequent English and
Japanese words (wordfreq); the other rows stay 2-bit. Usage: make_plan.py BASE OUT EN_WORDS JA_WORDS"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from row_split_plan import common_word_rows  # noqa: E402
from whisper_kdq.models.refs import load_model  # noqa: E402

base, out, en, ja = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
plan = json.loads(base.read_text())
plan["default"]["bits"] = 4
rules = []
for r in plan["rules"]:
    if r["pattern"].startswith(r"^model\.decoder\.layers\.") and set(r) == {"pattern", "bits"} and r["pattern"] != r"^model\.decoder\.layers\.":
        continue  # the per-matrix 4-bit rules: every decoder matrix is 4-bit now
    rules.append(dict(r, bits=4) if r["pattern"] == r"^model\.decoder\.layers\." else r)
plan["rules"] = rules
tokenizer = load_model("base").processor.tokenizer
hot = set(plan["rows"][0]["rows"])
before = len(hot)
hot |= common_word_rows(tokenizer, "en", en) | common_word_rows(tokenizer, "ja", ja)
plan["rows"][0]["rows"] = sorted(hot)
plan["rows"][0]["note"] = (f"token rows of the calibration transcripts, the special tokens and the {en} / {ja} most "
                           "frequent English / Japanese words")
plan.pop("selection", None)
out.write_text(json.dumps(plan, indent=1) + "\n")
print(json.dumps({"out": str(out), "hot_rows_before": before, "hot_rows": len(hot), "en_words": en, "ja_words": ja}))
