"""`distillkit plan`: options, and the rich summary of a plan artifact (stages, pools, mixture)."""

from __future__ import annotations

from distillkit.cli.options import StageArgs, stage_command
from distillkit.pipelines.plan import PlanConfig


@stage_command(PlanConfig, "plan", short={"out": "-o"})
def plan(args: StageArgs) -> None:
    """Turn scores into an easy-to-hard curriculum (POCL) and a domain mixture (DDK)."""
    from distillkit.pipelines import plan as stage

    res = stage.run(args.resolve(), resume=args.resume, overwrite=args.overwrite)
    summary(res.path)


def _stage_columns(num_stages: int, limit: int = 8) -> list[int]:
    if num_stages <= limit:
        return list(range(num_stages))
    import numpy as np

    return sorted(set(np.linspace(0, num_stages - 1, limit).round().astype(int).tolist()))


def summary(path) -> None:
    """Print the schedule, per-domain pools, and the mixture beside the measured perplexity ratios."""
    from rich.table import Table

    from distillkit.artifacts import read_artifact
    from distillkit.progress import console

    art = read_artifact(path, "plan")
    p = art.manifest["plan"]
    mix = art.table("mixture.arrow").to_pylist()
    length = p["stage_length"]
    unit = length["unit"] if length["value"] != 1 else length["unit"].rstrip("s")

    st = Table(title=f"curriculum: {p['measure']} ({p.get('measure_help', '')}); {p['num_stages']} stage(s) of "
               f"{length['value']:g} {unit}", title_justify="left")
    for c in ("stage", "data", "pool", "new", "tokens", "T", "λ", "smallest domain"):
        st.add_column(c, justify="left" if c == "smallest domain" else "right")
    for s in p["stages"]:
        dom, n = min(s["domains"].items(), key=lambda kv: (kv[1], kv[0]))
        st.add_row(str(s["stage"]), f"{s['fraction']:.0%}", f"{s['num_samples']:,}", f"{s['num_new']:,}", f"{s['num_tokens']:,}",
                   f"{s['temperature']:.3g}", f"{s['kd_weight']:.3g}", f"{dom} {n:,}")
    bits = ["T temperature, λ KD weight", f"optimizer {'restarts' if p['restart_optimizer'] else 'kept'} between stages",
            "pools cumulative, stratified per domain"]
    if not p.get("curriculum", True):
        bits.insert(0, "curriculum off (ablation)")
    st.caption = " · ".join(bits)
    console.print(st)

    m = p["mixture"]
    cols = _stage_columns(p["num_stages"])
    mt = Table(title=f"domains: {m['kind']} mixture beside the measured held-out perplexities; pool size per stage",
               title_justify="left")
    for c in ("domain", "train", "val", "ppl T", "ppl S", "S/T", "weight"):
        mt.add_column(c, justify="left" if c == "domain" else "right")
    mt.add_column("pool " + " → ".join(f"s{s}" for s in cols) if len(cols) <= 4 else "pool by stage", overflow="fold")
    pools = {s["stage"]: s["domains"] for s in p["stages"]}
    for r in mix:
        mt.add_row(r["domain"] + ("" if r.get("heldout", True) else "*"), f"{r['num_samples']:,}", f"{r.get('num_validation', 0):,}",
                   f"{r['teacher_ppl']:.2f}", f"{r['student_ppl']:.2f}", f"{r['ppl_ratio']:.3f}", f"{r['weight']:.3f}",
                   " → ".join(f"{pools[s].get(r['domain'], 0):,}" for s in cols))
    cap = [f"val = held-out docs (DDK re-measurement, eval); DDK in train: α {m['alpha']}, every {m['interval']:,} steps, "
           f"smoothing {'on' if m['smoothing'] else 'off'}"]
    if len(cols) < p["num_stages"]:
        cap.append("pools shown for stages " + ", ".join(map(str, cols)))
    if any(not r.get("heldout", True) for r in mix):
        cap.append("* perplexity measured on training rows (no held-out docs)")
    if p.get("domains_without_train"):
        cap.append(f"left out (no training rows): {', '.join(p['domains_without_train'])}")
    mt.caption = " · ".join(cap)
    console.print(mt)
    extra = " and plan.png" if "plan.png" in art.files() else ""
    console.print(f"[green]wrote[/] {path} (curriculum.arrow, mixture.arrow{extra})")
