"""The table of perf.accelerator's rows (training MFU, decoding against the HBM floor, the plans beside
them), free of flags: perf.accelerator and perf.accelerator_check both print it."""

from __future__ import annotations

from xlit_jax.io.files import markdown_table


def cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(device_kind: str, rows: list[dict]) -> str:
    errors = [f"- {r['engine']} {r.get('model', '')} {r.get('method', r.get('batch', ''))}: "
              f"{r.get('error') or r.get('skipped') or r.get('plan_error')}"
              for r in rows if r.get("error") or r.get("skipped") or r.get("plan_error")]
    rows = [r for r in rows if "error" not in r and "skipped" not in r]
    train = markdown_table(["engine", "model", "method", "devices", "rows x seq", "tokens/s", "MFU",
                                   "peak GiB measured", "plan GiB", "plan s/step at this MFU", "s/step",
                                   "plan s/step at 40%"], [
        [r["engine"], r["model"], r["method"], r["devices"], f"{r['rows']} x {r['seq_len']}",
         f"{r['tokens_per_s']:.0f}", f"{r['mfu']:.1%}", cell(r.get("measured_peak_gib"), ".1f"),
         cell(r.get("plan_peak_gib"), ".1f"), cell(r.get("plan_step_s_at_measured_mfu"), ".3g"),
         f"{r['step_s']:.3g}", cell(r.get("plan_step_s_at_40pct"), ".3g")] for r in rows if r["kind"] == "train"])
    decode = markdown_table(["engine", "model", "weights", "batch", "new tokens", "tokens/s", "share of HBM floor"], [
        [r["engine"], r["model"], r.get("format", "none"), r["batch"], r["new_tokens"], f"{r['tokens_per_s']:.1f}",
         cell(r["floor_share"], ".1%")] for r in rows if r["kind"] == "decode"])
    return "\n\n".join([f"Device: {device_kind}", train, decode] + (["Not measured:\n" + "\n".join(errors)]
                                                                    if errors else []))
