"""Full-vocabulary KL(teacher ‖ student) and NLL of trained students on a score artifact's held-out documents.

    python scripts/heldout_full_kl.py --scores runs/pocl/score --teacher smollm2-135m --docs 100 \\
        --model top64-s0=runs/store/runs/top64-s0/train/student --model sampled-s0=... --out kl.json

train's held-out KL in an offline run is measured on the stored top-k of the study's scores (the top-k ids with
their log-probs plus one tail bucket), which is the support a top-k-trained student is fitted on. This
measures the divergence itself: per target token (the response tokens of prompt/response data, every token
after the first of plain text), KL(p_teacher ‖ p_student) = Σ_v p_T(v) (log p_T(v) − log p_S(v)) over the whole
vocabulary, T = 1, fp32, one document at a time (no [batch × length × vocab] tensor of the whole set).

The held-out documents are the first `--docs` of each domain's validation split, tokenized as train does
(`heldout_docs` in a study's [train]): the same documents train's own held-out KL uses. Written: per model,
the token-weighted mean KL and NLL, and per document its KL sum, NLL sum and target count (for paired
statistics across models on the same documents).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scores", required=True, help="the score artifact whose held-out split is measured")
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=PATH", help="a student (repeatable)")
    ap.add_argument("--docs", type=int, default=None, help="held-out documents per domain (default: all)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens kept per document (default: the score's max_length)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import numpy as np
    import pyarrow as pa
    import torch

    from distillkit.artifacts import read_artifact
    from distillkit.models import load_model, load_tokenizer, resolve_model
    from distillkit.progress import console
    from distillkit.seqkd import scored_dataset
    from distillkit.training.batches import tokenize_rows

    torch.set_num_threads(a.threads)
    scores = read_artifact(a.scores, "score")
    ds = scored_dataset(scores)
    max_length = int(scores.config.get("max_length"))
    rows = pa.concat_tables([ds.heldout(d, a.docs) for d in ds.heldout_domains])
    teacher_dir = resolve_model(a.teacher, role="teacher")
    tok = load_tokenizer(str(teacher_dir))
    seqs = tokenize_rows(rows, ds.format, tok, max_length, a.seq_len or max_length)
    paths = dict(m.split("=", 1) for m in a.model)  # label -> student
    labels = list(paths)
    teacher = load_model(teacher_dir, dtype="float32", role="teacher").eval()
    students = [load_model(resolve_model(paths[lab], role="student"), dtype="float32", role="student").eval() for lab in labels]
    per_doc = {lab: {"kl": [], "nll": []} for lab in labels}
    targets: list[int] = []
    t0 = time.time()
    with torch.no_grad():
        for i in range(len(seqs)):
            ids = torch.as_tensor(seqs.ids[i])[None]
            start = int(seqs.target_start[i])
            # position j predicts token j + 1: targets are tokens start .. L-1, predicted at start-1 .. L-2
            lo, hi = max(start - 1, 0), ids.shape[1] - 1
            nxt = ids[0, lo + 1 : hi + 1]
            lt = torch.log_softmax(teacher(ids).logits[0, lo:hi].float(), -1)
            pt = lt.exp()
            targets.append(int(hi - lo))
            for lab, s in zip(labels, students):
                ls = torch.log_softmax(s(ids).logits[0, lo:hi].float(), -1)
                per_doc[lab]["kl"].append(float((pt * (lt - ls)).sum()))
                per_doc[lab]["nll"].append(float(-ls.gather(-1, nxt[:, None]).sum()))
            if (i + 1) % 20 == 0 or i + 1 == len(seqs):
                console.print(f"{i + 1}/{len(seqs)} documents, {time.time() - t0:.0f} s", highlight=False)
    n = float(np.sum(targets))
    out = {"scores": str(Path(a.scores)), "teacher": a.teacher, "docs_per_domain": a.docs, "documents": len(seqs),
           "target_tokens": int(n), "models": paths,
           "mean": {lab: {"kl": sum(v["kl"]) / n, "nll": sum(v["nll"]) / n, "ppl": float(np.exp(sum(v["nll"]) / n))}
                    for lab, v in per_doc.items()},
           "per_doc": {"sample_id": list(seqs.sample_id), "targets": targets, **per_doc}, "wall_s": round(time.time() - t0, 1)}
    Path(a.out).write_text(json.dumps(out, indent=1))
    for lab, m in out["mean"].items():
        console.print(f"{lab}: KL {m['kl']:.4f}  NLL {m['nll']:.4f}  ppl {m['ppl']:.3f}", highlight=False)


if __name__ == "__main__":
    main()
